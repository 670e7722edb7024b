//! The weight layout the kernels read: 2 bits per ternary weight, 128 weights per 32-byte
//! block, rows of `N` output features one after another.
//!
//! A row of `K` weights is padded to `Kp = ceil(K / 128) * 128` with zeros. Block `b` of a row
//! is the bytes `32 b .. 32 b + 32`; bits `2 i .. 2 i + 1` of byte `j` hold weight
//! `128 b + 32 i + j` as the unsigned code `t + 1` (0, 1 or 2 for -1, 0, +1). So one 32-byte
//! load, shifted right by `2 i` and masked with 3, gives 32 consecutive weights' codes in byte
//! order, ready for `_mm256_maddubs_epi16` against 32 consecutive int8 activations (the same
//! arrangement as llama.cpp's TQ2_0 blocks, without their per-block scale: BitNet has one
//! scale per tensor). The dot product of codes with activations is `sum((t + 1) a)`; the kernel
//! subtracts `sum(a)` once per token.
//!
//! Code 3 is never written; a kernel reading it computes weight +2, the same in every path, so
//! a damaged tensor gives wrong numbers but no undefined behaviour.

/// Weights per block.
pub const BLOCK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = BLOCK / 4;

/// `K` rounded up to whole blocks.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(BLOCK) * BLOCK
}

/// Bytes of one packed row of `k` weights.
pub fn row_bytes(k: usize) -> usize {
    padded_k(k) / 4
}

/// Errors of [`pack`].
#[derive(Debug, PartialEq, Eq)]
pub enum PackError {
    /// `codes.len()` is not `n * k`.
    Length { expected: usize, found: usize },
    /// A code outside -1..=1, at this flat index.
    NotTernary { index: usize, value: i8 },
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackError::Length { expected, found } => {
                write!(f, "{found} codes where [N, K] holds {expected}")
            }
            PackError::NotTernary { index, value } => {
                write!(f, "code {value} at index {index} is not ternary")
            }
        }
    }
}

impl std::error::Error for PackError {}

/// Packs `[n][k]` ternary codes (row-major, one row per output feature) into the layout.
pub fn pack(codes: &[i8], n: usize, k: usize) -> Result<Vec<u8>, PackError> {
    let expected = n.checked_mul(k).ok_or(PackError::Length {
        expected: usize::MAX,
        found: codes.len(),
    })?;
    if codes.len() != expected {
        return Err(PackError::Length {
            expected,
            found: codes.len(),
        });
    }
    let rb = row_bytes(k);
    // Padding weights are 0 (code 1 in every 2-bit field: 0b01010101).
    let mut out = vec![0x55u8; n * rb];
    for (row, (src, dst)) in codes.chunks(k.max(1)).zip(out.chunks_mut(rb)).enumerate() {
        if k == 0 {
            break;
        }
        for (kk, &t) in src.iter().enumerate() {
            if !(-1..=1).contains(&t) {
                return Err(PackError::NotTernary {
                    index: row * k + kk,
                    value: t,
                });
            }
            let (byte, shift) = position(kk);
            let code = (t + 1) as u8;
            dst[byte] = (dst[byte] & !(3 << shift)) | (code << shift);
        }
    }
    Ok(out)
}

/// The byte of a row and the bit shift that hold weight `k` of that row.
pub fn position(k: usize) -> (usize, u32) {
    let (b, r) = (k / BLOCK, k % BLOCK);
    (
        b * BLOCK_BYTES + r % BLOCK_BYTES,
        2 * (r / BLOCK_BYTES) as u32,
    )
}

/// The ternary weight `k` of a packed row (code 3 reads as +2, see the module docs).
pub fn weight(row: &[u8], k: usize) -> i32 {
    let (byte, shift) = position(k);
    ((row[byte] >> shift) & 3) as i32 - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let (n, k) = (3, 130);
        let codes: Vec<i8> = (0..n * k).map(|i| (i % 3) as i8 - 1).collect();
        let p = pack(&codes, n, k).unwrap();
        assert_eq!(p.len(), n * 64);
        for r in 0..n {
            let row = &p[r * 64..(r + 1) * 64];
            for kk in 0..256 {
                let want = if kk < k { codes[r * k + kk] as i32 } else { 0 };
                assert_eq!(weight(row, kk), want, "row {r} k {kk}");
            }
        }
        // Weight 32 of a block is the low bits of byte 0's second field.
        assert_eq!(position(32), (0, 2));
        assert_eq!(position(129), (33, 0));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            pack(&[0, 2], 1, 2),
            Err(PackError::NotTernary { index: 1, value: 2 })
        );
        assert_eq!(
            pack(&[0], 1, 2),
            Err(PackError::Length {
                expected: 2,
                found: 1
            })
        );
    }
}
