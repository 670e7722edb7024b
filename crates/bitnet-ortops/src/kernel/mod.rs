//! The integer dot products of packed ternary rows with int8 activations.
//!
//! Every path computes, for each weight row `r` and token `t`, the exact `i32`
//! `sum_k code(r, k) * a(t, k)` over the padded row, where `code = t + 1` is the stored 2-bit
//! code (see [`crate::layout`]); the op subtracts the token's code sum afterwards. Integer sums
//! do not depend on the order of addition, so every path is bit-identical to [`reference`]
//! (the property test in `tests/kernels.rs` checks it). Overflow is impossible: a row of
//! `Kp` codes of at most 3 against activations of magnitude at most 128 sums to less than
//! `384 Kp`, and the op refuses `K` above [`crate::op::MAX_K`].

use crate::layout::{BLOCK, BLOCK_BYTES};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// A kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable scalar code, the definition the others are tested against.
    Reference,
    /// x86-64 AVX2 (`_mm256_maddubs_epi16` on unsigned codes and signed activations).
    Avx2,
}

impl Path {
    /// The fastest path this CPU runs.
    pub fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Path::Avx2;
        }
        Path::Reference
    }

    /// Every path this CPU runs (the tests compare them all).
    pub fn available() -> Vec<Path> {
        let mut v = vec![Path::Reference];
        if Path::detect() == Path::Avx2 {
            v.push(Path::Avx2);
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Reference => "reference",
            Path::Avx2 => "avx2",
        }
    }
}

/// `out[r * m + t] = sum_k code(row r, k) * acts[t * kp + k]` for the rows of `w` (each
/// `kp / 4` bytes) and the `m` tokens of `acts` (each `kp` codes, zero past `K`).
///
/// Panics (caught at the library's boundary) when the lengths disagree; the op checks them
/// before calling.
pub fn dots(path: Path, w: &[u8], kp: usize, acts: &[i8], m: usize, out: &mut [i32]) {
    assert!(
        kp > 0 && kp.is_multiple_of(BLOCK),
        "padded K {kp} is not whole blocks"
    );
    let rb = kp / 4;
    assert!(w.len().is_multiple_of(rb), "weights are not whole rows");
    let rows = w.len() / rb;
    assert_eq!(acts.len(), m * kp, "activations are not m rows of kp");
    assert_eq!(out.len(), rows * m, "output is not rows x m");
    match path {
        Path::Reference => reference(w, kp, acts, m, out),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => {
            assert!(
                std::arch::is_x86_feature_detected!("avx2"),
                "AVX2 path on a CPU without AVX2"
            );
            // SAFETY: AVX2 is present (checked above) and the lengths satisfy `avx2::dots`'
            // contract (asserted above: whole blocks, whole rows, m rows of activations, rows x m
            // outputs).
            unsafe { avx2::dots(w, kp, acts, m, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Path::Avx2 => panic!("AVX2 path on a CPU without AVX2"),
    }
}

/// The definition: scalar loops in the layout's own order.
fn reference(w: &[u8], kp: usize, acts: &[i8], m: usize, out: &mut [i32]) {
    let rb = kp / 4;
    for (r, row) in w.chunks_exact(rb).enumerate() {
        for t in 0..m {
            let a = &acts[t * kp..(t + 1) * kp];
            let mut acc = 0i32;
            for (blk, ab) in row.chunks_exact(BLOCK_BYTES).zip(a.chunks_exact(BLOCK)) {
                for (j, &byte) in blk.iter().enumerate() {
                    for i in 0..4 {
                        let code = ((byte >> (2 * i)) & 3) as i32;
                        acc += code * ab[BLOCK_BYTES * i + j] as i32;
                    }
                }
            }
            out[r * m + t] = acc;
        }
    }
}
