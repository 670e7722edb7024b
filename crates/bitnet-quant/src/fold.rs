//! Constant folding: evaluates a value computed only from constants (initializers, `Constant`
//! nodes, and chains of the ops listed in [`FOLDABLE_OPS`]) into a tensor. This is how a
//! BitLinear weight becomes a plain weight before quantization: the in-graph fake-quant chain
//! (Abs, ReduceMean, Clip, Reciprocal, Div, Mul, Round, Sub, Add, ...) of a training-time
//! export, or the unpacking of a packed uint8 ternary weight (BitShift, BitwiseAnd, Cast,
//! Concat, ScatterND, Where, ...) that transformers' `BitLinear` puts in the graph.
//!
//! Values keep their ONNX element type and its arithmetic: float32, float16 and bfloat16 are
//! held as `f32` (each result rounded to the element type, as a runtime computing in that type
//! does), float64 as `f64`, every integer type and bool as `i64` holding a value of the type's
//! range (results wrap as the type does; uint64 keeps its bit pattern). Each op is checked
//! against the ONNX backend node tests of that op (`tests/fold_backend.rs`).

mod elementwise;
mod index;
mod reduce;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{NodeProto, TensorProto};
use bitnet_model::tensor;

/// Every op the folder evaluates (default ONNX domain).
pub const FOLDABLE_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "Cast",
    "CastLike",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "CumSum",
    "Div",
    "Equal",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "Less",
    "LessOrEqual",
    "Max",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Reshape",
    "Round",
    "ScatterElements",
    "ScatterND",
    "Shape",
    "Sign",
    "Size",
    "Slice",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// A folded constant.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
    /// ONNX element type the value has in the graph (float16 weights fold to f32 data with
    /// `dtype` FLOAT16).
    pub dtype: i32,
}

/// The elements of a [`Const`], by the class of its element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// float32, float16, bfloat16 (each value exactly representable in the element type).
    F32(Vec<f32>),
    /// float64.
    F64(Vec<f64>),
    /// Every integer type and bool, each value within its type's range (uint64 as its bit
    /// pattern).
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
    /// Values evaluated so far, shared with the nodes reading them (no copy per reader).
    cache: HashMap<String, Result<Arc<Const>, FoldError>>,
    /// Memo of [`Folder::runtime_root`].
    runtime: HashMap<String, Option<String>>,
    /// Consumers of each value not evaluated yet: a large value is dropped from the cache once
    /// its last consumer is, so folding one weight holds only its live intermediates.
    remaining: HashMap<String, usize>,
    /// Nodes that were evaluated to produce folded values (for reporting and dead-code removal).
    pub visited: Vec<usize>,
    /// Initializers of more than [`SMALL_VALUE`] elements decoded since the caller last took
    /// this list: their memory-mapped pages can be dropped once the fold is done.
    pub decoded: Vec<String>,
}

/// Cached values up to this many elements (shapes, axes, scalars, small tables) stay cached
/// for the whole folder's life; larger ones are dropped once no consumer still needs them.
pub const SMALL_VALUE: usize = 1 << 16;

/// The class an element type is held in, or `None` for types the folder does not evaluate
/// (strings, complex, 8-, 6-, 4- and 2-bit floats and integers).
pub(crate) fn class(dtype: i32) -> Option<Class> {
    use DataType as D;
    Some(match DataType::try_from(dtype).ok()? {
        D::Float | D::Float16 | D::Bfloat16 => Class::F32,
        D::Double => Class::F64,
        D::Int8
        | D::Int16
        | D::Int32
        | D::Int64
        | D::Uint8
        | D::Uint16
        | D::Uint32
        | D::Uint64
        | D::Bool => Class::I64,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    F32,
    F64,
    I64,
}

/// The payload of a 64-bit tensor (float64, uint64) as little-endian words.
fn words(path: &Path, t: &TensorProto) -> Result<Vec<u64>, String> {
    let raw = tensor::raw_bytes(path, t).map_err(|e| e.to_string())?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Rounds an `f32` to the float element type `dtype` (float16, bfloat16; float32 unchanged).
pub(crate) fn round_f32(dtype: i32, v: f32) -> f32 {
    match DataType::try_from(dtype) {
        Ok(DataType::Float16) => half::f16::from_f32(v).to_f32(),
        Ok(DataType::Bfloat16) => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Brings an integer to the range of the integer element type `dtype`, wrapping as two's
/// complement arithmetic of that width does (bool: non-zero is 1).
pub(crate) fn wrap_int(dtype: i32, v: i64) -> i64 {
    use DataType as D;
    match DataType::try_from(dtype) {
        Ok(D::Int8) => v as i8 as i64,
        Ok(D::Uint8) => v as u8 as i64,
        Ok(D::Int16) => v as i16 as i64,
        Ok(D::Uint16) => v as u16 as i64,
        Ok(D::Int32) => v as i32 as i64,
        Ok(D::Uint32) => v as u32 as i64,
        Ok(D::Bool) => (v != 0) as i64,
        _ => v,
    }
}

pub(crate) fn is_u64(dtype: i32) -> bool {
    dtype == DataType::Uint64 as i32
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements at `idx`, in order.
    pub(crate) fn pick(&self, idx: &[usize]) -> Data {
        match self {
            Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
            Data::F64(v) => Data::F64(idx.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(idx.iter().map(|&i| v[i]).collect()),
        }
    }

    /// The elements at `idx`, with `None` taking element 0 of `fill`; `None` when `fill` is
    /// empty or of another class.
    pub(crate) fn pick_or(&self, idx: &[Option<usize>], fill: &Data) -> Option<Data> {
        Some(match (self, fill) {
            (Data::F32(v), Data::F32(f)) => {
                let f = *f.first()?;
                Data::F32(idx.iter().map(|i| i.map_or(f, |i| v[i])).collect())
            }
            (Data::F64(v), Data::F64(f)) => {
                let f = *f.first()?;
                Data::F64(idx.iter().map(|i| i.map_or(f, |i| v[i])).collect())
            }
            (Data::I64(v), Data::I64(f)) => {
                let f = *f.first()?;
                Data::I64(idx.iter().map(|i| i.map_or(f, |i| v[i])).collect())
            }
            _ => return None,
        })
    }
}

impl Const {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as `f32` (integers converted, float64 rounded).
    pub fn f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The elements as `f64`.
    pub fn f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) if is_u64(self.dtype) => v.iter().map(|&x| x as u64 as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
    /// The elements as `i64` (floats truncated toward zero).
    pub(crate) fn i64(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::F64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
        }
    }
    pub(crate) fn is_float(&self) -> bool {
        !matches!(self.data, Data::I64(_))
    }
    /// A scalar of element type `dtype` holding `v`.
    pub(crate) fn scalar_i64(dtype: i32, v: i64) -> Const {
        Const {
            dims: vec![],
            data: Data::I64(vec![v]),
            dtype,
        }
    }
    /// The same elements under new dims (same count).
    pub(crate) fn with_data(&self, dims: Vec<usize>, data: Data) -> Const {
        Const {
            dims,
            data,
            dtype: self.dtype,
        }
    }
    /// Converts to a `TensorProto` of its element type.
    pub fn to_tensor(&self, name: &str) -> TensorProto {
        use DataType as D;
        let dims: Vec<i64> = self.dims.iter().map(|&d| d as i64).collect();
        match &self.data {
            Data::F32(v) => tensor::from_f32_as(name, self.dtype, &dims, v),
            Data::F64(v) => tensor::from_raw(
                name,
                D::Double,
                &dims,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            ),
            Data::I64(v) => {
                let dt = DataType::try_from(self.dtype).unwrap_or(D::Int64);
                let raw: Vec<u8> = match dt {
                    D::Int8 | D::Uint8 | D::Bool => v.iter().map(|&x| x as u8).collect(),
                    D::Int16 | D::Uint16 => {
                        v.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect()
                    }
                    D::Int32 | D::Uint32 => {
                        v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
                    }
                    _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
                };
                let dt = if class(self.dtype) == Some(Class::I64) {
                    dt
                } else {
                    D::Int64
                };
                tensor::from_raw(name, dt, &dims, raw)
            }
        }
    }
    /// Decodes a tensor of any element type the folder evaluates.
    pub fn from_tensor(path: &Path, t: &TensorProto) -> Result<Const, String> {
        use DataType as D;
        let dtype = tensor::data_type(path, t).map_err(|e| e.to_string())?;
        let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let data = match class(dtype) {
            Some(Class::F32) => Data::F32(tensor::to_f32(path, t).map_err(|e| e.to_string())?),
            Some(Class::F64) => {
                Data::F64(words(path, t)?.into_iter().map(f64::from_bits).collect())
            }
            Some(Class::I64) if dtype == D::Uint64 as i32 => {
                Data::I64(words(path, t)?.into_iter().map(|w| w as i64).collect())
            }
            Some(Class::I64) => {
                let v = tensor::to_i64(path, t).map_err(|e| e.to_string())?;
                Data::I64(v.into_iter().map(|x| wrap_int(dtype, x)).collect())
            }
            None => {
                return Err(format!(
                    "element type {} is not evaluated by the folder",
                    bitnet_model::dtype::name(dtype)
                ))
            }
        };
        Ok(Const { dims, data, dtype })
    }
}

pub(crate) use bitnet_model::node::{attr, attr_f, attr_i, attr_ints, attr_s};

impl<'a, 'g> Folder<'a, 'g> {
    pub fn new(index: &'a GraphIndex<'g>, path: &'a Path) -> Self {
        Folder {
            index,
            path,
            cache: HashMap::new(),
            runtime: HashMap::new(),
            remaining: HashMap::new(),
            visited: Vec::new(),
            decoded: Vec::new(),
        }
    }

    /// Drops every cached value of more than [`SMALL_VALUE`] elements: the folder then holds
    /// no weight-sized data between the weights it is asked for.
    pub fn evict_large(&mut self) {
        self.cache
            .retain(|_, r| r.as_ref().map_or(true, |c| c.len() <= SMALL_VALUE));
    }

    /// Large values read by a node that is their last reader leave the memo before the node
    /// runs, so the node holds the only reference and an op can reuse the memory.
    fn release_last_reads(&mut self, inputs: &[String]) {
        for i in inputs.iter().filter(|i| !i.is_empty()) {
            let left = match self.remaining.get(i) {
                Some(&n) => n,
                None => self.index.consumers(i).len(),
            };
            let large = matches!(self.cache.get(i), Some(Ok(c)) if c.len() > SMALL_VALUE);
            if left <= 1 && large {
                self.cache.remove(i);
            }
        }
    }

    /// Notes that a consumer of each of `inputs` has been evaluated; drops large values that no
    /// consumer needs any more.
    fn consumed(&mut self, inputs: &[String]) {
        let mut seen = std::collections::HashSet::new();
        for i in inputs.iter().filter(|i| !i.is_empty()) {
            if !seen.insert(i.as_str()) {
                continue;
            }
            let left = self
                .remaining
                .entry(i.clone())
                .or_insert_with(|| self.index.consumers(i).len());
            *left = left.saturating_sub(1);
            if *left == 0 {
                if let Some(Ok(c)) = self.cache.get(i) {
                    if c.len() > SMALL_VALUE {
                        self.cache.remove(i);
                    }
                }
            }
        }
    }

    /// Evaluates `value`, or says why it cannot be. A large result is handed over, not kept.
    pub fn eval(&mut self, value: &str) -> Result<Const, FoldError> {
        let r = self.eval_shared(value)?;
        if r.len() > SMALL_VALUE {
            self.cache.remove(value);
        }
        Ok(Arc::unwrap_or_clone(r))
    }

    fn eval_shared(&mut self, value: &str) -> Result<Arc<Const>, FoldError> {
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

    fn eval_uncached(&mut self, value: &str) -> Result<Arc<Const>, FoldError> {
        if let Some(t) = self.index.initializer(value) {
            if tensor::saturating_element_count(t) > SMALL_VALUE as u64 {
                self.decoded.push(value.to_string());
            }
            return Const::from_tensor(self.path, t)
                .map(Arc::new)
                .map_err(|reason| FoldError::Invalid {
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
        if !bitnet_model::node::is_default_domain(Some(domain)) {
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
            return Ok(Arc::new(c));
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
                inputs.push(Some(self.eval_shared(i)?));
            }
        }
        self.release_last_reads(&node.input);
        let outs = eval_node(node, &op, inputs).map_err(|e| match e {
            OpError::Unsupported => FoldError::Unsupported {
                op: op.clone(),
                node: name.clone(),
            },
            OpError::Invalid(r) => invalid(r),
        })?;
        if outs.len() < node.output.len() {
            return Err(invalid(format!(
                "gives {} outputs, the node names {}",
                outs.len(),
                node.output.len()
            )));
        }
        self.visited.push(ni);
        self.consumed(&node.input);
        // Every output of a multi-output node (Split) is known now: remember the others.
        let mut mine = None;
        for (o, c) in node.output.iter().zip(outs) {
            if o == value {
                mine = Some(Arc::new(c));
            } else if !o.is_empty() {
                self.cache.insert(o.clone(), Ok(Arc::new(c)));
            }
        }
        mine.ok_or_else(|| invalid(format!("does not produce '{value}'")))
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

pub(crate) enum OpError {
    Unsupported,
    Invalid(String),
}

pub(crate) fn invalid<T>(reason: impl Into<String>) -> Result<T, OpError> {
    Err(OpError::Invalid(reason.into()))
}

/// A node's evaluated inputs (`None` for an omitted optional input).
pub(crate) type Inputs = [Option<Arc<Const>>];

pub(crate) fn need(inputs: &Inputs, i: usize) -> Result<&Const, OpError> {
    inputs
        .get(i)
        .and_then(Option::as_deref)
        .ok_or_else(|| OpError::Invalid(format!("missing input {i}")))
}

pub(crate) fn opt(inputs: &Inputs, i: usize) -> Option<&Const> {
    inputs.get(i).and_then(Option::as_deref)
}

/// Largest tensor the folder will materialise (elements): constants come from the file, but
/// broadcasting, Expand, Tile, Range and ConstantOfShape can multiply their size.
const MAX_FOLD_ELEMENTS: usize = 1 << 31;

pub(crate) fn checked_len(dims: &[usize]) -> Result<usize, OpError> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_FOLD_ELEMENTS)
        .ok_or_else(|| OpError::Invalid(format!("shape {dims:?} is too large to fold")))
}

/// Normalises (possibly negative) axes against `rank`.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, OpError> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

/// An axis of a tensor of rank `rank` (a scalar has none).
pub(crate) fn norm_axis(a: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let n = if a < 0 { a + r } else { a };
    if n < 0 || n >= r {
        return invalid(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(n as usize)
}

/// Row-major strides of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Calls `f` with each coordinate of `dims` in row-major order.
pub(crate) fn for_each_coord(dims: &[usize], mut f: impl FnMut(&[usize])) {
    let total: usize = dims.iter().product();
    let mut coord = vec![0usize; dims.len()];
    for _ in 0..total {
        f(&coord);
        for d in (0..dims.len()).rev() {
            coord[d] += 1;
            if coord[d] < dims[d] {
                break;
            }
            coord[d] = 0;
        }
    }
}

fn eval_node(
    node: &NodeProto,
    op: &str,
    mut inputs: Vec<Option<Arc<Const>>>,
) -> Result<Vec<Const>, OpError> {
    if op == "Split" {
        return index::split(node, &inputs);
    }
    if matches!(op, "ScatterND" | "ScatterElements") {
        // Updated in place when the memo let go of the data (this node is its last reader).
        let data = inputs
            .first_mut()
            .and_then(Option::take)
            .ok_or_else(|| OpError::Invalid("missing input 0".into()))?;
        let data = Arc::unwrap_or_clone(data);
        let out = if op == "ScatterND" {
            index::scatter_nd(node, data, &inputs)
        } else {
            index::scatter_elements(node, data, &inputs)
        };
        return out.map(|c| vec![c]);
    }
    eval_op(node, op, &inputs).map(|c| vec![c])
}

fn eval_op(node: &NodeProto, op: &str, inputs: &Inputs) -> Result<Const, OpError> {
    use elementwise as e;
    match op {
        "Identity" => Ok(need(inputs, 0)?.clone()),
        "Abs" | "Neg" | "Reciprocal" | "Round" | "Sqrt" | "Sign" | "Floor" | "Ceil" => {
            e::unary(op, need(inputs, 0)?)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" => {
            e::arith(node, op, need(inputs, 0)?, need(inputs, 1)?)
        }
        "Max" | "Min" => e::min_max(op, inputs),
        "Less" | "Greater" | "Equal" | "LessOrEqual" | "GreaterOrEqual" => {
            e::compare(op, need(inputs, 0)?, need(inputs, 1)?)
        }
        "And" | "Or" | "Xor" | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitShift" => {
            e::bits(node, op, need(inputs, 0)?, need(inputs, 1)?)
        }
        "Not" | "BitwiseNot" => e::not(op, need(inputs, 0)?),
        "Where" => e::where_(need(inputs, 0)?, need(inputs, 1)?, need(inputs, 2)?),
        "Clip" => e::clip(node, inputs),
        "Cast" => {
            let to = attr_i(node, "to").ok_or_else(|| OpError::Invalid("no 'to'".into()))?;
            e::cast(need(inputs, 0)?, to as i32)
        }
        "CastLike" => e::cast(need(inputs, 0)?, need(inputs, 1)?.dtype),
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" => reduce::reduce(node, op, inputs),
        "CumSum" => reduce::cumsum(node, need(inputs, 0)?, need(inputs, 1)?),
        "Transpose" => index::transpose(node, need(inputs, 0)?),
        "Reshape" => index::reshape(node, need(inputs, 0)?, need(inputs, 1)?),
        "Squeeze" | "Unsqueeze" => index::squeeze(node, op, inputs),
        "Flatten" => index::flatten(node, need(inputs, 0)?),
        "Concat" => index::concat(node, inputs),
        "Slice" => index::slice(node, inputs),
        "Gather" => index::gather(node, need(inputs, 0)?, need(inputs, 1)?),
        "GatherElements" => index::gather_elements(node, need(inputs, 0)?, need(inputs, 1)?),
        "GatherND" => index::gather_nd(node, need(inputs, 0)?, need(inputs, 1)?),
        "Expand" => index::expand(need(inputs, 0)?, need(inputs, 1)?),
        "Tile" => index::tile(need(inputs, 0)?, need(inputs, 1)?),
        "Pad" => index::pad(node, inputs),
        "Range" => index::range(need(inputs, 0)?, need(inputs, 1)?, need(inputs, 2)?),
        "Shape" => index::shape(node, need(inputs, 0)?),
        "Size" => {
            let n = need(inputs, 0)?.len() as i64;
            Ok(Const::scalar_i64(DataType::Int64 as i32, n))
        }
        "ConstantOfShape" => index::constant_of_shape(node, need(inputs, 0)?),
        _ => Err(OpError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn c(dims: &[usize], v: &[f32]) -> Const {
        Const {
            dims: dims.to_vec(),
            data: Data::F32(v.to_vec()),
            dtype: 1,
        }
    }

    #[test]
    fn huge_shapes_are_refused_not_allocated() {
        let x = c(&[2], &[1., 2.]);
        assert!(index::with_dims(&x, vec![usize::MAX, 3]).is_err());
        let a = c(&[1 << 20, 1], &[]);
        let b = c(&[1, 1 << 20], &[]);
        let n = NodeProto::default();
        assert!(elementwise::arith(&n, "Add", &a, &b).is_err());
        let shape = Const {
            dims: vec![2],
            data: Data::I64(vec![1 << 40, 1 << 40]),
            dtype: DataType::Int64 as i32,
        };
        assert!(index::expand(&x, &shape).is_err());
    }

    #[test]
    fn broadcasting_and_reduce() {
        let n = NodeProto::default();
        let a = c(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = c(&[3], &[10., 20., 30.]);
        let s = elementwise::arith(&n, "Add", &a, &b).ok().unwrap();
        assert_eq!(s.f32(), vec![11., 22., 33., 14., 25., 36.]);
        let m = reduce::reduce(&n, "ReduceMean", &[Some(Arc::new(a.clone()))])
            .ok()
            .unwrap();
        assert_eq!(m.dims, vec![1, 1]);
        assert_eq!(m.f32(), vec![3.5]);
        let t = index::transpose(&n, &a).ok().unwrap();
        assert_eq!(t.dims, vec![3, 2]);
        assert_eq!(t.f32(), vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn integer_results_wrap_to_their_type() {
        let u8_ = DataType::Uint8 as i32;
        let a = Const {
            dims: vec![2],
            data: Data::I64(vec![200, 3]),
            dtype: u8_,
        };
        let n = NodeProto::default();
        let s = elementwise::arith(&n, "Add", &a, &a).ok().unwrap();
        assert_eq!(s.data, Data::I64(vec![144, 6]));
        assert_eq!(s.dtype, u8_);
        let not = elementwise::not("BitwiseNot", &a).ok().unwrap();
        assert_eq!(not.data, Data::I64(vec![55, 252]));
    }

    #[test]
    fn float16_arithmetic_rounds_to_float16() {
        let f16 = DataType::Float16 as i32;
        let a = Const {
            dims: vec![1],
            data: Data::F32(vec![1.0]),
            dtype: f16,
        };
        let b = Const {
            dims: vec![1],
            data: Data::F32(vec![half::f16::from_f32(1e-3).to_f32()]),
            dtype: f16,
        };
        let n = NodeProto::default();
        let s = elementwise::arith(&n, "Add", &a, &b).ok().unwrap();
        // 1 + 0.001 is not a float16: the nearest float16 is 1.0009766.
        assert_eq!(s.f32(), vec![half::f16::from_f32(1.001).to_f32()]);
    }
}
