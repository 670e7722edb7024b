//! `bitnet-onnx check --target tensorrt MODEL`: lint against TensorRT's quantization rules.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bitnet_model::Model;

use bitnet_quant::targets::{self, Id};

/// A `check --target` value: a target of the library's table that has a lint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckTarget(pub Id);

static LINTED: std::sync::LazyLock<Vec<CheckTarget>> = std::sync::LazyLock::new(|| {
    targets::TARGETS
        .iter()
        .filter(|t| t.lint)
        .map(|t| CheckTarget(t.id))
        .collect()
});

impl clap::ValueEnum for CheckTarget {
    fn value_variants<'a>() -> &'a [Self] {
        &LINTED
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(targets::get(self.0).name))
    }
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Rules to check against.
    #[arg(long, value_enum)]
    pub target: CheckTarget,
    /// The ONNX model to check.
    pub model: PathBuf,
    /// Print the violations as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Returns the exit code: 0 when the model passes, 1 when it breaks a rule.
pub fn run(args: &CheckArgs) -> Result<u8> {
    let model = Model::load(&args.model)
        .with_context(|| format!("cannot check {}", args.model.display()))?;
    let violations = match args.target.0 {
        Id::Tensorrt => bitnet_quant::check::check_tensorrt(&model.proto, &model.path),
        other => anyhow::bail!(
            "no lint for --target {} (linted: {})",
            targets::get(other).name,
            targets::TARGETS
                .iter()
                .filter(|t| t.lint)
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"pass": violations.is_empty(), "violations": violations})
            )?
        );
    } else if violations.is_empty() {
        println!(
            "{}: passes TensorRT's quantization rules",
            args.model.display()
        );
    } else {
        for v in &violations {
            println!(
                "{}: [{}] {}: {}",
                args.model.display(),
                v.rule,
                v.at,
                v.message
            );
        }
        println!("{} violation(s)", violations.len());
    }
    Ok(if violations.is_empty() { 0 } else { 1 })
}
