//! Source: the input of each job of a batch, taken from the graph so that the graph is free
//! for the emitter while the batch is quantized, and the next batch's payloads read ahead.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::load::Mappings;
use bitnet_model::proto::{GraphProto, TensorProto};

use crate::analyse::{self, LinearLayer, WeightValue};
use crate::error::ConvertError;

/// A weight to quantize, owned by its job.
pub(super) enum JobInput {
    Folded(crate::fold::Const),
    /// The initializer (its payload shared with the loaded file, not copied).
    Tensor(Box<bitnet_model::proto::TensorProto>),
}

/// Each job's input: a folded weight is folded again here, one batch at a time (analysis kept
/// only its shape; the folder keeps small values such as shapes and scales for the whole
/// batch); an initializer is a cheap clone whose payload stays in the memory-mapped file.
/// Each weight is taken out of `weights`, so none is read twice. Then the weights of `ahead`
/// (the jobs after this batch that fit in the budget) start coming in from disk.
pub(super) fn read_batch<'b>(
    g: &GraphProto,
    batch: &'b [(String, Vec<&LinearLayer>)],
    ahead: &[(String, Vec<&LinearLayer>)],
    weights: &mut BTreeMap<String, WeightValue>,
    path: &Path,
    source: Option<&Mappings>,
) -> Result<Vec<(JobInput, &'b [&'b LinearLayer])>, ConvertError> {
    let p = path.display().to_string();
    let by_name: HashMap<&str, &TensorProto> = g
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    let index = GraphIndex::new(g);
    let mut folder = crate::fold::Folder::new(&index, path);
    let inputs = batch
        .iter()
        .map(|(w, ls)| {
            let input = match weights.remove(w) {
                Some(WeightValue::Folded { .. }) => {
                    let c = folder.eval(w).map_err(|e| ConvertError::Other {
                        path: p.clone(),
                        reason: format!("weight '{w}' of node '{}': {e}", ls[0].node),
                    })?;
                    folder.evict_large();
                    analyse::release_decoded(&index, &mut folder, source);
                    JobInput::Folded(c)
                }
                _ => match by_name.get(w.as_str()) {
                    Some(t) => JobInput::Tensor(Box::new((*t).clone())),
                    None => {
                        return Err(ConvertError::Other {
                            path: p.clone(),
                            reason: format!(
                                "weight '{w}' of node '{}' is not an initializer of its graph",
                                ls[0].node
                            ),
                        })
                    }
                },
            };
            Ok((input, ls.as_slice()))
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    if let Some(src) = source {
        for (w, _) in ahead {
            if let Some(raw) = by_name.get(w.as_str()).and_then(|t| t.raw_data.as_ref()) {
                src.prefetch(raw);
            }
        }
    }
    Ok(inputs)
}
