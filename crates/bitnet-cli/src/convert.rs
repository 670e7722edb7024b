//! `bitnet-onnx convert`: load, convert linear layers to ternary, save atomically, report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bitnet_model::save::Writer;
use bitnet_model::{ExternalData, Model, SaveOptions};
use bitnet_quant::convert::{self, ConvertOptions, Report, Selection};
use bitnet_quant::emit::Emitter;
use bitnet_quant::quant::{Granularity, Method, QuantConfig};
use bitnet_quant::targets::{self, Id};
use regex::Regex;

use crate::progress::ConvertProgress;

/// A `--target` value: an entry of the library's target table (`bitnet_quant::targets`), which
/// gives the names, their help and what each target accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target(pub Id);

static TARGET_VALUES: [Target; targets::TARGETS.len()] = {
    let mut v = [Target(Id::Ort); targets::TARGETS.len()];
    let mut i = 0;
    while i < v.len() {
        v[i] = Target(targets::TARGETS[i].id);
        i += 1;
    }
    v
};

impl clap::ValueEnum for Target {
    fn value_variants<'a>() -> &'a [Self] {
        &TARGET_VALUES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let t = self.info();
        Some(clap::builder::PossibleValue::new(t.name).help(t.help))
    }
}

impl Target {
    pub fn info(&self) -> &'static targets::Target {
        targets::get(self.0)
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    Auto,
    Float,
    Int8,
}

/// What the LM head (the projection feeding a graph output) becomes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadArg {
    /// Left as it is.
    Float,
    /// 8-bit blocks (MatMulNBits bits 8; ort and ort-int8).
    Int8,
    /// 4-bit blocks (MatMulNBits bits 4; ort and ort-int8).
    Int4,
    /// Ternary like the other layers (every target).
    Ternary,
}

/// What the token embedding (a Gather on a float table) becomes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingsArg {
    /// Left as it is.
    Float,
    /// 8-bit blocks (GatherBlockQuantized; ort and ort-int8).
    Int8,
    /// 4-bit blocks (GatherBlockQuantized; ort and ort-int8).
    Int4,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsArg {
    /// Every position, as the model was exported.
    All,
    /// The last position only.
    Last,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Absmean,
    Twn,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Per-tensor absmean scale, threshold 0.5: the published BitNet b1.58 recipe.
    #[value(name = "bitnet-b1.58")]
    BitnetB158,
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The ONNX model to convert.
    pub model: PathBuf,
    /// Output model path (never the input).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "ort")]
    pub target: Target,
    /// Activation precision: int8 = BitNet W1.58A8 with integer kernels (ort: MatMulNBits
    /// accuracy_level 4; ort-int8: per-token absmax int8, always); float = float activations
    /// (ort: accuracy_level 0). auto: each target's fastest (int8 for ort and ort-int8, float
    /// for the DequantizeLinear targets, which cannot express integer activations).
    #[arg(long, value_enum, default_value = "auto")]
    pub activations: Activations,
    /// ort: MatMulNBits block size along K (power of two, >= 16). Default: 128, the fastest
    /// measured (bench/ort_targets.py), capped at K rounded up to a power of two.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// ort: MatMulNBits accuracy_level; 4 = int8 activations (fast, about 1e-2 relative),
    /// 0 = float activations (exact, much slower at batch 1 in ONNX Runtime 1.32).
    /// Default: from --activations (4 unless float).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..=4))]
    pub accuracy_level: Option<i64>,
    /// Scale granularity: tensor, channel (per output feature) or group:G.
    #[arg(long, default_value = "channel", value_parser = parse_granularity)]
    pub scale: Granularity,
    /// Lossless detection also tries one scale per G inputs (after per-tensor, per-channel and
    /// a --scale group), so a weight stored as ternary codes times a scale per group of inputs
    /// (Ternary-Bonsai: 128) is recovered exactly: G, or off. Default: the group the target
    /// carries: --block-size for ort, --tensorrt-block-size for tensorrt, else 128. On a target
    /// that cannot carry group scales (ort-int8, tensorrt --tensorrt-int8) a weight found exact
    /// per group stops the conversion with an error naming it; with off it is quantized per
    /// channel instead (lossy, as the report says).
    #[arg(long, value_name = "G|off", value_parser = parse_lossless_group)]
    pub lossless_group: Option<LosslessGroup>,
    /// absmean (BitNet) or twn (zero below 0.7 mean|W|, least-squares scale).
    #[arg(long, value_enum, default_value = "absmean")]
    pub method: MethodArg,
    /// Zero where |W| <= threshold * scale (absmean only; 0.5 is BitNet's round-and-clip).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Use a published recipe (overrides --scale, --method and --threshold).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// tensorrt: INT4 block size along K (64 or 128).
    #[arg(long, default_value_t = 128)]
    pub tensorrt_block_size: usize,
    /// tensorrt: per-channel INT8 codes instead of blocked INT4.
    #[arg(long)]
    pub tensorrt_int8: bool,
    /// Convert only nodes whose name matches this regex.
    #[arg(long)]
    pub include: Option<String>,
    /// Skip nodes whose name matches this regex.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Skip weights with fewer elements than this.
    #[arg(long, default_value_t = 0)]
    pub min_params: u64,
    /// The LM head (the projection feeding a graph output): float, int8 or int4 blocks
    /// (ONNX Runtime's MatMulNBits; ort and ort-int8), or ternary (every target).
    /// Default: int8 for ort and ort-int8 (near-lossless: validation loss within 0.06% of the
    /// original's on the trained samples, where int4 costs 0.06-0.43% for about half the bytes
    /// read per token; figures in the README), float for the others.
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// The token embedding table: float, int8 or int4 blocks (ONNX Runtime's
    /// GatherBlockQuantized; ort and ort-int8). A tied embedding shares the head's codes when
    /// both have the same bits. Default: int8 for ort and ort-int8, float for the others.
    #[arg(long, value_enum)]
    pub embeddings: Option<EmbeddingsArg>,
    /// Values per block of the int4/int8 head and embedding (power of two, >= 16).
    #[arg(long, default_value_t = bitnet_quant::vocab::DEFAULT_BLOCK_SIZE)]
    pub table_block_size: usize,
    /// Which positions the LM head computes: all (as exported) or last (the next token's
    /// logits only, what a generation runtime's prompt step needs; logits become
    /// [batch, 1, vocab]). With a long prompt the head over every position costs more than
    /// the ternary layers; `last` is the setting for prompt processing (with ort-int8).
    #[arg(long, value_enum, default_value = "all")]
    pub logits: LogitsArg,
    /// Same as --head ternary (kept for existing scripts).
    #[arg(long, conflicts_with = "head")]
    pub quantize_head: bool,
    /// Write weights to `<output>.data` even when the model would fit in one file. This is
    /// the default when the input keeps its weights in external data: new weights then go to
    /// the data file as they are made, so memory stays bounded by a few tensors.
    #[arg(long, conflicts_with = "single_file")]
    pub external_data: bool,
    /// Write one `.onnx` file even when the input has external data (up to protobuf's 2 GiB;
    /// the converted weights are held in memory until the file is written).
    #[arg(long)]
    pub single_file: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Threads for quantization (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Verify the output against the input in tract right after converting (as `verify` with
    /// its defaults); exit 1 when it fails.
    #[arg(long)]
    pub verify: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A `--lossless-group` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LosslessGroup {
    Off,
    Len(usize),
}

fn parse_lossless_group(s: &str) -> Result<LosslessGroup, String> {
    match s {
        "off" => Ok(LosslessGroup::Off),
        _ => match s.parse::<usize>() {
            Ok(g) if g > 0 => Ok(LosslessGroup::Len(g)),
            _ => Err(format!("'{s}': expected a group length G > 0 or off")),
        },
    }
}

/// The group length lossless detection tries besides the configured granularity: the flag, or
/// the finest group the target's layout carries exactly (every group a multiple of it is
/// found too, as groups of it with repeated scales).
fn lossless_group(args: &ConvertArgs) -> Option<usize> {
    match args.lossless_group {
        Some(LosslessGroup::Off) => None,
        Some(LosslessGroup::Len(g)) => Some(g),
        None => Some(match args.target.0 {
            // MatMulNBits: one scale per block; 128 is the default block (capped at K rounded
            // up to a power of two, and a group as long as K is the channel anyway).
            Id::Ort => args.block_size.unwrap_or(128),
            Id::Tensorrt if !args.tensorrt_int8 => args.tensorrt_block_size,
            // DequantizeLinear's blocked scales take any group; ort-int8 and TensorRT INT8
            // take none, and a weight found exact per group is refused by name there.
            _ => 128,
        }),
    }
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    match s {
        "tensor" => Ok(Granularity::Tensor),
        "channel" => Ok(Granularity::Channel),
        _ => match s.strip_prefix("group:").map(str::parse::<usize>) {
            Some(Ok(g)) if g > 0 => Ok(Granularity::Group(g)),
            _ => Err(format!(
                "'{s}': expected tensor, channel or group:G with G > 0"
            )),
        },
    }
}

fn emitter(args: &ConvertArgs) -> Result<Box<dyn Emitter>> {
    let target = args.target.info();
    if args.activations == Activations::Int8 && !target.accepts(targets::Activations::Int8) {
        anyhow::bail!(
            "--activations int8 needs a target with integer kernels: ort-int8 (BitNet per-token int8 \
             activations, MatMulInteger) or ort (MatMulNBits accuracy_level 4); the DequantizeLinear \
             targets keep float activations (ONNX Runtime's default optimisations may still fuse \
             DequantizeLinear -> MatMul into int8-activation kernels)"
        );
    }
    if args.activations == Activations::Float && !target.accepts(targets::Activations::Float) {
        anyhow::bail!(
            "--target {} quantizes activations to int8 by construction; use --target ort \
             --activations float or a DequantizeLinear target for float activations",
            target.name
        );
    }
    if args.accuracy_level.is_some() && args.target.0 != Id::Ort {
        anyhow::bail!("--accuracy-level applies to --target ort only");
    }
    let accuracy_level = match (args.activations, args.accuracy_level) {
        (Activations::Float, Some(l)) if l != 0 => {
            anyhow::bail!("--activations float means accuracy_level 0, not {l}")
        }
        (Activations::Int8, Some(l)) if l != 4 => {
            anyhow::bail!("--activations int8 means accuracy_level 4, not {l}")
        }
        (_, Some(l)) => l,
        (Activations::Float, None) => 0,
        (_, None) => 4,
    };
    Ok(match args.target.0 {
        Id::Ort => Box::new(bitnet_quant::emit::ort::Ort {
            block_size: args.block_size,
            accuracy_level,
        }),
        Id::OrtInt8 => Box::new(bitnet_quant::emit::ort_int8::OrtInt8),
        Id::QdqInt8 => Box::new(bitnet_quant::emit::qdq_int8::QdqInt8),
        Id::Onnx => Box::new(bitnet_quant::emit::onnx_int2::OnnxInt2),
        Id::Tensorrt => Box::new(bitnet_quant::emit::tensorrt::TensorRt {
            block_size: args.tensorrt_block_size,
            int8: args.tensorrt_int8,
        }),
    })
}

/// The head and embedding settings: the flags, or each target's defaults.
fn tables(args: &ConvertArgs) -> Result<(HeadArg, EmbeddingsArg)> {
    let ort = args.target.info().onnx_runtime;
    let head = match (args.head, args.quantize_head) {
        (Some(h), _) => h,
        (None, true) => HeadArg::Ternary,
        // int8, not int4, by default: see the --head help.
        (None, false) if ort => HeadArg::Int8,
        (None, false) => HeadArg::Float,
    };
    let embeddings = match args.embeddings {
        Some(e) => e,
        None if ort => EmbeddingsArg::Int8,
        None => EmbeddingsArg::Float,
    };
    if !ort && (matches!(head, HeadArg::Int4 | HeadArg::Int8) || embeddings != EmbeddingsArg::Float)
    {
        anyhow::bail!(
            "--head int4/int8 and --embeddings int4/int8 use ONNX Runtime's MatMulNBits and \
             GatherBlockQuantized: targets ort and ort-int8 only (for --target {}, use --head \
             ternary or float and --embeddings float)",
            args.target.info().name
        );
    }
    Ok((head, embeddings))
}

fn vocab_options(args: &ConvertArgs) -> Result<bitnet_quant::vocab::VocabOptions> {
    use bitnet_quant::blockq::TableBits;
    let (head, embeddings) = tables(args)?;
    let bs = args.table_block_size;
    if bs < 16 || !bs.is_power_of_two() {
        anyhow::bail!("--table-block-size {bs}: expected a power of two of at least 16");
    }
    Ok(bitnet_quant::vocab::VocabOptions {
        head: match head {
            HeadArg::Int4 => Some(TableBits::Int4),
            HeadArg::Int8 => Some(TableBits::Int8),
            HeadArg::Float | HeadArg::Ternary => None,
        },
        embeddings: match embeddings {
            EmbeddingsArg::Int4 => Some(TableBits::Int4),
            EmbeddingsArg::Int8 => Some(TableBits::Int8),
            EmbeddingsArg::Float => None,
        },
        block_size: bs,
        // The head's input is float: int8 activations per block (accuracy_level 4) unless
        // the ort target was asked for float activations.
        accuracy_level: match (args.target.0, args.activations, args.accuracy_level) {
            (Id::Ort, _, Some(l)) => l,
            (Id::Ort, Activations::Float, None) => 0,
            _ => 4,
        },
    })
}

/// The settings that decide the output, as flags, every one stated, in a fixed order: what the
/// model's `bitnet_onnx.flags` metadata records. Paths, `--report`, `--threads`, `--verify` and
/// `--quiet` do not change the output and are left out, so the same input converted with the
/// same settings gives the same bytes wherever it is written.
fn recorded_flags(args: &ConvertArgs) -> String {
    fn name<T: clap::ValueEnum>(v: &T) -> String {
        v.to_possible_value()
            .map(|p| p.get_name().to_string())
            .unwrap_or_default()
    }
    let mut f = vec![
        format!("--target {}", name(&args.target)),
        format!("--activations {}", name(&args.activations)),
    ];
    if let Some(b) = args.block_size {
        f.push(format!("--block-size {b}"));
    }
    if let Some(l) = args.accuracy_level {
        f.push(format!("--accuracy-level {l}"));
    }
    // Its default follows the target and block flags recorded here.
    match args.lossless_group {
        Some(LosslessGroup::Off) => f.push("--lossless-group off".into()),
        Some(LosslessGroup::Len(g)) => f.push(format!("--lossless-group {g}")),
        None => {}
    }
    match args.preset {
        Some(p) => f.push(format!("--preset {}", name(&p))),
        None => {
            let scale = match args.scale {
                Granularity::Tensor => "tensor".to_string(),
                Granularity::Channel => "channel".to_string(),
                Granularity::Group(g) => format!("group:{g}"),
            };
            f.push(format!("--scale {scale}"));
            f.push(format!("--method {}", name(&args.method)));
            f.push(format!("--threshold {}", args.threshold));
        }
    }
    if args.target.0 == Id::Tensorrt {
        f.push(format!(
            "--tensorrt-block-size {}",
            args.tensorrt_block_size
        ));
        if args.tensorrt_int8 {
            f.push("--tensorrt-int8".into());
        }
    }
    if let Some(r) = &args.include {
        f.push(format!("--include '{r}'"));
    }
    if let Some(r) = &args.exclude {
        f.push(format!("--exclude '{r}'"));
    }
    if args.min_params > 0 {
        f.push(format!("--min-params {}", args.min_params));
    }
    if let Ok((head, embeddings)) = tables(args) {
        f.push(format!("--head {}", name(&head)));
        f.push(format!("--embeddings {}", name(&embeddings)));
        let blocked =
            matches!(head, HeadArg::Int4 | HeadArg::Int8) || embeddings != EmbeddingsArg::Float;
        if blocked {
            f.push(format!("--table-block-size {}", args.table_block_size));
        }
    }
    if args.logits == LogitsArg::Last {
        f.push("--logits last".into());
    }
    if args.external_data {
        f.push("--external-data".into());
    }
    if args.single_file {
        f.push("--single-file".into());
    }
    f.join(" ")
}

pub fn run(args: &ConvertArgs) -> Result<Report> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("cannot set up the thread pool")?;
    }
    let quant = match args.preset {
        Some(Preset::BitnetB158) => QuantConfig::bitnet_b158(),
        None => QuantConfig {
            granularity: args.scale,
            method: match args.method {
                MethodArg::Absmean => Method::AbsMean,
                MethodArg::Twn => Method::Twn,
            },
            threshold: args.threshold,
            ..QuantConfig::default()
        },
    };
    let quant = QuantConfig {
        lossless_group: lossless_group(args),
        ..quant
    };
    quant.validate().context("invalid quantization flags")?;
    let re = |s: &Option<String>, flag: &str| -> Result<Option<Regex>> {
        s.as_deref()
            .map(|r| Regex::new(r).with_context(|| format!("{flag} '{r}' is not a valid regex")))
            .transpose()
    };
    let selection = Selection {
        include: re(&args.include, "--include")?,
        exclude: re(&args.exclude, "--exclude")?,
        min_params: args.min_params,
        quantize_head: tables(args)?.0 == HeadArg::Ternary,
    };
    let vocab = vocab_options(args)?;
    let mut model = Model::load(&args.model)
        .with_context(|| format!("cannot convert {}", args.model.display()))?;
    let flags = recorded_flags(args);
    let emitter = emitter(args)?;
    // External data in, external data out (unless asked otherwise): a model too big to be
    // handled as one file is converted without holding its output in memory.
    let external_out = args.external_data || (!model.external.is_empty() && !args.single_file);
    let save_opts = SaveOptions {
        external_data: if external_out {
            ExternalData::Always
        } else {
            ExternalData::Auto
        },
        ..SaveOptions::default()
    };
    let progress = Arc::new(ConvertProgress::new(model.file_bytes, args.quiet));
    let writer = {
        let progress = progress.clone();
        Writer::new(&args.output, &save_opts, &model.source_files)
            .with_context(|| format!("cannot write {}", args.output.display()))?
            .with_source(&model.mappings)
            .with_progress(move |n| progress.written(n))
    };
    // A large model streams its new weights to the output's data file as they are made.
    if external_out || model.file_bytes > bitnet_model::save::PROTOBUF_LIMIT {
        writer
            .stream()
            .with_context(|| format!("cannot write {}", args.output.display()))?;
    }
    let opts = ConvertOptions {
        quant,
        selection,
        emitter: emitter.as_ref(),
        vocab,
        last_logits: args.logits == LogitsArg::Last,
        flags,
        progress: Some(progress.as_ref()),
        source: Some(&model.mappings),
        sink: Some(&writer),
        batch_bytes: None,
    };
    let mut report = convert::convert(&mut model.proto, &model.path, &opts)
        .with_context(|| format!("cannot convert {}", args.model.display()))?;
    progress.writing();
    let saved = writer
        .finish(&model.proto)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    progress.finish();
    report.totals.file_bytes_before = model.file_bytes;
    report.totals.file_bytes_after = saved.total_bytes();
    report.totals.file_compression = model.file_bytes as f64 / saved.total_bytes().max(1) as f64;
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        bitnet_model::save::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    if !args.quiet {
        print_report(&report, &saved);
    }
    Ok(report)
}

/// `convert`, then `verify` when asked: the process exit code.
pub fn run_and_verify(args: &ConvertArgs) -> Result<u8> {
    run(args)?;
    if !args.verify {
        return Ok(0);
    }
    let opts = bitnet_eval::verify::VerifyOptions::default();
    let r = bitnet_eval::verify::verify_paths(&args.model, &args.output, &opts)
        .with_context(|| format!("cannot verify {}", args.output.display()))?;
    if !args.quiet || !r.pass {
        println!();
        print!("{}", crate::verify::render(&r));
    }
    Ok(if r.pass { 0 } else { 1 })
}

fn pct(n: u64, total: u64) -> f64 {
    100.0 * n as f64 / total.max(1) as f64
}

pub fn print_report(r: &Report, saved: &bitnet_model::Saved) {
    if r.already_converted {
        println!("model was already converted by bitnet-onnx: no linear layer left to convert; written unchanged");
    }
    println!(
        "{:<36} {:>11} {:>7} {:>7} {:>7} {:>8} {:>21} {:>9} {:>9} {:>9}",
        "layer",
        "shape",
        "-1 %",
        "0 %",
        "+1 %",
        "sparsity",
        "scale range",
        "rel err",
        "before",
        "after"
    );
    for l in &r.layers {
        let total = l.codes.neg + l.codes.zero + l.codes.pos;
        let shape: Vec<String> = l.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "{:<36} {:>11} {:>6.2}% {:>6.2}% {:>6.2}% {:>7.2}% {:>10.4e}..{:<9.4e} {:>9.2e} {:>9} {:>9}{}",
            l.node,
            shape.join("x"),
            pct(l.codes.neg, total),
            pct(l.codes.zero, total),
            pct(l.codes.pos, total),
            100.0 * l.sparsity,
            l.scale_min,
            l.scale_max,
            l.rel_error,
            l.bytes_before,
            l.bytes_after,
            if l.lossless {
                // The granularity lossless detection found the weight's scales at.
                format!("  lossless {}", l.granularity)
            } else {
                String::new()
            }
        );
    }
    for t in &r.tables {
        let shared = match &t.shares_codes_with {
            Some(n) => format!("  codes shared with {n}"),
            None => String::new(),
        };
        println!(
            "{:<36} {:>11} {} blocks of {}, rel err {:.2e}, {} -> {} bytes{shared}",
            format!("{} {}", t.role, t.node),
            format!("{}x{}", t.shape[0], t.shape[1]),
            t.bits.name(),
            t.block_size,
            t.rel_error,
            t.bytes_before,
            t.bytes_after,
        );
    }
    for h in &r.last_position_heads {
        println!("{h:<36} computes the last position only (--logits last)");
    }
    for s in &r.totals.skipped {
        println!("skipped {:<36} {}", s.node, s.reason);
    }
    // BitNet's layer around the node, as far as it was taken in (or why not).
    let count = |prefix: &str| {
        r.layers
            .iter()
            .filter(|l| l.absorbed.iter().any(|a| a.starts_with(prefix)))
            .count()
    };
    let (acts, scales) = (count("activation quantization"), count("output"));
    if acts + scales > 0 {
        println!(
            "absorbed into their layers: {acts} BitNet activation quantizations (taken as the graph computes them), {scales} constant output scales (folded into the weight scales)"
        );
    }
    for l in r.layers.iter().filter(|l| l.not_absorbed.is_some()) {
        println!(
            "not absorbed {:<31} {}",
            l.node,
            l.not_absorbed.as_deref().unwrap_or("")
        );
    }
    let t = &r.totals;
    println!(
        "converted {} layers ({} weights), skipped {}; removed {} folded or absorbed nodes",
        t.converted,
        r.layers.len(),
        t.skipped.len(),
        t.removed_nodes
    );
    println!(
        "linear weights {} -> {} bytes ({:.2}x, {:.2} bits per weight); files {} -> {} bytes ({:.2}x)",
        t.weight_bytes_before,
        t.weight_bytes_after,
        t.weight_compression,
        t.bits_per_weight,
        t.file_bytes_before,
        t.file_bytes_after,
        t.file_compression
    );
    if !r.layers.is_empty() {
        println!("activations: {}", r.activations);
    }
    if t.opset_before != t.opset_after {
        println!(
            "default-domain opset raised from {:?} to {:?}",
            t.opset_before, t.opset_after
        );
    }
    match &saved.data_path {
        Some(d) => println!("wrote {} and {}", saved.model_path.display(), d.display()),
        None => println!("wrote {}", saved.model_path.display()),
    }
}
