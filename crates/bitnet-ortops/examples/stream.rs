//! The kernels alone, without ONNX Runtime: one token (M = 1) against 2B-4T's ternary layers
//! (30 x: q/k/v 3840 x 2560, o 2560 x 2560, gate/up 13824 x 2560, down 2560 x 6912), random
//! weights in the op's layout, rows split over T threads as the op splits them; prints the
//! weight bytes streamed per second. Then M tokens (a prompt) through the same weights.
//!
//!     cargo run --release -p bitnet-ortops --example stream -- [THREADS] [REPS] [M]
//!
//! Not a test: a figure for docs/benchmarks.md, beside a read-bandwidth measurement.

use std::time::Instant;

use bitnet_ortops::kernel::{self, Path};
use bitnet_ortops::layout;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("THREADS REPS M"))
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let reps = args.get(1).copied().unwrap_or(5);
    let prompt = args.get(2).copied().unwrap_or(128);
    let shapes = [(3840, 2560), (2560, 2560), (13824, 2560), (2560, 6912)];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // 30 layers: each its own buffers, so nothing stays in cache between layers.
    let layers: Vec<(usize, usize, Vec<u8>)> = (0..30)
        .flat_map(|_| shapes)
        .map(|(n, k)| {
            let w: Vec<u8> = (0..n * layout::row_bytes(k))
                .map(|_| {
                    // Four codes of 0..=2 per byte.
                    let r = next();
                    (0..4).fold(0u8, |b, i| b | ((((r >> (8 * i)) % 3) as u8) << (2 * i)))
                })
                .collect();
            (n, k, w)
        })
        .collect();
    let bytes: usize = layers.iter().map(|(_, _, w)| w.len()).sum();
    let path = Path::detect();
    println!(
        "{} path, {threads} threads, {} MiB of ternary weights per token",
        path.name(),
        bytes >> 20
    );
    for m in [1, prompt] {
        let acts_for = |k: usize| -> Vec<i8> {
            (0..m * layout::padded_k(k))
                .map(|i| (i % 255) as i8)
                .collect()
        };
        let (a2560, a6912) = (acts_for(2560), acts_for(6912));
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t0 = Instant::now();
            for (n, k, w) in &layers {
                let kp = layout::padded_k(*k);
                let acts = if *k == 2560 { &a2560 } else { &a6912 };
                let rb = kp / 4;
                let per = n.div_ceil(threads);
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (r0, r1) = (t * per, ((t + 1) * per).min(*n));
                        if r0 >= r1 {
                            continue;
                        }
                        let w = &w[r0 * rb..r1 * rb];
                        s.spawn(move || {
                            let mut out = vec![0i32; (r1 - r0) * m];
                            kernel::dots(path, w, kp, acts, m, &mut out);
                            std::hint::black_box(&out);
                        });
                    }
                });
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!(
            "M = {m}: {:.1} ms per pass (best of {reps}), {:.1} GB/s of weights, {:.1} tokens/s",
            best * 1e3,
            bytes as f64 / best / 1e9,
            m as f64 / best
        );
    }
}
