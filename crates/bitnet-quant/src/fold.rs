//! Constant folding: evaluates a value computed only from constants (initializers, `Constant`
//! nodes, and chains of the ops below) into a tensor. This is how BitLinear's in-graph weight
//! fake-quant chain (Abs, ReduceMean, Clip, Reciprocal, Div, Mul, Round, Sub, Add, ...) becomes
//! a plain weight before quantization. Arithmetic is done in `f32` (as the exported graph does
//! for float32 weights); integer tensors (shapes, axes) in `i64`.

use std::collections::HashMap;
use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{AttributeProto, NodeProto, TensorProto};
use bitnet_model::tensor;

/// A folded constant.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
    /// ONNX element type the value has in the graph (float16 weights fold to f32 data with
    /// `dtype` FLOAT16).
    pub dtype: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// Why a value could not be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("computed at run time (depends on graph input '{0}')")]
    RunTime(String),
    #[error("produced by {op} node '{node}', which the folder does not evaluate")]
    Unsupported { op: String, node: String },
    #[error("node '{node}' ({op}): {reason}")]
    Invalid {
        op: String,
        node: String,
        reason: String,
    },
}

/// Memoising folder over one graph.
pub struct Folder<'a, 'g> {
    index: &'a GraphIndex<'g>,
    path: &'a Path,
    cache: HashMap<String, Result<Const, FoldError>>,
    /// Memo of [`Folder::runtime_root`].
    runtime: HashMap<String, Option<String>>,
    /// Nodes that were evaluated to produce folded values (for reporting and dead-code removal).
    pub visited: Vec<usize>,
}

impl Const {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn i64(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
        }
    }
    fn is_float(&self) -> bool {
        matches!(self.data, Data::F32(_))
    }
    /// Converts to a `TensorProto` of `dtype` (floats rounded to the element type).
    pub fn to_tensor(&self, name: &str) -> TensorProto {
        let dims: Vec<i64> = self.dims.iter().map(|&d| d as i64).collect();
        match &self.data {
            Data::F32(v) => tensor::from_f32_as(name, self.dtype, &dims, v),
            Data::I64(v) => tensor::from_i64(name, &dims, v),
        }
    }
    fn from_tensor(path: &Path, t: &TensorProto) -> Result<Const, String> {
        let dtype = tensor::data_type(path, t).map_err(|e| e.to_string())?;
        let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let data = if bitnet_model::dtype::is_float(dtype) {
            Data::F32(tensor::to_f32(path, t).map_err(|e| e.to_string())?)
        } else {
            Data::I64(tensor::to_i64(path, t).map_err(|e| e.to_string())?)
        };
        Ok(Const { dims, data, dtype })
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

impl<'a, 'g> Folder<'a, 'g> {
    pub fn new(index: &'a GraphIndex<'g>, path: &'a Path) -> Self {
        Folder {
            index,
            path,
            cache: HashMap::new(),
            runtime: HashMap::new(),
            visited: Vec::new(),
        }
    }

    /// Evaluates `value`, or says why it cannot be.
    pub fn eval(&mut self, value: &str) -> Result<Const, FoldError> {
        if let Some(r) = self.cache.get(value) {
            return r.clone();
        }
        let r = self.eval_uncached(value);
        self.cache.insert(value.to_string(), r.clone());
        r
    }

    /// The graph input (or outer-scope value) `value` depends on, found in the order `eval`
    /// visits inputs, or `None` when only initializers and constants feed it. Looks at the
    /// graph only: nothing is decoded. A cycle adds nothing.
    fn runtime_root(&mut self, value: &str) -> Option<String> {
        if let Some(r) = self.runtime.get(value) {
            return r.clone();
        }
        self.runtime.insert(value.to_string(), None);
        let r = if self.index.initializer(value).is_some() {
            None
        } else if let Some(ni) = self.index.producer(value) {
            let names: Vec<String> = self
                .index
                .node(ni)
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .cloned()
                .collect();
            names.iter().find_map(|i| self.runtime_root(i))
        } else {
            Some(value.to_string())
        };
        self.runtime.insert(value.to_string(), r.clone());
        r
    }

    fn eval_uncached(&mut self, value: &str) -> Result<Const, FoldError> {
        if let Some(t) = self.index.initializer(value) {
            return Const::from_tensor(self.path, t).map_err(|reason| FoldError::Invalid {
                op: "initializer".into(),
                node: value.into(),
                reason,
            });
        }
        let Some(ni) = self.index.producer(value) else {
            return Err(FoldError::RunTime(value.to_string()));
        };
        let node = self.index.node(ni);
        let op = node.op_type.clone().unwrap_or_default();
        let name = node.name.clone().unwrap_or_default();
        let domain = node.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") || node.output.len() != 1 {
            return Err(FoldError::Unsupported { op, node: name });
        }
        let invalid = |reason: String| FoldError::Invalid {
            op: op.clone(),
            node: name.clone(),
            reason,
        };
        if op == "Constant" {
            let c = self.constant(node).map_err(invalid)?;
            self.visited.push(ni);
            return Ok(c);
        }
        // A node reading a run-time value cannot be folded: say so before decoding any of its
        // constant inputs (an activation's path reaches the embedding table, for one).
        let names: Vec<String> = node
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .cloned()
            .collect();
        if let Some(root) = names.iter().find_map(|i| self.runtime_root(i)) {
            return Err(FoldError::RunTime(root));
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for i in &node.input {
            if i.is_empty() {
                inputs.push(None);
            } else {
                inputs.push(Some(self.eval(i)?));
            }
        }
        let out = eval_op(node, &op, &inputs).map_err(|e| match e {
            OpError::Unsupported => FoldError::Unsupported {
                op: op.clone(),
                node: name.clone(),
            },
            OpError::Invalid(r) => invalid(r),
        })?;
        self.visited.push(ni);
        Ok(out)
    }

    fn constant(&self, node: &NodeProto) -> Result<Const, String> {
        for a in &node.attribute {
            match a.name.as_deref() {
                Some("value") => {
                    let t = a.t.as_ref().ok_or("attribute 'value' holds no tensor")?;
                    return Const::from_tensor(self.path, t);
                }
                Some("value_float") => {
                    return Ok(Const {
                        dims: vec![],
                        data: Data::F32(vec![a.f.unwrap_or(0.0)]),
                        dtype: DataType::Float as i32,
                    })
                }
                Some("value_floats") => {
                    return Ok(Const {
                        dims: vec![a.floats.len()],
                        data: Data::F32(a.floats.clone()),
                        dtype: DataType::Float as i32,
                    })
                }
                Some("value_int") => {
                    return Ok(Const {
                        dims: vec![],
                        data: Data::I64(vec![a.i.unwrap_or(0)]),
                        dtype: DataType::Int64 as i32,
                    })
                }
                Some("value_ints") => {
                    return Ok(Const {
                        dims: vec![a.ints.len()],
                        data: Data::I64(a.ints.clone()),
                        dtype: DataType::Int64 as i32,
                    })
                }
                _ => {}
            }
        }
        Err("no supported value attribute".into())
    }
}

enum OpError {
    Unsupported,
    Invalid(String),
}

fn need(inputs: &[Option<Const>], i: usize) -> Result<&Const, OpError> {
    inputs
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| OpError::Invalid(format!("missing input {i}")))
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpError> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(OpError::Invalid(format!(
                "shapes {a:?} and {b:?} do not broadcast"
            )));
        };
    }
    Ok(out)
}

/// Index into a broadcast operand for each output position.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let total: usize = out.iter().product();
    let mut strides = vec![0usize; r];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + r - shape.len();
        strides[oi] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    let mut idx = vec![0usize; total];
    let mut coord = vec![0usize; r];
    for (pos, slot) in idx.iter_mut().enumerate() {
        let _ = pos;
        *slot = coord.iter().zip(&strides).map(|(c, s)| c * s).sum();
        for d in (0..r).rev() {
            coord[d] += 1;
            if coord[d] < out[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    idx
}

fn binary(
    a: &Const,
    b: &Const,
    f: fn(f32, f32) -> f32,
    fi: fn(i64, i64) -> i64,
) -> Result<Const, OpError> {
    let dims = broadcast_shape(&a.dims, &b.dims)?;
    checked_len(&dims)?;
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    let data = if a.is_float() || b.is_float() {
        let (va, vb) = (a.f32(), b.f32());
        Data::F32(ia.iter().zip(&ib).map(|(&i, &j)| f(va[i], vb[j])).collect())
    } else {
        let (va, vb) = (a.i64(), b.i64());
        Data::I64(
            ia.iter()
                .zip(&ib)
                .map(|(&i, &j)| fi(va[i], vb[j]))
                .collect(),
        )
    };
    Ok(Const {
        dims,
        data,
        dtype: if a.is_float() { a.dtype } else { b.dtype },
    })
}

fn unary(a: &Const, f: fn(f32) -> f32) -> Const {
    Const {
        dims: a.dims.clone(),
        data: Data::F32(a.f32().into_iter().map(f).collect()),
        dtype: if a.is_float() {
            a.dtype
        } else {
            DataType::Float as i32
        },
    }
}

fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, OpError> {
    axes.iter()
        .map(|&a| {
            let a = if a < 0 { a + rank as i64 } else { a };
            if a < 0 || a as usize >= rank.max(1) && rank > 0 {
                Err(OpError::Invalid(format!(
                    "axis {a} out of range for rank {rank}"
                )))
            } else {
                Ok(a as usize)
            }
        })
        .collect()
}

fn reduce(node: &NodeProto, op: &str, inputs: &[Option<Const>]) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    let rank = x.dims.len();
    let axes_given = match inputs.get(1).and_then(Option::as_ref) {
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
    let v = x.f32();
    let out_keep: Vec<usize> = x
        .dims
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let total: usize = out_keep.iter().product();
    let mut acc = vec![
        match op {
            "ReduceMax" => f64::NEG_INFINITY,
            "ReduceMin" => f64::INFINITY,
            _ => 0.0,
        };
        total
    ];
    let idx = broadcast_index(&out_keep, &x.dims);
    for (pos, &o) in idx.iter().enumerate() {
        let val = v[pos] as f64;
        acc[o] = match op {
            "ReduceMax" => acc[o].max(val),
            "ReduceMin" => acc[o].min(val),
            _ => acc[o] + val,
        };
    }
    let count = (x.len() / total.max(1)).max(1) as f64;
    let data: Vec<f32> = acc
        .into_iter()
        .map(|a| {
            if op == "ReduceMean" {
                (a / count) as f32
            } else {
                a as f32
            }
        })
        .collect();
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
    Ok(Const {
        dims,
        data: Data::F32(data),
        dtype: x.dtype,
    })
}

fn transpose(node: &NodeProto, x: &Const) -> Result<Const, OpError> {
    let rank = x.dims.len();
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        Some(p) if !p.is_empty() => norm_axes(&p, rank)?,
        _ => (0..rank).rev().collect(),
    };
    if perm.len() != rank {
        return Err(OpError::Invalid(format!(
            "perm {perm:?} does not match rank {rank}"
        )));
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.dims[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * x.dims[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let total = x.len();
    let mut src = Vec::with_capacity(total);
    let mut coord = vec![0usize; rank];
    for _ in 0..total {
        src.push(
            coord
                .iter()
                .zip(&strides)
                .map(|(c, s)| c * s)
                .sum::<usize>(),
        );
        for d in (0..rank).rev() {
            coord[d] += 1;
            if coord[d] < out_dims[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    let data = match &x.data {
        Data::F32(v) => Data::F32(src.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Data::I64(src.iter().map(|&i| v[i]).collect()),
    };
    Ok(Const {
        dims: out_dims,
        data,
        dtype: x.dtype,
    })
}

/// Largest tensor the folder will materialise (elements): constants come from the file, but
/// broadcasting can multiply their size.
const MAX_FOLD_ELEMENTS: usize = 1 << 31;

fn checked_len(dims: &[usize]) -> Result<usize, OpError> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_FOLD_ELEMENTS)
        .ok_or_else(|| OpError::Invalid(format!("shape {dims:?} is too large to fold")))
}

fn with_dims(x: &Const, dims: Vec<usize>) -> Result<Const, OpError> {
    if checked_len(&dims)? != x.len() {
        return Err(OpError::Invalid(format!(
            "cannot reshape {:?} to {dims:?}",
            x.dims
        )));
    }
    Ok(Const {
        dims,
        data: x.data.clone(),
        dtype: x.dtype,
    })
}

fn eval_op(node: &NodeProto, op: &str, inputs: &[Option<Const>]) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    match op {
        "Identity" => Ok(x.clone()),
        "Abs" => Ok(unary(x, f32::abs)),
        "Neg" => Ok(unary(x, |v| -v)),
        "Reciprocal" => Ok(unary(x, |v| 1.0 / v)),
        "Round" => Ok(unary(x, f32::round_ties_even)),
        "Sqrt" => Ok(unary(x, f32::sqrt)),
        "Sign" => Ok(unary(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        })),
        "Floor" => Ok(unary(x, f32::floor)),
        "Ceil" => Ok(unary(x, f32::ceil)),
        "Add" => binary(x, need(inputs, 1)?, |a, b| a + b, |a, b| a.wrapping_add(b)),
        "Sub" => binary(x, need(inputs, 1)?, |a, b| a - b, |a, b| a.wrapping_sub(b)),
        "Mul" => binary(x, need(inputs, 1)?, |a, b| a * b, |a, b| a.wrapping_mul(b)),
        "Div" => {
            let b = need(inputs, 1)?;
            if !x.is_float() && !b.is_float() && b.i64().contains(&0) {
                return Err(OpError::Invalid("integer division by zero".into()));
            }
            binary(x, b, |a, b| a / b, |a, b| a.wrapping_div(b))
        }
        "Pow" => binary(x, need(inputs, 1)?, f32::powf, |a, b| {
            a.pow(b.clamp(0, 63) as u32)
        }),
        "Max" if inputs.len() == 2 => binary(x, need(inputs, 1)?, f32::max, i64::max),
        "Min" if inputs.len() == 2 => binary(x, need(inputs, 1)?, f32::min, i64::min),
        "Clip" => {
            let scalar = |i: usize, attr_name: &str, default: f32| -> Result<f32, OpError> {
                match inputs.get(i).and_then(Option::as_ref) {
                    Some(c) if c.len() == 1 => Ok(c.f32()[0]),
                    Some(_) => Err(OpError::Invalid("Clip bounds must be scalars".into())),
                    None => Ok(attr_f(node, attr_name).unwrap_or(default)),
                }
            };
            let lo = scalar(1, "min", f32::NEG_INFINITY)?;
            let hi = scalar(2, "max", f32::INFINITY)?;
            let v = x.f32().into_iter().map(|v| v.max(lo).min(hi)).collect();
            Ok(Const {
                dims: x.dims.clone(),
                data: Data::F32(v),
                dtype: x.dtype,
            })
        }
        "Cast" => {
            let to = attr_i(node, "to").ok_or_else(|| OpError::Invalid("no 'to'".into()))? as i32;
            if bitnet_model::dtype::is_float(to) {
                // Round through the target type so float16 casts lose what they lose.
                let v: Vec<f32> = match DataType::try_from(to) {
                    Ok(DataType::Float16) => x
                        .f32()
                        .into_iter()
                        .map(|v| half::f16::from_f32(v).to_f32())
                        .collect(),
                    Ok(DataType::Bfloat16) => x
                        .f32()
                        .into_iter()
                        .map(|v| half::bf16::from_f32(v).to_f32())
                        .collect(),
                    _ => x.f32(),
                };
                Ok(Const {
                    dims: x.dims.clone(),
                    data: Data::F32(v),
                    dtype: to,
                })
            } else if matches!(
                DataType::try_from(to),
                Ok(DataType::Int64 | DataType::Int32)
            ) {
                Ok(Const {
                    dims: x.dims.clone(),
                    data: Data::I64(x.f32().into_iter().map(|v| v.trunc() as i64).collect()),
                    dtype: to,
                })
            } else {
                Err(OpError::Unsupported)
            }
        }
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" => reduce(node, op, inputs),
        "Transpose" => transpose(node, x),
        "Reshape" => {
            let shape = need(inputs, 1)?.i64();
            let allowzero = attr_i(node, "allowzero").unwrap_or(0) == 1;
            let mut dims = Vec::with_capacity(shape.len());
            let mut infer = None;
            for (i, &s) in shape.iter().enumerate() {
                match s {
                    0 if !allowzero => dims.push(*x.dims.get(i).ok_or_else(|| {
                        OpError::Invalid("0 in shape beyond the input rank".into())
                    })?),
                    -1 => {
                        infer = Some(i);
                        dims.push(1);
                    }
                    s if s < 0 => return Err(OpError::Invalid(format!("bad shape value {s}"))),
                    s => dims.push(s as usize),
                }
            }
            if let Some(i) = infer {
                let rest = checked_len(&dims)?;
                if rest == 0 || x.len() % rest != 0 {
                    return Err(OpError::Invalid(format!(
                        "cannot reshape {:?} to {shape:?}",
                        x.dims
                    )));
                }
                dims[i] = x.len() / rest;
            }
            with_dims(x, dims)
        }
        "Squeeze" | "Unsqueeze" => {
            let axes = match inputs.get(1).and_then(Option::as_ref) {
                Some(c) => c.i64(),
                None => attr_ints(node, "axes").unwrap_or_default(),
            };
            if op == "Squeeze" {
                let rank = x.dims.len();
                let axes = norm_axes(&axes, rank)?;
                let dims = x
                    .dims
                    .iter()
                    .enumerate()
                    .filter(|&(i, &d)| {
                        !(if axes.is_empty() {
                            d == 1
                        } else {
                            axes.contains(&i)
                        })
                    })
                    .map(|(_, &d)| d)
                    .collect();
                with_dims(x, dims)
            } else {
                let rank = x.dims.len() + axes.len();
                let mut axes = norm_axes(&axes, rank)?;
                axes.sort_unstable();
                let mut dims = x.dims.clone();
                for a in axes {
                    if a > dims.len() {
                        return Err(OpError::Invalid("Unsqueeze axis out of range".into()));
                    }
                    dims.insert(a, 1);
                }
                with_dims(x, dims)
            }
        }
        _ => Err(OpError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(dims: &[usize], v: &[f32]) -> Const {
        Const {
            dims: dims.to_vec(),
            data: Data::F32(v.to_vec()),
            dtype: 1,
        }
    }

    #[test]
    fn huge_shapes_are_refused_not_allocated() {
        let x = c(&[2], &[1., 2.]);
        assert!(with_dims(&x, vec![usize::MAX, 3]).is_err());
        let a = c(&[1 << 20, 1], &[]);
        let b = c(&[1, 1 << 20], &[]);
        assert!(binary(&a, &b, |x, y| x + y, |x, y| x + y).is_err());
    }

    #[test]
    fn broadcasting_and_reduce() {
        let n = NodeProto::default();
        let a = c(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = c(&[3], &[10., 20., 30.]);
        let s = binary(&a, &b, |x, y| x + y, |x, y| x + y).ok().unwrap();
        assert_eq!(s.f32(), vec![11., 22., 33., 14., 25., 36.]);
        let m = reduce(&n, "ReduceMean", &[Some(a.clone())]).ok().unwrap();
        assert_eq!(m.dims, vec![1, 1]);
        assert_eq!(m.f32(), vec![3.5]);
        let t = transpose(&n, &a).ok().unwrap();
        assert_eq!(t.dims, vec![3, 2]);
        assert_eq!(t.f32(), vec![1., 4., 2., 5., 3., 6.]);
    }
}
