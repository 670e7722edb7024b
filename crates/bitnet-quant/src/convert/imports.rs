//! Clean up, last step: the model's imports. The default-domain opset is raised to what the
//! new nodes need when every other node keeps its meaning (`crate::opsets`), the IR version to
//! what the target's tensors need, and the domains the new nodes use are imported.

use bitnet_model::proto::ModelProto;

use crate::emit::Emitter;
use crate::error::ConvertError;
use crate::opsets;
use crate::report::LayerReport;

/// Raises the IR version and the default-domain opset for the converted layers (`layers`;
/// nothing when there are none) to `min_opset`, within the target's limit. Returns the opset
/// the output imports.
pub(super) fn raise(
    model: &mut ModelProto,
    emitter: &dyn Emitter,
    p: &str,
    opset_before: Option<i64>,
    min_opset: i64,
    layers: &[LayerReport],
) -> Result<Option<i64>, ConvertError> {
    let converted = !layers.is_empty();
    let mut opset_after = opset_before;
    if converted {
        if let Some(max) = emitter.max_opset() {
            let have = opset_before.unwrap_or(0);
            if have.max(min_opset) > max {
                return Err(ConvertError::Other {
                    path: p.to_string(),
                    reason: format!(
                        "target {} parses default-domain opsets up to {max}, but the output needs opset {}",
                        emitter.name(),
                        have.max(min_opset)
                    ),
                });
            }
        }
        let ir = emitter.min_ir_version();
        if model.ir_version.unwrap_or(0) < ir {
            model.ir_version = Some(ir);
        }
        if let Some(have) = opset_before {
            if have < min_opset {
                if let Some(b) = opsets::upgrade_blocker(model, have, min_opset) {
                    return Err(ConvertError::OpsetUpgrade {
                        path: p.to_string(),
                        needed: min_opset,
                        have,
                        node: b.node,
                        op: b.op,
                        version: b.version,
                        change: b.change,
                    });
                }
                opsets::rewrite_for_upgrade(model, have, min_opset);
                for o in &mut model.opset_import {
                    let d = o.domain.as_deref().unwrap_or("");
                    if bitnet_model::node::is_default_domain(Some(d)) {
                        o.version = Some(min_opset);
                    }
                }
                opset_after = Some(min_opset);
            }
        }
    }
    Ok(opset_after)
}

/// Imports the domains the new nodes use: the emitter's when `layers` were converted, ONNX
/// Runtime's contrib domain when `tables` were quantized.
pub(super) fn add_domains(
    model: &mut ModelProto,
    emitter: &dyn Emitter,
    layers: bool,
    tables: bool,
) {
    if layers || tables {
        let tables_domain: &[(&str, i64)] = if tables { &[("com.microsoft", 1)] } else { &[] };
        for &(domain, version) in emitter.domains().iter().chain(tables_domain) {
            if bitnet_model::load::opset_version(model, domain).is_none() {
                model
                    .opset_import
                    .push(bitnet_model::proto::OperatorSetIdProto {
                        domain: Some(domain.to_string()),
                        version: Some(version),
                    });
            }
        }
    }
}
