//! Blocked 4- and 8-bit quantization of the vocabulary tables (the embedding and the LM head):
//! pure math, no ONNX types.
//!
//! Each row (one token's vector, length K) is cut into blocks of `block_size` values; the
//! last block is padded with zeros when K is not a whole number of blocks. A block's scale
//! comes from its value of largest magnitude `m` (with its sign): `d = -m / 2^(bits-1)`, so
//! `m` itself is exactly `-2^(bits-1) * d`, the most negative code, and every other value
//! rounds (half away from zero) to `round(x / d)` clamped to `[-2^(bits-1), 2^(bits-1) - 1]`.
//! This uses all 16 (256) levels, where `max|x| / 7` would use 15; it is llama.cpp's Q4_0
//! rule. The scale may be negative. An all-zero block has scale 0 and every code 0.
//!
//! Codes are stored offset by `2^(bits-1)` (8 or 128: ONNX Runtime's default zero point for
//! `MatMulNBits` and `GatherBlockQuantized`, so no zero-point tensor is needed), two per byte
//! for 4 bits, low nibble first; one per byte for 8 bits. The packed layout is row-major
//! `[rows][blocks][block_size * bits / 8]`: `MatMulNBits`'s `B` for an `[N, K]` weight and
//! `GatherBlockQuantized`'s `data` for a `[V, H]` table are the same bytes.

use rayon::prelude::*;

/// Bits per code of a vocabulary table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TableBits {
    #[serde(rename = "int4")]
    Int4,
    #[serde(rename = "int8")]
    Int8,
}

impl TableBits {
    pub fn bits(self) -> u32 {
        match self {
            TableBits::Int4 => 4,
            TableBits::Int8 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TableBits::Int4 => "int4",
            TableBits::Int8 => "int8",
        }
    }

    /// The stored code of the value 0: ONNX Runtime's default zero point.
    pub fn zero_point(self) -> u8 {
        1 << (self.bits() - 1)
    }
}

/// A quantized table: packed codes and one scale per block.
#[derive(Debug, Clone)]
pub struct BlockTable {
    pub rows: usize,
    pub k: usize,
    pub bits: TableBits,
    pub block_size: usize,
    /// `[rows][blocks][block_size * bits / 8]`.
    pub packed: Vec<u8>,
    /// `[rows][blocks]`.
    pub scales: Vec<f32>,
    /// `|W - dequantized| / |W|` (Frobenius), 0 for an all-zero table.
    pub rel_error: f64,
}

impl BlockTable {
    pub fn blocks(&self) -> usize {
        blocks(self.k, self.block_size)
    }

    /// Bytes of one row's packed blocks.
    pub fn row_bytes(&self) -> usize {
        self.blocks() * blob_bytes(self.block_size, self.bits)
    }

    /// The dequantized value of row `r`, column `c` (for tests and references).
    pub fn value(&self, r: usize, c: usize) -> f32 {
        let blob = blob_bytes(self.block_size, self.bits);
        let (b, i) = (c / self.block_size, c % self.block_size);
        let at = r * self.row_bytes() + b * blob;
        let code = match self.bits {
            TableBits::Int4 => (self.packed[at + i / 2] >> (4 * (i % 2))) & 0x0f,
            TableBits::Int8 => self.packed[at + i],
        };
        let q = code as i32 - self.bits.zero_point() as i32;
        q as f32 * self.scales[r * self.blocks() + b]
    }
}

/// Number of blocks of `block_size` covering `k` values.
pub fn blocks(k: usize, block_size: usize) -> usize {
    k.div_ceil(block_size)
}

/// Bytes of one packed block.
pub fn blob_bytes(block_size: usize, bits: TableBits) -> usize {
    block_size * bits.bits() as usize / 8
}

/// Quantizes `rows` rows of `k` values; `row(r, out)` writes row `r` into `out` (length `k`).
/// Rows are taken `band_rows` at a time (each band's rows in parallel) and `done` is called
/// with each band's row range once it is quantized, so a caller reading from a memory-mapped
/// file can release what was read. The result does not depend on the thread count or the band
/// size. `block_size` must be a power of two of at least 16 (checked by the caller).
pub fn quantize_rows(
    rows: usize,
    k: usize,
    bits: TableBits,
    block_size: usize,
    band_rows: usize,
    row: impl Fn(usize, &mut [f32]) + Sync,
    mut done: impl FnMut(std::ops::Range<usize>),
) -> BlockTable {
    let nb = blocks(k, block_size);
    let blob = blob_bytes(block_size, bits);
    let row_bytes = nb * blob;
    let mut packed = vec![0u8; rows * row_bytes];
    let mut scales = vec![0f32; rows * nb];
    // Rows per task: enough work to amortise the scratch row. Per-task sums are added in row
    // order, so the error does not depend on the threads or the bands either.
    let per_task = (1usize << 16).div_ceil(k.max(1)).max(1);
    let band_rows = band_rows.max(1).div_ceil(per_task) * per_task;
    let mut sums: Vec<(f64, f64)> = Vec::new();
    let mut first = 0;
    while first < rows {
        let end = (first + band_rows).min(rows);
        let p = &mut packed[first * row_bytes..end * row_bytes];
        let s = &mut scales[first * nb..end * nb];
        let band: Vec<(f64, f64)> = p
            .par_chunks_mut(row_bytes.max(1) * per_task)
            .zip(s.par_chunks_mut(nb.max(1) * per_task))
            .enumerate()
            .map(|(t, (p, s))| {
                let mut buf = vec![0f32; nb * block_size];
                let (mut err, mut norm) = (0f64, 0f64);
                let from = first + t * per_task;
                for i in 0..s.len() / nb.max(1) {
                    buf.iter_mut().for_each(|v| *v = 0.0);
                    row(from + i, &mut buf[..k]);
                    for b in 0..nb {
                        let x = &buf[b * block_size..(b + 1) * block_size];
                        let at = i * row_bytes + b * blob;
                        let (d, e, n) = quantize_block(x, bits, &mut p[at..at + blob]);
                        s[i * nb + b] = d;
                        err += e;
                        norm += n;
                    }
                }
                (err, norm)
            })
            .collect();
        sums.extend(band);
        done(first..end);
        first = end;
    }
    let (err, norm) = sums.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    BlockTable {
        rows,
        k,
        bits,
        block_size,
        packed,
        scales,
        rel_error: if norm > 0.0 { (err / norm).sqrt() } else { 0.0 },
    }
}

/// One block: writes its packed codes to `out` and returns its scale, the squared error and
/// the squared norm of `x`.
fn quantize_block(x: &[f32], bits: TableBits, out: &mut [u8]) -> (f32, f64, f64) {
    let half = (1i32 << (bits.bits() - 1)) as f32;
    let m = x
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = -m / half;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let zp = bits.zero_point() as i32;
    let (mut err, mut norm) = (0f64, 0f64);
    let mut code = |v: f32| -> u8 {
        let q = (v * inv).round().clamp(-half, half - 1.0);
        let e = (v - q * d) as f64;
        err += e * e;
        norm += (v as f64) * (v as f64);
        (q as i32 + zp) as u8
    };
    match bits {
        TableBits::Int4 => {
            for (o, pair) in out.iter_mut().zip(x.chunks_exact(2)) {
                *o = code(pair[0]) | (code(pair[1]) << 4);
            }
        }
        TableBits::Int8 => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = code(v);
            }
        }
    }
    (d, err, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize, k: usize, bits: TableBits, bs: usize) -> (Vec<f32>, BlockTable) {
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0)
            .collect();
        let mut bands = Vec::new();
        let t = quantize_rows(
            rows,
            k,
            bits,
            bs,
            rows / 3 + 1,
            |r, out| out.copy_from_slice(&w[r * k..(r + 1) * k]),
            |r| bands.push(r),
        );
        assert_eq!(bands.first().map(|r| r.start), Some(0));
        assert_eq!(bands.last().map(|r| r.end), Some(rows));
        (w, t)
    }

    #[test]
    fn largest_magnitude_is_exact_and_errors_within_half_a_step() {
        for bits in [TableBits::Int4, TableBits::Int8] {
            let (w, t) = table(5, 80, bits, 32);
            assert_eq!(t.packed.len(), 5 * 3 * blob_bytes(32, bits));
            for r in 0..5 {
                for b in 0..3 {
                    let blk: Vec<f32> = (b * 32..((b + 1) * 32).min(80))
                        .map(|c| w[r * 80 + c])
                        .collect();
                    let m = blk
                        .iter()
                        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let at = blk.iter().position(|&v| v == m).unwrap();
                    assert_eq!(t.value(r, b * 32 + at), m);
                    let d = t.scales[r * 3 + b].abs();
                    for (i, &v) in blk.iter().enumerate() {
                        let q = t.value(r, b * 32 + i);
                        // Values of the other sign than m may clip by up to one step.
                        let bound = if v.signum() == m.signum() { 0.5 } else { 1.0 };
                        assert!((q - v).abs() <= bound * d * 1.0001, "{v} -> {q}, step {d}");
                    }
                }
                // Padding stores the zero point.
                let last = r * t.row_bytes() + 2 * blob_bytes(32, bits);
                let zp = bits.zero_point();
                let pad = match bits {
                    TableBits::Int4 => zp | zp << 4,
                    TableBits::Int8 => zp,
                };
                let pad_from = last + (80 - 64) * bits.bits() as usize / 8;
                assert!(t.packed[pad_from..last + blob_bytes(32, bits)]
                    .iter()
                    .all(|&b| b == pad));
            }
            assert!(t.rel_error > 0.0 && t.rel_error < 0.2, "{}", t.rel_error);
        }
    }

    #[test]
    fn zero_block_and_thread_independence() {
        let t = quantize_rows(
            3,
            32,
            TableBits::Int4,
            32,
            1,
            |_, out| out.fill(0.0),
            |_| {},
        );
        assert!(t.scales.iter().all(|&s| s == 0.0));
        assert!(t.packed.iter().all(|&b| b == 0x88));
        assert_eq!(t.rel_error, 0.0);
        let (_, a) = table(300, 64, TableBits::Int4, 16);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (_, b) = pool.install(|| table(300, 64, TableBits::Int4, 16));
        assert_eq!(a.packed, b.packed);
        assert_eq!(a.scales, b.scales);
        assert_eq!(a.rel_error.to_bits(), b.rel_error.to_bits());
    }
}
