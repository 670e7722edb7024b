//! The AVX2 + FMA path of [`crate::q8`]: four weight rows at a time, one from each quarter of
//! the task's rows (four distant memory streams that share each chunk's activation load; four
//! adjacent rows, read as interleaved streams 2.5 KB apart, were slower than ONNX Runtime's
//! `MatMulNBits` on 2B-4T's head, where four distant rows take 0.71 of its time: see
//! docs/benchmarks.md), per 32-code chunk `w - 128` as a signed byte (`xor
//! 0x80`), its magnitude as an unsigned byte (`abs`, which gives 128 for -128) and the
//! activation's sign flipped where `w` is negative (`sign`; activations are within -127..=127,
//! so the flip never overflows); `_mm256_maddubs_epi16` of the two is `w * a` in pairs, at most
//! `2 * 128 * 127 = 32512` (no saturation), and `_mm256_madd_epi16` with ones gives the 8 lanes
//! of 4 consecutive codes the reference sums. Lanes are summed over the block in `i32`
//! (exact), converted once per block and accumulated with one fused multiply-add by the
//! block's `S * sa`, then reduced in [`crate::q8::hsum`]'s order: bit-identical to
//! [`crate::q8::reference_row`].

use std::arch::x86_64::*;

/// Rows per pass.
const ROWS: usize = 4;
/// How far ahead (bytes) each row stream prefetches, one hint per 64-byte line.
const PREFETCH: usize = 1024;

/// One token: [`crate::q8::rows_dot`] for `m = 1` (`out[r]` for row `r`).
///
/// # Safety
/// The CPU has AVX2 and FMA; `bsz` is a positive multiple of 32; `codes.len() == sa.len() *
/// bsz`; `w.len() == out.len() * codes.len()`; `s.len() == out.len() * sa.len()`. Every load
/// below is then inside `w`, `s`, `codes` or `sa` (the offsets are stated at each).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows(w: &[u8], s: &[f32], codes: &[i8], sa: &[f32], bsz: usize, out: &mut [f32]) {
    let n = out.len();
    let quarter = n / ROWS;
    for r in 0..quarter {
        let rows: [usize; ROWS] = std::array::from_fn(|i| r + i * quarter);
        // SAFETY: every row index is below ROWS * quarter <= n, each row `kp` codes and `nb`
        // scales.
        let v = unsafe { group(w, s, rows, codes, sa, bsz) };
        for (&i, v) in rows.iter().zip(v) {
            out[i] = v;
        }
    }
    for (r, o) in out.iter_mut().enumerate().skip(ROWS * quarter) {
        // SAFETY: row r < n exists.
        *o = unsafe { group(w, s, [r], codes, sa, bsz) }[0];
    }
}

/// The rows `rows` against one token.
///
/// # Safety
/// As [`rows`], and every row of `rows` exists in `w` and `s`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn group<const R: usize>(
    w: &[u8],
    s: &[f32],
    rows: [usize; R],
    codes: &[i8],
    sa: &[f32],
    bsz: usize,
) -> [f32; R] {
    let kp = codes.len();
    let nb = sa.len();
    let chunks = bsz / 32;
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let wp: [*const u8; R] = std::array::from_fn(|i| w[rows[i] * kp..].as_ptr());
    let sp: [*const f32; R] = std::array::from_fn(|i| s[rows[i] * nb..].as_ptr());
    let ap = codes.as_ptr();
    for b in 0..nb {
        let mut isum = [_mm256_setzero_si256(); R];
        for c in 0..chunks {
            let off = b * bsz + 32 * c;
            // SAFETY: off + 32 <= nb * bsz = kp, so the 32 codes at `off` are inside `codes`
            // and inside each row (row i spans kp bytes from wp[i]). A prefetch never faults;
            // its address is formed with `wrapping_add`.
            unsafe {
                let a = _mm256_loadu_si256(ap.add(off) as *const __m256i);
                for i in 0..R {
                    if off.is_multiple_of(64) {
                        _mm_prefetch::<_MM_HINT_T0>(wp[i].wrapping_add(off + PREFETCH) as *const i8);
                    }
                    let q = _mm256_loadu_si256(wp[i].add(off) as *const __m256i);
                    let sw = _mm256_xor_si256(q, flip);
                    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(sw), _mm256_sign_epi8(a, sw));
                    isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(p, ones));
                }
            }
        }
        // SAFETY: b < nb, inside `sa` and each row's `nb` scales.
        let sab = unsafe { *sa.get_unchecked(b) };
        for i in 0..R {
            // SAFETY: as above.
            let d = unsafe { *sp[i].add(b) } * sab;
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum[i]), acc[i]);
        }
    }
    std::array::from_fn(|i| hsum(acc[i]))
}

/// [`crate::q8::hsum`]'s order: lanes `i + 4` onto `i`, then `(0 + 2) + (1 + 3)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s)); // [s0 + s2, s1 + s3, ..]
    let u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1)); // (s0 + s2) + (s1 + s3)
    _mm_cvtss_f32(u)
}

/// Rows of `w` against several tokens: `vals[r * T + i]` for row `r` and token `i` of `codes`
/// / `sa` (each `nb` blocks of `bsz` codes and `nb` scales). Tiles of 2 adjacent rows and 2
/// tokens (the rows are in cache after the first tokens), then the remainders one by one;
/// every value is computed in [`crate::q8::reference_row`]'s order.
///
/// # Safety
/// AVX2 and FMA; `bsz` a positive multiple of 32; every `codes[i].len() == nb * bsz` and
/// `sa[i].len() == nb`, with `nb = s.len() / rows`; `w.len() == rows * nb * bsz`;
/// `vals.len() == rows * codes.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(
    w: &[u8],
    s: &[f32],
    codes: &[&[i8]],
    sa: &[&[f32]],
    bsz: usize,
    vals: &mut [f32],
) {
    let t = codes.len();
    if t == 0 {
        return;
    }
    let rows = vals.len() / t;
    let (r2, t2) = (rows / 2 * 2, t / 2 * 2);
    for r in (0..rows).step_by(2) {
        let nr = if r < r2 { 2 } else { 1 };
        for i in (0..t).step_by(2) {
            let nt = if i < t2 { 2 } else { 1 };
            // SAFETY: rows r .. r + nr and tokens i .. i + nt exist (the contract).
            unsafe {
                match (nr, nt) {
                    (2, 2) => {
                        let v = tile_of::<2, 2>(
                            w,
                            s,
                            [r, r + 1],
                            [codes[i], codes[i + 1]],
                            [sa[i], sa[i + 1]],
                            bsz,
                        );
                        vals[r * t + i] = v[0][0];
                        vals[r * t + i + 1] = v[0][1];
                        vals[(r + 1) * t + i] = v[1][0];
                        vals[(r + 1) * t + i + 1] = v[1][1];
                    }
                    (2, _) => {
                        let v = tile_of::<2, 1>(w, s, [r, r + 1], [codes[i]], [sa[i]], bsz);
                        vals[r * t + i] = v[0][0];
                        vals[(r + 1) * t + i] = v[1][0];
                    }
                    (_, 2) => {
                        let v = tile_of::<1, 2>(
                            w,
                            s,
                            [r],
                            [codes[i], codes[i + 1]],
                            [sa[i], sa[i + 1]],
                            bsz,
                        );
                        vals[r * t + i] = v[0][0];
                        vals[r * t + i + 1] = v[0][1];
                    }
                    _ => {
                        vals[r * t + i] =
                            tile_of::<1, 1>(w, s, [r], [codes[i]], [sa[i]], bsz)[0][0];
                    }
                }
            }
        }
    }
}

/// `R` rows against `T` tokens: each weight chunk unpacked (`xor`, `abs`) once for the `T`
/// tokens, each activation chunk loaded once for the `R` rows.
///
/// # Safety
/// As [`tile`], for the rows and tokens given.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // `b` indexes rows, tokens' scales and code offsets alike
unsafe fn tile_of<const R: usize, const T: usize>(
    w: &[u8],
    s: &[f32],
    rows: [usize; R],
    codes: [&[i8]; T],
    sa: [&[f32]; T],
    bsz: usize,
) -> [[f32; T]; R] {
    let kp = codes[0].len();
    let nb = sa[0].len();
    let chunks = bsz / 32;
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let wp: [*const u8; R] = std::array::from_fn(|i| w[rows[i] * kp..].as_ptr());
    let sp: [*const f32; R] = std::array::from_fn(|i| s[rows[i] * nb..].as_ptr());
    for b in 0..nb {
        let mut isum = [[_mm256_setzero_si256(); T]; R];
        for c in 0..chunks {
            let off = b * bsz + 32 * c;
            // SAFETY: off + 32 <= nb * bsz = kp: inside every row and every token's codes.
            unsafe {
                let mut sw = [_mm256_setzero_si256(); R];
                let mut aw = [_mm256_setzero_si256(); R];
                for i in 0..R {
                    sw[i] = _mm256_xor_si256(
                        _mm256_loadu_si256(wp[i].add(off) as *const __m256i),
                        flip,
                    );
                    aw[i] = _mm256_abs_epi8(sw[i]);
                }
                for j in 0..T {
                    let a = _mm256_loadu_si256(codes[j].as_ptr().add(off) as *const __m256i);
                    for i in 0..R {
                        let p = _mm256_maddubs_epi16(aw[i], _mm256_sign_epi8(a, sw[i]));
                        isum[i][j] = _mm256_add_epi32(isum[i][j], _mm256_madd_epi16(p, ones));
                    }
                }
            }
        }
        for i in 0..R {
            // SAFETY: b < nb, inside each row's scales.
            let sw = unsafe { *sp[i].add(b) };
            for j in 0..T {
                let d = sw * sa[j][b];
                acc[i][j] =
                    _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum[i][j]), acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            out[i][j] = hsum(acc[i][j]);
        }
    }
    out
}
