//! Saving a model atomically: embedded weights below protobuf's 2 GiB limit, external data
//! above it or on request, temporary files renamed into place only once fully written, and
//! never over a file the model was read from.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use crate::error::{ModelError, Result};
use crate::proto::tensor_proto::DataLocation;
use crate::proto::{ModelProto, StringStringEntryProto, TensorProto};
use crate::tensor;
use crate::walk;

/// Protobuf cannot encode messages of 2 GiB or more; keep a margin for the graph itself.
pub const PROTOBUF_LIMIT: u64 = (2u64 << 30) - (64 << 20);

/// When tensors go to an external data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalData {
    /// Embedded unless the encoded model would exceed protobuf's limit.
    Auto,
    /// Always write tensors of at least `size_threshold` bytes to `<output>.data`.
    Always,
    /// Always embed (fails above protobuf's limit).
    Never,
}

#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub external_data: ExternalData,
    /// Tensors with fewer payload bytes than this stay embedded in external mode.
    pub size_threshold: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external_data: ExternalData::Auto,
            size_threshold: 1024,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub model_path: PathBuf,
    pub model_bytes: u64,
    pub data_path: Option<PathBuf>,
    pub data_bytes: u64,
}

impl Saved {
    pub fn total_bytes(&self) -> u64 {
        self.model_bytes + self.data_bytes
    }
}

/// The external data file name used for an output path: `model.onnx` -> `model.onnx.data`.
pub fn data_file_name(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".data");
    out.with_file_name(name)
}

/// Writes `model` to `out`. `protect` lists files that must not be overwritten (the input
/// model and its data files, as in `Model::source_files`).
pub fn save(
    model: &ModelProto,
    out: &Path,
    opts: &SaveOptions,
    protect: &[PathBuf],
) -> Result<Saved> {
    let data_path = data_file_name(out);
    check_not_input(out, protect, "the same file as")?;
    check_not_dir(out)?;
    let external = match opts.external_data {
        ExternalData::Always => true,
        ExternalData::Never => false,
        ExternalData::Auto => model.encoded_len() as u64 > PROTOBUF_LIMIT,
    };
    if !external {
        let len = model.encoded_len() as u64;
        if len > PROTOBUF_LIMIT {
            return Err(ModelError::TooLargeForProtobuf {
                path: out.to_path_buf(),
                size: len,
            });
        }
        let bytes = model.encode_to_vec();
        write_atomic(out, |w| w.write_all(&bytes))?;
        return Ok(Saved {
            model_path: out.to_path_buf(),
            model_bytes: bytes.len() as u64,
            data_path: None,
            data_bytes: 0,
        });
    }
    check_not_input(&data_path, protect, "the external data file of")?;
    check_not_dir(&data_path)?;
    let location = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Move large payloads out of the proto while streaming them into the data file.
    let mut outer = model.clone();
    let (data_tmp, file) = create_temp(&data_path)?;
    let mut offset = 0u64;
    let written = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        walk::for_each_tensor_mut(&mut outer, &mut |t: &mut TensorProto| -> Result<()> {
            if tensor::is_external(t) || tensor::payload_len(t) < opts.size_threshold {
                return Ok(());
            }
            let raw = tensor::raw_bytes(out, t)?.into_owned();
            let align = if raw.len() >= 1 << 20 { 4096 } else { 64 };
            let pad = offset.next_multiple_of(align) - offset;
            w.write_all(&vec![0u8; pad as usize])
                .map_err(|e| ModelError::io(&data_path, e))?;
            offset += pad;
            w.write_all(&raw)
                .map_err(|e| ModelError::io(&data_path, e))?;
            set_external(t, &location, offset, raw.len() as u64);
            offset += raw.len() as u64;
            Ok(())
        })?;
        let file = w
            .into_inner()
            .map_err(|e| ModelError::io(&data_path, e.into_error()))?;
        file.sync_all().map_err(|e| ModelError::io(&data_path, e))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&data_tmp);
        return Err(e);
    }
    let data_bytes = offset;
    let len = outer.encoded_len() as u64;
    if len > PROTOBUF_LIMIT {
        let _ = fs::remove_file(&data_tmp);
        return Err(ModelError::TooLargeForProtobuf {
            path: out.to_path_buf(),
            size: len,
        });
    }
    let bytes = outer.encode_to_vec();
    drop(outer);
    // Both files are complete on disk before either is renamed into place.
    let model_tmp = match write_temp(out, |w| w.write_all(&bytes)) {
        Ok(tmp) => tmp,
        Err(e) => {
            let _ = fs::remove_file(&data_tmp);
            return Err(e);
        }
    };
    // The data file goes into place first: a model file never points at a missing data file.
    let data_existed = data_path.symlink_metadata().is_ok();
    if let Err(e) = fs::rename(&data_tmp, &data_path) {
        let _ = fs::remove_file(&data_tmp);
        let _ = fs::remove_file(&model_tmp);
        return Err(ModelError::io(&data_path, e));
    }
    if let Err(e) = fs::rename(&model_tmp, out) {
        let _ = fs::remove_file(&model_tmp);
        if !data_existed {
            let _ = fs::remove_file(&data_path);
        }
        return Err(ModelError::io(out, e));
    }
    Ok(Saved {
        model_path: out.to_path_buf(),
        model_bytes: bytes.len() as u64,
        data_path: Some(data_path),
        data_bytes,
    })
}

fn set_external(t: &mut TensorProto, location: &str, offset: u64, length: u64) {
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v),
    };
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        kv("location", location.to_string()),
        kv("offset", offset.to_string()),
        kv("length", length.to_string()),
    ];
}

/// Fails when `target` is one of the protected input files.
fn check_not_input(target: &Path, protect: &[PathBuf], what: &'static str) -> Result<()> {
    let canon = match target.canonicalize() {
        Ok(c) => c,
        Err(_) => return Ok(()), // does not exist yet: cannot be an input
    };
    if let Some(input) = protect
        .iter()
        .find(|p| p.canonicalize().ok().as_ref() == Some(&canon))
    {
        return Err(ModelError::WouldOverwriteInput {
            output: target.to_path_buf(),
            input: input.clone(),
            what,
        });
    }
    Ok(())
}

/// Fails when `target` is an existing directory (renaming a file over it would fail late).
fn check_not_dir(target: &Path) -> Result<()> {
    match fs::metadata(target) {
        Ok(m) if m.is_dir() => Err(ModelError::io(
            target,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        )),
        _ => Ok(()),
    }
}

/// A hidden sibling of `target` unique to this process and call:
/// `.model.onnx.tmp-<pid>-<n>`.
fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Creates a new temporary sibling of `target` (never opening an existing file). Errors name
/// `target`.
fn create_temp(target: &Path) -> Result<(PathBuf, File)> {
    loop {
        let tmp = temp_path(target);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ModelError::io(target, e)),
        }
    }
}

/// Writes and syncs a temporary sibling of `target`, returning its path; on failure nothing
/// is left behind.
fn write_temp(
    target: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<PathBuf> {
    let (tmp, file) = create_temp(target)?;
    let run = || -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        body(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    };
    match run() {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(ModelError::io(target, e))
        }
    }
}

/// Writes a file through a temporary sibling, synced and renamed into place. On failure the
/// temporary file is removed and `target` is untouched; errors name `target`.
pub fn write_atomic(
    target: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    check_not_dir(target)?;
    let tmp = write_temp(target, body)?;
    fs::rename(&tmp, target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ModelError::io(target, e)
    })
}
