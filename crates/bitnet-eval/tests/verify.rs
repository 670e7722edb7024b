//! Running the committed samples in tract and verifying models against each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bitnet_eval::inputs::read_npz;
use bitnet_eval::{make_inputs, save_npz, verify, Runner, TensorData, VerifyOptions};
use bitnet_model::proto::StringStringEntryProto;
use bitnet_model::{tensor, Model};
use prost::Message;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> PathBuf {
    workspace().join("samples").join(name)
}

fn python() -> PathBuf {
    match std::env::var_os("BITNET_ONNX_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace().join(".venv/bin/python"),
    }
}

fn dims(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn transformer_in_tract_matches_onnxruntime() {
    let py = python();
    assert!(
        py.exists(),
        "python interpreter {} not found: set BITNET_ONNX_PYTHON or create .venv with \
         tests/python/requirements.txt (scripts/test.sh does this)",
        py.display()
    );
    let model = Model::load(sample("transformer.onnx")).unwrap();
    let d = dims(&[("batch", 2), ("seq", 8)]);
    let (inputs, descs) = make_inputs(&model.proto, &d, 3, &BTreeMap::new()).unwrap();
    assert_eq!(descs[0].shape, vec![2, 8]);
    assert!(descs[0].source.contains("[0, 1000)"), "{}", descs[0].source);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (fin, fout) = (
        tmp.join("transformer_in.npz"),
        tmp.join("transformer_ort.npz"),
    );
    save_npz(&fin, &inputs).unwrap();
    let status = Command::new(&py)
        .arg(workspace().join("crates/bitnet-eval/tests/ort_run.py"))
        .args([sample("transformer.onnx"), fin, fout.clone()])
        .status()
        .unwrap();
    assert!(status.success(), "ort_run.py failed");
    let expected = read_npz(&fout).unwrap();
    let runner = Runner::new(&model.proto, &d, &[]).unwrap();
    assert!(runner.defaults().is_empty());
    let got = runner.run(&inputs).unwrap();
    assert_eq!(got[0].0, "logits");
    assert_eq!(got[0].2, vec![2, 8, 1000]);
    let (name, want) = &expected[0];
    assert_eq!(name, "logits");
    assert_eq!(want.shape, vec![2, 8, 1000]);
    let TensorData::F32(want) = &want.data else {
        panic!("float logits")
    };
    let m = bitnet_eval::compare(want, &got[0].1, &got[0].2);
    assert!(m.max_abs_error < 1e-4, "{m:?}");
    assert!(m.rel_l2 < 1e-5, "{m:?}");
    assert_eq!(m.top1_agreement, 1.0);
}

#[test]
fn transformer_against_itself_has_zero_error() {
    let m = Model::load(sample("transformer.onnx")).unwrap();
    let opts = VerifyOptions {
        dims: dims(&[("batch", 2), ("seq", 8)]),
        samples: 2,
        ..Default::default()
    };
    let r = verify(&m, &m, &opts).unwrap();
    assert!(r.pass);
    assert_eq!(r.samples, 2);
    assert_eq!(r.outputs.len(), 1);
    let o = &r.outputs[0];
    assert_eq!(
        (o.metrics.max_abs_error, o.metrics.rel_l2, o.metrics.cosine),
        (0.0, 0.0, 1.0)
    );
    assert!(r.layers.is_empty());
    assert!(r
        .layers_note
        .as_deref()
        .unwrap()
        .contains("bitnet_onnx.layers"));
    assert!(r.dequantized_reference.is_none());
    assert!(r.dequantized_reference_note.is_some());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["dequantized_reference"], serde_json::Value::Null);
    assert_eq!(json["outputs"][0]["snr_db"], 200.0);
}

fn meta(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

const MLP_LAYERS: &str = r#"[
 {"node": "/fc1/Gemm", "op": "Gemm", "weight": "fc1.weight", "output": "/fc1/Gemm_output_0"},
 {"node": "/fc2/Gemm", "op": "Gemm", "weight": "fc2.weight", "output": "/fc2/Gemm_output_0"},
 {"node": "/fc3/Gemm", "op": "Gemm", "weight": "fc3.weight", "output": "output"}]"#;

/// A copy of mlp.onnx with fc2's weight scaled by `factor`, written to the test's temp dir.
pub fn scaled_mlp(factor: f32, file: &str) -> PathBuf {
    let mut m = Model::load(sample("mlp.onnx")).unwrap();
    let g = m.proto.graph.as_mut().unwrap();
    let w = g
        .node
        .iter()
        .find(|n| n.name.as_deref() == Some("/fc2/Gemm"))
        .unwrap()
        .input[1]
        .clone();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(w.as_str()))
        .unwrap();
    let v: Vec<f32> = tensor::to_f32(Path::new("mlp"), t)
        .unwrap()
        .iter()
        .map(|x| x * factor)
        .collect();
    *t = tensor::from_f32(&w, &t.dims.clone(), &v);
    m.proto
        .metadata_props
        .push(meta("bitnet_onnx.layers", MLP_LAYERS));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
    std::fs::write(&out, m.proto.encode_to_vec()).unwrap();
    out
}

#[test]
fn scaled_gemm_weight_fails_and_names_the_layer() {
    // The layer outputs named in MLP_LAYERS must exist in the sample.
    let orig = Model::load(sample("mlp.onnx")).unwrap();
    let conv = Model::load(scaled_mlp(1.5, "mlp_scaled.onnx")).unwrap();
    let r = verify(
        &orig,
        &conv,
        &VerifyOptions {
            dims: dims(&[("batch", 4)]),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!r.pass);
    assert_eq!(r.layers.len(), 3, "{:?}", r.layers_note);
    assert!(r.layers[0].pass && r.layers[0].rel_l2 == 0.0);
    assert!(!r.layers[1].pass);
    // Weight x1.5 plus an unchanged bias: a bit under 0.5.
    assert!(
        r.layers[1].rel_l2 > 0.3 && r.layers[1].rel_l2 < 0.5,
        "{}",
        r.layers[1].rel_l2
    );
    assert_eq!(r.first_failing_layer.as_deref(), Some("/fc2/Gemm"));
    assert!(r.worst_inputs.len() == 1);
}

#[test]
fn dequantized_reference_for_an_int8_qdq_conversion() {
    // Converted = mlp with fc1's weight replaced by per-channel int8 codes + DequantizeLinear
    // (Gemm transB=1 keeps the [N, K] layout): must agree with the dequantized reference to
    // float rounding, and be close to the original.
    let mut m = Model::load(sample("mlp.onnx")).unwrap();
    let g = m.proto.graph.as_mut().unwrap();
    let gemm = g
        .node
        .iter()
        .position(|n| n.name.as_deref() == Some("/fc1/Gemm"))
        .unwrap();
    let w = g.node[gemm].input[1].clone();
    let t = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(w.as_str()))
        .unwrap()
        .clone();
    let (n, k) = (t.dims[0] as usize, t.dims[1] as usize);
    let v = tensor::to_f32(Path::new("mlp"), &t).unwrap();
    let mut codes = vec![0i8; n * k];
    let mut scales = vec![0f32; n];
    for r in 0..n {
        let amax = v[r * k..(r + 1) * k]
            .iter()
            .fold(0f32, |a, x| a.max(x.abs()));
        scales[r] = amax / 127.0;
        for c in 0..k {
            codes[r * k + c] = (v[r * k + c] / scales[r]).round() as i8;
        }
    }
    g.initializer
        .push(tensor::from_i8("w_q", &[n as i64, k as i64], &codes));
    g.initializer
        .push(tensor::from_f32("w_s", &[n as i64], &scales));
    g.node.insert(
        gemm,
        bitnet_model::proto::NodeProto {
            name: Some("dq".into()),
            op_type: Some("DequantizeLinear".into()),
            input: vec!["w_q".into(), "w_s".into()],
            output: vec!["w_dq".into()],
            attribute: vec![bitnet_model::proto::AttributeProto {
                name: Some("axis".into()),
                r#type: Some(2),
                i: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    g.node[gemm + 1].input[1] = "w_dq".into();
    g.initializer
        .retain(|t| t.name.as_deref() != Some(w.as_str()));
    m.proto.metadata_props.push(meta(
        "bitnet_onnx.layers",
        &format!(r#"[{{"node": "/fc1/Gemm", "op": "Gemm", "weight": "{w}", "output": "/fc1/Gemm_output_0"}}]"#),
    ));
    m.proto
        .metadata_props
        .push(meta("bitnet_onnx.dequantized_reference", "available"));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlp_qdq.onnx");
    std::fs::write(&path, m.proto.encode_to_vec()).unwrap();
    let orig = Model::load(sample("mlp.onnx")).unwrap();
    let conv = Model::load(&path).unwrap();
    let r = verify(&orig, &conv, &VerifyOptions::default()).unwrap();
    assert_eq!(r.default_dims.get("batch"), Some(&1));
    let d = r
        .dequantized_reference
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}", r.dequantized_reference_note));
    assert!(d.agrees && d.max_rel_l2 < 1e-6, "{}", d.max_rel_l2);
    assert!(r.pass, "{:?}", r.outputs);
    assert!(r.layers[0].rel_l2 > 0.0 && r.layers[0].rel_l2 < 0.02);
}

#[test]
fn garbage_converted_model_is_an_error() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("garbage.onnx");
    std::fs::write(&path, b"not a model at all").unwrap();
    assert!(Model::load(&path).is_err());
    assert!(Model::load(Path::new("/nonexistent/model.onnx")).is_err());
}

#[test]
fn inputs_replay_through_npz() {
    let m = Model::load(sample("transformer.onnx")).unwrap();
    let (inputs, _) = make_inputs(
        &m.proto,
        &dims(&[("batch", 1), ("seq", 5)]),
        9,
        &BTreeMap::new(),
    )
    .unwrap();
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay.npz");
    save_npz(&p, &inputs).unwrap();
    let opts = VerifyOptions {
        inputs: Some(p),
        ..Default::default()
    };
    let r = verify(&m, &m, &opts).unwrap();
    assert_eq!(r.dims.get("seq"), Some(&5));
    assert!(r.default_dims.is_empty());
    assert_eq!(r.worst_inputs, inputs);
}

/// A layer the conversion records lossless is held to float rounding on the original's own
/// input to it; the same layer not recorded lossless to the tolerances. The layers after it
/// run on the original's values, so they show none of its error (layer-local).
#[test]
fn a_lossless_layer_is_held_to_float_rounding_on_its_own_input() {
    let orig = Model::load(sample("mlp.onnx")).unwrap();
    let opts = VerifyOptions {
        dims: dims(&[("batch", 4)]),
        ..Default::default()
    };
    // fc2's weight off by 1e-4 relative: quantization-sized for a lossy layer.
    let path = scaled_mlp(1.0001, "mlp_scaled_1e-4.onnx");
    let lossy = verify(&orig, &Model::load(&path).unwrap(), &opts).unwrap();
    assert!(lossy.pass, "{:?}", lossy.layers);
    assert!(!lossy.layers[1].lossless);
    assert!(lossy.layers[1].rel_l2 > 1e-5 && lossy.layers[1].rel_l2 < 1e-4);
    assert_eq!(
        lossy.layers[2].rel_l2, 0.0,
        "fc3 runs on the original's fc2 output"
    );
    assert!(lossy.outputs_judged, "{}", lossy.outputs_rule);
    let rest = lossy.rest.as_ref().unwrap();
    assert!(rest.judged && rest.agrees && rest.max_rel_l2 == 0.0);

    // The same model, its layers recorded lossless.
    let mut m = Model::load(&path).unwrap();
    let e = m
        .proto
        .metadata_props
        .iter_mut()
        .find(|e| e.key.as_deref() == Some("bitnet_onnx.layers"))
        .unwrap();
    e.value = Some(MLP_LAYERS.replace("{\"node\"", "{\"lossless\": true, \"node\""));
    let lossless = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlp_lossless_1e-4.onnx");
    std::fs::write(&lossless, m.proto.encode_to_vec()).unwrap();
    let r = verify(&orig, &Model::load(&lossless).unwrap(), &opts).unwrap();
    assert!(!r.pass);
    assert!(r.layers.iter().all(|l| l.lossless));
    assert_eq!(r.first_failing_layer.as_deref(), Some("/fc2/Gemm"));
    assert!(r.layers[0].pass && r.layers[2].pass && !r.layers[1].pass);
    assert!(!r.outputs_judged, "{}", r.outputs_rule);
    assert_eq!(r.tolerances.lossless_max_rel_l2, 1e-5);

    // Unchanged and recorded lossless: passes, every layer exactly.
    let mut m = Model::load(sample("mlp.onnx")).unwrap();
    m.proto.metadata_props.push(meta(
        "bitnet_onnx.layers",
        &MLP_LAYERS.replace("{\"node\"", "{\"lossless\": true, \"node\""),
    ));
    let same = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlp_lossless_same.onnx");
    std::fs::write(&same, m.proto.encode_to_vec()).unwrap();
    let r = verify(&orig, &Model::load(&same).unwrap(), &opts).unwrap();
    assert!(r.pass, "{:?}", r.layers);
    assert!(r.layers.iter().all(|l| l.rel_l2 == 0.0));
}

/// A float16 layer whose weight became INT8 codes and a float16 DequantizeLinear: the
/// dequantized reference keeps the weight float16 (tract refuses a float32 weight beside
/// float16 activations), and the lossless layer is held to the tolerances, not to float32
/// rounding.
#[test]
fn a_float16_layer_through_dequantize_linear_verifies() {
    use bitnet_model::proto::{
        tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
        OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    const F16: i32 = 10;
    let value = |name: &str, dims: &[tensor_shape_proto::dimension::Value]| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(F16),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(d.clone()),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    use tensor_shape_proto::dimension::Value as D;
    let (k, n) = (16usize, 8usize);
    let codes: Vec<i8> = (0..k * n)
        .map(|i| [1i8, 0, -1][(i * 7 + i / 5) % 3])
        .collect();
    let model = |graph: GraphProto, meta_props: Vec<StringStringEntryProto>| ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(19),
        }],
        graph: Some(graph),
        metadata_props: meta_props,
        ..Default::default()
    };
    let io = (
        vec![value(
            "x",
            &[D::DimParam("batch".into()), D::DimValue(k as i64)],
        )],
        vec![value(
            "y",
            &[D::DimParam("batch".into()), D::DimValue(n as i64)],
        )],
    );
    let matmul = |w: &str| NodeProto {
        name: Some("mm".into()),
        op_type: Some("MatMul".into()),
        input: vec!["x".into(), w.into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let weights: Vec<f32> = codes.iter().map(|&c| c as f32 * 0.25).collect();
    let original = model(
        GraphProto {
            name: Some("g".into()),
            node: vec![matmul("W")],
            initializer: vec![tensor::from_f32_as(
                "W",
                F16,
                &[k as i64, n as i64],
                &weights,
            )],
            input: io.0.clone(),
            output: io.1.clone(),
            ..Default::default()
        },
        vec![],
    );
    let converted = model(
        GraphProto {
            name: Some("g".into()),
            node: vec![
                NodeProto {
                    name: Some("dq".into()),
                    op_type: Some("DequantizeLinear".into()),
                    input: vec!["W_q".into(), "W_s".into()],
                    output: vec!["W_dq".into()],
                    attribute: vec![AttributeProto {
                        name: Some("axis".into()),
                        r#type: Some(2),
                        i: Some(1),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                matmul("W_dq"),
            ],
            initializer: vec![
                tensor::from_i8("W_q", &[k as i64, n as i64], &codes),
                tensor::from_f32_as("W_s", F16, &[n as i64], &vec![0.25; n]),
            ],
            input: io.0,
            output: io.1,
            ..Default::default()
        },
        vec![
            meta(
                "bitnet_onnx.layers",
                r#"[{"lossless": true, "node": "mm", "op": "MatMul", "output": "y", "weight": "W"}]"#,
            ),
            meta("bitnet_onnx.dequantized_reference", "available"),
        ],
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (op, cp) = (dir.join("f16_orig.onnx"), dir.join("f16_dq.onnx"));
    std::fs::write(&op, original.encode_to_vec()).unwrap();
    std::fs::write(&cp, converted.encode_to_vec()).unwrap();
    let r = verify(
        &Model::load(&op).unwrap(),
        &Model::load(&cp).unwrap(),
        &VerifyOptions {
            dims: dims(&[("batch", 3)]),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.pass, "{:?}", r.layers);
    assert!(r.layers[0].lossless && !r.layers[0].exact);
    assert!(r.dequantized_reference.as_ref().unwrap().agrees);
    assert!(r.outputs_judged, "{}", r.outputs_rule);
}
