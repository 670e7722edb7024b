//! How close the op's decode step (M = 1) comes to the machine's read bandwidth, outside ONNX
//! Runtime: every ternary layer of microsoft/bitnet-b1.58-2B-4T (30 layers of fused q/k/v,
//! o, fused gate/up and down; 521 MB in the op's layout, far past any cache) run once per
//! "token" in order, against a plain AVX2 read of the same bytes on the same threads, in the
//! same run. Not a test: a tool for working on the kernel (the end-to-end figure is
//! `bench/decode_kernel.py`).
//!
//! ```text
//! cargo run --release -p bitnet-ortops --example kernel_speed -- [THREADS] [TOKENS] [LAYERS] [M]
//! ```
//!
//! Threads come from a small spinning pool (as ONNX Runtime's intra-op pool spins between
//! ops), so the figure is the kernel's, not thread start-up's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bitnet_ortops::kernel::Path;
use bitnet_ortops::layout;
use bitnet_ortops::op::BitLinear;

#[path = "common/cpu_time.rs"]
mod cpu_time;

/// 2B-4T's ternary layers as (K, N, groups).
const SHAPES: [(usize, usize, &[i64]); 4] = [
    (2560, 3840, &[2560, 640, 640]),
    (2560, 2560, &[2560]),
    (2560, 13824, &[6912, 6912]),
    (6912, 2560, &[2560]),
];

/// A job for the pool: `tasks` calls of `f`, handed out by an atomic counter.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: `f` points at a `Sync` closure that `Pool::run` keeps alive while workers use it.
unsafe impl Sync for Job {}
unsafe impl Send for Job {}

struct Pool {
    slot: Arc<std::sync::Mutex<Option<Arc<Job>>>>,
    epoch: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let slot: Arc<std::sync::Mutex<Option<Arc<Job>>>> = Arc::default();
        let epoch = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (1..threads)
            .map(|_| {
                let (slot, epoch, stop) = (slot.clone(), epoch.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Acquire) {
                        let e = epoch.load(Ordering::Acquire);
                        if e == seen {
                            std::hint::spin_loop();
                            continue;
                        }
                        seen = e;
                        let job = slot.lock().unwrap().clone();
                        if let Some(job) = job {
                            run_tasks(&job);
                        }
                    }
                })
            })
            .collect();
        Pool {
            slot,
            epoch,
            stop,
            workers,
        }
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY (of the lifetime erasure): this call waits until every task has run, so no
        // worker calls `f` after it returns.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        *self.slot.lock().unwrap() = Some(job.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        run_tasks(&job);
        while job.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        *self.slot.lock().unwrap() = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn run_tasks(job: &Job) {
    loop {
        let i = job.next.fetch_add(1, Ordering::AcqRel);
        if i >= job.tasks {
            return;
        }
        // SAFETY: `Pool::run` keeps `f` alive until `done` reaches `tasks`.
        unsafe { (*job.f)(i) };
        job.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Sums the bytes of `b` with AVX2, reading its two halves together: two memory streams (one
/// stream per thread reads markedly slower on the development machine, see
/// docs/benchmarks.md; the decode kernel reads three, from the thirds of its task).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    // Each half is whole 64-byte steps; the last < 128 bytes of the chunk are not read.
    let half = b.len() / 2 / 64 * 64;
    let (p, q) = (b.as_ptr(), b.as_ptr().wrapping_add(half));
    for i in 0..half / 64 {
        for j in 0..2 {
            // SAFETY: 64 i + 32 j + 32 <= half, so both loads are inside `b` (q + half =
            // 2 half <= len).
            let (u, v) = unsafe {
                (
                    _mm256_loadu_si256(p.add(64 * i + 32 * j) as *const __m256i),
                    _mm256_loadu_si256(q.add(64 * i + 32 * j) as *const __m256i),
                )
            };
            acc[j] = _mm256_add_epi64(acc[j], _mm256_sad_epu8(u, _mm256_setzero_si256()));
            acc[2 + j] = _mm256_add_epi64(acc[2 + j], _mm256_sad_epu8(v, _mm256_setzero_si256()));
        }
    }
    let s = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut out = [0u64; 4];
    // SAFETY: 32 bytes into a 32-byte array.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
    out.iter().sum()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let tokens = args.get(1).copied().unwrap_or(8);
    let layers = args.get(2).copied().unwrap_or(30);
    let m = args.get(3).copied().unwrap_or(1);
    let path = Path::detect();
    let pool = Pool::new(threads);
    let par = |t: usize, f: &(dyn Fn(usize) + Sync)| pool.run(t, f);

    // Random codes: the kernel's speed does not depend on them, the bytes only must be real.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    struct Layer {
        op: BitLinear,
        w: Vec<u8>,
        c: Vec<f32>,
    }
    let mut stack = Vec::new();
    for _ in 0..layers {
        for &(k, n, groups) in &SHAPES {
            let op = BitLinear::new(k as i64, n as i64, groups, 1).unwrap();
            let mut w = vec![0u8; n * layout::row_bytes(k)];
            for b in w.iter_mut() {
                // Codes 0..=2 in each 2-bit field.
                let r = rnd();
                *b = ((r % 3) | ((r >> 8) % 3) << 2 | ((r >> 16) % 3) << 4 | ((r >> 24) % 3) << 6)
                    as u8;
            }
            stack.push(Layer {
                op,
                w,
                c: vec![0.5; groups.len()],
            });
        }
    }
    let bytes: usize = stack.iter().map(|l| l.w.len()).sum();
    let x: Vec<f32> = (0..m * 6912)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let mut y = vec![0f32; m * 13824];

    let run_kernel = |y: &mut [f32]| {
        for l in &stack {
            let (k, n) = (l.op.k, l.op.n);
            l.op.compute(path, &x[..m * k], m, &l.w, &l.c, &mut y[..m * n], &par)
                .unwrap();
        }
    };
    let chunks: Vec<&[u8]> = stack.iter().flat_map(|l| l.w.chunks(256 * 1024)).collect();
    let sums: Vec<AtomicUsize> = (0..chunks.len()).map(|_| AtomicUsize::new(0)).collect();
    let run_read = || {
        par(chunks.len(), &|i| {
            // SAFETY: AVX2 is checked below before any call.
            let s = unsafe { read_sum(chunks[i]) };
            sums[i].store(s as usize, Ordering::Relaxed);
        });
    };
    assert!(std::arch::is_x86_feature_detected!("avx2"));

    println!(
        "path {}, {threads} threads, {layers} layers, {:.1} MB of weights, M = {m}",
        path.name(),
        bytes as f64 / 1e6
    );
    for round in 0..3 {
        run_read();
        let (t, c) = (Instant::now(), cpu_time::process_seconds());
        for _ in 0..tokens {
            run_read();
        }
        let read = (bytes * tokens) as f64 / t.elapsed().as_secs_f64();
        let read_cpu = (bytes * tokens) as f64 / (cpu_time::process_seconds() - c);
        run_kernel(&mut y);
        let (t, c) = (Instant::now(), cpu_time::process_seconds());
        for _ in 0..tokens {
            run_kernel(&mut y);
        }
        let secs = t.elapsed().as_secs_f64() / tokens as f64;
        let kern = bytes as f64 / secs;
        let kern_cpu = (bytes * tokens) as f64 / (cpu_time::process_seconds() - c);
        println!(
            "round {round}: read (two streams) {:.2} GB/s, kernel {:.2} GB/s ({:.1} ms per step, {:.2} steps/s), kernel / read {:.3}; per CPU second: read {:.2} GB, kernel {:.2} GB",
            read / 1e9,
            kern / 1e9,
            secs * 1e3,
            1.0 / secs,
            kern / read,
            read_cpu / 1e9,
            kern_cpu / 1e9,
        );
    }
    std::hint::black_box(&y);
}
