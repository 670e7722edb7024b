//! Source and quantize: reading one weight (from its mapped file, a band at a time where it
//! can), transposing it when needed, quantizing it and measuring it; and what a weight costs
//! the batch scheduler.

use std::borrow::Cow;
use std::path::Path;

use bitnet_model::load::Mappings;
use rayon::prelude::*;

use super::options::ConvertOptions;
use super::source::JobInput;
use crate::analyse::{Layout, LinearLayer};
use crate::error::ConvertError;
use crate::quant::kn::Rows;
use crate::quant::{self, QuantConfig, Ternary};

/// Bytes of a `[K, N]` source transposed at a time (its pages are released after each part).
pub(super) const TRANSPOSE_BAND_BYTES: usize = 8 << 20;

/// Peak bytes quantizing one weight of `elems` elements holds: one byte of code per weight, plus
/// its source in memory unless `quant::kn` reads it where it lies a band at a time (a `[K, N]`
/// weight quantized with absmean): the `f32` channel-major copy of any other weight.
pub(super) fn job_cost(elems: usize, layout: Layout, cfg: &QuantConfig) -> u64 {
    match (layout, cfg.method) {
        (Layout::KN, quant::Method::AbsMean) => elems as u64,
        _ => elems as u64 * (4 + 1),
    }
}

/// Whether quantizing a weight of `elems` elements keeps every thread busy by itself: a
/// `quant::kn` job (tiles of each band run in parallel) of at least `PARALLEL_INSIDE_ELEMS`.
/// A batch of only such weights takes them one after another, so fewer bands and codes are
/// in memory at once, at the same speed (docs/benchmarks.md, "Tuning constants").
pub(super) fn parallel_inside(elems: usize, layout: Layout, cfg: &QuantConfig) -> bool {
    matches!((layout, cfg.method), (Layout::KN, quant::Method::AbsMean))
        && elems >= PARALLEL_INSIDE_ELEMS
}

/// See [`parallel_inside`]: 512x512 and larger.
pub(super) const PARALLEL_INSIDE_ELEMS: usize = 1 << 18;

/// One quantized weight with the statistics the report needs (computed in the parallel step,
/// so no float copy outlives it).
pub(super) struct Quantized {
    pub(super) ternary: Ternary,
    pub(super) rel_error: f64,
    pub(super) counts: [u64; 3],
    pub(super) dims: Vec<usize>,
    pub(super) dtype: i32,
}

/// Reads, transposes when needed, quantizes and measures one weight, then releases the
/// memory-mapped pages it read.
pub(super) fn quantize_job(
    input: JobInput,
    weight: &str,
    ls: &[&LinearLayer],
    path: &Path,
    opts: &ConvertOptions,
    spare: &quant::Spare,
) -> Result<Quantized, ConvertError> {
    let (dims, dtype) = match &input {
        JobInput::Folded(c) => (c.dims.clone(), c.dtype),
        JobInput::Tensor(t) => (
            t.dims
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect::<Vec<_>>(),
            t.data_type.unwrap_or(0),
        ),
    };
    let other = |reason: String| ConvertError::Other {
        path: path.display().to_string(),
        reason: format!("weight '{weight}': {reason}"),
    };
    let [r, c] = dims[..] else {
        return Err(other(format!("shape {dims:?} is not 2-D")));
    };
    let layout = ls[0].layout;
    let (n, k) = match layout {
        Layout::KN => (c, r),
        Layout::NK => (r, c),
    };
    let source = opts.source.filter(|_| matches!(input, JobInput::Tensor(_)));
    let release_part = |part: &[u8]| {
        if let Some(src) = source {
            src.release(part);
        }
    };
    let quant_err = |error| ConvertError::Quant {
        path: path.display().to_string(),
        weight: weight.to_string(),
        node: ls[0].node.clone(),
        error,
    };
    let release = || {
        if let (Some(src), JobInput::Tensor(t)) = (opts.source, &input) {
            if let Some(raw) = &t.raw_data {
                src.release(raw);
            }
        }
    };
    // A `[K, N]` weight is quantized a band at a time (no transposed float copy) when it can be.
    let in_place = match layout {
        Layout::KN => quantize_kn(&input, r, c, &opts.quant, source, spare),
        Layout::NK => None,
    };
    let (ternary, rel_error) = match in_place {
        Some(result) => result.map_err(quant_err)?,
        None => {
            let cm =
                channel_major(&input, layout, r, c, path, &release_part, spare).map_err(other)?;
            if Some(cm.len()) != r.checked_mul(c) {
                return Err(other(format!(
                    "shape {dims:?} does not match its {} values",
                    cm.len()
                )));
            }
            if matches!(cm, Cow::Owned(_)) {
                release(); // the pages were read into the copy
            }
            let measured = quant::quantize_measured(&cm, n, k, &opts.quant).map_err(quant_err)?;
            if let Cow::Owned(v) = cm {
                spare.give(v);
            }
            measured
        }
    };
    release();
    let counts = ternary.counts();
    Ok(Quantized {
        ternary,
        rel_error,
        counts,
        dims,
        dtype,
    })
}

/// `quant::kn` on a `[rows = K, cols = N]` weight without a transposed copy: a float32,
/// float16 or bfloat16 payload, read a band at a time from its file when it lies in one of
/// `source`'s maps (so its pages never become resident), else where it lies; or a folded
/// float32 value. `None` when that path does not apply (TWN, integer or typed-field payloads,
/// a length that does not match the shape): the caller transposes instead, and reports a bad
/// length.
pub(super) fn quantize_kn(
    input: &JobInput,
    rows: usize,
    cols: usize,
    cfg: &QuantConfig,
    source: Option<&Mappings>,
    spare: &quant::Spare,
) -> Option<Result<(Ternary, f64), quant::QuantError>> {
    use bitnet_model::proto::tensor_proto::DataType;
    let count = rows.checked_mul(cols)?;
    let t = match input {
        JobInput::Folded(c) => match &c.data {
            crate::fold::Data::F32(v) if v.len() == count => {
                let rows_of = Rows::InPlace(&|_| {});
                return quant::kn::quantize_measured_kn(v, rows, cols, |x| x, cfg, rows_of, spare);
            }
            _ => return None,
        },
        JobInput::Tensor(t) => t,
    };
    let raw = t.raw_data.as_ref()?;
    let source = source.filter(|s| s.contains(raw));
    match DataType::try_from(t.data_type.unwrap_or(0)) {
        Ok(DataType::Float) if raw.len() == count.checked_mul(4)? => {
            kn_from_bytes(raw, rows, cols, f32::from_le_bytes, cfg, source, spare)
        }
        Ok(DataType::Float16) if raw.len() == count.checked_mul(2)? => {
            let f = |b| half::f16::from_le_bytes(b).to_f32();
            kn_from_bytes(raw, rows, cols, f, cfg, source, spare)
        }
        Ok(DataType::Bfloat16) if raw.len() == count.checked_mul(2)? => {
            let f = |b| half::bf16::from_le_bytes(b).to_f32();
            kn_from_bytes(raw, rows, cols, f, cfg, source, spare)
        }
        _ => None,
    }
}

/// [`quantize_kn`] on a payload of `W`-byte little-endian elements.
pub(super) fn kn_from_bytes<const W: usize>(
    raw: &[u8],
    rows: usize,
    cols: usize,
    f: impl Fn([u8; W]) -> f32 + Sync,
    cfg: &QuantConfig,
    source: Option<&Mappings>,
    spare: &quant::Spare,
) -> Option<Result<(Ternary, f64), quant::QuantError>>
where
    [u8; W]: Default,
{
    let elems = raw.as_chunks::<W>().0;
    let Some(src) = source else {
        let rows_of = Rows::InPlace(&|_| {});
        return quant::kn::quantize_measured_kn(elems, rows, cols, f, cfg, rows_of, spare);
    };
    let read = |at: std::ops::Range<usize>, buf: &mut [[u8; W]]| {
        src.read_at(raw, at.start * W, buf.as_flattened_mut())
            .map_err(|e| e.to_string())
    };
    let page_offset = src.file_offset(raw).unwrap_or(0) as usize % 4096;
    let rows_of = Rows::Read {
        read: &read,
        page_offset,
    };
    quant::kn::quantize_measured_kn(elems, rows, cols, f, cfg, rows_of, spare)
}

/// The weight as channel-major `[N][K]` `f32`: borrowed from the file when it is an aligned
/// float32 `[N, K]` payload, else decoded (and for `[K, N]` transposed) in one parallel pass.
/// A `[K, N]` source is transposed `TRANSPOSE_BAND_BYTES` of it at a time, and `release` is
/// called with each part of the payload once it has been read.
pub(super) fn channel_major<'a>(
    input: &'a JobInput,
    layout: Layout,
    rows: usize,
    cols: usize,
    path: &Path,
    release: &dyn Fn(&[u8]),
    spare: &quant::Spare,
) -> Result<Cow<'a, [f32]>, String> {
    use bitnet_model::proto::tensor_proto::DataType;
    let band = |width: usize| (TRANSPOSE_BAND_BYTES / (cols * width).max(1)).max(1);
    let raw_part = |rs: std::ops::Range<usize>, width: usize| {
        if let JobInput::Tensor(t) = input {
            if let Some(raw) = &t.raw_data {
                if let Some(part) = raw.get(rs.start * cols * width..rs.end * cols * width) {
                    release(part);
                }
            }
        }
    };
    let finish = |v: Cow<'a, [f32]>| -> Result<Cow<'a, [f32]>, String> {
        if Some(v.len()) != rows.checked_mul(cols) {
            return Ok(v); // the caller reports the mismatch
        }
        Ok(match (layout, &v) {
            (Layout::NK, _) => v,
            // Borrowed from the mapped file: release it as the transpose goes.
            (Layout::KN, Cow::Borrowed(b)) => {
                let mut out = spare.take::<f32>(rows * cols);
                let done = |rs| raw_part(rs, 4);
                quant::transpose_map_rows_into(b, rows, cols, band(4), |x| x, done, &mut out);
                Cow::Owned(out)
            }
            (Layout::KN, Cow::Owned(o)) => Cow::Owned(quant::transpose(o, rows, cols)),
        })
    };
    let t = match input {
        JobInput::Folded(c) => {
            return finish(match &c.data {
                crate::fold::Data::F32(v) => Cow::Borrowed(v.as_slice()),
                _ => Cow::Owned(c.f32()),
            })
        }
        JobInput::Tensor(t) => t,
    };
    if let Some(v) = bitnet_model::tensor::f32_view(t) {
        return finish(Cow::Borrowed(v));
    }
    let count = rows.checked_mul(cols).ok_or("element count overflows")?;
    let dt = DataType::try_from(t.data_type.unwrap_or(0));
    let width = match dt {
        Ok(DataType::Float) => 4,
        Ok(DataType::Float16 | DataType::Bfloat16) => 2,
        _ => 0,
    };
    let raw = match &t.raw_data {
        Some(raw) if width > 0 && count.checked_mul(width) == Some(raw.len()) => raw,
        // Typed fields, other float types, or a length the checked decoder should explain.
        _ => {
            return finish(Cow::Owned(
                bitnet_model::tensor::to_f32(path, t).map_err(|e| e.to_string())?,
            ))
        }
    };
    let f16 = dt == Ok(DataType::Float16);
    let two = move |b: [u8; 2]| {
        if f16 {
            half::f16::from_le_bytes(b).to_f32()
        } else {
            half::bf16::from_le_bytes(b).to_f32()
        }
    };
    let (b4, b2) = (raw.as_chunks::<4>().0, raw.as_chunks::<2>().0);
    Ok(Cow::Owned(match (layout, width) {
        (Layout::KN, 4) => {
            let mut out = spare.take::<f32>(rows * cols);
            let done = |rs| raw_part(rs, 4);
            let f = f32::from_le_bytes;
            quant::transpose_map_rows_into(b4, rows, cols, band(4), f, done, &mut out);
            out
        }
        (Layout::KN, _) => {
            let mut out = spare.take::<f32>(rows * cols);
            let done = |rs| raw_part(rs, 2);
            quant::transpose_map_rows_into(b2, rows, cols, band(2), two, done, &mut out);
            out
        }
        (Layout::NK, 4) => b4
            .par_iter()
            .with_min_len(1 << 16)
            .map(|&b| f32::from_le_bytes(b))
            .collect(),
        (Layout::NK, _) => b2
            .par_iter()
            .with_min_len(1 << 16)
            .map(|&b| two(b))
            .collect(),
    }))
}
