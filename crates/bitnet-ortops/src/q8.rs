//! The `Q8Linear` op: a linear layer on 8-bit block-quantized weights (the LM head `build`
//! writes), computed with int8 activations and integer dot products, free of ONNX Runtime
//! types.
//!
//! Inputs: `X` float32 `[..., K]`; `W` uint8 `[N, nb, B]`, `nb = ceil(K / B)` blocks of `B`
//! codes per row, each code offset by 128 (ONNX Runtime's default 8-bit zero point: the value
//! is `(code - 128) * scale`, exactly the table `build` shares between `GatherBlockQuantized`
//! and the head's `MatMulNBits`; codes past `K` in the last block are ignored: the activations
//! there are 0); `S` float32 `[N, nb]`, one scale per block. Attributes: `K`, `N`,
//! `block_size` (`B`, a multiple of 32 from 32 to 1024). Output: `Y` float32 `[..., N]`.
//!
//! Per token, the activations are quantized per block of `B` as ONNX Runtime's `MatMulNBits`
//! does at `accuracy_level` 4 (its `QuantizeARow_CompInt8`): `m = max |x|` over the block,
//! scale `sa = m / 127`, codes `round_half_even(x * (127 / m))` (0 when `m = 0`). Then, for
//! each output row `n`,
//!
//! ```text
//! y[n] = sum over blocks b of (S[n, b] * sa[b]) * sum_j (W[n, b, j] - 128) * q[b, j]
//! ```
//!
//! The integer sums are exact; the float sum follows one fixed order, which every path
//! computes the same way, so the paths are bit-identical (the property test in
//! `tests/q8.rs` checks it): the 32-code chunks of a block split into 8 lanes of 4
//! consecutive codes; lane `l` of the block's integer sum is exact in float32 (at most
//! `32 * 4 * 128 * 127 < 2^24`); `acc[l] = fma(S[n, b] * sa[b], lane_sum[l], acc[l])` block
//! after block; and `y = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))`.
//! That is `MatMulNBits`' arithmetic up to the order of its float sums, so a head computed here
//! differs from the stock one by float rounding only.
//!
//! A token holding a NaN or an infinity gets NaN outputs.

use crate::kernel::Path;
use crate::op::Parallel;
use std::fmt;

/// Largest accepted block (`B`): a lane's integer sum over a block stays below 2^24.
pub const MAX_BLOCK: usize = 1024;
/// Largest accepted `K` (a sanity bound on the attribute; the arithmetic has no limit in K).
pub const MAX_K: usize = 1 << 20;
/// Output rows per parallel task with one token (decode) and with several.
const DECODE_ROWS_PER_TASK: usize = 512;
const ROWS_PER_TASK: usize = 64;

/// Why the op refused its attributes or inputs.
#[derive(Debug, PartialEq, Eq)]
pub struct Q8Error(pub String);

impl fmt::Display for Q8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bitnet.onnx Q8Linear: {}", self.0)
    }
}

impl std::error::Error for Q8Error {}

fn err<T>(msg: impl Into<String>) -> Result<T, Q8Error> {
    Err(Q8Error(msg.into()))
}

/// One op instance, its attributes checked.
#[derive(Clone, Debug)]
pub struct Q8Linear {
    pub k: usize,
    pub n: usize,
    pub block: usize,
}

/// One token's activations: codes (zero past `K`, whole blocks) and a scale per block, or
/// `None` when the token is not finite.
pub struct Quantized {
    pub codes: Vec<i8>,
    pub scales: Option<Vec<f32>>,
}

/// Quantizes one token per block of `block` (see the module docs); `x.len() <= codes.len()`.
pub fn quantize(x: &[f32], block: usize) -> Quantized {
    let nb = x.len().div_ceil(block);
    let mut codes = vec![0i8; nb * block];
    if x.iter().any(|v| !v.is_finite()) {
        return Quantized {
            codes,
            scales: None,
        };
    }
    let mut scales = Vec::with_capacity(nb);
    for (xb, qb) in x.chunks(block).zip(codes.chunks_exact_mut(block)) {
        let m = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        scales.push(m / 127.0);
        let inv = if m != 0.0 { 127.0 / m } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    Quantized {
        codes,
        scales: Some(scales),
    }
}

impl Q8Linear {
    pub fn new(k: i64, n: i64, block: i64) -> Result<Self, Q8Error> {
        if k < 1 || k as u64 > MAX_K as u64 {
            return err(format!("attribute K = {k} is outside 1..={MAX_K}"));
        }
        if n < 1 || n > u32::MAX as i64 {
            return err(format!("attribute N = {n} is not a positive row count"));
        }
        if block < 32 || block > MAX_BLOCK as i64 || block % 32 != 0 {
            return err(format!(
                "attribute block_size = {block} is not a multiple of 32 from 32 to {MAX_BLOCK}"
            ));
        }
        Ok(Q8Linear {
            k: k as usize,
            n: n as usize,
            block: block as usize,
        })
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// Checks the inputs' shapes; returns the number of tokens `M` and the output shape.
    pub fn check(&self, x: &[i64], w: &[i64], s: &[i64]) -> Result<(usize, Vec<i64>), Q8Error> {
        let Some((&last, lead)) = x.split_last() else {
            return err("input X is a scalar, expected [..., K]");
        };
        if last != self.k as i64 {
            return err(format!(
                "input X has last dimension {last}, the op was built for K = {}",
                self.k
            ));
        }
        let mut m = 1usize;
        for &d in lead {
            let Ok(d) = usize::try_from(d) else {
                return err(format!("input X has a negative dimension in {x:?}"));
            };
            m = m
                .checked_mul(d)
                .ok_or_else(|| Q8Error(format!("input X's shape {x:?} overflows")))?;
        }
        let (n, nb, b) = (self.n as i64, self.blocks() as i64, self.block as i64);
        if w != [n, nb, b] {
            return err(format!(
                "input W has shape {w:?}, expected [{n}, {nb}, {b}] (N = {n}, K = {} in blocks of {b})",
                self.k
            ));
        }
        if s != [n, nb] {
            return err(format!(
                "input S has shape {s:?}, expected [{n}, {nb}] (one scale per block)"
            ));
        }
        let mut out = lead.to_vec();
        out.push(n);
        Ok((m, out))
    }

    /// Computes `Y` for `m` tokens, its tasks run by `par`. Lengths must match
    /// [`Q8Linear::check`]'s shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        path: Path,
        x: &[f32],
        m: usize,
        w: &[u8],
        s: &[f32],
        y: &mut [f32],
        par: Parallel<'_>,
    ) -> Result<(), Q8Error> {
        let (k, n, nb, bsz) = (self.k, self.n, self.blocks(), self.block);
        let kp = nb * bsz;
        if x.len() != m * k || w.len() != n * kp || s.len() != n * nb || y.len() != m * n {
            return err("internal: buffer lengths do not match the checked shapes");
        }
        if m == 0 {
            return Ok(());
        }
        let tokens: Vec<Quantized> = x.chunks_exact(k).map(|r| quantize(r, bsz)).collect();
        let simd = use_simd(path);
        let per_task = if m == 1 {
            DECODE_ROWS_PER_TASK
        } else {
            ROWS_PER_TASK
        };
        let task = |r0: usize, out: &mut [f32]| {
            let rows = out.len() / m;
            let wt = &w[r0 * kp..(r0 + rows) * kp];
            let st = &s[r0 * nb..(r0 + rows) * nb];
            rows_dot(simd, wt, st, &tokens, bsz, out);
        };
        if !crate::op::row_tasks(n, m, per_task, y, par, &task) {
            return err("internal: a parallel task failed");
        }
        Ok(())
    }
}

/// Whether `path` runs the SIMD rows here (AVX2 and FMA: the float sums use fused
/// multiply-adds, as the reference's `mul_add` does).
fn use_simd(path: Path) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path == Path::Avx2
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = path;
        false
    }
}

/// `out[r * m + t]` for the rows of `w` (scales `s`, `kp / bsz` per row) and the `m` tokens;
/// NaN for a non-finite token. The AVX2 path takes one token 4 distant rows at a time
/// ([`crate::q8_avx2::rows`]) and several 2 rows x 2 tokens at a time, sharing each weight
/// chunk's unpacking and each activation load (the rows are in cache after the first tokens).
///
/// Panics (caught by the op's task guard) when the lengths disagree.
pub fn rows_dot(
    simd: bool,
    w: &[u8],
    s: &[f32],
    tokens: &[Quantized],
    bsz: usize,
    out: &mut [f32],
) {
    let m = tokens.len();
    let rows = out.len() / m.max(1);
    assert_eq!(out.len(), rows * m, "output is not rows x tokens");
    let finite: Vec<usize> = (0..m).filter(|&t| tokens[t].scales.is_some()).collect();
    for t in (0..m).filter(|t| tokens[*t].scales.is_none()) {
        for r in 0..rows {
            out[r * m + t] = f32::NAN;
        }
    }
    let Some(&first) = finite.first() else { return };
    let kp = tokens[first].codes.len();
    let nb = kp / bsz;
    assert!(
        bsz >= 32 && bsz.is_multiple_of(32) && bsz <= MAX_BLOCK && kp == nb * bsz,
        "activation codes are not whole blocks of a valid size"
    );
    assert!(
        finite.iter().all(|&t| tokens[t].codes.len() == kp
            && tokens[t].scales.as_ref().is_some_and(|sa| sa.len() == nb)),
        "tokens of different lengths"
    );
    assert_eq!(w.len(), rows * kp, "weights are not whole rows");
    assert_eq!(s.len(), rows * nb, "scales are not one per block");
    let codes: Vec<&[i8]> = finite.iter().map(|&t| &tokens[t].codes[..]).collect();
    let scales: Vec<&[f32]> = finite
        .iter()
        .filter_map(|&t| tokens[t].scales.as_deref())
        .collect();
    let f = finite.len();
    // Rows x finite tokens; with every token finite that is `out` itself.
    let mut gathered = Vec::new();
    let vals: &mut [f32] = if f == m {
        out
    } else {
        gathered.resize(rows * f, 0f32);
        &mut gathered
    };
    let mut done = false;
    #[cfg(target_arch = "x86_64")]
    if simd {
        assert!(
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
            "AVX2 path on a CPU without AVX2 and FMA"
        );
        // SAFETY: AVX2 and FMA are present (checked above); every token has `nb` blocks of
        // `bsz` codes and `nb` scales, `w` and `s` hold `rows` rows of them, `vals` is rows x
        // tokens (asserted above).
        unsafe {
            if f == 1 {
                crate::q8_avx2::rows(w, s, codes[0], scales[0], bsz, vals);
            } else {
                crate::q8_avx2::tile(w, s, &codes, &scales, bsz, vals);
            }
        }
        done = true;
    }
    if !done {
        let _ = simd;
        for r in 0..rows {
            for (i, (c, sa)) in codes.iter().zip(&scales).enumerate() {
                vals[r * f + i] = reference_row(
                    &w[r * kp..(r + 1) * kp],
                    &s[r * nb..(r + 1) * nb],
                    c,
                    sa,
                    bsz,
                );
            }
        }
    }
    if f < m {
        for r in 0..rows {
            for (i, &t) in finite.iter().enumerate() {
                out[r * m + t] = gathered[r * f + i];
            }
        }
    }
}

/// The definition, in the module docs' order.
pub fn reference_row(w: &[u8], s: &[f32], codes: &[i8], sa: &[f32], bsz: usize) -> f32 {
    let mut acc = [0f32; 8];
    for (b, (wb, ab)) in w.chunks_exact(bsz).zip(codes.chunks_exact(bsz)).enumerate() {
        let mut lanes = [0i32; 8];
        for (wc, ac) in wb.chunks_exact(32).zip(ab.chunks_exact(32)) {
            for (j, (&wv, &av)) in wc.iter().zip(ac).enumerate() {
                lanes[j / 4] += (wv as i32 - 128) * av as i32;
            }
        }
        let d = s[b] * sa[b];
        for (a, &l) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(l as f32, *a);
        }
    }
    hsum(acc)
}

/// The fixed order of the final sum (the AVX2 path's `hsum` computes the same).
pub fn hsum(a: [f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_per_block_as_onnx_runtime() {
        let mut x = vec![0f32; 40];
        x[0] = 2.0;
        x[1] = -1.0;
        x[2] = 0.5;
        x[33] = 0.25;
        let q = quantize(&x, 32);
        let sa = q.scales.unwrap();
        assert_eq!(sa, vec![2.0 / 127.0, 0.25 / 127.0]);
        assert_eq!(&q.codes[..3], &[127, -64, 32]); // -63.5 and 31.75 round to even / nearest
        assert_eq!(q.codes[33], 127);
        assert_eq!(q.codes.len(), 64);
        assert!(q.codes[40..].iter().all(|&c| c == 0));
        assert!(quantize(&[1.0, f32::NAN], 32).scales.is_none());
        // An all-zero block has scale 0 and zero codes.
        let z = quantize(&[0.0; 32], 32);
        assert_eq!(z.scales.unwrap(), vec![0.0]);
    }
}
