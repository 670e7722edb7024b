//! The absmean quantizer (BitNet b1.58): per-group scale `mean |W|`, codes by threshold.

use rayon::prelude::*;

use super::{
    clamp_scale, code_err, finish_rel_error, group_len, min_rows, non_finite, sum_abs,
    tensor_mean_abs, CodeRule, Granularity, QuantError, Ternary,
};

pub(super) fn absmean(
    w: &[f32],
    n: usize,
    k: usize,
    gran: Granularity,
    thr: f32,
) -> Result<(Ternary, f64), QuantError> {
    let mut codes = vec![0i8; n * k];
    // Per row: (err, norm) as `rel_error` sums them, measured right after coding the row.
    let mut parts = vec![(0f64, 0f64); n];
    let scales = match gran {
        Granularity::Tensor => {
            let a = clamp_scale(tensor_mean_abs(w, n, k)?);
            let inv = 1.0 / a;
            codes
                .par_chunks_mut(k)
                .zip(w.par_chunks(k))
                .zip(parts.par_iter_mut())
                .with_min_len(min_rows(k))
                .for_each(|((c, x), p)| {
                    *p = code_err(x, c, a, CodeRule::Threshold { inv, thr });
                });
            vec![a]
        }
        Granularity::Channel | Granularity::Group(_) => {
            let g = group_len(gran, k);
            let gpc = k.div_ceil(g);
            let mut scales = vec![0f32; n * gpc];
            let bad: Vec<bool> = codes
                .par_chunks_mut(k)
                .zip(scales.par_chunks_mut(gpc))
                .zip(w.par_chunks(k))
                .zip(parts.par_iter_mut())
                .with_min_len(min_rows(k))
                .map(|(((c, s), x), p)| match absmean_channel(x, c, s, g, thr) {
                    Some(en) => {
                        *p = en;
                        false
                    }
                    None => true,
                })
                .collect();
            if let Some(row) = bad.iter().position(|&b| b) {
                return Err(non_finite(w, k, row));
            }
            scales
        }
    };
    let t = Ternary {
        n,
        k,
        codes,
        granularity: gran,
        scales,
        lossless: false,
    };
    let e = if t.k == 0 || w.is_empty() {
        0.0
    } else {
        finish_rel_error(&parts)
    };
    Ok((t, e))
}

/// Absmean of one channel `x` in groups of `g`: scales into `s`, codes into `c`, and its
/// `(err, norm)` sums as `rel_error` makes them. `None` when a weight is not finite.
#[inline]
fn absmean_channel(
    x: &[f32],
    c: &mut [i8],
    s: &mut [f32],
    g: usize,
    thr: f32,
) -> Option<(f64, f64)> {
    let (mut err, mut norm) = (0f64, 0f64);
    for ((cg, xg), sg) in c.chunks_mut(g).zip(x.chunks(g)).zip(s.iter_mut()) {
        let sum = sum_abs(xg);
        if !sum.is_finite() {
            return None;
        }
        let a = clamp_scale(sum / xg.len() as f64);
        *sg = a;
        let (e, nn) = code_err(xg, cg, a, CodeRule::Threshold { inv: 1.0 / a, thr });
        err += e;
        norm += nn;
    }
    Some((err, norm))
}
