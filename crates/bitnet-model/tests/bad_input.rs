//! Bad input gets a clear error naming the file and, where there is one, the tensor: broken
//! protobuf files, tensors whose payload disagrees with their dims or type, and external data
//! that is missing, out of range, or outside the model's directory. Also the refusals and
//! clean failures of `save`.

mod common;

use std::path::{Path, PathBuf};

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{AttributeProto, NodeProto};
use bitnet_model::{save, ExternalData, Model, ModelError, SaveOptions};
use bytes::Bytes;
use common::*;
use prost::Message;

/// A directory holding `model.onnx` with one float32 initializer `W` of `[2, 3]`.
fn valid_model(dir: &Path) -> PathBuf {
    let path = dir.join("model.onnx");
    write_model(&path, &model_with(vec![f32_tensor("W", 2, 3)]));
    path
}

/// Writes a model whose initializer `W` is modified by `edit`, and returns its load error.
fn load_with_bad_tensor(
    dir: &Path,
    edit: impl FnOnce(&mut bitnet_model::proto::TensorProto),
) -> (PathBuf, String) {
    let mut w = f32_tensor("W", 2, 3);
    edit(&mut w);
    let path = dir.join("model.onnx");
    write_model(&path, &model_with(vec![w]));
    let e = load_err(&path);
    (path, e.to_string())
}

/// Writes `model.onnx` with `W` (float32 `[2, 3]`, 24 bytes) stored externally at `location`.
fn load_with_external(
    dir: &Path,
    location: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> (PathBuf, String) {
    let mut w = f32_tensor("W", 2, 3);
    make_external(&mut w, location, offset, length);
    let path = dir.join("model.onnx");
    write_model(&path, &model_with(vec![w]));
    let e = load_err(&path);
    assert!(matches!(e, ModelError::ExternalData { .. }), "{e:?}");
    (path, e.to_string())
}

// --- Files that are not (complete) ONNX protobufs -------------------------------------------

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let full = model_with(vec![f32_tensor("W", 32, 32)]).encode_to_vec();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let e = load_err(&path);
    assert!(matches!(e, ModelError::Decode { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[&path_str(&path), "not a valid ONNX protobuf file"],
    );
}

#[test]
fn text_file_is_not_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(
        &path,
        "This is a text file, not an ONNX model.\nSecond line.\n",
    )
    .unwrap();
    let e = load_err(&path);
    let msg = e.to_string();
    assert!(
        matches!(e, ModelError::Decode { .. } | ModelError::NoGraph { .. }),
        "{e:?}"
    );
    assert_mentions(&msg, &[&path_str(&path)]);
    assert!(
        msg.contains("not a valid ONNX protobuf file") || msg.contains("model has no graph"),
        "{msg}"
    );
}

#[test]
fn random_bytes_are_not_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    // A fixed xorshift stream: 300 files of 1..=4096 bytes. Some decode as an empty but valid
    // protobuf: "model has no graph" is then the clear error.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let len = (next() % 4096 + 1) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let e = load_err(&path);
        let msg = e.to_string();
        assert!(
            matches!(e, ModelError::Decode { .. } | ModelError::NoGraph { .. }),
            "round {round}: {e:?}"
        );
        assert_mentions(&msg, &[&path_str(&path)]);
    }
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"").unwrap();
    let e = load_err(&path);
    assert!(matches!(e, ModelError::Empty { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &[&path_str(&path), "empty"]);
}

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.onnx");
    let e = load_err(&path);
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &[&path_str(&path)]);
}

// --- Embedded tensors that disagree with their dims or type ---------------------------------

#[test]
fn raw_data_length_disagrees_with_dims() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| {
        t.raw_data = Some(Bytes::from(vec![0u8; 20]));
    });
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "raw_data has 20 bytes",
            "[2, 3]",
            "need 24",
        ],
    );
}

#[test]
fn typed_field_length_disagrees_with_dims() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| {
        t.raw_data = None;
        t.float_data = vec![1.0; 5];
    });
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "float_data holds 5 values",
            "need 6",
        ],
    );

    // A float16 tensor keeps its values in int32_data.
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| {
        t.raw_data = None;
        t.data_type = Some(DataType::Float16 as i32);
        t.int32_data = vec![0; 7];
    });
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "int32_data holds 7 values",
            "FLOAT16",
        ],
    );

    // A tensor with no payload at all but six elements.
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.raw_data = None);
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "float_data holds 0 values",
            "need 6",
        ],
    );

    // Strings must have one entry of string_data per element.
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| {
        t.raw_data = None;
        t.data_type = Some(DataType::String as i32);
        t.string_data = vec![b"a".to_vec(); 4];
    });
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "string_data holds 4 strings",
            "need 6",
        ],
    );
}

#[test]
fn bad_tensor_inside_a_subgraph_constant_is_named() {
    // Tensors are checked wherever they are: here a Constant inside an If branch.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = f32_tensor("C", 2, 2);
    bad.raw_data = Some(Bytes::from_static(&[0u8; 3]));
    let constant = NodeProto {
        output: vec!["c".into()],
        op_type: Some("Constant".into()),
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Tensor as i32),
            t: Some(bad),
            ..Default::default()
        }],
        ..Default::default()
    };
    let branch = bitnet_model::proto::GraphProto {
        name: Some("then".into()),
        node: vec![constant],
        output: vec![value("c")],
        ..Default::default()
    };
    let mut model = model_with(vec![f32_tensor("W", 2, 3)]);
    model.graph.as_mut().unwrap().node.push(NodeProto {
        input: vec!["cond".into()],
        output: vec!["Z".into()],
        op_type: Some("If".into()),
        attribute: vec![
            AttributeProto {
                name: Some("then_branch".into()),
                g: Some(branch.clone()),
                ..Default::default()
            },
            AttributeProto {
                name: Some("else_branch".into()),
                g: Some(branch),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let path = dir.path().join("model.onnx");
    write_model(&path, &model);
    let msg = load_err(&path).to_string();
    assert_mentions(
        &msg,
        &[&path_str(&path), "'C'", "raw_data has 3 bytes", "need 16"],
    );
}

#[test]
fn dims_product_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.dims = vec![i64::MAX, i64::MAX, 4]);
    assert_mentions(&msg, &[&path_str(&path), "'W'", "overflows"]);

    // The element count fits in u64 but its size in bytes does not.
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.dims = vec![1 << 62, 2]);
    assert_mentions(&msg, &[&path_str(&path), "'W'", "overflows"]);
}

#[test]
fn negative_dims() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.dims = vec![-1, 6]);
    assert_mentions(&msg, &[&path_str(&path), "'W'", "negative dimension -1"]);
}

#[test]
fn unknown_data_type() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.data_type = Some(99));
    assert_mentions(&msg, &[&path_str(&path), "'W'", "unknown data type 99"]);

    let (path, msg) = load_with_bad_tensor(dir.path(), |t| t.data_type = None);
    assert_mentions(&msg, &[&path_str(&path), "'W'", "UNDEFINED"]);
}

// --- External data ---------------------------------------------------------------------------

#[test]
fn missing_external_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = load_with_external(dir.path(), "weights.bin", None, None);
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "external data",
            "weights.bin",
            "cannot open",
        ],
    );
}

#[test]
fn external_offset_past_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), [0u8; 24]).unwrap();
    let (path, msg) = load_with_external(dir.path(), "weights.bin", Some(100), Some(24));
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "offset 100 is past the end of weights.bin (24 bytes)",
        ],
    );
}

#[test]
fn external_offset_plus_length_past_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), [0u8; 24]).unwrap();
    let (path, msg) = load_with_external(dir.path(), "weights.bin", Some(8), Some(24));
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "offset 8 + length 24 is past the end of weights.bin (24 bytes)",
        ],
    );
    // A length so large that offset + length overflows u64.
    let (path, msg) = load_with_external(dir.path(), "weights.bin", Some(8), Some(u64::MAX));
    assert_mentions(&msg, &[&path_str(&path), "'W'", "past the end"]);
}

#[test]
fn external_length_disagrees_with_dims() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), [0u8; 64]).unwrap();
    let (path, msg) = load_with_external(dir.path(), "weights.bin", Some(0), Some(20));
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "holds 20 bytes",
            "[2, 3]",
            "need 24",
        ],
    );
    // Without a length key the rest of the file is the payload: 64 bytes, not 24.
    let (path, msg) = load_with_external(dir.path(), "weights.bin", None, None);
    assert_mentions(
        &msg,
        &[&path_str(&path), "'W'", "holds 64 bytes", "need 24"],
    );
}

#[test]
fn external_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("weights.bin");
    std::fs::write(&data, [0u8; 24]).unwrap();
    let abs = data.canonicalize().unwrap();
    let (path, msg) = load_with_external(dir.path(), &path_str(&abs), None, None);
    assert_mentions(&msg, &[&path_str(&path), "'W'", "is an absolute path"]);
}

#[test]
fn external_path_with_parent_dir() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(outer.path().join("secret.bin"), [0u8; 24]).unwrap();
    std::fs::write(dir.join("weights.bin"), [0u8; 24]).unwrap();
    for location in [
        "../secret.bin",
        "sub/../weights.bin",
        "./../model/weights.bin",
    ] {
        let (path, msg) = load_with_external(&dir, location, None, None);
        assert_mentions(&msg, &[&path_str(&path), "'W'", location, "contains '..'"]);
    }
}

#[cfg(unix)]
#[test]
fn external_symlink_pointing_outside() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let secret = outer.path().join("secret.bin");
    std::fs::write(&secret, [0u8; 24]).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("weights.bin")).unwrap();
    let (path, msg) = load_with_external(&dir, "weights.bin", None, None);
    assert_mentions(
        &msg,
        &[
            &path_str(&path),
            "'W'",
            "weights.bin",
            "outside the model directory",
        ],
    );

    // A symlinked directory leading outside is refused the same way.
    std::os::unix::fs::symlink(outer.path(), dir.join("up")).unwrap();
    let (path, msg) = load_with_external(&dir, "up/secret.bin", None, None);
    assert_mentions(
        &msg,
        &[&path_str(&path), "'W'", "outside the model directory"],
    );
}

#[test]
fn external_location_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    let (path, msg) = load_with_external(dir.path(), "weights", None, None);
    assert_mentions(
        &msg,
        &[&path_str(&path), "'W'", "'weights' is not a regular file"],
    );
}

#[test]
fn external_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), [0u8; 24]).unwrap();
    let mut w = f32_tensor("W", 2, 3);
    make_external(&mut w, "weights.bin", None, None);
    w.external_data[0].key = Some("file".into());
    let path = dir.path().join("model.onnx");
    write_model(&path, &model_with(vec![w]));
    assert_mentions(
        &load_err(&path).to_string(),
        &[&path_str(&path), "'W'", "no 'location' key"],
    );

    let mut w = f32_tensor("W", 2, 3);
    make_external(&mut w, "weights.bin", None, None);
    w.external_data
        .push(bitnet_model::proto::StringStringEntryProto {
            key: Some("offset".into()),
            value: Some("-8".into()),
        });
    write_model(&path, &model_with(vec![w]));
    assert_mentions(
        &load_err(&path).to_string(),
        &[
            &path_str(&path),
            "'W'",
            "offset '-8' is not a non-negative integer",
        ],
    );
}

// --- Saving ----------------------------------------------------------------------------------

#[test]
fn save_over_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = valid_model(dir.path());
    let before = std::fs::read(&input).unwrap();
    let model = Model::load(&input).unwrap();
    let spellings = [input.clone(), dir.path().join(".").join("model.onnx")];
    for out in &spellings {
        for external_data in [
            ExternalData::Auto,
            ExternalData::Always,
            ExternalData::Never,
        ] {
            let opts = SaveOptions {
                external_data,
                size_threshold: 0,
            };
            let e = save(&model.proto, out, &opts, &model.source_files).unwrap_err();
            assert!(matches!(e, ModelError::WouldOverwriteInput { .. }), "{e:?}");
            assert_mentions(&e.to_string(), &["refusing to write", &path_str(out)]);
        }
    }
    drop(model);
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input changed");
    assert_eq!(listing(dir.path()), ["model.onnx"]);
}

#[test]
fn save_external_data_over_input_data_is_refused() {
    // in.onnx keeps W in "out.onnx.data": saving to out.onnx with external data would write
    // out.onnx.data, the input's data file.
    let dir = tempfile::tempdir().unwrap();
    let mut w = f32_tensor("W", 2, 3);
    let raw = w.raw_data.clone().unwrap();
    let data = dir.path().join("out.onnx.data");
    std::fs::write(&data, &raw).unwrap();
    make_external(&mut w, "out.onnx.data", Some(0), Some(24));
    let input = dir.path().join("in.onnx");
    write_model(&input, &model_with(vec![w]));
    let model = Model::load(&input).unwrap();
    assert!(model.source_files.contains(&data.canonicalize().unwrap()));

    let out = dir.path().join("out.onnx");
    let opts = SaveOptions {
        external_data: ExternalData::Always,
        size_threshold: 0,
    };
    let e = save(&model.proto, &out, &opts, &model.source_files).unwrap_err();
    match &e {
        ModelError::WouldOverwriteInput { output, what, .. } => {
            assert_eq!(output, &data);
            assert_eq!(*what, "the external data file of");
        }
        other => panic!("{other:?}"),
    }
    assert_mentions(&e.to_string(), &[&path_str(&data), "external data file"]);
    assert_eq!(
        std::fs::read(&data).unwrap(),
        raw,
        "the input's data file changed"
    );
    assert!(
        !out.exists(),
        "the model was written although its data file was refused"
    );
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        listing(dir.path())
    );

    // Embedded, the same output writes no data file and is fine.
    let embedded = SaveOptions {
        external_data: ExternalData::Never,
        ..Default::default()
    };
    save(&model.proto, &out, &embedded, &model.source_files).unwrap();
    assert_eq!(std::fs::read(&data).unwrap(), raw);
}

#[test]
fn failed_save_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let always = SaveOptions {
        external_data: ExternalData::Always,
        size_threshold: 0,
    };

    // 1. A tensor that cannot be written to the data file (payload disagrees with dims).
    let mut bad = f32_tensor("W", 2, 3);
    bad.raw_data = Some(Bytes::from(vec![0u8; 20]));
    let model = model_with(vec![f32_tensor("A", 4, 4), bad]);
    let out = dir.path().join("out.onnx");
    let e = save(&model, &out, &always, &[]).unwrap_err();
    assert_mentions(&e.to_string(), &["'W'", "raw_data has 20 bytes"]);
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));

    // 2. The output is a directory: the rename cannot succeed, in either mode.
    let good = model_with(vec![f32_tensor("W", 2, 3)]);
    let out = dir.path().join("sub");
    std::fs::create_dir(&out).unwrap();
    for opts in [SaveOptions::default(), always.clone()] {
        let e = save(&good, &out, &opts, &[]).unwrap_err();
        assert_mentions(&e.to_string(), &[&path_str(&out)]);
        assert_eq!(listing(dir.path()), ["sub"], "{opts:?}");
    }

    // 3. The external data file name is taken by a directory.
    let out = dir.path().join("m.onnx");
    std::fs::create_dir(dir.path().join("m.onnx.data")).unwrap();
    let e = save(&good, &out, &always, &[]).unwrap_err();
    assert_mentions(&e.to_string(), &["m.onnx.data"]);
    assert_eq!(listing(dir.path()), ["m.onnx.data", "sub"]);

    // 4. Read-only directory (skipped when running as root, who can write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), b"").is_err() {
            for opts in [SaveOptions::default(), always.clone()] {
                let out = ro.join("model.onnx");
                let e = save(&good, &out, &opts, &[]).unwrap_err();
                assert_mentions(&e.to_string(), &[&path_str(&ro)]);
                assert!(listing(&ro).is_empty());
            }
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn save_to_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with(vec![f32_tensor("W", 2, 3)]);
    let out = dir.path().join("does-not-exist").join("model.onnx");
    for external_data in [ExternalData::Never, ExternalData::Always] {
        let opts = SaveOptions {
            external_data,
            size_threshold: 0,
        };
        let e = save(&model, &out, &opts, &[]).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
        let msg = e.to_string();
        assert_mentions(&msg, &[&path_str(&out), "No such file or directory"]);
        assert!(
            !msg.contains(".model.onnx"),
            "the error names a temporary file: {msg}"
        );
    }
    assert!(listing(dir.path()).is_empty());
}
