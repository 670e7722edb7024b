//! Progress of `convert` on stderr: a bar on a terminal (weights done / total, bytes,
//! throughput, time left), a plain line every few seconds otherwise, nothing with `--quiet`.
//! Nothing shows for work that ends within a second.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Work shorter than this shows nothing.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// Plain log lines (not a terminal) come at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

enum Mode {
    Quiet,
    Bar(ProgressBar),
    Log(Mutex<Instant>),
}

/// Counts bytes of the input done (converted weights, then the payloads passed through as the
/// output is written) against the input's size.
pub struct ConvertProgress {
    mode: Mode,
    start: Instant,
    total_bytes: u64,
    bytes: AtomicU64,
    weights_total: AtomicUsize,
    weights_done: AtomicUsize,
    shown: AtomicBool,
    writing: AtomicBool,
}

impl ConvertProgress {
    /// `total_bytes`: the input's size (model file plus external data).
    pub fn new(total_bytes: u64, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("converting");
            Mode::Bar(bar)
        } else {
            Mode::Log(Mutex::new(Instant::now()))
        };
        ConvertProgress {
            mode,
            start: Instant::now(),
            total_bytes,
            bytes: AtomicU64::new(0),
            weights_total: AtomicUsize::new(0),
            weights_done: AtomicUsize::new(0),
            shown: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        }
    }

    fn weights_msg(&self) -> String {
        format!(
            "{}/{} weights",
            self.weights_done.load(Ordering::Relaxed),
            self.weights_total.load(Ordering::Relaxed)
        )
    }

    fn update(&self) {
        let elapsed = self.start.elapsed();
        let bytes = self.bytes.load(Ordering::Relaxed).min(self.total_bytes);
        match &self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                bar.set_position(bytes);
                bar.set_message(self.weights_msg());
                if elapsed >= SHOW_AFTER && !self.shown.swap(true, Ordering::Relaxed) {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
            }
            Mode::Log(last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if elapsed < SHOW_AFTER
                    || last.elapsed() < LOG_EVERY && self.shown.load(Ordering::Relaxed)
                {
                    return;
                }
                *last = Instant::now();
                self.shown.store(true, Ordering::Relaxed);
                let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-9);
                let left = if bytes > 0 {
                    let secs = (self.total_bytes - bytes) as f64 / rate;
                    format!(
                        ", about {} left",
                        HumanDuration(Duration::from_secs_f64(secs))
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "{}: {}, {} of {} ({}/s){left}",
                    if self.writing.load(Ordering::Relaxed) {
                        "writing"
                    } else {
                        "converting"
                    },
                    self.weights_msg(),
                    HumanBytes(bytes),
                    HumanBytes(self.total_bytes),
                    HumanBytes(rate as u64),
                );
            }
        }
    }

    /// The output is being written: later bytes are payloads copied through.
    pub fn writing(&self) {
        self.writing.store(true, Ordering::Relaxed);
        if let Mode::Bar(bar) = &self.mode {
            bar.set_prefix("writing");
        }
        self.update();
    }

    /// `n` more bytes of the input were written to the output.
    pub fn written(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.update();
    }

    /// Clears the bar; in log mode, a last line when any was shown.
    pub fn finish(&self) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => bar.finish_and_clear(),
            Mode::Log(_) => {
                if self.shown.load(Ordering::Relaxed) {
                    let elapsed = self.start.elapsed();
                    let bytes = self.bytes.load(Ordering::Relaxed);
                    eprintln!(
                        "done: {}, {} in {:.2} s ({}/s)",
                        self.weights_msg(),
                        HumanBytes(bytes),
                        elapsed.as_secs_f64(),
                        HumanBytes((bytes as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
                    );
                }
            }
        }
    }
}

impl bitnet_quant::convert::Progress for ConvertProgress {
    fn queued(&self, weights: usize, _bytes: u64) {
        self.weights_total.fetch_add(weights, Ordering::Relaxed);
        self.update();
    }

    fn converted(&self, _weight: &str, bytes: u64) {
        self.weights_done.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.update();
    }
}
