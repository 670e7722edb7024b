//! The AVX2 path: `_mm256_maddubs_epi16` multiplies 32 unsigned 2-bit codes by 32 signed int8
//! activations and adds neighbouring pairs into 16 `i16` lanes (as llama.cpp's TQ2_0 and
//! bitnet.cpp's I2_S dot products do); `_mm256_madd_epi16` with ones widens to `i32`.
//!
//! Overflow bounds: one `maddubs` lane is at most `2 * 3 * 128 = 768` in magnitude (codes are
//! at most 3, activations at least -128), so it never saturates, and 16 of them sum to at most
//! 12288 < 32767: the several-token path widens its `i16` accumulators every 4 blocks (16
//! `maddubs`).
//!
//! One token (decode, `M = 1`): the rows are taken [`STREAMS`] at a time, row `i` of each of
//! `STREAMS` equal parts of the slice (independent memory streams, each prefetched
//! [`PREFETCH`] bytes ahead), sharing each block's four activation loads. The four 2-bit fields
//! are extracted with one shift: fields 0 and 1 are masked in place (`& 3`, `& 12`), fields 2
//! and 3 the same after one 16-bit shift by 4, so fields 1 and 3 arrive multiplied by 4. Per 32
//! weight bytes of a row that is 13 vector operations: one shift, four masks, four `maddubs`,
//! four adds. Fields 0 and 2 go to one `i16` accumulator, fields 1 and 3 to another, which is
//! shifted right by 2 before widening (exact: every term is a multiple of 4). Bounds, code 3
//! and activation -128 included: the first gets at most `2 * 768 = 1536` per lane and block and
//! is widened every [`LO_BLOCKS`] = 20 blocks (30720); the second at most `2 * 2 * 12 * 128 =
//! 6144` per block, widened every [`HI_BLOCKS`] = 5 (30720). Both under 32767; the test
//! `extreme_codes_and_activations_match_reference` fails if either period grows by one block.
//!
//! What bounds it, measured on the development machine (AMD EPYC Zen 3, family 25 model 1,
//! about 3.2 GHz, AVX2, no SMT between its 2 vCPUs). A register-only C loop issues
//! `vpmaddubsw` at 2 per cycle, `vpand` at 4, and a mix of `maddubs`, `and` and `add` at about
//! 3.3 operations per cycle. 13 operations per 32 bytes (plus the widening) therefore cost about
//! 4.2 cycles, about 24 GB/s per core at best. `examples/decode_loop.rs` (one thread, 256 KiB of
//! K = 2560 rows in L2, bytes per CPU second, best of 5; three alternated runs on a shared
//! machine) measured:
//!
//! | decode arrangement | GB per CPU second |
//! |---|---|
//! | 2 rows, both accumulators widened every 4 blocks (the previous path) | 19.8-20.2 |
//! | 2 rows, widened every 20 (fields 0, 2) and 5 (fields 1, 3) blocks | 20.2-21.2 |
//! | 3 rows, the same widening (this path) | 21.6-23.2 |
//! | 4 rows, the same widening | 22.7-23.0 |
//! | `ceiling`: 2 rows' `maddubs` and adds, no shift or masks (wrong sums) | 27.5-29.5 |
//!
//! So this layout's arithmetic on `maddubs` caps one core near 23 GB/s: the extraction is 5 of
//! the 13 operations, and no cheaper exact extraction was found (masks without the shift give
//! field 3 as `64 c`, whose `maddubs` pair saturates; `vpsignb` forms miscount code 3 and need
//! a second widening multiply). With 4 rows the 12 accumulators, 4 activation vectors and 2
//! masks exceed the 16 ymm registers (LLVM spills an accumulator and re-broadcasts the masks
//! each block); 3 rows fit. Over the whole op (`examples/kernel_speed.rs`, 2B-4T's 30 layers,
//! two threads) 2, 3 and 4 streams and 1 or 2 KiB of prefetch all measured within the noise of
//! the shared machine (docs/benchmarks.md); 3 is kept for the arithmetic.

use std::arch::x86_64::*;

use crate::layout::{BLOCK, BLOCK_BYTES};

/// Several tokens: blocks of unpacked codes accumulated in `i16` before widening (4 `maddubs`
/// per block, see the module docs).
const BLOCKS_PER_WIDEN: usize = 4;
/// Decode: rows read together, each from its own part of the slice (see the module docs).
const STREAMS: usize = 3;
/// Decode: blocks summed in the fields-1-and-3 accumulator before widening (see the bounds in
/// the module docs; LO_BLOCKS is a multiple of it, so both widen at the same block).
const HI_BLOCKS: usize = 5;
/// Decode: blocks summed in the fields-0-and-2 accumulator before widening.
const LO_BLOCKS: usize = 20;
const _: () = assert!(LO_BLOCKS.is_multiple_of(HI_BLOCKS));
/// Weight rows unpacked together when several tokens share them.
const ROWS: usize = 4;
/// How far ahead (bytes) each decode stream prefetches.
const PREFETCH: usize = 2048;

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
        // Rows i, i + part, i + 2 part, ... together: STREAMS streams (see the module docs).
        let part = rows / STREAMS;
        for i in 0..part {
            let mut rs: [&[u8]; STREAMS] = [&[]; STREAMS];
            for (s, row) in rs.iter_mut().enumerate() {
                let r = s * part + i;
                *row = &w[r * rb..(r + 1) * rb];
            }
            // SAFETY: every row is `rb` bytes and `acts` is `kp = 4 rb` codes (m = 1).
            let sums = unsafe { stream_dot(rs, acts) };
            for (s, sum) in sums.into_iter().enumerate() {
                out[s * part + i] = sum;
            }
        }
        // The last `rows % STREAMS` rows, one at a time.
        for r in STREAMS * part..rows {
            // SAFETY: as above.
            let [s] = unsafe { stream_dot([&w[r * rb..(r + 1) * rb]], acts) };
            out[r] = s;
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

/// `R` packed rows against one token (decode): see the module docs for the one-shift field
/// extraction, its bounds and why rows from distant places.
///
/// # Safety
/// AVX2; every row is `a.len() / 4` bytes, `a.len()` a multiple of 128.
#[target_feature(enable = "avx2")]
unsafe fn stream_dot<const R: usize>(rows: [&[u8]; R], a: &[i8]) -> [i32; R] {
    let nb = a.len() / BLOCK;
    let m3 = _mm256_set1_epi8(3);
    let m12 = _mm256_set1_epi8(12);
    let ones = _mm256_set1_epi16(1);
    let mut p = [std::ptr::null::<u8>(); R];
    for (p, row) in p.iter_mut().zip(rows) {
        *p = row.as_ptr();
    }
    let ap = a.as_ptr();
    let mut acc = [_mm256_setzero_si256(); R];
    // Fields 0 and 2, widened every LO_BLOCKS blocks; fields 1 and 3 (times 4), every
    // HI_BLOCKS blocks.
    let mut lo = [_mm256_setzero_si256(); R];
    let mut lo_blocks = 0;
    let mut b = 0;
    while b < nb {
        let end = (b + HI_BLOCKS).min(nb);
        let mut hi = [_mm256_setzero_si256(); R];
        while b < end {
            // SAFETY: b < nb, so bytes 32 b .. 32 b + 32 are inside every row and codes
            // 128 b .. 128 b + 128 inside `a`. A prefetch is a hint that never faults, but its
            // address is still formed with `wrapping_add` so it needs no in-bounds argument.
            unsafe {
                if b % 2 == 0 {
                    for &pr in &p {
                        let ahead = pr.wrapping_add(b * BLOCK_BYTES + PREFETCH);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    }
                }
                let base = ap.add(b * BLOCK);
                let a0 = _mm256_loadu_si256(base as *const __m256i);
                let a1 = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let a2 = _mm256_loadu_si256(base.add(64) as *const __m256i);
                let a3 = _mm256_loadu_si256(base.add(96) as *const __m256i);
                for r in 0..R {
                    let wv = _mm256_loadu_si256(p[r].add(b * BLOCK_BYTES) as *const __m256i);
                    let w4 = _mm256_srli_epi16(wv, 4);
                    let p0 = _mm256_maddubs_epi16(_mm256_and_si256(wv, m3), a0);
                    let p1 = _mm256_maddubs_epi16(_mm256_and_si256(wv, m12), a1);
                    let p2 = _mm256_maddubs_epi16(_mm256_and_si256(w4, m3), a2);
                    let p3 = _mm256_maddubs_epi16(_mm256_and_si256(w4, m12), a3);
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_add_epi16(p0, p2));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_add_epi16(p1, p3));
                }
            }
            b += 1;
            lo_blocks += 1;
        }
        // `hi` holds multiples of 4: the shift is exact.
        for r in 0..R {
            let h = _mm256_madd_epi16(_mm256_srai_epi16(hi[r], 2), ones);
            acc[r] = _mm256_add_epi32(acc[r], h);
        }
        if lo_blocks == LO_BLOCKS || b == nb {
            for r in 0..R {
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(lo[r], ones));
                lo[r] = _mm256_setzero_si256();
            }
            lo_blocks = 0;
        }
    }
    let mut sums = [0; R];
    for (s, v) in sums.iter_mut().zip(acc) {
        *s = hsum(v);
    }
    sums
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
        // 16 chunks of 32 = 4 blocks: 16 `maddubs` lanes of at most 768, 12288 in all.
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
