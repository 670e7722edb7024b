//! The `bitnet_onnx.*` entries of a converted model's `metadata_props`: one schema, written by
//! `convert` and read by `verify`. List entries are JSON arrays of the types below; their
//! fields are declared in alphabetical order, the order the JSON has always had.

use serde::{Deserialize, Serialize};

use crate::proto::{ModelProto, StringStringEntryProto};

/// Every key starts with this.
pub const PREFIX: &str = "bitnet_onnx.";
/// The tool version that converted the model.
pub const VERSION: &str = "bitnet_onnx.version";
/// The `--target`.
pub const TARGET: &str = "bitnet_onnx.target";
/// The settings that decided the output, as flags (never paths).
pub const FLAGS: &str = "bitnet_onnx.flags";
/// What the output does with activations.
pub const ACTIVATIONS: &str = "bitnet_onnx.activations";
/// The converted linear layers: a JSON array of [`LayerSpec`].
pub const LAYERS: &str = "bitnet_onnx.layers";
/// The conversion totals: a JSON [`TotalsSpec`].
pub const TOTALS: &str = "bitnet_onnx.totals";
/// The 4/8-bit embedding and head tables: a JSON array of [`TableSpec`].
pub const TABLES: &str = "bitnet_onnx.tables";
/// `last` when the heads compute the last position only (`convert --logits last`: logits
/// `[batch, 1, vocab]`); `last-row` when `build --logits last` computes only the row
/// onnxruntime-genai reads and leaves the others 0 (logits keep `[batch, seq, vocab]`).
pub const LOGITS: &str = "bitnet_onnx.logits";
/// What `build`'s ternary layers run on: `ort` (ONNX Runtime's `MatMulNBits`) or `bitnet`
/// (the `bitnet.onnx::BitLinear` custom op, whose library is in the model folder).
pub const KERNEL: &str = "bitnet_onnx.kernel";
/// What `build` read: the checkpoint's transformers linear class.
pub const SOURCE: &str = "bitnet_onnx.source";
/// What `build` read: the model family recognised from the checkpoint's config.json
/// (`bitnet`, `llama-bitnet`, `1bitllm`, `qwen3-bitnet`).
pub const FAMILY: &str = "bitnet_onnx.family";
/// `available` when every converted weight reaches its layer through a constant
/// DequantizeLinear (the original can be rebuilt on the dequantized weights).
pub const DEQUANTIZED_REFERENCE: &str = "bitnet_onnx.dequantized_reference";

/// One converted layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerSpec {
    /// Whether the converted layer computes the original layer exactly, up to float rounding:
    /// its weight is represented exactly (already ternary) and the conversion adds no
    /// activation quantization of its own. `None` when not recorded (older conversions,
    /// `build`); `verify` then holds the layer to its quantization tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lossless: Option<bool>,
    pub node: String,
    pub op: String,
    pub output: String,
    /// When the converted layer took over a constant scale applied after the node (BitNet's
    /// `weight_scale`): the factor that went into the converted weight's scales, and the
    /// value after that scale, which both models compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_output: Option<String>,
    pub weight: String,
}

impl LayerSpec {
    /// The value compared between the two models for this layer.
    pub fn compared(&self) -> &str {
        self.scaled_output.as_deref().unwrap_or(&self.output)
    }
}

/// One embedding or head table quantized to 4 or 8 bits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableSpec {
    /// `int4` or `int8`.
    pub bits: String,
    pub block_size: usize,
    pub node: String,
    /// The value the node computes in both models.
    pub output: String,
    /// The converter's `|W - dequantized| / |W|`.
    pub rel_error: f64,
    /// `head` or `embedding`.
    pub role: String,
    /// The original float initializer.
    pub weight: String,
}

/// The conversion's totals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TotalsSpec {
    pub converted: usize,
    pub skipped: usize,
    pub weight_bytes_after: u64,
    pub weight_bytes_before: u64,
}

/// The value of `key`, if the model has it.
pub fn get<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|e| e.key.as_deref() == Some(key))
        .and_then(|e| e.value.as_deref())
}

/// Sets `key` to `value`, replacing an earlier value (appended at the end).
pub fn set(model: &mut ModelProto, key: &str, value: String) {
    model
        .metadata_props
        .retain(|kv| kv.key.as_deref() != Some(key));
    model.metadata_props.push(StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value),
    });
}

/// `value` as the JSON a metadata entry holds.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The JSON list under `key`: `None` when the key is absent, `Err` with serde's message when
/// it does not parse.
pub fn list<T: for<'de> Deserialize<'de>>(
    model: &ModelProto,
    key: &str,
) -> Option<Result<Vec<T>, String>> {
    get(model, key).map(|v| serde_json::from_str(v).map_err(|e| e.to_string()))
}

/// True when any `bitnet_onnx.*` entry is present (the model was converted).
pub fn converted(model: &ModelProto) -> bool {
    model
        .metadata_props
        .iter()
        .any(|kv| kv.key.as_deref().is_some_and(|k| k.starts_with(PREFIX)))
}
