//! Running an ONNX graph in tract: symbolic input dims bound to concrete values, extra
//! intermediate values exposed as outputs, every output returned as `f32` with its shape.

use std::collections::{BTreeMap, HashSet};

use bitnet_model::graph::{value_elem_type, value_shape, Dim};
use bitnet_model::proto::{ModelProto, ValueInfoProto};
use prost::Message;
use tract_onnx::prelude::*;

use crate::error::{EvalError, Result};
use crate::lower::lower_for_tract_named;

/// Values of a host tensor, in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A tensor held by the caller: shape and values (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    /// The values as `f32` (booleans as 0 and 1).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short dtype name (`float32`, `int64`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match &self.data {
            TensorData::F32(_) => "float32",
            TensorData::F64(_) => "float64",
            TensorData::I64(_) => "int64",
            TensorData::I32(_) => "int32",
            TensorData::I8(_) => "int8",
            TensorData::U8(_) => "uint8",
            TensorData::Bool(_) => "bool",
        }
    }

    fn to_tract(&self) -> TractResult<Tensor> {
        let s = &self.shape;
        Ok(match &self.data {
            TensorData::F32(v) => Tensor::from_shape(s, v)?,
            TensorData::F64(v) => Tensor::from_shape(s, v)?,
            TensorData::I64(v) => Tensor::from_shape(s, v)?,
            TensorData::I32(v) => Tensor::from_shape(s, v)?,
            TensorData::I8(v) => Tensor::from_shape(s, v)?,
            TensorData::U8(v) => Tensor::from_shape(s, v)?,
            TensorData::Bool(v) => Tensor::from_shape(s, v)?,
        })
    }
}

/// A graph input (initializers listed as inputs are not inputs): name, ONNX element type and
/// declared dims.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<Dim>,
}

/// The real inputs of the main graph, in declaration order.
pub fn graph_inputs(proto: &ModelProto) -> Vec<InputSpec> {
    let Some(g) = proto.graph.as_ref() else {
        return Vec::new();
    };
    let inits: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    g.input
        .iter()
        .filter(|v| !inits.contains(v.name.as_deref().unwrap_or("")))
        .map(|v| InputSpec {
            name: v.name.clone().unwrap_or_default(),
            elem_type: value_elem_type(v).unwrap_or(1),
            dims: value_shape(v).unwrap_or_default(),
        })
        .collect()
}

/// Default for a symbolic dim nobody bound: 1 for names containing "batch", else 16.
pub fn default_dim(name: &str) -> usize {
    if name.to_ascii_lowercase().contains("batch") {
        1
    } else {
        16
    }
}

/// Concrete shapes of the inputs: symbolic dims from `dims`, else defaults (recorded in the
/// returned map). A dim without a name is called `<input>[<axis>]`.
pub fn bind_shapes(
    inputs: &[InputSpec],
    dims: &BTreeMap<String, usize>,
) -> (Vec<Vec<usize>>, BTreeMap<String, usize>) {
    let mut defaults = BTreeMap::new();
    let shapes = inputs
        .iter()
        .map(|inp| {
            inp.dims
                .iter()
                .enumerate()
                .map(|(ax, d)| {
                    let sym = match d {
                        Dim::Fixed(v) => return (*v).max(0) as usize,
                        Dim::Symbol(s) => s.clone(),
                        Dim::Unknown => format!("{}[{ax}]", inp.name),
                    };
                    if let Some(v) = dims.get(&sym) {
                        *v
                    } else {
                        *defaults
                            .entry(sym.clone())
                            .or_insert_with(|| default_dim(&sym))
                    }
                })
                .collect()
        })
        .collect();
    (shapes, defaults)
}

/// tract datum type of an ONNX element type.
pub fn datum_type(elem_type: i32) -> Option<DatumType> {
    Some(match elem_type {
        1 => DatumType::F32,
        2 => DatumType::U8,
        3 => DatumType::I8,
        4 => DatumType::U16,
        5 => DatumType::I16,
        6 => DatumType::I32,
        7 => DatumType::I64,
        9 => DatumType::Bool,
        10 => DatumType::F16,
        11 => DatumType::F64,
        12 => DatumType::U32,
        13 => DatumType::U64,
        _ => return None,
    })
}

/// One output of a run: name, values as `f32`, shape.
pub type Output = (String, Vec<f32>, Vec<usize>);

/// One output of a run in its own type: name, values, ONNX element type (see
/// [`Runner::run_typed`]).
pub type TypedOutput = (String, HostTensor, i32);

/// ONNX element type of a tract datum type (the inverse of [`datum_type`]).
pub fn elem_type(dt: DatumType) -> Option<i32> {
    Some(match dt {
        DatumType::F32 => 1,
        DatumType::U8 => 2,
        DatumType::I8 => 3,
        DatumType::U16 => 4,
        DatumType::I16 => 5,
        DatumType::I32 => 6,
        DatumType::I64 => 7,
        DatumType::Bool => 9,
        DatumType::F16 => 10,
        DatumType::F64 => 11,
        DatumType::U32 => 12,
        DatumType::U64 => 13,
        _ => return None,
    })
}

/// A model prepared for tract with concrete input shapes.
pub struct Runner {
    label: String,
    plan: Arc<TypedRunnableModel>,
    /// Input names in tract's order, with their datum types and shapes.
    inputs: Vec<(String, DatumType, Vec<usize>)>,
    outputs: Vec<String>,
    dims: BTreeMap<String, usize>,
    defaults: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("label", &self.label)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Runner {
    /// Prepares `proto` for tract (see [`Runner::new_named`]).
    pub fn new(
        proto: &ModelProto,
        dims: &BTreeMap<String, usize>,
        extra_outputs: &[String],
    ) -> Result<Runner> {
        Runner::new_named("<model>", proto, dims, extra_outputs)
    }

    /// Lowers `proto` for tract, exposes `extra_outputs` (intermediate values) after the graph
    /// outputs, binds symbolic input dims from `dims` (defaults for the rest, see
    /// [`Runner::defaults`]) and optimises the model. `label` names the model in errors.
    pub fn new_named(
        label: &str,
        proto: &ModelProto,
        dims: &BTreeMap<String, usize>,
        extra_outputs: &[String],
    ) -> Result<Runner> {
        let mut lowered = lower_for_tract_named(proto, label)?;
        let graph = lowered.graph.as_mut().expect("checked by lowering");
        let produced: HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(graph.initializer.iter().filter_map(|t| t.name.clone()))
            .chain(graph.input.iter().filter_map(|v| v.name.clone()))
            .collect();
        let mut present: HashSet<String> =
            graph.output.iter().filter_map(|v| v.name.clone()).collect();
        for extra in extra_outputs {
            if !produced.contains(extra) {
                return Err(EvalError::Mismatch {
                    model: label.to_string(),
                    reason: format!("no value named '{extra}' to expose as an output"),
                });
            }
            if present.insert(extra.clone()) {
                // Name only: tract infers the type and shape.
                graph.output.push(ValueInfoProto {
                    name: Some(extra.clone()),
                    ..Default::default()
                });
            }
        }
        let outputs: Vec<String> = graph
            .output
            .iter()
            .map(|v| v.name.clone().unwrap_or_default())
            .collect();
        let specs = graph_inputs(&lowered);
        let (shapes, defaults) = bind_shapes(&specs, dims);
        let mut used_dims = dims.clone();
        used_dims.extend(defaults.clone());

        bind_symbols(&mut lowered, &used_dims);
        let bytes = lowered.encode_to_vec();
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| EvalError::tract(label, "loading the model", e))?;
        let mut inputs = Vec::new();
        for i in 0..model.inputs.len() {
            let outlet = model.inputs[i];
            let name = model.node(outlet.node).name.clone();
            let Some(pos) = specs.iter().position(|s| s.name == name) else {
                return Err(EvalError::Input {
                    model: label.to_string(),
                    input: name,
                    reason: "tract sees an input the graph does not declare".into(),
                });
            };
            let dt = datum_type(specs[pos].elem_type).ok_or_else(|| EvalError::Input {
                model: label.to_string(),
                input: name.clone(),
                reason: format!(
                    "unsupported input type {}",
                    bitnet_model::dtype::name(specs[pos].elem_type)
                ),
            })?;
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, shapes[pos].clone()))
                .map_err(|e| EvalError::tract(label, format!("setting input '{name}'"), e))?;
            inputs.push((name, dt, shapes[pos].clone()));
        }
        let plan = model
            .into_optimized()
            .map_err(|e| EvalError::tract(label, "analysing and optimising the model", e))?
            .into_runnable()
            .map_err(|e| EvalError::tract(label, "making the model runnable", e))?;
        Ok(Runner {
            label: label.to_string(),
            plan,
            inputs,
            outputs,
            dims: used_dims,
            defaults,
        })
    }

    /// Every symbolic dim and the value it was bound to.
    pub fn dims(&self) -> &BTreeMap<String, usize> {
        &self.dims
    }

    /// The symbolic dims nobody bound, with the defaults used.
    pub fn defaults(&self) -> &BTreeMap<String, usize> {
        &self.defaults
    }

    /// Output names: graph outputs, then the extra outputs not already among them.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Input names, datum types and concrete shapes, in tract's order.
    pub fn inputs(&self) -> &[(String, DatumType, Vec<usize>)] {
        &self.inputs
    }

    /// Runs the model. Inputs are matched by name and must have the bound shapes; their
    /// values are cast to the declared type when they differ (e.g. int64 data for an int32
    /// input).
    pub fn run(&self, inputs: &[(String, HostTensor)]) -> Result<Vec<Output>> {
        let out = self.run_tract(inputs)?;
        out.into_iter()
            .zip(&self.outputs)
            .map(|(v, name)| {
                let t = v.into_tensor();
                let shape = t.shape().to_vec();
                let f = t
                    .cast_to::<f32>()
                    .map_err(|e| EvalError::tract(&self.label, format!("reading '{name}'"), e))?;
                let values = f
                    .to_plain_array_view::<f32>()
                    .map(|v| v.iter().copied().collect::<Vec<f32>>())
                    .map_err(|e| EvalError::tract(&self.label, format!("reading '{name}'"), e))?;
                Ok((name.clone(), values, shape))
            })
            .collect()
    }

    /// Runs the model (as [`Runner::run`]) and returns every output in its own element type,
    /// so that it can be fed to another graph as it is: float32, float64, int64, int32, int8,
    /// uint8 and bool values as they are; any other type (float16, uint16, ...) as float32
    /// values, exact for those types, beside its ONNX element type (a graph input declared
    /// with that type casts them back, exactly).
    pub fn run_typed(&self, inputs: &[(String, HostTensor)]) -> Result<Vec<TypedOutput>> {
        let out = self.run_tract(inputs)?;
        out.into_iter()
            .zip(&self.outputs)
            .map(|(v, name)| {
                let t = v.into_tensor();
                let shape = t.shape().to_vec();
                let fail =
                    |e: TractError| EvalError::tract(&self.label, format!("reading '{name}'"), e);
                fn plain<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
                    Ok(t.to_plain_array_view::<T>()?.iter().copied().collect())
                }
                let dt = t.datum_type();
                let (data, elem_type) = match dt {
                    DatumType::F32 => (TensorData::F32(plain(&t).map_err(fail)?), 1),
                    DatumType::F64 => (TensorData::F64(plain(&t).map_err(fail)?), 11),
                    DatumType::I64 => (TensorData::I64(plain(&t).map_err(fail)?), 7),
                    DatumType::I32 => (TensorData::I32(plain(&t).map_err(fail)?), 6),
                    DatumType::I8 => (TensorData::I8(plain(&t).map_err(fail)?), 3),
                    DatumType::U8 => (TensorData::U8(plain(&t).map_err(fail)?), 2),
                    DatumType::Bool => (TensorData::Bool(plain(&t).map_err(fail)?), 9),
                    DatumType::TDim => {
                        let c = t.cast_to::<i64>().map_err(fail)?;
                        (TensorData::I64(plain(&c).map_err(fail)?), 7)
                    }
                    other => {
                        let c = t.cast_to::<f32>().map_err(fail)?;
                        let elem = elem_type(other).ok_or_else(|| EvalError::Mismatch {
                            model: self.label.clone(),
                            reason: format!(
                                "value '{name}' has type {other:?}, which verify cannot pass on"
                            ),
                        })?;
                        (TensorData::F32(plain(&c).map_err(fail)?), elem)
                    }
                };
                Ok((name.clone(), HostTensor { shape, data }, elem_type))
            })
            .collect()
    }

    fn run_tract(&self, inputs: &[(String, HostTensor)]) -> Result<TVec<TValue>> {
        let mut values: TVec<TValue> = tvec!();
        for (name, dt, shape) in &self.inputs {
            let fail = |reason: String| EvalError::Input {
                model: self.label.clone(),
                input: name.clone(),
                reason,
            };
            let Some((_, t)) = inputs.iter().find(|(n, _)| n == name) else {
                return Err(fail("no value given".into()));
            };
            if &t.shape != shape {
                return Err(fail(format!(
                    "shape {:?} given, the model was prepared for {shape:?}",
                    t.shape
                )));
            }
            let tensor = t
                .to_tract()
                .and_then(|x| x.cast_to_dt(*dt).map(|c| c.into_owned()))
                .map_err(|e| fail(format!("{e:?}")))?;
            values.push(tensor.into_tvalue());
        }
        self.plan
            .run(values)
            .map_err(|e| EvalError::tract(&self.label, "running", e))
    }
}

/// Replaces every bound symbolic dim in the main graph's declared types (inputs, outputs and
/// intermediate value_info) by its value, so tract does not try to unify a concrete input
/// shape with a symbol left on an intermediate value (dynamo exports declare those).
fn bind_symbols(model: &mut ModelProto, dims: &BTreeMap<String, usize>) {
    use bitnet_model::proto::tensor_shape_proto::dimension::Value;
    use bitnet_model::proto::type_proto;
    let Some(g) = model.graph.as_mut() else {
        return;
    };
    for v in g
        .input
        .iter_mut()
        .chain(g.output.iter_mut())
        .chain(g.value_info.iter_mut())
    {
        let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let Some(shape) = t.shape.as_mut() else {
            continue;
        };
        for d in &mut shape.dim {
            if let Some(Value::DimParam(p)) = &d.value {
                // A bound symbol becomes its value; an expression of symbols (the dynamo
                // exporter declares intermediate dims such as `seq + 1`) or an unbound name
                // becomes unknown, for tract to infer from the bound inputs.
                d.value = dims.get(p).map(|&n| Value::DimValue(n as i64));
            }
        }
    }
}
