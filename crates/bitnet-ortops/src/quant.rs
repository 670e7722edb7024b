//! BitNet's per-token activation quantization, computed as `build`'s stock graph computes it
//! in standard ONNX ops, one float operation for one float operation:
//!
//! ```text
//! m = max(ReduceMax(|x|), 1e-5)        one value per token (the last axis)
//! s = 127 / m                          float32 division
//! q = clip(round(x * s), -128, 127)    float32 product, rounded half to even (ONNX Round)
//! ```
//!
//! Every value of a token whose `|x|` reaches `m` gives `|x * s| <= 127` up to one rounding, so
//! the codes are within -127..=127 in practice; the clip is kept because the graph has it.
//! A token with a NaN or an infinite value has no meaningful codes (the stock graph's scale is
//! NaN or 0 there); [`quantize_row`] reports it and the op writes NaN for that token's outputs.

/// Codes of one token written to `q` (which may be longer than `x`: the rest is zeroed, the
/// padding of the weight layout). Returns the token's scale `s` and the sum of its codes, or
/// `None` when `x` holds a NaN or an infinity. Runs [`quantize_row_scalar`]'s operations with
/// AVX2 where the CPU has it (the same IEEE operations element by element: bit-identical, a
/// property test in `tests/kernels.rs` checks it).
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
    assert!(q.len() >= x.len(), "code buffer shorter than the row");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; `q` holds at least `x.len()` codes (asserted above).
        return unsafe { avx2::quantize_row(x, q) };
    }
    quantize_row_scalar(x, q)
}

/// The definition, one element at a time.
pub fn quantize_row_scalar(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
    assert!(q.len() >= x.len(), "code buffer shorter than the row");
    let mut m = 0f32;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        m = m.max(v.abs());
    }
    q[x.len()..].fill(0);
    if !finite {
        q[..x.len()].fill(0);
        return None;
    }
    let s = 127f32 / m.max(1e-5);
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(x) {
        let c = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        *d = c;
        sum += c as i32;
    }
    Some((s, sum))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// 32 values at a time: `|x|` by clearing the sign bit, finiteness as `|x| <= f32::MAX`
    /// (false for NaN and infinity), the largest `|x|` (a maximum is exact in any order), then
    /// `x * s` rounded half to even (`_mm256_round_ps`, the scalar `round_ties_even`), clamped
    /// and converted (exact: integers), narrowed to bytes in order; the rest of the row, and the
    /// padding, as the scalar code does.
    ///
    /// # Safety
    /// AVX2; `q.len() >= x.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
        let n = x.len();
        let body = n / 32 * 32;
        let xp = x.as_ptr();
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let big = _mm256_set1_ps(f32::MAX);
        let mut mx = _mm256_setzero_ps();
        let mut fin = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut i = 0;
        while i < body {
            for j in 0..4 {
                // SAFETY: i + 8 j + 8 <= body <= n.
                let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(xp.add(i + 8 * j)) }, abs_mask);
                fin = _mm256_and_ps(fin, _mm256_cmp_ps::<_CMP_LE_OQ>(a, big));
                mx = _mm256_max_ps(mx, a);
            }
            i += 32;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats into an 8-float array.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
        let mut m = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let mut finite = _mm256_movemask_ps(fin) == 0xff;
        for &v in &x[body..] {
            finite &= v.is_finite();
            m = m.max(v.abs());
        }
        q[n..].fill(0);
        if !finite {
            q[..n].fill(0);
            return None;
        }
        let s = 127f32 / m.max(1e-5);
        let sv = _mm256_set1_ps(s);
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        // packs interleave the 128-bit halves; this puts the 8 dwords back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut sum = _mm256_setzero_si256();
        let qp = q.as_mut_ptr();
        let mut i = 0;
        while i < body {
            let mut c = [_mm256_setzero_si256(); 4];
            for (j, cj) in c.iter_mut().enumerate() {
                // SAFETY: i + 8 j + 8 <= body <= n.
                let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(xp.add(i + 8 * j)) }, sv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                *cj = _mm256_cvtps_epi32(r);
                sum = _mm256_add_epi32(sum, *cj);
            }
            let ab = _mm256_packs_epi32(c[0], c[1]);
            let cd = _mm256_packs_epi32(c[2], c[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
            // SAFETY: i + 32 <= body <= n <= q.len().
            unsafe { _mm256_storeu_si256(qp.add(i) as *mut __m256i, bytes) };
            i += 32;
        }
        let mut sums = [0i32; 8];
        // SAFETY: 8 ints into an 8-int array.
        unsafe { _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, sum) };
        let mut total: i32 = sums.iter().sum();
        for (d, &v) in q[body..n].iter_mut().zip(&x[body..]) {
            let c = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
            *d = c;
            total += c as i32;
        }
        Some((s, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula() {
        let x = [0.5f32, -1.0, 0.25, 0.0];
        let mut q = [9i8; 8];
        let (s, sum) = quantize_row(&x, &mut q).unwrap();
        assert_eq!(s, 127.0);
        // 0.25 * 127 = 31.75 -> 32; 0.5 * 127 = 63.5 -> 64 (half to even), the rest zeroed.
        assert_eq!(q, [64, -127, 32, 0, 0, 0, 0, 0]);
        assert_eq!(sum, 64 - 127 + 32);
        // All-zero rows use the 1e-5 floor.
        let (s, sum) = quantize_row(&[0.0; 3], &mut q).unwrap();
        assert_eq!((s, sum), (127.0 / 1e-5, 0));
        assert!(quantize_row(&[1.0, f32::NAN], &mut q).is_none());
        assert!(quantize_row(&[1.0, f32::INFINITY], &mut q).is_none());
    }
}
