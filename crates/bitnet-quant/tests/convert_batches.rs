//! The conversion driver's output does not depend on how it schedules the work: thread count,
//! batch size, whether new weights stream to the output's data file as they are made, and
//! whether the input's payloads are memory-mapped (and released) or in memory.

use std::path::Path;
use std::sync::Mutex;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};
use bitnet_model::save::{ExternalData, SaveOptions, Writer};
use bitnet_model::{tensor, Model};
use bitnet_quant::convert::{self, ConvertOptions, Progress, Selection};
use bitnet_quant::emit::Emitter;
use bitnet_quant::quant::QuantConfig;

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "bitnet-quant-convert-batches-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// Seeded pseudo-random weights (not ternary, so the absmean path runs).
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// A chain of linear layers: MatMul ([K, N]) and Gemm transB=1 ([N, K]) weights of float32
/// and float16, one weight shared by two MatMuls, shapes large enough that rows are split
/// across threads (more than 16 Ki weights per tensor).
fn model() -> ModelProto {
    let d = 192;
    let mut inits = Vec::new();
    let mut nodes = Vec::new();
    let mut x = "X".to_string();
    for i in 0..7 {
        let w = format!("w{i}");
        let vals = weights(d * d, i as u64);
        let dims = [d as i64, d as i64];
        inits.push(if i % 3 == 2 {
            tensor::from_f32_as_f16(&w, &dims, &vals)
        } else {
            tensor::from_f32(&w, &dims, &vals)
        });
        let y = format!("h{i}");
        let mut n = NodeProto {
            name: Some(format!("layer{i}")),
            input: vec![x.clone(), w.clone()],
            output: vec![y.clone()],
            ..Default::default()
        };
        if i % 2 == 1 {
            n.op_type = Some("Gemm".into());
            n.attribute.push(AttributeProto {
                name: Some("transB".into()),
                r#type: Some(2),
                i: Some(1),
                ..Default::default()
            });
        } else {
            n.op_type = Some("MatMul".into());
        }
        nodes.push(n);
        x = y;
    }
    // w0 again, in a second MatMul.
    nodes.push(NodeProto {
        name: Some("again".into()),
        op_type: Some("MatMul".into()),
        input: vec![x, "w0".into()],
        output: vec!["Y".into()],
        ..Default::default()
    });
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(21),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![value("X")],
            output: vec![value("Y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Progress for Events {
    fn queued(&self, weights: usize, bytes: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("queued {weights} {bytes}"));
    }
    fn converted(&self, weight: &str, bytes: u64) {
        self.0.lock().unwrap().push(format!("{weight} {bytes}"));
    }
}

struct Run {
    threads: usize,
    batch_bytes: Option<u64>,
    stream: bool,
    mapped: bool,
}

/// Converts `input` (written to `dir` first) and returns the output's files' bytes and the
/// progress events.
fn run(
    dir: &Path,
    input: &ModelProto,
    emitter: &dyn Emitter,
    r: &Run,
    external: ExternalData,
) -> (Vec<Vec<u8>>, Vec<String>) {
    let src = dir.join("in.onnx");
    if !src.exists() {
        bitnet_model::save(input, &src, &SaveOptions::default(), &[]).unwrap();
    }
    let mut model = Model::load(&src).unwrap();
    if !r.mapped {
        // Payloads copied to the heap: nothing to release.
        bitnet_model::walk::for_each_tensor_mut(&mut model.proto, &mut |t: &mut TensorProto| {
            if let Some(raw) = &t.raw_data {
                t.raw_data = Some(bytes::Bytes::copy_from_slice(raw));
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    let out = dir.join("out.onnx");
    let save_opts = SaveOptions {
        external_data: external,
        ..Default::default()
    };
    let writer = Writer::new(&out, &save_opts, &model.source_files)
        .unwrap()
        .with_source(&model.mappings);
    if r.stream {
        writer.stream().unwrap();
    }
    let events = Events::default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(r.threads)
        .build()
        .unwrap();
    pool.install(|| {
        let opts = ConvertOptions {
            quant: QuantConfig::default(),
            selection: Selection {
                quantize_head: true,
                ..Default::default()
            },
            emitter,
            vocab: bitnet_quant::vocab::VocabOptions::none(),
            last_logits: false,
            flags: "test".into(),
            progress: Some(&events),
            source: Some(&model.mappings),
            sink: Some(&writer),
            batch_bytes: r.batch_bytes,
        };
        convert::convert(&mut model.proto, &src, &opts).unwrap();
    });
    let saved = writer.finish(&model.proto).unwrap();
    let mut files = vec![std::fs::read(&saved.model_path).unwrap()];
    if let Some(d) = &saved.data_path {
        files.push(std::fs::read(d).unwrap());
    }
    std::fs::remove_file(&out).unwrap();
    let _ = std::fs::remove_file(bitnet_model::save::data_file_name(&out));
    (files, events.0.into_inner().unwrap())
}

fn emitters() -> Vec<Box<dyn Emitter>> {
    vec![
        Box::new(bitnet_quant::emit::ort::Ort {
            block_size: None,
            accuracy_level: 4,
        }),
        Box::new(bitnet_quant::emit::qdq_int8::QdqInt8),
    ]
}

#[test]
fn output_is_identical_for_any_threads_batches_and_streaming() {
    let dir = TempDir::new();
    let input = model();
    for emitter in emitters() {
        for external in [ExternalData::Auto, ExternalData::Always] {
            let base = Run {
                threads: 1,
                batch_bytes: None,
                stream: false,
                mapped: false,
            };
            let (want, want_events) = run(&dir.0, &input, emitter.as_ref(), &base, external);
            assert_eq!(want.len(), 1 + (external == ExternalData::Always) as usize);
            // 7 distinct weights (w0 shared), each reported once, in weight-name order.
            assert_eq!(want_events.len(), 8, "{want_events:?}");
            for threads in [1, 2, 4] {
                for batch_bytes in [None, Some(1), Some(300_000)] {
                    for mapped in [false, true] {
                        let r = Run {
                            threads,
                            batch_bytes,
                            stream: false,
                            mapped,
                        };
                        let (got, events) = run(&dir.0, &input, emitter.as_ref(), &r, external);
                        assert!(
                            got == want,
                            "{}: {threads} threads, batch {batch_bytes:?}, mapped {mapped}",
                            emitter.name()
                        );
                        assert_eq!(events, want_events);
                    }
                }
            }
            // Streaming the new weights: byte-identical when the output stays embedded (the
            // stored payloads are read back); with external data, identical across threads.
            let stream = |threads| Run {
                threads,
                batch_bytes: Some(1),
                stream: true,
                mapped: true,
            };
            let (s1, _) = run(&dir.0, &input, emitter.as_ref(), &stream(1), external);
            let (s4, _) = run(&dir.0, &input, emitter.as_ref(), &stream(4), external);
            assert!(
                s1 == s4,
                "{}: streamed output depends on threads",
                emitter.name()
            );
            if external == ExternalData::Auto {
                assert!(
                    s1 == want,
                    "{}: streamed embedded output differs",
                    emitter.name()
                );
            } else {
                assert_eq!(s1.len(), 2);
                // Same tensors, same bytes, stored in another order.
                let reload = |files: &[Vec<u8>]| {
                    let d = TempDir::new();
                    std::fs::write(d.0.join("m.onnx"), &files[0]).unwrap();
                    // The data file name recorded in the model is out.onnx.data.
                    std::fs::write(d.0.join("out.onnx.data"), &files[1]).unwrap();
                    let m = Model::load(d.0.join("m.onnx")).unwrap();
                    let mut inits: Vec<(String, Vec<u8>)> = m
                        .graph()
                        .initializer
                        .iter()
                        .map(|t| {
                            (
                                t.name.clone().unwrap(),
                                tensor::raw_bytes(Path::new(""), t).unwrap().into_owned(),
                            )
                        })
                        .collect();
                    inits.sort();
                    inits
                };
                assert!(reload(&s1) == reload(&want), "{}", emitter.name());
            }
        }
    }
}

/// Converting releases the pages of every quantized weight: the model's bytes are still
/// readable (they fault back in from the file) and unchanged.
#[test]
fn released_pages_read_back_unchanged() {
    let dir = TempDir::new();
    let src = dir.0.join("m.onnx");
    let save_opts = SaveOptions {
        external_data: ExternalData::Always,
        ..Default::default()
    };
    bitnet_model::save(&model(), &src, &save_opts, &[]).unwrap();
    let m = Model::load(&src).unwrap();
    let t: &TensorProto = &m.graph().initializer[0];
    let raw = t.raw_data.as_ref().unwrap();
    assert!(m.mappings.contains(raw));
    let before = raw.to_vec();
    m.mappings.release(raw);
    assert_eq!(raw.as_ref(), before.as_slice());
    // Memory that is not mapped is left alone.
    let heap = vec![7u8; 1 << 16];
    assert!(!m.mappings.contains(&heap));
    m.mappings.release(&heap);
    assert!(heap.iter().all(|&b| b == 7));
    assert_eq!(t.data_type, Some(DataType::Float as i32));
}
