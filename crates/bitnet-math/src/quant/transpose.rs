//! Parallel transposes of row-major matrices, optionally mapping each element, a band of rows
//! at a time.

use rayon::prelude::*;

/// Transposes a row-major `[rows][cols]` matrix into `[cols][rows]`.
///
/// # Panics
/// When `src.len() != rows * cols`.
pub fn transpose<T: Copy + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    transpose_map(src, rows, cols, |x| x)
}

/// [`transpose`] converting each element with `f` on the way (e.g. little-endian bytes to
/// `f32`, so a weight is decoded and transposed in one pass).
///
/// # Panics
/// When `src.len() != rows * cols`.
pub fn transpose_map<S: Copy + Send + Sync, T: Copy + Send + Sync>(
    src: &[S],
    rows: usize,
    cols: usize,
    f: impl Fn(S) -> T + Sync,
) -> Vec<T> {
    transpose_map_rows(src, rows, cols, usize::MAX, f, |_| {})
}

/// [`transpose_map`] reading the source `band` rows at a time (in order, each band in
/// parallel) and calling `done(rows)` once source rows `rows` are no longer needed, so a
/// caller can release them (memory-mapped pages) while the rest is transposed.
///
/// # Panics
/// When `src.len() != rows * cols`.
pub fn transpose_map_rows<S: Copy + Send + Sync, T: Copy + Send + Sync>(
    src: &[S],
    rows: usize,
    cols: usize,
    band: usize,
    f: impl Fn(S) -> T + Sync,
    done: impl FnMut(std::ops::Range<usize>),
) -> Vec<T> {
    let mut out = Vec::new();
    transpose_map_rows_into(src, rows, cols, band, f, done, &mut out);
    out
}

/// [`transpose_map_rows`] writing into `out` (cleared first): a buffer reused across weights
/// keeps its pages, where a fresh allocation of this size costs a page fault and the kernel
/// zeroing a page for every 4 KiB written (a quarter of the CPU time converting large
/// `[K, N]` weights, measured with perf).
///
/// # Panics
/// When `src.len() != rows * cols`.
pub fn transpose_map_rows_into<S: Copy + Send + Sync, T: Copy + Send + Sync>(
    src: &[S],
    rows: usize,
    cols: usize,
    band: usize,
    f: impl Fn(S) -> T + Sync,
    mut done: impl FnMut(std::ops::Range<usize>),
    out: &mut Vec<T>,
) {
    out.clear();
    assert_eq!(
        Some(src.len()),
        rows.checked_mul(cols),
        "transpose: {} elements for shape [{rows}, {cols}]",
        src.len()
    );
    if src.is_empty() {
        return;
    }
    // Each task fills TILE output rows (= source columns). Inside it, BLOCK source rows at a
    // time go through a small stack tile: every source line is read, and every output line
    // written, in one contiguous burst, so power-of-two strides do not thrash cache sets.
    const TILE: usize = 32;
    const BLOCK: usize = 16;
    let band = if band >= rows {
        rows
    } else {
        band.max(1).next_multiple_of(BLOCK)
    };
    let fill = f(src[0]);
    out.resize(src.len(), fill);
    let mut b0 = 0;
    while b0 < rows {
        let b1 = b0.saturating_add(band).min(rows);
        out.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(tile, chunk)| {
                let c0 = tile * TILE;
                let nc = chunk.len() / rows;
                let mut buf = [[fill; TILE]; BLOCK];
                for r0 in (b0..b1).step_by(BLOCK) {
                    let r1 = (r0 + BLOCK).min(b1);
                    if nc == TILE && r1 - r0 == BLOCK {
                        // Whole block: fixed sizes, so the copies are inlined and vectorised.
                        for (i, b) in buf.iter_mut().enumerate() {
                            let row = &src[(r0 + i) * cols + c0..][..TILE];
                            for (d, &x) in b.iter_mut().zip(row) {
                                *d = f(x);
                            }
                        }
                        for j in 0..TILE {
                            let dst = &mut chunk[j * rows + r0..][..BLOCK];
                            for (d, b) in dst.iter_mut().zip(&buf) {
                                *d = b[j];
                            }
                        }
                        continue;
                    }
                    for r in r0..r1 {
                        for j in 0..nc {
                            chunk[j * rows + r] = f(src[r * cols + c0 + j]);
                        }
                    }
                }
            });
        done(b0..b1);
        b0 = b1;
    }
}
