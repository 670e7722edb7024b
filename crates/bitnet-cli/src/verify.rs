//! `bitnet-onnx verify`: runs the original and the converted model in tract on the same inputs
//! and compares them. Exit code 0 = pass, 1 = outside the tolerances (the inputs are saved for
//! a replay with `--inputs`), 2 = could not run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bitnet_eval::verify::{verify_paths, VerifyReport};
use bitnet_eval::{save_npz, VerifyOptions};

/// Verify a converted model against its original by running both in tract.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The model before conversion.
    pub original: PathBuf,
    /// The converted model.
    pub converted: PathBuf,
    /// Read the inputs from an .npz file or an ONNX test-data directory (input_0.pb, ...)
    /// instead of generating them.
    #[arg(long, value_name = "PATH")]
    pub inputs: Option<PathBuf>,
    /// Value of a symbolic input dim (repeatable). Unset dims: 1 if the name contains
    /// "batch", else 16.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// Range [LO, HI) of an integer input (repeatable). Default: the table size for Gather
    /// indices, else 0..10.
    #[arg(long = "input-range", value_name = "NAME=LO..HI", value_parser = parse_range)]
    pub input_ranges: Vec<(String, (i64, i64))>,
    /// Number of random input sets.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of the first random input set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest relative L2 error allowed on a converted layer that is not lossless (on the
    /// original's input to it), and on every output when the outputs are judged (some layer
    /// is not lossless or could not be checked alone). Lossless layers are held to float
    /// rounding (1e-5).
    #[arg(long, default_value_t = 0.05)]
    pub max_rel_error: f64,
    /// Smallest cosine similarity allowed where --max-rel-error applies.
    #[arg(long, default_value_t = 0.99)]
    pub min_cosine: f64,
    /// Write the JSON report to FILE, or to standard output with `-` (the table then goes to
    /// standard error).
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<PathBuf>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))?;
    let v = v
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("'{v}' is not a non-negative integer"))?;
    Ok((k.trim().to_string(), v))
}

fn parse_range(s: &str) -> Result<(String, (i64, i64)), String> {
    let (k, r) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=LO..HI, got '{s}'"))?;
    let (lo, hi) = r
        .split_once("..")
        .ok_or_else(|| format!("expected LO..HI, got '{r}'"))?;
    let lo = lo
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("'{lo}' is not an integer"))?;
    let hi = hi
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("'{hi}' is not an integer"))?;
    if hi <= lo {
        return Err(format!("empty range {lo}..{hi}"));
    }
    Ok((k.trim().to_string(), (lo, hi)))
}

impl VerifyArgs {
    fn options(&self) -> VerifyOptions {
        VerifyOptions {
            dims: self.dims.iter().cloned().collect::<BTreeMap<_, _>>(),
            seed: self.seed,
            samples: self.samples,
            inputs: self.inputs.clone(),
            ranges: self.input_ranges.iter().cloned().collect(),
            max_rel_error: self.max_rel_error,
            min_cosine: self.min_cosine,
        }
    }

    fn json_to_stdout(&self) -> bool {
        self.json.as_deref() == Some(Path::new("-"))
    }

    /// Where the inputs of a failed run are saved.
    pub fn inputs_path(&self) -> PathBuf {
        match &self.json {
            Some(p) if p != Path::new("-") => p.with_extension("inputs.npz"),
            _ => {
                let mut s = self.converted.clone().into_os_string();
                s.push(".verify-inputs.npz");
                PathBuf::from(s)
            }
        }
    }
}

fn fmt_f(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1e-3 && v.abs() < 1e4 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// The human-readable report.
pub fn render(r: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "original:  {}", r.original);
    let _ = writeln!(s, "converted: {}", r.converted);
    let dims: Vec<String> = r
        .dims
        .iter()
        .map(|(k, v)| {
            let d = if r.default_dims.contains_key(k) {
                " (default)"
            } else {
                ""
            };
            format!("{k}={v}{d}")
        })
        .collect();
    let _ = writeln!(
        s,
        "dims:      {}",
        if dims.is_empty() {
            "-".to_string()
        } else {
            dims.join(", ")
        }
    );
    let _ = writeln!(s, "samples:   {}", r.samples);
    let _ = writeln!(s, "inputs:");
    for i in &r.inputs {
        let _ = writeln!(s, "  {} {}{:?}: {}", i.name, i.dtype, i.shape, i.source);
    }
    let _ = writeln!(
        s,
        "\noutputs end to end ({}; tolerances: rel_l2 <= {}, cosine >= {}):",
        r.outputs_rule, r.tolerances.max_rel_error, r.tolerances.min_cosine
    );
    let _ = writeln!(
        s,
        "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6}  result",
        "name", "max_abs", "mean_abs", "rel_l2", "cosine", "snr_db", "top1"
    );
    for o in &r.outputs {
        let m = &o.metrics;
        let result = match (o.pass, r.outputs_judged) {
            (true, true) => "ok",
            (false, true) => "FAIL",
            (true, false) => "within",
            (false, false) => "outside (not judged)",
        };
        let _ = writeln!(
            s,
            "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6}  {result}",
            o.name,
            fmt_f(m.max_abs_error),
            fmt_f(m.mean_abs_error),
            fmt_f(m.rel_l2),
            format!("{:.6}", m.cosine),
            format!("{:.1}", m.snr_db),
            format!("{:.3}", m.top1_agreement),
        );
    }
    if let Some(c) = &r.activation_codes {
        let _ = writeln!(
            s,
            "  activation codes: {} of {} flipped ({} at a tie, |x*s - (k + 0.5)| <= {}; the rest after them){}",
            c.flipped,
            c.codes,
            c.flipped_at_ties,
            r.tolerances.tie_distance,
            match &c.first_flip {
                Some(f) => format!(", first at {f}"),
                None => String::new(),
            }
        );
    }
    if let Some(rest) = &r.rest {
        let max_e2e = r
            .outputs
            .iter()
            .map(|o| o.metrics.rel_l2)
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "  with the original's layer outputs, the rest of the converted graph gives max rel_l2 {} ({}){}",
            fmt_f(rest.max_rel_l2),
            match (rest.agrees, rest.judged) {
                (true, _) => "agrees to float rounding",
                (false, true) => "DISAGREES: the graph outside the converted layers differs",
                (false, false) => "differs; not judged, some layers could not be checked alone",
            },
            match &r.activation_codes {
                _ if r.outputs_judged => String::new(),
                Some(c) if c.flipped > 0 && rest.agrees => format!(
                    ": the {} end to end is what the {} flipped codes set off{}",
                    fmt_f(max_e2e),
                    c.flipped,
                    if r.runtime_int8_activations {
                        ", with MatMulNBits' int8 activations (accuracy_level 4)"
                    } else {
                        ""
                    }
                ),
                None | Some(_) if max_e2e > 0.0 && r.runtime_int8_activations && rest.agrees => format!(
                    ": the {} end to end is MatMulNBits' int8 activations (accuracy_level 4)",
                    fmt_f(max_e2e)
                ),
                _ => String::new(),
            }
        );
    }
    if !r.tables.is_empty() {
        let _ = writeln!(
            s,
            "\ntables (the original above ran on these tables' dequantized values):"
        );
        for t in &r.tables {
            let _ = writeln!(
                s,
                "  {:<9} {:<30} {} blocks of {}: table rel error {}",
                t.role,
                t.node,
                t.bits,
                t.block_size,
                fmt_f(t.rel_error)
            );
        }
    }
    if let Some(outs) = &r.against_original {
        let _ = writeln!(
            s,
            "  what the tables cost, against the float original (reported, not judged):"
        );
        for o in outs {
            let m = &o.metrics;
            let _ = writeln!(
                s,
                "  {:<28} rel_l2 {} cosine {:.6} top1 {:.3}",
                o.name,
                fmt_f(m.rel_l2),
                m.cosine,
                m.top1_agreement
            );
        }
    }
    let _ = writeln!(
        s,
        "\nlayers, each alone on the original's input to it (lossless: rel_l2 <= {}; others: the tolerances):",
        fmt_f(r.tolerances.lossless_max_rel_l2)
    );
    if let Some(note) = &r.layers_note {
        let _ = writeln!(s, "  note: {note}");
    }
    if !r.layers.is_empty() {
        let _ = writeln!(
            s,
            "  {:<40} {:<12} {:>9} {:>10} {:>10} {:>10}  result",
            "node", "op", "lossless", "rel_l2", "cosine", "deq_rel_l2"
        );
    }
    for l in &r.layers {
        let _ = writeln!(
            s,
            "  {:<40} {:<12} {:>9} {:>10} {:>10} {:>10}  {}",
            l.node,
            l.op,
            match (l.lossless, l.exact) {
                (true, true) => "yes",
                (true, false) => "yes (half)",
                _ => "no",
            },
            fmt_f(l.rel_l2),
            format!("{:.6}", l.cosine),
            l.dequantized_rel_l2.map_or("-".to_string(), fmt_f),
            if l.pass { "ok" } else { "FAIL" }
        );
    }
    if let Some(f) = &r.first_failing_layer {
        let _ = writeln!(s, "  first layer outside its limit: {f}");
    }
    match (&r.dequantized_reference, &r.dequantized_reference_note) {
        (Some(d), _) => {
            let _ = writeln!(
                s,
                "\ndequantized reference, layer by layer: max rel_l2 {} ({})",
                fmt_f(d.max_rel_l2),
                if d.agrees {
                    "agrees to float rounding"
                } else {
                    "DISAGREES: the converted graph does not compute its own weights"
                }
            );
        }
        (None, Some(n)) => {
            let _ = writeln!(s, "\ndequantized reference: not available: {n}");
        }
        (None, None) => {}
    }
    let _ = writeln!(
        s,
        "\n{} in {} ms",
        if r.pass { "PASS" } else { "FAIL" },
        r.elapsed_ms
    );
    s
}

/// Runs the verification; returns the process exit code (0 pass, 1 fail, 2 could not run).
pub fn run(args: &VerifyArgs) -> anyhow::Result<i32> {
    // A folder from `build` has no ONNX original, and tract cannot run its attention: say so
    // instead of failing on the first op tract lacks. (Files that do not load are left to
    // verify_paths, which reports them.)
    for path in [&args.original, &args.converted] {
        let built = bitnet_model::Model::load(path).is_ok_and(|m| {
            let target = bitnet_model::metadata::get(&m.proto, bitnet_model::metadata::TARGET);
            target == Some(bitnet_build::TARGET) || target == Some(bitnet_build::TARGET_WEB)
        });
        if built {
            eprintln!(
                "error: could not verify: {} was written by `bitnet-onnx build` for onnxruntime-genai. \
                 verify compares an ONNX original with its conversion in tract, which cannot run \
                 GroupQueryAttention; a built folder's reference is transformers: generate with \
                 onnxruntime-genai (`python -m bitnet_onnx.generate`) and compare with transformers",
                path.display()
            );
            return Ok(2);
        }
    }
    let report = match verify_paths(&args.original, &args.converted, &args.options()) {
        Ok(r) => r,
        Err(e) => {
            let mut msg = format!("error: could not verify: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                // thiserror messages often embed their source already: say it once.
                let text = s.to_string();
                if !msg.contains(&text) {
                    msg.push_str(&format!("\n  caused by: {text}"));
                }
                src = s.source();
            }
            eprintln!("{msg}");
            return Ok(2);
        }
    };
    let table = render(&report);
    if args.json_to_stdout() {
        eprint!("{table}");
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print!("{table}");
        if let Some(p) = &args.json {
            let mut text = serde_json::to_string_pretty(&report)?;
            text.push('\n');
            std::fs::write(p, text)
                .map_err(|e| anyhow::anyhow!("writing the report {}: {e}", p.display()))?;
        }
    }
    if report.pass {
        return Ok(0);
    }
    let path = args.inputs_path();
    match save_npz(&path, &report.worst_inputs) {
        Ok(()) => eprintln!(
            "inputs of the worst sample saved to {} (replay with --inputs {})",
            path.display(),
            path.display()
        ),
        Err(e) => eprintln!("warning: could not save the inputs: {e}"),
    }
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: VerifyArgs,
    }

    fn samples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
    }

    fn args(v: &[&str]) -> VerifyArgs {
        let mut all = vec!["verify"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).unwrap().args
    }

    #[test]
    fn parses_dims_and_ranges() {
        let a = args(&[
            "a.onnx",
            "b.onnx",
            "--dim",
            "batch=2",
            "--dim",
            "seq=8",
            "--input-range",
            "ids=0..100",
        ]);
        assert_eq!(a.dims, vec![("batch".into(), 2), ("seq".into(), 8)]);
        assert_eq!(a.input_ranges, vec![("ids".into(), (0, 100))]);
        assert_eq!(
            (a.samples, a.seed, a.max_rel_error, a.min_cosine),
            (1, 0, 0.05, 0.99)
        );
        assert!(parse_range("x=5..5").is_err());
        assert!(parse_dim("x").is_err());
    }

    #[test]
    fn same_model_passes() {
        let t = samples().join("transformer.onnx");
        let t = t.to_str().unwrap();
        let a = args(&[t, t, "--dim", "batch=2", "--dim", "seq=8"]);
        assert_eq!(run(&a).unwrap(), 0);
    }

    #[test]
    fn scaled_layer_fails_with_1_and_saves_the_inputs() {
        use bitnet_model::{tensor, Model};
        let dir = std::env::temp_dir().join(format!("bitnet-verify-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Model::load(samples().join("mlp.onnx")).unwrap();
        let g = m.proto.graph.as_mut().unwrap();
        let w = g
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some("/fc2/Gemm"))
            .unwrap()
            .input[1]
            .clone();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(w.as_str()))
            .unwrap();
        let v: Vec<f32> = tensor::to_f32(Path::new("mlp"), t)
            .unwrap()
            .iter()
            .map(|x| x * 1.5)
            .collect();
        *t = tensor::from_f32(&w, &t.dims.clone(), &v);
        m.proto.metadata_props.push(bitnet_model::proto::StringStringEntryProto {
            key: Some("bitnet_onnx.layers".into()),
            value: Some(r#"[{"node": "/fc2/Gemm", "op": "Gemm", "weight": "w", "output": "/fc2/Gemm_output_0"}]"#.into()),
        });
        let conv = dir.join("scaled.onnx");
        bitnet_model::save(&m.proto, &conv, &Default::default(), &[]).unwrap();
        let json = dir.join("report.json");
        let a = args(&[
            samples().join("mlp.onnx").to_str().unwrap(),
            conv.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(run(&a).unwrap(), 1);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["pass"], false);
        assert_eq!(report["first_failing_layer"], "/fc2/Gemm");
        assert!(dir.join("report.inputs.npz").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_or_missing_converted_model_returns_2() {
        let dir = std::env::temp_dir().join(format!("bitnet-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = dir.join("garbage.onnx");
        std::fs::write(&g, b"\x08\x07garbage bytes").unwrap();
        let m = samples().join("mlp.onnx");
        for c in [g.clone(), dir.join("missing.onnx")] {
            let a = args(&[m.to_str().unwrap(), c.to_str().unwrap()]);
            assert_eq!(run(&a).unwrap(), 2);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
