//! Inputs for a run: generated from a seed (deterministic on every platform), or read from an
//! `.npz` file or an ONNX test-data directory (`input_0.pb`, ...); and saved as `.npz` so a
//! failed verification can be replayed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{ModelProto, TensorProto};
use bitnet_model::tensor;
use prost::Message;
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::runner::{bind_shapes, graph_inputs, HostTensor, TensorData};

/// Named input tensors, in graph-input order.
pub type Inputs = Vec<(String, HostTensor)>;

/// How one input was made (for reports).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputDescription {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// e.g. `normal(0, 1), seed 0`, `integers in [0, 1000): indices of Gather '/emb/Gather'`.
    pub source: String,
}

/// SplitMix64: a tiny, well-mixed generator with the same output on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1] with 53 bits.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, cosine branch).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit();
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in `[lo, hi)` (`lo` when the range is empty).
    pub fn int_in(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi as i128 - lo as i128) as u128;
        (lo as i128 + (self.next_u64() as u128 % span) as i128) as i64
    }
}

/// Integer range for an input nobody gave a range for: the row count of the table when the
/// input is the indices of a `Gather` over an initializer, else `[0, 10)`.
fn inferred_range(proto: &ModelProto, input: &str) -> ((i64, i64), String) {
    if let Some(g) = proto.graph.as_ref() {
        for n in &g.node {
            if n.op_type.as_deref() == Some("Gather")
                && n.input.get(1).map(String::as_str) == Some(input)
            {
                let axis = bitnet_model::node::attr_i(n, "axis").unwrap_or(0);
                let data = n.input.first().map(String::as_str).unwrap_or("");
                if let Some(t) = g
                    .initializer
                    .iter()
                    .find(|t| t.name.as_deref() == Some(data))
                {
                    let ax = if axis < 0 {
                        axis + t.dims.len() as i64
                    } else {
                        axis
                    };
                    if let Some(&rows) = t.dims.get(ax as usize) {
                        return (
                            (0, rows),
                            format!(
                                "indices of Gather '{}' over '{data}'",
                                n.name.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
            }
        }
    }
    ((0, 10), "default range".into())
}

/// Generates one set of inputs for `proto`: floats from a seeded standard normal, integers
/// uniform in `ranges[name]` (else inferred, see the module docs), booleans all true. Shapes
/// bind symbolic dims from `dims` (defaults for the rest, as in the runner).
pub fn make_inputs(
    proto: &ModelProto,
    dims: &BTreeMap<String, usize>,
    seed: u64,
    ranges: &BTreeMap<String, (i64, i64)>,
) -> Result<(Inputs, Vec<InputDescription>)> {
    let specs = graph_inputs(proto);
    let (shapes, _) = bind_shapes(&specs, dims);
    let mut rng = SplitMix64::new(seed);
    let mut inputs = Vec::new();
    let mut descs = Vec::new();
    for (spec, shape) in specs.iter().zip(shapes) {
        let n: usize = shape.iter().product();
        let et = spec.elem_type;
        let is_float = [1, 10, 11, 16].contains(&et);
        let is_int = [2, 3, 4, 5, 6, 7, 12, 13].contains(&et);
        let (data, source) = if is_float {
            let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let src = format!("normal(0, 1), seed {seed}");
            if et == 11 {
                (TensorData::F64(v.into_iter().map(f64::from).collect()), src)
            } else {
                (TensorData::F32(v), src)
            }
        } else if is_int {
            let ((lo, hi), why) = match ranges.get(&spec.name) {
                Some(r) => (*r, "given range".to_string()),
                None => inferred_range(proto, &spec.name),
            };
            let v: Vec<i64> = (0..n).map(|_| rng.int_in(lo, hi)).collect();
            let src = format!("integers in [{lo}, {hi}): {why}, seed {seed}");
            let data = match et {
                6 => TensorData::I32(v.into_iter().map(|x| x as i32).collect()),
                3 => TensorData::I8(v.into_iter().map(|x| x as i8).collect()),
                2 => TensorData::U8(v.into_iter().map(|x| x as u8).collect()),
                _ => TensorData::I64(v),
            };
            (data, src)
        } else if et == 9 {
            (TensorData::Bool(vec![true; n]), "all true".to_string())
        } else {
            return Err(EvalError::Input {
                model: "<model>".into(),
                input: spec.name.clone(),
                reason: format!(
                    "cannot generate values of type {}",
                    bitnet_model::dtype::name(et)
                ),
            });
        };
        let t = HostTensor { shape, data };
        descs.push(InputDescription {
            name: spec.name.clone(),
            dtype: t.dtype_name().into(),
            shape: t.shape.clone(),
            source,
        });
        inputs.push((spec.name.clone(), t));
    }
    Ok((inputs, descs))
}

/// Reads inputs from an `.npz` file or an ONNX test-data directory (`input_<i>.pb` in
/// graph-input order). Every graph input must be present.
pub fn load_inputs(path: &Path, proto: &ModelProto) -> Result<(Inputs, Vec<InputDescription>)> {
    let specs = graph_inputs(proto);
    let mut found = if path.is_dir() {
        read_test_data_dir(
            path,
            &specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        )?
    } else {
        read_npz(path)?
    };
    let mut inputs = Vec::new();
    let mut descs = Vec::new();
    for s in &specs {
        let Some(pos) = found.iter().position(|(n, _)| n == &s.name) else {
            return Err(EvalError::file(
                path,
                format!("no array for graph input '{}'", s.name),
            ));
        };
        let (name, t) = found.swap_remove(pos);
        descs.push(InputDescription {
            name: name.clone(),
            dtype: t.dtype_name().into(),
            shape: t.shape.clone(),
            source: format!("read from {}", path.display()),
        });
        inputs.push((name, t));
    }
    Ok((inputs, descs))
}

fn read_test_data_dir(dir: &Path, names: &[String]) -> Result<Inputs> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = dir.join(format!("input_{i}.pb"));
        let bytes = std::fs::read(&p).map_err(|e| EvalError::file(&p, e))?;
        let t = TensorProto::decode(&bytes[..]).map_err(|e| EvalError::file(&p, e))?;
        let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let code = t.data_type.unwrap_or(0);
        let data = match DataType::try_from(code) {
            Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16) => {
                TensorData::F32(tensor::to_f32(&p, &t)?)
            }
            Ok(DataType::Double) => TensorData::F64(
                tensor::raw_bytes(&p, &t)?
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            Ok(DataType::Bool) => TensorData::Bool(
                tensor::to_i64(&p, &t)?
                    .into_iter()
                    .map(|v| v != 0)
                    .collect(),
            ),
            Ok(DataType::Int32) => TensorData::I32(
                tensor::to_i64(&p, &t)?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect(),
            ),
            Ok(DataType::Int8) => TensorData::I8(
                tensor::to_i64(&p, &t)?
                    .into_iter()
                    .map(|v| v as i8)
                    .collect(),
            ),
            Ok(DataType::Uint8) => TensorData::U8(
                tensor::to_i64(&p, &t)?
                    .into_iter()
                    .map(|v| v as u8)
                    .collect(),
            ),
            _ => TensorData::I64(tensor::to_i64(&p, &t)?),
        };
        out.push((name.clone(), HostTensor { shape, data }));
    }
    Ok(out)
}

/// Parses one `.npy` file (little-endian f4/f8/i8/i4/i1/u1/b1, C order).
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<HostTensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("header lacks '{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let colon = rest.find(':').ok_or("malformed header")?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("malformed descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_s = field("shape")?;
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dim '{s}'")))
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    let (endian, kind) = descr.split_at(1);
    if endian == ">" && !matches!(kind, "i1" | "u1" | "b1") {
        return Err(format!("big-endian dtype '{descr}' is not supported"));
    }
    let size = match kind {
        "f4" | "i4" => 4,
        "f8" | "i8" => 8,
        "i1" | "u1" | "b1" => 1,
        _ => return Err(format!("unsupported dtype '{descr}'")),
    };
    if body.len() < n * size {
        return Err(format!(
            "data holds {} bytes, shape {shape:?} of {descr} needs {}",
            body.len(),
            n * size
        ));
    }
    let body = &body[..n * size];
    let data = match kind {
        "f4" => TensorData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
        ),
        "f8" => TensorData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        ),
        "i4" => TensorData::I32(
            body.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
        ),
        "i8" => TensorData::I64(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        ),
        "i1" => TensorData::I8(body.iter().map(|&b| b as i8).collect()),
        "u1" => TensorData::U8(body.to_vec()),
        _ => TensorData::Bool(body.iter().map(|&b| b != 0).collect()),
    };
    Ok(HostTensor { shape, data })
}

/// Encodes a tensor as an `.npy` (version 1.0) file.
pub fn to_npy(t: &HostTensor) -> Vec<u8> {
    let (descr, body): (&str, Vec<u8>) = match &t.data {
        TensorData::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::F64(v) => ("<f8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::I64(v) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::I32(v) => ("<i4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::I8(v) => ("|i1", v.iter().map(|&x| x as u8).collect()),
        TensorData::U8(v) => ("|u1", v.clone()),
        TensorData::Bool(v) => ("|b1", v.iter().map(|&x| x as u8).collect()),
    };
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary; the header ends with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads every array of an `.npz` file; names lose their `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Inputs> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::file(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| EvalError::file(path, e))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| EvalError::file(path, e))?;
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| EvalError::file(path, format!("{name}: {e}")))?;
        let t = parse_npy(&bytes).map_err(|e| EvalError::file(path, format!("{name}: {e}")))?;
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((name, t));
    }
    Ok(out)
}

/// Writes named tensors to an `.npz` file (uncompressed, as `numpy.savez`).
pub fn save_npz(path: &Path, arrays: &[(String, HostTensor)]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| EvalError::file(path, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, t) in arrays {
        zip.start_file(format!("{name}.npy"), opts)
            .map_err(|e| EvalError::file(path, e))?;
        zip.write_all(&to_npy(t))
            .map_err(|e| EvalError::file(path, e))?;
    }
    zip.finish().map_err(|e| EvalError::file(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_reproducible() {
        let mut a = SplitMix64::new(0);
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(a.next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut b = SplitMix64::new(7);
        let v: Vec<f32> = (0..1000).map(|_| b.normal()).collect();
        let mean = v.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.1, "{mean}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn npy_round_trips() {
        for t in [
            HostTensor {
                shape: vec![2, 3],
                data: TensorData::F32(vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]),
            },
            HostTensor {
                shape: vec![3],
                data: TensorData::I64(vec![1, -2, 3]),
            },
            HostTensor {
                shape: vec![],
                data: TensorData::F64(vec![2.5]),
            },
            HostTensor {
                shape: vec![2],
                data: TensorData::Bool(vec![true, false]),
            },
            HostTensor {
                shape: vec![1, 2],
                data: TensorData::I8(vec![-1, 5]),
            },
        ] {
            assert_eq!(parse_npy(&to_npy(&t)).unwrap(), t);
        }
    }
}
