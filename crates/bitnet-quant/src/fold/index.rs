//! Ops that move elements without computing new ones: shape changes, Transpose, Concat, Split,
//! Slice, the Gather and Scatter families, Expand, Tile, Pad, and the ops that make a tensor
//! from a shape (Shape, ConstantOfShape, Range).

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::NodeProto;

use super::elementwise::{broadcast_index, broadcast_shapes};
use super::{
    attr, attr_i, attr_ints, attr_s, checked_len, for_each_coord, invalid, need, norm_axes,
    norm_axis, opt, strides, Class, Const, Data, Inputs, OpError,
};

pub(crate) fn with_dims(x: &Const, dims: Vec<usize>) -> Result<Const, OpError> {
    if checked_len(&dims)? != x.len() {
        return invalid(format!("cannot reshape {:?} to {dims:?}", x.dims));
    }
    Ok(x.with_data(dims, x.data.clone()))
}

/// The value of an index input, resolved against a dimension of size `d` (negative counts
/// from the end) and checked.
fn resolve(i: i64, d: usize) -> Result<usize, OpError> {
    let n = if i < 0 { i + d as i64 } else { i };
    if n < 0 || n as usize >= d {
        return invalid(format!("index {i} out of range for a dimension of {d}"));
    }
    Ok(n as usize)
}

pub(crate) fn transpose(node: &NodeProto, x: &Const) -> Result<Const, OpError> {
    let rank = x.dims.len();
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        Some(p) if !p.is_empty() => norm_axes(&p, rank)?,
        _ => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        return invalid(format!("perm {perm:?} is not a permutation of rank {rank}"));
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.dims[p]).collect();
    let in_strides = strides(&x.dims);
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    // Element by element, without a table of source positions (a weight's worth of `usize`).
    macro_rules! gather {
        ($v:expr) => {{
            let mut out = Vec::with_capacity($v.len());
            for_each_coord(&out_dims, |c| {
                out.push($v[c.iter().zip(&st).map(|(c, s)| c * s).sum::<usize>()])
            });
            out
        }};
    }
    let data = match &x.data {
        Data::F32(v) => Data::F32(gather!(v)),
        Data::F64(v) => Data::F64(gather!(v)),
        Data::I64(v) => Data::I64(gather!(v)),
    };
    Ok(x.with_data(out_dims, data))
}

pub(crate) fn reshape(node: &NodeProto, x: &Const, shape: &Const) -> Result<Const, OpError> {
    let shape = shape.i64();
    let allowzero = attr_i(node, "allowzero").unwrap_or(0) == 1;
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 if !allowzero => dims.push(
                *x.dims
                    .get(i)
                    .ok_or_else(|| OpError::Invalid("0 in shape beyond the input rank".into()))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            s if s < 0 => return invalid(format!("bad shape value {s}")),
            s => dims.push(s as usize),
        }
    }
    if let Some(i) = infer {
        let rest = checked_len(&dims)?;
        if rest == 0 || !x.len().is_multiple_of(rest) {
            return invalid(format!("cannot reshape {:?} to {shape:?}", x.dims));
        }
        dims[i] = x.len() / rest;
    }
    with_dims(x, dims)
}

pub(crate) fn squeeze(node: &NodeProto, op: &str, inputs: &Inputs) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    let axes = match opt(inputs, 1) {
        Some(c) => c.i64(),
        None => attr_ints(node, "axes").unwrap_or_default(),
    };
    if op == "Squeeze" {
        let axes = norm_axes(&axes, x.dims.len())?;
        if axes.iter().any(|&a| x.dims[a] != 1) {
            return invalid(format!("Squeeze of axes {axes:?} of shape {:?}", x.dims));
        }
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
                return invalid("Unsqueeze axis out of range");
            }
            dims.insert(a, 1);
        }
        with_dims(x, dims)
    }
}

pub(crate) fn flatten(node: &NodeProto, x: &Const) -> Result<Const, OpError> {
    let rank = x.dims.len();
    let axis = attr_i(node, "axis").unwrap_or(1);
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize > rank {
        return invalid(format!("axis {axis} out of range for rank {rank}"));
    }
    let outer: usize = x.dims[..a as usize].iter().product();
    with_dims(x, vec![outer, x.len() / outer.max(1)])
}

/// Positions along `axis` taken, in order, for each (outer, inner) pair: the source index of
/// every output element when the output's `axis` holds `along.len()` entries.
fn along_axis(dims: &[usize], axis: usize, along: &[usize]) -> Vec<usize> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let d = dims[axis];
    let mut idx = Vec::with_capacity(outer * along.len() * inner);
    for o in 0..outer {
        for &a in along {
            let base = (o * d + a) * inner;
            idx.extend(base..base + inner);
        }
    }
    idx
}

pub(crate) fn concat(node: &NodeProto, inputs: &Inputs) -> Result<Const, OpError> {
    let xs: Vec<&Const> = inputs.iter().flatten().map(|c| c.as_ref()).collect();
    let Some(&first) = xs.first() else {
        return invalid("Concat of no inputs");
    };
    let rank = first.dims.len();
    let axis = norm_axis(
        attr_i(node, "axis").ok_or_else(|| OpError::Invalid("no 'axis'".into()))?,
        rank,
    )?;
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for x in &xs {
        let same = x.dims.len() == rank
            && (0..rank).all(|i| i == axis || x.dims[i] == first.dims[i])
            && std::mem::discriminant(&x.data) == std::mem::discriminant(&first.data);
        if !same {
            return invalid(format!("Concat of {:?} and {:?}", first.dims, x.dims));
        }
        dims[axis] += x.dims[axis];
    }
    checked_len(&dims)?;
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    macro_rules! cat {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(dims.iter().product());
            for o in 0..outer {
                for x in &xs {
                    let Data::$variant(v) = &x.data else {
                        return invalid("Concat of inputs of different types");
                    };
                    let n = x.dims[axis] * inner;
                    out.extend_from_slice(&v[o * n..(o + 1) * n]);
                }
            }
            Data::$variant(out)
        }};
    }
    let data = match first.data {
        Data::F32(_) => cat!(F32),
        Data::F64(_) => cat!(F64),
        Data::I64(_) => cat!(I64),
    };
    Ok(first.with_data(dims, data))
}

pub(crate) fn split(node: &NodeProto, inputs: &Inputs) -> Result<Vec<Const>, OpError> {
    let x = need(inputs, 0)?;
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), x.dims.len())?;
    let d = x.dims[axis];
    let sizes: Vec<usize> = match opt(inputs, 1)
        .map(Const::i64)
        .or_else(|| attr_ints(node, "split").filter(|s| !s.is_empty()))
    {
        Some(s) => {
            if s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != d as i64 {
                return invalid(format!("split {s:?} of a dimension of {d}"));
            }
            s.into_iter().map(|v| v as usize).collect()
        }
        None => {
            let n = match attr_i(node, "num_outputs") {
                Some(n) if n > 0 && n as usize == node.output.len() => n as usize,
                Some(n) => {
                    return invalid(format!(
                        "num_outputs {n} for a node with {} outputs",
                        node.output.len()
                    ))
                }
                None => node.output.len().max(1),
            };
            // Equal parts, the last one smaller when `d` does not divide (opset 18).
            let part = d.div_ceil(n);
            (0..n)
                .map(|i| part.min(d.saturating_sub(i * part)))
                .collect()
        }
    };
    let mut start = 0;
    let mut outs = Vec::with_capacity(sizes.len());
    for s in sizes {
        let along: Vec<usize> = (start..start + s).collect();
        let mut dims = x.dims.clone();
        dims[axis] = s;
        outs.push(x.with_data(dims, x.data.pick(&along_axis(&x.dims, axis, &along))));
        start += s;
    }
    Ok(outs)
}

pub(crate) fn slice(node: &NodeProto, inputs: &Inputs) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    let rank = x.dims.len();
    // Opset 10 made starts, ends, axes and steps inputs; before, starts/ends/axes were
    // attributes.
    let (starts, ends, axes, steps) = if inputs.len() > 1 {
        (
            need(inputs, 1)?.i64(),
            need(inputs, 2)?.i64(),
            opt(inputs, 3).map(Const::i64),
            opt(inputs, 4).map(Const::i64),
        )
    } else {
        (
            attr_ints(node, "starts").unwrap_or_default(),
            attr_ints(node, "ends").unwrap_or_default(),
            attr_ints(node, "axes"),
            None,
        )
    };
    let axes = match axes {
        Some(a) => norm_axes(&a, rank)?,
        None if starts.len() <= rank => (0..starts.len()).collect(),
        None => return invalid(format!("{} starts for rank {rank}", starts.len())),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return invalid("starts, ends, axes and steps differ in length");
    }
    // Per axis: the source positions taken.
    let mut take: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
    for k in 0..starts.len() {
        let (a, step) = (axes[k], steps[k]);
        let d = x.dims[a] as i128;
        if step == 0 {
            return invalid("slice step 0");
        }
        let fix = |v: i64| {
            let v = v as i128;
            if v < 0 {
                v + d
            } else {
                v
            }
        };
        let (s, e) = (fix(starts[k]), fix(ends[k]));
        let pos: Vec<usize> = if step > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s..e.max(s))
                .step_by(step as usize)
                .map(|v| v as usize)
                .collect()
        } else {
            let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
            let mut out = Vec::new();
            let mut v = s;
            while v > e {
                out.push(v as usize);
                v += step as i128;
            }
            out
        };
        take[a] = pos;
    }
    pick_product(x, &take)
}

/// The elements at every combination of the per-axis positions `take`.
fn pick_product(x: &Const, take: &[Vec<usize>]) -> Result<Const, OpError> {
    let dims: Vec<usize> = take.iter().map(Vec::len).collect();
    checked_len(&dims)?;
    let st = strides(&x.dims);
    let mut idx = Vec::with_capacity(dims.iter().product());
    for_each_coord(&dims, |c| {
        idx.push(c.iter().enumerate().map(|(a, &i)| take[a][i] * st[a]).sum())
    });
    Ok(x.with_data(dims, x.data.pick(&idx)))
}

pub(crate) fn gather(node: &NodeProto, x: &Const, indices: &Const) -> Result<Const, OpError> {
    let rank = x.dims.len();
    if rank == 0 {
        return invalid("Gather of a scalar");
    }
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), rank)?;
    let along = indices
        .i64()
        .into_iter()
        .map(|i| resolve(i, x.dims[axis]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dims = x.dims[..axis].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&x.dims[axis + 1..]);
    checked_len(&dims)?;
    Ok(x.with_data(dims, x.data.pick(&along_axis(&x.dims, axis, &along))))
}

/// For GatherElements and ScatterElements: the flat position in `dims` of each element of
/// `indices` (same rank), its coordinate along `axis` replaced by the index it holds.
fn element_positions(dims: &[usize], indices: &Const, axis: usize) -> Result<Vec<usize>, OpError> {
    if indices.dims.len() != dims.len() {
        return invalid("indices of another rank than the data");
    }
    let st = strides(dims);
    let ind = indices.i64();
    let mut out = Vec::with_capacity(ind.len());
    let mut k = 0;
    let mut err = None;
    for_each_coord(&indices.dims, |c| {
        let mut at = 0;
        for (a, &ci) in c.iter().enumerate() {
            let p = if a == axis {
                resolve(ind[k], dims[a])
            } else if ci < dims[a] {
                Ok(ci)
            } else {
                invalid("indices larger than data")
            };
            match p {
                Ok(p) => at += p * st[a],
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        out.push(at);
        k += 1;
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

pub(crate) fn gather_elements(
    node: &NodeProto,
    x: &Const,
    indices: &Const,
) -> Result<Const, OpError> {
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), x.dims.len())?;
    let idx = element_positions(&x.dims, indices, axis)?;
    Ok(x.with_data(indices.dims.clone(), x.data.pick(&idx)))
}

/// For GatherND and ScatterND: the flat offset into `data` of each index tuple (the last axis
/// of `indices`) and the length of the slice each tuple selects, with `batch` leading batch
/// axes shared by both.
fn nd_offsets(
    data: &[usize],
    indices: &Const,
    batch: usize,
) -> Result<(Vec<usize>, usize), OpError> {
    let q = indices.dims.len();
    if q == 0 || batch >= q || batch > data.len() {
        return invalid("indices rank too small");
    }
    let last = indices.dims[q - 1];
    if batch + last > data.len() || indices.dims[..batch] != data[..batch] {
        return invalid(format!(
            "indices {:?} do not fit data {data:?} with {batch} batch axes",
            indices.dims
        ));
    }
    let st = strides(data);
    let slice: usize = data[batch + last..].iter().product();
    let per_batch: usize = indices.dims[batch..q - 1].iter().product();
    let ind = indices.i64();
    let batch_dims = &data[..batch];
    let tuples: usize = indices.dims[..q - 1].iter().product();
    let mut offsets = Vec::with_capacity(tuples);
    for t in 0..tuples {
        // The batch coordinate of tuple t.
        let mut b = t / per_batch.max(1);
        let mut at = 0;
        for a in (0..batch).rev() {
            at += (b % batch_dims[a]) * st[a];
            b /= batch_dims[a];
        }
        for j in 0..last {
            at += resolve(ind[t * last + j], data[batch + j])? * st[batch + j];
        }
        offsets.push(at);
    }
    Ok((offsets, slice))
}

pub(crate) fn gather_nd(node: &NodeProto, x: &Const, indices: &Const) -> Result<Const, OpError> {
    let batch = attr_i(node, "batch_dims").unwrap_or(0).max(0) as usize;
    let (offsets, slice) = nd_offsets(&x.dims, indices, batch)?;
    let q = indices.dims.len();
    let last = indices.dims[q - 1];
    let mut dims = indices.dims[..q - 1].to_vec();
    dims.extend_from_slice(&x.dims[batch + last..]);
    checked_len(&dims)?;
    let idx: Vec<usize> = offsets.iter().flat_map(|&o| o..o + slice).collect();
    Ok(x.with_data(dims, x.data.pick(&idx)))
}

/// How a Scatter op combines an update with the value already there.
fn reduction(node: &NodeProto) -> Result<&'static str, OpError> {
    Ok(match attr_s(node, "reduction") {
        None | Some(b"none") => "none",
        Some(b"add") => "add",
        Some(b"mul") => "mul",
        Some(b"max") => "max",
        Some(b"min") => "min",
        Some(r) => return invalid(format!("reduction '{}'", String::from_utf8_lossy(r))),
    })
}

/// Writes `updates[k]` into `out[targets[k]]` with `how`.
fn scatter_into(
    mut x: Const,
    updates: &Const,
    targets: &[usize],
    how: &str,
) -> Result<Const, OpError> {
    if updates.len() != targets.len() {
        return invalid(format!(
            "{} updates for {} positions",
            updates.len(),
            targets.len()
        ));
    }
    macro_rules! apply {
        ($variant:ident, $max:expr, $min:expr, $add:expr, $mul:expr) => {{
            let (Data::$variant(out), Data::$variant(up)) = (&mut x.data, &updates.data) else {
                return invalid("updates of another type than data");
            };
            for (&t, &u) in targets.iter().zip(up) {
                let o = &mut out[t];
                *o = match how {
                    "add" => $add(*o, u),
                    "mul" => $mul(*o, u),
                    "max" => $max(*o, u),
                    "min" => $min(*o, u),
                    _ => u,
                };
            }
        }};
    }
    let dt = x.dtype;
    match x.data {
        Data::F32(_) => apply!(
            F32,
            f32::max,
            f32::min,
            |a: f32, b: f32| super::round_f32(dt, a + b),
            |a: f32, b: f32| super::round_f32(dt, a * b)
        ),
        Data::F64(_) => apply!(
            F64,
            f64::max,
            f64::min,
            |a: f64, b: f64| a + b,
            |a: f64, b: f64| a * b
        ),
        Data::I64(_) => apply!(
            I64,
            i64::max,
            i64::min,
            |a: i64, b: i64| super::wrap_int(dt, a.wrapping_add(b)),
            |a: i64, b: i64| super::wrap_int(dt, a.wrapping_mul(b))
        ),
    }
    Ok(x)
}

/// ScatterND of `x` (taken by value: updated in place), `inputs[1]` and `inputs[2]`.
pub(crate) fn scatter_nd(node: &NodeProto, x: Const, inputs: &Inputs) -> Result<Const, OpError> {
    let (indices, updates) = (need(inputs, 1)?, need(inputs, 2)?);
    let (offsets, slice) = nd_offsets(&x.dims, indices, 0)?;
    let targets: Vec<usize> = offsets.iter().flat_map(|&o| o..o + slice).collect();
    scatter_into(x, updates, &targets, reduction(node)?)
}

/// ScatterElements of `x` (taken by value: updated in place), `inputs[1]` and `inputs[2]`.
pub(crate) fn scatter_elements(
    node: &NodeProto,
    x: Const,
    inputs: &Inputs,
) -> Result<Const, OpError> {
    let (indices, updates) = (need(inputs, 1)?, need(inputs, 2)?);
    let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), x.dims.len())?;
    if updates.dims != indices.dims {
        return invalid("ScatterElements indices and updates must have one shape");
    }
    let targets = element_positions(&x.dims, indices, axis)?;
    scatter_into(x, updates, &targets, reduction(node)?)
}

fn shape_values(c: &Const) -> Result<Vec<usize>, OpError> {
    c.i64()
        .into_iter()
        .map(|v| {
            usize::try_from(v).map_err(|_| OpError::Invalid(format!("negative dimension {v}")))
        })
        .collect()
}

pub(crate) fn expand(x: &Const, shape: &Const) -> Result<Const, OpError> {
    let want = shape_values(shape)?;
    let dims = broadcast_shapes(&[&x.dims, &want])?;
    let idx: Vec<usize> = broadcast_index(&x.dims, &dims).iter().collect();
    Ok(x.with_data(dims.clone(), x.data.pick(&idx)))
}

pub(crate) fn tile(x: &Const, repeats: &Const) -> Result<Const, OpError> {
    let reps = shape_values(repeats)?;
    if reps.len() != x.dims.len() {
        return invalid("Tile repeats must have one entry per axis");
    }
    let take: Vec<Vec<usize>> = x
        .dims
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| (0..d * r).map(|i| i % d.max(1)).collect())
        .collect();
    let dims: Vec<usize> = x.dims.iter().zip(&reps).map(|(d, r)| d * r).collect();
    checked_len(&dims)?;
    pick_product(x, &take)
}

pub(crate) fn pad(node: &NodeProto, inputs: &Inputs) -> Result<Const, OpError> {
    let x = need(inputs, 0)?;
    let rank = x.dims.len();
    // Opset 11 made pads and the constant value inputs; before, they were attributes.
    let pads = match opt(inputs, 1) {
        Some(p) => p.i64(),
        None => attr_ints(node, "pads").unwrap_or_default(),
    };
    let axes = match opt(inputs, 3) {
        Some(a) => norm_axes(&a.i64(), rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return invalid(format!("{} pads for {} axes", pads.len(), axes.len()));
    }
    let fill = match opt(inputs, 2) {
        Some(v) if v.len() == 1 => v.data.clone(),
        Some(_) => return invalid("Pad constant_value must be a scalar"),
        None => {
            let v = attr(node, "value").and_then(|a| a.f).unwrap_or(0.0);
            match super::class(x.dtype) {
                Some(Class::F32) => Data::F32(vec![v]),
                Some(Class::F64) => Data::F64(vec![v as f64]),
                _ => Data::I64(vec![v as i64]),
            }
        }
    };
    let mode = attr_s(node, "mode").unwrap_or(b"constant");
    let mut begin = vec![0i64; rank];
    let mut end = vec![0i64; rank];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
        end[a] = pads[k + axes.len()];
    }
    let mut dims = Vec::with_capacity(rank);
    for a in 0..rank {
        let d = x.dims[a] as i64 + begin[a] + end[a];
        if d < 0 {
            return invalid("pads remove more than the dimension");
        }
        dims.push(d as usize);
    }
    checked_len(&dims)?;
    // Per axis: the source position of each output position, None outside the data.
    let mut take: Vec<Vec<Option<usize>>> = Vec::with_capacity(rank);
    for a in 0..rank {
        let d = x.dims[a] as i64;
        let col: Vec<Option<usize>> = (0..dims[a] as i64)
            .map(|o| {
                let s = o - begin[a];
                if (0..d).contains(&s) {
                    return Ok(Some(s as usize));
                }
                if d == 0 {
                    return Ok(None);
                }
                Ok(match mode {
                    b"constant" => None,
                    b"edge" => Some(s.clamp(0, d - 1) as usize),
                    b"wrap" => Some(s.rem_euclid(d) as usize),
                    b"reflect" => {
                        if d == 1 {
                            Some(0)
                        } else {
                            let p = 2 * (d - 1);
                            let m = s.rem_euclid(p);
                            Some((if m < d { m } else { p - m }) as usize)
                        }
                    }
                    m => return invalid(format!("Pad mode '{}'", String::from_utf8_lossy(m))),
                })
            })
            .collect::<Result<_, OpError>>()?;
        take.push(col);
    }
    let st = strides(&x.dims);
    let mut idx = Vec::with_capacity(dims.iter().product());
    for_each_coord(&dims, |c| {
        let mut at = Some(0);
        for (a, &ci) in c.iter().enumerate() {
            at = match (at, take[a][ci]) {
                (Some(t), Some(s)) => Some(t + s * st[a]),
                _ => None,
            };
        }
        idx.push(at);
    });
    let data = x
        .data
        .pick_or(&idx, &fill)
        .ok_or_else(|| OpError::Invalid("Pad constant_value of another type than data".into()))?;
    Ok(x.with_data(dims, data))
}

pub(crate) fn range(start: &Const, limit: &Const, delta: &Const) -> Result<Const, OpError> {
    if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
        return invalid("Range takes scalars");
    }
    let data = match &start.data {
        Data::I64(_) => {
            let (s, l, d) = (start.i64()[0], limit.i64()[0], delta.i64()[0]);
            if d == 0 {
                return invalid("Range delta 0");
            }
            let n = ((l as i128 - s as i128) + (d as i128) - d.signum() as i128) / d as i128;
            let n = checked_len(&[n.max(0) as usize])?;
            Data::I64(
                (0..n as i64)
                    .map(|i| super::wrap_int(start.dtype, s.wrapping_add(i.wrapping_mul(d))))
                    .collect(),
            )
        }
        Data::F32(_) | Data::F64(_) => {
            let (s, l, d) = (start.f64()[0], limit.f64()[0], delta.f64()[0]);
            let n = ((l - s) / d).ceil();
            if !n.is_finite() {
                return invalid("Range of a non-finite length");
            }
            let n = checked_len(&[n.max(0.0) as usize])?;
            if matches!(start.data, Data::F64(_)) {
                Data::F64((0..n).map(|i| s + i as f64 * d).collect())
            } else {
                let (s, d) = (s as f32, d as f32);
                Data::F32(
                    (0..n)
                        .map(|i| super::round_f32(start.dtype, s + i as f32 * d))
                        .collect(),
                )
            }
        }
    };
    let n = data.len();
    Ok(start.with_data(vec![n], data))
}

pub(crate) fn shape(node: &NodeProto, x: &Const) -> Result<Const, OpError> {
    let r = x.dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = clamp(attr_i(node, "start").unwrap_or(0));
    let e = clamp(attr_i(node, "end").unwrap_or(r));
    let v: Vec<i64> = x.dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Ok(Const {
        dims: vec![v.len()],
        data: Data::I64(v),
        dtype: DataType::Int64 as i32,
    })
}

pub(crate) fn constant_of_shape(node: &NodeProto, shape: &Const) -> Result<Const, OpError> {
    let dims = shape_values(shape)?;
    let n = checked_len(&dims)?;
    let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
        Some(t) => Const::from_tensor(std::path::Path::new(""), t).map_err(OpError::Invalid)?,
        None => Const {
            dims: vec![1],
            data: Data::F32(vec![0.0]),
            dtype: DataType::Float as i32,
        },
    };
    if value.len() != 1 {
        return invalid("ConstantOfShape value must hold one element");
    }
    Ok(value.with_data(dims, value.data.pick(&vec![0; n])))
}
