//! Quantizing a weight stored `[K, N]` (a `MatMul` `B`) where it lies, without a transposed
//! float copy.
//!
//! [`quantize_measured_kn`] gives bit for bit what [`super::quantize_measured`] gives for the
//! transposed (channel-major) weight: the same lossless detection, scales, codes (`[N][K]`) and
//! relative error. A task takes a stripe of a few columns (channels), transposes just those
//! into a buffer that stays in cache (`STRIPE_BYTES`), and runs the channel-major kernels on
//! its rows. Every sum the channel-major path makes runs along one channel, so channels never
//! mix and any stripe width and thread count give the same bits; per-tensor sums are
//! per-channel sums added in channel order, as there.
//!
//! So a `[K, N]` weight never has a transposed float copy: each thread holds one stripe. Passes
//! that need the whole tensor first (per-tensor scale, lossless detection) transpose a stripe
//! again when they come back to it. TWN is not done here ([`quantize_measured_kn`] returns
//! `None`); the caller transposes and uses the channel-major path.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::{
    absmean_channel, band_mode, check_shape_len, clamp_scale, code_slice, detect_group,
    finish_rel_error, group_len, merge_band, scan_band, sign_slice, sq_err, sum_abs, tensor_scale,
    Granularity, Method, QuantConfig, QuantError, Ternary,
};

/// Bytes of `f32` a stripe holds: a few hundred KiB stays in a core's L2 cache.
const STRIPE_BYTES: usize = 192 << 10;

/// [`super::quantize_measured`] of the transpose of `src`, a row-major `[k][n]` weight whose
/// elements `f` turns into `f32` (the identity, little-endian bytes, or half floats). `None`
/// when the method is not absmean: the caller transposes instead.
pub fn quantize_measured_kn<S, F>(
    src: &[S],
    k: usize,
    n: usize,
    f: F,
    cfg: &QuantConfig,
) -> Option<Result<(Ternary, f64), QuantError>>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    quantize_measured_kn_striped(src, k, n, f, cfg, stripe_width(k))
}

/// [`quantize_measured_kn`] with `width` channels per stripe (tests check that it does not
/// matter).
#[doc(hidden)]
pub fn quantize_measured_kn_striped<S, F>(
    src: &[S],
    k: usize,
    n: usize,
    f: F,
    cfg: &QuantConfig,
    width: usize,
) -> Option<Result<(Ternary, f64), QuantError>>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    if cfg.method != Method::AbsMean {
        return None;
    }
    let m = Kn { src, k, n, f: &f };
    Some(run(&m, cfg, width.clamp(1, n.max(1))))
}

/// Channels per stripe: `STRIPE_BYTES` of them, at least 16 (whole 64-byte lines of a source
/// row), a multiple of 16.
fn stripe_width(k: usize) -> usize {
    (STRIPE_BYTES / (4 * k.max(1))).max(16).next_multiple_of(16)
}

/// The source matrix: `k` rows of `n` elements.
struct Kn<'a, S, F> {
    src: &'a [S],
    k: usize,
    n: usize,
    f: &'a F,
}

impl<S: Copy, F: Fn(S) -> f32> Kn<'_, S, F> {
    #[inline]
    fn at(&self, r: usize, c: usize) -> f32 {
        (self.f)(self.src[r * self.n + c])
    }

    /// Channels `c0..c0 + w` as `w` rows of `k` into `buf`, eight source rows at a time.
    fn load(&self, c0: usize, w: usize, buf: &mut Vec<f32>) {
        let (k, n) = (self.k, self.n);
        buf.clear();
        buf.resize(w * k, 0.0);
        let k8 = k - k % 8;
        for r0 in (0..k8).step_by(8) {
            let rows: [&[S]; 8] = std::array::from_fn(|i| &self.src[(r0 + i) * n + c0..][..w]);
            for (j, dst) in buf.chunks_exact_mut(k).enumerate() {
                let dst = &mut dst[r0..r0 + 8];
                for i in 0..8 {
                    dst[i] = (self.f)(rows[i][j]);
                }
            }
        }
        for r in k8..k {
            let row = &self.src[r * n + c0..][..w];
            for (dst, &x) in buf.chunks_exact_mut(k).zip(row) {
                dst[r] = (self.f)(x);
            }
        }
    }

    /// The error the channel-major path gives for the first non-finite weight of channel `col`.
    fn non_finite(&self, col: usize) -> QuantError {
        let r = (0..self.k)
            .find(|&r| !self.at(r, col).is_finite())
            .unwrap_or(0);
        QuantError::NonFinite {
            index: col * self.k + r,
            row: col,
            col: r,
            value: self.at(r, col),
        }
    }

    /// The first channel holding a non-finite weight (there is one when this is called).
    fn first_non_finite(&self) -> QuantError {
        let col = (0..self.n)
            .find(|&c| (0..self.k).any(|r| !self.at(r, c).is_finite()))
            .unwrap_or(0);
        self.non_finite(col)
    }
}

/// One stripe's share of the outputs.
struct Share<'a> {
    /// First channel.
    c0: usize,
    /// Channel-major codes, `w` rows of `k`.
    codes: &'a mut [i8],
    /// Per-channel `(err, norm)` sums.
    parts: &'a mut [(f64, f64)],
    /// `gpc` scales per channel (empty when the pass has no per-channel scales).
    scales: &'a mut [f32],
    /// The stripe's weights, channel-major, once loaded.
    buf: &'a mut Vec<f32>,
}

/// Runs `task` on every stripe of `width` channels in parallel, each with its own buffer.
fn stripes<S, F, R>(
    m: &Kn<S, F>,
    width: usize,
    gpc: usize,
    codes: &mut [i8],
    parts: &mut [(f64, f64)],
    scales: &mut [f32],
    task: impl Fn(Share) -> R + Sync,
) -> Vec<R>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
    R: Send,
{
    let count = m.n.div_ceil(width);
    let scale_shares: Vec<&mut [f32]> = if scales.is_empty() {
        (0..count).map(|_| &mut [][..]).collect()
    } else {
        scales.chunks_mut(width * gpc).collect()
    };
    codes
        .par_chunks_mut(width * m.k)
        .zip(parts.par_chunks_mut(width))
        .zip(scale_shares)
        .enumerate()
        .map_init(Vec::new, |buf, (i, ((codes, parts), scales))| {
            task(Share {
                c0: i * width,
                codes,
                parts,
                scales,
                buf,
            })
        })
        .collect()
}

fn run<S, F>(m: &Kn<S, F>, cfg: &QuantConfig, width: usize) -> Result<(Ternary, f64), QuantError>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    let (n, k) = (m.n, m.k);
    check_shape_len(m.src.len(), n, k)?;
    cfg.validate()?;
    let tol = f64::from(cfg.lossless_rel_tol);
    let mut codes = vec![0i8; n * k];
    let mut parts = vec![(0f64, 0f64); n];
    if let Some(a) = detect_tensor(m, tol, width, &mut codes, &mut parts) {
        return Ok(finish(m, codes, Granularity::Tensor, vec![a], true, &parts));
    }
    let mut order = vec![Granularity::Channel];
    if let Granularity::Group(g) = cfg.granularity {
        if g < k {
            order.push(cfg.granularity);
        }
    }
    for gran in order {
        let mut scales = vec![0f32; gran.scale_count(n, k)];
        if detect_grouped(m, gran, tol, width, &mut codes, &mut scales, &mut parts) {
            return Ok(finish(m, codes, gran, scales, true, &parts));
        }
    }
    let gran = cfg.granularity;
    let scales = absmean(m, gran, cfg.threshold, width, &mut codes, &mut parts)?;
    Ok(finish(m, codes, gran, scales, false, &parts))
}

fn finish<S, F>(
    m: &Kn<S, F>,
    codes: Vec<i8>,
    granularity: Granularity,
    scales: Vec<f32>,
    lossless: bool,
    parts: &[(f64, f64)],
) -> (Ternary, f64) {
    let t = Ternary {
        n: m.n,
        k: m.k,
        codes,
        granularity,
        scales,
        lossless,
    };
    (t, finish_rel_error(parts))
}

/// Lossless per-tensor detection (`quant::detect_tensor`): the scale, with codes and error
/// parts filled in, or `None`.
fn detect_tensor<S, F>(
    m: &Kn<S, F>,
    tol: f64,
    width: usize,
    codes: &mut [i8],
    parts: &mut [(f64, f64)],
) -> Option<f32>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    let (n, k) = (m.n, m.k);
    let stop = AtomicBool::new(false);
    let bands = stripes(m, width, 1, codes, parts, &mut [], |sh| {
        if stop.load(Ordering::Relaxed) {
            return Err(());
        }
        let w = sh.parts.len();
        m.load(sh.c0, w, sh.buf);
        let mut band: Option<(f32, f32)> = None;
        for row in sh.buf.chunks_exact(k) {
            let Ok(b) = scan_band(row, tol) else {
                stop.store(true, Ordering::Relaxed);
                return Err(());
            };
            band = merge_band(band, b);
        }
        Ok(band)
    });
    let bands: Vec<Option<(f32, f32)>> = bands.into_iter().collect::<Result<_, _>>().ok()?;
    // As `quant::detect_tensor`: the most frequent bit pattern in the narrow band.
    let rows = (super::MIN_TASK_ELEMS / n.max(1)).max(1);
    let a = tensor_scale(&bands, tol, |lo, hi| {
        band_mode(m.src, rows * n, m.f, lo, hi)
    })?;
    stripes(m, width, 1, codes, parts, &mut [], |sh| {
        m.load(sh.c0, sh.parts.len(), sh.buf);
        let rows = sh.buf.chunks_exact(k).zip(sh.codes.chunks_exact_mut(k));
        for ((x, c), p) in rows.zip(sh.parts.iter_mut()) {
            sign_slice(x, c);
            // `quant::rel_error` adds each group's sums to zero.
            let (e, nn) = sq_err(x, c, a);
            *p = (0.0 + e, 0.0 + nn);
        }
    });
    Some(a)
}

/// Lossless detection per channel or per group (`quant::detect_grouped`, then the error as
/// `quant::rel_error` measures it): true when every group holds only `{-a, 0, +a}`, with
/// codes, scales and error parts filled in.
fn detect_grouped<S, F>(
    m: &Kn<S, F>,
    gran: Granularity,
    tol: f64,
    width: usize,
    codes: &mut [i8],
    scales: &mut [f32],
    parts: &mut [(f64, f64)],
) -> bool
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    let k = m.k;
    let g = group_len(gran, k);
    let gpc = k.div_ceil(g);
    let stop = AtomicBool::new(false);
    let ok = stripes(m, width, gpc, codes, parts, scales, |sh| {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        m.load(sh.c0, sh.parts.len(), sh.buf);
        let mut scratch = Vec::new();
        let rows = sh.buf.chunks_exact(k).zip(sh.codes.chunks_exact_mut(k));
        for (((x, c), s), p) in rows
            .zip(sh.scales.chunks_exact_mut(gpc))
            .zip(sh.parts.iter_mut())
        {
            let (mut err, mut norm) = (0f64, 0f64);
            for ((xg, cg), sg) in x.chunks(g).zip(c.chunks_mut(g)).zip(s.iter_mut()) {
                let Ok(a) = detect_group(xg, tol, &mut scratch) else {
                    stop.store(true, Ordering::Relaxed);
                    return false;
                };
                *sg = a;
                sign_slice(xg, cg);
                let (e, nn) = sq_err(xg, cg, a);
                err += e;
                norm += nn;
            }
            *p = (err, norm);
        }
        true
    });
    ok.into_iter().all(|b| b)
}

/// Absmean quantization (`quant::absmean`): fills codes and error parts, returns the scales.
fn absmean<S, F>(
    m: &Kn<S, F>,
    gran: Granularity,
    thr: f32,
    width: usize,
    codes: &mut [i8],
    parts: &mut [(f64, f64)],
) -> Result<Vec<f32>, QuantError>
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    let (n, k) = (m.n, m.k);
    if gran == Granularity::Tensor {
        // Per-channel sums, then their total in channel order, then a second pass for codes.
        let sums = stripes(m, width, 1, codes, parts, &mut [], |sh| {
            m.load(sh.c0, sh.parts.len(), sh.buf);
            sh.buf.chunks_exact(k).map(sum_abs).collect::<Vec<f64>>()
        });
        let mut total = 0f64;
        for (col, &s) in sums.iter().flatten().enumerate() {
            if !s.is_finite() {
                return Err(m.non_finite(col));
            }
            total += s;
        }
        let a = clamp_scale(total / (n as f64 * k as f64));
        let inv = 1.0 / a;
        stripes(m, width, 1, codes, parts, &mut [], |sh| {
            m.load(sh.c0, sh.parts.len(), sh.buf);
            let rows = sh.buf.chunks_exact(k).zip(sh.codes.chunks_exact_mut(k));
            for ((x, c), p) in rows.zip(sh.parts.iter_mut()) {
                code_slice(x, c, inv, thr);
                *p = sq_err(x, c, a);
            }
        });
        return Ok(vec![a]);
    }
    let g = group_len(gran, k);
    let gpc = k.div_ceil(g);
    let mut scales = vec![0f32; n * gpc];
    let bad = stripes(m, width, gpc, codes, parts, &mut scales, |sh| {
        m.load(sh.c0, sh.parts.len(), sh.buf);
        let rows = sh.buf.chunks_exact(k).zip(sh.codes.chunks_exact_mut(k));
        for (((x, c), s), p) in rows
            .zip(sh.scales.chunks_exact_mut(gpc))
            .zip(sh.parts.iter_mut())
        {
            match absmean_channel(x, c, s, g, thr) {
                Some(en) => *p = en,
                None => return true,
            }
        }
        false
    });
    if bad.into_iter().any(|b| b) {
        return Err(m.first_non_finite());
    }
    Ok(scales)
}
