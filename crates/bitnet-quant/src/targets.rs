//! The output targets, as one table: each one's `--target` name and help, the activation
//! precisions it can express, whether it runs ONNX Runtime's 4/8-bit head and embedding
//! tables, whether `check` lints for it, and the limits of the runtime that parses it. The CLI
//! builds its `--target` values and its flag checks from this table; the emitters and `check`
//! read the limits here, so a runtime fact is written once.

/// Activation precision of the converted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    Float,
    /// Integer kernels on int8 activations (BitNet's W1.58A8).
    Int8,
}

/// Which target; the discriminant is its position in [`TARGETS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    Ort,
    OrtInt8,
    Onnx,
    Tensorrt,
    QdqInt8,
}

/// One output target.
#[derive(Debug)]
pub struct Target {
    pub id: Id,
    /// The `--target` value.
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// The activation precisions it can express; `--activations auto` takes the first.
    pub activations: &'static [Activations],
    /// The runtime is ONNX Runtime: the embedding and head can become its `com.microsoft`
    /// 4/8-bit tables (MatMulNBits, GatherBlockQuantized), and do by default.
    pub onnx_runtime: bool,
    /// `check --target NAME` lints a model against this target's rules.
    pub lint: bool,
    /// Highest default-domain opset the runtime parses, when it has a limit.
    pub max_opset: Option<i64>,
}

impl Target {
    /// The precision `--activations auto` means for this target.
    pub fn default_activations(&self) -> Activations {
        self.activations[0]
    }

    pub fn accepts(&self, a: Activations) -> bool {
        self.activations.contains(&a)
    }
}

/// Every target, in the order `--help` lists them (the first is the default).
pub const TARGETS: [Target; 5] = [
    Target {
        id: Id::Ort,
        name: "ort",
        help: "ONNX Runtime: com.microsoft::MatMulNBits with 2-bit codes (about 16x smaller \
               weights); the fastest per generated token (7.0x float32 at 2B width with its \
               default int4 head and embedding)",
        activations: &[Activations::Int8, Activations::Float],
        onnx_runtime: true,
        lint: false,
        max_opset: None,
    },
    Target {
        id: Id::OrtInt8,
        name: "ort-int8",
        help: "ONNX Runtime, prefill-friendly: INT8 codes, BitNet per-token int8 activations, \
               MatMulInteger (fast at every batch size; 4x smaller weights). For prompts, use it \
               with --logits last: 5.1x float32 on a 128-token prompt at 2B width \
               (bench/hf_deploy_speed.py)",
        activations: &[Activations::Int8],
        onnx_runtime: true,
        lint: false,
        max_opset: None,
    },
    Target {
        id: Id::Onnx,
        name: "onnx",
        help: "Standard ONNX: INT2 codes + DequantizeLinear (opset 25, IR 13)",
        activations: &[Activations::Float],
        onnx_runtime: false,
        lint: false,
        max_opset: None,
    },
    Target {
        id: Id::Tensorrt,
        name: "tensorrt",
        help: "TensorRT: INT4 codes blocked along K (or per-channel INT8 with --tensorrt-int8)",
        activations: &[Activations::Float],
        onnx_runtime: false,
        lint: true,
        max_opset: Some(*tensorrt::OPSETS.end()),
    },
    Target {
        id: Id::QdqInt8,
        name: "qdq-int8",
        help: "INT8 ternary codes + DequantizeLinear feeding the original MatMul/Gemm (runs \
               everywhere; in ONNX Runtime, ort-int8 is faster and exact)",
        activations: &[Activations::Float],
        onnx_runtime: false,
        lint: false,
        max_opset: None,
    },
];

/// The table entry of `id`: [`TARGETS`] lists the targets in `Id` order (a test checks it).
pub fn get(id: Id) -> &'static Target {
    &TARGETS[id as usize]
}

/// The target named `name` on the command line.
pub fn by_name(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// What TensorRT 10.x's ONNX parser accepts for explicit quantization (docs/formats.md 2.3),
/// read by the `tensorrt` emitter and by `check --target tensorrt`.
pub mod tensorrt {
    /// Default-domain opsets the parser reads for Q/DQ models.
    pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=24;
    /// Block sizes along K of blocked (INT4) weight quantization.
    pub const INT4_BLOCK_SIZES: [i64; 2] = [64, 128];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_entry_and_names_are_unique() {
        for id in [Id::Ort, Id::OrtInt8, Id::Onnx, Id::Tensorrt, Id::QdqInt8] {
            assert_eq!(TARGETS.iter().filter(|t| t.id == id).count(), 1, "{id:?}");
            assert_eq!(get(id).id, id);
        }
        for t in &TARGETS {
            assert_eq!(by_name(t.name).map(|b| b.id), Some(t.id));
            assert!(!t.activations.is_empty(), "{}", t.name);
        }
        assert!(by_name("tflite").is_none());
    }

    #[test]
    fn only_the_onnx_runtime_targets_take_int8_activations() {
        for t in &TARGETS {
            assert_eq!(t.accepts(Activations::Int8), t.onnx_runtime, "{}", t.name);
        }
        assert!(!get(Id::OrtInt8).accepts(Activations::Float));
        assert_eq!(get(Id::Tensorrt).max_opset, Some(24));
    }
}
