//! The TWN quantizer (ternary weight networks): zero below `0.7 mean |W|`, least-squares scale
//! of the rest.

use rayon::prelude::*;

use super::{
    group_len, min_rows, non_finite, sum_abs, tensor_mean_abs, Granularity, QuantError, Ternary,
    SCALE_EPS,
};

/// TWN threshold factor: weights below `0.7 * mean|W|` become zero.
pub const TWN_DELTA_FACTOR: f64 = 0.7;

/// TWN on one group: codes into `cs`, returns (sum of kept |w|, kept count).
#[inline]
fn twn_code(xs: &[f32], cs: &mut [i8], delta: f64) -> (f64, u64) {
    // `|x| >= delta` with an f64 delta is `|x| >= d32` for the smallest f32 `d32 >= delta`,
    // which lets the coding loop run on f32 lanes.
    let mut d32 = delta as f32;
    if f64::from(d32) < delta {
        d32 = d32.next_up();
    }
    let mut count = 0u64;
    for (c, &x) in cs.iter_mut().zip(xs) {
        let keep = (x != 0.0) & (x.abs() >= d32);
        let sign = if x.is_sign_negative() { -1 } else { 1 };
        *c = i8::from(keep) * sign;
        count += u64::from(keep);
    }
    // Kept magnitudes summed in f64 over four fixed lanes (deterministic).
    let mut acc = [0f64; 4];
    let mut xc = xs.chunks_exact(4);
    let mut cc = cs.chunks_exact(4);
    for (x4, c4) in (&mut xc).zip(&mut cc) {
        for i in 0..4 {
            // c * c is 1 for a kept weight, 0 otherwise: no unpredictable branch.
            acc[i] += f64::from(x4[i].abs()) * f64::from(c4[i] * c4[i]);
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, c) in xc.remainder().iter().zip(cc.remainder()) {
        if *c != 0 {
            sum += f64::from(x.abs());
        }
    }
    (sum, count)
}

fn twn_scale(sum: f64, count: u64) -> f32 {
    if count == 0 {
        SCALE_EPS
    } else {
        (sum / count as f64) as f32
    }
}

pub(super) fn twn(w: &[f32], n: usize, k: usize, gran: Granularity) -> Result<Ternary, QuantError> {
    let mut codes = vec![0i8; n * k];
    let scales = match gran {
        Granularity::Tensor => {
            let delta = TWN_DELTA_FACTOR * tensor_mean_abs(w, n, k)?;
            let kept: Vec<(f64, u64)> = codes
                .par_chunks_mut(k)
                .zip(w.par_chunks(k))
                .with_min_len(min_rows(k))
                .map(|(c, x)| twn_code(x, c, delta))
                .collect();
            let (sum, count) = kept
                .iter()
                .fold((0f64, 0u64), |(s, c), &(ps, pc)| (s + ps, c + pc));
            vec![twn_scale(sum, count)]
        }
        Granularity::Channel | Granularity::Group(_) => {
            let g = group_len(gran, k);
            let gpc = k.div_ceil(g);
            let mut scales = vec![0f32; n * gpc];
            let bad: Vec<bool> = codes
                .par_chunks_mut(k)
                .zip(scales.par_chunks_mut(gpc))
                .zip(w.par_chunks(k))
                .with_min_len(min_rows(k))
                .map(|((c, s), x)| {
                    for ((cg, xg), sg) in c.chunks_mut(g).zip(x.chunks(g)).zip(s.iter_mut()) {
                        let total = sum_abs(xg);
                        if !total.is_finite() {
                            return true;
                        }
                        let delta = TWN_DELTA_FACTOR * (total / xg.len() as f64);
                        let (sum, count) = twn_code(xg, cg, delta);
                        *sg = twn_scale(sum, count);
                    }
                    false
                })
                .collect();
            if let Some(row) = bad.iter().position(|&b| b) {
                return Err(non_finite(w, k, row));
            }
            scales
        }
    };
    Ok(Ternary {
        n,
        k,
        codes,
        granularity: gran,
        scales,
        lossless: false,
    })
}
