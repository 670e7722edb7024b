//! One module per output format. An emitter reads the graph around the linear layers that
//! share one weight and, given that weight's ternary codes and scales, returns the rewrite as a
//! [`patch::Patch`]; the driver applies it ([`patch::apply`]), the only place the graph changes.

pub mod dq;
pub mod linear;
pub mod onnx_int2;
pub mod ort;
pub mod ort_int8;
pub mod patch;
pub mod qdq_int8;
pub mod tensorrt;
#[cfg(test)]
pub(crate) mod testing;

use bitnet_model::proto::GraphProto;

use crate::analyse::LinearLayer;
use crate::quant::Ternary;

pub use patch::{Edit, Patch};

/// Why an emitter cannot write a weight for its target. The driver adds the file and the
/// weight's name.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The target has no kernel or form for the weight's element type.
    #[error("{dtype}: {why}")]
    ElementType {
        dtype: &'static str,
        why: &'static str,
    },
    /// The weight's scales, or the target's settings, do not fit the target's layout.
    #[error("{0}")]
    Layout(String),
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
    /// A layer of the job is not in the graph any more (a bug: the driver hands each layer
    /// to one emission only).
    #[error("node '{node}' no longer reads it")]
    Missing { node: String },
}

/// What an emitter is given for one weight.
pub struct WeightJob<'a> {
    /// The weight value name in the graph.
    pub weight: &'a str,
    /// Element type of the weight (float32, float16 or bfloat16): scales use it.
    pub dtype: i32,
    /// The layers reading this weight.
    pub layers: &'a [&'a LinearLayer],
    pub ternary: &'a Ternary,
    /// The model's default-domain opset (0 when it imports none): emitters that add standard
    /// ops beyond DequantizeLinear pick the operator forms valid at this version.
    pub opset: i64,
    /// For each layer, BitNet's activation quantization feeding it, when the driver found one
    /// (`crate::bitnet::act_quant`): an integer path can take its codes as they are.
    pub activations: &'a [Option<crate::bitnet::ActQuant>],
}

/// Result of emitting one weight.
#[derive(Debug, Default)]
pub struct Emitted {
    /// The rewrite; its [`patch::Role::Weight`] tensors are the weight's codes and scales.
    pub patch: Patch,
    /// Lowest default-domain opset the new nodes need.
    pub min_opset: i64,
    /// What of the graph around the layers the emitter took over, for the report.
    pub absorbed: Vec<String>,
    /// Outputs of graph nodes that may be dead now (the caller removes those that are).
    pub removable: Vec<String>,
}

/// A deployment format.
pub trait Emitter: Sync {
    /// Its entry in the target table (name, runtime, limits).
    fn target(&self) -> &'static crate::targets::Target;
    /// The `--target` name.
    fn name(&self) -> &'static str {
        self.target().name
    }
    /// The rewrite of `graph` for one weight. New nodes go before their consumers; the caller
    /// applies the patch and removes whatever becomes dead.
    fn emit(
        &self,
        graph: &GraphProto,
        job: &WeightJob,
        cx: &mut EmitContext,
    ) -> Result<Emitted, EmitError>;
    /// True when every converted weight reaches its node through a constant DequantizeLinear,
    /// so a verifier can rebuild the dequantized reference from the output alone.
    fn dequantize_linear_weights(&self) -> bool;
    /// Operator-set domains (besides the default one) the emitted nodes need, with versions.
    fn domains(&self) -> &'static [(&'static str, i64)] {
        &[]
    }
    /// Lowest IR version the output needs (INT2 tensors need IR 13).
    fn min_ir_version(&self) -> i64 {
        0
    }
    /// What the output does with activations, for the report and the metadata.
    fn activations(&self) -> String {
        "float (weights dequantized by DequantizeLinear; ONNX Runtime's default optimisations \
         may fuse DequantizeLinear -> MatMul into int8-activation kernels)"
            .to_string()
    }
    /// Whether a layer keeps its constant output scale node when that node's only consumer is
    /// a Relu or Clip. ONNX Runtime 1.32 fuses `DequantizeLinear -> MatMul` into MatMulNBits
    /// only when the MatMul does not feed a lone Relu/Clip (its QDQ selector takes one for a
    /// clip a QuantizeLinear would make redundant, and finds none), so folding the scale
    /// into the weights would leave that layer's weight dequantized at every run.
    fn keep_scale_before_clip(&self) -> bool {
        false
    }
    /// True when the rewrite of `job`'s layer `layer` quantizes that layer's activations in the
    /// graph itself (so it does not compute the original exactly even from exact weights).
    /// Recorded per layer in the metadata (`lossless`), which `verify` reads to choose its
    /// tolerance. A runtime's own choice (MatMulNBits `accuracy_level`) is not counted here.
    fn quantizes_activations(&self, _job: &WeightJob, _layer: usize) -> bool {
        false
    }
    /// True when the emitter takes BitNet's layer as a unit for this weight (the graph's own
    /// int8 activation codes reach an integer product, `crate::bitnet`), so the graph's
    /// constant output scale must stay where it is rather than be folded into the weight
    /// scales: the product of codes is then exact (or as exact as the kernel makes it) and the
    /// scales are applied afterwards in the original graph's own order of float operations
    /// (`y / (s * weight_scale)`, `(y / s) * weight_scale`), so the result rounds where the
    /// original rounds. `dtype` is the weight's element type, `activations` the plan's match
    /// per layer.
    fn keeps_output_scale(
        &self,
        _dtype: i32,
        _activations: &[Option<crate::bitnet::ActQuant>],
    ) -> bool {
        false
    }
    /// True when the target runtime is ONNX Runtime, whose `com.microsoft` ops
    /// (`MatMulNBits`, `GatherBlockQuantized`) the embedding and head tables use.
    fn onnx_runtime(&self) -> bool {
        self.target().onnx_runtime
    }
    /// Highest default-domain opset the target runtime parses, if it has a limit.
    fn max_opset(&self) -> Option<i64> {
        self.target().max_opset
    }
}

/// What emitting one weight leaves for the next ones, kept by the driver for the whole graph
/// (never in the model): the names in use, and the activation quantizations already built,
/// which later layers reading the same value share. Derefs to the name generator.
pub struct EmitContext {
    pub names: NameGen,
    /// Per-token int8 activations built so far, by the value they quantize.
    pub activations: std::collections::HashMap<String, SharedActivation>,
    /// Inputs already laid out for `ort`'s exact-activation MatMulNBits (each block of the
    /// block size holding `block size - 1` codes and 127), by the value and the block size:
    /// the padded value.
    pub reserved_inputs: std::collections::HashMap<(String, usize), String>,
}

/// An activation quantization one layer built and later layers reuse.
#[derive(Debug, Clone)]
pub struct SharedActivation {
    /// The uint8 activation (codes shifted by 128).
    pub q: String,
    /// The per-token scale the product is divided by, when there is one.
    pub s: Option<String>,
}

impl EmitContext {
    pub fn new(graph: &GraphProto) -> Self {
        EmitContext {
            names: NameGen::new(graph),
            activations: std::collections::HashMap::new(),
            reserved_inputs: std::collections::HashMap::new(),
        }
    }
}

impl std::ops::Deref for EmitContext {
    type Target = NameGen;
    fn deref(&self) -> &NameGen {
        &self.names
    }
}

impl std::ops::DerefMut for EmitContext {
    fn deref_mut(&mut self) -> &mut NameGen {
        &mut self.names
    }
}

/// Generates value/node names that do not clash with any name in the graph.
pub struct NameGen {
    used: std::collections::HashSet<String>,
}

impl NameGen {
    pub fn new(graph: &GraphProto) -> Self {
        let mut used = std::collections::HashSet::new();
        for n in &graph.node {
            used.extend(n.output.iter().cloned());
            used.extend(n.input.iter().cloned());
            used.extend(n.name.iter().cloned());
        }
        used.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
        used.extend(graph.input.iter().filter_map(|v| v.name.clone()));
        used.extend(graph.output.iter().filter_map(|v| v.name.clone()));
        NameGen { used }
    }

    /// `base` if free, else `base_2`, `base_3`...
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }
}
