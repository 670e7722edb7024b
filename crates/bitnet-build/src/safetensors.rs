//! safetensors files (a checkpoint's weights): an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` and the
//! tensors' bytes, offsets relative to the end of the header. Sharded checkpoints add
//! `model.safetensors.index.json`, whose `weight_map` names each tensor's file.
//!
//! Everything is checked before it is used, as Hugging Face's `safetensors` crate checks it
//! (the crate validates every header too): the header fits in the file, the tensors tile the
//! data exactly and match their dtypes and shapes, the data ends where the file ends.
//! Payloads are read with positioned reads (never mapped), so a tensor's pages are not kept
//! resident once it is used.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors as st;

use crate::error::{json_error, quote, short, BuildError, Result};
use crate::files::{self, Unique};

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
    fn of(d: st::Dtype) -> Dtype {
        use st::Dtype as D;
        match d {
            D::F32 => Dtype::F32,
            D::F16 => Dtype::F16,
            D::BF16 => Dtype::BF16,
            D::U8 => Dtype::U8,
            D::I8 => Dtype::I8,
            D::F64 => Dtype::Other("F64"),
            D::I16 => Dtype::Other("I16"),
            D::U16 => Dtype::Other("U16"),
            D::I32 => Dtype::Other("I32"),
            D::U32 => Dtype::Other("U32"),
            D::I64 => Dtype::Other("I64"),
            D::U64 => Dtype::Other("U64"),
            D::BOOL => Dtype::Other("BOOL"),
            D::F8_E4M3 => Dtype::Other("F8_E4M3"),
            D::F8_E5M2 => Dtype::Other("F8_E5M2"),
            _ => Dtype::Other("another dtype (sub-byte or complex)"),
        }
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

/// Headers larger than this are refused before they are read: a 2B model's header is about
/// 30 KB and a 70B model's shards' a few hundred KB (safetensors itself stops at 100 MB).
pub const MAX_HEADER: u64 = 16 << 20;

impl Tensors {
    /// Opens the checkpoint's weights in `dir`: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`. Every header is validated as Hugging Face's
    /// `safetensors` crate validates it (see [`read_header`]); with an index, every tensor
    /// must be in the shard its `weight_map` names.
    pub fn open(dir: &Path) -> Result<Tensors> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (names, weight_map): (Vec<PathBuf>, Placement) = if index.is_file() {
            shard_files(&index, dir)?
        } else if single.is_file() {
            (vec![single], Vec::new())
        } else {
            return Err(BuildError::config(
                dir,
                "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
            ));
        };
        let placed: HashMap<&str, usize> =
            weight_map.iter().map(|(t, f)| (t.as_str(), *f)).collect();
        let mut out = Tensors {
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in &names {
            let file = File::open(path).map_err(|e| BuildError::io(path, e))?;
            let idx = out.files.len();
            for (name, info) in read_header(path, &file, idx)? {
                if let Some(&named) = placed.get(name.as_str()) {
                    if named != idx {
                        return Err(BuildError::tensor(
                            &index,
                            &name,
                            format!(
                                "`weight_map` puts it in {}, but it is in {}",
                                names[named].display(),
                                path.display()
                            ),
                        ));
                    }
                }
                if out.tensors.insert(name.clone(), info).is_some() {
                    return Err(BuildError::tensor(
                        path,
                        &name,
                        "appears in more than one safetensors file",
                    ));
                }
            }
            out.files.push((path.clone(), file));
        }
        // What the index promises a shard holds, the shard must hold.
        for (tensor, f) in &weight_map {
            if !out.tensors.contains_key(tensor) {
                return Err(BuildError::tensor(
                    &names[*f],
                    tensor,
                    format!(
                        "missing: {} puts it in this file",
                        index.file_name().unwrap_or_default().to_string_lossy()
                    ),
                ));
            }
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

/// The `model.safetensors.index.json` fields `build` reads (`metadata` and anything else are
/// skipped as they are parsed).
#[derive(serde::Deserialize)]
struct Index {
    weight_map: Unique<String>,
}

/// Each tensor an index lists, with its shard (an index into the shard files).
type Placement = Vec<(String, usize)>;

/// The shard files an index names, each once, in name order, and each tensor's shard.
fn shard_files(index: &Path, dir: &Path) -> Result<(Vec<PathBuf>, Placement)> {
    let bytes = files::read_capped(index, files::MAX_INDEX_BYTES)?;
    let parsed: Index = serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::config(index, format!("not a valid index: {}", json_error(&e))))?;
    drop(bytes);
    let mut files: Vec<String> = Vec::new();
    for (tensor, f) in &parsed.weight_map.0 {
        let plain = Path::new(f)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || f.is_empty() {
            return Err(BuildError::config(
                index,
                format!(
                    "`weight_map.{}` = {} is not a file inside the checkpoint directory",
                    short(tensor),
                    quote(&f.as_str().into())
                ),
            ));
        }
        if files.last() != Some(f) {
            files.push(f.clone());
        }
    }
    files.sort_unstable();
    files.dedup();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(BuildError::config(
            index,
            format!(
                "names {}, which does not exist",
                short(&missing.display().to_string())
            ),
        ));
    }
    let number: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let placed = parsed
        .weight_map
        .0
        .into_iter()
        .map(|(t, f)| {
            let n = number[f.as_str()];
            (t, n)
        })
        .collect();
    Ok((paths, placed))
}

/// A safetensors header as it is parsed: each tensor's entry in file order and
/// `__metadata__`, every key once (serde's maps would keep the last of a key silently, and the
/// safetensors crate, which reads into one, cannot tell).
struct Header {
    tensors: Vec<(String, st::tensor::TensorInfo)>,
    metadata: Option<Unique<String>>,
}

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Header, A::Error> {
                use serde::de::Error;
                let mut h = Header {
                    tensors: Vec::new(),
                    metadata: None,
                };
                let mut metadata_seen = false;
                while let Some(k) = map.next_key::<String>()? {
                    let key = short(&k);
                    if k == "__metadata__" {
                        if metadata_seen {
                            return Err(A::Error::custom("key `__metadata__` appears twice"));
                        }
                        metadata_seen = true;
                        h.metadata = map.next_value().map_err(|e| {
                            A::Error::custom(format!(
                                "`__metadata__` must map strings to strings: {e}"
                            ))
                        })?;
                    } else {
                        let info = map
                            .next_value()
                            .map_err(|e| A::Error::custom(format!("tensor `{key}`: {e}")))?;
                        h.tensors.push((k, info));
                    }
                }
                match files::first_duplicate(h.tensors.iter().map(|(k, _)| k.as_str())) {
                    Some(k) => Err(A::Error::custom(format!(
                        "key `{}` appears twice",
                        short(k)
                    ))),
                    None => Ok(h),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// The tensors of one safetensors file, checked as Hugging Face's `safetensors` crate checks
/// a file it loads (`SafeTensors::read_metadata`): the header length fits the file, the header
/// is UTF-8 JSON, `__metadata__` maps strings to strings, sorted by offset the tensors tile
/// the data exactly (each begins where the previous ends, its length is its shape times its
/// dtype), and the data ends where the file ends. The crate's own `Metadata::new` then
/// validates the same entries again, so a rule it adds is not missed; this module adds what
/// it cannot see (a key twice) and names the tensor. Only the header is read, with a
/// positioned read; payloads are read later, one tensor at a time.
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
    if n > MAX_HEADER {
        return Err(bad(format!(
            "header length {n} is over the {} this build reads",
            files::size_name(MAX_HEADER)
        )));
    }
    if n > file_len - 8 {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    read_exact_at(file, &mut header, 8).map_err(|e| BuildError::io(path, e))?;
    let text =
        std::str::from_utf8(&header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let parsed: Header = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "header is not a valid JSON header: {}",
            json_error(&e)
        ))
    })?;
    drop(header);
    let mut tensors = parsed.tensors;
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    let data_start = 8 + n;
    // The crate's rules, in its order, each failure named.
    let mut at = 0usize;
    for (name, t) in &tensors {
        let terr = |m: String| BuildError::tensor(path, name, m);
        let (begin, end) = t.data_offsets;
        if begin != at || end < begin {
            return Err(terr(format!(
                "data_offsets [{begin}, {end}] {}: sorted by offset, each tensor must begin \
                 where the previous one ends (no gap, no overlap)",
                if end < begin {
                    "end before they begin".to_string()
                } else {
                    format!("begin at {begin} where {at} was expected")
                }
            )));
        }
        at = end;
        let bits = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("shape {:?} overflows", t.shape)))?;
        if bits % 8 != 0 || (end - begin) != bits / 8 {
            return Err(terr(format!(
                "{} bytes for shape {:?} of {}, which needs {} bits",
                end - begin,
                t.shape,
                t.dtype,
                bits
            )));
        }
    }
    let covered = (data_start as u128) + at as u128;
    if covered != file_len as u128 {
        return Err(bad(format!(
            "file not fully covered: the header and its tensors describe {covered} bytes, the \
             file has {file_len}"
        )));
    }
    let ours: Vec<(String, TensorInfo)> = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                TensorInfo {
                    file: idx,
                    dtype: Dtype::of(t.dtype),
                    shape: t.shape.clone(),
                    offset: data_start + t.data_offsets.0 as u64,
                    len: t.data_offsets.1 - t.data_offsets.0,
                },
            )
        })
        .collect();
    // The crate's validation of the same entries: anything it refuses is refused.
    let metadata = parsed
        .metadata
        .map(|m| m.0.into_iter().collect::<HashMap<_, _>>());
    let checked = st::tensor::Metadata::new(metadata, tensors).map_err(|e| {
        bad(format!(
            "refused by the safetensors crate: {}",
            short(&e.to_string())
        ))
    })?;
    if checked.data_len() as u64 + data_start != file_len {
        return Err(bad("file not fully covered".into()));
    }
    Ok(ours)
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
        assert!(e.contains("`a`") && e.contains("needs 96 bits"), "{e}");
        // Truncate the data: the tensors describe more bytes than the file has.
        write(&p, &[("a", "F32", vec![2], vec![0; 8])]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not fully covered"), "{e}");
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

    /// The header text of `entries` (key, value JSON), in order, duplicates allowed.
    fn file(entries: &[(&str, String)], data: &[u8], delta: i64) -> Vec<u8> {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
            .collect();
        let h = format!("{{{}}}", body.join(","));
        let mut out = (h.len() as i64 + delta).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn entry(dtype: &str, shape: &[usize], b: usize, e: usize) -> String {
        format!(r#"{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{b},{e}]}}"#)
    }

    /// Each damaged file this reader refuses, Hugging Face's `safetensors` crate refuses too,
    /// and the other way round, except a key twice, which the crate (reading into a map)
    /// cannot see: refused here only.
    #[test]
    fn refuses_what_the_safetensors_crate_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let data: Vec<u8> = (0..24).collect();
        let good = vec![
            ("a", entry("F32", &[2], 0, 8)),
            ("b", entry("U8", &[2, 4], 8, 16)),
            ("c", entry("BF16", &[4], 16, 24)),
        ];
        let with = |i: usize, v: String| {
            let mut e = good.clone();
            e[i].1 = v;
            e
        };
        let meta = |m: &str| {
            let mut e = good.clone();
            e.insert(1, ("__metadata__", m.to_string()));
            e
        };
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("as written", file(&good, &data, 0), true),
            ("header length - 1", file(&good, &data, -1), false),
            ("header length + 1", file(&good, &data, 1), false),
            (
                "shifted",
                file(&with(1, entry("U8", &[2, 4], 9, 17)), &data, 0),
                false,
            ),
            (
                "overlap",
                file(&with(1, entry("U8", &[2, 4], 7, 15)), &data, 0),
                false,
            ),
            (
                "aliased",
                file(&with(2, entry("F32", &[2], 0, 8)), &data, 0),
                false,
            ),
            (
                "gap",
                file(&with(2, entry("BF16", &[3], 18, 24)), &data, 0),
                false,
            ),
            (
                "trailing bytes",
                file(&good, &[&data[..], &[0]].concat(), 0),
                false,
            ),
            ("short data", file(&good, &data[..23], 0), false),
            (
                "wrong length",
                file(&with(2, entry("BF16", &[3], 16, 24)), &data, 0),
                false,
            ),
            (
                "end before begin",
                file(&with(2, entry("BF16", &[0], 24, 16)), &data, 0),
                false,
            ),
            (
                "unknown dtype",
                file(&with(0, entry("F33", &[2], 0, 8)), &data, 0),
                false,
            ),
            (
                "string metadata",
                file(&meta(r#"{"format":"pt"}"#), &data, 0),
                true,
            ),
            (
                "number in metadata",
                file(&meta(r#"{"format":1}"#), &data, 0),
                false,
            ),
            (
                "object in metadata",
                file(&meta(r#"{"a":{}}"#), &data, 0),
                false,
            ),
            ("null metadata", file(&meta("null"), &data, 0), true),
            (
                "padded header",
                {
                    let mut b = file(&good, &[], 0);
                    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) + 3;
                    b[..8].copy_from_slice(&n.to_le_bytes());
                    b.extend_from_slice(b"   ");
                    b.extend_from_slice(&data);
                    b
                },
                true,
            ),
            (
                "reordered",
                file(
                    &[good[2].clone(), good[0].clone(), good[1].clone()],
                    &data,
                    0,
                ),
                true,
            ),
            (
                "header length 2^63",
                {
                    let mut b = file(&good, &data, 0);
                    b[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
                    b
                },
                false,
            ),
        ];
        for (what, bytes, ok) in cases {
            std::fs::write(&p, &bytes).unwrap();
            let ours = Tensors::open(dir.path());
            let theirs = safetensors::SafeTensors::read_metadata(&bytes);
            assert_eq!(ours.is_ok(), ok, "{what}: {:?}", ours.err());
            assert_eq!(
                theirs.is_ok(),
                ok,
                "{what}: the crate says {:?}",
                theirs.err()
            );
            if let Err(e) = ours {
                assert!(e.to_string().contains("model.safetensors"), "{what}: {e}");
            }
        }
        // A key twice: the crate keeps one (here the second, whose bytes alias the first's,
        // leaving the file covered); refused here.
        let mut dup = good.clone();
        dup.push(("c", entry("BF16", &[4], 16, 24)));
        let bytes = file(&dup, &data, 0);
        std::fs::write(&p, &bytes).unwrap();
        assert!(safetensors::SafeTensors::read_metadata(&bytes).is_ok());
        let e = Tensors::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`c` appears twice"), "{e}");
    }

    #[test]
    fn weight_map_must_name_each_tensors_shard() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("s1.safetensors"),
            &[("a", "U8", vec![1], vec![1])],
        );
        write(
            &dir.path().join("s2.safetensors"),
            &[("b", "U8", vec![1], vec![2])],
        );
        let index = dir.path().join("model.safetensors.index.json");
        let open = |map: &str| {
            std::fs::write(&index, format!(r#"{{"weight_map": {map}}}"#)).unwrap();
            Tensors::open(dir.path()).map_err(|e| e.to_string())
        };
        assert!(open(r#"{"a": "s1.safetensors", "b": "s2.safetensors"}"#).is_ok());
        // An entry may be left out (transformers loads every tensor of the files named).
        let t = open(r#"{"a": "s1.safetensors", "b": "s1.safetensors", "x": "s2.safetensors"}"#)
            .unwrap_err();
        assert!(
            t.contains("model.safetensors.index.json")
                && t.contains("`b`")
                && t.contains("s1.safetensors"),
            "{t}"
        );
        let t = open(r#"{"a": "s1.safetensors", "c": "s2.safetensors"}"#).unwrap_err();
        assert!(t.contains("s2.safetensors: tensor `c`: missing"), "{t}");
        let t = open(r#"{"a": "s1.safetensors", "a": "s2.safetensors"}"#).unwrap_err();
        assert!(t.contains("`a` appears twice"), "{t}");
    }
}
