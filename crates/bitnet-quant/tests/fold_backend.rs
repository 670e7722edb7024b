//! The constant folder against the ONNX backend node tests: every node test case whose nodes
//! are all ops the folder evaluates (`fold::FOLDABLE_OPS`) has its graph inputs turned into
//! initializers holding the case's input data, its outputs folded, and the result compared
//! with the case's expected outputs: integers, bools and shapes exactly, floats to a few ulps
//! (the reference computes some ops, such as ReduceMean and Pow, in another precision).
//!
//! The cases come from the pinned `onnx` package, written by
//! `tests/python/dump_backend_models.py` (run by `scripts/test.sh`) into
//! `$BITNET_ONNX_BACKEND_DIR/node/<case>/{model.onnx, input_<i>.pb, output_<i>.pb}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::{ModelProto, TensorProto};
use bitnet_quant::fold::{Const, Data, Folder, FOLDABLE_OPS};
use prost::Message;

fn backend_dir() -> PathBuf {
    match std::env::var_os("BITNET_ONNX_BACKEND_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/onnx-backend"),
    }
}

/// Every backend node test case directory, sorted.
fn node_cases() -> Vec<PathBuf> {
    let root = backend_dir().join("node");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test.sh)", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    cases
}

fn read_tensor(path: &Path) -> TensorProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TensorProto::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Units in the last place of `dtype` between two floats (0 when both are NaN).
fn ulps(dtype: i32, a: f64, b: f64) -> f64 {
    if a.is_nan() && b.is_nan() || a == b {
        return 0.0;
    }
    if !a.is_finite() || !b.is_finite() {
        return f64::INFINITY;
    }
    let bits = match dtype {
        10 => 11, // float16
        16 => 8,  // bfloat16
        11 => 53, // double
        _ => 24,
    };
    let m = a.abs().max(b.abs()).max(f64::MIN_POSITIVE);
    let ulp = 2f64.powi(m.log2().floor() as i32 - (bits - 1));
    (a - b).abs() / ulp
}

/// Float tolerance, in ulps of the element type: a single op may differ from the reference
/// by rounding only; a chain of ops (the `_expanded` function bodies) rounds at every step
/// where the reference computed the fused op once.
fn tolerance(nodes: usize) -> f64 {
    if nodes == 1 {
        4.0
    } else {
        64.0
    }
}

fn compare(got: &Const, want: &Const, tol: f64) -> Result<(), String> {
    if got.dims != want.dims {
        return Err(format!("dims {:?}, expected {:?}", got.dims, want.dims));
    }
    if got.dtype != want.dtype {
        return Err(format!("type {}, expected {}", got.dtype, want.dtype));
    }
    match (&got.data, &want.data) {
        (Data::I64(a), Data::I64(b)) => match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(i) => Err(format!("element {i}: {} against {}", a[i], b[i])),
            None => Ok(()),
        },
        _ => {
            let (a, b) = (got.f64(), want.f64());
            // A chain also loses digits to cancellation (x - mean): allow what the largest
            // expected value's ulps allow, too.
            let scale = b
                .iter()
                .filter(|v| v.is_finite())
                .fold(0f64, |m, v| m.max(v.abs()));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                if ulps(got.dtype, *x, *y) > tol
                    && ulps(got.dtype, scale + (x - y).abs(), scale) > tol
                {
                    return Err(format!("element {i}: {x} against {y}"));
                }
            }
            Ok(())
        }
    }
}

enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

fn run_case(dir: &Path) -> (BTreeSet<String>, Outcome) {
    let model_path = dir.join("model.onnx");
    let bytes = std::fs::read(&model_path).expect("model.onnx");
    let model = ModelProto::decode(bytes.as_slice()).expect("decodes");
    let mut graph = model.graph.clone().unwrap_or_default();
    let ops: BTreeSet<String> = graph
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap_or_default())
        .collect();
    let foldable = graph.node.iter().all(|n| {
        n.domain.as_deref().unwrap_or("").is_empty()
            && FOLDABLE_OPS.contains(&n.op_type.as_deref().unwrap_or(""))
    });
    if !foldable || graph.node.is_empty() {
        return (BTreeSet::new(), Outcome::Skipped("not foldable".into()));
    }
    for (i, input) in graph.input.clone().iter().enumerate() {
        let p = dir.join(format!("input_{i}.pb"));
        if !p.exists() {
            return (ops, Outcome::Skipped("no input data".into()));
        }
        let mut t = read_tensor(&p);
        t.name = input.name.clone();
        graph.initializer.push(t);
    }
    graph.input.clear();
    let index = GraphIndex::new(&graph);
    let mut folder = Folder::new(&index, &model_path);
    for (i, out) in graph.output.iter().enumerate() {
        let p = dir.join(format!("output_{i}.pb"));
        if !p.exists() {
            return (ops, Outcome::Skipped("no output data".into()));
        }
        let want = match Const::from_tensor(&p, &read_tensor(&p)) {
            Ok(c) => c,
            Err(e) => return (ops, Outcome::Skipped(e)),
        };
        let name = out.name.clone().unwrap_or_default();
        let got = match folder.eval(&name) {
            Ok(c) => c,
            Err(e) => {
                // An input of a type the folder does not hold is a skip, not a failure.
                let msg = e.to_string();
                if msg.contains("is not evaluated by the folder") {
                    return (ops, Outcome::Skipped(msg));
                }
                return (ops, Outcome::Failed(format!("output {name}: {msg}")));
            }
        };
        if let Err(e) = compare(&got, &want, tolerance(graph.node.len())) {
            return (ops, Outcome::Failed(format!("output {name}: {e}")));
        }
    }
    (ops, Outcome::Passed)
}

#[test]
fn folder_matches_every_backend_node_test_of_its_ops() {
    let cases = node_cases();
    assert!(cases.len() > 1000, "only {} node cases", cases.len());
    let mut passed_by_op: BTreeMap<String, usize> = BTreeMap::new();
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (ops, outcome) = run_case(dir);
        match outcome {
            Outcome::Passed => {
                passed += 1;
                for op in ops {
                    *passed_by_op.entry(op).or_default() += 1;
                }
            }
            Outcome::Skipped(why) if !ops.is_empty() => skipped.push(format!("{name}: {why}")),
            Outcome::Skipped(_) => {}
            Outcome::Failed(why) => failures.push(format!("{name}: {why}")),
        }
    }
    let uncovered: Vec<&str> = FOLDABLE_OPS
        .iter()
        .copied()
        .filter(|op| !passed_by_op.contains_key(*op))
        .collect();
    eprintln!("{passed} cases passed; cases by op: {passed_by_op:?}");
    eprintln!("skipped ({}):\n  {}", skipped.len(), skipped.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} backend node tests disagree with the folder:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(passed > 500, "only {passed} cases passed");
    assert!(
        uncovered.is_empty(),
        "foldable ops with no passing backend case: {uncovered:?}"
    );
}

/// Bad input never panics the folder: every backend case of a foldable op is run again with
/// each input replaced by a scalar, by an empty tensor, and with its integer attributes set to
/// out-of-range values (a fixed, bounded set of variants per case). Each must fold or
/// give an error.
#[test]
fn malformed_inputs_give_errors_not_panics() {
    use bitnet_model::proto::tensor_proto::DataType;
    let cases = node_cases();
    let mut runs = 0usize;
    let mut panics: Vec<String> = Vec::new();
    // Panics are caught and listed; the default hook would print each one's backtrace.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for dir in &cases {
        let model_path = dir.join("model.onnx");
        let bytes = std::fs::read(&model_path).expect("model.onnx");
        let model = ModelProto::decode(bytes.as_slice()).expect("decodes");
        let graph = model.graph.clone().unwrap_or_default();
        let foldable = !graph.node.is_empty()
            && graph.node.iter().all(|n| {
                n.domain.as_deref().unwrap_or("").is_empty()
                    && FOLDABLE_OPS.contains(&n.op_type.as_deref().unwrap_or(""))
            });
        if !foldable {
            continue;
        }
        let inputs: Vec<TensorProto> = (0..graph.input.len())
            .map_while(|i| {
                let p = dir.join(format!("input_{i}.pb"));
                p.exists().then(|| {
                    let mut t = read_tensor(&p);
                    t.name = graph.input[i].name.clone();
                    t
                })
            })
            .collect();
        if inputs.len() != graph.input.len() {
            continue;
        }
        // Variant k: input k as a scalar (k < n), input k - n empty (n <= k < 2n), then the
        // integer attributes at huge, negative and zero values.
        let n = inputs.len();
        for variant in 0..(2 * n + 3) {
            let mut g = graph.clone();
            let mut ins = inputs.clone();
            if variant < n {
                let t = &mut ins[variant];
                let dt = t.data_type.unwrap_or(0);
                let one = bitnet_model::dtype::byte_len(dt, 1).unwrap_or(1) as usize;
                let raw = bitnet_model::tensor::raw_bytes(Path::new(""), t)
                    .map(|r| r.iter().copied().take(one).collect::<Vec<u8>>())
                    .unwrap_or_default();
                *t = bitnet_model::tensor::from_raw(
                    t.name.as_deref().unwrap_or(""),
                    DataType::try_from(dt).unwrap_or(DataType::Float),
                    &[],
                    if raw.len() == one { raw } else { vec![0; one] },
                );
            } else if variant < 2 * n {
                let t = &mut ins[variant - n];
                let dt = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Float);
                *t = bitnet_model::tensor::from_raw(
                    t.name.as_deref().unwrap_or(""),
                    dt,
                    &[0],
                    vec![],
                );
            } else {
                let v = [i64::MAX / 2, -1_000_000, 0][variant - 2 * n];
                for node in &mut g.node {
                    for a in &mut node.attribute {
                        if a.i.is_some() && a.name.as_deref() != Some("to") {
                            a.i = Some(v);
                        }
                        for x in &mut a.ints {
                            *x = v;
                        }
                    }
                }
            }
            g.initializer.extend(ins);
            g.input.clear();
            let outputs: Vec<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let result = std::panic::catch_unwind(|| {
                let index = GraphIndex::new(&g);
                let mut folder = Folder::new(&index, &model_path);
                for o in &outputs {
                    let _ = folder.eval(o);
                }
            });
            if result.is_err() {
                panics.push(format!("{name} variant {variant}"));
            }
            runs += 1;
        }
    }
    std::panic::set_hook(default_hook);
    assert!(
        panics.is_empty(),
        "the folder panicked on:\n  {}",
        panics.join("\n  ")
    );
    assert!(runs > 1500, "only {runs} variants ran");
}
