//! How fast the decode (M = 1) dot products run on one thread when the weights are in cache,
//! against the same multiplies without the 2-bit field extraction: the arithmetic ceiling of
//! `_mm256_maddubs_epi16` on this layout. Not a test: a tool for working on
//! `src/kernel/avx2.rs` (the whole op over 2B-4T's layers is `examples/kernel_speed.rs`).
//!
//! ```text
//! cargo run --release -p bitnet-ortops --example decode_loop -- [K] [BYTES] [REPS]
//! ```
//!
//! `K` (default 2560) is the row length, `BYTES` (default 256 KiB: inside one Zen 3 core's
//! L2) the weights swept per repetition. Rates are bytes of packed weights per second of this
//! thread's CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`), which other processes disturb less than
//! wall time; best of 5 rounds.
//!
//! - `dots`: `kernel::dots` with M = 1 (the path the op runs), checked against the reference;
//! - `ceiling`: per 32 weight bytes of a row, four `maddubs` of the unmasked bytes against the
//!   four activation vectors and four adds, with the same widening: the decode loop minus its
//!   one shift and four masks. Its sums are not the dot products; it only bounds them.

use bitnet_ortops::kernel::{self, Path};
use bitnet_ortops::layout::{self, BLOCK, BLOCK_BYTES};

#[path = "common/cpu_time.rs"]
mod cpu_time;

/// The ceiling loop over every row of `w` (see the module docs), two rows at a time.
///
/// # Safety
/// AVX2; `w.len()` a multiple of `a.len() / 4`, `a.len()` a multiple of 128.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ceiling(w: &[u8], a: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let rb = a.len() / 4;
    let nb = rb / BLOCK_BYTES;
    let ones = _mm256_set1_epi16(1);
    let mut total = _mm256_setzero_si256();
    for pair in w.chunks_exact(2 * rb) {
        let (pa, pb, ap) = (pair.as_ptr(), pair.as_ptr().wrapping_add(rb), a.as_ptr());
        let mut b = 0;
        while b < nb {
            let end = (b + 4).min(nb);
            let (mut sa, mut sb) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            while b < end {
                // SAFETY: b < nb: bytes 32 b .. 32 b + 32 of both rows (the pair is 2 rb
                // bytes) and codes 128 b .. 128 b + 128 of `a` exist. The i16 sums may
                // saturate: this loop's sums are not used as dot products.
                unsafe {
                    let base = ap.add(b * BLOCK);
                    let acts =
                        [0, 32, 64, 96].map(|o| _mm256_loadu_si256(base.add(o) as *const __m256i));
                    let wa = _mm256_loadu_si256(pa.add(b * BLOCK_BYTES) as *const __m256i);
                    let wb = _mm256_loadu_si256(pb.add(b * BLOCK_BYTES) as *const __m256i);
                    for av in acts {
                        sa = _mm256_add_epi16(sa, _mm256_maddubs_epi16(wa, av));
                        sb = _mm256_add_epi16(sb, _mm256_maddubs_epi16(wb, av));
                    }
                }
                b += 1;
            }
            total = _mm256_add_epi32(total, _mm256_madd_epi16(sa, ones));
            total = _mm256_add_epi32(total, _mm256_madd_epi16(sb, ones));
        }
    }
    let mut out = [0i32; 8];
    // SAFETY: 32 bytes into a 32-byte array.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, total) };
    out.iter().fold(0i32, |s, &v| s.wrapping_add(v))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let k = layout::padded_k(args.first().copied().unwrap_or(2560));
    let bytes = args.get(1).copied().unwrap_or(256 * 1024);
    let reps = args.get(2).copied().unwrap_or(2000);
    let rb = k / 4;
    // An even row count, so the ceiling loop's pairs cover every row.
    let rows = (bytes / rb).max(2) / 2 * 2;
    assert!(Path::detect() == Path::Avx2, "this tool needs AVX2");

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Codes 0..=2 in each field, as `pack` writes; activations any int8.
    let w: Vec<u8> = (0..rows * rb)
        .map(|_| {
            let r = rnd();
            ((r % 3) | ((r >> 8) % 3) << 2 | ((r >> 16) % 3) << 4 | ((r >> 24) % 3) << 6) as u8
        })
        .collect();
    let a: Vec<i8> = (0..k).map(|_| rnd() as i8).collect();
    let mut want = vec![0i32; rows];
    kernel::dots(Path::Reference, &w, k, &a, 1, &mut want);
    let mut got = vec![0i32; rows];
    kernel::dots(Path::Avx2, &w, k, &a, 1, &mut got);
    assert_eq!(got, want, "the AVX2 path disagrees with the reference");

    println!(
        "K {k}, {rows} rows, {:.1} KiB of weights, {reps} repetitions, best of 5 rounds",
        (rows * rb) as f64 / 1024.0
    );
    let gb = (rows * rb * reps) as f64 / 1e9;
    let (mut best_dots, mut best_ceiling) = (0f64, 0f64);
    let mut sink = 0i32;
    for _ in 0..5 {
        let t = cpu_time::thread_seconds();
        for _ in 0..reps {
            kernel::dots(Path::Avx2, std::hint::black_box(&w), k, &a, 1, &mut got);
            sink = sink.wrapping_add(got[0]);
        }
        best_dots = best_dots.max(gb / (cpu_time::thread_seconds() - t));
        let t = cpu_time::thread_seconds();
        for _ in 0..reps {
            // SAFETY: AVX2 was checked above; `w` is whole pairs of rows of k / 4 bytes and
            // `a` is k codes, a multiple of 128.
            sink = sink.wrapping_add(unsafe { ceiling(std::hint::black_box(&w), &a) });
        }
        best_ceiling = best_ceiling.max(gb / (cpu_time::thread_seconds() - t));
    }
    std::hint::black_box(sink);
    println!("dots (the decode path): {best_dots:.2} GB per CPU second");
    println!("ceiling (no field extraction): {best_ceiling:.2} GB per CPU second");
}
