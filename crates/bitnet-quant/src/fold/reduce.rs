//! Reductions over axes (ReduceMean/Max/Min/Sum) and CumSum.

use bitnet_model::proto::NodeProto;

use super::elementwise::broadcast_index;
use super::{
    attr_i, attr_ints, invalid, need, norm_axes, norm_axis, opt, round_f32, wrap_int, Inputs,
};
use super::{Const, Data, OpError};

pub(crate) fn reduce(node: &NodeProto, op: &str, inputs: &Inputs) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    let rank = x.dims.len();
    // Opset 18 (13 for ReduceSum) made the axes an input.
    let axes_given = match opt(inputs, 1) {
        Some(c) => Some(c.i64()),
        None => attr_ints(node, "axes"),
    };
    let noop = attr_i(node, "noop_with_empty_axes").unwrap_or(0) == 1;
    let axes: Vec<usize> = match axes_given {
        Some(a) if !a.is_empty() => norm_axes(&a, rank)?,
        _ if noop => return Ok(x.clone()),
        _ => (0..rank).collect(),
    };
    let keep = attr_i(node, "keepdims").unwrap_or(1) == 1;
    let out_keep: Vec<usize> = x
        .dims
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let total: usize = out_keep.iter().product();
    let idx = broadcast_index(&out_keep, &x.dims);
    let data = match &x.data {
        Data::I64(v) => {
            // Over an empty axis, Max and Min give the type's lowest and highest value.
            let (lo, hi) = int_range(x.dtype);
            let mut acc = vec![
                match op {
                    "ReduceMax" => lo,
                    "ReduceMin" => hi,
                    _ => 0,
                };
                total
            ];
            let u64_ = super::is_u64(x.dtype);
            for (pos, o) in idx.iter().enumerate() {
                acc[o] = match op {
                    "ReduceMax" if u64_ => (acc[o] as u64).max(v[pos] as u64) as i64,
                    "ReduceMin" if u64_ => (acc[o] as u64).min(v[pos] as u64) as i64,
                    "ReduceMax" => acc[o].max(v[pos]),
                    "ReduceMin" => acc[o].min(v[pos]),
                    _ => acc[o].wrapping_add(v[pos]),
                };
            }
            let count = (x.len() / total.max(1)).max(1) as i64;
            Data::I64(
                acc.into_iter()
                    .map(|a| wrap_int(x.dtype, if op == "ReduceMean" { a / count } else { a }))
                    .collect(),
            )
        }
        _ => {
            // Accumulated in f64, rounded once to the element type.
            let v = x.f64();
            let mut acc = vec![
                match op {
                    "ReduceMax" => f64::NEG_INFINITY,
                    "ReduceMin" => f64::INFINITY,
                    _ => 0.0,
                };
                total
            ];
            for (pos, o) in idx.iter().enumerate() {
                let val = v[pos];
                acc[o] = match op {
                    "ReduceMax" => acc[o].max(val),
                    "ReduceMin" => acc[o].min(val),
                    _ => acc[o] + val,
                };
            }
            let count = (x.len() / total.max(1)).max(1) as f64;
            let out = acc
                .into_iter()
                .map(|a| if op == "ReduceMean" { a / count } else { a });
            match x.data {
                Data::F64(_) => Data::F64(out.collect()),
                _ => Data::F32(out.map(|a| round_f32(x.dtype, a as f32)).collect()),
            }
        }
    };
    let dims = if keep {
        out_keep
    } else {
        x.dims
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(x.with_data(dims, data))
}

/// The lowest and highest value of an integer type (uint64 as bit patterns: 0 and all ones).
fn int_range(dtype: i32) -> (i64, i64) {
    use bitnet_model::proto::tensor_proto::DataType as D;
    match D::try_from(dtype) {
        Ok(D::Bool) => (0, 1),
        Ok(D::Int8) => (i8::MIN as i64, i8::MAX as i64),
        Ok(D::Uint8) => (0, u8::MAX as i64),
        Ok(D::Int16) => (i16::MIN as i64, i16::MAX as i64),
        Ok(D::Uint16) => (0, u16::MAX as i64),
        Ok(D::Int32) => (i32::MIN as i64, i32::MAX as i64),
        Ok(D::Uint32) => (0, u32::MAX as i64),
        Ok(D::Uint64) => (0, -1),
        _ => (i64::MIN, i64::MAX),
    }
}

pub(crate) fn cumsum(node: &NodeProto, x: &Const, axis: &Const) -> Result<Const, OpError> {
    if axis.len() != 1 {
        return invalid("CumSum axis must be a scalar");
    }
    let a = norm_axis(axis.i64()[0], x.dims.len())?;
    let exclusive = attr_i(node, "exclusive").unwrap_or(0) == 1;
    let reverse = attr_i(node, "reverse").unwrap_or(0) == 1;
    let d = x.dims[a];
    let inner: usize = x.dims[a + 1..].iter().product();
    let outer: usize = x.dims[..a].iter().product();
    // Sums run along the axis in the element type, in order.
    macro_rules! run {
        ($v:expr, $zero:expr, $add:expr) => {{
            let v = $v;
            let mut out = v.clone();
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = $zero;
                    for s in 0..d {
                        let k = if reverse { d - 1 - s } else { s };
                        let at = (o * d + k) * inner + i;
                        if exclusive {
                            out[at] = acc;
                            acc = $add(acc, v[at]);
                        } else {
                            acc = $add(acc, v[at]);
                            out[at] = acc;
                        }
                    }
                }
            }
            out
        }};
    }
    let dt = x.dtype;
    let data = match &x.data {
        Data::F32(v) => Data::F32(run!(v, 0.0f32, |a: f32, b: f32| round_f32(dt, a + b))),
        Data::F64(v) => Data::F64(run!(v, 0.0f64, |a: f64, b: f64| a + b)),
        Data::I64(v) => Data::I64(run!(v, 0i64, |a: i64, b: i64| wrap_int(
            dt,
            a.wrapping_add(b)
        ))),
    };
    Ok(x.with_data(x.dims.clone(), data))
}
