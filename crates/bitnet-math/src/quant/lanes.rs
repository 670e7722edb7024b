//! The SIMD and accumulation lanes shared by the quantizers, lossless detection and `kn`:
//! fixed-order four-lane sums of `|w|` and of the error, and the coding rules.

use super::{QuantError, SCALE_EPS};

/// The ternary code of `x` for the reciprocal scale `inv_scale = 1.0 / a`: 0 when
/// `|x| * inv_scale <= threshold`, else `sign(x)`. With threshold 0.5 this equals torch's
/// `(x * inv_scale).round().clamp(-1, 1)` (round half to even).
#[inline]
pub fn ternary_code(x: f32, inv_scale: f32, threshold: f32) -> i8 {
    let keep = x.abs() * inv_scale > threshold;
    let sign = if x.is_sign_negative() { -1 } else { 1 };
    i8::from(keep) * sign
}

/// Sum of `|x|` in `f64` with four fixed lanes (deterministic; NaN/inf propagate).
#[inline]
pub(super) fn sum_abs(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let tail = abs_lanes(&mut acc, xs);
    abs_total(acc, tail)
}

/// Adds `|x|` of every whole chunk of four in `xs` to the four lanes of `acc`; returns the
/// elements left over. [`sum_abs`] is `abs_total` of this from zero lanes, so a channel can be
/// summed a part at a time (parts whose lengths are multiples of four, then the last part) with
/// the same bits.
#[inline]
pub(super) fn abs_lanes<'a>(acc: &mut [f64; 4], xs: &'a [f32]) -> &'a [f32] {
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
pub(super) fn abs_total(acc: [f64; 4], tail: &[f32]) -> f64 {
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &x in tail {
        s += f64::from(x.abs());
    }
    s
}

/// `(sum (x - c * s)^2, sum x^2)` over one group of one scale `s`, in `f64` with four fixed
/// lanes (deterministic, and independent chains the compiler can vectorise).
#[inline]
pub(super) fn sq_err(xs: &[f32], cs: &[i8], s: f32) -> (f64, f64) {
    let mut lanes = ErrLanes::default();
    let n = lanes.add(xs, cs, s);
    lanes.total(&xs[n..], &cs[n..], s)
}

/// `rule.code_slice(xs, cs)` then [`sq_err`]`(xs, cs, s)`, in one pass.
#[inline]
pub(super) fn code_err(xs: &[f32], cs: &mut [i8], s: f32, rule: CodeRule) -> (f64, f64) {
    let mut lanes = ErrLanes::default();
    let n = lanes.code_add(xs, cs, s, rule);
    lanes.total(&xs[n..], &cs[n..], s)
}

/// The four `(err, norm)` lanes of [`sq_err`], so a channel can be measured a part at a time
/// (parts whose lengths are multiples of four, then the last part) with the same bits.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ErrLanes {
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
pub(super) enum CodeRule {
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
    pub(super) fn code_add(&mut self, xs: &[f32], cs: &mut [i8], s: f32, rule: CodeRule) -> usize {
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
    pub(super) fn add(&mut self, xs: &[f32], cs: &[i8], s: f32) -> usize {
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
    pub(super) fn add(&mut self, xs: &[f32], cs: &[i8], s: f32) -> usize {
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
    pub(super) fn total(self, xs: &[f32], cs: &[i8], s: f32) -> (f64, f64) {
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
pub(super) fn clamp_scale(mean: f64) -> f32 {
    (mean as f32).max(SCALE_EPS)
}

pub(super) fn non_finite(w: &[f32], k: usize, row: usize) -> QuantError {
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

pub(super) fn sign_slice(ws: &[f32], cs: &mut [i8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
