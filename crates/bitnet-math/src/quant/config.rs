//! The quantizer's types: granularity, method, configuration and its validation, errors, the
//! ternary result, and counting its codes (with an SSE2 lane).

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::min_rows;

/// Lower clamp of every absmean scale, as BitNet does (`mean.clamp(min=1e-5)`); also the scale
/// of an all-zero group.
pub const SCALE_EPS: f32 = 1e-5;

/// Largest accepted `lossless_rel_tol`. Beyond 1% a "lossless" conversion would not be one.
pub const MAX_LOSSLESS_REL_TOL: f32 = 1e-2;

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
    /// A group length along the input that lossless detection also tries, after per-tensor,
    /// per-channel and the configured `Group(G)` (when it differs from it and is shorter than
    /// the channel): a weight already ternary with one scale per this many inputs (Ternary
    /// Bonsai's float weights, one scale per 128) is then recovered exactly, whatever
    /// `granularity` a quantized weight would get. `None`: only the configured granularity.
    #[serde(default)]
    pub lossless_group: Option<usize>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            granularity: Granularity::Channel,
            method: Method::AbsMean,
            threshold: 0.5,
            lossless_rel_tol: 1e-6,
            lossless_group: None,
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
        if self.lossless_group == Some(0) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
