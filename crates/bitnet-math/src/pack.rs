//! Exact on-disk layouts of ternary weights (docs/formats.md section 2).
//!
//! * `com.microsoft::MatMulNBits` (ONNX Runtime): `B` uint8 `[N, ceil(K / bs), bs * bits / 8]`,
//!   codes packed along K inside each block, least significant bits first, stored unsigned as
//!   `q = t + zero_point` with the default zero point (2 for 2 bits, 8 for 4 bits, 128 for 8
//!   bits); K is padded to whole blocks with `q = zero_point` (weight 0). `scales` `[N, ceil(K/bs)]`.
//! * ONNX `INT2` (data type 26) / `INT4` (22) `raw_data`: two's complement, first element in the
//!   least significant bits, last byte zero-padded.
//! * `DequantizeLinear` scale layouts for a weight in ONNX order (`[K, N]` for `MatMul`,
//!   `[N, K]` for `Gemm transB = 1`): per-tensor scalar, per-axis 1-D along N, or blocked (opset
//!   21+): scale shaped like the weight with the K axis divided by the block size (rounded up),
//!   `axis` = the K axis, `block_size` = G.

use rayon::prelude::*;
use thiserror::Error;

use crate::quant::{transpose, Granularity, Ternary};

/// Why a layout could not be produced or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PackError {
    #[error("block_size {0} is not a power of two >= 16, as MatMulNBits requires")]
    InvalidBlockSize(usize),
    #[error("MatMulNBits bits = {0} is not supported here (2, 4 or 8)")]
    InvalidBits(u32),
    #[error(
        "group size {group} is not a multiple of block_size {block_size}: MatMulNBits has one \
         scale per block, so each group must cover whole blocks"
    )]
    GroupNotMultipleOfBlock { group: usize, block_size: usize },
    #[error("inconsistent ternary weight: {0}")]
    InvalidTernary(String),
    #[error("{what} has {actual} elements, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        actual: usize,
        expected: usize,
    },
}

/// The zero point MatMulNBits assumes when none is given: `2^(bits - 1)`.
pub fn default_zero_point(bits: u32) -> Result<u8, PackError> {
    match bits {
        2 => Ok(2),
        4 => Ok(8),
        8 => Ok(128),
        _ => Err(PackError::InvalidBits(bits)),
    }
}

/// Checks a MatMulNBits `block_size`: a power of two, at least 16.
pub fn check_block_size(block_size: usize) -> Result<(), PackError> {
    if block_size >= 16 && block_size.is_power_of_two() {
        Ok(())
    } else {
        Err(PackError::InvalidBlockSize(block_size))
    }
}

/// Shape of MatMulNBits `B`: `[N, ceil(K / block_size), block_size * bits / 8]`.
pub fn matmulnbits_b_shape(
    n: usize,
    k: usize,
    block_size: usize,
    bits: u32,
) -> Result<[usize; 3], PackError> {
    check_block_size(block_size)?;
    default_zero_point(bits)?;
    Ok([n, k.div_ceil(block_size), block_size * bits as usize / 8])
}

/// Shape of MatMulNBits `scales`: `[N, ceil(K / block_size)]`.
pub fn matmulnbits_scales_shape(
    n: usize,
    k: usize,
    block_size: usize,
) -> Result<[usize; 2], PackError> {
    check_block_size(block_size)?;
    Ok([n, k.div_ceil(block_size)])
}

/// Checks the invariants of a [`Ternary`]: sizes, group size, codes in `{-1, 0, 1}`.
pub fn check_ternary(t: &Ternary) -> Result<(), PackError> {
    check_shape(t)?;
    check_codes(t)
}

/// The invariants of a [`Ternary`] but its codes' values: sizes and group size.
fn check_shape(t: &Ternary) -> Result<(), PackError> {
    let expected = t
        .n
        .checked_mul(t.k)
        .ok_or_else(|| PackError::InvalidTernary(format!("shape [{}, {}] overflows", t.n, t.k)))?;
    if t.codes.len() != expected {
        return Err(PackError::LengthMismatch {
            what: "ternary codes",
            actual: t.codes.len(),
            expected,
        });
    }
    if let Granularity::Group(0) = t.granularity {
        return Err(PackError::InvalidTernary("group size 0".into()));
    }
    let scales = t.granularity.scale_count(t.n, t.k);
    if t.scales.len() != scales {
        return Err(PackError::LengthMismatch {
            what: "ternary scales",
            actual: t.scales.len(),
            expected: scales,
        });
    }
    Ok(())
}

/// Every code is in `{-1, 0, 1}`, else the error names the first that is not.
fn check_codes(t: &Ternary) -> Result<(), PackError> {
    // In parallel over large chunks, each scanned branch-free (vectorised).
    const CHUNK: usize = 1 << 16;
    let bad = |c: &i8| !(-1..=1).contains(c);
    let first_bad = t
        .codes
        .par_chunks(CHUNK)
        .position_first(|c| c.iter().fold(false, |any, x| any | bad(x)))
        .and_then(|ci| {
            let p = t.codes[ci * CHUNK..].iter().position(bad)?;
            Some(ci * CHUNK + p)
        });
    if let Some(i) = first_bad {
        return Err(PackError::InvalidTernary(format!(
            "code {} at index {i} is not -1, 0 or 1",
            t.codes[i]
        )));
    }
    Ok(())
}

/// Packs the codes as MatMulNBits `B` with `bits` 2, 4 or 8 (see the module docs). The codes
/// are checked as they are packed (one pass over them).
pub fn pack_matmulnbits(t: &Ternary, block_size: usize, bits: u32) -> Result<Vec<u8>, PackError> {
    let [n, nb, blob] = matmulnbits_b_shape(t.n, t.k, block_size, bits)?;
    check_shape(t)?;
    let zp = default_zero_point(bits)?;
    let row_bytes = nb * blob;
    let mut out = vec![0u8; n * row_bytes];
    if row_bytes == 0 {
        return Ok(out);
    }
    let k = t.k;
    let per_byte = 8 / bits as usize;
    // Blocks of one row are contiguous and each block covers `block_size` consecutive K
    // positions, so byte `i` of a row holds K positions `i * per_byte ..`.
    let valid = out
        .par_chunks_mut(row_bytes)
        .zip(t.codes.par_chunks(k))
        .with_min_len((1 << 14) / k.max(1) + 1)
        .map(|(orow, crow)| {
            // Whole bytes first (a fixed number of codes each), then the partial byte and the
            // padding, both filled with the zero point.
            let full = crow.len() / per_byte;
            let valid = match bits {
                2 => pack_2bit(&mut orow[..full], crow),
                4 => pack_full::<2>(&mut orow[..full], crow, zp, 4),
                _ => pack_full::<1>(&mut orow[..full], crow, zp, 8),
            };
            let tail = &crow[full * per_byte..];
            for (i, byte) in orow.iter_mut().enumerate().skip(full) {
                let mut b = 0u8;
                for j in 0..per_byte {
                    let q = match tail.get((i - full) * per_byte + j) {
                        Some(&c) => zp.wrapping_add_signed(c),
                        None => zp,
                    };
                    b |= q << (j * bits as usize);
                }
                *byte = b;
            }
            valid && tail.iter().all(|c| (-1..=1).contains(c))
        })
        .reduce(|| true, |a, b| a && b);
    if !valid {
        check_codes(t)?;
    }
    Ok(out)
}

/// Packs `PER` codes into each byte of `out`, least significant bits first; whether every code
/// was in `{-1, 0, 1}`.
#[inline]
fn pack_full<const PER: usize>(out: &mut [u8], codes: &[i8], zp: u8, bits: u32) -> bool {
    let mut bad = false;
    for (byte, cs) in out.iter_mut().zip(codes.chunks_exact(PER)) {
        let mut b = 0u8;
        for (j, &c) in cs.iter().enumerate() {
            bad |= (c as u8).wrapping_add(1) > 2;
            b |= zp.wrapping_add_signed(c) << (j as u32 * bits);
        }
        *byte = b;
    }
    !bad
}

/// [`pack_full`] for 2 bits (`q = t + 2`, four per byte), sixteen codes at a time in SSE2.
#[cfg(target_arch = "x86_64")]
fn pack_2bit(out: &mut [u8], codes: &[i8]) -> bool {
    // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
    unsafe { pack_2bit_sse2(out, codes) }
}

#[cfg(not(target_arch = "x86_64"))]
fn pack_2bit(out: &mut [u8], codes: &[i8]) -> bool {
    pack_full::<4>(out, codes, 2, 2)
}

/// Each 32-bit lane holds four codes `c0..c3` (low byte first); with `q = c + 1` in `0..=2`
/// when valid, the byte is `(q0 + 1) | (q1 + 1) << 2 | ...`: the lane shifted so each `q + 1`
/// lands in its two bits and masked. A code outside `{-1, 0, 1}` makes `q` (unsigned) above 2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn pack_2bit_sse2(out: &mut [u8], codes: &[i8]) -> bool {
    use std::arch::x86_64::*;
    let n = (out.len() / 4).min(codes.len() / 16);
    let one = _mm_set1_epi8(1);
    let two = _mm_set1_epi8(2);
    let mut bad = _mm_setzero_si128();
    for (o, c) in out.chunks_exact_mut(4).zip(codes.chunks_exact(16)).take(n) {
        // SAFETY: `c` holds 16 bytes; unaligned loads are allowed.
        let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
        let q = _mm_add_epi8(v, one);
        bad = _mm_or_si128(bad, _mm_subs_epu8(q, two));
        let x = _mm_add_epi8(q, one);
        let b = _mm_or_si128(
            _mm_or_si128(
                _mm_and_si128(x, _mm_set1_epi32(0x03)),
                _mm_and_si128(_mm_srli_epi32::<6>(x), _mm_set1_epi32(0x0C)),
            ),
            _mm_or_si128(
                _mm_and_si128(_mm_srli_epi32::<12>(x), _mm_set1_epi32(0x30)),
                _mm_and_si128(_mm_srli_epi32::<18>(x), _mm_set1_epi32(0xC0)),
            ),
        );
        let bytes = _mm_packus_epi16(_mm_packs_epi32(b, b), _mm_setzero_si128());
        o.copy_from_slice(&_mm_cvtsi128_si32(bytes).to_le_bytes());
    }
    let done = n * 4;
    let rest = pack_full::<4>(&mut out[done..], &codes[done * 4..], 2, 2);
    let bad_lanes = _mm_movemask_epi8(_mm_cmpeq_epi8(bad, _mm_setzero_si128()));
    rest && bad_lanes == 0xFFFF
}

/// MatMulNBits `B` with bits = 2: `byte = q0 | q1 << 2 | q2 << 4 | q3 << 6`, `q = t + 2`.
pub fn pack_matmulnbits_2bit(t: &Ternary, block_size: usize) -> Result<Vec<u8>, PackError> {
    pack_matmulnbits(t, block_size, 2)
}

/// MatMulNBits `B` with bits = 4: `byte = q0 | q1 << 4`, `q = t + 8`.
pub fn pack_matmulnbits_4bit(t: &Ternary, block_size: usize) -> Result<Vec<u8>, PackError> {
    pack_matmulnbits(t, block_size, 4)
}

/// MatMulNBits `scales` `[N, ceil(K / block_size)]` (same for every `bits`). A per-tensor or
/// per-channel scale is repeated over the blocks of its channel; `Group(G)` needs `G` to be a
/// multiple of `block_size` (each group's scale repeated over its `G / block_size` blocks).
pub fn matmulnbits_scales(t: &Ternary, block_size: usize) -> Result<Vec<f32>, PackError> {
    let [n, nb] = matmulnbits_scales_shape(t.n, t.k, block_size)?;
    check_shape(t)?;
    let blocks_per_group = match t.granularity {
        Granularity::Group(g) if g % block_size != 0 => {
            return Err(PackError::GroupNotMultipleOfBlock {
                group: g,
                block_size,
            })
        }
        Granularity::Group(g) => g / block_size,
        _ => 1,
    };
    let gpc = t.groups_per_channel();
    let mut out = Vec::with_capacity(n * nb);
    for row in 0..n {
        for b in 0..nb {
            out.push(match t.granularity {
                Granularity::Tensor => t.scales[0],
                Granularity::Channel => t.scales[row],
                Granularity::Group(_) => t.scales[row * gpc + b / blocks_per_group],
            });
        }
    }
    Ok(out)
}

/// Reads MatMulNBits `B` back as codes `q - zero_point` (default zero point), `[N][K]`,
/// padding dropped.
pub fn unpack_matmulnbits_codes(
    bytes: &[u8],
    n: usize,
    k: usize,
    block_size: usize,
    bits: u32,
) -> Result<Vec<i8>, PackError> {
    let [_, nb, blob] = matmulnbits_b_shape(n, k, block_size, bits)?;
    let zp = default_zero_point(bits)?;
    let row_bytes = nb * blob;
    if bytes.len() != n * row_bytes {
        return Err(PackError::LengthMismatch {
            what: "MatMulNBits B",
            actual: bytes.len(),
            expected: n * row_bytes,
        });
    }
    let mut out = vec![0i8; n * k];
    if k == 0 {
        return Ok(out);
    }
    let per_byte = 8 / bits as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    out.par_chunks_mut(k)
        .zip(bytes.par_chunks(row_bytes))
        .for_each(|(orow, brow)| {
            for (kk, o) in orow.iter_mut().enumerate() {
                let byte = brow[kk / per_byte];
                let q = (byte >> ((kk % per_byte) * bits as usize)) & mask;
                *o = (i16::from(q) - i16::from(zp)) as i8;
            }
        });
    Ok(out)
}

/// Dequantizes MatMulNBits `B` and `scales` (default zero point) into `[N][K]` floats.
pub fn unpack_matmulnbits(
    bytes: &[u8],
    scales: &[f32],
    n: usize,
    k: usize,
    block_size: usize,
    bits: u32,
) -> Result<Vec<f32>, PackError> {
    let codes = unpack_matmulnbits_codes(bytes, n, k, block_size, bits)?;
    let nb = k.div_ceil(block_size);
    if scales.len() != n * nb {
        return Err(PackError::LengthMismatch {
            what: "MatMulNBits scales",
            actual: scales.len(),
            expected: n * nb,
        });
    }
    let mut out = vec![0f32; n * k];
    if k == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(k)
        .zip(codes.par_chunks(k))
        .zip(scales.par_chunks(nb))
        .for_each(|((o, c), s)| {
            for (kk, (o, &c)) in o.iter_mut().zip(c).enumerate() {
                *o = f32::from(c) * s[kk / block_size];
            }
        });
    Ok(out)
}

/// Packs signed values of `bits` (2 or 4) bits, `8 / bits` per byte, first element lowest.
fn pack_signed(codes: &[i8], bits: u32, what: &str) -> Vec<u8> {
    let per_byte = 8 / bits as usize;
    let lo = -(1i8 << (bits - 1));
    let hi = (1i8 << (bits - 1)) - 1;
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = vec![0u8; codes.len().div_ceil(per_byte)];
    out.par_chunks_mut(4096)
        .zip(codes.par_chunks(4096 * per_byte))
        .for_each(|(o, c)| {
            for (byte, vals) in o.iter_mut().zip(c.chunks(per_byte)) {
                let mut b = 0u8;
                for (j, &v) in vals.iter().enumerate() {
                    assert!(
                        (lo..=hi).contains(&v),
                        "{what}: value {v} is outside [{lo}, {hi}]"
                    );
                    b |= ((v as u8) & mask) << (j * bits as usize);
                }
                *byte = b;
            }
        });
    out
}

fn unpack_signed(bytes: &[u8], count: usize, bits: u32, what: &str) -> Vec<i8> {
    let per_byte = 8 / bits as usize;
    assert!(
        bytes.len() >= count.div_ceil(per_byte),
        "{what}: {} bytes cannot hold {count} values",
        bytes.len()
    );
    let spare = 8 - bits;
    (0..count)
        .map(|i| {
            let shifted = bytes[i / per_byte] >> ((i % per_byte) * bits as usize);
            // Move the field to the top and shift back arithmetically to sign-extend it.
            ((shifted << spare) as i8) >> spare
        })
        .collect()
}

/// ONNX `INT2` (data type 26) `raw_data`: four per byte, first element in the least significant
/// bits, two's complement (-2 = 0b10, -1 = 0b11, 0 = 0b00, 1 = 0b01), last byte zero-padded.
///
/// # Panics
/// When a value is outside `[-2, 1]`.
pub fn pack_int2(codes: &[i8]) -> Vec<u8> {
    pack_signed(codes, 2, "pack_int2")
}

/// Reads `count` values of ONNX `INT2` `raw_data`.
///
/// # Panics
/// When `bytes` is shorter than `ceil(count / 4)`.
pub fn unpack_int2(bytes: &[u8], count: usize) -> Vec<i8> {
    unpack_signed(bytes, count, 2, "unpack_int2")
}

/// ONNX `INT4` (data type 22) `raw_data`: two per byte, first element in the low nibble, two's
/// complement, last byte zero-padded.
///
/// # Panics
/// When a value is outside `[-8, 7]`.
pub fn pack_int4(codes: &[i8]) -> Vec<u8> {
    pack_signed(codes, 4, "pack_int4")
}

/// Reads `count` values of ONNX `INT4` `raw_data`.
///
/// # Panics
/// When `bytes` is shorter than `ceil(count / 2)`.
pub fn unpack_int4(bytes: &[u8], count: usize) -> Vec<i8> {
    unpack_signed(bytes, count, 4, "unpack_int4")
}

/// ONNX `INT8` `raw_data`: one two's complement byte per value.
pub fn pack_int8(codes: &[i8]) -> Vec<u8> {
    codes.iter().map(|&c| c as u8).collect()
}

/// The codes in ONNX weight order: `transposed = false` gives `[K][N]` (MatMul's `B`),
/// `transposed = true` gives `[N][K]` (`Gemm` with `transB = 1`).
pub fn codes_in_onnx_order(t: &Ternary, transposed: bool) -> Vec<i8> {
    if transposed {
        t.codes.clone()
    } else {
        transpose(&t.codes, t.n, t.k)
    }
}

/// `DequantizeLinear` scale for the weight in ONNX order (see [`codes_in_onnx_order`]):
/// `(scale values, scale dims, axis, block_size)`.
///
/// * `Tensor`: a scalar (dims `[]`), no axis, no block size.
/// * `Channel`: 1-D `[N]`, axis = the N axis (1 for `[K, N]`, 0 for `[N, K]`).
/// * `Group(G)`: blocked (opset 21+): the weight's shape with K replaced by `ceil(K / G)`,
///   axis = the K axis (0 for `[K, N]`, 1 for `[N, K]`), `block_size = G`.
pub fn dq_scales(t: &Ternary, transposed: bool) -> (Vec<f32>, Vec<i64>, Option<i64>, Option<i64>) {
    let (n, gpc) = (t.n as i64, t.groups_per_channel());
    match t.granularity {
        Granularity::Tensor => (vec![t.scales[0]], vec![], None, None),
        Granularity::Channel => (
            t.scales.clone(),
            vec![n],
            Some(if transposed { 0 } else { 1 }),
            None,
        ),
        Granularity::Group(g) => {
            if transposed {
                (
                    t.scales.clone(),
                    vec![n, gpc as i64],
                    Some(1),
                    Some(g as i64),
                )
            } else {
                (
                    transpose(&t.scales, t.n, gpc),
                    vec![gpc as i64, n],
                    Some(0),
                    Some(g as i64),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bit_packing_matches_the_scalar_rule_and_finds_bad_codes() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as i8
        };
        for len in 0..80 {
            let codes: Vec<i8> = (0..len).map(|_| next().rem_euclid(3) - 1).collect();
            let mut want = vec![0u8; len / 4];
            let mut got = vec![0u8; len / 4];
            assert!(pack_full::<4>(&mut want, &codes, 2, 2));
            assert!(pack_2bit(&mut got, &codes));
            assert_eq!(got, want, "{codes:?}");
            // Any invalid code, anywhere a whole byte packs it, is found.
            for at in 0..len / 4 * 4 {
                for bad in [2i8, -2, 3, 127, -128] {
                    let mut c = codes.clone();
                    c[at] = bad;
                    assert!(!pack_2bit(&mut got, &c), "{bad} at {at} of {len}");
                    assert!(!pack_full::<4>(&mut got, &c, 2, 2));
                }
            }
        }
        // A bad code in a row's partial byte (K = 5) is found, and named.
        let t = tern(
            2,
            5,
            vec![1, 0, -1, 1, 0, 1, 1, 1, 1, 3],
            Granularity::Tensor,
            vec![0.5],
        );
        match pack_matmulnbits_2bit(&t, 16) {
            Err(PackError::InvalidTernary(m)) => assert!(m.contains("code 3 at index 9"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    fn tern(
        n: usize,
        k: usize,
        codes: Vec<i8>,
        granularity: Granularity,
        scales: Vec<f32>,
    ) -> Ternary {
        Ternary {
            n,
            k,
            codes,
            granularity,
            scales,
            lossless: false,
        }
    }

    #[test]
    fn matmulnbits_2bit_one_byte() {
        // [-1, 0, 1, 1] -> q [1, 2, 3, 3] -> 1 | 2 << 2 | 3 << 4 | 3 << 6 = 0xF9; then padding 0xAA.
        let t = tern(1, 4, vec![-1, 0, 1, 1], Granularity::Tensor, vec![0.5]);
        let b = pack_matmulnbits_2bit(&t, 16).unwrap();
        assert_eq!(b, vec![0xF9, 0xAA, 0xAA, 0xAA]);
        assert_eq!(matmulnbits_b_shape(1, 4, 16, 2).unwrap(), [1, 1, 4]);
        assert_eq!(matmulnbits_scales(&t, 16).unwrap(), vec![0.5]);
        assert_eq!(
            unpack_matmulnbits(&b, &[0.5], 1, 4, 16, 2).unwrap(),
            vec![-0.5, 0.0, 0.5, 0.5]
        );
    }

    #[test]
    fn matmulnbits_2bit_two_rows_padded() {
        // K = 18 with blocks of 16: two blocks (8 bytes) per row.
        let mut codes = vec![0i8; 36];
        codes[0] = 1; // row 0, k 0 -> q 3
        codes[1] = -1; // row 0, k 1 -> q 1
        codes[17] = 1; // row 0, k 17 (second block, second code) -> q 3 << 2
        codes[18 + 16] = -1; // row 1, k 16 -> q 1
        let t = tern(2, 18, codes.clone(), Granularity::Channel, vec![1.0, 2.0]);
        let b = pack_matmulnbits_2bit(&t, 16).unwrap();
        #[rustfmt::skip]
        let expected = vec![
            // row 0: 3 | 1<<2 | 2<<4 | 2<<6 = 0xA7, then 0xAA; block 1: 2 | 3<<2 | pad = 0xAE
            0xA7, 0xAA, 0xAA, 0xAA, 0xAE, 0xAA, 0xAA, 0xAA,
            // row 1: block 1 starts with q 1: 1 | 2<<2 | 2<<4 | 2<<6 = 0xA9
            0xAA, 0xAA, 0xAA, 0xAA, 0xA9, 0xAA, 0xAA, 0xAA,
        ];
        assert_eq!(b, expected);
        assert_eq!(
            matmulnbits_scales(&t, 16).unwrap(),
            vec![1.0, 1.0, 2.0, 2.0]
        );
        assert_eq!(unpack_matmulnbits_codes(&b, 2, 18, 16, 2).unwrap(), codes);
    }

    #[test]
    fn matmulnbits_4bit_and_8bit_bytes() {
        // [-1, 0, 1] -> q [7, 8, 9], pad 8: 7 | 8 << 4 = 0x87, 9 | 8 << 4 = 0x89, then 0x88.
        let t = tern(1, 3, vec![-1, 0, 1], Granularity::Tensor, vec![1.0]);
        let b = pack_matmulnbits_4bit(&t, 16).unwrap();
        let mut expected = vec![0x88u8; 8];
        expected[0] = 0x87;
        expected[1] = 0x89;
        assert_eq!(b, expected);
        let b8 = pack_matmulnbits(&t, 16, 8).unwrap();
        let mut expected = vec![0x80u8; 16];
        expected[0] = 0x7F;
        expected[2] = 0x81;
        assert_eq!(b8, expected);
        assert_eq!(
            unpack_matmulnbits_codes(&b8, 1, 3, 16, 8).unwrap(),
            vec![-1, 0, 1]
        );
    }

    #[test]
    fn matmulnbits_group_scales() {
        // K = 80, Group(32) -> 3 groups (32, 32, 16); blocks of 16 -> 5 blocks.
        let t = tern(
            2,
            80,
            vec![0; 160],
            Granularity::Group(32),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        assert_eq!(
            matmulnbits_scales(&t, 16).unwrap(),
            vec![1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0]
        );
        assert_eq!(matmulnbits_scales(&t, 32).unwrap(), t.scales);
        assert_eq!(
            matmulnbits_scales(&t, 64),
            Err(PackError::GroupNotMultipleOfBlock {
                group: 32,
                block_size: 64
            })
        );
        let msg = matmulnbits_scales(&t, 64).unwrap_err().to_string();
        assert!(msg.contains("not a multiple"), "{msg}");
    }

    #[test]
    fn matmulnbits_rejects_bad_input() {
        let t = tern(1, 4, vec![-1, 0, 1, 1], Granularity::Tensor, vec![0.5]);
        for bs in [0, 8, 24, 33] {
            assert_eq!(
                pack_matmulnbits_2bit(&t, bs),
                Err(PackError::InvalidBlockSize(bs))
            );
        }
        assert_eq!(pack_matmulnbits(&t, 16, 3), Err(PackError::InvalidBits(3)));
        let bad = tern(1, 4, vec![-1, 0, 2, 1], Granularity::Tensor, vec![0.5]);
        assert!(matches!(
            pack_matmulnbits_2bit(&bad, 16),
            Err(PackError::InvalidTernary(_))
        ));
        let bad = tern(
            1,
            4,
            vec![-1, 0, 1, 1],
            Granularity::Channel,
            vec![0.5, 1.0],
        );
        assert!(matches!(
            matmulnbits_scales(&bad, 16),
            Err(PackError::LengthMismatch { .. })
        ));
        assert!(matches!(
            unpack_matmulnbits_codes(&[0u8; 3], 1, 4, 16, 2),
            Err(PackError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn int2_bytes() {
        // [-1, 0, 1, -2] -> 0b11, 0b00, 0b01, 0b10 -> 0b10_01_00_11 = 0x93
        assert_eq!(pack_int2(&[-1, 0, 1, -2]), vec![0x93]);
        assert_eq!(pack_int2(&[1, 1, 1, 1, -1]), vec![0x55, 0x03]);
        assert_eq!(pack_int2(&[]), Vec::<u8>::new());
        assert_eq!(unpack_int2(&[0x93], 4), vec![-1, 0, 1, -2]);
        assert_eq!(unpack_int2(&[0x55, 0x03], 5), vec![1, 1, 1, 1, -1]);
    }

    #[test]
    fn int4_bytes() {
        // [-1, 1, 7, -8, 3] -> 0x1F, 0x87, 0x03
        assert_eq!(pack_int4(&[-1, 1, 7, -8, 3]), vec![0x1F, 0x87, 0x03]);
        assert_eq!(unpack_int4(&[0x1F, 0x87, 0x03], 5), vec![-1, 1, 7, -8, 3]);
        assert_eq!(pack_int8(&[-1, 0, 1]), vec![0xFF, 0x00, 0x01]);
    }

    #[test]
    #[should_panic(expected = "outside [-2, 1]")]
    fn int2_rejects_two() {
        pack_int2(&[2]);
    }

    #[test]
    fn int2_large_round_trip() {
        let codes: Vec<i8> = (0..20_001).map(|i| ((i * 7 % 4) as i8) - 2).collect();
        assert_eq!(unpack_int2(&pack_int2(&codes), codes.len()), codes);
        let codes4: Vec<i8> = (0..9_999).map(|i| ((i * 5 % 16) as i8) - 8).collect();
        assert_eq!(unpack_int4(&pack_int4(&codes4), codes4.len()), codes4);
    }

    #[test]
    fn onnx_order_and_dq_scales() {
        // N = 2, K = 3
        let codes = vec![1, 0, -1, -1, 1, 0];
        let t = tern(2, 3, codes.clone(), Granularity::Tensor, vec![0.5]);
        assert_eq!(codes_in_onnx_order(&t, true), codes);
        assert_eq!(codes_in_onnx_order(&t, false), vec![1, -1, 0, 1, -1, 0]);
        assert_eq!(dq_scales(&t, false), (vec![0.5], vec![], None, None));

        let t = tern(2, 3, codes.clone(), Granularity::Channel, vec![0.5, 2.0]);
        assert_eq!(
            dq_scales(&t, false),
            (vec![0.5, 2.0], vec![2], Some(1), None)
        );
        assert_eq!(
            dq_scales(&t, true),
            (vec![0.5, 2.0], vec![2], Some(0), None)
        );

        // Group(2): groups per channel = 2, scales [N][2] = [[1, 2], [3, 4]]
        let t = tern(2, 3, codes, Granularity::Group(2), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            dq_scales(&t, true),
            (vec![1.0, 2.0, 3.0, 4.0], vec![2, 2], Some(1), Some(2))
        );
        // [K, N] = [3, 2] weight, scale [ceil(3/2), 2] = [[1, 3], [2, 4]], blocked along axis 0
        assert_eq!(
            dq_scales(&t, false),
            (vec![1.0, 3.0, 2.0, 4.0], vec![2, 2], Some(0), Some(2))
        );
    }
}
