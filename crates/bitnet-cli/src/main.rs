//! `bitnet-onnx`: a thin binary over the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod convert;
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
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Inspect(a) => inspect::run(a).map(|_| 0),
        Command::Convert(a) => convert::run_and_verify(a, &argv),
        Command::Check(a) => check::run(a),
        Command::Verify(a) => verify::run(a).map(|c| c.clamp(0, 255) as u8),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
