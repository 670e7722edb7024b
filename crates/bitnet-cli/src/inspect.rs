//! `bitnet-onnx inspect`: what is inside a model and which linear layers can become ternary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bitnet_model::graph::{op_histogram, parameter_stats, value_elem_type, value_shape};
use bitnet_model::proto::ValueInfoProto;
use bitnet_model::{dtype, walk, Model};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The ONNX model to inspect.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn io_json(v: &ValueInfoProto) -> Value {
    json!({
        "name": v.name.clone().unwrap_or_default(),
        "dtype": value_elem_type(v).map(dtype::short_name),
        "shape": value_shape(v).map(|s| s.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
    })
}

/// Builds the inspection as JSON (the text output is rendered from it).
pub fn inspect_json(model: &Model) -> Value {
    let p = &model.proto;
    let g = model.graph();
    let opsets: serde_json::Map<String, Value> = p
        .opset_import
        .iter()
        .map(|o| {
            let d = o.domain.clone().unwrap_or_default();
            (
                if d.is_empty() {
                    "ai.onnx".to_string()
                } else {
                    d
                },
                json!(o.version),
            )
        })
        .collect();
    let params = parameter_stats(p);
    let total_elems: u64 = params.values().map(|s| s.elements).sum();
    let total_bytes: u64 = params.values().map(|s| s.bytes).sum();
    let mut layers = Vec::new();
    let mut graph_no = 0;
    walk::for_each_graph(p, &mut |sub| {
        let (ls, _, _) =
            bitnet_quant::analyse::find_linear_layers(sub, &model.path, Some(&model.mappings));
        for l in ls {
            layers.push(json!({
                "graph": if graph_no == 0 { "main".to_string() } else { sub.name.clone().unwrap_or_else(|| format!("subgraph {graph_no}")) },
                "node": l.node, "op": l.op, "weight": l.weight, "shape": l.shape,
                "dtype": if l.dtype != 0 { Some(dtype::short_name(l.dtype)) } else { None },
                "candidate": l.candidate, "reason": l.reason, "folded": l.folded,
            }));
        }
        graph_no += 1;
    });
    json!({
        "path": model.path.display().to_string(),
        "ir_version": p.ir_version,
        "opsets": opsets,
        "producer": format!("{} {}", p.producer_name.clone().unwrap_or_default(), p.producer_version.clone().unwrap_or_default()).trim(),
        "inputs": g.input.iter().filter(|v| !g.initializer.iter().any(|t| t.name == v.name)).map(io_json).collect::<Vec<_>>(),
        "outputs": g.output.iter().map(io_json).collect::<Vec<_>>(),
        "ops": op_histogram(p),
        "parameters": {
            "total": total_elems,
            "bytes": total_bytes,
            "by_dtype": params.iter().map(|(k, s)| (k.clone(), json!({"tensors": s.tensors, "elements": s.elements, "bytes": s.bytes}))).collect::<serde_json::Map<_, _>>(),
        },
        "external_data": { "tensors": model.external.len(), "bytes": model.external.iter().map(|e| e.length).sum::<u64>() },
        "file_bytes": model.file_bytes,
        "linear_layers": layers,
        "tables": bitnet_quant::vocab::describe_tables(g),
        "bitnet_onnx": recorded(p),
    })
}

/// What `convert` or `build` recorded in the model (`bitnet_onnx.*` metadata), or null: the
/// target, flags and activations as written, and the counts of converted layers and tables.
fn recorded(p: &bitnet_model::proto::ModelProto) -> Value {
    use bitnet_model::metadata as md;
    if !md::converted(p) {
        return Value::Null;
    }
    let count = |key: &str| {
        md::get(p, key)
            .and_then(|v| serde_json::from_str::<Vec<Value>>(v).ok())
            .map(|v| v.len())
    };
    json!({
        "version": md::get(p, md::VERSION),
        "target": md::get(p, md::TARGET),
        "flags": md::get(p, md::FLAGS),
        "activations": md::get(p, md::ACTIVATIONS),
        "source": md::get(p, md::SOURCE),
        "family": md::get(p, md::FAMILY),
        "kernel": md::get(p, md::KERNEL),
        "layers": count(md::LAYERS),
        "tables": count(md::TABLES),
    })
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let model = Model::load(&args.model)
        .with_context(|| format!("cannot inspect {}", args.model.display()))?;
    let j = inspect_json(&model);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("model      {}", j["path"].as_str().unwrap_or(""));
    println!("ir_version {}", j["ir_version"]);
    let opsets: Vec<String> = j["opsets"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    println!("opsets     {}", opsets.join(", "));
    println!("producer   {}", j["producer"].as_str().unwrap_or(""));
    println!(
        "file size  {} bytes ({} tensors in external data)",
        j["file_bytes"], j["external_data"]["tensors"]
    );
    for (title, key) in [("inputs", "inputs"), ("outputs", "outputs")] {
        println!("{title}:");
        for v in j[key].as_array().into_iter().flatten() {
            let shape: Vec<String> = v["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d.as_str().unwrap_or("?").to_string())
                .collect();
            println!(
                "  {:<24} {:<8} [{}]",
                v["name"].as_str().unwrap_or(""),
                v["dtype"].as_str().unwrap_or("?"),
                shape.join(", ")
            );
        }
    }
    println!(
        "parameters {} ({} bytes)",
        j["parameters"]["total"], j["parameters"]["bytes"]
    );
    for (k, s) in j["parameters"]["by_dtype"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!(
            "  {:<10} {:>12} elements {:>14} bytes in {} tensors",
            k, s["elements"], s["bytes"], s["tensors"]
        );
    }
    println!("ops:");
    for (k, n) in j["ops"].as_object().into_iter().flatten() {
        println!("  {k:<28} {n}");
    }
    let layers = j["linear_layers"].as_array().cloned().unwrap_or_default();
    let cands = layers.iter().filter(|l| l["candidate"] == true).count();
    println!(
        "linear layers: {} ({} ternary candidates)",
        layers.len(),
        cands
    );
    for l in &layers {
        let shape: Vec<String> = l["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.to_string())
            .collect();
        let verdict = if l["candidate"] == true {
            if l["folded"] == true {
                "candidate (weight folded from constants)".to_string()
            } else {
                "candidate".to_string()
            }
        } else {
            format!("no: {}", l["reason"].as_str().unwrap_or(""))
        };
        println!(
            "  {:<40} {:<6} {:<36} [{}] {}",
            l["node"].as_str().unwrap_or(""),
            l["op"].as_str().unwrap_or(""),
            l["weight"].as_str().unwrap_or(""),
            shape.join("x"),
            verdict
        );
    }
    if let Some(r) = j["bitnet_onnx"].as_object() {
        println!(
            "written by bitnet-onnx {}:",
            r["version"].as_str().unwrap_or("?")
        );
        for k in [
            "target",
            "flags",
            "family",
            "source",
            "kernel",
            "activations",
            "layers",
            "tables",
        ] {
            match &r[k] {
                Value::Null => {}
                Value::String(v) => println!("  {k:<11} {v}"),
                v => println!("  {k:<11} {v}"),
            }
        }
    }
    let tables = j["tables"].as_array().cloned().unwrap_or_default();
    if !tables.is_empty() {
        println!("embedding and head tables (--head, --embeddings; targets ort, ort-int8):");
    }
    for t in &tables {
        let shape: Vec<String> = t["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.to_string())
            .collect();
        let verdict = match (t["reason"].as_str(), t["tied_with"].as_str()) {
            (Some(r), _) => format!("no: {r}"),
            (None, Some(o)) => format!("int4/int8 (tied with {o}: one table)"),
            (None, None) => "int4/int8".to_string(),
        };
        println!(
            "  {:<9} {:<30} {:<36} [{}] {}",
            t["role"].as_str().unwrap_or(""),
            t["node"].as_str().unwrap_or(""),
            t["weight"].as_str().unwrap_or(""),
            shape.join("x"),
            verdict
        );
    }
    Ok(())
}
