//! ONNX element types: sizes, names and the packing of sub-byte types.

use crate::proto::tensor_proto::DataType;

/// Size of an element type in bits, or `None` for types without a fixed-size binary encoding
/// (strings, undefined, unknown codes).
pub fn bits(data_type: i32) -> Option<u64> {
    let dt = DataType::try_from(data_type).ok()?;
    Some(match dt {
        DataType::Undefined | DataType::String => return None,
        DataType::Float | DataType::Int32 | DataType::Uint32 => 32,
        DataType::Uint8
        | DataType::Int8
        | DataType::Bool
        | DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Float8e8m0 => 8,
        DataType::Uint16 | DataType::Int16 | DataType::Float16 | DataType::Bfloat16 => 16,
        DataType::Int64 | DataType::Uint64 | DataType::Double | DataType::Complex64 => 64,
        DataType::Complex128 => 128,
        DataType::Uint4 | DataType::Int4 | DataType::Float4e2m1 => 4,
        DataType::Float6e2m3 | DataType::Float6e3m2 => 6,
        DataType::Uint2 | DataType::Int2 => 2,
    })
}

/// Bytes taken by `count` elements of `data_type` in `raw_data` (sub-byte types are packed
/// into an LSB-first bitstream, the last byte padded). `None` when the type has no binary
/// encoding or the size overflows.
pub fn byte_len(data_type: i32, count: u64) -> Option<u64> {
    let b = bits(data_type)?;
    count.checked_mul(b).map(|total| total.div_ceil(8))
}

/// The ONNX name of an element type (`FLOAT`, `INT8`, ...), or `type <n>` for unknown codes.
pub fn name(data_type: i32) -> String {
    match DataType::try_from(data_type) {
        Ok(dt) => dt.as_str_name().to_string(),
        Err(_) => format!("type {data_type}"),
    }
}

/// Lower-case short name used in reports (`float32`, `float16`, `int2`...).
pub fn short_name(data_type: i32) -> String {
    match DataType::try_from(data_type) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(dt) => dt.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("type{data_type}"),
    }
}

/// True for float32, float16, bfloat16 and float64: the weight types the quantizer reads.
pub fn is_float(data_type: i32) -> bool {
    matches!(
        DataType::try_from(data_type),
        Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double)
    )
}
