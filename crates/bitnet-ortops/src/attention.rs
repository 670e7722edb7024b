//! Grouped-query attention with rotary embeddings over a key/value cache, the computation of
//! ONNX Runtime's CPU `com.microsoft::GroupQueryAttention` as `build` writes it (packed q/k/v,
//! rotary inside the node, past and present caches in one buffer), free of ONNX Runtime types.
//! The op's input checks and buffers are in [`crate::ffi`]; `build --kernel bitnet` writes it
//! for packed q/k/v (docs/kernel.md).
//!
//! Why: ONNX Runtime 1.32's CPU kernel multiplies one query head at a time by the cached keys,
//! and the probabilities by the cached values, with general matrix code (Eigen's, SSE in the
//! shipped wheel). At 2B-4T's shape it reads the cache at 8-15 GB/s and takes 38 ms of a decode
//! step at 2048 positions over 30 layers (`bench/attention_context.py`). Here each cached key
//! and value row is read once for all the query heads that share it.
//!
//! Shapes (`B` batch, `S` new positions, `H` query heads, `G` key/value heads, `D` head size,
//! `L` the cache buffer's length):
//! - `qkv`: `[B, S, (H + 2G) * D]`, per position the `H` query heads, then `G` keys, then `G`
//!   values, each `D` floats;
//! - `seqlens_k`: `[B]`, each sequence's total length minus one (`total_b = seqlens_k[b] + 1`);
//! - `total`: the longest total length (ONNX Runtime's `total_sequence_length`);
//! - `cos`, `sin`: `[P, R]`, `R <= D / 2`, rotary over the first `2R` dims of each head;
//! - the caches: `[B, G, L, D]`, rows `0..past_b` holding the sequence's past.
//!
//! Semantics, as ONNX Runtime's kernel defines them:
//! - A *first prompt* is `S == total`: each sequence's past is 0, positions `s < total_b` get
//!   rotary position `s`, the padding positions after them position 1. Otherwise (`S == 1`, or
//!   `S > 1` with `B == 1`, a later prompt) `past_b = total_b - S` and position `s` gets
//!   rotary position `past_b + s`.
//! - The rotated keys and the values of the `S` new positions are written to cache rows
//!   `past_b .. past_b + S`.
//! - Row `s` of sequence `b` attends over cache rows `0 ..= past_b + s` (causal): scores
//!   `scale * q . k`, softmax, the probability-weighted sum of the value rows. Query head `h`
//!   reads key/value head `h / (H / G)`.
//! - Output: `[B, S, H * D]`.
//!
//! Rotary, over `i < R` with `c = cos[p, i]`, `n = sin[p, i]`: non-interleaved pairs
//! `(x[i], x[i + R])` become `(x[i] c - x[i + R] n, x[i + R] c + x[i] n)`; interleaved pairs
//! `(x[2i], x[2i + 1])` become `(x[2i] c - x[2i + 1] n, x[2i + 1] c + x[2i] n)`. Dims from `2R`
//! on are copied.
//!
//! Float order, shared by every path so that they are bit-identical (a test checks it):
//! - a dot product over `D` (a multiple of 8) has 8 lanes, lane `j` summing dims `8c + j` with
//!   a fused multiply-add chunk after chunk from 0, then
//!   `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`; the score is that times `scale`;
//! - the softmax subtracts the largest score, takes [`exp`] of each difference, sums them in 8
//!   lanes by position modulo 8 (in position order within a lane, then the same tree), and
//!   divides each by the sum;
//! - each output dim sums `p_t * v_t[d]` over `t` in order with fused multiply-adds from 0.
//!
//! ONNX Runtime's kernel sums in other orders and has its own exponential, so the two agree to
//! float rounding, not bit for bit.

use crate::kernel::Path;
use std::fmt;

/// Why the computation refused its inputs.
#[derive(Debug, PartialEq, Eq)]
pub struct AttentionError(pub String);

impl fmt::Display for AttentionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bitnet.onnx GroupQueryAttention: {}", self.0)
    }
}

impl std::error::Error for AttentionError {}

fn err<T>(msg: impl Into<String>) -> Result<T, AttentionError> {
    Err(AttentionError(msg.into()))
}

/// The shapes and attributes of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    /// Batch `B`.
    pub batch: usize,
    /// New positions `S`.
    pub seq: usize,
    /// Query heads `H`.
    pub heads: usize,
    /// Key/value heads `G` (divides `H`).
    pub kv_heads: usize,
    /// Head size `D` (a multiple of 8).
    pub head: usize,
    /// Cache buffer length `L`.
    pub cache: usize,
    /// Rotary half-width `R` (`cos`/`sin` columns; 0: no rotary).
    pub rotary: usize,
    /// Rows of `cos`/`sin`.
    pub rotary_rows: usize,
    /// Pairs `(2i, 2i + 1)` instead of `(i, i + R)`.
    pub interleaved: bool,
    /// Factor of the scores.
    pub scale: f32,
}

/// Where each sequence's new positions go: `past` cache rows before them, and whether the call
/// is a first prompt (rotary positions from 0, padding at 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Cache rows before the new positions, per sequence.
    pub past: Vec<usize>,
    /// Valid positions of a first prompt per sequence (`total_b`); `S` otherwise.
    pub valid: Vec<usize>,
    /// `S == total`.
    pub first_prompt: bool,
}

impl Dims {
    /// Checks the attributes and the sizes among themselves.
    pub fn check(&self) -> Result<(), AttentionError> {
        if self.batch == 0 || self.seq == 0 {
            return err(format!(
                "empty query: batch {} and sequence {}",
                self.batch, self.seq
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return err(format!(
                "num_heads {} is not a multiple of kv_num_heads {}",
                self.heads, self.kv_heads
            ));
        }
        if self.head == 0 || !self.head.is_multiple_of(8) {
            return err(format!(
                "head size {} is not a positive multiple of 8",
                self.head
            ));
        }
        if 2 * self.rotary > self.head {
            return err(format!(
                "rotary tables have {} columns, more than half the head size {}",
                self.rotary, self.head
            ));
        }
        if !self.scale.is_finite() {
            return err(format!("scale {} is not finite", self.scale));
        }
        Ok(())
    }

    /// Floats per position of `qkv`.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head
    }

    /// Where the new positions go, from `seqlens_k` and `total`, as ONNX Runtime's kernel reads
    /// them; refuses what would read or write outside the buffers.
    pub fn plan(&self, seqlens_k: &[i32], total: i32) -> Result<Plan, AttentionError> {
        self.check()?;
        if seqlens_k.len() != self.batch {
            return err(format!(
                "seqlens_k has {} values for batch {}",
                seqlens_k.len(),
                self.batch
            ));
        }
        if total < 1 {
            return err(format!("total_sequence_length {total} is below 1"));
        }
        let total = total as usize;
        let first_prompt = self.seq == total;
        if !first_prompt && self.seq > 1 && self.batch != 1 {
            return err(format!(
                "{} new positions after a past need batch 1, not {}",
                self.seq, self.batch
            ));
        }
        let mut past = Vec::with_capacity(self.batch);
        let mut valid = Vec::with_capacity(self.batch);
        for (b, &k) in seqlens_k.iter().enumerate() {
            if k < 0 || k as usize >= total {
                return err(format!("seqlens_k[{b}] = {k} is outside 0..{total}"));
            }
            let total_b = k as usize + 1;
            let (p, v) = if first_prompt {
                (0, total_b)
            } else if total_b < self.seq {
                return err(format!(
                    "seqlens_k[{b}] = {k}: fewer positions than the {} new ones",
                    self.seq
                ));
            } else {
                (total_b - self.seq, self.seq)
            };
            if p + self.seq > self.cache {
                return err(format!(
                    "sequence {b} needs cache rows up to {}, the buffer has {}",
                    p + self.seq,
                    self.cache
                ));
            }
            let last_pos = if first_prompt {
                self.seq.max(2) - 1
            } else {
                p + self.seq - 1
            };
            if self.rotary > 0 && last_pos >= self.rotary_rows {
                return err(format!(
                    "sequence {b} needs rotary position {last_pos}, the tables have {} rows",
                    self.rotary_rows
                ));
            }
            past.push(p);
            valid.push(v);
        }
        Ok(Plan {
            past,
            valid,
            first_prompt,
        })
    }

    fn position(&self, plan: &Plan, b: usize, s: usize) -> usize {
        if plan.first_prompt {
            if s < plan.valid[b] {
                s
            } else {
                1
            }
        } else {
            plan.past[b] + s
        }
    }
}

/// Rotates one head (`x`, `D` floats) at rotary position `p` into `out`.
fn rotate(d: &Dims, cos: &[f32], sin: &[f32], p: usize, x: &[f32], out: &mut [f32]) {
    let r = d.rotary;
    out.copy_from_slice(x);
    if r == 0 {
        return;
    }
    let (c, n) = (&cos[p * r..(p + 1) * r], &sin[p * r..(p + 1) * r]);
    for i in 0..r {
        let (a, b) = if d.interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + r)
        };
        out[a] = x[a] * c[i] - x[b] * n[i];
        out[b] = x[b] * c[i] + x[a] * n[i];
    }
}

/// `exp(x)` for the softmax, one definition for every path: `x` clamped to
/// `[-87.33, 88.72]` (the softmax only passes `x <= 0`; below -87.33 the true value is under
/// f32's smallest normal and the sum it joins is at least 1), `x = n ln 2 + r` with `n`
/// rounded half to even and `ln 2` in two parts, `e^r` by its Taylor series to `r^7` in
/// Horner form with fused multiply-adds (relative error under 2^-23 for `|r| <= ln 2 / 2`),
/// times `2^n` through the exponent bits.
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.33, 88.72);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_C[7];
    for &c in EXP_C[..7].iter().rev() {
        p = p.mul_add(r, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const EXP_C: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];

/// The fixed reduction of 8 lanes.
fn tree(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for j in 0..8 {
            l[j] = ca[j].mul_add(cb[j], l[j]);
        }
    }
    tree(l)
}

/// Writes the rotated keys and the values of the new positions into the caches
/// (`[B, G, L, D]` each). Run before [`attend`], which reads them.
pub fn store(
    d: &Dims,
    plan: &Plan,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    key_cache: &mut [f32],
    value_cache: &mut [f32],
) {
    let (dh, g) = (d.head, d.kv_heads);
    for b in 0..d.batch {
        for s in 0..d.seq {
            let row = &qkv[(b * d.seq + s) * d.qkv_width()..][..d.qkv_width()];
            let p = d.position(plan, b, s);
            for kv in 0..g {
                let at = ((b * g + kv) * d.cache + plan.past[b] + s) * dh;
                let k = &row[(d.heads + kv) * dh..][..dh];
                rotate(d, cos, sin, p, k, &mut key_cache[at..at + dh]);
                let v = &row[(d.heads + g + kv) * dh..][..dh];
                value_cache[at..at + dh].copy_from_slice(v);
            }
        }
    }
}

/// One task of [`attend`]: sequence `b`, key/value head `kv`, new position `s`: the outputs of
/// the `H / G` query heads that read `kv`, written to `out` (`H / G * D` floats, heads in
/// order). `scratch` holds at least `(H / G) * (D + past + S)` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend_task(
    path: Path,
    d: &Dims,
    plan: &Plan,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    key_cache: &[f32],
    value_cache: &[f32],
    (b, kv, s): (usize, usize, usize),
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (dh, per) = (d.head, d.heads / d.kv_heads);
    let len = plan.past[b] + s + 1;
    let base = (b * d.kv_heads + kv) * d.cache * dh;
    let keys = &key_cache[base..base + len * dh];
    let values = &value_cache[base..base + len * dh];
    scratch.clear();
    scratch.resize(per * (dh + len), 0.0);
    let (q, probs) = scratch.split_at_mut(per * dh);
    let row = &qkv[(b * d.seq + s) * d.qkv_width()..][..d.qkv_width()];
    let p = d.position(plan, b, s);
    for i in 0..per {
        let h = kv * per + i;
        rotate(
            d,
            cos,
            sin,
            p,
            &row[h * dh..(h + 1) * dh],
            &mut q[i * dh..(i + 1) * dh],
        );
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if avx2::usable() => {
            // SAFETY: AVX2 and FMA are present (`usable`); every slice holds the lengths the
            // loops read: `q` per * D, `keys`/`values` len * D, `probs` per * len, `out`
            // per * D, with D a multiple of 8 (`Dims::check`).
            unsafe { avx2::attend(d.scale, dh, per, len, q, keys, values, probs, out) }
        }
        _ => attend_ref(d.scale, dh, per, len, q, keys, values, probs, out),
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_ref(
    scale: f32,
    dh: usize,
    per: usize,
    len: usize,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    probs: &mut [f32],
    out: &mut [f32],
) {
    for i in 0..per {
        let qi = &q[i * dh..(i + 1) * dh];
        let pi = &mut probs[i * len..(i + 1) * len];
        for (t, p) in pi.iter_mut().enumerate() {
            *p = dot_ref(qi, &keys[t * dh..(t + 1) * dh]) * scale;
        }
        softmax_ref(pi);
        let oi = &mut out[i * dh..(i + 1) * dh];
        oi.fill(0.0);
        for (t, &p) in pi.iter().enumerate() {
            for (o, &v) in oi.iter_mut().zip(&values[t * dh..(t + 1) * dh]) {
                *o = p.mul_add(v, *o);
            }
        }
    }
}

fn softmax_ref(p: &mut [f32]) {
    let m = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut l = [0f32; 8];
    for (t, x) in p.iter_mut().enumerate() {
        *x = exp(*x - m);
        l[t % 8] += *x;
    }
    let sum = tree(l);
    for x in p.iter_mut() {
        *x /= sum;
    }
}

/// The whole call on one thread: [`store`], then every task of [`attend_task`]. `out` is
/// `[B, S, H * D]`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    path: Path,
    d: &Dims,
    plan: &Plan,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    key_cache: &mut [f32],
    value_cache: &mut [f32],
    out: &mut [f32],
) {
    store(d, plan, qkv, cos, sin, key_cache, value_cache);
    let (dh, per) = (d.head, d.heads / d.kv_heads);
    let mut scratch = Vec::new();
    for b in 0..d.batch {
        for s in 0..d.seq {
            for kv in 0..d.kv_heads {
                let at = ((b * d.seq + s) * d.heads + kv * per) * dh;
                attend_task(
                    path,
                    d,
                    plan,
                    qkv,
                    cos,
                    sin,
                    key_cache,
                    value_cache,
                    (b, kv, s),
                    &mut out[at..at + per * dh],
                    &mut scratch,
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{EXP_C, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;

    pub fn usable() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// The reference's tree over the 8 lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tree(v: __m256) -> f32 {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        super::tree(l)
    }

    /// [`super::exp`] on 8 lanes, the same operations.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.33)),
            _mm256_set1_ps(88.72),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_C[7]);
        for &c in EXP_C[..7].iter().rev() {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    /// The reference's `attend_ref`: each key row is loaded once per chunk for up to 4 query
    /// heads at a time, each value row once per chunk of 8 output dims for up to 4 heads.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(
        scale: f32,
        dh: usize,
        per: usize,
        len: usize,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        probs: &mut [f32],
        out: &mut [f32],
    ) {
        debug_assert!(dh.is_multiple_of(8) && q.len() >= per * dh && probs.len() >= per * len);
        debug_assert!(keys.len() >= len * dh && values.len() >= len * dh && out.len() >= per * dh);
        let (qp, kp, vp, pp, op) = (
            q.as_ptr(),
            keys.as_ptr(),
            values.as_ptr(),
            probs.as_mut_ptr(),
            out.as_mut_ptr(),
        );
        let chunks = dh / 8;
        // Scores: heads in groups of up to 4 (4 accumulators plus the key chunk stay in registers).
        let mut h0 = 0;
        while h0 < per {
            let hn = (per - h0).min(4);
            for t in 0..len {
                let k = kp.add(t * dh);
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in 0..chunks {
                    let kc = _mm256_loadu_ps(k.add(c * 8));
                    for (i, a) in acc.iter_mut().enumerate().take(hn) {
                        *a =
                            _mm256_fmadd_ps(_mm256_loadu_ps(qp.add((h0 + i) * dh + c * 8)), kc, *a);
                    }
                }
                for (i, a) in acc.iter().enumerate().take(hn) {
                    *pp.add((h0 + i) * len + t) = tree(*a) * scale;
                }
            }
            h0 += hn;
        }
        // Softmax per head.
        for i in 0..per {
            let p = pp.add(i * len);
            let mut m = f32::NEG_INFINITY;
            for t in 0..len {
                m = m.max(*p.add(t));
            }
            let mv = _mm256_set1_ps(m);
            let mut sum = _mm256_setzero_ps();
            let mut t = 0;
            while t + 8 <= len {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(t)), mv));
                _mm256_storeu_ps(p.add(t), e);
                sum = _mm256_add_ps(sum, e);
                t += 8;
            }
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), sum);
            while t < len {
                let e = super::exp(*p.add(t) - m);
                *p.add(t) = e;
                l[t % 8] += e;
                t += 1;
            }
            let total = super::tree(l);
            let tv = _mm256_set1_ps(total);
            let mut t = 0;
            while t + 8 <= len {
                _mm256_storeu_ps(p.add(t), _mm256_div_ps(_mm256_loadu_ps(p.add(t)), tv));
                t += 8;
            }
            while t < len {
                *p.add(t) /= total;
                t += 1;
            }
        }
        // Values: rows in blocks of VALUE_BLOCK (in L1 through the passes); per chunk of 8
        // dims, up to 4 heads' accumulators, loaded from `out` at a block's start and stored at
        // its end, so each output dim still sums its rows in order from 0.
        for i in 0..per * dh {
            *op.add(i) = 0.0;
        }
        let mut t0 = 0;
        while t0 < len {
            let tn = (len - t0).min(VALUE_BLOCK);
            for c in 0..chunks {
                let mut h0 = 0;
                while h0 < per {
                    let hn = (per - h0).min(4);
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for (i, a) in acc.iter_mut().enumerate().take(hn) {
                        *a = _mm256_loadu_ps(op.add((h0 + i) * dh + c * 8));
                    }
                    for t in t0..t0 + tn {
                        let vc = _mm256_loadu_ps(vp.add(t * dh + c * 8));
                        for (i, a) in acc.iter_mut().enumerate().take(hn) {
                            *a = _mm256_fmadd_ps(
                                _mm256_set1_ps(*pp.add((h0 + i) * len + t)),
                                vc,
                                *a,
                            );
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(hn) {
                        _mm256_storeu_ps(op.add((h0 + i) * dh + c * 8), *a);
                    }
                    h0 += hn;
                }
            }
            t0 += tn;
        }
    }

    /// Value rows per block of the value pass (32 rows of 128 floats: 16 KiB).
    const VALUE_BLOCK: usize = 32;
}
