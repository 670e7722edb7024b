//! `bitnet-onnx build`: a transformers BitNet checkpoint directory to a model folder that
//! onnxruntime-genai generates with (`model.onnx` + `model.onnx.data`, `genai_config.json`,
//! the tokenizer files).
//!
//! Stages, in order:
//! 1. [`checkpoint`]: read `config.json` ([`config`]) and the safetensors headers
//!    ([`safetensors`]); check every tensor the decoder reads. Nothing is written before this
//!    passes.
//! 2. [`decoder`]: build the graph front to back, reading one weight at a time and handing
//!    each large initializer to the output writer as soon as it exists (peak memory: the
//!    largest fused weight, or the quantized vocabulary table).
//! 3. [`genai`]: `genai_config.json`; the tokenizer files are copied. With
//!    [`Layout::Web`] ([`web`]), the graph goes to `onnx/model_q2.onnx` with
//!    `model_q2.onnx_data`, beside a `config.json` Transformers.js reads.
//! 4. Everything goes to a temporary directory beside `OUT_DIR`, renamed into place only when
//!    complete: a failed build leaves nothing behind.
//!
//! No printing: the caller gets a [`BuildReport`].

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod error;
pub mod family;
pub mod files;
pub mod genai;
pub mod graph;
pub mod rope;
pub mod safetensors;
pub mod web;

use std::path::{Path, PathBuf};

use bitnet_math::blockq::TableBits;
use bitnet_model::metadata;
use bitnet_model::proto::{ModelProto, OperatorSetIdProto};
use bitnet_model::save::{ExternalData, SaveOptions, Writer};
use serde::Serialize;

pub use checkpoint::Checkpoint;
pub use config::{Config, LinearForm};
pub use error::{BuildError, Result};

/// How a vocabulary table (the embedding or the LM head) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableMode {
    Float,
    Int4,
    Int8,
}

impl TableMode {
    pub fn bits(self) -> Option<TableBits> {
        match self {
            TableMode::Float => None,
            TableMode::Int4 => Some(TableBits::Int4),
            TableMode::Int8 => Some(TableBits::Int8),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TableMode::Float => "float",
            TableMode::Int4 => "int4",
            TableMode::Int8 => "int8",
        }
    }
}

/// Which runtime's folder layout `build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `model.onnx` + `model.onnx.data`, `genai_config.json`, the tokenizer files.
    Genai,
    /// Transformers.js's layout ([`web`]), which onnxruntime-genai also loads; the 8-bit
    /// embedding in standard ops (the browser bundles lack `GatherBlockQuantized`).
    Web,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Genai => "genai",
            Layout::Web => "web",
        }
    }
}

/// What computes the ternary layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// ONNX Runtime's own 2-bit `MatMulNBits` after BitNet's activation quantization in
    /// standard ops: the folder runs on a stock runtime.
    Ort,
    /// `bitnet.onnx::BitLinear` from the `bitnet-ortops` custom-op library at this path, which
    /// is copied into the folder and named in `genai_config.json`.
    Bitnet { library: PathBuf },
}

impl Kernel {
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Ort => "ort",
            Kernel::Bitnet { .. } => "bitnet",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub layout: Layout,
    pub embeddings: TableMode,
    pub head: TableMode,
    /// Block size of the 4/8-bit tables along the hidden axis.
    pub table_block_size: usize,
    /// `MatMulNBits` block size of the ternary layers (each block holds `block_size - 1`
    /// weights and the reserved activation slot).
    pub block_size: usize,
    /// Compute the LM head for the one position per sequence onnxruntime-genai reads (the last
    /// token that is not the pad token); the other rows of `logits` are 0.
    pub last_logits: bool,
    pub kernel: Kernel,
    /// Keep ONNX Runtime's `com.microsoft::GroupQueryAttention` with `Kernel::Bitnet` (without
    /// it, attention on packed q/k/v is `bitnet.onnx::GroupQueryAttention`).
    pub ort_attention: bool,
    /// Attention heads run at `head_dim` rounded up to a multiple of this (zero-padded, exact).
    /// Not a `build` flag: [`config::GQA_HEAD_MULTIPLE`] (16, what ONNX Runtime needs) is the
    /// only value users need; tests set a larger multiple of 16 to pad a checkpoint whose heads
    /// need none and compare the two builds.
    pub head_dim_multiple: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            layout: Layout::Genai,
            // int8 tables: near-lossless on trained models (int4 costs a measurable share of
            // validation loss), see the README's table-fidelity figures.
            embeddings: TableMode::Int8,
            head: TableMode::Int8,
            ort_attention: false,
            table_block_size: 32,
            block_size: 128,
            last_logits: true,
            kernel: Kernel::Ort,
            head_dim_multiple: config::GQA_HEAD_MULTIPLE,
        }
    }
}

impl BuildOptions {
    /// The settings as `build` flags (recorded in the model's metadata).
    pub fn flags(&self) -> String {
        // Genai folders keep the flags they always recorded (no `--for`).
        let layout = match self.layout {
            Layout::Genai => String::new(),
            Layout::Web => "--for web ".into(),
        };
        format!(
            "{layout}--embeddings {} --head {} --table-block-size {} --block-size {} --logits {} --kernel {}",
            self.embeddings.name(),
            self.head.name(),
            self.table_block_size,
            self.block_size,
            if self.last_logits { "last" } else { "all" },
            self.kernel.name()
        )
    }
}

/// What `build` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The folder layout: `genai` or `web`.
    pub layout: Layout,
    pub checkpoint: PathBuf,
    pub out_dir: PathBuf,
    /// The model family recognised from config.json ([`family::FAMILIES`]).
    pub family: String,
    /// The MLP's activation (`relu2`, `silu`).
    pub activation: String,
    /// The rotary embedding's type as transformers names it (`default`, `llama3`, ...).
    pub rope_type: String,
    pub linear_form: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// The context the folder runs (`max_position_embeddings`, at most
    /// [`config::MAX_CONTEXT`]): the rotary tables have a row per position and
    /// onnxruntime-genai's `max_length` is this.
    pub context_length: usize,
    pub tied_embeddings: bool,
    /// Linear weights whose codes were read as stored (packed or float codes: lossless).
    pub linear_weights_stored_as_codes: usize,
    /// Linear weights ternarised from master weights with transformers' `WeightQuant`.
    pub linear_weights_ternarised: usize,
    /// Float-stored ternary weights (no `quantization_config`) by how their scales were found
    /// (`per tensor`, `per row`, `per group of G along the input`); empty otherwise.
    pub float_ternary_scales: std::collections::BTreeMap<String, usize>,
    pub linear_params: u64,
    /// Ternary layer nodes computed by `MatMulNBits` (`--kernel ort`).
    pub matmulnbits_layers: usize,
    /// Ternary layer nodes computed by `bitnet.onnx::BitLinear` (`--kernel bitnet`).
    pub bitlinear_layers: usize,
    /// `ort` or `bitnet`.
    pub kernel: String,
    /// The custom-op library's file name inside the folder (`--kernel bitnet`).
    pub kernel_library: Option<String>,
    /// The op computing the LM head: `Gemm` (float table), `com.microsoft::MatMulNBits`, or
    /// `bitnet.onnx::Q8Linear` (`--kernel bitnet` with an 8-bit head).
    pub head_op: String,
    /// The attention op: `com.microsoft::GroupQueryAttention`, or
    /// `bitnet.onnx::GroupQueryAttention` (`--kernel bitnet`, packed q/k/v).
    pub attention_op: String,
    pub activations: String,
    pub tables: Vec<metadata::TableSpec>,
    pub table_shared: bool,
    pub model_bytes: u64,
    pub data_bytes: u64,
    pub files: Vec<String>,
    /// Things a user should know (no tokenizer, ...).
    pub warnings: Vec<String>,
}

/// The `bitnet_onnx.target` of a built model.
pub const TARGET: &str = "ort-genai";
/// The `bitnet_onnx.target` of a `--for web` folder's graph.
pub const TARGET_WEB: &str = "web";

/// What the activations of the ternary layers compute, as recorded in the metadata.
pub const ACTIVATIONS: &str = "bitnet per-token int8 (absmax 127), exact: MatMulNBits accuracy_level 4 on BitNet's int8 codes with a reserved 127 slot per block";
/// The same with `--kernel bitnet`.
pub const ACTIVATIONS_BITNET: &str = "bitnet per-token int8 (absmax 127), exact: bitnet.onnx BitLinear, int32 dot products of the codes with 2-bit ternary weights";

/// The custom ops' domain in the graph (the library registers it).
pub const BITNET_DOMAIN: &str = "bitnet.onnx";

/// The same for float-stored ternary weights (no `quantization_config`): transformers runs
/// them as float linear layers, and so does the graph.
pub const FLOAT_ACTIVATIONS: &str = "float32, as the checkpoint's float linear layers compute them: MatMulNBits (float32 compute) on the recovered ternary codes with the recovered scales as block scales";

/// What the activations of `form`'s layers compute with `opts.kernel`.
pub fn activations(form: LinearForm, opts: &BuildOptions) -> &'static str {
    match (form, &opts.kernel) {
        (LinearForm::FloatTernary, _) => FLOAT_ACTIVATIONS,
        (_, Kernel::Ort) => ACTIVATIONS,
        (_, Kernel::Bitnet { .. }) => ACTIVATIONS_BITNET,
    }
}

/// The tokenizer files copied when present (onnxruntime-genai reads `tokenizer.json` and
/// `tokenizer_config.json`).
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
];

/// Builds the model folder `out_dir` from the checkpoint in `checkpoint_dir`.
pub fn build(checkpoint_dir: &Path, out_dir: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    check_flags(opts)?;
    let library = check_library(opts)?;
    let mut ck = Checkpoint::open(checkpoint_dir)?;
    ck.config.cache_head_dim = ck.config.head_dim.next_multiple_of(opts.head_dim_multiple);
    check_options(&ck, opts)?;
    // The tokenizer files are copied as they are: each must parse as what it claims to be.
    let tokenizer: Vec<&str> = TOKENIZER_FILES
        .into_iter()
        .filter(|f| checkpoint_dir.join(f).is_file())
        .collect();
    for f in &tokenizer {
        files::check_tokenizer_file(&checkpoint_dir.join(f))?;
    }
    let web = opts.layout == Layout::Web;
    let staging = Staging::new(checkpoint_dir, out_dir)?;
    let (model_file, data_file) = if web {
        let dir = staging.dir.join(web::ONNX_DIR);
        std::fs::create_dir(&dir).map_err(|e| BuildError::io(&dir, e))?;
        (
            format!("{}/{}", web::ONNX_DIR, web::MODEL_FILE),
            format!("{}/{}", web::ONNX_DIR, web::DATA_FILE),
        )
    } else {
        ("model.onnx".to_string(), "model.onnx.data".to_string())
    };
    let model_path = staging.dir.join(&model_file);
    let protect: Vec<PathBuf> = ck.tensors.files.iter().map(|(p, _)| p.clone()).collect();
    let mut writer = Writer::new(
        &model_path,
        &SaveOptions {
            external_data: ExternalData::Always,
            size_threshold: 1024,
        },
        &protect,
    )?;
    if web {
        writer = writer.with_data_file_name(web::DATA_FILE)?;
    }
    writer.stream()?;
    let mut g = graph::Graph::new("bitnet", &writer);
    let built = decoder::build(&ck, opts, &mut g)?;
    let graph = std::mem::take(&mut g.graph);
    drop(g);
    let mut opset_import = vec![
        OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(21),
        },
        OperatorSetIdProto {
            domain: Some(graph::MS.to_string()),
            version: Some(1),
        },
    ];
    if library.is_some() {
        opset_import.push(OperatorSetIdProto {
            domain: Some(BITNET_DOMAIN.to_string()),
            version: Some(1),
        });
    }
    let mut model = ModelProto {
        ir_version: Some(10),
        opset_import,
        producer_name: Some("bitnet-onnx".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    };
    record(&mut model, &ck, opts, &built);
    if opts.last_logits {
        metadata::set(&mut model, metadata::LOGITS, "last-row".into());
    }
    let saved = writer.finish(&model)?;
    drop(model);
    if web && saved.data_bytes > web::MAX_DATA_BYTES {
        return Err(BuildError::Output {
            path: out_dir.to_path_buf(),
            message: format!(
                "the weights take {} bytes, over the {} one browser ArrayBuffer holds \
                 (writing them in several files is not implemented); smaller tables \
                 (--embeddings int8, --head int8 or int4) make the folder smaller",
                saved.data_bytes,
                files::size_name(web::MAX_DATA_BYTES)
            ),
        });
    }
    let lib_name = library.as_ref().map(|(_, name)| name.clone());
    genai::write_config(
        &ck,
        &model_file,
        lib_name.as_deref(),
        &staging.dir.join("genai_config.json"),
    )?;
    let mut files = vec![model_file, data_file, "genai_config.json".to_string()];
    if let Some((src, name)) = &library {
        std::fs::copy(src, staging.dir.join(name)).map_err(|e| BuildError::io(src, e))?;
        files.push(name.clone());
    }
    let mut warnings = Vec::new();
    for f in tokenizer {
        let src = checkpoint_dir.join(f);
        let dst = staging.dir.join(f);
        if web && f == "tokenizer_config.json" {
            // Written below with `add_bos_token`.
            continue;
        }
        std::fs::copy(&src, &dst).map_err(|e| BuildError::io(&src, e))?;
        files.push(f.to_string());
    }
    if web {
        let write = |v: &serde_json::Value, name: &str, files: &mut Vec<String>| {
            files::write_json(v, &staging.dir.join(name))?;
            files.push(name.to_string());
            Ok::<(), BuildError>(())
        };
        write(&web::config_json(&ck), "config.json", &mut files)?;
        let src = checkpoint_dir.join("config.json");
        let dst = staging.dir.join(web::SOURCE_CONFIG);
        std::fs::copy(&src, &dst).map_err(|e| BuildError::io(&src, e))?;
        files.push(web::SOURCE_CONFIG.to_string());
        if let Some(v) = web::tokenizer_config(&ck, &checkpoint_dir.join("tokenizer_config.json"))?
        {
            write(&v, "tokenizer_config.json", &mut files)?;
        }
        if !checkpoint_dir.join("generation_config.json").is_file() {
            write(
                &web::generation_config(&ck),
                "generation_config.json",
                &mut files,
            )?;
        }
        files.sort();
    }
    if !checkpoint_dir.join("tokenizer.json").is_file() {
        warnings.push(if web {
            format!(
                "{} has no tokenizer.json: Transformers.js cannot load a tokenizer for this folder \
                 (its pipeline needs one; a model called with token ids does not)",
                checkpoint_dir.display()
            )
        } else {
            format!(
                "{} has no tokenizer.json: onnxruntime-genai generates from token ids, but \
                 og.Tokenizer cannot load this model folder",
                checkpoint_dir.display()
            )
        });
    }
    staging.commit()?;
    let c = &ck.config;
    Ok(BuildReport {
        layout: opts.layout,
        checkpoint: checkpoint_dir.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        family: c.family.name.into(),
        activation: c.activation.name().into(),
        rope_type: c.rope.kind.name().into(),
        linear_form: c.linear.name().into(),
        layers: c.num_layers,
        hidden_size: c.hidden_size,
        vocab_size: c.vocab_size,
        context_length: c.max_position_embeddings,
        tied_embeddings: c.tie_word_embeddings,
        linear_weights_stored_as_codes: built.stored_as_codes,
        linear_weights_ternarised: built.ternarised,
        float_ternary_scales: built.float_granularity.clone(),
        linear_params: built.linear_params,
        matmulnbits_layers: if library.is_none() {
            built.layers.len()
        } else {
            0
        },
        bitlinear_layers: if library.is_some() {
            built.layers.len()
        } else {
            0
        },
        kernel: opts.kernel.name().into(),
        kernel_library: lib_name,
        head_op: built.head_op.clone(),
        attention_op: built.attention_op.clone(),
        activations: activations(c.linear, opts).into(),
        tables: built.tables,
        table_shared: built.table_shared,
        model_bytes: saved.model_bytes,
        data_bytes: saved.data_bytes,
        files,
        warnings,
    })
}

/// The ternary layers' block sizes ONNX Runtime 1.32 runs with 2-bit `MatMulNBits`: powers of
/// two from 16 (the operator's least) to 256 (it refuses larger 2-bit blocks when the session
/// loads). 32, 64 and 128 run its int8 kernels; 16 and 256 dequantize to float32 (slower).
/// The reserved activation slot needs nothing more: a block holds `block_size - 1` weights.
pub const BLOCK_SIZES: std::ops::RangeInclusive<usize> = 16..=256;

fn flag_error(flag: &str, v: usize, why: String) -> BuildError {
    BuildError::Flag {
        flag: flag.into(),
        value: v.to_string(),
        why,
    }
}

/// The flags alone, checked before anything is read.
fn check_flags(opts: &BuildOptions) -> Result<()> {
    let m = opts.head_dim_multiple;
    if m == 0 || !m.is_multiple_of(config::GQA_HEAD_MULTIPLE) || m > 1024 {
        return Err(flag_error(
            "head_dim_multiple",
            m,
            format!(
                "the attention's head size must stay a multiple of {}",
                config::GQA_HEAD_MULTIPLE
            ),
        ));
    }
    let v = opts.block_size;
    if !BLOCK_SIZES.contains(&v) || !v.is_power_of_two() {
        return Err(flag_error(
            "--block-size",
            v,
            format!(
                "ONNX Runtime runs 2-bit MatMulNBits with block sizes that are powers of two \
                 from {} to {} (32, 64 and 128 on its int8 kernels)",
                BLOCK_SIZES.start(),
                BLOCK_SIZES.end()
            ),
        ));
    }
    if opts.layout == Layout::Web && opts.embeddings == TableMode::Int4 {
        return Err(BuildError::Flag {
            flag: "--embeddings".into(),
            value: "int4".into(),
            why: "a web folder's embedding must run without GatherBlockQuantized, which \
                  onnxruntime-web's browser bundles lack; int8 (the default) and float do"
                .into(),
        });
    }
    if opts.layout == Layout::Web && matches!(opts.kernel, Kernel::Bitnet { .. }) {
        return Err(BuildError::Flag {
            flag: "--kernel".into(),
            value: "bitnet".into(),
            why: "a web folder runs in onnxruntime-web, which cannot load a native custom-op \
                  library; build it with --kernel ort (the default)"
                .into(),
        });
    }
    let v = opts.table_block_size;
    if v < 16 || !v.is_power_of_two() {
        return Err(flag_error(
            "--table-block-size",
            v,
            "MatMulNBits and GatherBlockQuantized block sizes are powers of two >= 16".into(),
        ));
    }
    Ok(())
}

/// With `--kernel bitnet`: the library to copy and its file name in the folder, checked to be
/// a regular file before anything is written.
fn check_library(opts: &BuildOptions) -> Result<Option<(PathBuf, String)>> {
    let Kernel::Bitnet { library } = &opts.kernel else {
        return Ok(None);
    };
    let bad = |why: &str| BuildError::Flag {
        flag: "--kernel".into(),
        value: "bitnet".into(),
        why: format!("the custom-op library {} {why}", library.display()),
    };
    if !library.is_file() {
        return Err(bad("is not a file"));
    }
    let name = library
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| bad("has no usable file name"))?;
    if ["model.onnx", "model.onnx.data", "genai_config.json"].contains(&name)
        || TOKENIZER_FILES.contains(&name)
    {
        return Err(bad("has the name of a file the folder holds"));
    }
    Ok(Some((library.clone(), name.to_string())))
}

/// The flags against the checkpoint.
fn check_options(ck: &Checkpoint, opts: &BuildOptions) -> Result<()> {
    let bad = |flag: &str, v: usize, why: String| flag_error(flag, v, why);
    if ck.config.linear == LinearForm::FloatTernary && matches!(opts.kernel, Kernel::Bitnet { .. })
    {
        // The op quantizes its input to BitNet's int8 codes; these checkpoints' layers take
        // float activations, which the stock MatMulNBits path computes as they do.
        return Err(BuildError::Flag {
            flag: "--kernel".into(),
            value: "bitnet".into(),
            why: format!(
                "{} holds float-stored ternary weights whose layers take float activations; \
                 bitnet.onnx::BitLinear computes BitNet's int8 activations: use --kernel ort \
                 (the default)",
                ck.dir.display()
            ),
        });
    }
    let h = ck.config.hidden_size;
    let quantized = opts.embeddings != TableMode::Float || opts.head != TableMode::Float;
    if quantized && !h.is_multiple_of(opts.table_block_size) {
        return Err(bad(
            "--table-block-size",
            opts.table_block_size,
            format!("the 4/8-bit tables need whole blocks along hidden_size {h}"),
        ));
    }
    Ok(())
}

fn record(model: &mut ModelProto, ck: &Checkpoint, opts: &BuildOptions, built: &decoder::Built) {
    metadata::set(model, metadata::VERSION, env!("CARGO_PKG_VERSION").into());
    let target = match opts.layout {
        Layout::Genai => TARGET,
        Layout::Web => TARGET_WEB,
    };
    metadata::set(model, metadata::TARGET, target.into());
    metadata::set(model, metadata::FLAGS, format!("build {}", opts.flags()));
    metadata::set(
        model,
        metadata::ACTIVATIONS,
        activations(ck.config.linear, opts).into(),
    );
    metadata::set(model, metadata::KERNEL, opts.kernel.name().into());
    metadata::set(model, metadata::LAYERS, metadata::to_json(&built.layers));
    if !built.tables.is_empty() {
        metadata::set(model, metadata::TABLES, metadata::to_json(&built.tables));
    }
    metadata::set(model, metadata::SOURCE, ck.config.linear.name().into());
    metadata::set(model, metadata::FAMILY, ck.config.family.name.into());
}

/// The output folder while it is written: a hidden sibling of `OUT_DIR`, removed unless
/// [`Staging::commit`] renames it into place.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    done: bool,
}

impl Staging {
    fn new(checkpoint: &Path, out: &Path) -> Result<Staging> {
        let err = |m: String| BuildError::Output {
            path: out.to_path_buf(),
            message: m,
        };
        if out.exists() {
            let empty = out.is_dir()
                && std::fs::read_dir(out)
                    .map_err(|e| BuildError::io(out, e))?
                    .next()
                    .is_none();
            if !empty {
                return Err(err(
                    "exists and is not an empty directory; nothing was written".into(),
                ));
            }
        }
        let (ck, o) = (
            std::fs::canonicalize(checkpoint).map_err(|e| BuildError::io(checkpoint, e))?,
            absolute(out),
        );
        if o.starts_with(&ck) || ck.starts_with(&o) {
            return Err(err(format!(
                "is inside (or contains) the checkpoint directory {}; write the model elsewhere",
                checkpoint.display()
            )));
        }
        let parent = o
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if !parent.is_dir() {
            return Err(err(format!(
                "its parent {} is not a directory",
                parent.display()
            )));
        }
        // A short hidden name, whatever the length of OUT_DIR's (up to the file-name limit
        // itself): its first characters, the process and a counter for builds in one process.
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name: String = o
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(16).collect())
            .unwrap_or_default();
        let dir = parent.join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| BuildError::io(&dir, e))?;
        Ok(Staging {
            dir,
            out: o,
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        if self.out.is_dir() {
            // Checked empty when the build started.
            std::fs::remove_dir(&self.out).map_err(|e| BuildError::io(&self.out, e))?;
        }
        std::fs::rename(&self.dir, &self.out).map_err(|e| BuildError::io(&self.out, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent)
                .map(|c| c.join(name))
                .unwrap_or_else(|_| p.to_path_buf())
        }
        _ => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf()),
    }
}
