//! The report of a conversion: what was converted, what was not and why, and the totals. The
//! driver assembles it (`convert`), the CLI prints it or writes it as JSON.

use serde::Serialize;

/// Bytes of `count` values of ONNX element type `dtype` (0 for a type without a fixed size).
pub(crate) fn bytes_of(dtype: i32, count: u64) -> u64 {
    bitnet_model::dtype::byte_len(dtype, count).unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
pub struct Codes {
    #[serde(rename = "-1")]
    pub neg: u64,
    #[serde(rename = "0")]
    pub zero: u64,
    #[serde(rename = "1")]
    pub pos: u64,
}

/// One converted weight (and the layers reading it).
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub node: String,
    /// Other nodes sharing this weight.
    pub shared_with: Vec<String>,
    pub op: String,
    pub weight: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub granularity: String,
    pub codes: Codes,
    pub sparsity: f64,
    pub scale_min: f32,
    pub scale_max: f32,
    pub rel_error: f64,
    pub lossless: bool,
    pub folded: bool,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// What of BitNet's layer around the node was taken into the converted layer: the
    /// activation quantization (integer targets), a constant output scale (every target).
    pub absorbed: Vec<String>,
    /// Why a chain that looks like BitNet's activation quantization was left as it is.
    pub not_absorbed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub converted: usize,
    pub skipped: Vec<Skipped>,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    pub weight_compression: f64,
    /// Bits per converted weight in the output: codes, padding and scales.
    pub bits_per_weight: f64,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    pub file_compression: f64,
    pub removed_nodes: usize,
    pub opset_before: Option<i64>,
    pub opset_after: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub target: String,
    /// What the output does with activations.
    pub activations: String,
    pub already_converted: bool,
    pub layers: Vec<LayerReport>,
    /// The embedding and LM head tables quantized to 4 or 8 bits.
    pub tables: Vec<crate::vocab::TableReport>,
    /// The heads that compute the last position only (`--logits last`).
    pub last_position_heads: Vec<String>,
    pub totals: Totals,
}

impl Totals {
    /// The totals of the converted `layers`: weights converted (shared layers counted), bytes
    /// before and after, bits per weight, compression; the file sizes are the caller's.
    pub fn of(
        layers: &[LayerReport],
        skipped: Vec<Skipped>,
        removed_nodes: usize,
        opset_before: Option<i64>,
        opset_after: Option<i64>,
    ) -> Totals {
        let weight_bytes_before: u64 = layers.iter().map(|l| l.bytes_before).sum();
        let weight_bytes_after: u64 = layers.iter().map(|l| l.bytes_after).sum();
        let params: u64 = layers
            .iter()
            .map(|l| l.shape.iter().product::<i64>().max(0) as u64)
            .sum();
        Totals {
            converted: layers.len() + layers.iter().map(|l| l.shared_with.len()).sum::<usize>(),
            skipped,
            weight_bytes_before,
            weight_bytes_after,
            bits_per_weight: if params > 0 {
                8.0 * weight_bytes_after as f64 / params as f64
            } else {
                0.0
            },
            weight_compression: if weight_bytes_after > 0 {
                weight_bytes_before as f64 / weight_bytes_after as f64
            } else {
                1.0
            },
            removed_nodes,
            opset_before,
            opset_after,
            ..Default::default()
        }
    }
}
