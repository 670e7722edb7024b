//! `bitnet-onnx build CHECKPOINT_DIR -o OUT_DIR`: a transformers BitNet checkpoint to an
//! onnxruntime-genai model folder.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bitnet_build::{BuildOptions, Kernel, Layout, TableMode};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Float,
    Int4,
    Int8,
}

impl From<Table> for TableMode {
    fn from(t: Table) -> Self {
        match t {
            Table::Float => TableMode::Float,
            Table::Int4 => TableMode::Int4,
            Table::Int8 => TableMode::Int8,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// A transformers checkpoint directory of a ternary model (config.json, model.safetensors
    /// or sharded model-*.safetensors with their index, tokenizer files): BitNetForCausalLM
    /// (microsoft/bitnet-b1.58-2B-4T, packed or -bf16), Llama with quant_method bitnet
    /// (Falcon3-1.58bit, Llama3-8B-1.58, Falcon-E), Qwen3 with quant_method bitnet, 1bitLLM
    /// bitnet_b1_58, or float-stored ternary Llama / Qwen3 (TriLM, Ternary-Bonsai unpacked);
    /// the family is recognised from config.json (docs/families.md).
    pub checkpoint: PathBuf,
    /// The model folder to write (must not exist, or be empty): model.onnx, model.onnx.data,
    /// genai_config.json and the tokenizer files (with --for web: see there).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Folder layout. `genai`: for onnxruntime-genai. `web`: for Transformers.js in a browser
    /// (onnxruntime-web, WASM or WebGPU) or in Node: onnx/model_q2.onnx with
    /// onnx/model_q2.onnx_data, a config.json with model_type llama (the name Transformers.js
    /// accepts; transformers' own config is kept as transformers_config.json),
    /// add_bos_token in tokenizer_config.json, and the 8-bit embedding in standard ops (the
    /// browser bundles lack GatherBlockQuantized). onnxruntime-genai loads it too.
    #[arg(long = "for", value_enum, default_value = "genai")]
    pub layout: ForLayout,
    /// Runtime the folder is for; onnxruntime-genai on ONNX Runtime's CPU kernels is the only
    /// one built.
    #[arg(long, value_enum, default_value = "ort")]
    pub target: BuildTarget,
    /// The token embedding: 8- or 4-bit `GatherBlockQuantized`, or float32 `Gather`.
    /// Default int8: near-lossless (see --head).
    #[arg(long, value_enum, default_value = "int8")]
    pub embeddings: Table,
    /// The LM head: 8- or 4-bit `MatMulNBits` (int8 activations), or a float32 `Gemm`. A tied
    /// head and embedding of the same bits share one table. Default int8 (near-lossless: on
    /// the trained sample checkpoints transformers' validation loss within 0.06%, float
    /// within 0.001%); int4 costs 0.33-0.43% there, for a head that reads about half the
    /// bytes per token (faster decode; figures in the README).
    #[arg(long, value_enum, default_value = "int8")]
    pub head: Table,
    /// Block size of the 4/8-bit tables along the hidden axis.
    #[arg(long, default_value_t = 32)]
    pub table_block_size: usize,
    /// `MatMulNBits` block size of the ternary layers (each block holds block-size - 1
    /// weights and the slot that makes BitNet's int8 activations exact): a power of two from
    /// 16 to 256, what ONNX Runtime 1.32 runs for 2 bits; 32, 64 and 128 run its int8
    /// kernels, 16 and 256 dequantize to float32 (slower).
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// `last`: compute the LM head only for the position of each sequence whose logits
    /// onnxruntime-genai reads (its last token that is not the pad token); the other rows of
    /// `logits` are 0. On a 128-token prompt that skips 127 of 128 head products. `all`
    /// computes every row (for reading every position's logits, as when scoring a text).
    #[arg(long, value_enum, default_value = "last")]
    pub logits: Logits,
    /// What computes the ternary layers and the int8 head. `ort`: ONNX Runtime's own
    /// `MatMulNBits` (the folder runs on a stock runtime). `bitnet`: this project's custom-op
    /// library, copied into the folder and named in genai_config.json's `custom_ops_library`
    /// (looked up beside this binary, or at $BITNET_ONNX_KERNEL_LIBRARY): the ternary layers as
    /// `bitnet.onnx::BitLinear` (integer dot products over all of K, weights 2 bits each,
    /// exactly the stock graph's numbers) and an int8 head as `bitnet.onnx::Q8Linear` (the same
    /// table and integer block products as `MatMulNBits`; logits within float rounding).
    #[arg(long, value_enum, default_value = "ort")]
    pub kernel: KernelArg,
    /// Attention op: `bitnet` (with --kernel bitnet, the default there) computes
    /// GroupQueryAttention in the same library (ONNX Runtime's semantics, each cached key/value
    /// row read once for the query heads sharing it; outputs within float rounding of ONNX
    /// Runtime's); `ort` keeps ONNX Runtime's own `com.microsoft::GroupQueryAttention` (the
    /// only choice with --kernel ort).
    #[arg(long, value_enum)]
    pub attention: Option<KernelArg>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForLayout {
    Genai,
    Web,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelArg {
    Ort,
    Bitnet,
}

/// The environment variable that names the custom-op library, overriding the search.
pub const KERNEL_LIBRARY_ENV: &str = "BITNET_ONNX_KERNEL_LIBRARY";

/// The custom-op library's file name on this platform (`libbitnet_ortops.so` on Linux).
fn library_file_name() -> String {
    format!(
        "{}bitnet_ortops{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Where `--kernel bitnet` finds the library: `$BITNET_ONNX_KERNEL_LIBRARY` when set (it must
/// exist), else beside the running binary (where `cargo build` puts it for the workspace's
/// `bitnet-ortops` crate, and where a package ships it), else in cargo's `deps` folder beside
/// the binary (a build that made the library only as a dependency, as `cargo test` does).
fn locate_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(KERNEL_LIBRARY_ENV) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "--kernel bitnet: {KERNEL_LIBRARY_ENV}={} is not a file",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("--kernel bitnet: cannot find this binary's path")?;
    let dir = exe
        .parent()
        .context("--kernel bitnet: this binary's path has no folder")?;
    let name = library_file_name();
    let candidates = [dir.join(&name), dir.join("deps").join(&name)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    anyhow::bail!(
        "--kernel bitnet: the custom-op library {name} is not beside this binary ({}); build it with `cargo build -p bitnet-ortops` (same profile) or set {KERNEL_LIBRARY_ENV}",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildTarget {
    Ort,
}

pub fn run(args: &BuildArgs) -> Result<u8> {
    let opts = BuildOptions {
        layout: match args.layout {
            ForLayout::Genai => Layout::Genai,
            ForLayout::Web => Layout::Web,
        },
        embeddings: args.embeddings.into(),
        head: args.head.into(),
        table_block_size: args.table_block_size,
        block_size: args.block_size,
        last_logits: args.logits == Logits::Last,
        kernel: match args.kernel {
            KernelArg::Ort => Kernel::Ort,
            KernelArg::Bitnet => Kernel::Bitnet {
                library: locate_library()?,
            },
        },
        ort_attention: match (args.kernel, args.attention) {
            (KernelArg::Ort, Some(KernelArg::Bitnet)) => {
                anyhow::bail!("--attention bitnet needs --kernel bitnet (the op is in its library)")
            }
            (KernelArg::Ort, _) | (_, Some(KernelArg::Ort)) => true,
            (KernelArg::Bitnet, _) => false,
        },
        // Not a flag: ONNX Runtime's multiple is the only one users need.
        ..BuildOptions::default()
    };
    let start = Instant::now();
    let report = bitnet_build::build(&args.checkpoint, &args.output, &opts).with_context(|| {
        format!(
            "cannot build {} from {} (nothing was written)",
            args.output.display(),
            args.checkpoint.display()
        )
    })?;
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = serde_json::json!(secs);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if args.quiet {
        return Ok(0);
    }
    println!(
        "{}: family {} ({} MLP, {} RoPE), {} layers, hidden {}, vocab {}, context {} ({}), {}",
        report.checkpoint.display(),
        report.family,
        report.activation,
        report.rope_type,
        report.layers,
        report.hidden_size,
        report.vocab_size,
        report.context_length,
        if report.tied_embeddings {
            "tied"
        } else {
            "untied"
        },
        report.linear_form
    );
    println!(
        "  {} linear weights ({} parameters) as {} in {} nodes: {} read as stored codes (lossless), {} ternarised from master weights",
        report.linear_weights_stored_as_codes + report.linear_weights_ternarised,
        report.linear_params,
        match &report.kernel_library {
            None => "2-bit MatMulNBits".to_string(),
            Some(lib) => format!("bitnet.onnx BitLinear (custom-op library {lib}, in the folder)"),
        },
        report.matmulnbits_layers + report.bitlinear_layers,
        report.linear_weights_stored_as_codes,
        report.linear_weights_ternarised
    );
    if !report.float_ternary_scales.is_empty() {
        let found: Vec<String> = report
            .float_ternary_scales
            .iter()
            .map(|(how, n)| format!("{n} {how}"))
            .collect();
        println!(
            "  float-stored ternary weights, codes and scales recovered exactly: {}",
            found.join(", ")
        );
    }
    println!("  activations: {}", report.activations);
    println!("  LM head computed by {}", report.head_op);
    println!("  attention computed by {}", report.attention_op);
    for t in &report.tables {
        println!(
            "  {}: {} blocks of {} (rel. error {:.4}){}",
            t.role,
            t.bits,
            t.block_size,
            t.rel_error,
            if report.table_shared {
                ", one table shared by embedding and head"
            } else {
                ""
            }
        );
    }
    println!(
        "  wrote {} ({} files, {:.1} MB{}) in {:.1} s",
        report.out_dir.display(),
        report.files.len(),
        (report.model_bytes + report.data_bytes) as f64 / 1e6,
        if report.layout == Layout::Web {
            ", web layout for Transformers.js and onnxruntime-genai"
        } else {
            ""
        },
        secs
    );
    for w in &report.warnings {
        println!("  warning: {w}");
    }
    Ok(0)
}
