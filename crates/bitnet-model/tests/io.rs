//! Positive model I/O: external data round trips, deterministic output, zero-copy loading.

mod common;

use std::path::Path;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{ModelProto, TensorProto};
use bitnet_model::tensor;
use bitnet_model::{save, ExternalData, Model, SaveOptions};
use common::*;
use prost::Message;

/// Three weights of the float types BitNet checkpoints use, large enough to go external, and
/// one small int64 tensor that stays embedded under the default threshold (1024 bytes).
fn weights() -> Vec<TensorProto> {
    let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 - 300.0) * k).collect::<Vec<f32>>();
    vec![
        tensor::from_f32("w_f32", &[16, 32], &values(512, 0.01)), // 2048 bytes
        tensor::from_f32_as_f16("w_f16", &[24, 30], &values(720, 0.5)), // 1440 bytes
        tensor::from_f32_as_bf16("w_bf16", &[8, 100], &values(800, 0.25)), // 1600 bytes
        tensor::from_i64("shape", &[2], &[4, -1]),
    ]
}

fn always() -> SaveOptions {
    SaveOptions {
        external_data: ExternalData::Always,
        ..Default::default()
    }
}

fn decode(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn initializers(m: &ModelProto) -> &[TensorProto] {
    &m.graph.as_ref().unwrap().initializer
}

#[test]
fn external_data_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let original = model_with(weights());
    let out = dir.path().join("model.onnx");
    let saved = save(&original, &out, &always(), &[]).unwrap();

    // The data file exists next to the model and holds every large tensor, aligned.
    let data_path = dir.path().join("model.onnx.data");
    assert_eq!(saved.data_path.as_deref(), Some(data_path.as_path()));
    let data = std::fs::read(&data_path).unwrap();
    assert_eq!(saved.data_bytes, data.len() as u64);
    assert_eq!(saved.model_bytes, std::fs::metadata(&out).unwrap().len());
    assert_eq!(listing(dir.path()), ["model.onnx", "model.onnx.data"]);

    let on_disk = decode(&out);
    let mut placed = Vec::new();
    for (t, orig) in initializers(&on_disk).iter().zip(initializers(&original)) {
        let name = t.name.clone().unwrap();
        if name == "shape" {
            assert!(!tensor::is_external(t), "a 16-byte tensor went external");
            assert_eq!(t, orig);
            continue;
        }
        assert!(tensor::is_external(t), "{name} is embedded");
        assert!(t.raw_data.is_none() && t.float_data.is_empty());
        let kv = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
                .unwrap_or_else(|| panic!("{name}: no '{k}' key"))
        };
        assert_eq!(kv("location"), "model.onnx.data");
        let offset: u64 = kv("offset").parse().unwrap();
        let length: u64 = kv("length").parse().unwrap();
        assert_eq!(
            offset % 64,
            0,
            "{name}: offset {offset} is not 64-byte aligned"
        );
        let raw = orig.raw_data.as_ref().unwrap();
        assert_eq!(length, raw.len() as u64);
        assert_eq!(&data[offset as usize..(offset + length) as usize], &raw[..]);
        placed.push((name, offset, length));
    }
    assert_eq!(placed.len(), 3);

    // Loading resolves every external tensor back to the original bytes.
    let model = Model::load(&out).unwrap();
    assert_eq!(
        model.proto, original,
        "the loaded model differs from the one saved"
    );
    let external: Vec<(String, u64, u64)> = model
        .external
        .iter()
        .map(|r| {
            assert_eq!(r.location, "model.onnx.data");
            (r.tensor.clone(), r.offset, r.length)
        })
        .collect();
    assert_eq!(external, placed);
    let canonical_data = data_path.canonicalize().unwrap();
    assert_eq!(
        model.source_files,
        [out.canonicalize().unwrap(), canonical_data]
    );
    assert_eq!(model.file_bytes, saved.total_bytes());
    for (t, orig) in initializers(&model.proto)
        .iter()
        .zip(initializers(&original))
    {
        if t.data_type == Some(DataType::Int64 as i32) {
            continue;
        }
        assert_eq!(
            tensor::to_f32(&out, t).unwrap(),
            tensor::to_f32(&out, orig).unwrap()
        );
    }

    // Saved embedded again, the file decodes to the original proto, field for field.
    let embedded = dir.path().join("embedded.onnx");
    let never = SaveOptions {
        external_data: ExternalData::Never,
        ..Default::default()
    };
    let saved = save(&model.proto, &embedded, &never, &model.source_files).unwrap();
    assert_eq!(saved.data_path, None);
    assert!(!dir.path().join("embedded.onnx.data").exists());
    assert_eq!(decode(&embedded), original);
    assert_eq!(std::fs::read(&embedded).unwrap(), original.encode_to_vec());
    assert_eq!(Model::load(&embedded).unwrap().proto, original);
}

#[test]
fn large_tensors_are_page_aligned() {
    // Tensors of 1 MiB or more start on a 4096-byte boundary so they can be mapped.
    let dir = tempfile::tempdir().unwrap();
    let small = tensor::from_f32("small", &[300], &[1.5; 300]);
    let big = tensor::from_f32("big", &[512, 512], &vec![0.5; 512 * 512]);
    let original = model_with(vec![small, big]);
    let out = dir.path().join("m.onnx");
    save(&original, &out, &always(), &[]).unwrap();
    let model = Model::load(&out).unwrap();
    let refs = &model.external;
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0].offset, 0);
    assert_eq!(refs[1].tensor, "big");
    assert_eq!(refs[1].offset % 4096, 0, "{refs:?}");
    assert_eq!(model.proto, original);
}

#[test]
fn typed_fields_round_trip_through_external_data() {
    // Values in float_data / int32_data / int64_data / double_data are written to the data
    // file in raw_data layout and read back as the same values.
    let dir = tempfile::tempdir().unwrap();
    let n = 300usize;
    let floats: Vec<f32> = (0..n).map(|i| i as f32 / 7.0).collect();
    let typed = |name: &str, dt: DataType| TensorProto {
        name: Some(name.into()),
        data_type: Some(dt as i32),
        dims: vec![n as i64],
        ..Default::default()
    };
    let mut f = typed("f", DataType::Float);
    f.float_data = floats.clone();
    let mut h = typed("h", DataType::Float16);
    h.int32_data = floats
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits() as i32)
        .collect();
    let mut i = typed("i", DataType::Int64);
    i.int64_data = (0..n as i64).map(|v| v * -3).collect();
    let mut d = typed("d", DataType::Double);
    d.double_data = floats.iter().map(|&v| v as f64).collect();
    let original = model_with(vec![f, h, i, d]);
    let path = dir.path().join("typed.onnx");
    write_model(&path, &original);
    let model = Model::load(&path).unwrap();

    let opts = SaveOptions {
        external_data: ExternalData::Always,
        size_threshold: 0,
    };
    let out = dir.path().join("out.onnx");
    save(&model.proto, &out, &opts, &model.source_files).unwrap();
    let back = Model::load(&out).unwrap();
    assert_eq!(back.external.len(), 4);
    for (a, b) in initializers(&original)
        .iter()
        .zip(initializers(&back.proto))
    {
        assert!(b.raw_data.is_some());
        assert_eq!(
            tensor::raw_bytes(&path, a).unwrap(),
            tensor::raw_bytes(&out, b).unwrap(),
            "{:?}",
            a.name
        );
        if a.data_type == Some(DataType::Int64 as i32) {
            assert_eq!(tensor::to_i64(&out, b).unwrap(), a.int64_data);
        } else {
            let want: Vec<f32> = if a.data_type == Some(DataType::Float16 as i32) {
                floats
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect()
            } else {
                floats.clone()
            };
            assert_eq!(tensor::to_f32(&out, b).unwrap(), want, "{:?}", a.name);
        }
    }
}

#[test]
fn saving_is_deterministic() {
    let original = model_with(weights());
    for opts in [SaveOptions::default(), always()] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (pa, pb) = (a.path().join("model.onnx"), b.path().join("model.onnx"));
        save(&original, &pa, &opts, &[]).unwrap();
        save(&original, &pb, &opts, &[]).unwrap();
        assert_eq!(listing(a.path()), listing(b.path()));
        for name in listing(a.path()) {
            assert_eq!(
                std::fs::read(a.path().join(&name)).unwrap(),
                std::fs::read(b.path().join(&name)).unwrap(),
                "{name} differs between two saves with {opts:?}"
            );
        }
        // Saving the loaded model again gives the same bytes too.
        let model = Model::load(&pa).unwrap();
        let c = tempfile::tempdir().unwrap();
        let pc = c.path().join("model.onnx");
        save(&model.proto, &pc, &opts, &model.source_files).unwrap();
        for name in listing(a.path()) {
            assert_eq!(
                std::fs::read(a.path().join(&name)).unwrap(),
                std::fs::read(c.path().join(&name)).unwrap(),
                "{name} differs after a load/save cycle with {opts:?}"
            );
        }
    }
}

#[test]
fn overwriting_a_previous_output_is_atomic() {
    // Saving over an existing (non-input) output replaces both files and leaves nothing else.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    save(&model_with(weights()), &out, &always(), &[]).unwrap();
    let mut changed = weights();
    changed.swap(0, 2);
    let changed = model_with(changed);
    save(&changed, &out, &always(), &[]).unwrap();
    assert_eq!(listing(dir.path()), ["model.onnx", "model.onnx.data"]);
    assert_eq!(Model::load(&out).unwrap().proto, changed);
}

#[test]
fn external_tensors_are_zero_copy() {
    // The raw_data of external tensors are slices of one mapping of the data file: their
    // addresses differ exactly by their file offsets, and all lie within one file-sized range.
    // (Address arithmetic only: no unsafe code.)
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    save(&model_with(weights()), &out, &always(), &[]).unwrap();
    let data_len = std::fs::metadata(dir.path().join("model.onnx.data"))
        .unwrap()
        .len() as usize;
    let model = Model::load(&out).unwrap();
    assert_eq!(model.external.len(), 3);
    let by_name = |name: &str| {
        initializers(&model.proto)
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
            .raw_data
            .as_ref()
            .unwrap()
            .as_ptr() as usize
    };
    let first = &model.external[0];
    let base = by_name(&first.tensor).wrapping_sub(first.offset as usize);
    for r in &model.external {
        let addr = by_name(&r.tensor);
        assert_eq!(
            addr.wrapping_sub(base),
            r.offset as usize,
            "{}: not a slice of the same mapping as {}",
            r.tensor,
            first.tensor
        );
        assert!(r.offset as usize + r.length as usize <= data_len);
    }
}

#[test]
fn external_data_in_a_subdirectory_and_shared_file() {
    // Locations may name files in subdirectories; several tensors may share one file, and a
    // tensor may omit offset (0) and length (rest of the file).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    let a = f32_tensor("a", 2, 3);
    let b = f32_tensor("b", 3, 3);
    let mut blob = a.raw_data.clone().unwrap().to_vec();
    blob.extend_from_slice(&[0; 8]);
    let b_offset = blob.len() as u64;
    blob.extend_from_slice(b.raw_data.as_ref().unwrap());
    std::fs::write(dir.path().join("weights/all.bin"), &blob).unwrap();
    std::fs::write(dir.path().join("c.bin"), a.raw_data.as_ref().unwrap()).unwrap();
    let (mut ea, mut eb, mut ec) = (a.clone(), b.clone(), a.clone());
    make_external(&mut ea, "weights/all.bin", Some(0), Some(24));
    make_external(&mut eb, "./weights/all.bin", Some(b_offset), None);
    ec.name = Some("c".into());
    make_external(&mut ec, "c.bin", None, None);
    let path = dir.path().join("model.onnx");
    write_model(&path, &model_with(vec![ea, eb, ec]));
    let model = Model::load(&path).unwrap();
    let mut c = a.clone();
    c.name = Some("c".into());
    assert_eq!(initializers(&model.proto), [a, b, c]);
    assert_eq!(model.source_files.len(), 3, "{:?}", model.source_files);
}

#[test]
fn read_at_reads_mapped_payloads_from_their_file() {
    // `Mappings::read_at` gives the bytes the mapping shows, for payloads in the data file and
    // in the model file (the 16-byte int64 tensor stays embedded), and for memory that no map
    // holds (copied).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    save(&model_with(weights()), &out, &always(), &[]).unwrap();
    let model = Model::load(&out).unwrap();
    let mut seen = 0;
    for t in initializers(&model.proto) {
        let raw = t.raw_data.as_ref().unwrap();
        assert!(model.mappings.contains(raw), "{:?}", t.name);
        let mut buf = vec![0u8; raw.len() - 7];
        model.mappings.read_at(raw, 5, &mut buf).unwrap();
        assert_eq!(buf, raw[5..raw.len() - 2], "{:?}", t.name);
        seen += 1;
    }
    assert_eq!(
        seen, 4,
        "three external payloads and the embedded int64 one"
    );
    let heap = vec![7u8; 64];
    let mut buf = [0u8; 8];
    model.mappings.read_at(&heap, 10, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 8]);
}
