//! Error metrics between a reference `a` and a candidate `b`, accumulated over any number of
//! runs (every metric is over all positions of all runs).

use serde::Serialize;

/// SNR reported when the two tensors are identical (instead of infinity).
pub const SNR_CAP_DB: f64 = 200.0;

/// Streaming accumulator for [`Metrics`].
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    n: u64,
    max_abs: f64,
    sum_abs: f64,
    aa: f64,
    bb: f64,
    ab: f64,
    dd: f64,
    rows: u64,
    rows_agree: u64,
    non_finite: u64,
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

impl Accumulator {
    /// Adds one pair of tensors of the same shape (`last` = size of the last axis, for top-1).
    pub fn add(&mut self, a: &[f32], b: &[f32], last: usize) {
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            if !x.is_finite() || !y.is_finite() {
                self.non_finite += 1;
            }
            let d = (x - y).abs();
            self.n += 1;
            self.max_abs = self.max_abs.max(d);
            self.sum_abs += d;
            self.aa += x * x;
            self.bb += y * y;
            self.ab += x * y;
            self.dd += d * d;
        }
        if last > 0 && a.len() == b.len() {
            for (ra, rb) in a.chunks(last).zip(b.chunks(last)) {
                self.rows += 1;
                self.rows_agree += u64::from(argmax(ra) == argmax(rb));
            }
        }
    }

    pub fn finish(&self) -> Metrics {
        let rel_l2 = if self.dd == 0.0 {
            0.0
        } else if self.aa == 0.0 {
            f64::INFINITY
        } else {
            (self.dd / self.aa).sqrt()
        };
        let cosine = if self.aa == 0.0 && self.bb == 0.0 {
            1.0
        } else if self.aa == 0.0 || self.bb == 0.0 {
            0.0
        } else {
            // Rounding can take |cos| a few ulps past 1 (identical outputs gave 1 + 2e-16).
            (self.ab / (self.aa.sqrt() * self.bb.sqrt())).clamp(-1.0, 1.0)
        };
        let snr = if self.dd == 0.0 {
            SNR_CAP_DB
        } else {
            (10.0 * (self.aa / self.dd).log10()).min(SNR_CAP_DB)
        };
        let nan_to = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
        Metrics {
            max_abs_error: nan_to(self.max_abs),
            mean_abs_error: if self.n == 0 {
                0.0
            } else {
                nan_to(self.sum_abs / self.n as f64)
            },
            rel_l2: nan_to(rel_l2),
            cosine: if cosine.is_nan() { 0.0 } else { cosine },
            snr_db: if snr.is_nan() { f64::NEG_INFINITY } else { snr },
            top1_agreement: if self.rows == 0 {
                1.0
            } else {
                self.rows_agree as f64 / self.rows as f64
            },
            non_finite: self.non_finite,
        }
    }
}

/// How far `b` is from `a`. Infinite values serialise as `null`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub max_abs_error: f64,
    pub mean_abs_error: f64,
    /// `||a - b|| / ||a||` (0 when both are zero).
    pub rel_l2: f64,
    pub cosine: f64,
    /// `10 log10(||a||² / ||a - b||²)`, capped at 200 dB.
    pub snr_db: f64,
    /// Fraction of positions where the argmax along the last axis matches.
    pub top1_agreement: f64,
    /// Positions where either value is NaN or infinite.
    pub non_finite: u64,
}

/// Metrics of one pair of tensors with shape `shape`.
pub fn compare(a: &[f32], b: &[f32], shape: &[usize]) -> Metrics {
    let mut acc = Accumulator::default();
    acc.add(a, b, shape.last().copied().unwrap_or(1));
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_scaled() {
        let a = [1.0, 2.0, 3.0, 0.0];
        let m = compare(&a, &a, &[2, 2]);
        assert_eq!(
            (m.rel_l2, m.cosine, m.snr_db, m.top1_agreement),
            (0.0, 1.0, 200.0, 1.0)
        );
        let b = [2.0, 4.0, 6.0, 0.0];
        let m = compare(&a, &b, &[2, 2]);
        assert!((m.rel_l2 - 1.0).abs() < 1e-12);
        assert!((m.cosine - 1.0).abs() < 1e-12);
        assert!(m.snr_db.abs() < 1e-9);
        assert_eq!(m.max_abs_error, 3.0);
        let z = compare(&[0.0; 3], &[0.0; 3], &[3]);
        assert_eq!((z.rel_l2, z.cosine), (0.0, 1.0));
        let t = compare(&[1.0, 0.0, 0.0, 1.0], &[0.0, 1.0, 0.0, 1.0], &[2, 2]);
        assert_eq!(t.top1_agreement, 0.5);
    }
}
