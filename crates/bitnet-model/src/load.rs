//! Loading a model: the protobuf file is memory-mapped and decoded without copying weights,
//! external data files are validated (paths confined to the model's directory, offsets and
//! lengths inside the file, lengths matching dims) and memory-mapped, and every external tensor
//! is resolved to a zero-copy `raw_data` slice of its mapping.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;
use prost::Message;

use crate::dtype;
use crate::error::{ModelError, Result};
use crate::proto::tensor_proto::DataLocation;
use crate::proto::{ModelProto, TensorProto};
use crate::tensor;
use crate::walk;

/// Where an external tensor's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub tensor: String,
    pub location: String,
    pub offset: u64,
    pub length: u64,
}

/// A loaded model: the decoded proto with every tensor's payload available in memory
/// (memory-mapped, not copied), and a record of which tensors came from external files.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    /// The model file as given.
    pub path: PathBuf,
    /// Tensors whose payload was read from external data files, in model order.
    pub external: Vec<ExternalRef>,
    /// Canonical paths of every file the model was read from (the model and its data files).
    pub source_files: Vec<PathBuf>,
    /// Size of the model file plus every external data file, in bytes.
    pub file_bytes: u64,
    /// The memory maps every payload points into.
    pub mappings: Mappings,
}

/// The read-only memory maps a model's payloads point into. Pages of a mapped file that the
/// process has touched count in its resident memory until the kernel reclaims them;
/// [`Mappings::release`] drops them at once when a payload has been used (touching it again
/// reads it back from the file), which keeps conversion of models larger than RAM in bounded
/// resident memory, and [`Mappings::read_at`] reads part of a payload from its file without
/// touching the map at all.
#[derive(Clone, Default)]
pub struct Mappings {
    maps: Vec<Mapped>,
}

/// One map, with the file it maps.
#[derive(Clone)]
struct Mapped {
    map: Arc<Mmap>,
    file: Arc<File>,
    path: PathBuf,
}

impl std::fmt::Debug for Mappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mappings")
            .field("maps", &self.maps.len())
            .field(
                "bytes",
                &self.maps.iter().map(|m| m.map.len()).sum::<usize>(),
            )
            .finish()
    }
}

impl Mappings {
    /// The map holding all of `data` and the offset of `data` in it.
    fn locate(&self, data: &[u8]) -> Option<(&Mapped, usize)> {
        let start = data.as_ptr() as usize;
        let end = start.checked_add(data.len())?;
        self.maps.iter().find_map(|m| {
            let base = m.map.as_ptr() as usize;
            (start >= base && end <= base + m.map.len()).then(|| (m, start - base))
        })
    }

    /// Where `data` starts in the file it was mapped from, when it lies inside one of the maps.
    pub fn file_offset(&self, data: &[u8]) -> Option<u64> {
        self.locate(data).map(|(_, at)| at as u64)
    }

    /// True when `data` lies inside one of the maps.
    pub fn contains(&self, data: &[u8]) -> bool {
        !data.is_empty() && self.locate(data).is_some()
    }

    /// Fills `buf` with `data[offset..offset + buf.len()]`. When `data` lies in one of the maps
    /// the bytes are read from its file (`pread`), so the map's pages are not touched and do not
    /// become resident; anything else (heap memory, or a platform without positioned reads) is
    /// copied. Errors name the file.
    ///
    /// # Panics
    /// When the range is not inside `data`.
    pub fn read_at(&self, data: &[u8], offset: usize, buf: &mut [u8]) -> Result<()> {
        let part = &data[offset..offset + buf.len()];
        #[cfg(unix)]
        if let Some((m, at)) = self.locate(part) {
            use std::os::unix::fs::FileExt;
            return m
                .file
                .read_exact_at(buf, at as u64)
                .map_err(|e| ModelError::io(&m.path, e));
        }
        buf.copy_from_slice(part);
        Ok(())
    }

    /// Drops the pages under `data` from the resident set when `data` lies in one of the maps
    /// (anything else, such as heap memory, is left alone). Only the pages wholly inside `data`
    /// are dropped. Best effort: failures are ignored.
    pub fn release(&self, data: &[u8]) {
        let Some((m, offset)) = self.locate(data) else {
            return;
        };
        let map = &m.map;
        let page = 4096;
        let base = map.as_ptr() as usize;
        let start = (base + offset).next_multiple_of(page) - base;
        let end = (base + offset + data.len()) / page * page - base;
        if end <= start {
            return;
        }
        // SAFETY: the maps are read-only mappings of files nobody writes while we run (see
        // `map_file`); MADV_DONTNEED on such a mapping only unmaps pages, and touching them
        // again faults the same file contents back in, so every live reference into the
        // mapping keeps seeing the same bytes.
        #[cfg(unix)]
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }

    /// Asks the kernel to start reading `data` in the background (best effort).
    pub fn prefetch(&self, data: &[u8]) {
        #[cfg(unix)]
        if let Some((m, offset)) = self.locate(data) {
            let _ = m
                .map
                .advise_range(memmap2::Advice::WillNeed, offset, data.len());
        }
    }

    fn push(&mut self, mapped: Mapped) {
        self.maps.push(mapped);
    }
}

/// A shared read-only map as the owner of `Bytes`.
struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Memory-maps a file as `Bytes` (an empty file gives empty bytes).
pub fn map_file(path: &Path) -> Result<Bytes> {
    Ok(map_shared(path)?.0)
}

/// Memory-maps a file as `Bytes` and returns the map too (none for an empty file).
fn map_shared(path: &Path) -> Result<(Bytes, Option<Mapped>)> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len == 0 {
        return Ok((Bytes::new(), None));
    }
    // SAFETY: the mapping is read-only. Like every tool that maps model files, we rely on the
    // file not being truncated while we read it; the writer never writes to its inputs.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?);
    let mapped = Mapped {
        map: map.clone(),
        file: Arc::new(file),
        path: path.to_path_buf(),
    };
    Ok((Bytes::from_owner(SharedMap(map)), Some(mapped)))
}

impl Model {
    /// Reads a model file and its external data, and checks every tensor (type, dims, payload
    /// length). Errors name the file and, where there is one, the tensor.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let (bytes, map) = map_shared(path)?;
        if bytes.is_empty() {
            return Err(ModelError::Empty {
                path: path.to_path_buf(),
            });
        }
        let file_len = bytes.len() as u64;
        let whole = bytes.clone();
        let proto = ModelProto::decode(bytes).map_err(|error| ModelError::Decode {
            path: path.to_path_buf(),
            error,
        })?;
        let mut model = Model::from_proto(proto, path, file_len)?;
        if let Some(map) = map {
            model.mappings.push(map);
            // Decoding touched pages all over the file (on a file just written, each touch maps
            // a large piece of it: 52 MiB of a 92 MB model). Payloads are read from the file or
            // faulted back in when used, so none of it needs to stay resident now.
            model.mappings.release(&whole);
        }
        Ok(model)
    }

    /// Wraps an already decoded proto read from `path` (external data is resolved relative to
    /// the directory of `path`; every tensor is checked as in [`Model::load`]).
    pub fn from_proto(mut proto: ModelProto, path: &Path, file_len: u64) -> Result<Model> {
        if proto.graph.is_none() {
            return Err(ModelError::NoGraph {
                path: path.to_path_buf(),
            });
        }
        let canonical = path.canonicalize().map_err(|e| ModelError::io(path, e))?;
        let dir = canonical
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut resolver = Resolver {
            model_path: path,
            dir: &dir,
            maps: BTreeMap::new(),
            refs: Vec::new(),
            mappings: Mappings::default(),
        };
        walk::for_each_tensor_mut(&mut proto, &mut |t: &mut TensorProto| resolver.resolve(t))?;
        let mut source_files = vec![canonical.clone()];
        let mut file_bytes = file_len;
        for (p, b) in &resolver.maps {
            // A tensor may point into the model file itself: list and count it once.
            if *p != canonical {
                file_bytes += b.len() as u64;
                source_files.push(p.clone());
            }
        }
        Ok(Model {
            proto,
            path: path.to_path_buf(),
            external: resolver.refs,
            source_files,
            file_bytes,
            mappings: resolver.mappings,
        })
    }

    /// The model's main graph (present: `load` refuses models without one).
    pub fn graph(&self) -> &crate::proto::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// Opset version imported for `domain` ("" or "ai.onnx" for the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        opset_version(&self.proto, domain)
    }
}

/// Opset version imported for `domain` ("" and "ai.onnx" both mean the default domain).
pub fn opset_version(model: &ModelProto, domain: &str) -> Option<i64> {
    let norm = |d: &str| {
        if crate::node::is_default_domain(Some(d)) {
            String::new()
        } else {
            d.to_string()
        }
    };
    let want = norm(domain);
    model
        .opset_import
        .iter()
        .find(|o| norm(o.domain.as_deref().unwrap_or("")) == want)
        .and_then(|o| o.version)
}

struct Resolver<'a> {
    model_path: &'a Path,
    dir: &'a Path,
    maps: BTreeMap<PathBuf, Bytes>,
    refs: Vec<ExternalRef>,
    mappings: Mappings,
}

impl Resolver<'_> {
    fn fail(&self, t: &TensorProto, reason: impl Into<String>) -> ModelError {
        ModelError::ExternalData {
            path: self.model_path.to_path_buf(),
            tensor: t.name.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn resolve(&mut self, t: &mut TensorProto) -> Result<()> {
        if !tensor::is_external(t) {
            if let Some(loc) = t.data_location {
                if DataLocation::try_from(loc).is_err() {
                    return Err(self.fail(t, format!("unknown data_location {loc}")));
                }
            }
            // Embedded payloads get the same checks as external ones: a known type, sane
            // dims, and a payload whose length matches them.
            return tensor::validate(self.model_path, t);
        }
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            let key = kv.key.as_deref().unwrap_or("");
            let value = kv.value.as_deref().unwrap_or("");
            match key {
                "location" => location = Some(value.to_string()),
                "offset" => {
                    offset = value.parse().map_err(|_| {
                        self.fail(t, format!("offset '{value}' is not a non-negative integer"))
                    })?
                }
                "length" => {
                    length = Some(value.parse::<u64>().map_err(|_| {
                        self.fail(t, format!("length '{value}' is not a non-negative integer"))
                    })?)
                }
                _ => {} // "checksum" and future keys carry no layout information
            }
        }
        let location = location.ok_or_else(|| self.fail(t, "no 'location' key"))?;
        let file = self.confine(t, &location)?;
        let data = match self.maps.get(&file) {
            Some(b) => b.clone(),
            None => {
                let (b, map) =
                    map_shared(&file).map_err(|e| self.fail(t, format!("{location}: {e}")))?;
                if let Some(map) = map {
                    // Read in order, mostly once: let the kernel read ahead generously.
                    #[cfg(unix)]
                    let _ = map.map.advise(memmap2::Advice::Sequential);
                    self.mappings.push(map);
                }
                self.maps.insert(file.clone(), b.clone());
                b
            }
        };
        let file_len = data.len() as u64;
        if offset > file_len {
            return Err(self.fail(
                t,
                format!("offset {offset} is past the end of {location} ({file_len} bytes)"),
            ));
        }
        let length = length.unwrap_or(file_len - offset);
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                self.fail(
                    t,
                    format!(
                        "offset {offset} + length {length} is past the end of {location} ({file_len} bytes)"
                    ),
                )
            })?;
        let code = tensor::data_type(self.model_path, t)?;
        let count = tensor::element_count(self.model_path, t)?;
        let expected = dtype::byte_len(code, count)
            .ok_or_else(|| self.fail(t, format!("{} has no binary layout", dtype::name(code))))?;
        if expected != length {
            return Err(self.fail(
                t,
                format!(
                    "{location} holds {length} bytes for it but dims {:?} of {} need {expected}",
                    t.dims,
                    dtype::name(code)
                ),
            ));
        }
        self.refs.push(ExternalRef {
            tensor: t.name.clone().unwrap_or_default(),
            location,
            offset,
            length,
        });
        t.raw_data = Some(data.slice(offset as usize..end as usize));
        t.external_data.clear();
        t.data_location = None;
        Ok(())
    }

    /// Resolves `location` inside the model's directory, refusing absolute paths, `..`, and
    /// symlinks that lead outside it (CVE-2022-25882, CVE-2024-27318).
    fn confine(&self, t: &TensorProto, location: &str) -> Result<PathBuf> {
        let rel = Path::new(location);
        if location.is_empty() {
            return Err(self.fail(t, "empty location"));
        }
        if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
            return Err(self.fail(t, format!("location '{location}' is an absolute path")));
        }
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.fail(t, format!("location '{location}' contains '..'")))
                }
                _ => {
                    return Err(
                        self.fail(t, format!("location '{location}' is not a relative path"))
                    )
                }
            }
        }
        let joined = self.dir.join(rel);
        let canonical = joined
            .canonicalize()
            .map_err(|e| self.fail(t, format!("cannot open '{}': {e}", joined.display())))?;
        if !canonical.starts_with(self.dir) {
            return Err(self.fail(
                t,
                format!(
                    "location '{location}' resolves to {} outside the model directory {}",
                    canonical.display(),
                    self.dir.display()
                ),
            ));
        }
        if !canonical.is_file() {
            return Err(self.fail(t, format!("location '{location}' is not a regular file")));
        }
        Ok(canonical)
    }
}
