//! Record: the `bitnet_onnx.*` metadata a converted model carries
//! (`bitnet_model::metadata`'s schema).

use bitnet_model::metadata::{self as md, LayerSpec, TableSpec, TotalsSpec};
use bitnet_model::proto::ModelProto;

use super::options::ConvertOptions;
use crate::report::Report;

/// Writes the metadata of a conversion that changed anything; a model nothing was done to
/// keeps its metadata as it was.
pub(super) fn metadata(
    model: &mut ModelProto,
    report: &Report,
    opts: &ConvertOptions,
    meta_layers: &[LayerSpec],
) {
    if report.layers.is_empty() && report.tables.is_empty() && report.last_position_heads.is_empty()
    {
        return;
    }
    md::set(model, md::VERSION, env!("CARGO_PKG_VERSION").to_string());
    md::set(model, md::TARGET, opts.emitter.name().to_string());
    md::set(model, md::FLAGS, opts.flags.clone());
    md::set(model, md::ACTIVATIONS, report.activations.clone());
    md::set(model, md::LAYERS, md::to_json(meta_layers));
    let totals = TotalsSpec {
        converted: report.totals.converted,
        skipped: report.totals.skipped.len(),
        weight_bytes_after: report.totals.weight_bytes_after,
        weight_bytes_before: report.totals.weight_bytes_before,
    };
    md::set(model, md::TOTALS, md::to_json(&totals));
    if !report.last_position_heads.is_empty() {
        md::set(model, md::LOGITS, "last".to_string());
    }
    if !report.tables.is_empty() {
        let specs: Vec<TableSpec> = report
            .tables
            .iter()
            .map(|t| TableSpec {
                bits: t.bits.name().to_string(),
                block_size: t.block_size,
                node: t.node.clone(),
                output: t.output.clone(),
                rel_error: t.rel_error,
                role: t.role.clone(),
                weight: t.weight.clone(),
            })
            .collect();
        md::set(model, md::TABLES, md::to_json(&specs));
    }
    if opts.emitter.dequantize_linear_weights() {
        md::set(model, md::DEQUANTIZED_REFERENCE, "available".to_string());
    }
}
