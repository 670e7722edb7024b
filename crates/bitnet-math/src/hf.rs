//! transformers' BitNet weight forms and the 2-bit layout `build` writes for them: pure math,
//! no ONNX types (docs/formats.md section 3 has the conventions).
//!
//! * Packed checkpoints (microsoft/bitnet-b1.58-2B-4T): a linear weight of `out` rows and `k`
//!   columns is stored as uint8 `[out / 4, k]`, planar along rows: packed row `r` holds the
//!   original rows `r`, `r + R`, `r + 2R`, `r + 3R` (`R = out / 4`) in bits 0-1, 2-3, 4-5 and
//!   6-7, each as `code + 1` (so -1, 0, +1 are stored 0, 1, 2; 3 is not a code).
//! * Master-weight checkpoints (the `-bf16` form, `AutoBitLinear` online): transformers'
//!   `WeightQuant` ternarises each weight per tensor: `s = 1 / max(mean|W|, 1e-5)`,
//!   `codes = clamp(round(W * s), -1, 1)` (torch rounds half to even), dequantized as
//!   `codes / s`.
//! * The exact-activation layout ([`pack_2bit_reserved`]): ONNX Runtime's `MatMulNBits` with
//!   `accuracy_level` 4 quantizes its input to int8 per block of `block_size` values, each block
//!   with scale `max|a| / 127`. BitNet quantizes per token instead. When the input already holds
//!   BitNet's int8 codes and every block also holds the value 127, each block's scale is exactly
//!   1 and its re-quantization is the identity: the int8 kernels then compute BitNet's integer
//!   dot products exactly. So each block of `block_size` holds `block_size - 1` weights and one
//!   reserved slot whose weight is 0; the graph puts 127 in that slot of the input.

use thiserror::Error;

/// Why a transformers weight could not be read.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum HfError {
    #[error("packed byte {byte:#04x} at row {row}, column {col} holds 3, which is not a ternary code (stored values are code + 1: 0, 1 or 2)")]
    NotACode { byte: u8, row: usize, col: usize },
    #[error("{what} has {actual} elements, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        actual: usize,
        expected: usize,
    },
    #[error("weight value {value} at index {index} is not -1, 0 or 1")]
    NotTernary { value: f32, index: usize },
    #[error("block_size {0} is not a power of two >= 16, as MatMulNBits requires")]
    InvalidBlockSize(usize),
}

/// Codes (`[out][k]`, row-major) of a packed weight `[out / 4, k]`.
pub fn unpack_packed(packed: &[u8], out: usize, k: usize) -> Result<Vec<i8>, HfError> {
    let r = out / 4;
    if !out.is_multiple_of(4) || packed.len() != r * k {
        return Err(HfError::LengthMismatch {
            what: "packed weight",
            actual: packed.len(),
            expected: out.div_ceil(4) * k,
        });
    }
    let mut codes = vec![0i8; out * k];
    for (pr, row) in packed.chunks_exact(k.max(1)).enumerate().take(r) {
        for (c, &byte) in row.iter().enumerate() {
            for i in 0..4 {
                let v = (byte >> (2 * i)) & 3;
                if v == 3 {
                    return Err(HfError::NotACode {
                        byte,
                        row: pr,
                        col: c,
                    });
                }
                codes[(i * r + pr) * k + c] = v as i8 - 1;
            }
        }
    }
    Ok(codes)
}

/// Codes of a weight stored as float codes (an `AutoBitLinear` offline checkpoint that is not
/// packed): every value must be exactly -1, 0 or +1.
pub fn float_codes(w: &[f32]) -> Result<Vec<i8>, HfError> {
    w.iter()
        .enumerate()
        .map(|(index, &value)| {
            if value == 0.0 {
                Ok(0)
            } else if value == 1.0 {
                Ok(1)
            } else if value == -1.0 {
                Ok(-1)
            } else {
                Err(HfError::NotTernary { value, index })
            }
        })
        .collect()
}

/// transformers' `WeightQuant` on one tensor: the codes and the dequantization scale `1 / s`.
/// The mean is summed in f64 (torch sums f32 in another order; the scales agree to an ulp or
/// two, and a weight lands on another code only if `W * s` sits on a rounding boundary).
pub fn weight_quant(w: &[f32]) -> (Vec<i8>, f32) {
    let mean = if w.is_empty() {
        0.0
    } else {
        (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64) as f32
    };
    let s = 1.0f32 / mean.max(1e-5);
    let codes = w
        .iter()
        .map(|&v| (v * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (codes, 1.0 / s)
}

/// Blocks of the exact-activation layout covering `k` weights: `block_size - 1` per block.
pub fn reserved_blocks(k: usize, block_size: usize) -> usize {
    k.div_ceil(block_size - 1).max(1)
}

/// MatMulNBits 2-bit `B` (`[n][blocks][block_size / 4]`) for codes `[n][k]`, each block holding
/// `block_size - 1` codes and a last, reserved slot of weight 0 (see the module docs); the
/// tail of the last block is padded with weight 0 too.
pub fn pack_2bit_reserved(
    codes: &[i8],
    n: usize,
    k: usize,
    block_size: usize,
) -> Result<Vec<u8>, HfError> {
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(HfError::InvalidBlockSize(block_size));
    }
    if codes.len() != n * k {
        return Err(HfError::LengthMismatch {
            what: "ternary codes",
            actual: codes.len(),
            expected: n * k,
        });
    }
    let per = block_size - 1;
    let nb = reserved_blocks(k, block_size);
    let blob = block_size / 4;
    // Code 2 is weight 0 (MatMulNBits' default zero point for 2 bits): 0b10 in every slot.
    let mut out = vec![0xAAu8; n * nb * blob];
    for (row, dst) in codes
        .chunks_exact(k.max(1))
        .zip(out.chunks_exact_mut(nb * blob))
    {
        for (j, &c) in row.iter().enumerate() {
            let (b, i) = (j / per, j % per);
            let at = b * blob + i / 4;
            let shift = 2 * (i % 4);
            dst[at] = (dst[at] & !(3 << shift)) | (((c + 2) as u8) << shift);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_is_planar_along_rows() {
        // out = 8, k = 2: packed row r holds rows r, r + 2, r + 4, r + 6.
        let codes: Vec<i8> = (0..16).map(|i| ((i * 7) % 3) as i8 - 1).collect();
        let mut packed = vec![0u8; 4];
        for row in 0..8 {
            for c in 0..2 {
                let (pr, i) = (row % 2, row / 2);
                packed[pr * 2 + c] |= ((codes[row * 2 + c] + 1) as u8) << (2 * i);
            }
        }
        assert_eq!(unpack_packed(&packed, 8, 2).unwrap(), codes);
    }

    #[test]
    fn unpack_refuses_value_three_and_bad_lengths() {
        assert!(matches!(
            unpack_packed(&[0b1100_0000, 0], 4, 2),
            Err(HfError::NotACode { row: 0, col: 0, .. })
        ));
        assert!(unpack_packed(&[0; 3], 4, 2).is_err());
        assert!(unpack_packed(&[0; 2], 6, 2).is_err());
    }

    #[test]
    fn weight_quant_matches_transformers_rule() {
        let w = [0.3f32, -0.1, 0.0, 0.05, -0.45, 0.2];
        let (codes, scale) = weight_quant(&w);
        let mean = w.iter().map(|v| v.abs()).sum::<f32>() / 6.0;
        assert!((scale - mean).abs() < 1e-7);
        assert_eq!(codes, vec![1, -1, 0, 0, -1, 1]);
        let (zero, s0) = weight_quant(&[0.0; 4]);
        assert_eq!(zero, vec![0; 4]);
        assert!((s0 - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn float_codes_accepts_only_ternary() {
        assert_eq!(
            float_codes(&[1.0, -1.0, 0.0, -0.0]).unwrap(),
            vec![1, -1, 0, 0]
        );
        assert!(matches!(
            float_codes(&[1.0, 0.5]),
            Err(HfError::NotTernary { index: 1, .. })
        ));
    }

    #[test]
    fn reserved_layout_leaves_the_last_slot_of_each_block_zero() {
        let (n, k, bs) = (2, 40, 16);
        let codes: Vec<i8> = (0..n * k).map(|i| (i % 3) as i8 - 1).collect();
        let b = pack_2bit_reserved(&codes, n, k, bs).unwrap();
        let nb = reserved_blocks(k, bs);
        assert_eq!(nb, 3);
        assert_eq!(b.len(), n * nb * bs / 4);
        let code_at = |row: usize, slot: usize| {
            ((b[row * nb * 4 + slot / 4] >> (2 * (slot % 4))) & 3) as i8 - 2
        };
        for row in 0..n {
            for slot in 0..nb * bs {
                let (blk, i) = (slot / bs, slot % bs);
                let want = if i == bs - 1 || blk * 15 + i >= k {
                    0
                } else {
                    codes[row * k + blk * 15 + i]
                };
                assert_eq!(code_at(row, slot), want, "row {row} slot {slot}");
            }
        }
    }
}
