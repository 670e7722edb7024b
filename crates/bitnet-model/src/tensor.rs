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
            return Err(err(
                path,
                t,
                format!("negative dimension {d} in dims {:?}", t.dims),
            ));
        }
        n = n.checked_mul(d as u64).ok_or_else(|| {
            err(
                path,
                t,
                format!("dims {:?}: element count overflows", t.dims),
            )
        })?;
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

/// The typed field that holds a tensor's values when `raw_data` is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypedField {
    Float,
    Double,
    Int32,
    Int64,
    Uint64,
}

impl TypedField {
    fn name(self) -> &'static str {
        match self {
            TypedField::Float => "float_data",
            TypedField::Double => "double_data",
            TypedField::Int32 => "int32_data",
            TypedField::Int64 => "int64_data",
            TypedField::Uint64 => "uint64_data",
        }
    }

    fn len(self, t: &TensorProto) -> usize {
        match self {
            TypedField::Float => t.float_data.len(),
            TypedField::Double => t.double_data.len(),
            TypedField::Int32 => t.int32_data.len(),
            TypedField::Int64 => t.int64_data.len(),
            TypedField::Uint64 => t.uint64_data.len(),
        }
    }
}

/// The typed field used by `dt` and how many entries it must hold for `count` elements taking
/// `packed_bytes` bytes in `raw_data` layout. `None` for types without a binary layout.
fn typed_layout(dt: DataType, count: u64, packed_bytes: u64) -> Option<(TypedField, u64)> {
    Some(match dt {
        DataType::Float => (TypedField::Float, count),
        DataType::Complex64 => (TypedField::Float, count.checked_mul(2)?),
        DataType::Double => (TypedField::Double, count),
        DataType::Complex128 => (TypedField::Double, count.checked_mul(2)?),
        DataType::Int64 => (TypedField::Int64, count),
        DataType::Uint32 | DataType::Uint64 => (TypedField::Uint64, count),
        DataType::Int32
        | DataType::Int16
        | DataType::Uint16
        | DataType::Float16
        | DataType::Bfloat16
        | DataType::Int8
        | DataType::Uint8
        | DataType::Bool
        | DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Float8e8m0
        // 6-bit floats: one element per int32 entry (packed only in raw_data).
        | DataType::Float6e2m3
        | DataType::Float6e3m2 => (TypedField::Int32, count),
        // 4-bit and 2-bit types: one packed byte per int32 entry.
        DataType::Uint4 | DataType::Int4 | DataType::Float4e2m1 | DataType::Uint2 | DataType::Int2 => {
            (TypedField::Int32, packed_bytes)
        }
        DataType::Undefined | DataType::String => return None,
    })
}

/// What [`check_payload`] found: the type, element count and byte length in `raw_data` layout.
struct Checked {
    dt: DataType,
    count: u64,
    bytes: u64,
}

/// Checks the type, dims and in-memory payload of a non-string tensor.
fn check_payload(path: &Path, t: &TensorProto) -> Result<Checked> {
    let code = data_type(path, t)?;
    let count = element_count(path, t)?;
    if is_external(t) {
        return Err(err(
            path,
            t,
            "payload is in an external file that was not resolved",
        ));
    }
    let dt =
        DataType::try_from(code).map_err(|_| err(path, t, format!("unknown data type {code}")))?;
    if dt == DataType::String {
        return Err(err(path, t, "string tensors have no binary payload"));
    }
    let bytes = dtype::byte_len(code, count).ok_or_else(|| {
        err(
            path,
            t,
            format!(
                "dims {:?} of {}: size in bytes overflows",
                t.dims,
                dtype::name(code)
            ),
        )
    })?;
    if let Some(raw) = &t.raw_data {
        if raw.len() as u64 != bytes {
            return Err(err(
                path,
                t,
                format!(
                    "raw_data has {} bytes but dims {:?} of {} need {bytes}",
                    raw.len(),
                    t.dims,
                    dtype::name(code)
                ),
            ));
        }
        return Ok(Checked { dt, count, bytes });
    }
    let (field, need) = typed_layout(dt, count, bytes).ok_or_else(|| {
        err(
            path,
            t,
            format!("{} has no binary layout", dtype::name(code)),
        )
    })?;
    let have = field.len(t) as u64;
    if have != need {
        return Err(err(
            path,
            t,
            format!(
                "{} holds {have} values but dims {:?} of {} need {need}",
                field.name(),
                t.dims,
                dtype::name(code)
            ),
        ));
    }
    Ok(Checked { dt, count, bytes })
}

/// Checks a tensor whose payload is in memory: a known data type, non-negative dims whose
/// element count does not overflow, and a payload (`raw_data`, the typed field of its type, or
/// `string_data` for strings) whose length matches dims and type. Tensors stored as a
/// `segment` of a larger tensor are checked for type and dims only.
pub fn validate(path: &Path, t: &TensorProto) -> Result<()> {
    let code = data_type(path, t)?;
    let count = element_count(path, t)?;
    if t.segment.is_some() {
        return Ok(());
    }
    if code == DataType::String as i32 {
        if is_external(t) {
            return Err(err(path, t, "string tensors cannot be stored externally"));
        }
        if t.raw_data.is_some() {
            return Err(err(
                path,
                t,
                "string tensor has raw_data (strings must use string_data)",
            ));
        }
        if t.string_data.len() as u64 != count {
            return Err(err(
                path,
                t,
                format!(
                    "string_data holds {} strings but dims {:?} need {count}",
                    t.string_data.len(),
                    t.dims
                ),
            ));
        }
        return Ok(());
    }
    check_payload(path, t).map(|_| ())
}

/// The tensor's payload as little-endian bytes, in `raw_data` layout (sub-byte types packed).
/// Validates that the payload length matches `dims` and the data type.
pub fn raw_bytes<'a>(path: &Path, t: &'a TensorProto) -> Result<Cow<'a, [u8]>> {
    let Checked { dt, count, bytes } = check_payload(path, t)?;
    if let Some(raw) = &t.raw_data {
        return Ok(Cow::Borrowed(&raw[..]));
    }
    // The typed field's length was checked against dims, so these sizes are backed by data.
    let mut out = Vec::with_capacity(bytes as usize);
    match dt {
        DataType::Float | DataType::Complex64 => {
            t.float_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Double | DataType::Complex128 => {
            t.double_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Int64 => {
            t.int64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Uint32 => {
            t.uint64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as u32).to_le_bytes()));
        }
        DataType::Uint64 => {
            t.uint64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Int32 => {
            t.int32_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DataType::Int16 | DataType::Uint16 | DataType::Float16 | DataType::Bfloat16 => {
            t.int32_data
                .iter()
                .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes()));
        }
        DataType::Float6e2m3 | DataType::Float6e3m2 => {
            // One 6-bit element per entry, packed into an LSB-first bitstream.
            out.resize(bytes as usize, 0);
            for (i, v) in t.int32_data.iter().enumerate() {
                let pos = i * 6;
                let w = ((*v as u32 & 0x3f) as u16) << (pos % 8);
                out[pos / 8] |= w as u8;
                if pos % 8 > 2 {
                    out[pos / 8 + 1] |= (w >> 8) as u8;
                }
            }
        }
        _ => {
            // 8-bit types one element per entry; 4-bit and 2-bit types one packed byte per
            // entry (check_payload checked the entry count for each case).
            t.int32_data.iter().for_each(|v| out.push(*v as u8));
        }
    }
    debug_assert_eq!(out.len() as u64, bytes, "{count} elements of {dt:?}");
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

/// A float32 tensor's `raw_data` seen as `f32` values without copying, when its length matches
/// dims and it is 4-byte aligned (always for external data written by this crate, often for
/// memory-mapped files); `None` otherwise (use [`to_f32`]). Little-endian targets only.
pub fn f32_view(t: &TensorProto) -> Option<&[f32]> {
    if !cfg!(target_endian = "little") || t.data_type != Some(DataType::Float as i32) {
        return None;
    }
    let raw = t.raw_data.as_ref()?;
    let count = usize::try_from(saturating_element_count(t)).ok()?;
    if count.checked_mul(4) != Some(raw.len()) {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields a middle part that is
    // correctly aligned, and we use it only when it covers the whole payload.
    let (head, body, tail) = unsafe { raw.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(body)
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
pub fn from_raw(
    name: &str,
    data_type: DataType,
    dims: &[i64],
    data: impl Into<Bytes>,
) -> TensorProto {
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
    values
        .iter()
        .for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
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
    values
        .iter()
        .for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
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

/// Number of elements described by `dims`, with negative dims counted as 0 and saturating at
/// `u64::MAX` instead of overflowing (for statistics over unvalidated tensors).
pub fn saturating_element_count(t: &TensorProto) -> u64 {
    t.dims
        .iter()
        .fold(1u64, |n, &d| n.saturating_mul(d.max(0) as u64))
}

/// Bytes the payload takes once encoded (0 for string tensors; saturating at `u64::MAX` for
/// dims whose size overflows).
pub fn payload_len(t: &TensorProto) -> u64 {
    let count = saturating_element_count(t);
    let code = t.data_type.unwrap_or(0);
    match dtype::byte_len(code, count) {
        Some(n) => n,
        None if dtype::bits(code).is_some() => u64::MAX,
        None => 0,
    }
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
        assert!(
            e.contains("m.onnx") && e.contains("'w'") && e.contains("20 bytes"),
            "{e}"
        );
    }

    #[test]
    fn negative_and_overflowing_dims() {
        let mut t = from_f32("w", &[2, 3], &[0.0; 6]);
        t.dims = vec![-1, 6];
        assert!(to_f32(p(), &t)
            .unwrap_err()
            .to_string()
            .contains("negative dimension"));
        t.dims = vec![i64::MAX, i64::MAX, 4];
        assert!(to_f32(p(), &t)
            .unwrap_err()
            .to_string()
            .contains("overflows"));
    }

    #[test]
    fn unknown_type() {
        let mut t = from_f32("w", &[1], &[0.0]);
        t.data_type = Some(99);
        assert!(to_f32(p(), &t)
            .unwrap_err()
            .to_string()
            .contains("unknown data type 99"));
    }

    #[test]
    fn typed_sub_byte_and_6_bit_payloads() {
        // FLOAT6: one element per int32 entry, packed into a 24-bit LSB-first stream per 4.
        let mut t = from_raw("f6", DataType::Float6e2m3, &[5], Vec::new());
        t.raw_data = None;
        t.int32_data = vec![0x3f, 0, 0x3f, 0x01, 0x2a];
        // byte0 = x0 | (x1 & 3) << 6; byte1 = x1 >> 2 | (x2 & 15) << 4; byte2 = x2 >> 4 | x3 << 2
        assert_eq!(&raw_bytes(p(), &t).unwrap()[..], &[0x3f, 0xf0, 0x07, 0x2a]);
        validate(p(), &t).unwrap();
        t.raw_data = Some(Bytes::from_static(&[0, 0, 0]));
        assert!(validate(p(), &t)
            .unwrap_err()
            .to_string()
            .contains("need 4"));
        // INT4: one packed byte per int32 entry.
        let mut t = from_raw("i4", DataType::Int4, &[3], Vec::new());
        t.raw_data = None;
        t.int32_data = vec![0x21, 0x03];
        assert_eq!(&raw_bytes(p(), &t).unwrap()[..], &[0x21, 0x03]);
        t.int32_data = vec![0x21, 0x03, 0];
        let e = validate(p(), &t).unwrap_err().to_string();
        assert!(
            e.contains("int32_data holds 3 values") && e.contains("need 2"),
            "{e}"
        );
    }

    #[test]
    fn payload_len_saturates() {
        let mut t = from_f32("w", &[1], &[0.0]);
        t.dims = vec![i64::MAX, i64::MAX, 4];
        assert_eq!(payload_len(&t), u64::MAX);
        t.dims = vec![-3, 2];
        assert_eq!(payload_len(&t), 0);
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
