//! Select: which linear layers of a graph are converted, grouped by the weight they read, and
//! for every other one a typed reason why not (the report shows its text).

use std::collections::BTreeMap;
use std::fmt;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::GraphProto;

use super::options::ConvertOptions;
use crate::analyse::{self, LinearLayer};
use crate::report::Skipped;

/// Why a linear layer is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SkipReason {
    /// Analysis found it cannot be converted (the reason it gives).
    Unfit(String),
    NotIncluded,
    Excluded,
    TooSmall {
        params: i64,
        min: u64,
    },
    /// A projection feeding an output of the main graph (`main`) or of a subgraph.
    Head {
        main: bool,
    },
    /// Its weight is also read, transposed, by a layer converted in another layout.
    SharedTransposed {
        weight: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Unfit(r) => f.write_str(r),
            SkipReason::NotIncluded => f.write_str("not matched by --include"),
            SkipReason::Excluded => f.write_str("matched by --exclude"),
            SkipReason::TooSmall { params, min } => {
                write!(f, "{params} weights, below --min-params {min}")
            }
            SkipReason::Head { main: true } => f.write_str(
                "output projection feeding a graph output stays float (use --head int4, int8 or ternary)",
            ),
            SkipReason::Head { main: false } => f.write_str(
                "output projection feeding a subgraph output stays float (--head int4/int8 \
                 quantize the main graph's head only; --head ternary converts it)",
            ),
            SkipReason::SharedTransposed { weight } => write!(
                f,
                "weight '{weight}' is shared with a layer that reads it transposed"
            ),
        }
    }
}

/// The layers to convert, by weight in name order (each weight's layers share one layout),
/// and the layers skipped. The main graph's LM head is neither when `--head int4/int8` takes
/// it as a table (`vocab`, which reports it when it cannot).
pub(super) fn select(
    g: &GraphProto,
    layers: Vec<LinearLayer>,
    opts: &ConvertOptions,
    main: bool,
) -> (Vec<(String, Vec<LinearLayer>)>, Vec<Skipped>) {
    let index = GraphIndex::new(g);
    let sel = &opts.selection;
    let mut chosen: BTreeMap<String, Vec<LinearLayer>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for l in layers {
        let params: i64 = l.shape.iter().product();
        if main && opts.vocab.head.is_some() && analyse::feeds_graph_output(&index, &l.output) {
            continue;
        }
        let reason = if let Some(r) = &l.reason {
            Some(SkipReason::Unfit(r.clone()))
        } else if sel.include.as_ref().is_some_and(|re| !re.is_match(&l.node)) {
            Some(SkipReason::NotIncluded)
        } else if sel.exclude.as_ref().is_some_and(|re| re.is_match(&l.node)) {
            Some(SkipReason::Excluded)
        } else if (params as u64) < sel.min_params {
            Some(SkipReason::TooSmall {
                params,
                min: sel.min_params,
            })
        } else if !sel.quantize_head && analyse::feeds_graph_output(&index, &l.output) {
            Some(SkipReason::Head { main })
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(skip(l.node, reason)),
            None => chosen.entry(l.weight.clone()).or_default().push(l),
        }
    }
    // A weight shared with a skipped layer of another layout cannot be rewritten for one only:
    // keep the float copy for those consumers (the rewrite only rewires chosen layers).
    // Mixed layouts among chosen layers of one weight: keep the first layout's group only.
    let mut jobs = Vec::new();
    for (w, ls) in chosen {
        let layout = ls[0].layout;
        let (same, other): (Vec<LinearLayer>, Vec<LinearLayer>) =
            ls.into_iter().partition(|l| l.layout == layout);
        for l in other {
            let reason = SkipReason::SharedTransposed { weight: w.clone() };
            skipped.push(skip(l.node, reason));
        }
        jobs.push((w, same));
    }
    (jobs, skipped)
}

fn skip(node: String, reason: SkipReason) -> Skipped {
    Skipped {
        node,
        reason: reason.to_string(),
    }
}
