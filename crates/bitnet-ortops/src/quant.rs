//! BitNet's per-token activation quantization, computed as `build`'s stock graph computes it
//! in standard ONNX ops, one float operation for one float operation:
//!
//! ```text
//! m = max(ReduceMax(|x|), 1e-5)        one value per token (the last axis)
//! s = 127 / m                          float32 division
//! q = clip(round(x * s), -128, 127)    float32 product, rounded half to even (ONNX Round)
//! ```
//!
//! Every value of a token whose `|x|` reaches `m` gives `|x * s| <= 127` up to one rounding, so
//! the codes are within -127..=127 in practice; the clip is kept because the graph has it.
//! A token with a NaN or an infinite value has no meaningful codes (the stock graph's scale is
//! NaN or 0 there); [`quantize_row`] reports it and the op writes NaN for that token's outputs.

/// Codes of one token written to `q` (which may be longer than `x`: the rest is zeroed, the
/// padding of the weight layout). Returns the token's scale `s` and the sum of its codes, or
/// `None` when `x` holds a NaN or an infinity.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
    assert!(q.len() >= x.len(), "code buffer shorter than the row");
    let mut m = 0f32;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        m = m.max(v.abs());
    }
    q[x.len()..].fill(0);
    if !finite {
        q[..x.len()].fill(0);
        return None;
    }
    let s = 127f32 / m.max(1e-5);
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(x) {
        let c = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        *d = c;
        sum += c as i32;
    }
    Some((s, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula() {
        let x = [0.5f32, -1.0, 0.25, 0.0];
        let mut q = [9i8; 8];
        let (s, sum) = quantize_row(&x, &mut q).unwrap();
        assert_eq!(s, 127.0);
        // 0.25 * 127 = 31.75 -> 32; 0.5 * 127 = 63.5 -> 64 (half to even), the rest zeroed.
        assert_eq!(q, [64, -127, 32, 0, 0, 0, 0, 0]);
        assert_eq!(sum, 64 - 127 + 32);
        // All-zero rows use the 1e-5 floor.
        let (s, sum) = quantize_row(&[0.0; 3], &mut q).unwrap();
        assert_eq!((s, sum), (127.0 / 1e-5, 0));
        assert!(quantize_row(&[1.0, f32::NAN], &mut q).is_none());
        assert!(quantize_row(&[1.0, f32::INFINITY], &mut q).is_none());
    }
}
