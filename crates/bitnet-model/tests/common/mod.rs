//! Helpers shared by the integration tests: small models built with the crate's own proto
//! types, written to temporary directories.

#![allow(dead_code)] // each test crate uses a different subset

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bitnet_model::proto::tensor_proto::{DataLocation, DataType};
use bitnet_model::proto::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TypeProto, ValueInfoProto,
};
use bitnet_model::{Model, ModelError};
use prost::Message;

/// A float value declaration without a shape.
pub fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model whose graph adds every initializer to the input `X`, one `Add` per initializer,
/// the last result being the output `Y`.
pub fn model_with(initializers: Vec<TensorProto>) -> ModelProto {
    let mut node = Vec::new();
    let mut prev = "X".to_string();
    for (i, t) in initializers.iter().enumerate() {
        let out = if i + 1 == initializers.len() {
            "Y".to_string()
        } else {
            format!("sum{i}")
        };
        node.push(NodeProto {
            input: vec![prev.clone(), t.name.clone().unwrap_or_default()],
            output: vec![out.clone()],
            name: Some(format!("add{i}")),
            op_type: Some("Add".into()),
            ..Default::default()
        });
        prev = out;
    }
    ModelProto {
        ir_version: Some(10),
        producer_name: Some("bitnet-model tests".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(21),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node,
            initializer: initializers,
            input: vec![value("X")],
            output: vec![value("Y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float32 tensor `[rows, cols]` with distinct values.
pub fn f32_tensor(name: &str, rows: i64, cols: i64) -> TensorProto {
    let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
    bitnet_model::tensor::from_f32(name, &[rows, cols], &values)
}

/// Sets a tensor's payload to live in an external file.
pub fn make_external(
    t: &mut TensorProto,
    location: &str,
    offset: Option<u64>,
    length: Option<u64>,
) {
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v),
    };
    t.raw_data = None;
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![kv("location", location.to_string())];
    if let Some(o) = offset {
        t.external_data.push(kv("offset", o.to_string()));
    }
    if let Some(l) = length {
        t.external_data.push(kv("length", l.to_string()));
    }
}

/// Encodes `model` to `path`.
pub fn write_model(path: &Path, model: &ModelProto) {
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// Loads `path`, which must fail without panicking; returns the error.
pub fn load_err(path: &Path) -> ModelError {
    match catch_unwind(AssertUnwindSafe(|| Model::load(path))) {
        Ok(Ok(_)) => panic!(
            "{}: loaded, but it should have been refused",
            path.display()
        ),
        Ok(Err(e)) => e,
        Err(_) => panic!(
            "{}: Model::load panicked instead of returning an error",
            path.display()
        ),
    }
}

/// Asserts that `msg` contains every one of `parts`.
#[track_caller]
pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} does not mention {p:?}"
        );
    }
}

/// The entries of a directory, sorted by name.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Entries of `dir` that look like temporary files of an unfinished save.
pub fn temp_files(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
