//! `bitnet-onnx`: a thin binary over the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod check;
mod convert;
mod docs;
mod inspect;
mod progress;
mod verify;

/// Turn ternary (BitNet b1.58) ONNX models into deployable ternary graphs and prove they still
/// compute the same thing.
#[derive(Parser, Debug)]
#[command(name = "bitnet-onnx", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what is inside a model and which linear layers can become ternary.
    Inspect(inspect::InspectArgs),
    /// Convert MatMul/Gemm weights to ternary codes plus scales.
    Convert(convert::ConvertArgs),
    /// Run the original and the converted model in tract and compare them (exit 0 pass, 1 fail,
    /// 2 could not run).
    Verify(verify::VerifyArgs),
    /// Lint a model against a runtime's quantization rules (exit 1 on violations).
    Check(check::CheckArgs),
    /// Build an onnxruntime-genai model folder (KV cache, 2-bit layers) from a transformers
    /// checkpoint of a ternary model family (exit 2 on a bad checkpoint, with nothing written).
    Build(build::BuildArgs),
    /// Print a shell completion script: `bitnet-onnx completions bash > /etc/bash_completion.d/bitnet-onnx`.
    Completions(docs::CompletionsArgs),
    /// Print a man page (roff) for the tool or one of its commands: `bitnet-onnx man | man -l -`.
    Man(docs::ManArgs),
}

/// Makes glibc give large freed buffers back to the system at once.
///
/// By default glibc raises its mmap threshold to the size of the largest buffer freed so far
/// (up to 32 MiB). After the first weight's codes are freed, the next weights' codes, stripes
/// and packed tensors come from the threads' heap arenas, and memory freed there stays
/// resident. A fixed 256 KiB threshold maps every larger buffer on its own and unmaps it when
/// it is freed, which lowered convert's peak memory at the same speed (docs/benchmarks.md,
/// "Tuning constants"). Only `convert` sets it: `verify` runs tract, which allocates and frees large tensors on every run, and was not
/// measured with it.
fn return_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it is called
    // before any thread is started, and every value of M_MMAP_THRESHOLD up to 32 MiB is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect(a) => inspect::run(a).map(|_| 0),
        Command::Convert(a) => {
            return_freed_buffers();
            convert::run_and_verify(a)
        }
        Command::Check(a) => check::run(a),
        Command::Build(a) => {
            return_freed_buffers();
            build::run(a)
        }
        Command::Verify(a) => verify::run(a).map(|c| c.clamp(0, 255) as u8),
        Command::Completions(a) => docs::completions::<Cli>(a).map(|_| 0),
        Command::Man(a) => docs::man::<Cli>(a).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
