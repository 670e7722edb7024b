//! The `BitLinear` op's semantics, free of ONNX Runtime types: what it checks and computes.
//!
//! Inputs: `X` float32 `[..., K]`; `W` uint8 `[N, row_bytes(K)]` in [`crate::layout`];
//! `C` float32 `[G]`, one constant per column group. Attributes: `K`, `N`, `group_sizes`
//! (G positive counts summing to `N`: the fused projections, q/k/v or gate/up, each with its
//! own constant), `divide` (1: `y / (s * c)`, `BitLinear`'s order; 0: `(y / s) * c`,
//! `AutoBitLinear`'s), and optionally `glu` (0, the default: none; 1: the two groups are a
//! gated MLP's gate and up projections, and the op returns `relu(gate)^2 * up`, BitNet's
//! squared-ReLU GLU, as the stock graph's `Relu`, `Mul(r, r)` and `Mul(., up)` compute it, one
//! float operation for one). Output: `Y` float32 `[..., N]` (`[..., N / 2]` with `glu`).
//!
//! Per token: the codes and scale `s` of [`crate::quant::quantize_row`], the exact `i32`
//! product `y` of the codes with the ternary weights, then `y` as float32 rescaled in the
//! chosen order, the same float operations `build`'s stock graph performs after its
//! `MatMulNBits` (whose output is that same exact integer, see `bitnet-build`'s decoder).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::kernel::{self, Path};
use crate::layout;
use crate::quant::quantize_row;

/// Largest accepted `K`: the integer product stays below 2^24, so it converts to float32
/// exactly, as the stock graph's float `MatMulNBits` output does (127 * 132104 > 2^24).
pub const MAX_K: usize = 132_000;

/// Output rows (weight rows) per parallel task with several tokens.
const ROWS_PER_TASK: usize = 64;
/// Output rows per parallel task with one token (decode): longer tasks keep the AVX2 path's row
/// streams (rows i, i + third and i + 2 thirds of the task) long and far apart; with 256,
/// 2B-4T's layers split into 10 to 54 tasks, enough to balance a few threads. Measured per CPU
/// second on 80 MB of rows (`examples/kernel_speed.rs` and variants, with two streams): tasks
/// of 256 rows 15-17.6 GB, of 64 rows 12.9-15 GB; with three streams, 512 rows measured within
/// the shared machine's noise of 256 (docs/benchmarks.md).
const DECODE_ROWS_PER_TASK: usize = 256;

/// Why the op refused its attributes or inputs.
#[derive(Debug, PartialEq, Eq)]
pub struct OpError(pub String);

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bitnet.onnx BitLinear: {}", self.0)
    }
}

impl std::error::Error for OpError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OpError> {
    Err(OpError(msg.into()))
}

/// How the layer's constant is applied (the order of the float operations matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `y / (s * c)`.
    Divide,
    /// `(y / s) * c`.
    Multiply,
}

/// The activation the op applies to its output, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glu {
    /// The projections' outputs as they are.
    None,
    /// `relu(gate)^2 * up`, gate the first group, up the second: `max(g, 0)`, its square, times
    /// `u` (three float32 roundings, as the stock graph's three nodes).
    Relu2,
}

/// One op instance, its attributes checked.
#[derive(Clone, Debug)]
pub struct BitLinear {
    pub k: usize,
    pub n: usize,
    /// Group of each output column.
    column_group: Vec<u32>,
    group_sizes: Vec<usize>,
    pub groups: usize,
    pub order: Order,
    pub glu: Glu,
}

impl BitLinear {
    pub fn new(k: i64, n: i64, group_sizes: &[i64], divide: i64) -> Result<Self, OpError> {
        if k < 1 || k as u64 > MAX_K as u64 {
            return err(format!("attribute K = {k} is outside 1..={MAX_K}"));
        }
        if n < 1 || n > u32::MAX as i64 {
            return err(format!("attribute N = {n} is not a positive column count"));
        }
        if group_sizes.is_empty() {
            return err("attribute group_sizes is empty");
        }
        let mut column_group = Vec::with_capacity(n as usize);
        let mut total = 0i64;
        for (g, &c) in group_sizes.iter().enumerate() {
            if c < 1 || c > n - total {
                return err(format!(
                    "attribute group_sizes {group_sizes:?} does not split N = {n} into positive counts"
                ));
            }
            total += c;
            column_group.extend(std::iter::repeat_n(g as u32, c as usize));
        }
        if total != n {
            return err(format!(
                "attribute group_sizes {group_sizes:?} sums to {total}, not N = {n}"
            ));
        }
        let order = match divide {
            1 => Order::Divide,
            0 => Order::Multiply,
            d => return err(format!("attribute divide = {d} is neither 0 nor 1")),
        };
        Ok(BitLinear {
            k: k as usize,
            n: n as usize,
            column_group,
            group_sizes: group_sizes.iter().map(|&c| c as usize).collect(),
            groups: group_sizes.len(),
            order,
            glu: Glu::None,
        })
    }

    /// The `glu` attribute: 0 none, 1 `relu(gate)^2 * up` over two groups of equal size.
    pub fn with_glu(mut self, glu: i64) -> Result<Self, OpError> {
        self.glu = match glu {
            0 => Glu::None,
            1 if self.group_sizes.len() == 2 && self.group_sizes[0] == self.group_sizes[1] => {
                Glu::Relu2
            }
            1 => {
                return err(format!(
                "attribute glu = 1 needs two groups of equal size (gate, up), not group_sizes {:?}",
                self.group_sizes
            ))
            }
            g => return err(format!("attribute glu = {g} is neither 0 nor 1")),
        };
        Ok(self)
    }

    /// Output columns: `N`, or `N / 2` with a GLU.
    pub fn outputs(&self) -> usize {
        match self.glu {
            Glu::None => self.n,
            Glu::Relu2 => self.n / 2,
        }
    }

    /// Checks the inputs' shapes; returns the number of tokens `M` and the output shape.
    pub fn check(&self, x: &[i64], w: &[i64], c: &[i64]) -> Result<(usize, Vec<i64>), OpError> {
        let Some((&last, lead)) = x.split_last() else {
            return err("input X is a scalar, expected [..., K]");
        };
        if last != self.k as i64 {
            return err(format!(
                "input X has last dimension {last}, the op was built for K = {}",
                self.k
            ));
        }
        let mut m = 1usize;
        for &d in lead {
            let Ok(d) = usize::try_from(d) else {
                return err(format!("input X has a negative dimension in {x:?}"));
            };
            m = m
                .checked_mul(d)
                .ok_or_else(|| OpError(format!("input X's shape {x:?} overflows")))?;
        }
        let rb = layout::row_bytes(self.k) as i64;
        if w != [self.n as i64, rb] {
            return err(format!(
                "input W has shape {w:?}, expected [{}, {rb}] (N = {}, K = {} packed 4 per byte in blocks of {})",
                self.n,
                self.n,
                self.k,
                layout::BLOCK
            ));
        }
        if c != [self.groups as i64] {
            return err(format!(
                "input C has shape {c:?}, expected [{}] (one constant per group)",
                self.groups
            ));
        }
        let mut out = lead.to_vec();
        out.push(self.outputs() as i64);
        Ok((m, out))
    }

    /// Computes `Y` for `m` tokens, its tasks run by `par` (see [`Parallel`]) on any threads.
    /// Lengths must match [`BitLinear::check`]'s shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        path: Path,
        x: &[f32],
        m: usize,
        w: &[u8],
        c: &[f32],
        y: &mut [f32],
        par: Parallel<'_>,
    ) -> Result<(), OpError> {
        if self.glu == Glu::None {
            return self.project(path, x, m, w, c, y, par);
        }
        if y.len() != m * self.outputs() {
            return err("internal: buffer lengths do not match the checked shapes");
        }
        let mut full = vec![0f32; m * self.n];
        self.project(path, x, m, w, c, &mut full, par)?;
        let half = self.n / 2;
        for (yr, fr) in y.chunks_exact_mut(half).zip(full.chunks_exact(self.n)) {
            let (gate, up) = fr.split_at(half);
            for ((o, &g), &u) in yr.iter_mut().zip(gate).zip(up) {
                // ONNX Relu is max(x, 0); then Mul(r, r) and Mul(r2, u), each rounded.
                let r = if g > 0.0 { g } else { 0.0 };
                let r2 = r * r;
                *o = r2 * u;
            }
        }
        Ok(())
    }

    /// The projections' outputs `[m, N]` (no GLU).
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        path: Path,
        x: &[f32],
        m: usize,
        w: &[u8],
        c: &[f32],
        y: &mut [f32],
        par: Parallel<'_>,
    ) -> Result<(), OpError> {
        let (k, n) = (self.k, self.n);
        let kp = layout::padded_k(k);
        let rb = kp / 4;
        if x.len() != m * k || w.len() != n * rb || c.len() != self.groups || y.len() != m * n {
            return err("internal: buffer lengths do not match the checked shapes");
        }
        if m == 0 {
            return Ok(());
        }
        // Codes, scale and code sum per token (the scale is None for a non-finite token).
        let mut acts = vec![0i8; m * kp];
        let mut scales = Vec::with_capacity(m);
        for (xr, qr) in x.chunks_exact(k).zip(acts.chunks_exact_mut(kp)) {
            scales.push(quantize_row(xr, qr));
        }
        let per_task = if m == 1 {
            DECODE_ROWS_PER_TASK
        } else {
            ROWS_PER_TASK
        };
        let task = |r0: usize, out: &mut [f32]| {
            let rows = out.len() / m;
            let mut dots = vec![0i32; rows * m];
            kernel::dots(path, &w[r0 * rb..(r0 + rows) * rb], kp, &acts, m, &mut dots);
            if m == 1 {
                // One token: the same float operations over runs of columns of one group, in
                // loops the compiler vectorizes (lane by lane the same IEEE operations).
                let Some((s, sum)) = scales[0] else {
                    out.fill(f32::NAN);
                    return;
                };
                let mut r = 0;
                while r < rows {
                    let g = self.column_group[r0 + r];
                    let mut end = r + 1;
                    while end < rows && self.column_group[r0 + end] == g {
                        end += 1;
                    }
                    let cst = c[g as usize];
                    let (o, d) = (&mut out[r..end], &dots[r..end]);
                    match self.order {
                        Order::Divide => {
                            let den = s * cst;
                            for (o, &d) in o.iter_mut().zip(d) {
                                *o = (d - sum) as f32 / den;
                            }
                        }
                        Order::Multiply => {
                            for (o, &d) in o.iter_mut().zip(d) {
                                *o = ((d - sum) as f32 / s) * cst;
                            }
                        }
                    }
                    r = end;
                }
                return;
            }
            for r in 0..rows {
                let cst = c[self.column_group[r0 + r] as usize];
                for t in 0..m {
                    out[r * m + t] = match scales[t] {
                        Some((s, sum)) => {
                            let yi = (dots[r * m + t] - sum) as f32;
                            match self.order {
                                Order::Divide => yi / (s * cst),
                                Order::Multiply => (yi / s) * cst,
                            }
                        }
                        None => f32::NAN,
                    };
                }
            }
        };
        if !row_tasks(n, m, per_task, y, par, &task) {
            return err("internal: a parallel task failed");
        }
        Ok(())
    }
}

/// Runs `task(r0, out)` for the output rows of an `[m, n]` result `y` in tasks of `per_task`
/// rows: `out` is the task's rows `r0 ..` of a column-major copy (`out[r * m + t]`; for
/// `m = 1` that is `y` itself), written back in `y`'s order when every task has run. Each
/// task's slice sits behind its own lock, taken once, so the tasks share nothing mutable; a
/// panic in a task (a broken invariant) is caught, as it must not unwind into the runtime's
/// threads. Returns whether every task ran to its end. Both ops share this.
pub(crate) fn row_tasks(
    n: usize,
    m: usize,
    per_task: usize,
    y: &mut [f32],
    par: Parallel<'_>,
    task: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> bool {
    let mut transposed = if m == 1 {
        Vec::new()
    } else {
        vec![0f32; n * m]
    };
    let target: &mut [f32] = if m == 1 { y } else { &mut transposed };
    let tasks: Vec<Mutex<&mut [f32]>> = target.chunks_mut(per_task * m).map(Mutex::new).collect();
    let failed = AtomicBool::new(false);
    let run = |i: usize| {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Some(slot) = tasks.get(i) else {
                return true;
            };
            let Ok(mut out) = slot.lock() else {
                return false;
            };
            task(i * per_task, &mut out);
            true
        }));
        if !matches!(ok, Ok(true)) {
            failed.store(true, Ordering::Relaxed);
        }
    };
    par(tasks.len(), &run);
    drop(tasks);
    if failed.load(Ordering::Relaxed) {
        return false;
    }
    if m > 1 {
        for (col, vals) in transposed.chunks_exact(m).enumerate() {
            for (t, &v) in vals.iter().enumerate() {
                y[t * n + col] = v;
            }
        }
    }
    true
}

/// How the op runs its tasks: `par(tasks, f)` calls `f(i)` once for each `i` in `0..tasks`.
pub type Parallel<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// Runs every task on the calling thread (tests, and runtimes without a thread pool).
pub fn serial(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..tasks).for_each(f);
}
