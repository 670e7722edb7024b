//! Saving a model atomically: embedded weights below protobuf's 2 GiB limit, external data
//! above it or on request, temporary files renamed into place only once fully written, and
//! never over a file the model was read from.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::buf::UninitSlice;
use bytes::BufMut;
use prost::Message;

use crate::error::{ModelError, Result};
use crate::load::Mappings;
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
    Writer::new(out, opts, protect)?.finish(model)
}

/// Payload chunks at least this long are written straight to the file, not through the buffer.
const DIRECT_WRITE: usize = 64 << 10;

/// The buffer of every file written. Payloads at least this long bypass it (`BufWriter`
/// writes them through), so a larger buffer only holds more small tensors in memory, at no
/// measurable gain in speed (docs/benchmarks.md, "Tuning constants").
const WRITE_BUFFER: usize = 256 << 10;

/// Large payloads are written (and, when they come from a memory-mapped input, released) this
/// much at a time, so such a payload is never resident whole.
const WRITE_CHUNK: usize = 1 << 20;

/// `data` in parts that end where memory addresses are multiples of `WRITE_CHUNK` (so the
/// pages of every part but the ends can be released whole).
fn write_chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let addr = rest.as_ptr() as usize;
        let len = (addr / WRITE_CHUNK + 1) * WRITE_CHUNK - addr;
        let (part, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        Some(part)
    })
}

/// An output being written. [`save`] is `Writer::new(..)?.finish(model)`; a converter that
/// produces large tensors one at a time calls [`Writer::stream`] first and hands each new
/// tensor to [`Writer::store`], which appends its payload to the (temporary) external data
/// file at once and leaves only a reference in the proto, so the output's payloads never all
/// sit in memory. [`Writer::finish`] writes what remains, streams the proto to disk without
/// building it in memory, and renames both files into place. Dropping an unfinished writer
/// removes its temporary files: the target names are only ever replaced by complete files.
pub struct Writer {
    out: PathBuf,
    data_path: PathBuf,
    location: String,
    opts: SaveOptions,
    protect: Vec<PathBuf>,
    spill: Mutex<Option<Spill>>,
    source: Mappings,
    progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// The temporary external data file being appended to.
struct Spill {
    tmp: PathBuf,
    w: BufWriter<File>,
    offset: u64,
}

impl Writer {
    /// Checks `out` (not an input, not a directory); writes nothing yet.
    pub fn new(out: &Path, opts: &SaveOptions, protect: &[PathBuf]) -> Result<Writer> {
        check_not_input(out, protect, "the same file as")?;
        check_not_dir(out)?;
        let data_path = data_file_name(out);
        let location = data_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Writer {
            out: out.to_path_buf(),
            data_path,
            location,
            opts: opts.clone(),
            protect: protect.to_vec(),
            spill: Mutex::new(None),
            source: Mappings::default(),
            progress: None,
        })
    }

    /// Names the external data file `name` (a plain file name, beside `out`) instead of
    /// [`data_file_name`]'s `OUT.data`: Transformers.js, for one, fetches `model.onnx_data`.
    /// Call it before [`Writer::stream`].
    pub fn with_data_file_name(mut self, name: &str) -> Result<Self> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && Path::new(name).file_name().is_some_and(|n| n == name);
        if !plain {
            return Err(ModelError::ExternalData {
                path: self.out.clone(),
                tensor: String::new(),
                reason: format!("the data file name '{name}' is not a plain file name"),
            });
        }
        self.data_path = self.out.with_file_name(name);
        check_not_input(&self.data_path, &self.protect, "the external data file of")?;
        self.location = name.to_string();
        Ok(self)
    }

    /// The maps the model's payloads point into: pages of a payload are released from memory
    /// once it has been written (see [`Mappings::release`]).
    pub fn with_source(mut self, mappings: &Mappings) -> Self {
        self.source = mappings.clone();
        self
    }

    /// Called with the length of every large payload of the source maps (see
    /// [`Writer::with_source`]) once it is written: the input's bytes copied through.
    pub fn with_progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Starts the external data file now, so [`Writer::store`] moves payloads out of memory.
    /// With `ExternalData::Never` this does nothing. With `Auto`, an output that ends up
    /// under protobuf's limit is still written as one file (the stored payloads are read back
    /// from the temporary data file).
    pub fn stream(&self) -> Result<()> {
        if self.opts.external_data == ExternalData::Never {
            return Ok(());
        }
        let mut spill = self.lock();
        if spill.is_none() {
            check_not_input(&self.data_path, &self.protect, "the external data file of")?;
            check_not_dir(&self.data_path)?;
            let (tmp, file) = create_temp(&self.data_path)?;
            *spill = Some(Spill {
                tmp,
                w: BufWriter::with_capacity(WRITE_BUFFER, file),
                offset: 0,
            });
        }
        Ok(())
    }

    /// True once [`Writer::stream`] started the external data file.
    pub fn is_streaming(&self) -> bool {
        self.lock().is_some()
    }

    /// Moves `t`'s payload to the external data file when streaming and the payload is at
    /// least the size threshold; otherwise leaves `t` as it is.
    pub fn store(&self, t: &mut TensorProto) -> Result<()> {
        let mut guard = self.lock();
        let Some(spill) = guard.as_mut() else {
            return Ok(());
        };
        if tensor::is_external(t) || tensor::payload_len(t) < self.opts.size_threshold {
            return Ok(());
        }
        let raw = tensor::raw_bytes(&self.out, t)?;
        let (offset, len) = append_payload(spill, &raw, &self.data_path, &|_| {})?;
        drop(raw);
        set_external(t, &self.location, offset, len);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Spill>> {
        // A panic while holding the lock leaves a usable state (at worst a partial temp file,
        // removed on drop): ignore poisoning.
        self.spill.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn payload_written(&self, data: &[u8]) {
        if !self.source.contains(data) {
            return;
        }
        self.source.release(data);
        if let Some(p) = &self.progress {
            p(data.len() as u64);
        }
    }

    /// Writes `model` (whose stored tensors refer to the data file) and renames the files into
    /// place: the data file first, so a model file never points at a missing data file.
    pub fn finish(self, model: &ModelProto) -> Result<Saved> {
        let spill = self.lock().take();
        let spilled = spill.as_ref().map_or(0, |s| s.offset);
        let external = match self.opts.external_data {
            ExternalData::Always => true,
            ExternalData::Never => false,
            ExternalData::Auto => model.encoded_len() as u64 + spilled > PROTOBUF_LIMIT,
        };
        if external {
            self.finish_external(model, spill)
        } else {
            self.finish_embedded(model, spill)
        }
    }

    fn finish_embedded(self, model: &ModelProto, spill: Option<Spill>) -> Result<Saved> {
        let data_tmp = spill.as_ref().map(|s| s.tmp.clone());
        let result = self.write_embedded(model, spill);
        if let Some(tmp) = data_tmp {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_embedded(&self, model: &ModelProto, spill: Option<Spill>) -> Result<Saved> {
        // Stored payloads come back from the temporary data file (memory-mapped).
        let inlined;
        let model = match spill {
            None => model,
            Some(spill) => {
                let file = spill
                    .w
                    .into_inner()
                    .map_err(|e| ModelError::io(&self.data_path, e.into_error()))?;
                drop(file);
                let data = crate::load::map_file(&spill.tmp)?;
                let mut m = model.clone();
                walk::for_each_tensor_mut(&mut m, &mut |t: &mut TensorProto| -> Result<()> {
                    let Some((offset, len)) = self.stored_range(t) else {
                        return Ok(());
                    };
                    let end = offset
                        .checked_add(len)
                        .filter(|&e| e <= data.len() as u64)
                        .ok_or_else(|| ModelError::ExternalData {
                            path: self.out.clone(),
                            tensor: t.name.clone().unwrap_or_default(),
                            reason: "stored payload is outside the temporary data file".into(),
                        })?;
                    t.raw_data = Some(data.slice(offset as usize..end as usize));
                    t.external_data.clear();
                    t.data_location = None;
                    Ok(())
                })?;
                inlined = m;
                &inlined
            }
        };
        let len = model.encoded_len() as u64;
        if len > PROTOBUF_LIMIT {
            return Err(ModelError::TooLargeForProtobuf {
                path: self.out.clone(),
                size: len,
            });
        }
        let tmp = write_temp(&self.out, |f| {
            encode_streaming(model, f, &|d| self.payload_written(d))
        })?;
        fs::rename(&tmp, &self.out).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ModelError::io(&self.out, e)
        })?;
        Ok(Saved {
            model_path: self.out.clone(),
            model_bytes: len,
            data_path: None,
            data_bytes: 0,
        })
    }

    /// `(offset, length)` of a tensor this writer stored in its data file.
    fn stored_range(&self, t: &TensorProto) -> Option<(u64, u64)> {
        if !tensor::is_external(t) {
            return None;
        }
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|kv| kv.key.as_deref() == Some(k))
                .and_then(|kv| kv.value.as_deref())
        };
        if get("location") != Some(self.location.as_str()) {
            return None;
        }
        Some((get("offset")?.parse().ok()?, get("length")?.parse().ok()?))
    }

    fn finish_external(self, model: &ModelProto, spill: Option<Spill>) -> Result<Saved> {
        let data_path = self.data_path.clone();
        let mut spill = match spill {
            Some(s) => s,
            None => {
                check_not_input(&data_path, &self.protect, "the external data file of")?;
                check_not_dir(&data_path)?;
                let (tmp, file) = create_temp(&data_path)?;
                Spill {
                    tmp,
                    w: BufWriter::with_capacity(WRITE_BUFFER, file),
                    offset: 0,
                }
            }
        };
        let data_tmp = spill.tmp.clone();
        let mut data_bytes = 0;
        // Move the remaining large payloads out of the proto while streaming them into the
        // data file (they are written as they are: never decoded and re-encoded).
        let mut outer = model.clone();
        let written = (|| -> Result<()> {
            walk::for_each_tensor_mut(&mut outer, &mut |t: &mut TensorProto| -> Result<()> {
                if tensor::is_external(t) || tensor::payload_len(t) < self.opts.size_threshold {
                    return Ok(());
                }
                let raw = tensor::raw_bytes(&self.out, t)?;
                let written = |part: &[u8]| self.payload_written(part);
                let (offset, len) = append_payload(&mut spill, &raw, &data_path, &written)?;
                drop(raw);
                set_external(t, &self.location, offset, len);
                Ok(())
            })?;
            data_bytes = spill.offset;
            let file = spill
                .w
                .into_inner()
                .map_err(|e| ModelError::io(&data_path, e.into_error()))?;
            file.sync_all().map_err(|e| ModelError::io(&data_path, e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&data_tmp);
            return Err(e);
        }
        let len = outer.encoded_len() as u64;
        if len > PROTOBUF_LIMIT {
            let _ = fs::remove_file(&data_tmp);
            return Err(ModelError::TooLargeForProtobuf {
                path: self.out.clone(),
                size: len,
            });
        }
        // Both files are complete on disk before either is renamed into place.
        let model_tmp = match write_temp(&self.out, |f| encode_streaming(&outer, f, &|_| {})) {
            Ok(tmp) => tmp,
            Err(e) => {
                let _ = fs::remove_file(&data_tmp);
                return Err(e);
            }
        };
        drop(outer);
        let out = &self.out;
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
            model_path: out.clone(),
            model_bytes: len,
            data_path: Some(data_path),
            data_bytes,
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished (an error or a panic in the caller): remove the temporary data file.
        if let Some(spill) = self.lock().take() {
            let _ = fs::remove_file(&spill.tmp);
        }
    }
}

/// Appends `raw` to the data file, aligned (4096 bytes for payloads of 1 MiB or more, else
/// 64), calling `written` with each part once it is on its way; returns its offset and length.
fn append_payload(
    spill: &mut Spill,
    raw: &[u8],
    data_path: &Path,
    written: &dyn Fn(&[u8]),
) -> Result<(u64, u64)> {
    let align = if raw.len() >= 1 << 20 { 4096 } else { 64 };
    let pad = spill.offset.next_multiple_of(align) - spill.offset;
    let io = |e| ModelError::io(data_path, e);
    spill.w.write_all(&ZEROS[..pad as usize]).map_err(io)?;
    spill.offset += pad;
    for part in write_chunks(raw) {
        spill.w.write_all(part).map_err(io)?;
        written(part);
    }
    let offset = spill.offset;
    spill.offset += raw.len() as u64;
    Ok((offset, raw.len() as u64))
}

static ZEROS: [u8; 4096] = [0; 4096];

/// Encodes `model` into `w` as it goes (the encoded model never exists in memory as a whole);
/// `written` is called with every large payload once it is on its way to the file.
fn encode_streaming(
    model: &ModelProto,
    w: &mut BufWriter<File>,
    written: &dyn Fn(&[u8]),
) -> std::io::Result<()> {
    let mut buf = StreamBuf {
        w,
        buf: Vec::with_capacity(DIRECT_WRITE),
        err: None,
        written,
    };
    model
        .encode(&mut buf)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    buf.flush_buf();
    match buf.err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A `BufMut` that flushes to a writer: small pieces are gathered in `buf`, large payloads go
/// straight through. The first I/O error is kept and reported at the end.
struct StreamBuf<'a> {
    w: &'a mut BufWriter<File>,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
    written: &'a dyn Fn(&[u8]),
}

impl StreamBuf<'_> {
    fn flush_buf(&mut self) {
        if !self.buf.is_empty() {
            if self.err.is_none() {
                if let Err(e) = self.w.write_all(&self.buf) {
                    self.err = Some(e);
                }
            }
            self.buf.clear();
        }
    }
}

// SAFETY: `chunk_mut` hands out the spare capacity of `buf`, and `advance_mut` only extends
// `buf` over bytes the caller initialised in that spare capacity.
unsafe impl BufMut for StreamBuf<'_> {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advance_mut past the buffer");
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity (BufMut contract).
        unsafe { self.buf.set_len(len) };
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= DIRECT_WRITE {
            self.flush_buf();
            for part in write_chunks(src) {
                if self.err.is_none() {
                    if let Err(e) = self.w.write_all(part) {
                        self.err = Some(e);
                    }
                }
                (self.written)(part);
            }
            return;
        }
        if self.buf.capacity() - self.buf.len() < src.len() {
            self.flush_buf();
        }
        self.buf.extend_from_slice(src);
    }

    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            src.advance(n);
        }
    }
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
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
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
