//! Ternary quantization of weight matrices (docs/formats.md section 1).
//!
//! Everything here is pure math over `f32` slices; no ONNX types. A weight is always given
//! *channel-major*: `w` has shape `[N][K]` row-major, `N` output features (channels), `K` input
//! features. A `MatMul` weight `B` is `[K, N]`: [`transpose`] it first.
//!
//! # Decisions
//!
//! * **Rounding / ties.** BitNet's published code (Microsoft's training-tips code, Hugging Face
//!   `BitLinear`, BitNet's own converters) computes `s = 1 / mean(|W|).clamp(1e-5)` and then
//!   `(W * s).round().clamp(-1, 1)`: it multiplies by the `f32` reciprocal (for a tensor,
//!   `1 / t` is `t.reciprocal()`), and `round` rounds half to even. We do the same: with
//!   `s = 1.0_f32 / a` and `r = |w| * s` (one `f32` multiply), the code is `0` when
//!   `r <= threshold` and `sign(w)` otherwise. With `threshold = 0.5` this reproduces
//!   `clamp(round_half_even(w * s), -1, 1)` bit for bit *for the same `a`*: `r == 0.5` gives `0`
//!   (torch rounds the tie to even), `r == 1.5` gives `1` (rounds to 2, then clamps). The rule
//!   is often written "zero where `|W| < threshold * a`"; the two only differ on exact ties,
//!   where we follow torch. Dividing (`w / a`) instead of multiplying by `1 / a` can differ in
//!   the last bit, which moves codes near the tie, so we do not divide.
//! * **Scale precision.** Sums are accumulated in `f64` in a fixed order, the mean is rounded to
//!   `f32` once and then clamped below at [`SCALE_EPS`]. Torch sums in `f32` with its own order,
//!   so its `a` may differ from ours by an ulp; codes agree exactly whenever the `a` agree.
//! * **TWN.** `delta = 0.7 * mean|W|` (in `f64`); a weight is kept when it is non-zero and
//!   `|w| >= delta`; `a` is the mean of the kept magnitudes, or [`SCALE_EPS`] when none is kept.
//!   `threshold` is ignored.
//! * **Lossless detection** runs first whatever the method: per-tensor, then per-channel, then
//!   the configured `Group(G)` (only when the configuration asks for groups). The first
//!   granularity for which *every* group holds only `{-a, 0, +a}` wins, even when it is finer
//!   than a configured `Tensor` (a per-channel exact model stays exact). Zeros must be exactly
//!   `±0.0`; every other magnitude must lie within `lossless_rel_tol * a` of `a`, where `a` is the
//!   most frequent magnitude (exact bit pattern; ties go to the smallest). Codes are `sign(W)`.
//! * **All-zero groups** get the scale [`SCALE_EPS`] (`1e-5`) and zero codes, both in lossless
//!   detection (an all-zero tensor is lossless per-tensor) and in quantization (BitNet's clamp).
//! * **Determinism.** Work is split over rows (channels) with rayon; per-tensor sums are per-row
//!   partial sums added sequentially in row order. Results are bit-identical for any thread count.

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod kn;
mod lossless;
mod spare;
mod transpose;

use lossless::*;

pub use spare::Spare;
pub use transpose::{transpose, transpose_map, transpose_map_rows, transpose_map_rows_into};

/// Lower clamp of every absmean scale, as BitNet does (`mean.clamp(min=1e-5)`); also the scale
/// of an all-zero group.
pub const SCALE_EPS: f32 = 1e-5;

/// TWN threshold factor: weights below `0.7 * mean|W|` become zero.
pub const TWN_DELTA_FACTOR: f64 = 0.7;

/// Largest accepted `lossless_rel_tol`. Beyond 1% a "lossless" conversion would not be one.
pub const MAX_LOSSLESS_REL_TOL: f32 = 1e-2;

/// Each rayon task gets rows holding at least this many weights, so short rows are batched.
const MIN_TASK_ELEMS: usize = 1 << 14;

/// How many weights share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output channel (row of the channel-major weight).
    Channel,
    /// One scale per `G` consecutive input-dimension weights of one channel; the last group of a
    /// channel is shorter when `G` does not divide `K`.
    Group(usize),
}

impl Granularity {
    /// Number of scales per channel for `k` input features (1 for `Tensor` and `Channel`).
    pub fn groups_per_channel(self, k: usize) -> usize {
        match self {
            Granularity::Tensor | Granularity::Channel => 1,
            Granularity::Group(g) => k.div_ceil(g.max(1)),
        }
    }

    /// Number of scales of a `[n][k]` weight.
    pub fn scale_count(self, n: usize, k: usize) -> usize {
        match self {
            Granularity::Tensor => 1,
            Granularity::Channel => n,
            Granularity::Group(_) => n * self.groups_per_channel(k),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::Tensor => f.write_str("per-tensor"),
            Granularity::Channel => f.write_str("per-channel"),
            Granularity::Group(g) => write!(f, "group({g})"),
        }
    }
}

/// How scales and codes are chosen when the weight is not already ternary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// BitNet b1.58: `a = mean|W|`, codes by threshold on `|W| / a`.
    AbsMean,
    /// Ternary weight networks: zero below `0.7 mean|W|`, least-squares scale of the rest.
    Twn,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::AbsMean => f.write_str("absmean"),
            Method::Twn => f.write_str("twn"),
        }
    }
}

/// Quantizer settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    pub granularity: Granularity,
    pub method: Method,
    /// AbsMean only: a weight becomes 0 when `|w| * (1/a) <= threshold` (see the module docs
    /// for the tie rule). In `(0, 1]`; 0.5 is BitNet's `round`.
    pub threshold: f32,
    /// Relative tolerance of lossless detection, in `[0, MAX_LOSSLESS_REL_TOL]`.
    pub lossless_rel_tol: f32,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            granularity: Granularity::Channel,
            method: Method::AbsMean,
            threshold: 0.5,
            lossless_rel_tol: 1e-6,
        }
    }
}

impl QuantConfig {
    /// The published BitNet b1.58 recipe: per-tensor absmean, threshold 0.5.
    pub fn bitnet_b158() -> Self {
        QuantConfig {
            granularity: Granularity::Tensor,
            ..QuantConfig::default()
        }
    }

    /// Checks the settings alone (not a weight).
    pub fn validate(&self) -> Result<(), QuantError> {
        if let Granularity::Group(0) = self.granularity {
            return Err(QuantError::ZeroGroupSize);
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(QuantError::InvalidThreshold(self.threshold));
        }
        if !(self.lossless_rel_tol >= 0.0 && self.lossless_rel_tol <= MAX_LOSSLESS_REL_TOL) {
            return Err(QuantError::InvalidTolerance(self.lossless_rel_tol));
        }
        Ok(())
    }
}

/// Why a weight could not be quantized.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    #[error("weight has a zero-sized dimension (shape [{n}, {k}])")]
    EmptyShape { n: usize, k: usize },
    #[error("weight shape [{n}, {k}] has more elements than can be addressed")]
    ShapeOverflow { n: usize, k: usize },
    #[error("weight has {len} elements but shape [{n}, {k}] needs {expected}")]
    LengthMismatch {
        len: usize,
        n: usize,
        k: usize,
        expected: usize,
    },
    #[error("group size must be at least 1")]
    ZeroGroupSize,
    #[error("threshold {0} is outside (0, 1]")]
    InvalidThreshold(f32),
    #[error("lossless_rel_tol {0} is outside [0, {max}]", max = MAX_LOSSLESS_REL_TOL)]
    InvalidTolerance(f32),
    #[error(
        "weight element {index} (channel {row}, input {col}) is {value}: weights must be finite"
    )]
    NonFinite {
        index: usize,
        row: usize,
        col: usize,
        value: f32,
    },
    #[error("could not read the weight: {0}")]
    Read(String),
}

/// A ternary weight: codes in `{-1, 0, 1}` times per-group scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    /// Output features (channels).
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// `[N][K]`, each -1, 0 or +1.
    pub codes: Vec<i8>,
    /// The granularity actually used (lossless detection may pick another than the config).
    pub granularity: Granularity,
    /// Tensor: 1; Channel: N; Group(G): `N * ceil(K / G)`, `[N][groups]`.
    pub scales: Vec<f32>,
    /// Every group already held only `{-a, 0, +a}` within the tolerance.
    pub lossless: bool,
}

impl Ternary {
    /// The scale of the weight at `(row, col)` (channel, input feature).
    pub fn scale_at(&self, row: usize, col: usize) -> f32 {
        match self.granularity {
            Granularity::Tensor => self.scales[0],
            Granularity::Channel => self.scales[row],
            Granularity::Group(g) => self.scales[row * self.groups_per_channel() + col / g],
        }
    }

    /// Scales per channel: 1 for `Tensor` and `Channel`, `ceil(K / G)` for `Group(G)`.
    pub fn groups_per_channel(&self) -> usize {
        self.granularity.groups_per_channel(self.k)
    }

    /// `[N][K]` values `code * scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        if self.k == 0 {
            return out;
        }
        out.par_chunks_mut(self.k)
            .zip(self.codes.par_chunks(self.k))
            .enumerate()
            .with_min_len(min_rows(self.k))
            .for_each(|(row, (o, c))| {
                for (col, (o, &c)) in o.iter_mut().zip(c).enumerate() {
                    *o = f32::from(c) * self.scale_at(row, col);
                }
            });
        out
    }

    /// Number of -1, 0 and +1 codes (in parallel for large weights).
    pub fn counts(&self) -> [u64; 3] {
        self.codes
            .par_chunks(1 << 20)
            .map(count_codes)
            .reduce(|| [0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]])
    }

    /// Smallest and largest scale (`(0, 0)` when there are none).
    pub fn scale_range(&self) -> (f32, f32) {
        let mut it = self.scales.iter().copied();
        let Some(first) = it.next() else {
            return (0.0, 0.0);
        };
        it.fold((first, first), |(lo, hi), s| (lo.min(s), hi.max(s)))
    }
}

/// Number of codes below, at and above zero (codes outside `{-1, 0, 1}` break the invariant
/// and count with the nearest).
pub fn count_codes(codes: &[i8]) -> [u64; 3] {
    let [neg, pos] = count_signs(codes);
    [neg, codes.len() as u64 - neg - pos, pos]
}

/// Codes below and above zero, sixteen at a time in SSE2: per-byte counters (at most 255 steps
/// each) summed into 64-bit lanes with `psadbw`.
#[cfg(target_arch = "x86_64")]
fn count_signs(codes: &[i8]) -> [u64; 2] {
    // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
    unsafe { count_signs_sse2(codes) }
}

#[cfg(not(target_arch = "x86_64"))]
fn count_signs(codes: &[i8]) -> [u64; 2] {
    count_signs_scalar(codes)
}

fn count_signs_scalar(codes: &[i8]) -> [u64; 2] {
    codes.iter().fold([0, 0], |[n, p], &c| {
        [n + u64::from(c < 0), p + u64::from(c > 0)]
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn count_signs_sse2(codes: &[i8]) -> [u64; 2] {
    use std::arch::x86_64::*;
    let zero = _mm_setzero_si128();
    let (mut neg, mut pos) = (zero, zero);
    let whole = codes.len() / 16 * 16;
    for block in codes[..whole].chunks(255 * 16) {
        let (mut n, mut p) = (zero, zero);
        for c in block.chunks_exact(16) {
            // SAFETY: `c` holds 16 bytes; unaligned loads are allowed.
            let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
            // A true compare is -1 in its byte: subtracting it counts one.
            n = _mm_sub_epi8(n, _mm_cmplt_epi8(v, zero));
            p = _mm_sub_epi8(p, _mm_cmpgt_epi8(v, zero));
        }
        neg = _mm_add_epi64(neg, _mm_sad_epu8(n, zero));
        pos = _mm_add_epi64(pos, _mm_sad_epu8(p, zero));
    }
    let lanes = |v: __m128i| {
        let hi = _mm_unpackhi_epi64(v, v);
        _mm_cvtsi128_si64(v) as u64 + _mm_cvtsi128_si64(hi) as u64
    };
    let [n, p] = count_signs_scalar(&codes[whole..]);
    [lanes(neg) + n, lanes(pos) + p]
}

/// The ternary code of `x` for the reciprocal scale `inv_scale = 1.0 / a`: 0 when
/// `|x| * inv_scale <= threshold`, else `sign(x)`. With threshold 0.5 this equals torch's
/// `(x * inv_scale).round().clamp(-1, 1)` (round half to even).
#[inline]
pub fn ternary_code(x: f32, inv_scale: f32, threshold: f32) -> i8 {
    let keep = x.abs() * inv_scale > threshold;
    let sign = if x.is_sign_negative() { -1 } else { 1 };
    i8::from(keep) * sign
}

/// Quantizes a channel-major `[n][k]` weight. Lossless detection runs first (see module docs).
pub fn quantize(w: &[f32], n: usize, k: usize, cfg: &QuantConfig) -> Result<Ternary, QuantError> {
    quantize_measured(w, n, k, cfg).map(|(t, _)| t)
}

/// [`quantize`] and [`rel_error`] of the result, equal to calling both. The absmean path
/// measures the error while each row is still in cache instead of reading the weight again
/// (the same sums in the same order, so the same bits).
pub fn quantize_measured(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &QuantConfig,
) -> Result<(Ternary, f64), QuantError> {
    check_shape(w, n, k)?;
    cfg.validate()?;
    let tol = f64::from(cfg.lossless_rel_tol);
    let mut order = vec![Granularity::Tensor, Granularity::Channel];
    if let Granularity::Group(g) = cfg.granularity {
        // A group as long as the channel is the channel, already tried.
        if g < k {
            order.push(cfg.granularity);
        }
    }
    for gran in order {
        if let Some(t) = detect_at(w, n, k, gran, tol) {
            let e = rel_error(w, &t);
            return Ok((t, e));
        }
    }
    match cfg.method {
        Method::AbsMean => absmean(w, n, k, cfg.granularity, cfg.threshold),
        Method::Twn => twn(w, n, k, cfg.granularity).map(|t| {
            let e = rel_error(w, &t);
            (t, e)
        }),
    }
}

/// `||W - dequantize(T)||_2 / ||W||_2`, summed in `f64`. 0 when both are all zero; infinite
/// when `W` is all zero and `T` is not.
///
/// # Panics
/// When `w` and `t` have different lengths.
pub fn rel_error(w: &[f32], t: &Ternary) -> f64 {
    assert_eq!(
        w.len(),
        t.codes.len(),
        "rel_error: weight and ternary sizes differ"
    );
    if t.k == 0 || w.is_empty() {
        return 0.0;
    }
    let glen = group_len(t.granularity, t.k);
    let parts: Vec<(f64, f64)> = w
        .par_chunks(t.k)
        .zip(t.codes.par_chunks(t.k))
        .enumerate()
        .with_min_len(min_rows(t.k))
        .map(|(row, (wr, cr))| {
            let (mut err, mut norm) = (0f64, 0f64);
            for (g, (wg, cg)) in wr.chunks(glen).zip(cr.chunks(glen)).enumerate() {
                let (e, n) = sq_err(wg, cg, t.scale_at(row, g * glen));
                err += e;
                norm += n;
            }
            (err, norm)
        })
        .collect();
    finish_rel_error(&parts)
}

/// `sqrt(sum err / sum norm)` from per-row `(err, norm)` sums, in row order.
fn finish_rel_error(parts: &[(f64, f64)]) -> f64 {
    let (err, norm) = parts
        .iter()
        .fold((0f64, 0f64), |(e, n), &(pe, pn)| (e + pe, n + pn));
    if norm == 0.0 {
        if err == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (err / norm).sqrt()
    }
}

/// Lossless detection alone: per-tensor, then per-channel. `None` when neither granularity
/// holds only `{-a, 0, +a}` per group (within `rel_tol` relative), or a weight is not finite.
/// [`quantize`] runs the same detection (plus its configured `Group(G)`) before quantizing.
///
/// # Panics
/// When `w.len() != n * k`.
pub fn detect_ternary(w: &[f32], n: usize, k: usize, rel_tol: f32) -> Option<Ternary> {
    detect_ternary_at(w, n, k, Granularity::Tensor, rel_tol)
        .or_else(|| detect_ternary_at(w, n, k, Granularity::Channel, rel_tol))
}

/// Lossless detection at one granularity. `rel_tol` is clamped into
/// `[0, MAX_LOSSLESS_REL_TOL]` (NaN counts as 0).
///
/// # Panics
/// When `w.len() != n * k`.
pub fn detect_ternary_at(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    rel_tol: f32,
) -> Option<Ternary> {
    assert_eq!(
        Some(w.len()),
        n.checked_mul(k),
        "detect_ternary: {} elements for shape [{n}, {k}]",
        w.len()
    );
    if n == 0 || k == 0 || matches!(granularity, Granularity::Group(0)) {
        return None;
    }
    let tol = if rel_tol.is_nan() {
        0.0
    } else {
        rel_tol.clamp(0.0, MAX_LOSSLESS_REL_TOL)
    };
    detect_at(w, n, k, granularity, f64::from(tol))
}

// ---------------------------------------------------------------------------------------------
// Internals

fn check_shape(w: &[f32], n: usize, k: usize) -> Result<(), QuantError> {
    check_shape_len(w.len(), n, k)
}

fn check_shape_len(len: usize, n: usize, k: usize) -> Result<(), QuantError> {
    if n == 0 || k == 0 {
        return Err(QuantError::EmptyShape { n, k });
    }
    let expected = n.checked_mul(k).ok_or(QuantError::ShapeOverflow { n, k })?;
    if len != expected {
        return Err(QuantError::LengthMismatch {
            len,
            n,
            k,
            expected,
        });
    }
    Ok(())
}

/// Minimum rows per rayon task so a task holds at least `MIN_TASK_ELEMS` weights.
fn min_rows(k: usize) -> usize {
    (MIN_TASK_ELEMS / k.max(1)).max(1)
}

/// Elements per group along K (`k` for Tensor and Channel).
fn group_len(gran: Granularity, k: usize) -> usize {
    match gran {
        Granularity::Tensor | Granularity::Channel => k,
        Granularity::Group(g) => g.min(k),
    }
}

/// Sum of `|x|` in `f64` with four fixed lanes (deterministic; NaN/inf propagate).
#[inline]
fn sum_abs(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let tail = abs_lanes(&mut acc, xs);
    abs_total(acc, tail)
}

/// Adds `|x|` of every whole chunk of four in `xs` to the four lanes of `acc`; returns the
/// elements left over. [`sum_abs`] is `abs_total` of this from zero lanes, so a channel can be
/// summed a part at a time (parts whose lengths are multiples of four, then the last part) with
/// the same bits.
#[inline]
pub(crate) fn abs_lanes<'a>(acc: &mut [f64; 4], xs: &'a [f32]) -> &'a [f32] {
    let mut chunks = xs.chunks_exact(4);
    for c in &mut chunks {
        acc[0] += f64::from(c[0].abs());
        acc[1] += f64::from(c[1].abs());
        acc[2] += f64::from(c[2].abs());
        acc[3] += f64::from(c[3].abs());
    }
    chunks.remainder()
}

/// The sum [`abs_lanes`] was building: the lanes combined, then the left-over elements.
#[inline]
pub(crate) fn abs_total(acc: [f64; 4], tail: &[f32]) -> f64 {
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &x in tail {
        s += f64::from(x.abs());
    }
    s
}

/// `(sum (x - c * s)^2, sum x^2)` over one group of one scale `s`, in `f64` with four fixed
/// lanes (deterministic, and independent chains the compiler can vectorise).
#[inline]
fn sq_err(xs: &[f32], cs: &[i8], s: f32) -> (f64, f64) {
    let mut lanes = ErrLanes::default();
    let n = lanes.add(xs, cs, s);
    lanes.total(&xs[n..], &cs[n..], s)
}

/// `rule.code_slice(xs, cs)` then [`sq_err`]`(xs, cs, s)`, in one pass.
#[inline]
fn code_err(xs: &[f32], cs: &mut [i8], s: f32, rule: CodeRule) -> (f64, f64) {
    let mut lanes = ErrLanes::default();
    let n = lanes.code_add(xs, cs, s, rule);
    lanes.total(&xs[n..], &cs[n..], s)
}

/// The four `(err, norm)` lanes of [`sq_err`], so a channel can be measured a part at a time
/// (parts whose lengths are multiples of four, then the last part) with the same bits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ErrLanes {
    err: [f64; 4],
    norm: [f64; 4],
}

/// The lanes of an [`ErrLanes`] in SSE2 registers, two per register, for its SSE2 kernels.
#[cfg(target_arch = "x86_64")]
struct Sse2Lanes {
    e01: std::arch::x86_64::__m128d,
    e23: std::arch::x86_64::__m128d,
    n01: std::arch::x86_64::__m128d,
    n23: std::arch::x86_64::__m128d,
}

#[cfg(target_arch = "x86_64")]
impl Sse2Lanes {
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(l: &ErrLanes) -> Sse2Lanes {
        use std::arch::x86_64::*;
        let ([e0, e1, e2, e3], [n0, n1, n2, n3]) = (l.err, l.norm);
        Sse2Lanes {
            e01: _mm_setr_pd(e0, e1),
            e23: _mm_setr_pd(e2, e3),
            n01: _mm_setr_pd(n0, n1),
            n23: _mm_setr_pd(n2, n3),
        }
    }

    /// Adds `(x - q)^2` to the error lanes and `x^2` to the norm lanes, in `f64`, lane `i`
    /// taking element `i`: the portable `ErrLanes::add`'s operations.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn add(&mut self, xv: std::arch::x86_64::__m128, q: std::arch::x86_64::__m128) {
        use std::arch::x86_64::*;
        let (x01, x23) = (_mm_cvtps_pd(xv), _mm_cvtps_pd(_mm_movehl_ps(xv, xv)));
        let (q01, q23) = (_mm_cvtps_pd(q), _mm_cvtps_pd(_mm_movehl_ps(q, q)));
        let (d01, d23) = (_mm_sub_pd(x01, q01), _mm_sub_pd(x23, q23));
        self.e01 = _mm_add_pd(self.e01, _mm_mul_pd(d01, d01));
        self.e23 = _mm_add_pd(self.e23, _mm_mul_pd(d23, d23));
        self.n01 = _mm_add_pd(self.n01, _mm_mul_pd(x01, x01));
        self.n23 = _mm_add_pd(self.n23, _mm_mul_pd(x23, x23));
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn store(self, l: &mut ErrLanes) {
        use std::arch::x86_64::*;
        let lanes = |v: __m128d| [_mm_cvtsd_f64(v), _mm_cvtsd_f64(_mm_unpackhi_pd(v, v))];
        let ([e0, e1], [e2, e3]) = (lanes(self.e01), lanes(self.e23));
        let ([n0, n1], [n2, n3]) = (lanes(self.n01), lanes(self.n23));
        l.err = [e0, e1, e2, e3];
        l.norm = [n0, n1, n2, n3];
    }
}

/// How [`ErrLanes::code_add`] codes a weight: by its sign (lossless detection), or by
/// [`ternary_code`] with this reciprocal scale and threshold (absmean).
#[derive(Debug, Clone, Copy)]
pub(crate) enum CodeRule {
    Sign,
    Threshold { inv: f32, thr: f32 },
}

impl CodeRule {
    fn code_slice(self, xs: &[f32], cs: &mut [i8]) {
        match self {
            CodeRule::Sign => sign_slice(xs, cs),
            CodeRule::Threshold { inv, thr } => code_slice(xs, cs, inv, thr),
        }
    }
}

impl ErrLanes {
    /// Codes every weight of `xs` into `cs` as `rule` says and adds every whole chunk of four
    /// to the lanes with scale `s`, as `rule.code_slice` then [`ErrLanes::add`] would; returns
    /// how many elements went into the lanes. One pass: adding codes just stored byte by byte
    /// made every four-byte load of them wait for the stores (store-forwarding stall), which
    /// perf put at two thirds of `add`'s samples.
    #[inline]
    pub(crate) fn code_add(&mut self, xs: &[f32], cs: &mut [i8], s: f32, rule: CodeRule) -> usize {
        #[cfg(target_arch = "x86_64")]
        let done = {
            // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
            unsafe { self.code_add_sse2(xs, cs, s, rule) }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = {
            let n = xs.len().min(cs.len()) / 4 * 4;
            rule.code_slice(&xs[..n], &mut cs[..n]);
            self.add(&xs[..n], &cs[..n], s)
        };
        rule.code_slice(&xs[done..], &mut cs[done..]);
        done
    }

    /// [`ErrLanes::code_add`] on whole chunks of four: the codes computed in registers with the
    /// same IEEE operations as `sign_slice` / `ternary_code`, stored, and used for the error.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn code_add_sse2(&mut self, xs: &[f32], cs: &mut [i8], s: f32, rule: CodeRule) -> usize {
        use std::arch::x86_64::*;
        let len = xs.len().min(cs.len()) / 4 * 4;
        let sv = _mm_set1_ps(s);
        let one = _mm_set1_epi32(1);
        let zero = _mm_setzero_ps();
        let abs = _mm_castsi128_ps(_mm_set1_epi32(0x7fff_ffff));
        let (inv, thr) = match rule {
            CodeRule::Sign => (0.0, 0.0),
            CodeRule::Threshold { inv, thr } => (inv, thr),
        };
        let (invv, thrv) = (_mm_set1_ps(inv), _mm_set1_ps(thr));
        let mut acc = Sse2Lanes::load(self);
        for (x, c) in xs[..len].chunks_exact(4).zip(cs[..len].chunks_exact_mut(4)) {
            let xv = _mm_setr_ps(x[0], x[1], x[2], x[3]);
            let code = match rule {
                // x > 0: 1, x < 0: -1, else (zeros, NaN) 0.
                CodeRule::Sign => {
                    let gt = _mm_castps_si128(_mm_cmpgt_ps(xv, zero));
                    let lt = _mm_castps_si128(_mm_cmplt_ps(xv, zero));
                    _mm_or_si128(_mm_and_si128(gt, one), lt)
                }
                // |x| * inv > thr: the sign (-1 when the sign bit is set, else 1), else 0.
                CodeRule::Threshold { .. } => {
                    let keep = _mm_cmpgt_ps(_mm_mul_ps(_mm_and_ps(xv, abs), invv), thrv);
                    let neg = _mm_srai_epi32::<31>(_mm_castps_si128(xv));
                    _mm_and_si128(_mm_or_si128(neg, one), _mm_castps_si128(keep))
                }
            };
            let bytes = _mm_packs_epi16(_mm_packs_epi32(code, code), _mm_setzero_si128());
            let stored = _mm_cvtsi128_si32(bytes).to_le_bytes().map(|b| b as i8);
            c.copy_from_slice(&stored);
            acc.add(xv, _mm_mul_ps(_mm_cvtepi32_ps(code), sv));
        }
        acc.store(self);
        len
    }

    /// Adds every whole chunk of four; returns how many elements that was.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(crate) fn add(&mut self, xs: &[f32], cs: &[i8], s: f32) -> usize {
        // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
        unsafe { self.add_sse2(xs, cs, s) }
    }

    /// [`ErrLanes::add`] with the same operations as the portable version below, two lanes per
    /// SSE2 register: the same IEEE results, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn add_sse2(&mut self, xs: &[f32], cs: &[i8], s: f32) -> usize {
        use std::arch::x86_64::*;
        let len = xs.len().min(cs.len()) / 4 * 4;
        let sv = _mm_set1_ps(s);
        let mut acc = Sse2Lanes::load(self);
        for (x, c) in xs[..len].chunks_exact(4).zip(cs[..len].chunks_exact(4)) {
            let xv = _mm_setr_ps(x[0], x[1], x[2], x[3]);
            let cv = _mm_setr_epi32(c[0].into(), c[1].into(), c[2].into(), c[3].into());
            acc.add(xv, _mm_mul_ps(_mm_cvtepi32_ps(cv), sv));
        }
        acc.store(self);
        len
    }

    /// Adds every whole chunk of four; returns how many elements that was.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    pub(crate) fn add(&mut self, xs: &[f32], cs: &[i8], s: f32) -> usize {
        let mut xc = xs.chunks_exact(4);
        let mut cc = cs.chunks_exact(4);
        for (x, c) in (&mut xc).zip(&mut cc) {
            for l in 0..4 {
                let xv = f64::from(x[l]);
                let d = xv - f64::from(f32::from(c[l]) * s);
                self.err[l] += d * d;
                self.norm[l] += xv * xv;
            }
        }
        xs.len().min(cs.len()) / 4 * 4
    }

    /// The sums: the lanes combined, then the left-over elements `xs`, `cs`.
    #[inline]
    pub(crate) fn total(self, xs: &[f32], cs: &[i8], s: f32) -> (f64, f64) {
        let (err, norm) = (self.err, self.norm);
        let mut e = (err[0] + err[1]) + (err[2] + err[3]);
        let mut n = (norm[0] + norm[1]) + (norm[2] + norm[3]);
        for (&x, &c) in xs.iter().zip(cs) {
            let xv = f64::from(x);
            let d = xv - f64::from(f32::from(c) * s);
            e += d * d;
            n += xv * xv;
        }
        (e, n)
    }
}

/// BitNet's clamped absmean scale from an `f64` mean.
#[inline]
fn clamp_scale(mean: f64) -> f32 {
    (mean as f32).max(SCALE_EPS)
}

fn non_finite(w: &[f32], k: usize, row: usize) -> QuantError {
    let r = &w[row * k..(row + 1) * k];
    let col = r.iter().position(|x| !x.is_finite()).unwrap_or(0);
    let index = row * k + col;
    QuantError::NonFinite {
        index,
        row,
        col,
        value: w[index],
    }
}

fn code_slice(ws: &[f32], cs: &mut [i8], inv: f32, thr: f32) {
    for (c, &x) in cs.iter_mut().zip(ws) {
        *c = ternary_code(x, inv, thr);
    }
}

fn sign_slice(ws: &[f32], cs: &mut [i8]) {
    for (c, &x) in cs.iter_mut().zip(ws) {
        *c = if x > 0.0 {
            1
        } else if x < 0.0 {
            -1
        } else {
            0
        };
    }
}

fn absmean(
    w: &[f32],
    n: usize,
    k: usize,
    gran: Granularity,
    thr: f32,
) -> Result<(Ternary, f64), QuantError> {
    let mut codes = vec![0i8; n * k];
    // Per row: (err, norm) as `rel_error` sums them, measured right after coding the row.
    let mut parts = vec![(0f64, 0f64); n];
    let scales = match gran {
        Granularity::Tensor => {
            let sums: Vec<f64> = w
                .par_chunks(k)
                .with_min_len(min_rows(k))
                .map(sum_abs)
                .collect();
            let mut total = 0f64;
            for (row, &s) in sums.iter().enumerate() {
                if !s.is_finite() {
                    return Err(non_finite(w, k, row));
                }
                total += s;
            }
            let a = clamp_scale(total / (n as f64 * k as f64));
            let inv = 1.0 / a;
            codes
                .par_chunks_mut(k)
                .zip(w.par_chunks(k))
                .zip(parts.par_iter_mut())
                .with_min_len(min_rows(k))
                .for_each(|((c, x), p)| {
                    *p = code_err(x, c, a, CodeRule::Threshold { inv, thr });
                });
            vec![a]
        }
        Granularity::Channel | Granularity::Group(_) => {
            let g = group_len(gran, k);
            let gpc = k.div_ceil(g);
            let mut scales = vec![0f32; n * gpc];
            let bad: Vec<bool> = codes
                .par_chunks_mut(k)
                .zip(scales.par_chunks_mut(gpc))
                .zip(w.par_chunks(k))
                .zip(parts.par_iter_mut())
                .with_min_len(min_rows(k))
                .map(|(((c, s), x), p)| match absmean_channel(x, c, s, g, thr) {
                    Some(en) => {
                        *p = en;
                        false
                    }
                    None => true,
                })
                .collect();
            if let Some(row) = bad.iter().position(|&b| b) {
                return Err(non_finite(w, k, row));
            }
            scales
        }
    };
    let t = Ternary {
        n,
        k,
        codes,
        granularity: gran,
        scales,
        lossless: false,
    };
    let e = if t.k == 0 || w.is_empty() {
        0.0
    } else {
        finish_rel_error(&parts)
    };
    Ok((t, e))
}

/// Absmean of one channel `x` in groups of `g`: scales into `s`, codes into `c`, and its
/// `(err, norm)` sums as `rel_error` makes them. `None` when a weight is not finite.
#[inline]
fn absmean_channel(
    x: &[f32],
    c: &mut [i8],
    s: &mut [f32],
    g: usize,
    thr: f32,
) -> Option<(f64, f64)> {
    let (mut err, mut norm) = (0f64, 0f64);
    for ((cg, xg), sg) in c.chunks_mut(g).zip(x.chunks(g)).zip(s.iter_mut()) {
        let sum = sum_abs(xg);
        if !sum.is_finite() {
            return None;
        }
        let a = clamp_scale(sum / xg.len() as f64);
        *sg = a;
        let (e, nn) = code_err(xg, cg, a, CodeRule::Threshold { inv: 1.0 / a, thr });
        err += e;
        norm += nn;
    }
    Some((err, norm))
}

/// TWN on one group: codes into `cs`, returns (sum of kept |w|, kept count).
#[inline]
fn twn_code(xs: &[f32], cs: &mut [i8], delta: f64) -> (f64, u64) {
    // `|x| >= delta` with an f64 delta is `|x| >= d32` for the smallest f32 `d32 >= delta`,
    // which lets the coding loop run on f32 lanes.
    let mut d32 = delta as f32;
    if f64::from(d32) < delta {
        d32 = d32.next_up();
    }
    let mut count = 0u64;
    for (c, &x) in cs.iter_mut().zip(xs) {
        let keep = (x != 0.0) & (x.abs() >= d32);
        let sign = if x.is_sign_negative() { -1 } else { 1 };
        *c = i8::from(keep) * sign;
        count += u64::from(keep);
    }
    // Kept magnitudes summed in f64 over four fixed lanes (deterministic).
    let mut acc = [0f64; 4];
    let mut xc = xs.chunks_exact(4);
    let mut cc = cs.chunks_exact(4);
    for (x4, c4) in (&mut xc).zip(&mut cc) {
        for i in 0..4 {
            // c * c is 1 for a kept weight, 0 otherwise: no unpredictable branch.
            acc[i] += f64::from(x4[i].abs()) * f64::from(c4[i] * c4[i]);
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, c) in xc.remainder().iter().zip(cc.remainder()) {
        if *c != 0 {
            sum += f64::from(x.abs());
        }
    }
    (sum, count)
}

fn twn_scale(sum: f64, count: u64) -> f32 {
    if count == 0 {
        SCALE_EPS
    } else {
        (sum / count as f64) as f32
    }
}

fn twn(w: &[f32], n: usize, k: usize, gran: Granularity) -> Result<Ternary, QuantError> {
    let mut codes = vec![0i8; n * k];
    let scales = match gran {
        Granularity::Tensor => {
            let sums: Vec<f64> = w
                .par_chunks(k)
                .with_min_len(min_rows(k))
                .map(sum_abs)
                .collect();
            let mut total = 0f64;
            for (row, &s) in sums.iter().enumerate() {
                if !s.is_finite() {
                    return Err(non_finite(w, k, row));
                }
                total += s;
            }
            let delta = TWN_DELTA_FACTOR * (total / (n as f64 * k as f64));
            let kept: Vec<(f64, u64)> = codes
                .par_chunks_mut(k)
                .zip(w.par_chunks(k))
                .with_min_len(min_rows(k))
                .map(|(c, x)| twn_code(x, c, delta))
                .collect();
            let (sum, count) = kept
                .iter()
                .fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc));
            vec![twn_scale(sum, count)]
        }
        Granularity::Channel | Granularity::Group(_) => {
            let g = group_len(gran, k);
            let gpc = k.div_ceil(g);
            let mut scales = vec![0f32; n * gpc];
            let bad: Vec<bool> = codes
                .par_chunks_mut(k)
                .zip(scales.par_chunks_mut(gpc))
                .zip(w.par_chunks(k))
                .with_min_len(min_rows(k))
                .map(|((c, s), x)| {
                    for ((cg, xg), sg) in c.chunks_mut(g).zip(x.chunks(g)).zip(s.iter_mut()) {
                        let total = sum_abs(xg);
                        if !total.is_finite() {
                            return true;
                        }
                        let delta = TWN_DELTA_FACTOR * (total / xg.len() as f64);
                        let (sum, count) = twn_code(xg, cg, delta);
                        *sg = twn_scale(sum, count);
                    }
                    false
                })
                .collect();
            if let Some(row) = bad.iter().position(|&b| b) {
                return Err(non_finite(w, k, row));
            }
            scales
        }
    };
    Ok(Ternary {
        n,
        k,
        codes,
        granularity: gran,
        scales,
        lossless: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(granularity: Granularity, method: Method) -> QuantConfig {
        QuantConfig {
            granularity,
            method,
            ..QuantConfig::default()
        }
    }

    #[test]
    fn code_counts_match_the_scalar_count() {
        let mut seed = 99u64;
        for len in [
            0,
            1,
            15,
            16,
            17,
            255 * 16 - 1,
            255 * 16,
            255 * 16 + 33,
            70_000,
        ] {
            let codes: Vec<i8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    // Mostly ternary, with some out-of-range values.
                    match (seed >> 40) % 8 {
                        0 => i8::MIN,
                        1 => 100,
                        r => (r % 3) as i8 - 1,
                    }
                })
                .collect();
            assert_eq!(count_signs(&codes), count_signs_scalar(&codes), "{len}");
        }
        // Every byte +1 for 255 * 16 codes: the per-byte counters reach 255, no further.
        assert_eq!(count_signs(&vec![1i8; 255 * 16 * 3]), [0, 255 * 16 * 3]);
        assert_eq!(count_codes(&[-1, 0, 1, 1]), [1, 1, 2]);
    }

    #[test]
    fn spare_gives_the_best_fit_of_its_type_within_its_limit() {
        let s = Spare::new(100);
        s.give(Vec::<u8>::with_capacity(10));
        s.give(Vec::<u8>::with_capacity(40));
        s.give(Vec::<f32>::with_capacity(25)); // 100 bytes of another type: its own limit
        s.give(Vec::<u8>::with_capacity(31)); // 81 kept
        s.give(Vec::<u8>::with_capacity(30)); // frees the 10, yet 101 > 100: not kept
        s.give(Vec::<u8>::with_capacity(101)); // larger than the limit
        s.give(Vec::<u8>::new()); // nothing to keep
        assert_eq!(s.take::<i8>(1).capacity(), 0, "no buffer of another type");
        assert_eq!(
            s.take::<u8>(5).capacity(),
            31,
            "the smallest that holds 5 (10 was freed)"
        );
        s.give(Vec::<u8>::with_capacity(35));
        assert_eq!(
            s.take::<u8>(50).capacity(),
            40,
            "none holds 50: the largest"
        );
        assert_eq!(s.take::<u8>(0).capacity(), 35);
        assert_eq!(s.take::<u8>(0).capacity(), 0);
        assert_eq!(s.take::<f32>(1).capacity(), 25);
        // Nothing kept: the whole limit is free again.
        s.give(Vec::<u8>::with_capacity(100));
        assert_eq!(s.take::<u8>(0).capacity(), 100);
    }

    #[test]
    fn transpose_small() {
        let m = [1, 2, 3, 4, 5, 6]; // [2][3]
        assert_eq!(transpose(&m, 2, 3), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(transpose(&transpose(&m, 2, 3), 3, 2), m.to_vec());
        let empty: [f32; 0] = [];
        assert!(transpose(&empty, 0, 5).is_empty());
    }

    #[test]
    fn transpose_larger_than_tile() {
        let (r, c) = (37, 70);
        let m: Vec<u32> = (0..r * c).map(|i| i as u32).collect();
        let t = transpose(&m, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], m[i * c + j]);
            }
        }
    }

    #[test]
    fn transpose_in_bands_matches_and_reports_every_row() {
        for (r, c) in [(37, 70), (64, 32), (1, 5), (100, 1), (48, 96)] {
            let m: Vec<u32> = (0..r * c).map(|i| i as u32 * 7 + 1).collect();
            let want = transpose(&m, r, c);
            for band in [1, 16, 17, 33, 1000] {
                let mut seen = Vec::new();
                let got = transpose_map_rows(&m, r, c, band, |x| x, |rs| seen.push(rs));
                assert_eq!(got, want, "{r}x{c} band {band}");
                assert_eq!(seen.first().map(|s| s.start), Some(0));
                assert_eq!(seen.last().map(|s| s.end), Some(r));
                assert!(seen.windows(2).all(|w| w[0].end == w[1].start));
            }
            let f = transpose_map(&m, r, c, |x| x as u64 * 2);
            assert!(f.iter().zip(&want).all(|(&a, &b)| a == b as u64 * 2));
        }
    }

    #[test]
    fn absmean_per_tensor_ties_follow_torch() {
        // mean |W| = (0.5 + 0.5 + 1.5 + 1.5 + 1 + 1 + 0 + 2) / 8 = 1
        let w = [0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 2.0];
        let t = quantize(&w, 2, 4, &QuantConfig::bitnet_b158()).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.granularity, Granularity::Tensor);
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.codes, vec![0, 0, 1, -1, 1, -1, 0, 1]);
        assert_eq!(t.counts(), [2, 3, 3]);
    }

    #[test]
    fn absmean_per_channel_and_group() {
        // row 0: mean 2 ; row 1: mean 0.25 (groups of 2: [0.5, 0] -> 0.25, [0.25, 0.25] -> 0.25)
        let w = [1.0, -3.0, 2.0, 2.0, 0.5, 0.0, -0.25, 0.25];
        let t = quantize(&w, 2, 4, &cfg(Granularity::Channel, Method::AbsMean)).unwrap();
        assert_eq!(t.scales, vec![2.0, 0.25]);
        // row 0: |w|/2 = .5 .. 1.5 1 1 ; row 1: 2 0 1 1
        assert_eq!(t.codes, vec![0, -1, 1, 1, 1, 0, -1, 1]);
        let t = quantize(&w, 2, 4, &cfg(Granularity::Group(3), Method::AbsMean)).unwrap();
        // groups: [1,-3,2] mean 2, [2] mean 2, [0.5,0,-0.25] mean 0.25, [0.25] mean .25
        assert_eq!(t.scales, vec![2.0, 2.0, 0.25, 0.25]);
        assert_eq!(t.groups_per_channel(), 2);
        assert_eq!(t.scale_at(1, 2), 0.25);
        assert_eq!(t.scale_at(0, 3), 2.0);
        assert_eq!(t.scale_range(), (0.25, 2.0));
    }

    #[test]
    fn twn_small() {
        // mean |W| = (4 + 0.1 + 1 + 3) / 4 = 2.025, delta = 1.4175: keeps 4 and -3.
        let w = [4.0, 0.1, -1.0, -3.0];
        let t = quantize(&w, 1, 4, &cfg(Granularity::Tensor, Method::Twn)).unwrap();
        assert_eq!(t.codes, vec![1, 0, 0, -1]);
        assert_eq!(t.scales, vec![3.5]);
    }

    #[test]
    fn all_zero_is_lossless_with_eps_scale() {
        let w = [0.0f32, -0.0, 0.0, 0.0, 0.0, 0.0];
        for m in [Method::AbsMean, Method::Twn] {
            let t = quantize(&w, 2, 3, &cfg(Granularity::Group(2), m)).unwrap();
            assert!(t.lossless);
            assert_eq!(t.granularity, Granularity::Tensor);
            assert_eq!(t.scales, vec![SCALE_EPS]);
            assert_eq!(t.codes, vec![0; 6]);
            assert_eq!(rel_error(&w, &t), 0.0);
        }
    }

    #[test]
    fn zero_channel_in_per_channel_lossless() {
        // row 0 is ternary with a = 0.5, row 1 all zero, row 2 ternary with a = 3.
        let w = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, -3.0];
        let t = quantize(&w, 3, 3, &QuantConfig::default()).unwrap();
        assert!(t.lossless);
        assert_eq!(t.granularity, Granularity::Channel);
        assert_eq!(t.scales, vec![0.5, SCALE_EPS, 3.0]);
        assert_eq!(t.codes, vec![1, -1, 0, 0, 0, 0, 0, 1, -1]);
    }

    #[test]
    fn fused_coding_matches_coding_then_measuring() {
        // `ErrLanes::code_add` (codes computed in SSE2 registers) against the scalar rules and
        // `add`: every length's tail, signed zeros, NaN, infinities and exact threshold ties.
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.25,
            -0.25,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for len in [0, 1, 3, 4, 5, 17, 64, 67] {
            let xs: Vec<f32> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if i % 5 == 2 {
                        specials[(seed % 8) as usize]
                    } else {
                        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    }
                })
                .collect();
            let rules = [
                CodeRule::Sign,
                CodeRule::Threshold { inv: 2.0, thr: 0.5 },
                CodeRule::Threshold {
                    inv: 0.37,
                    thr: 0.05,
                },
            ];
            for rule in rules {
                let mut want = vec![0i8; len];
                rule.code_slice(&xs, &mut want);
                let mut lanes = ErrLanes::default();
                let n = lanes.add(&xs, &want, 0.5);
                let (we, wn) = lanes.total(&xs[n..], &want[n..], 0.5);
                let mut got = vec![9i8; len];
                let mut lanes = ErrLanes::default();
                let n = lanes.code_add(&xs, &mut got, 0.5, rule);
                let (ge, gn) = lanes.total(&xs[n..], &got[n..], 0.5);
                assert_eq!(got, want, "{rule:?}, {len} weights");
                assert!(same(ge, we) && same(gn, wn), "{rule:?}, {len} weights");
            }
        }
    }

    #[test]
    fn lossless_mode_and_tolerance() {
        let a = 0.125f32;
        let up = f32::from_bits(a.to_bits() + 2);
        let down = f32::from_bits(a.to_bits() - 1);
        // mode is `a` (3 times) even though `up` comes first.
        let w = [up, -a, a, 0.0, -down, a];
        let t = detect_ternary(&w, 2, 3, 1e-6).unwrap();
        assert_eq!(t.granularity, Granularity::Tensor);
        assert_eq!(t.scales, vec![a]);
        assert_eq!(t.codes, vec![1, -1, 1, 0, -1, 1]);
        // zero tolerance: not lossless any more
        assert!(detect_ternary(&w, 2, 3, 0.0).is_none());
        // tie in the mode goes to the smallest magnitude
        let w = [up, up, down, down];
        let t = detect_ternary(&w, 1, 4, 1e-6).unwrap();
        assert_eq!(t.scales, vec![down]);
        // A band narrow enough to pass the quick check whose far end is off tolerance from the
        // mode (`a`, at the near end): 16 ulps is within 2 tol a but not within tol a.
        let far = f32::from_bits(a.to_bits() + 16);
        assert!(f64::from(far - a) > 1e-6 * f64::from(a) && f64::from(far - a) < 2e-6 * 0.125);
        let w = [a, -a, a, 0.0, -a, far];
        assert!(detect_ternary(&w, 2, 3, 1e-6).is_none(), "per tensor");
        assert!(detect_ternary(&w, 1, 6, 1e-6).is_none(), "per channel");
        assert!(detect_ternary(&w, 2, 3, 2e-6).is_some());
    }

    #[test]
    fn lossless_group_only_when_configured() {
        // each half-row has its own a: group(2) lossless, channel not.
        let w = [1.0, -1.0, 0.0, 4.0, 2.0, 0.0, -8.0, 8.0];
        let t = quantize(&w, 2, 4, &cfg(Granularity::Group(2), Method::AbsMean)).unwrap();
        assert!(t.lossless);
        assert_eq!(t.granularity, Granularity::Group(2));
        assert_eq!(t.scales, vec![1.0, 4.0, 2.0, 8.0]);
        let t = quantize(&w, 2, 4, &cfg(Granularity::Channel, Method::AbsMean)).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.granularity, Granularity::Channel);
    }

    #[test]
    fn errors() {
        let c = QuantConfig::default();
        assert_eq!(
            quantize(&[], 0, 3, &c),
            Err(QuantError::EmptyShape { n: 0, k: 3 })
        );
        assert!(matches!(
            quantize(&[1.0; 5], 2, 3, &c),
            Err(QuantError::LengthMismatch { len: 5, .. })
        ));
        assert_eq!(
            quantize(
                &[1.0; 6],
                2,
                3,
                &cfg(Granularity::Group(0), Method::AbsMean)
            ),
            Err(QuantError::ZeroGroupSize)
        );
        for thr in [0.0, -0.5, 1.5, f32::NAN] {
            let c = QuantConfig {
                threshold: thr,
                ..c
            };
            assert!(matches!(
                quantize(&[1.0; 6], 2, 3, &c),
                Err(QuantError::InvalidThreshold(_))
            ));
        }
        let bad_tol = QuantConfig {
            lossless_rel_tol: 0.5,
            ..c
        };
        assert!(matches!(
            quantize(&[1.0; 6], 2, 3, &bad_tol),
            Err(QuantError::InvalidTolerance(_))
        ));
        let w = [0.1, 0.2, 0.3, 0.4, f32::NAN, f32::INFINITY];
        for gran in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(2),
        ] {
            for m in [Method::AbsMean, Method::Twn] {
                match quantize(&w, 2, 3, &cfg(gran, m)) {
                    Err(QuantError::NonFinite {
                        index: 4,
                        row: 1,
                        col: 1,
                        value,
                    }) => assert!(value.is_nan()),
                    other => panic!("{gran} {m}: {other:?}"),
                }
            }
        }
        let msg = quantize(&w, 2, 3, &c).unwrap_err().to_string();
        assert!(msg.contains("element 4"), "{msg}");
    }

    #[test]
    fn rel_error_zero_weight() {
        let t = Ternary {
            n: 1,
            k: 2,
            codes: vec![1, 0],
            granularity: Granularity::Tensor,
            scales: vec![1.0],
            lossless: false,
        };
        assert_eq!(rel_error(&[0.0, 0.0], &t), f64::INFINITY);
        assert_eq!(rel_error(&[1.0, 0.0], &t), 0.0);
        assert!((rel_error(&[2.0, 0.0], &t) - 0.5).abs() < 1e-12);
    }
}
