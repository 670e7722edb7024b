//! Quantizing a weight stored `[K, N]` (a `MatMul` `B`) where it lies, a band of rows at a
//! time, without a float copy of it.
//!
//! [`quantize_measured_kn`] gives bit for bit what [`super::quantize_measured`] gives for the
//! transposed (channel-major) weight: the same lossless detection, scales, codes (`[N][K]`) and
//! relative error.
//!
//! The weight is read in *bands* of whole rows (about 512 KiB of it), top to bottom, in two
//! passes, as [`Rows`] says: read into a buffer by the caller (from the file, so its pages never
//! become resident; the next band is read while the tiles of this one run), or where they lie,
//! the caller being told after each band so it can drop their memory-mapped pages. Whatever the
//! weight's size, only a band or two of it is in memory. Inside a band, tasks take *tiles* of a
//! few channels, transpose them into a buffer that stays in cache, and run the channel-major
//! kernels on each channel's part of the band.
//!
//! * Pass 1 gathers statistics: each channel's band of non-zero magnitudes (lossless
//!   detection), its `sum |w|` (absmean), and, when the configuration has groups, each group's
//!   lossless scale and absmean scale (a band holds whole groups).
//! * Between the passes the granularity is chosen as `quantize_measured` chooses it (lossless
//!   per tensor, per channel, per group, else absmean). A scale that needs the most frequent
//!   magnitude of a jittered lossless tensor or channel reads the weight once more. Lossless
//!   detection per `QuantConfig::lossless_group` (when it is not the configured group) is a
//!   pass of its own between them, run only when nothing before it was exact and pass 1's
//!   probe did not rule it out (the first group of the first channel found not ternary in the
//!   first band, which for a float weight is the first channel read); it stops at the first
//!   group that is not ternary. So weights exact per tensor or channel and float weights cost
//!   what they did without it, and a weight exact per group is read three times (statistics,
//!   groups, codes) instead of two.
//! * Pass 2 writes the codes and measures the error.
//!
//! Bit-identity: every sum runs along one channel in the channel-major order. A channel's
//! four-lane sums (`quant::abs_lanes`, `quant::ErrLanes`) carry over from band to band, and a
//! band holds a multiple of four rows, so each element lands in the lane it lands in when the
//! channel is summed at once; per-tensor totals are per-channel sums added in channel order.
//! Bands, tiles and the thread count change nothing (property-tested in `tests/quant_kn.rs`).
//! TWN is not done here ([`quantize_measured_kn`] returns `None`); the caller transposes.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::{
    abs_lanes, abs_total, add_hist, band_hist, band_ok, check_shape_len, clamp_scale, code_err,
    detect_group, finish_rel_error, hist_mode, merge_band, mode_of_sorted, scan_band, sum_abs,
    tensor_scale, within_tol, CodeRule, ErrLanes, Granularity, Method, QuantConfig, QuantError,
    Spare, Ternary, MIN_TASK_ELEMS, SCALE_EPS,
};

/// Bytes of `f32` a band holds (rounded to whole rows, at least `MIN_BAND_ROWS` of them). With
/// bands read from the file (and placed as [`Rows::Read`] says), fewer, longer bands mean
/// fewer waits between them: 512 KiB with 64 rows at least beat 128 KiB with 16 rows on large
/// layers and tied on small ones (docs/benchmarks.md, "Tuning constants").
const BAND_BYTES: usize = 512 << 10;
/// Rows a band holds at least, so each channel's part is long enough for the kernels.
const MIN_BAND_ROWS: usize = 64;
/// Bytes of `f32` a task transposes at a time: stays in a core's L2 cache.
const TILE_BYTES: usize = 128 << 10;

/// How the weight is cut: `rows` per band (rounded up to a multiple of four, and of the group
/// length when there are groups) and `width` channels per tile. The result does not depend on
/// either.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub rows: usize,
    pub width: usize,
}

impl Tiling {
    /// About `BAND_BYTES` per band, split in at least one tile per thread.
    fn auto(k: usize, n: usize) -> Tiling {
        let rows = (BAND_BYTES / (4 * n.max(1))).max(MIN_BAND_ROWS);
        let bytes = rows.min(k) * n * 4;
        let tiles = rayon::current_num_threads().max(bytes.div_ceil(TILE_BYTES));
        Tiling {
            rows,
            width: n.div_ceil(tiles).next_multiple_of(16),
        }
    }
}

/// How [`quantize_measured_kn`] gets each band of rows of the weight.
pub enum Rows<'a, S> {
    /// Where they lie in `src`. The function is told each band once a pass has read it, so it
    /// can drop the band's memory-mapped pages (a later pass may read the rows again).
    InPlace(&'a (dyn Fn(Range<usize>) + Sync)),
    /// Read into a buffer: `read` fills the slice with the weight's elements at the given
    /// row-major indices, or says why it could not. `page_offset` is where element 0 lies in
    /// the file it is read from, modulo 4096: each buffer is placed at the same offset in its
    /// page (or a few bytes before), because the kernel copies a file's pages into a buffer
    /// that starts 1 to 31 bytes further into its page 4-5x slower (2.3-2.6 against 11.7-13
    /// GB/s on this project's machine, `pread` of 512 KiB blocks). `src` is then read only to
    /// report a non-finite weight.
    Read {
        read: &'a ReadRows<'a, S>,
        page_offset: usize,
    },
}

/// The reader of [`Rows::Read`].
pub type ReadRows<'a, S> = dyn Fn(Range<usize>, &mut [S]) -> Result<(), String> + Sync + 'a;

/// A band read into memory: `buf[start..]` holds it. The buffer comes from and goes back to
/// `spare` (only [`Rows::Read`] needs one).
struct BandBuf<'a, S: Send + 'static> {
    buf: Vec<S>,
    start: usize,
    spare: &'a Spare,
}

impl<'a, S: Send + 'static> BandBuf<'a, S> {
    /// Elements a buffer needs for `len` placed anywhere in a page.
    fn len(len: usize) -> usize {
        len + 4096 / std::mem::size_of::<S>().max(1) + 1
    }

    fn new<F>(m: &Kn<'a, S, F>, rows: usize) -> Self {
        let buf = match m.rows {
            Rows::Read { .. } => m.spare.take(BandBuf::<S>::len(rows.min(m.k) * m.n)),
            Rows::InPlace(_) => Vec::new(),
        };
        BandBuf {
            buf,
            start: 0,
            spare: m.spare,
        }
    }
}

impl<S: Send + 'static> Drop for BandBuf<'_, S> {
    fn drop(&mut self) {
        self.spare.give(std::mem::take(&mut self.buf));
    }
}

/// [`super::quantize_measured`] of the transpose of `src`, a row-major `[k][n]` weight whose
/// elements `f` turns into `f32` (the identity, little-endian bytes, or half floats), its rows
/// got as `rows` says. Its buffers (the codes, bands read) are taken from `spare` (the codes
/// can be given back once used), and band buffers given back. `None` when the method is not
/// absmean: the caller transposes instead.
pub fn quantize_measured_kn<S, F>(
    src: &[S],
    k: usize,
    n: usize,
    f: F,
    cfg: &QuantConfig,
    rows: Rows<'_, S>,
    spare: &Spare,
) -> Option<Result<(Ternary, f64), QuantError>>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    quantize_measured_kn_tiled(src, k, n, f, cfg, rows, spare, Tiling::auto(k, n))
}

/// [`quantize_measured_kn`] cut as `tiling` says (tests check that it does not matter).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn quantize_measured_kn_tiled<S, F>(
    src: &[S],
    k: usize,
    n: usize,
    f: F,
    cfg: &QuantConfig,
    rows: Rows<'_, S>,
    spare: &Spare,
    tiling: Tiling,
) -> Option<Result<(Ternary, f64), QuantError>>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    if cfg.method != Method::AbsMean {
        return None;
    }
    let m = Kn {
        src,
        k,
        n,
        f: &f,
        rows,
        spare,
    };
    Some(run(&m, cfg, tiling))
}

/// The source matrix: `k` rows of `n` elements.
struct Kn<'a, S, F> {
    src: &'a [S],
    k: usize,
    n: usize,
    f: &'a F,
    rows: Rows<'a, S>,
    spare: &'a Spare,
}

impl<S: Copy + Default + Send + 'static, F: Fn(S) -> f32> Kn<'_, S, F> {
    #[inline]
    fn at(&self, r: usize, c: usize) -> f32 {
        (self.f)(self.src[r * self.n + c])
    }

    /// Gets rows `r` ready for [`Kn::band`]: reads them into `b` unless they are read in place.
    fn fetch(&self, r: Range<usize>, b: &mut BandBuf<S>) -> Result<(), QuantError> {
        if let Rows::Read {
            read, page_offset, ..
        } = self.rows
        {
            const PAGE: usize = 4096;
            let size = std::mem::size_of::<S>().max(1);
            let len = r.len() * self.n;
            // Grown, never shrunk (a kept buffer is not written twice): the read fills it.
            let need = BandBuf::<S>::len(len);
            if b.buf.len() < need {
                b.buf.resize(need, S::default());
            }
            let at = b.buf.as_ptr() as usize % PAGE;
            let want = (page_offset + r.start * self.n * size) % PAGE;
            // The largest start whose address is at most `want` within a page.
            b.start = (want + PAGE - at) % PAGE / size;
            let dst = &mut b.buf[b.start..b.start + len];
            read(r.start * self.n..r.end * self.n, dst).map_err(QuantError::Read)?;
        }
        Ok(())
    }

    /// Rows `r` (`r.len()` rows of `n`), fetched into `b` by [`Kn::fetch`].
    fn band<'b>(&'b self, r: Range<usize>, b: &'b BandBuf<S>) -> &'b [S] {
        let len = r.len() * self.n;
        match self.rows {
            Rows::InPlace(_) => &self.src[r.start * self.n..r.end * self.n],
            Rows::Read { .. } => &b.buf[b.start..b.start + len],
        }
    }

    /// A pass is done with rows `r`.
    fn done(&self, r: Range<usize>) {
        if let Rows::InPlace(done) = self.rows {
            done(r);
        }
    }

    /// Rows `0..rows` of `band` (rows of `n`), channels `c0..c0 + w`, channel-major (`w` runs of
    /// `rows`), into `buf`, eight source rows at a time.
    fn load(&self, band: &[S], rows: usize, c0: usize, w: usize, buf: &mut Vec<f32>) {
        let n = self.n;
        // Every element is written below.
        buf.resize(w * rows, 0.0);
        let r8 = rows - rows % 8;
        for i0 in (0..r8).step_by(8) {
            let src: [&[S]; 8] = std::array::from_fn(|i| &band[(i0 + i) * n + c0..][..w]);
            for (j, dst) in buf.chunks_exact_mut(rows).enumerate() {
                let dst = &mut dst[i0..i0 + 8];
                for i in 0..8 {
                    dst[i] = (self.f)(src[i][j]);
                }
            }
        }
        for i in r8..rows {
            let row = &band[i * n + c0..][..w];
            for (dst, &x) in buf.chunks_exact_mut(rows).zip(row) {
                dst[i] = (self.f)(x);
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
}

/// How bands and tiles are cut, and the groups.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Rows per band (the last band may be shorter).
    rows: usize,
    /// Channels per tile.
    width: usize,
    /// The group length when the configuration has groups shorter than a channel (a band then
    /// holds whole groups).
    group: Option<usize>,
    /// Groups per channel (1 without groups).
    gpc: usize,
    tol: f64,
    /// The `lossless_group` pass 1 probes (`stats`), when there is one to try after it.
    probe: Option<usize>,
}

impl Plan {
    fn bands(&self, k: usize) -> impl Iterator<Item = Range<usize>> {
        let rows = self.rows;
        (0..k).step_by(rows).map(move |r0| r0..(r0 + rows).min(k))
    }
}

/// What a pass keeps per channel.
#[derive(Debug, Clone, Copy, Default)]
struct Chan {
    /// Band of non-zero magnitudes so far (lossless detection).
    band: Option<(f32, f32)>,
    /// `|w|` lanes, then (after the last band) `sum |w|` of the channel.
    abs: [f64; 4],
    sum: f64,
    /// A weight of the channel is not finite.
    bad: bool,
    /// The channel's scale in pass 2 (without groups).
    scale: f32,
    /// Error lanes, then the channel's `(err, norm)` as `quant::rel_error` sums them.
    err: ErrLanes,
    part: (f64, f64),
}

/// What one task gets: the band `r` of the channels from `c0` on (one per `Chan`), and a
/// buffer to transpose them into (`Kn::load`).
struct Tile<'a> {
    r: Range<usize>,
    last: bool,
    c0: usize,
    buf: &'a mut Vec<f32>,
    chans: &'a mut [Chan],
    /// The tile's part of a per-group array (`w * gpc`), or empty.
    groups: &'a mut [f32],
    /// The tile's part of a second per-group array, or empty.
    groups2: &'a mut [f32],
    /// The tile's channels' codes (`w * k`), or empty.
    codes: &'a mut [i8],
}

thread_local! {
    /// Each thread's transposed tile, reused across tiles and weights.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `v` in `count` parts of `len` (the last may be shorter), or `count` empty parts when `v` is
/// empty.
fn parts<T>(v: &mut [T], len: usize, count: usize) -> Vec<&mut [T]> {
    if v.is_empty() {
        (0..count).map(|_| &mut [][..]).collect()
    } else {
        v.chunks_mut(len).collect()
    }
}

/// One pass: for each band, top to bottom, `task` on each of its tiles in parallel (given the
/// band's rows), while the next band is read; then the band is reported done. The pass ends
/// early, before a band, once `stop` is set.
#[allow(clippy::too_many_arguments)]
fn pass<S, F>(
    m: &Kn<S, F>,
    plan: &Plan,
    chans: &mut [Chan],
    groups: &mut [f32],
    groups2: &mut [f32],
    codes: &mut [i8],
    stop: Option<&AtomicBool>,
    task: impl Fn(&[S], Tile) + Sync,
) -> Result<(), QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let (k, w) = (m.k, plan.width);
    let count = m.n.div_ceil(w);
    let task = &task;
    let bands: Vec<Range<usize>> = plan.bands(k).collect();
    let (mut cur, mut next) = (BandBuf::new(m, plan.rows), BandBuf::new(m, plan.rows));
    if let Some(r) = bands.first() {
        m.fetch(r.clone(), &mut cur)?;
    }
    for (b, r) in bands.iter().enumerate() {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let last = r.end == k;
        let band = m.band(r.clone(), &cur);
        let ahead = || match bands.get(b + 1) {
            Some(a) => m.fetch(a.clone(), &mut next),
            None => Ok(()),
        };
        let tiles = || {
            chans
                .par_chunks_mut(w)
                .zip(parts(groups, w * plan.gpc, count))
                .zip(parts(groups2, w * plan.gpc, count))
                .zip(parts(codes, w * k, count))
                .enumerate()
                .for_each(|(i, (((chans, groups), groups2), codes))| {
                    TILE.with(|cell| {
                        let mut own = Vec::new();
                        let mut shared = cell.try_borrow_mut();
                        let buf = match &mut shared {
                            Ok(b) => &mut **b,
                            Err(_) => &mut own,
                        };
                        let tile = Tile {
                            r: r.clone(),
                            last,
                            c0: i * w,
                            buf,
                            chans,
                            groups,
                            groups2,
                            codes,
                        };
                        task(band, tile)
                    })
                })
        };
        let (fetched, ()) = rayon::join(ahead, tiles);
        fetched?;
        m.done(r.clone());
        std::mem::swap(&mut cur, &mut next);
    }
    Ok(())
}

/// Detection outcomes that no later band can revive.
#[derive(Default)]
struct Dead {
    /// Some channel is not `{-a, 0, +a}` (so neither the tensor nor every channel is).
    chans: AtomicBool,
    /// Some group is not.
    groups: AtomicBool,
    /// Some group of `Plan::probe` inputs is not (so the `lossless_group` pass is not run).
    probe: AtomicBool,
}

fn run<S, F>(m: &Kn<S, F>, cfg: &QuantConfig, tiling: Tiling) -> Result<(Ternary, f64), QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let (n, k) = (m.n, m.k);
    check_shape_len(m.src.len(), n, k)?;
    cfg.validate()?;
    let tol = f64::from(cfg.lossless_rel_tol);
    // A group as long as the channel is the channel.
    let group = match cfg.granularity {
        Granularity::Group(g) if g < k => Some(g),
        _ => None,
    };
    let unit = group.map_or(4, |g| lcm(4, g));
    // The `lossless_group` length, when it is another than the configured group's.
    let extra = super::detection_groups(cfg, k).find(|&g| Some(g) != group);
    let plan = Plan {
        rows: tiling.rows.max(1).next_multiple_of(unit),
        width: tiling.width.clamp(1, n),
        group,
        gpc: group.map_or(1, |g| k.div_ceil(g)),
        tol,
        probe: extra,
    };
    let mut chans = vec![Chan::default(); n];
    let per_group = || vec![0f32; if group.is_some() { n * plan.gpc } else { 0 }];
    // Lossless and absmean scales per group.
    let (mut lossless, mut absmean) = (per_group(), per_group());
    let dead = Dead::default();
    pass(
        m,
        &plan,
        &mut chans,
        &mut lossless,
        &mut absmean,
        &mut [],
        None,
        |band, t| stats(m, &plan, &dead, band, t),
    )?;

    if !dead.chans.load(Ordering::Relaxed) {
        // Lossless per tensor.
        let bands: Vec<Option<(f32, f32)>> = chans.iter().map(|c| c.band).collect();
        let mut failed = None;
        let scale = tensor_scale(&bands, tol, |lo, hi| {
            tensor_mode(m, &plan, lo, hi).unwrap_or_else(|e| {
                failed = Some(e);
                lo
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(a) = scale {
            chans.iter_mut().for_each(|c| c.scale = a);
            let (codes, e) = code(m, &plan, Coder::Sign, &mut chans, &mut [])?;
            return Ok(finish(m, codes, Granularity::Tensor, vec![a], true, e));
        }
        // Lossless per channel.
        if let Some(scales) = channel_scales(m, &plan, &chans)? {
            for (c, &a) in chans.iter_mut().zip(&scales) {
                c.scale = a;
            }
            let (codes, e) = code(m, &plan, Coder::Sign, &mut chans, &mut [])?;
            return Ok(finish(m, codes, Granularity::Channel, scales, true, e));
        }
    }
    if group.is_some() && !dead.groups.load(Ordering::Relaxed) {
        let (codes, e) = code(m, &plan, Coder::Sign, &mut chans, &mut lossless)?;
        return Ok(finish(m, codes, cfg.granularity, lossless, true, e));
    }
    // Lossless per group of `cfg.lossless_group` inputs, when that is not the configured
    // group: a pass of its own, so a weight found exact per tensor or channel, or quantized
    // with the configured granularity's statistics of pass 1, is read exactly as before; a
    // weight that is not ternary is most often ruled out by pass 1's probe (a channel's first
    // group whose magnitudes cannot share one scale), else fails on its first group and the
    // pass stops after that band.
    if let Some(g) = extra.filter(|_| !dead.probe.load(Ordering::Relaxed)) {
        if let Some(found) = group_lossless(m, g, tol, tiling, &mut chans)? {
            return Ok(found);
        }
    }

    // Absmean.
    if let Some(col) = chans.iter().position(|c| c.bad) {
        return Err(m.non_finite(col));
    }
    let coder = Coder::AbsMean(cfg.threshold);
    if group.is_some() {
        let (codes, e) = code(m, &plan, coder, &mut chans, &mut absmean)?;
        return Ok(finish(m, codes, cfg.granularity, absmean, false, e));
    }
    if cfg.granularity == Granularity::Tensor {
        let total = chans.iter().fold(0f64, |t, c| t + c.sum);
        let a = clamp_scale(total / (n as f64 * k as f64));
        chans.iter_mut().for_each(|c| c.scale = a);
        let (codes, e) = code(m, &plan, coder, &mut chans, &mut [])?;
        return Ok(finish(m, codes, Granularity::Tensor, vec![a], false, e));
    }
    for c in chans.iter_mut() {
        c.scale = clamp_scale(c.sum / k as f64);
    }
    let scales: Vec<f32> = chans.iter().map(|c| c.scale).collect();
    let (codes, e) = code(m, &plan, coder, &mut chans, &mut [])?;
    Ok(finish(m, codes, cfg.granularity, scales, false, e))
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// Lossless detection per group of `g` inputs (`quant::detect_group` on every group) in a pass
/// of its own, band rows a multiple of `g`, stopping at the first group that is not ternary;
/// then the codes (pass 2). `None` when some group is not ternary.
fn group_lossless<S, F>(
    m: &Kn<S, F>,
    g: usize,
    tol: f64,
    tiling: Tiling,
    chans: &mut [Chan],
) -> Result<Option<(Ternary, f64)>, QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let plan = Plan {
        rows: tiling.rows.max(1).next_multiple_of(lcm(4, g)),
        width: tiling.width.clamp(1, m.n),
        group: Some(g),
        gpc: m.k.div_ceil(g),
        tol,
        probe: None,
    };
    let mut scales = vec![0f32; m.n * plan.gpc];
    let dead = AtomicBool::new(false);
    pass(
        m,
        &plan,
        chans,
        &mut scales,
        &mut [],
        &mut [],
        Some(&dead),
        |band, t| {
            if dead.load(Ordering::Relaxed) {
                return;
            }
            let rows = t.r.len();
            m.load(band, rows, t.c0, t.chans.len(), t.buf);
            let mut scratch = Vec::new();
            for (ci, x) in t.buf.chunks_exact(rows).enumerate() {
                let first = ci * plan.gpc + t.r.start / g;
                for (xg, a) in x.chunks(g).zip(&mut t.groups[first..]) {
                    match detect_group(xg, plan.tol, &mut scratch) {
                        Ok(s) => *a = s,
                        Err(_) => {
                            dead.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        },
    )?;
    if dead.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let (codes, e) = code(m, &plan, Coder::Sign, chans, &mut scales)?;
    Ok(Some(finish(
        m,
        codes,
        Granularity::Group(g),
        scales,
        true,
        e,
    )))
}

/// Pass 1 on one tile: channel bands, channel `|w|` sums (without groups), or each group's
/// lossless scale (`quant::detect_group`) and absmean scale (with groups).
fn stats<S, F>(m: &Kn<S, F>, plan: &Plan, dead: &Dead, band: &[S], t: Tile)
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    if plan.group.is_none() && dead.chans.load(Ordering::Relaxed) {
        return row_sums(m, band, t);
    }
    let rows = t.r.len();
    m.load(band, rows, t.c0, t.chans.len(), t.buf);
    let mut scratch = Vec::new();
    for (ci, (x, st)) in t.buf.chunks_exact(rows).zip(t.chans.iter_mut()).enumerate() {
        if !dead.chans.load(Ordering::Relaxed) {
            // Failing on a part fails the whole channel: widening a band never narrows it.
            let band = scan_band(x, plan.tol).map(|b| merge_band(st.band, b));
            match band {
                Ok(b) if b.is_none_or(|(lo, hi)| band_ok(lo, hi, plan.tol)) => st.band = b,
                _ => {
                    // The probe: in the first band, the channel's first group of `probe`
                    // inputs (or the band's part of it), whose magnitudes cannot share one
                    // scale when these cannot (a band only widens).
                    if let Some(g) = plan.probe.filter(|_| t.r.start == 0) {
                        if scan_band(&x[..g.min(rows)], plan.tol).is_err() {
                            dead.probe.store(true, Ordering::Relaxed);
                        }
                    }
                    dead.chans.store(true, Ordering::Relaxed);
                }
            }
        }
        let Some(g) = plan.group else {
            let tail = abs_lanes(&mut st.abs, x);
            if t.last {
                st.sum = abs_total(st.abs, tail);
                st.bad = !st.sum.is_finite();
            }
            continue;
        };
        let first = ci * plan.gpc + t.r.start / g;
        if !dead.groups.load(Ordering::Relaxed) {
            for (xg, a) in x.chunks(g).zip(&mut t.groups[first..]) {
                match detect_group(xg, plan.tol, &mut scratch) {
                    Ok(s) => *a = s,
                    Err(_) => {
                        dead.groups.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        for (xg, a) in x.chunks(g).zip(&mut t.groups2[first..]) {
            let sum = sum_abs(xg);
            st.bad |= !sum.is_finite();
            *a = clamp_scale(sum / xg.len() as f64);
        }
    }
}

/// The `|w|` lanes of `stats` (no groups, no detection left to do) read along the rows, without
/// transposing: row `i` of the band goes to lane `i % 4` of each channel, as `abs_lanes` puts
/// it (a band starts on a multiple of four), and the channel's last `k % 4` weights are added
/// after the lanes, as `abs_total` adds them.
fn row_sums<S, F>(m: &Kn<S, F>, band: &[S], t: Tile)
where
    S: Copy + Sync,
    F: Fn(S) -> f32 + Sync,
{
    let (n, w) = (m.n, t.chans.len());
    let rows = t.r.len();
    let in_lanes = if t.last { rows / 4 * 4 } else { rows };
    let mut acc = vec![0f64; 4 * w];
    for (j, st) in t.chans.iter().enumerate() {
        for (l, &a) in st.abs.iter().enumerate() {
            acc[l * w + j] = a;
        }
    }
    for i in 0..in_lanes {
        let row = &band[i * n + t.c0..][..w];
        let lane = &mut acc[(i % 4) * w..][..w];
        for (a, &x) in lane.iter_mut().zip(row) {
            *a += f64::from((m.f)(x).abs());
        }
    }
    for (j, st) in t.chans.iter_mut().enumerate() {
        for (l, a) in st.abs.iter_mut().enumerate() {
            *a = acc[l * w + j];
        }
        if t.last {
            let mut sum = (st.abs[0] + st.abs[1]) + (st.abs[2] + st.abs[3]);
            for i in in_lanes..rows {
                sum += f64::from((m.f)(band[i * n + t.c0 + j]).abs());
            }
            st.sum = sum;
            st.bad = !sum.is_finite();
        }
    }
}

/// How pass 2 codes a weight.
#[derive(Debug, Clone, Copy)]
enum Coder {
    /// Lossless: the sign.
    Sign,
    /// Absmean with this threshold.
    AbsMean(f32),
}

impl Coder {
    /// The rule for a group of scale `a` (absmean multiplies by `1 / a`, as `quant` does).
    #[inline]
    fn rule(self, a: f32) -> CodeRule {
        match self {
            Coder::Sign => CodeRule::Sign,
            Coder::AbsMean(thr) => CodeRule::Threshold { inv: 1.0 / a, thr },
        }
    }
}

/// Pass 2: the codes, with each channel's scale (`Chan::scale`) or, when `group_scales` is not
/// empty, each group's (only read: `pass` hands out per-tile parts mutably); and the relative
/// error as `quant::rel_error` measures it.
fn code<S, F>(
    m: &Kn<S, F>,
    plan: &Plan,
    coder: Coder,
    chans: &mut [Chan],
    group_scales: &mut [f32],
) -> Result<(Vec<i8>, f64), QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let k = m.k;
    // Not cleared: every code is written below (the proptest gives back codes full of 7).
    let mut codes: Vec<i8> = m.spare.take(m.n * k);
    codes.resize(m.n * k, 0);
    let grouped = !group_scales.is_empty();
    pass(
        m,
        plan,
        chans,
        group_scales,
        &mut [],
        &mut codes,
        None,
        |band, t| {
            let rows = t.r.len();
            m.load(band, rows, t.c0, t.chans.len(), t.buf);
            let xs = t.buf.chunks_exact(rows).zip(t.codes.chunks_exact_mut(k));
            for (ci, ((x, c), st)) in xs.zip(t.chans.iter_mut()).enumerate() {
                let c = &mut c[t.r.clone()];
                match plan.group.filter(|_| grouped) {
                    None => {
                        let a = st.scale;
                        let done = st.err.code_add(x, c, a, coder.rule(a));
                        if t.last {
                            let (e, nn) = st.err.total(&x[done..], &c[done..], a);
                            st.part = (0.0 + e, 0.0 + nn);
                        }
                    }
                    Some(g) => {
                        let first = ci * plan.gpc + t.r.start / g;
                        let groups = x.chunks(g).zip(c.chunks_mut(g));
                        for ((xg, cg), &a) in groups.zip(&t.groups[first..]) {
                            let (e, nn) = code_err(xg, cg, a, coder.rule(a));
                            st.part.0 += e;
                            st.part.1 += nn;
                        }
                    }
                }
            }
        },
    )?;
    let parts: Vec<(f64, f64)> = chans.iter().map(|c| c.part).collect();
    Ok((codes, finish_rel_error(&parts)))
}

/// The most frequent non-zero magnitude of the whole weight, all of whose non-zero magnitudes
/// lie in `[lo, hi]` (`quant::band_mode`), read a band at a time.
fn tensor_mode<S, F>(m: &Kn<S, F>, plan: &Plan, lo: f32, hi: f32) -> Result<f32, QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let mut hist: Option<Vec<u64>> = None;
    let mut buf = BandBuf::new(m, plan.rows);
    for r in plan.bands(m.k) {
        m.fetch(r.clone(), &mut buf)?;
        let h = band_hist(m.band(r.clone(), &buf), MIN_TASK_ELEMS, m.f, lo, hi);
        hist = Some(match hist {
            Some(a) => add_hist(a, h),
            None => h,
        });
        m.done(r);
    }
    Ok(hist.map_or(lo, |h| hist_mode(&h, lo)))
}

/// Lossless per-channel scales (`quant::detect_group` on every channel, every channel band
/// being narrow enough), or `None` when a channel's magnitudes are not all within tolerance of
/// its most frequent one. Channels with more than one magnitude are read once more for it.
fn channel_scales<S, F>(
    m: &Kn<S, F>,
    plan: &Plan,
    chans: &[Chan],
) -> Result<Option<Vec<f32>>, QuantError>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    let varied: Vec<usize> = (0..m.n)
        .filter(|&c| matches!(chans[c].band, Some((lo, hi)) if lo != hi))
        .collect();
    let mut modes = Vec::new();
    if !varied.is_empty() {
        // The non-zero magnitudes of each such channel, as `detect_group` sorts them.
        let mut bits: Vec<Vec<u32>> = vec![Vec::new(); varied.len()];
        let mut buf = BandBuf::new(m, plan.rows);
        for r in plan.bands(m.k) {
            m.fetch(r.clone(), &mut buf)?;
            for row in m.band(r.clone(), &buf).chunks_exact(m.n) {
                for (b, &c) in bits.iter_mut().zip(&varied) {
                    let x = (m.f)(row[c]);
                    if x != 0.0 {
                        b.push(x.abs().to_bits());
                    }
                }
            }
            m.done(r);
        }
        modes = bits
            .iter_mut()
            .map(|b| f32::from_bits(mode_of_sorted(b)))
            .collect();
    }
    let mut modes = modes.into_iter();
    Ok(chans
        .iter()
        .map(|c| match c.band {
            None => Some(SCALE_EPS),
            Some((lo, hi)) if lo == hi => Some(lo),
            Some((lo, hi)) => modes.next().filter(|&a| within_tol(a, lo, hi, plan.tol)),
        })
        .collect())
}

fn finish<S, F>(
    m: &Kn<S, F>,
    codes: Vec<i8>,
    granularity: Granularity,
    scales: Vec<f32>,
    lossless: bool,
    rel_error: f64,
) -> (Ternary, f64) {
    let t = Ternary {
        n: m.n,
        k: m.k,
        codes,
        granularity,
        scales,
        lossless,
    };
    (t, rel_error)
}
