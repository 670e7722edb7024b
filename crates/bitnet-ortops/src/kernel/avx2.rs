//! The AVX2 path: `_mm256_maddubs_epi16` multiplies 32 unsigned 2-bit codes by 32 signed int8
//! activations and adds neighbouring pairs into 16 `i16` lanes (as llama.cpp's TQ2_0 and
//! bitnet.cpp's I2_S dot products do); `_mm256_madd_epi16` with ones widens to `i32`.
//!
//! Overflow bounds: one `maddubs` lane is at most `2 * 3 * 128 = 768` in magnitude (codes are
//! at most 3, activations at least -128), so it never saturates, and 16 of them sum to at most
//! 12288 < 32767: the `i16` accumulators are widened every 4 blocks (16 `maddubs`) at most.
//!
//! One token (decode, `M = 1`) is memory-bound work that one stream per thread does not keep
//! fed: the rows are taken in pairs from the two halves of the slice (two independent streams,
//! each prefetched [`PREFETCH`] bytes ahead), sharing each block's activation loads. Measured
//! on the development machine (AMD EPYC Zen 3, AVX2) with `examples/kernel_speed.rs` and a
//! scratch comparison of variants, per CPU second of one thread on 80 MB of rows: one stream
//! 10.5-12.5 GB, two distant streams 14.5-17 GB, two adjacent rows 6.4 GB (slower than one),
//! software prefetch alone +10%. In cache every variant does 16.5-18 GB: the gain is memory
//! parallelism, not arithmetic.
//!
//! The pair path extracts the four 2-bit fields with one shift instead of three: fields 0 and
//! 1 are masked in place (`& 3`, `& 12`), fields 2 and 3 the same after one 16-bit shift by 4,
//! so fields 1 and 3 arrive multiplied by 4. They are summed in their own `i16` accumulator,
//! which is shifted right by 2 before widening: exact, as every term is a multiple of 4, and
//! within range: a lane of it is at most `2 * 12 * 128 = 3072` per `maddubs`, two per block,
//! 4 blocks: 24576 < 32767 (even for code 3).

use std::arch::x86_64::*;

use crate::layout::{BLOCK, BLOCK_BYTES};

/// Blocks accumulated in `i16` before widening (4 `maddubs` per block, see the module docs).
const BLOCKS_PER_WIDEN: usize = 4;
/// Weight rows unpacked together when several tokens share them.
const ROWS: usize = 4;
/// How far ahead (bytes) each decode stream prefetches.
const PREFETCH: usize = 1024;

/// As [`super::dots`].
///
/// # Safety
/// The CPU has AVX2; `kp` is a positive multiple of 128; `w.len()` is a multiple of `kp / 4`;
/// `acts.len() == m * kp`; `out.len() == (w.len() / (kp / 4)) * m`. Every load below is then
/// inside `w`, `acts` or the unpacked buffer (the offsets are stated at each).
#[target_feature(enable = "avx2")]
pub unsafe fn dots(w: &[u8], kp: usize, acts: &[i8], m: usize, out: &mut [i32]) {
    let rb = kp / 4;
    let rows = w.len() / rb;
    if m == 1 {
        // Row i with row i + half: two streams (see the module docs).
        let half = rows.div_ceil(2);
        for i in 0..rows / 2 {
            let (ra, rb2) = (i, i + half);
            let row_a = &w[ra * rb..(ra + 1) * rb];
            let row_b = &w[rb2 * rb..(rb2 + 1) * rb];
            // SAFETY: both rows are `rb` bytes and `acts` is `kp = 4 rb` codes (m = 1).
            let (sa, sb) = unsafe { pair_dot(row_a, row_b, acts) };
            out[ra] = sa;
            out[rb2] = sb;
        }
        if rows % 2 == 1 {
            // The middle row (index half - 1) has no partner.
            let r = half - 1;
            // SAFETY: as above.
            out[r] = unsafe { row_dot(&w[r * rb..(r + 1) * rb], acts) };
        }
        return;
    }
    // Several tokens: unpack a few rows' codes to one byte each, then stream every token's
    // activations past them, so each weight byte is read from memory once per call.
    let mut codes = vec![0u8; ROWS * kp];
    let mut r0 = 0;
    while r0 < rows {
        let nr = ROWS.min(rows - r0);
        for i in 0..nr {
            let row = &w[(r0 + i) * rb..(r0 + i + 1) * rb];
            // SAFETY: `row` is `rb` bytes and the destination `kp = 4 rb` bytes.
            unsafe { unpack(row, &mut codes[i * kp..(i + 1) * kp]) };
        }
        for t in 0..m {
            let a = &acts[t * kp..(t + 1) * kp];
            let mut sums = [0i32; ROWS];
            // SAFETY: `codes` holds `nr <= ROWS` rows of `kp` bytes and `a` is `kp` codes.
            unsafe { multi_dot(&codes, nr, a, &mut sums) };
            for i in 0..nr {
                out[(r0 + i) * m + t] = sums[i];
            }
        }
        r0 += nr;
    }
}

/// One packed row against one token.
///
/// # Safety
/// AVX2; `row.len() * 4 == a.len()`, a multiple of 128.
#[target_feature(enable = "avx2")]
unsafe fn row_dot(row: &[u8], a: &[i8]) -> i32 {
    let nb = row.len() / BLOCK_BYTES;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let (wp, ap) = (row.as_ptr(), a.as_ptr());
    let mut b = 0;
    while b < nb {
        let end = (b + BLOCKS_PER_WIDEN).min(nb);
        let mut acc16 = _mm256_setzero_si256();
        while b < end {
            // SAFETY: b < nb, so bytes 32 b .. 32 b + 32 are inside `row`, and codes
            // 128 b .. 128 b + 128 inside `a` (a.len() = 4 row.len() = 128 nb).
            unsafe {
                let wv = _mm256_loadu_si256(wp.add(b * BLOCK_BYTES) as *const __m256i);
                let base = ap.add(b * BLOCK);
                let a0 = _mm256_loadu_si256(base as *const __m256i);
                let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let a2 = _mm256_loadu_si256(base.add(64) as *const __m256i);
                let a3 = _mm256_loadu_si256(base.add(96) as *const __m256i);
                let c0 = _mm256_and_si256(wv, mask);
                let c1 = _mm256_and_si256(_mm256_srli_epi16(wv, 2), mask);
                let c2 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), mask);
                let c3 = _mm256_and_si256(_mm256_srli_epi16(wv, 6), mask);
                let p01 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(c0, a0), _mm256_maddubs_epi16(c1, a1));
                let p23 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(c2, a2), _mm256_maddubs_epi16(c3, a3));
                acc16 = _mm256_add_epi16(acc16, _mm256_add_epi16(p01, p23));
            }
            b += 1;
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(acc16, ones));
    }
    hsum(acc)
}

/// Two packed rows against one token (decode): see the module docs for the one-shift field
/// extraction, its bounds and why two rows from distant places.
///
/// # Safety
/// AVX2; `ra.len() == rb.len()`, `ra.len() * 4 == a.len()`, a multiple of 128.
#[target_feature(enable = "avx2")]
unsafe fn pair_dot(ra: &[u8], rb: &[u8], a: &[i8]) -> (i32, i32) {
    let nb = ra.len() / BLOCK_BYTES;
    let m3 = _mm256_set1_epi8(3);
    let m12 = _mm256_set1_epi8(12);
    let ones = _mm256_set1_epi16(1);
    let (pa, pb, ap) = (ra.as_ptr(), rb.as_ptr(), a.as_ptr());
    let (mut acc_a, mut acc_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut b = 0;
    while b < nb {
        let end = (b + BLOCKS_PER_WIDEN).min(nb);
        let (mut lo_a, mut hi_a) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (mut lo_b, mut hi_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        while b < end {
            // SAFETY: b < nb, so bytes 32 b .. 32 b + 32 are inside both rows and codes
            // 128 b .. 128 b + 128 inside `a`. A prefetch is a hint that never faults, but its
            // address is still formed with `wrapping_add` so it needs no in-bounds argument.
            unsafe {
                if b % 2 == 0 {
                    let ahead = b * BLOCK_BYTES + PREFETCH;
                    _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(ahead) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(ahead) as *const i8);
                }
                let base = ap.add(b * BLOCK);
                let a0 = _mm256_loadu_si256(base as *const __m256i);
                let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let a2 = _mm256_loadu_si256(base.add(64) as *const __m256i);
                let a3 = _mm256_loadu_si256(base.add(96) as *const __m256i);
                let wa = _mm256_loadu_si256(pa.add(b * BLOCK_BYTES) as *const __m256i);
                let wb = _mm256_loadu_si256(pb.add(b * BLOCK_BYTES) as *const __m256i);
                fields(wa, [a0, a1, a2, a3], m3, m12, &mut lo_a, &mut hi_a);
                fields(wb, [a0, a1, a2, a3], m3, m12, &mut lo_b, &mut hi_b);
            }
            b += 1;
        }
        acc_a = _mm256_add_epi32(acc_a, widen(lo_a, hi_a, ones));
        acc_b = _mm256_add_epi32(acc_b, widen(lo_b, hi_b, ones));
    }
    (hsum(acc_a), hsum(acc_b))
}

/// One block of one row into the pair path's accumulators: `lo` gets fields 0 and 2, `hi`
/// fields 1 and 3 times 4.
#[inline]
#[target_feature(enable = "avx2")]
fn fields(
    wv: __m256i,
    a: [__m256i; 4],
    m3: __m256i,
    m12: __m256i,
    lo: &mut __m256i,
    hi: &mut __m256i,
) {
    let w4 = _mm256_srli_epi16(wv, 4);
    let p0 = _mm256_maddubs_epi16(_mm256_and_si256(wv, m3), a[0]);
    let p1 = _mm256_maddubs_epi16(_mm256_and_si256(wv, m12), a[1]);
    let p2 = _mm256_maddubs_epi16(_mm256_and_si256(w4, m3), a[2]);
    let p3 = _mm256_maddubs_epi16(_mm256_and_si256(w4, m12), a[3]);
    *lo = _mm256_add_epi16(*lo, _mm256_add_epi16(p0, p2));
    *hi = _mm256_add_epi16(*hi, _mm256_add_epi16(p1, p3));
}

/// `lo + hi / 4` widened to `i32` lanes (exact: `hi` holds multiples of 4).
#[inline]
#[target_feature(enable = "avx2")]
fn widen(lo: __m256i, hi: __m256i, ones: __m256i) -> __m256i {
    _mm256_add_epi32(
        _mm256_madd_epi16(lo, ones),
        _mm256_madd_epi16(_mm256_srai_epi16(hi, 2), ones),
    )
}

/// Unpacks a packed row to one code per byte, in `k` order.
///
/// # Safety
/// AVX2; `dst.len() == 4 * row.len()`, `row.len()` a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn unpack(row: &[u8], dst: &mut [u8]) {
    let mask = _mm256_set1_epi8(3);
    let (wp, dp) = (row.as_ptr(), dst.as_mut_ptr());
    for b in 0..row.len() / BLOCK_BYTES {
        // SAFETY: bytes 32 b .. 32 b + 32 of `row` and 128 b .. 128 b + 128 of `dst` exist.
        unsafe {
            let wv = _mm256_loadu_si256(wp.add(b * BLOCK_BYTES) as *const __m256i);
            let d = dp.add(b * BLOCK);
            for (i, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                let c = _mm256_and_si256(_mm256_srl_epi16(wv, _mm_cvtsi32_si128(shift)), mask);
                _mm256_storeu_si256(d.add(32 * i) as *mut __m256i, c);
            }
        }
    }
}

/// `nr` unpacked rows (each `a.len()` bytes, one after another in `codes`) against one token.
///
/// # Safety
/// AVX2; `1 <= nr <= ROWS`; `codes.len() >= nr * a.len()`; `a.len()` a multiple of 128.
#[target_feature(enable = "avx2")]
unsafe fn multi_dot(codes: &[u8], nr: usize, a: &[i8], sums: &mut [i32; ROWS]) {
    let kp = a.len();
    let chunks = kp / 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); ROWS];
    let (cp, ap) = (codes.as_ptr(), a.as_ptr());
    let mut c = 0;
    while c < chunks {
        // 16 chunks of 32 = 4 blocks: the same widening bound as `row_dot`.
        let end = (c + 4 * BLOCKS_PER_WIDEN).min(chunks);
        let mut acc16 = [_mm256_setzero_si256(); ROWS];
        while c < end {
            // SAFETY: c < chunks, so 32 c .. 32 c + 32 is inside `a` and inside each of the
            // `nr` rows of `codes` (row i starts at i kp).
            unsafe {
                let av = _mm256_loadu_si256(ap.add(32 * c) as *const __m256i);
                for (i, acc) in acc16.iter_mut().enumerate().take(nr) {
                    let wv = _mm256_loadu_si256(cp.add(i * kp + 32 * c) as *const __m256i);
                    *acc = _mm256_add_epi16(*acc, _mm256_maddubs_epi16(wv, av));
                }
            }
            c += 1;
        }
        for i in 0..nr {
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(acc16[i], ones));
        }
    }
    for i in 0..nr {
        sums[i] = hsum(acc[i]);
    }
}

#[target_feature(enable = "avx2")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}
