//! Linear layers inside control flow: both branches of `If`, a `Loop` body and a `Scan` body,
//! with weights held as initializers of the subgraph itself and as initializers of the main
//! graph that the subgraph captures from the outer scope. Every one is converted for every
//! target, no float copy of a converted weight is left in any graph, the report lists every
//! layer, and ONNX Runtime computes what the original computes (weights are already ternary:
//! relative L2 < 1e-5 with ORT_ENABLE_BASIC, < 5e-2 with ORT_ENABLE_ALL, where ORT may run
//! DequantizeLinear -> MatMul with int8 activations).

mod build_model;
mod common;

use build_model::*;
use common::*;

use bitnet_model::proto::{GraphProto, ModelProto, TensorProto};

const D: usize = 64;
const B: usize = 2;
const T: usize = 3;

fn w(name: &str, seed: u64) -> TensorProto {
    bitnet_model::tensor::from_f32(name, &[D as i64, D as i64], &ternary(D, D, true, seed))
}

fn act() -> String {
    format!("{B},{D}")
}

/// One If branch: `Relu(MatMul(x, weight))`, the weight either captured or local.
fn branch(name: &str, weight: &str, local: Option<TensorProto>, out: &str) -> GraphProto {
    let mm = format!("{name}_mm");
    graph(
        name,
        vec![
            node("MatMul", &format!("{name}_fc"), &["x", weight], &[&mm]),
            node("Relu", &format!("{name}_relu"), &[&mm], &[out]),
        ],
        vec![],
        vec![vi(out, FLOAT, &act())],
        local.into_iter().collect(),
    )
}

/// Inputs `x[2, 64]`, `cond` (ort_compare feeds true), `seq[3, 2, 64]`. Outer-scope weights:
/// `W_then_a`, `W_else_b`, `W_loop_outer`, `W_scan_outer`; subgraph initializers: `W_else_a`,
/// `W_then_b`, `W_loop_inner`, `W_scan_inner`. `if_b` takes `Not(cond)`, so one then-branch and
/// one else-branch run whatever the condition.
fn control_flow() -> ModelProto {
    let if_a = with(
        node("If", "if_a", &["cond"], &["ya"]),
        vec![
            attr_g("then_branch", branch("then_a", "W_then_a", None, "ya_t")),
            attr_g(
                "else_branch",
                branch("else_a", "W_else_a", Some(w("W_else_a", 2)), "ya_e"),
            ),
        ],
    );
    let if_b = with(
        node("If", "if_b", &["ncond"], &["yb"]),
        vec![
            attr_g(
                "then_branch",
                branch("then_b", "W_then_b", Some(w("W_then_b", 3)), "yb_t"),
            ),
            attr_g("else_branch", branch("else_b", "W_else_b", None, "yb_e")),
        ],
    );
    let loop_body = graph(
        "loop_body",
        vec![
            node(
                "MatMul",
                "loop_fc_inner",
                &["h_in", "W_loop_inner"],
                &["l1"],
            ),
            node("Tanh", "loop_tanh1", &["l1"], &["l2"]),
            node("MatMul", "loop_fc_outer", &["l2", "W_loop_outer"], &["l3"]),
            node("Tanh", "loop_tanh2", &["l3"], &["h_out"]),
            node("Identity", "loop_cond", &["cond_in"], &["cond_out"]),
        ],
        vec![
            vi("iter", INT64, ""),
            vi("cond_in", BOOL, ""),
            vi("h_in", FLOAT, &act()),
        ],
        vec![vi("cond_out", BOOL, ""), vi("h_out", FLOAT, &act())],
        vec![w("W_loop_inner", 5)],
    );
    let lp = with(
        node("Loop", "loop", &["trips", "", "x"], &["h_final"]),
        vec![attr_g("body", loop_body)],
    );
    let scan_body = graph(
        "scan_body",
        vec![
            node("MatMul", "scan_fc_inner", &["xt", "W_scan_inner"], &["u"]),
            node("MatMul", "scan_fc_outer", &["s_in", "W_scan_outer"], &["v"]),
            node("Add", "scan_add", &["u", "v"], &["uv"]),
            node("Tanh", "scan_tanh", &["uv"], &["s_out"]),
            node("Identity", "scan_copy", &["s_out"], &["y_t"]),
        ],
        vec![vi("s_in", FLOAT, &act()), vi("xt", FLOAT, &act())],
        vec![vi("s_out", FLOAT, &act()), vi("y_t", FLOAT, &act())],
        vec![w("W_scan_inner", 7)],
    );
    let scan = with(
        node("Scan", "scan", &["x", "seq"], &["s_final", "ys"]),
        vec![attr_g("body", scan_body), attr_i("num_scan_inputs", 1)],
    );
    let g = graph(
        "control_flow",
        vec![
            node("Not", "not", &["cond"], &["ncond"]),
            if_a,
            if_b,
            lp,
            scan,
        ],
        vec![
            vi("x", FLOAT, &act()),
            vi("cond", BOOL, ""),
            vi("seq", FLOAT, &format!("{T},{B},{D}")),
        ],
        vec![
            vi("ya", FLOAT, &act()),
            vi("yb", FLOAT, &act()),
            vi("h_final", FLOAT, &act()),
            vi("s_final", FLOAT, &act()),
            vi("ys", FLOAT, &format!("{T},{B},{D}")),
        ],
        vec![
            w("W_then_a", 1),
            w("W_else_b", 4),
            w("W_loop_outer", 6),
            w("W_scan_outer", 8),
            bitnet_model::tensor::from_i64("trips", &[], &[3]),
        ],
    );
    model(g, 17)
}

const LAYERS: &[&str] = &[
    "then_a_fc",
    "else_a_fc",
    "then_b_fc",
    "else_b_fc",
    "loop_fc_inner",
    "loop_fc_outer",
    "scan_fc_inner",
    "scan_fc_outer",
];

#[test]
fn layers_in_if_loop_and_scan_bodies_are_converted_and_run_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("control_flow.onnx");
    let orig = control_flow();
    save(&orig, &src);
    // The original runs in ONNX Runtime (the model itself is valid).
    let cmp = ort_compare(&src, &src, "basic", &[]);
    assert_close(&cmp, 1e-12, "original against itself");
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("control_flow.{target}.onnx"));
        let r = convert(&src, &out, flags);
        let mut nodes: Vec<String> = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["node"].as_str().unwrap().to_string())
            .collect();
        nodes.sort();
        let mut want: Vec<String> = LAYERS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(nodes, want, "{target}: {r}");
        assert_eq!(r["totals"]["converted"], LAYERS.len(), "{target}: {r}");
        assert!(
            r["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["lossless"] == true),
            "{target}: {r}"
        );
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        // No float 64x64 weight is left anywhere (captured ones included).
        for g in graphs(&m) {
            for t in &g.initializer {
                assert!(
                    !(t.data_type == Some(FLOAT) && t.dims == [D as i64, D as i64]),
                    "{target}: float weight {:?} left in graph {:?}",
                    t.name,
                    g.name
                );
            }
        }
        // Every layer node is converted where it is.
        for g in graphs(&m) {
            for n in &g.node {
                let name = n.name.as_deref().unwrap_or("");
                if !LAYERS.contains(&name) {
                    continue;
                }
                if *target == "ort" {
                    assert_eq!(n.op_type.as_deref(), Some("MatMulNBits"), "{target}: {n:?}");
                } else {
                    assert_eq!(
                        producer_op(g, &n.input[1]),
                        Some("DequantizeLinear"),
                        "{target}: {name} in {:?}",
                        g.name
                    );
                }
            }
        }
        let found = all_nodes(&m)
            .iter()
            .filter(|n| LAYERS.contains(&n.name.as_deref().unwrap_or("")))
            .count();
        assert_eq!(found, LAYERS.len(), "{target}");
        if *target == "tensorrt" {
            run_ok(bin().args(["check", "--target", "tensorrt"]).arg(&out));
        }
        let cmp = ort_compare(&src, &out, "basic", &[]);
        assert_close(&cmp, 1e-5, &format!("{target} basic"));
        let cmp = ort_compare(&src, &out, "all", &[]);
        assert_close(&cmp, 5e-2, &format!("{target} all"));
    }
}

/// A captured weight that is also read in the outer graph keeps its float copy there (the
/// outer MatMul is excluded), while the subgraph's layer is converted.
#[test]
fn captured_weight_still_read_outside_is_kept() {
    let then_g = branch("then", "W", None, "t_out");
    let else_g = branch("else", "W", None, "e_out");
    let g = graph(
        "captured_shared",
        vec![
            with(
                node("If", "if", &["cond"], &["y"]),
                vec![attr_g("then_branch", then_g), attr_g("else_branch", else_g)],
            ),
            node("MatMul", "outer_fc", &["x", "W"], &["o0"]),
            node("Relu", "outer_relu", &["o0"], &["z"]),
        ],
        vec![vi("x", FLOAT, &act()), vi("cond", BOOL, "")],
        vec![vi("y", FLOAT, &act()), vi("z", FLOAT, &act())],
        vec![w("W", 21)],
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("captured_shared.onnx");
    save(&model(g, 17), &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("captured_shared.{target}.onnx"));
        let mut args = flags.to_vec();
        args.extend(["--exclude", "^outer_fc$"]);
        let r = convert(&src, &out, &args);
        let mut nodes: Vec<&str> = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["node"].as_str().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["else_fc", "then_fc"], "{target}: {r}");
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let main = m.graph.as_ref().unwrap();
        assert!(
            main.initializer
                .iter()
                .any(|t| t.name.as_deref() == Some("W") && t.data_type == Some(FLOAT)),
            "{target}: the float weight read by outer_fc was removed"
        );
        assert_eq!(find_node(main, "outer_fc").input[1], "W");
        let cmp = ort_compare(&src, &out, "basic", &[]);
        assert_close(&cmp, 1e-5, target);
    }
}
