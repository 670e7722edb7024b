//! Reading and building `TensorProto`s: shape checks, raw little-endian bytes from either
//! `raw_data` or the typed fields, and conversion of float weights to `f32`.
//!
//! Nothing here allocates a buffer sized by a number read from the file before checking it
//! against the data actually present.

use std::borrow::Cow;
use std::path::Path;

use bytes::Bytes;
use half::{bf16, f16};

use crate::dtype;
use crate::error::{ModelError, Result};
use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::TensorProto;

fn err(path: &Path, t: &TensorProto, reason: impl Into<String>) -> ModelError {
    ModelError::Tensor {
        path: path.to_path_buf(),
        tensor: t.name.clone().unwrap_or_default(),
        reason: reason.into(),
    }
}

/// Number of elements described by `dims`, rejecting negative dims and overflow.
pub fn element_count(path: &Path, t: &TensorProto) -> Result<u64> {
    let mut n: u64 = 1;
    for &d in &t.dims {
        if d < 0 {
            return Err(err(path, t, format!("negative dimension {d} in dims {:?}", t.dims)));
        }
        n = n
            .checked_mul(d as u64)
            .ok_or_else(|| err(path, t, format!("dims {:?}: element count overflows", t.dims)))?;
    }
    Ok(n)
}

/// The data type code, or an error for a missing or unknown code.
pub fn data_type(path: &Path, t: &TensorProto) -> Result<i32> {
    let code = t.data_type.unwrap_or(0);
    match DataType::try_from(code) {
        Ok(DataType::Undefined) => Err(err(path, t, "data type is UNDEFINED (0)")),
        Ok(_) => Ok(code),
        Err(_) => Err(err(path, t, format!("unknown data type {code}"))),
    }
}

/// True when the tensor's payload lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// The tensor's payload as little-endian bytes, in `raw_data` layout (sub-byte types packed).
/// Validates that the payload length matches `dims` and the data type.
pub fn raw_bytes<'a>(path: &Path, t: &'a TensorProto) -> Result<Cow<'a, [u8]>> {
    let code = data_type(path, t)?;
    let count = element_count(path, t)?;
    if is_external(t) {
        return Err(err(
            path,
            t,
            "payload is in an external file that was not resolved",
        ));
    }
    if code == DataType::String as i32 {
        return Err(err(path, t, "string tensors have no binary payload"));
    }
    let expected = dtype::byte_len(code, count)
        .ok_or_else(|| err(path, t, format!("{}: size overflows", dtype::name(code))))?;
    if let Some(raw) = &t.raw_data {
        if raw.len() as u64 != expected {
            return Err(err(
                path,
                t,
                format!(
                    "raw_data has {} bytes but dims {:?} of {} need {expected}",
                    raw.len(),
                    t.dims,
                    dtype::name(code)
                ),
            ));
        }
        return Ok(Cow::Borrowed(&raw[..]));
    }
    let dt = DataType::try_from(code).map_err(|_| err(path, t, "unknown data type"))?;
    let mismatch = |have: usize| {
        err(
            path,
            t,
            format!(
                "typed data holds {have} values but dims {:?} need {count}",
                t.dims
            ),
        )
    };
    let mut out = Vec::new();
    match dt {
        DataType::Float => {
            if t.float_data.len() as u64 != count {
                return Err(mismatch(t.float_data.len()));
            }
            out.reserve(t.float_data.len() * 4);
            t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Complex64 => {
            if t.float_data.len() as u64 != count * 2 {
                return Err(mismatch(t.float_data.len() / 2));
            }
            t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Double => {
            if t.double_data.len() as u64 != count {
                return Err(mismatch(t.double_data.len()));
            }
            t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Complex128 => {
            if t.double_data.len() as u64 != count * 2 {
                return Err(mismatch(t.double_data.len() / 2));
            }
            t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Int64 => {
            if t.int64_data.len() as u64 != count {
                return Err(mismatch(t.int64_data.len()));
            }
            t.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Uint32 | DataType::Uint64 => {
            if t.uint64_data.len() as u64 != count {
                return Err(mismatch(t.uint64_data.len()));
            }
            let four = dt == DataType::Uint32;
            for v in &t.uint64_data {
                if four {
                    out.extend_from_slice(&(*v as u32).to_le_bytes());
                } else {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        DataType::Int32 => {
            if t.int32_data.len() as u64 != count {
                return Err(mismatch(t.int32_data.len()));
            }
            t.int32_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16 => {
            if t.int32_data.len() as u64 != count {
                return Err(mismatch(t.int32_data.len()));
            }
            t.int32_data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes()));
        }
        DataType::Int8
        | DataType::Uint8
        | DataType::Bool
        | DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Float8e8m0 => {
            if t.int32_data.len() as u64 != count {
                return Err(mismatch(t.int32_data.len()));
            }
            t.int32_data.iter().for_each(|v| out.push(*v as u8));
        }
        _ => {
            // Packed sub-byte types in int32_data: one packed byte per int32 element.
            if t.int32_data.len() as u64 != expected {
                return Err(mismatch(t.int32_data.len()));
            }
            t.int32_data.iter().for_each(|v| out.push(*v as u8));
        }
    }
    Ok(Cow::Owned(out))
}

/// Float weights (float32, float16, bfloat16, float64) converted to `f32`.
pub fn to_f32(path: &Path, t: &TensorProto) -> Result<Vec<f32>> {
    let code = data_type(path, t)?;
    if code == DataType::Float as i32 && t.raw_data.is_none() && !is_external(t) {
        element_count(path, t)?;
        raw_bytes(path, t)?; // validates the count
        return Ok(t.float_data.clone());
    }
    let raw = raw_bytes(path, t)?;
    let dt = DataType::try_from(code).map_err(|_| err(path, t, "unknown data type"))?;
    Ok(match dt {
        DataType::Float => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DataType::Float16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DataType::Bfloat16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DataType::Double => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
            .collect(),
        _ => {
            return Err(err(
                path,
                t,
                format!("expected a float tensor, found {}", dtype::name(code)),
            ))
        }
    })
}

/// Integer tensors (int64, int32, int16, int8, uint8, uint16, uint32, bool) as `i64`.
pub fn to_i64(path: &Path, t: &TensorProto) -> Result<Vec<i64>> {
    let code = data_type(path, t)?;
    let raw = raw_bytes(path, t)?;
    let dt = DataType::try_from(code).map_err(|_| err(path, t, "unknown data type"))?;
    Ok(match dt {
        DataType::Int64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
            .collect(),
        DataType::Int32 => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("chunk of 4")) as i64)
            .collect(),
        DataType::Uint32 => raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("chunk of 4")) as i64)
            .collect(),
        DataType::Int16 => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        DataType::Uint16 => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        DataType::Int8 => raw.iter().map(|&b| b as i8 as i64).collect(),
        DataType::Uint8 | DataType::Bool => raw.iter().map(|&b| b as i64).collect(),
        _ => {
            return Err(err(
                path,
                t,
                format!("expected an integer tensor, found {}", dtype::name(code)),
            ))
        }
    })
}

/// A tensor with `raw_data` holding `data` (little-endian, already packed for sub-byte types).
pub fn from_raw(name: &str, data_type: DataType, dims: &[i64], data: impl Into<Bytes>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(data_type as i32),
        dims: dims.to_vec(),
        raw_data: Some(data.into()),
        ..Default::default()
    }
}

/// A float32 tensor.
pub fn from_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    values.iter().for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
    from_raw(name, DataType::Float, dims, raw)
}

/// A float16 tensor from `f32` values (rounded to nearest).
pub fn from_f32_as_f16(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 2);
    values
        .iter()
        .for_each(|v| raw.extend_from_slice(&f16::from_f32(*v).to_le_bytes()));
    from_raw(name, DataType::Float16, dims, raw)
}

/// A bfloat16 tensor from `f32` values (rounded to nearest).
pub fn from_f32_as_bf16(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 2);
    values
        .iter()
        .for_each(|v| raw.extend_from_slice(&bf16::from_f32(*v).to_le_bytes()));
    from_raw(name, DataType::Bfloat16, dims, raw)
}

/// A float tensor of the given float type (float32, float16 or bfloat16) from `f32` values.
pub fn from_f32_as(name: &str, data_type: i32, dims: &[i64], values: &[f32]) -> TensorProto {
    match DataType::try_from(data_type) {
        Ok(DataType::Float16) => from_f32_as_f16(name, dims, values),
        Ok(DataType::Bfloat16) => from_f32_as_bf16(name, dims, values),
        _ => from_f32(name, dims, values),
    }
}

/// An int64 tensor.
pub fn from_i64(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 8);
    values.iter().for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
    from_raw(name, DataType::Int64, dims, raw)
}

/// An int8 tensor.
pub fn from_i8(name: &str, dims: &[i64], values: &[i8]) -> TensorProto {
    from_raw(
        name,
        DataType::Int8,
        dims,
        values.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
    )
}

/// Bytes the payload takes once encoded (0 for string tensors).
pub fn payload_len(t: &TensorProto) -> u64 {
    let count: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    dtype::byte_len(t.data_type.unwrap_or(0), count).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("m.onnx")
    }

    #[test]
    fn raw_len_mismatch_is_named() {
        let mut t = from_f32("w", &[2, 3], &[0.0; 6]);
        t.raw_data = Some(Bytes::from(vec![0u8; 20]));
        let e = to_f32(p(), &t).unwrap_err().to_string();
        assert!(e.contains("m.onnx") && e.contains("'w'") && e.contains("20 bytes"), "{e}");
    }

    #[test]
    fn negative_and_overflowing_dims() {
        let mut t = from_f32("w", &[2, 3], &[0.0; 6]);
        t.dims = vec![-1, 6];
        assert!(to_f32(p(), &t).unwrap_err().to_string().contains("negative dimension"));
        t.dims = vec![i64::MAX, i64::MAX, 4];
        assert!(to_f32(p(), &t).unwrap_err().to_string().contains("overflows"));
    }

    #[test]
    fn unknown_type() {
        let mut t = from_f32("w", &[1], &[0.0]);
        t.data_type = Some(99);
        assert!(to_f32(p(), &t).unwrap_err().to_string().contains("unknown data type 99"));
    }

    #[test]
    fn half_types_roundtrip() {
        let v = [1.0f32, -2.5, 0.125];
        assert_eq!(to_f32(p(), &from_f32_as_f16("h", &[3], &v)).unwrap(), v);
        assert_eq!(to_f32(p(), &from_f32_as_bf16("b", &[3], &v)).unwrap(), v);
        let mut typed = from_f32("t", &[3], &[]);
        typed.raw_data = None;
        typed.float_data = v.to_vec();
        assert_eq!(to_f32(p(), &typed).unwrap(), v);
    }
}
