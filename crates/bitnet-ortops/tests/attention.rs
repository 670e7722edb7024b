//! The attention module: every path bit-identical to the reference, the reference within float
//! rounding of a float64 evaluation of the same semantics, the exponential's error, and the
//! cache plan's checks.

mod common;

use bitnet_ortops::attention::{exp, run, Dims, Plan};
use bitnet_ortops::kernel::Path;
use common::Rng;
use proptest::prelude::*;

fn dims(batch: usize, seq: usize, per: usize, kv_heads: usize, head: usize, cache: usize) -> Dims {
    Dims {
        batch,
        seq,
        heads: per * kv_heads,
        kv_heads,
        head,
        cache,
        rotary: head / 2,
        rotary_rows: cache + 2,
        interleaved: false,
        scale: 1.0 / (head as f32).sqrt(),
    }
}

struct Case {
    d: Dims,
    plan: Plan,
    qkv: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

fn case(d: Dims, seqlens: &[i32], total: i32, seed: u64) -> Case {
    let mut rng = Rng(seed | 1);
    let plan = d.plan(seqlens, total).expect("plan");
    let n = |len: usize, rng: &mut Rng| (0..len).map(|_| rng.float()).collect::<Vec<f32>>();
    let angles: Vec<f64> = (0..d.rotary_rows * d.rotary)
        .map(|i| {
            (i / d.rotary.max(1)) as f64
                / 10000f64.powf((i % d.rotary.max(1)) as f64 / d.rotary.max(1) as f64)
        })
        .collect();
    Case {
        qkv: n(d.batch * d.seq * d.qkv_width(), &mut rng),
        cos: angles.iter().map(|a| a.cos() as f32).collect(),
        sin: angles.iter().map(|a| a.sin() as f32).collect(),
        keys: n(d.batch * d.kv_heads * d.cache * d.head, &mut rng),
        values: n(d.batch * d.kv_heads * d.cache * d.head, &mut rng),
        d,
        plan,
    }
}

fn compute(c: &Case, path: Path) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut k, mut v) = (c.keys.clone(), c.values.clone());
    let mut out = vec![f32::NAN; c.d.batch * c.d.seq * c.d.heads * c.d.head];
    run(
        path, &c.d, &c.plan, &c.qkv, &c.cos, &c.sin, &mut k, &mut v, &mut out,
    );
    (out, k, v)
}

/// The semantics in float64, written apart from the module: rotary position, cache rows, causal
/// softmax attention.
fn oracle(c: &Case) -> Vec<f64> {
    let d = &c.d;
    let (dh, g, per, r) = (d.head, d.kv_heads, d.heads / d.kv_heads, d.rotary);
    let w = d.qkv_width();
    let rot = |x: &[f32], p: usize| -> Vec<f64> {
        let mut o: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for i in 0..r {
            let (a, b) = if d.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + r)
            };
            let (cs, sn) = (c.cos[p * r + i] as f64, c.sin[p * r + i] as f64);
            o[a] = x[a] as f64 * cs - x[b] as f64 * sn;
            o[b] = x[b] as f64 * cs + x[a] as f64 * sn;
        }
        o
    };
    let pos = |b: usize, s: usize| {
        if c.plan.first_prompt {
            if s < c.plan.valid[b] {
                s
            } else {
                1
            }
        } else {
            c.plan.past[b] + s
        }
    };
    let mut out = vec![0f64; d.batch * d.seq * d.heads * dh];
    for b in 0..d.batch {
        for kv in 0..g {
            // The cache this sequence's head sees after the new rows are written.
            let mut keys: Vec<Vec<f64>> = Vec::new();
            let mut values: Vec<Vec<f64>> = Vec::new();
            for t in 0..c.plan.past[b] + d.seq {
                let at = ((b * g + kv) * d.cache + t) * dh;
                if t < c.plan.past[b] {
                    keys.push(c.keys[at..at + dh].iter().map(|&v| v as f64).collect());
                    values.push(c.values[at..at + dh].iter().map(|&v| v as f64).collect());
                } else {
                    let s = t - c.plan.past[b];
                    let row = &c.qkv[(b * d.seq + s) * w..][..w];
                    keys.push(rot(&row[(d.heads + kv) * dh..][..dh], pos(b, s)));
                    values.push(
                        row[(d.heads + g + kv) * dh..][..dh]
                            .iter()
                            .map(|&v| v as f64)
                            .collect(),
                    );
                }
            }
            for s in 0..d.seq {
                let len = c.plan.past[b] + s + 1;
                let row = &c.qkv[(b * d.seq + s) * w..][..w];
                for i in 0..per {
                    let h = kv * per + i;
                    let q = rot(&row[h * dh..(h + 1) * dh], pos(b, s));
                    let scores: Vec<f64> = (0..len)
                        .map(|t| {
                            q.iter().zip(&keys[t]).map(|(a, b)| a * b).sum::<f64>() * d.scale as f64
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let o = &mut out[((b * d.seq + s) * d.heads + h) * dh..][..dh];
                    for (t, et) in e.iter().enumerate() {
                        for (x, v) in o.iter_mut().zip(&values[t]) {
                            *x += et / sum * v;
                        }
                    }
                }
            }
        }
    }
    out
}

fn check_case(c: &Case) {
    let (reference, rk, rv) = compute(c, Path::Reference);
    for path in Path::available() {
        let (o, k, v) = compute(c, path);
        assert_eq!(
            o.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            reference.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{path:?} output"
        );
        assert_eq!(k, rk, "{path:?} key cache");
        assert_eq!(v, rv, "{path:?} value cache");
    }
    let want = oracle(c);
    // Values are averages of value rows (|v| up to 40): allow float32 rounding of the scores,
    // the exponential and the sums, relative to the largest value.
    let vmax = c
        .values
        .iter()
        .chain(&c.qkv)
        .fold(0f64, |m, &x| m.max(x.abs() as f64));
    for (i, (&g, &w)) in reference.iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 2e-5 * vmax.max(1.0),
            "output {i}: {g} against {w}"
        );
    }
    // Cache rows outside the new positions are untouched.
    let d = &c.d;
    for b in 0..d.batch {
        for kv in 0..d.kv_heads {
            for t in 0..d.cache {
                if t >= c.plan.past[b] && t < c.plan.past[b] + d.seq {
                    continue;
                }
                let at = ((b * d.kv_heads + kv) * d.cache + t) * d.head;
                assert_eq!(
                    rk[at..at + d.head],
                    c.keys[at..at + d.head],
                    "key row {t} of {b}/{kv}"
                );
                assert_eq!(
                    rv[at..at + d.head],
                    c.values[at..at + d.head],
                    "value row {t} of {b}/{kv}"
                );
            }
        }
    }
}

#[test]
fn exp_is_within_two_ulps_of_float64() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let want = (x as f64).exp();
        let rel = ((exp(x) as f64 - want) / want).abs();
        worst = worst.max(rel);
        x += 0.001_37;
    }
    assert!(worst < 2.5e-7, "worst relative error {worst}");
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.2e-38);
}

#[test]
fn decode_two_hundred_positions_at_2b4t_head_shape() {
    // One new position after 199 cached ones: 4 query heads per key/value head of 128.
    let c = case(dims(1, 1, 4, 2, 128, 256), &[199], 200, 7);
    assert_eq!(c.plan.past, vec![199]);
    check_case(&c);
}

#[test]
fn first_prompt_with_a_padded_sequence() {
    // Batch 2, 9 positions; the second sequence has 6 (rows 6-8 are padding, rotary position 1).
    let c = case(dims(2, 9, 2, 2, 16, 12), &[8, 5], 9, 3);
    assert!(c.plan.first_prompt);
    assert_eq!(c.plan.valid, vec![9, 6]);
    check_case(&c);
}

#[test]
fn later_prompt_after_a_past() {
    let mut d = dims(1, 5, 3, 1, 32, 40);
    d.interleaved = true;
    let c = case(d, &[20], 21, 11);
    assert_eq!(c.plan.past, vec![16]);
    assert!(!c.plan.first_prompt);
    check_case(&c);
}

#[test]
fn plan_refuses_what_would_leave_the_buffers() {
    let d = dims(1, 1, 2, 1, 16, 8);
    assert!(d
        .plan(&[8], 9)
        .unwrap_err()
        .0
        .contains("cache rows up to 9"));
    assert!(d
        .plan(&[-1], 1)
        .unwrap_err()
        .0
        .contains("seqlens_k[0] = -1"));
    assert!(d.plan(&[3], 3).unwrap_err().0.contains("outside 0..3"));
    assert!(d
        .plan(&[0, 0], 1)
        .unwrap_err()
        .0
        .contains("2 values for batch 1"));
    let later = dims(2, 3, 2, 1, 16, 8);
    assert!(later
        .plan(&[4, 4], 5)
        .unwrap_err()
        .0
        .contains("need batch 1"));
    let mut short = dims(1, 1, 2, 1, 16, 64);
    short.rotary_rows = 10;
    assert!(short
        .plan(&[10], 11)
        .unwrap_err()
        .0
        .contains("rotary position 10"));
    let odd = Dims {
        head: 12,
        ..dims(1, 1, 2, 1, 16, 8)
    };
    assert!(odd.check().unwrap_err().0.contains("multiple of 8"));
    let heads = Dims {
        heads: 3,
        kv_heads: 2,
        ..dims(1, 1, 2, 1, 16, 8)
    };
    assert!(heads
        .check()
        .unwrap_err()
        .0
        .contains("not a multiple of kv_num_heads"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn paths_agree_bit_for_bit_and_with_float64(
        batch in 1usize..3, seq in 1usize..6, per in 1usize..9, kv_heads in 1usize..3,
        head in prop::sample::select(vec![8usize, 16, 64, 128]), past in 0usize..70,
        interleaved in any::<bool>(), seed in any::<u64>(),
    ) {
        let (seq, first) = if past == 0 { (seq, true) } else if batch > 1 { (1, false) } else { (seq, false) };
        let total = if first { seq } else { past + seq };
        let mut d = dims(batch, seq, per, kv_heads, head, total + 3);
        d.interleaved = interleaved;
        d.rotary = if head >= 16 { head / 4 } else { head / 2 };
        let seqlens: Vec<i32> = (0..batch).map(|b| (total - if first { b % seq.max(1) } else { 0 }) as i32 - 1).collect();
        let c = case(d, &seqlens, total as i32, seed);
        check_case(&c);
    }
}
