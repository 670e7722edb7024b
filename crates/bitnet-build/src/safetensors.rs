//! safetensors files (a checkpoint's weights): an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` and the
//! tensors' bytes, offsets relative to the end of the header. Sharded checkpoints add
//! `model.safetensors.index.json`, whose `weight_map` names each tensor's file.
//!
//! Everything is checked before it is used: the header fits in the file, every tensor's
//! bytes lie inside the data and match its dtype and shape. Payloads are read with positioned
//! reads (never mapped), so a tensor's pages are not kept resident once it is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};

/// The element types a BitNet checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    U8,
    I8,
    /// Any other safetensors dtype: recognised so the error can name it.
    Other(&'static str),
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F64" => Dtype::Other("F64"),
            "I16" => Dtype::Other("I16"),
            "U16" => Dtype::Other("U16"),
            "I32" => Dtype::Other("I32"),
            "U32" => Dtype::Other("U32"),
            "I64" => Dtype::Other("I64"),
            "U64" => Dtype::Other("U64"),
            "BOOL" => Dtype::Other("BOOL"),
            "F8_E4M3" => Dtype::Other("F8_E4M3"),
            "F8_E5M2" => Dtype::Other("F8_E5M2"),
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::Other("F64" | "I64" | "U64") => 8,
            Dtype::Other("I32" | "U32") => 4,
            Dtype::Other("I16" | "U16") => 2,
            Dtype::Other(_) => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::Other(s) => s,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

/// One tensor of a checkpoint: where its bytes are.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub len: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a checkpoint, over one or more files.
#[derive(Debug)]
pub struct Tensors {
    pub files: Vec<(PathBuf, File)>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// Headers larger than this are refused (a real one is a few hundred kilobytes).
const MAX_HEADER: u64 = 100 << 20;

impl Tensors {
    /// Opens the checkpoint's weights in `dir`: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Tensors> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index.is_file() {
            shard_files(&index, dir)?
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(BuildError::config(
                dir,
                "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
            ));
        };
        let mut out = Tensors {
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in names {
            let file = File::open(&path).map_err(|e| BuildError::io(&path, e))?;
            let idx = out.files.len();
            for (name, info) in read_header(&path, &file, idx)? {
                if out.tensors.insert(name.clone(), info).is_some() {
                    return Err(BuildError::tensor(
                        &path,
                        &name,
                        "appears in more than one safetensors file",
                    ));
                }
            }
            out.files.push((path, file));
        }
        Ok(out)
    }

    pub fn path_of(&self, info: &TensorInfo) -> &Path {
        &self.files[info.file].0
    }

    /// The raw little-endian bytes of `info`.
    pub fn read(&self, name: &str, info: &TensorInfo) -> Result<Vec<u8>> {
        let (path, file) = &self.files[info.file];
        let mut buf = vec![0u8; info.len];
        read_exact_at(file, &mut buf, info.offset).map_err(|e| {
            BuildError::tensor(path, name, format!("reading its {} bytes: {e}", info.len))
        })?;
        Ok(buf)
    }

    /// The values of a float tensor as f32.
    pub fn read_f32(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let raw = self.read(name, info)?;
        Ok(match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(BuildError::tensor(
                    self.path_of(info),
                    name,
                    format!("dtype {} where a float tensor was expected", other.name()),
                ))
            }
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// The shard files an index names, each once, in name order.
fn shard_files(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| BuildError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BuildError::config(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| BuildError::config(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| {
            BuildError::config(index, format!("`weight_map.{tensor}` is not a file name"))
        })?;
        let plain = Path::new(f)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || f.is_empty() {
            return Err(BuildError::config(
                index,
                format!(
                    "`weight_map.{tensor}` = {f:?} is not a file inside the checkpoint directory"
                ),
            ));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(BuildError::config(
            index,
            format!("names {}, which does not exist", missing.display()),
        ));
    }
    Ok(paths)
}

/// The tensors of one safetensors file, every entry checked against the file's length.
fn read_header(path: &Path, file: &File, idx: usize) -> Result<Vec<(String, TensorInfo)>> {
    let bad = |message: String| BuildError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let file_len = file.metadata().map_err(|e| BuildError::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    if file_len < 8 {
        return Err(bad(format!(
            "{file_len} bytes, shorter than the header length"
        )));
    }
    read_exact_at(file, &mut len8, 0).map_err(|e| BuildError::io(path, e))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    read_exact_at(file, &mut header, 8).map_err(|e| BuildError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let terr = |m: String| BuildError::tensor(path, name, m);
        let dtype_s = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| terr("no `dtype` in the header".into()))?;
        let dtype =
            Dtype::parse(dtype_s).ok_or_else(|| terr(format!("unknown dtype {dtype_s:?}")))?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| terr("no `shape` in the header".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| terr("shape entries must be non-negative integers".into()))?;
        let offs = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| terr("`data_offsets` must be two integers".into()))?;
        let (begin, end) = offs;
        if begin > end || end > data_len {
            return Err(terr(format!(
                "data_offsets [{begin}, {end}] outside the {data_len} data bytes"
            )));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
        if (end - begin) as usize != expected {
            return Err(terr(format!(
                "{} bytes for shape {shape:?} of {dtype_s}, which needs {expected}",
                end - begin
            )));
        }
        out.push((
            name.clone(),
            TensorInfo {
                file: idx,
                dtype,
                shape,
                offset: data_start + begin,
                len: expected,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a safetensors file of `(name, dtype, shape, bytes)`.
    pub(crate) fn write(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_what_it_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let vals: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write(
            &p,
            &[
                ("a", "F32", vec![2], vals),
                ("b", "U8", vec![1, 3], vec![1, 2, 3]),
            ],
        );
        let t = Tensors::open(dir.path()).unwrap();
        let a = &t.tensors["a"];
        assert_eq!(t.read_f32("a", a).unwrap(), vec![1.5, -2.0]);
        assert_eq!(t.read("b", &t.tensors["b"]).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn refuses_offsets_outside_the_file_and_bad_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        write(&p, &[("a", "F32", vec![3], vec![0; 8])]);
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("needs 12"), "{e}");
        // Truncate the data: offsets now point past the end.
        write(&p, &[("a", "F32", vec![2], vec![0; 8])]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::fs::write(&p, [0xff; 12]).unwrap();
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("header length"), "{e}");
    }

    #[test]
    fn index_names_files_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "../x.safetensors"}}"#,
        )
        .unwrap();
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a file inside"), "{e}");
    }
}
