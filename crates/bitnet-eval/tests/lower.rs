//! Lowering of constant DequantizeLinear nodes tract cannot run, and tract's own MatMulNBits.

use std::collections::BTreeMap;

use bitnet_eval::lower::{dequantize, lower_for_tract};
use bitnet_eval::{HostTensor, Runner, TensorData};
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::type_proto;
use bitnet_model::proto::*;
use bitnet_model::tensor;

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn value(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    domain: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_node")),
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    opset: i64,
) -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![
            OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            },
            OperatorSetIdProto {
                domain: Some("com.microsoft".into()),
                version: Some(1),
            },
        ],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Deterministic small pseudo-random values.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn pack(codes: &[i32], bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let mask = (1u32 << bits) - 1;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= (((c as u32) & mask) << (bits * (i % per))) as u8;
    }
    out
}

fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|p| x[i * k + p] * w[p * n + j]).sum();
        }
    }
    y
}

fn run1(p: &ModelProto, x: Vec<f32>, shape: Vec<usize>) -> Vec<f32> {
    let r = Runner::new(p, &BTreeMap::new(), &[]).unwrap();
    let out = r
        .run(&[(
            "X".into(),
            HostTensor {
                shape,
                data: TensorData::F32(x),
            },
        )])
        .unwrap();
    out[0].1.clone()
}

#[test]
fn int2_per_axis_dequantize_linear_is_lowered_exactly() {
    let (m, k, n) = (3usize, 8usize, 4usize);
    let mut seed = 1;
    let codes: Vec<i32> = (0..k * n)
        .map(|_| (lcg(&mut seed) % 3) as i32 - 1)
        .collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.1 + j as f32 * 0.37).collect();
    let x: Vec<f32> = (0..m * k)
        .map(|_| (lcg(&mut seed) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let w_t = tensor::from_raw(
        "w_q",
        DataType::Int2,
        &[k as i64, n as i64],
        pack(&codes, 2),
    );
    let s_t = tensor::from_f32("w_s", &[n as i64], &scales);
    let p = model(
        vec![
            node(
                "DequantizeLinear",
                "",
                &["w_q", "w_s"],
                "w",
                vec![attr_i("axis", 1)],
            ),
            node("MatMul", "", &["X", "w"], "Y", vec![]),
        ],
        vec![w_t, s_t],
        vec![value("X", 1, &[m as i64, k as i64])],
        vec![value("Y", 1, &[m as i64, n as i64])],
        25,
    );
    let lowered = lower_for_tract(&p).unwrap();
    let g = lowered.graph.as_ref().unwrap();
    assert_eq!(g.node.len(), 1, "the DequantizeLinear is gone");
    assert_eq!(g.initializer.len(), 1, "codes and scales are dropped");
    let w = tensor::to_f32(std::path::Path::new("t"), &g.initializer[0]).unwrap();
    let want: Vec<f32> = (0..k * n)
        .map(|i| codes[i] as f32 * scales[i % n])
        .collect();
    assert_eq!(w, want, "bit-exact");
    let y = run1(&p, x.clone(), vec![m, k]);
    let y_ref = matmul(&x, &want, m, k, n);
    for (a, b) in y.iter().zip(&y_ref) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn int4_blocked_with_zero_point_and_f16_scale() {
    // x [N=2, K=8] blocked along axis 1 with block 4 (Gemm transB layout), uint4 codes and
    // zero points; float16 scales.
    let (n, k, bs) = (2usize, 8usize, 4usize);
    let codes: Vec<i32> = (0..n * k).map(|i| (i * 5 % 16) as i32).collect();
    let zps: Vec<i32> = vec![8, 7, 9, 8];
    let scales = [0.5f32, 0.25, 1.5, 0.125];
    let x = tensor::from_raw("q", DataType::Uint4, &[n as i64, k as i64], pack(&codes, 4));
    let z = tensor::from_raw("z", DataType::Uint4, &[n as i64, 2], pack(&zps, 4));
    let s = tensor::from_f32_as_f16("s", &[n as i64, 2], &scales);
    let dq = node(
        "DequantizeLinear",
        "",
        &["q", "s", "z"],
        "w",
        vec![attr_i("axis", 1), attr_i("block_size", bs as i64)],
    );
    let d = dequantize("t", &dq, &x, &s, Some(&z)).unwrap();
    assert_eq!(d.data_type, DataType::Float16 as i32);
    for r in 0..n {
        for c in 0..k {
            let b = r * 2 + c / bs;
            assert_eq!(
                d.values[r * k + c],
                (codes[r * k + c] - zps[b]) as f32 * scales[b]
            );
        }
    }
    // Signed int4, per-tensor.
    let signed: Vec<i32> = vec![-8, -1, 0, 7];
    let x = tensor::from_raw("q", DataType::Int4, &[4], pack(&signed, 4));
    let s = tensor::from_f32("s", &[], &[0.5]);
    let dq = node("DequantizeLinear", "", &["q", "s"], "w", vec![]);
    let d = dequantize("t", &dq, &x, &s, None).unwrap();
    assert_eq!(d.values, vec![-4.0, -0.5, 0.0, 3.5]);
}

#[test]
fn tract_runs_matmul_nbits_bits2_natively() {
    // docs/formats.md 2.1: B uint8 [N, n_blocks, block_size / 4], q = t + 2 packed LSB first,
    // scales [N, n_blocks], zero points omitted (2).
    let (m, k, n, bs) = (3usize, 32usize, 5usize, 16usize);
    let nb = k / bs;
    let mut seed = 7;
    let t: Vec<i32> = (0..n * k)
        .map(|_| (lcg(&mut seed) % 3) as i32 - 1)
        .collect();
    let s: Vec<f32> = (0..n * nb).map(|i| 0.05 + 0.01 * i as f32).collect();
    let x: Vec<f32> = (0..m * k)
        .map(|_| (lcg(&mut seed) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let q: Vec<i32> = t.iter().map(|v| v + 2).collect();
    let b = tensor::from_raw(
        "B",
        DataType::Uint8,
        &[n as i64, nb as i64, (bs / 4) as i64],
        pack(&q, 2),
    );
    let sc = tensor::from_f32("S", &[n as i64, nb as i64], &s);
    let p = model(
        vec![node(
            "MatMulNBits",
            "com.microsoft",
            &["X", "B", "S"],
            "Y",
            vec![
                attr_i("K", k as i64),
                attr_i("N", n as i64),
                attr_i("bits", 2),
                attr_i("block_size", bs as i64),
            ],
        )],
        vec![b, sc],
        vec![value("X", 1, &[m as i64, k as i64])],
        vec![value("Y", 1, &[m as i64, n as i64])],
        17,
    );
    assert_eq!(
        lower_for_tract(&p).unwrap(),
        p,
        "MatMulNBits is left to tract"
    );
    // W [K, N] = (t * s)^T
    let mut w = vec![0f32; k * n];
    for j in 0..n {
        for c in 0..k {
            w[c * n + j] = t[j * k + c] as f32 * s[j * nb + c / bs];
        }
    }
    let y = run1(&p, x.clone(), vec![m, k]);
    let y_ref = matmul(&x, &w, m, k, n);
    for (a, b) in y.iter().zip(&y_ref) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
