//! Shared by the DequantizeLinear-based targets (`qdq-int8`, `onnx`, `tensorrt`): a constant
//! `DequantizeLinear(codes, scale)` whose output replaces the weight input of every layer of
//! the job. Scales are in the weight's float type; zero points are omitted (symmetric).

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::NodeProto;
use bitnet_model::tensor;

use super::{Edit, NameGen, Patch, WeightJob};
use crate::analyse::Layout;
use crate::pack;

/// Scales laid out for DequantizeLinear: values, dims, axis, block_size.
pub struct DqScales {
    pub values: Vec<f32>,
    pub dims: Vec<i64>,
    pub axis: Option<i64>,
    pub block_size: Option<i64>,
}

/// The weight's ONNX dims and whether it is stored `[N, K]`.
pub fn weight_dims(job: &WeightJob) -> (Vec<i64>, bool) {
    let t = job.ternary;
    let transposed = job.layers[0].layout == Layout::NK;
    let dims = if transposed {
        vec![t.n as i64, t.k as i64]
    } else {
        vec![t.k as i64, t.n as i64]
    };
    (dims, transposed)
}

/// Scales as the quantizer produced them (per-tensor scalar, per-axis, or blocked by its group).
pub fn natural_scales(job: &WeightJob) -> DqScales {
    let (_, transposed) = weight_dims(job);
    let (values, dims, axis, block_size) = pack::dq_scales(job.ternary, transposed);
    DqScales {
        values,
        dims,
        axis,
        block_size,
    }
}

/// Scales blocked along K with `block` (a per-tensor or per-channel scale repeated per block).
pub fn blocked_scales(job: &WeightJob, block: usize) -> Result<DqScales, pack::PackError> {
    let t = job.ternary;
    let (_, transposed) = weight_dims(job);
    let nk = pack::matmulnbits_scales(t, block)?; // [N][blocks]
    let nb = t.k.div_ceil(block);
    Ok(if transposed {
        DqScales {
            values: nk,
            dims: vec![t.n as i64, nb as i64],
            axis: Some(1),
            block_size: Some(block as i64),
        }
    } else {
        DqScales {
            values: crate::quant::transpose(&nk, t.n, nb),
            dims: vec![nb as i64, t.n as i64],
            axis: Some(0),
            block_size: Some(block as i64),
        }
    })
}

pub use bitnet_model::node::int_attr;

/// The codes, scales and DequantizeLinear node, and the job's layers rewired to it. `codes` is
/// already packed for `code_type`.
pub fn emit(
    job: &WeightJob,
    names: &mut NameGen,
    code_type: DataType,
    codes: Vec<u8>,
    scales: &DqScales,
) -> Patch {
    let (dims, _) = weight_dims(job);
    let suffix = code_type.as_str_name().to_ascii_lowercase();
    let codes_name = names.fresh(&format!("{}_ternary_{suffix}", job.weight));
    let scale_name = names.fresh(&format!("{}_scale", job.weight));
    let out_name = names.fresh(&format!("{}_dequantized", job.weight));
    let node_name = names.fresh(&format!("{}_DequantizeLinear", job.weight));
    let mut patch = Patch::default();
    patch.weight(tensor::from_raw(&codes_name, code_type, &dims, codes));
    patch.weight(tensor::from_f32_as(
        &scale_name,
        job.dtype,
        &scales.dims,
        &scales.values,
    ));
    let mut attribute = Vec::new();
    if let Some(a) = scales.axis {
        attribute.push(int_attr("axis", a));
    }
    if let Some(b) = scales.block_size {
        attribute.push(int_attr("block_size", b));
    }
    patch.edit(Edit::Front(vec![NodeProto {
        name: Some(node_name),
        op_type: Some("DequantizeLinear".into()),
        input: vec![codes_name, scale_name],
        output: vec![out_name.clone()],
        attribute,
        ..Default::default()
    }]));
    for layer in job.layers {
        patch.edit(Edit::Rewire {
            output: layer.output.clone(),
            input: 1,
            from: job.weight.to_string(),
            to: out_name.clone(),
        });
    }
    patch
}

/// Lowest default-domain opset for a DequantizeLinear with these scales and weight type.
pub fn min_opset(job: &WeightJob, scales: &DqScales, code_type: DataType) -> i64 {
    let mut v = if scales.axis.is_some() { 13 } else { 10 };
    if job.dtype != DataType::Float as i32 {
        v = v.max(19);
    }
    if scales.block_size.is_some() || matches!(code_type, DataType::Int4 | DataType::Uint4) {
        v = v.max(21);
    }
    if matches!(code_type, DataType::Int2 | DataType::Uint2) {
        v = v.max(25);
    }
    v
}

/// The whole rewrite for a target that stores codes of `code_type` (packed by `pack_codes`, in
/// ONNX order) with the quantizer's own scale layout.
pub fn emit_natural(
    job: &WeightJob,
    names: &mut NameGen,
    code_type: DataType,
    pack_codes: fn(&[i8]) -> Vec<u8>,
) -> super::Emitted {
    emit_with_scales(job, names, code_type, pack_codes, natural_scales(job))
}

/// [`emit_natural`] with the scales laid out by the caller.
pub fn emit_with_scales(
    job: &WeightJob,
    names: &mut NameGen,
    code_type: DataType,
    pack_codes: fn(&[i8]) -> Vec<u8>,
    scales: DqScales,
) -> super::Emitted {
    let (_, transposed) = weight_dims(job);
    let codes = pack_codes(&pack::codes_in_onnx_order(job.ternary, transposed));
    super::Emitted {
        patch: emit(job, names, code_type, codes, &scales),
        min_opset: min_opset(job, &scales, code_type),
        ..Default::default()
    }
}
