//! Element-wise ops with multidirectional (numpy) broadcasting: arithmetic, comparisons,
//! logical and bitwise ops, Where, Min/Max, Clip and Cast.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::NodeProto;

use super::{
    attr_f, attr_i, attr_s, checked_len, class, invalid, is_u64, opt, round_f32, wrap_int, Class,
    Const, Data, Inputs, OpError,
};

/// The broadcast shape of `shapes`.
pub(crate) fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>, OpError> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[i + r - s.len()];
            if *o == d || d == 1 {
                continue;
            }
            if *o == 1 {
                *o = d;
            } else {
                return invalid(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    checked_len(&out)?;
    Ok(out)
}

/// Index into a broadcast operand of `shape` for each position of `out`, without a table when
/// the operand has the output's shape or a single element (a weight-sized table of `usize`
/// would take twice the memory of the float32 weight).
pub(crate) enum BIdx {
    Same(usize),
    Scalar(usize),
    Table(Vec<usize>),
}

impl BIdx {
    pub(crate) fn get(&self, k: usize) -> usize {
        match self {
            BIdx::Same(_) => k,
            BIdx::Scalar(_) => 0,
            BIdx::Table(t) => t[k],
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            BIdx::Same(n) | BIdx::Scalar(n) => *n,
            BIdx::Table(t) => t.len(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).map(move |k| self.get(k))
    }
}

pub(crate) fn broadcast_index(shape: &[usize], out: &[usize]) -> BIdx {
    let total: usize = out.iter().product();
    let own: usize = shape.iter().product();
    if own == total
        && shape
            .iter()
            .filter(|&&d| d != 1)
            .eq(out.iter().filter(|&&d| d != 1))
    {
        return BIdx::Same(total);
    }
    if own == 1 {
        return BIdx::Scalar(total);
    }
    BIdx::Table(broadcast_table(shape, out))
}

fn broadcast_table(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let total: usize = out.iter().product();
    let mut strides = vec![0usize; r];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + r - shape.len();
        strides[oi] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    let mut idx = Vec::with_capacity(total);
    let mut coord = vec![0usize; r];
    let mut at = 0usize;
    for _ in 0..total {
        idx.push(at);
        for d in (0..r).rev() {
            coord[d] += 1;
            at += strides[d];
            if coord[d] < out[d] {
                break;
            }
            at -= strides[d] * coord[d];
            coord[d] = 0;
        }
    }
    idx
}

fn bool_dtype() -> i32 {
    DataType::Bool as i32
}

/// Applies `f32`/`f64`/`i64` functions to broadcast pairs. Both operands must have the same
/// class (ONNX requires one element type); a mixed pair is computed as floats.
fn zip2(
    a: &Const,
    b: &Const,
    f: impl Fn(f64, f64) -> f64,
    ff: impl Fn(f32, f32) -> f32,
    fi: impl Fn(i64, i64) -> Result<i64, OpError>,
) -> Result<(Vec<usize>, Data, i32), OpError> {
    let dims = broadcast_shapes(&[&a.dims, &b.dims])?;
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    let dtype = if a.is_float() || !b.is_float() {
        a.dtype
    } else {
        b.dtype
    };
    let data = match (&a.data, &b.data) {
        (Data::I64(va), Data::I64(vb)) => {
            let mut out = Vec::with_capacity(ia.len());
            for (i, j) in ia.iter().zip(ib.iter()) {
                out.push(wrap_int(dtype, fi(va[i], vb[j])?));
            }
            Data::I64(out)
        }
        (Data::F32(va), Data::F32(vb)) => Data::F32(
            ia.iter()
                .zip(ib.iter())
                .map(|(i, j)| round_f32(dtype, ff(va[i], vb[j])))
                .collect(),
        ),
        _ if class(dtype) == Some(Class::F64) => {
            let (va, vb) = (a.f64(), b.f64());
            Data::F64(
                ia.iter()
                    .zip(ib.iter())
                    .map(|(i, j)| f(va[i], vb[j]))
                    .collect(),
            )
        }
        _ => {
            let (va, vb) = (a.f32(), b.f32());
            Data::F32(
                ia.iter()
                    .zip(ib.iter())
                    .map(|(i, j)| round_f32(dtype, ff(va[i], vb[j])))
                    .collect(),
            )
        }
    };
    Ok((dims, data, dtype))
}

pub(crate) fn unary(op: &str, x: &Const) -> Result<Const, OpError> {
    let f = |v: f64| -> f64 {
        match op {
            "Abs" => v.abs(),
            "Neg" => -v,
            "Reciprocal" => 1.0 / v,
            "Round" => v.round_ties_even(),
            "Sqrt" => v.sqrt(),
            "Sign" => sign(v),
            "Floor" => v.floor(),
            _ => v.ceil(),
        }
    };
    // In float64 and rounded once: the same float32 result as computing in float32 (these ops
    // are exact or correctly rounded, and float64 holds over twice float32's precision).
    let ff = |v: f32| f(v as f64) as f32;
    let data = match &x.data {
        Data::F32(v) => Data::F32(v.iter().map(|&a| round_f32(x.dtype, ff(a))).collect()),
        Data::F64(v) => Data::F64(v.iter().map(|&a| f(a)).collect()),
        Data::I64(v) => match op {
            "Abs" if !is_u64(x.dtype) => Data::I64(
                v.iter()
                    .map(|&a| wrap_int(x.dtype, a.wrapping_abs()))
                    .collect(),
            ),
            "Neg" => Data::I64(
                v.iter()
                    .map(|&a| wrap_int(x.dtype, a.wrapping_neg()))
                    .collect(),
            ),
            "Sign" if is_u64(x.dtype) => Data::I64(v.iter().map(|&a| (a != 0) as i64).collect()),
            "Sign" => Data::I64(v.iter().map(|&a| a.signum()).collect()),
            "Abs" => Data::I64(v.clone()),
            // Float-only ops on an integer input: computed as float32 (what the graph would
            // give after the Cast that a valid model has in front of them).
            _ => {
                return Ok(Const {
                    dims: x.dims.clone(),
                    data: Data::F32(x.f32().into_iter().map(ff).collect()),
                    dtype: DataType::Float as i32,
                })
            }
        },
    };
    Ok(x.with_data(x.dims.clone(), data))
}

fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        v // 0, -0 and NaN stay as they are
    }
}

pub(crate) fn arith(node: &NodeProto, op: &str, a: &Const, b: &Const) -> Result<Const, OpError> {
    let u64_ = is_u64(a.dtype);
    let (dims, data, dtype) = match op {
        "Add" => zip2(
            a,
            b,
            |x, y| x + y,
            |x, y| x + y,
            |x, y| Ok(x.wrapping_add(y)),
        )?,
        "Sub" => zip2(
            a,
            b,
            |x, y| x - y,
            |x, y| x - y,
            |x, y| Ok(x.wrapping_sub(y)),
        )?,
        "Mul" => zip2(
            a,
            b,
            |x, y| x * y,
            |x, y| x * y,
            |x, y| Ok(x.wrapping_mul(y)),
        )?,
        "Div" => zip2(
            a,
            b,
            |x, y| x / y,
            |x, y| x / y,
            |x, y| match y {
                0 => invalid("integer division by zero"),
                _ if u64_ => Ok(((x as u64) / (y as u64)) as i64),
                _ => Ok(x.wrapping_div(y)),
            },
        )?,
        "Mod" => {
            let fmod = attr_i(node, "fmod").unwrap_or(0) == 1;
            zip2(
                a,
                b,
                |x, y| float_mod(fmod, x, y),
                |x, y| float_mod(fmod, x as f64, y as f64) as f32,
                |x, y| {
                    if y == 0 {
                        return invalid("integer modulo by zero");
                    }
                    if u64_ {
                        return Ok(((x as u64) % (y as u64)) as i64);
                    }
                    let r = x.wrapping_rem(y);
                    // fmod = 0: the result takes the divisor's sign (as Python's %).
                    Ok(if !fmod && r != 0 && ((r < 0) != (y < 0)) {
                        r + y
                    } else {
                        r
                    })
                },
            )?
        }
        "Pow" => {
            // The result has the base's type; the exponent may be of another type.
            let dims = broadcast_shapes(&[&a.dims, &b.dims])?;
            let ia = broadcast_index(&a.dims, &dims);
            let ib = broadcast_index(&b.dims, &dims);
            let (va, vb) = (a.f64(), b.f64());
            let p = ia.iter().zip(ib.iter()).map(|(i, j)| va[i].powf(vb[j]));
            let data = match class(a.dtype) {
                Some(Class::F32) => Data::F32(p.map(|v| round_f32(a.dtype, v as f32)).collect()),
                Some(Class::F64) => Data::F64(p.collect()),
                _ => Data::I64(p.map(|v| wrap_int(a.dtype, v as i64)).collect()),
            };
            (dims, data, a.dtype)
        }
        _ => return Err(OpError::Unsupported),
    };
    Ok(Const { dims, data, dtype })
}

/// Float Mod: C's `fmod` (the dividend's sign) with `fmod = 1`, else the divisor's sign as
/// numpy's `mod` (a zero result takes the divisor's sign too).
fn float_mod(fmod: bool, x: f64, y: f64) -> f64 {
    let r = x % y;
    if fmod || r.is_nan() {
        r
    } else if r == 0.0 {
        0f64.copysign(y)
    } else if (r < 0.0) != (y < 0.0) {
        r + y
    } else {
        r
    }
}

/// Variadic Min/Max (NaN propagates, as numpy's minimum/maximum).
pub(crate) fn min_max(op: &str, inputs: &Inputs) -> Result<Const, OpError> {
    let xs: Vec<&Const> = inputs.iter().flatten().map(|c| c.as_ref()).collect();
    let Some(&first) = xs.first() else {
        return invalid("no inputs");
    };
    let max = op == "Max";
    let pick_f = move |x: f64, y: f64| {
        if x.is_nan() || y.is_nan() {
            f64::NAN
        } else if (y > x) == max && y != x {
            y
        } else {
            x
        }
    };
    let pick_f32 = move |x: f32, y: f32| pick_f(x as f64, y as f64) as f32;
    let u64_ = is_u64(first.dtype);
    let pick_i = move |x: i64, y: i64| {
        let gt = if u64_ { (y as u64) > (x as u64) } else { y > x };
        Ok(if gt == max && y != x { y } else { x })
    };
    let mut acc = first.clone();
    for x in &xs[1..] {
        let (dims, data, dtype) = zip2(&acc, x, pick_f, pick_f32, pick_i)?;
        acc = Const { dims, data, dtype };
    }
    Ok(acc)
}

pub(crate) fn compare(op: &str, a: &Const, b: &Const) -> Result<Const, OpError> {
    let dims = broadcast_shapes(&[&a.dims, &b.dims])?;
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    let test = |o: std::cmp::Ordering| -> bool {
        use std::cmp::Ordering::*;
        match op {
            "Less" => o == Less,
            "Greater" => o == Greater,
            "Equal" => o == Equal,
            "LessOrEqual" => o != Greater,
            _ => o != Less,
        }
    };
    let out: Vec<i64> = match (&a.data, &b.data) {
        (Data::I64(va), Data::I64(vb)) => {
            let u = is_u64(a.dtype);
            ia.iter()
                .zip(ib.iter())
                .map(|(i, j)| {
                    let o = if u {
                        (va[i] as u64).cmp(&(vb[j] as u64))
                    } else {
                        va[i].cmp(&vb[j])
                    };
                    test(o) as i64
                })
                .collect()
        }
        _ => {
            let (va, vb) = (a.f64(), b.f64());
            ia.iter()
                .zip(ib.iter())
                .map(|(i, j)| va[i].partial_cmp(&vb[j]).is_some_and(test) as i64)
                .collect()
        }
    };
    Ok(Const {
        dims,
        data: Data::I64(out),
        dtype: bool_dtype(),
    })
}

/// And, Or, Xor (bool), BitwiseAnd/Or/Xor and BitShift (integers).
pub(crate) fn bits(node: &NodeProto, op: &str, a: &Const, b: &Const) -> Result<Const, OpError> {
    if a.is_float() || b.is_float() {
        return invalid(format!("{op} of a float tensor"));
    }
    let width = bitnet_model::dtype::bits(a.dtype).unwrap_or(64) as i64;
    let signed = matches!(
        DataType::try_from(a.dtype),
        Ok(DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64)
    );
    let left = match op {
        "BitShift" => match attr_s(node, "direction") {
            Some(b"LEFT") => true,
            Some(b"RIGHT") => false,
            _ => return invalid("BitShift needs direction LEFT or RIGHT"),
        },
        _ => false,
    };
    let f = |x: i64, y: i64| -> Result<i64, OpError> {
        Ok(match op {
            "And" => ((x != 0) && (y != 0)) as i64,
            "Or" => ((x != 0) || (y != 0)) as i64,
            "Xor" => ((x != 0) != (y != 0)) as i64,
            "BitwiseAnd" => x & y,
            "BitwiseOr" => x | y,
            "BitwiseXor" => x ^ y,
            // Shifting by a negative amount or by the width or more leaves no bit of `x`:
            // 0, or the sign bits for an arithmetic (signed) right shift.
            _ if !(0..width).contains(&y) => {
                if !left && signed && x < 0 {
                    -1
                } else {
                    0
                }
            }
            _ if left => ((x as u64) << y) as i64,
            _ if signed => x >> y,
            _ => ((x as u64) >> y) as i64,
        })
    };
    let (dims, data, _) = zip2(a, b, |x, _| x, |x, _| x, f)?;
    let dtype = if matches!(op, "And" | "Or" | "Xor") {
        bool_dtype()
    } else {
        a.dtype
    };
    Ok(Const { dims, data, dtype })
}

pub(crate) fn not(op: &str, x: &Const) -> Result<Const, OpError> {
    let Data::I64(v) = &x.data else {
        return invalid(format!("{op} of a float tensor"));
    };
    let data = if op == "Not" {
        v.iter().map(|&a| (a == 0) as i64).collect()
    } else {
        v.iter().map(|&a| wrap_int(x.dtype, !a)).collect()
    };
    Ok(x.with_data(x.dims.clone(), Data::I64(data)))
}

pub(crate) fn where_(cond: &Const, a: &Const, b: &Const) -> Result<Const, OpError> {
    let dims = broadcast_shapes(&[&cond.dims, &a.dims, &b.dims])?;
    let ic = broadcast_index(&cond.dims, &dims);
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    let c = cond.i64();
    fn select<T: Copy>(c: &[i64], ic: &BIdx, va: &[T], ia: &BIdx, vb: &[T], ib: &BIdx) -> Vec<T> {
        (0..ic.len())
            .map(|k| {
                if c[ic.get(k)] != 0 {
                    va[ia.get(k)]
                } else {
                    vb[ib.get(k)]
                }
            })
            .collect()
    }
    let data = match (&a.data, &b.data) {
        (Data::F32(va), Data::F32(vb)) => Data::F32(select(&c, &ic, va, &ia, vb, &ib)),
        (Data::F64(va), Data::F64(vb)) => Data::F64(select(&c, &ic, va, &ia, vb, &ib)),
        (Data::I64(va), Data::I64(vb)) => Data::I64(select(&c, &ic, va, &ia, vb, &ib)),
        _ => return invalid("Where branches of different types"),
    };
    Ok(a.with_data(dims, data))
}

pub(crate) fn clip(node: &NodeProto, inputs: &Inputs) -> Result<Const, OpError> {
    let x = super::need(inputs, 0)?;
    let bound = |i: usize, attr_name: &str| -> Result<Option<f64>, OpError> {
        match opt(inputs, i) {
            Some(c) if c.len() == 1 => Ok(Some(c.f64()[0])),
            Some(_) => invalid("Clip bounds must be scalars"),
            None => Ok(attr_f(node, attr_name).map(f64::from)),
        }
    };
    let lo = bound(1, "min")?;
    let hi = bound(2, "max")?;
    // min(max(x, lo), hi), as the ONNX definition (a float NaN becomes the lower bound, as
    // `f32::max` gives: the folder has always clipped so).
    let data = match &x.data {
        Data::F32(v) => {
            let (lo, hi) = (
                lo.map_or(f32::NEG_INFINITY, |v| v as f32),
                hi.map_or(f32::INFINITY, |v| v as f32),
            );
            Data::F32(v.iter().map(|&v| v.max(lo).min(hi)).collect())
        }
        Data::F64(v) => {
            let (lo, hi) = (lo.unwrap_or(f64::NEG_INFINITY), hi.unwrap_or(f64::INFINITY));
            Data::F64(v.iter().map(|&v| v.max(lo).min(hi)).collect())
        }
        Data::I64(v) => {
            let lo = opt(inputs, 1).map(|c| c.i64()[0]).unwrap_or(i64::MIN);
            let hi = opt(inputs, 2).map(|c| c.i64()[0]).unwrap_or(i64::MAX);
            if is_u64(x.dtype) {
                let (lo, hi) = (
                    opt(inputs, 1).map_or(0, |_| lo as u64),
                    opt(inputs, 2).map_or(u64::MAX, |_| hi as u64),
                );
                Data::I64(
                    v.iter()
                        .map(|&v| (v as u64).max(lo).min(hi) as i64)
                        .collect(),
                )
            } else {
                Data::I64(v.iter().map(|&v| v.max(lo).min(hi)).collect())
            }
        }
    };
    Ok(x.with_data(x.dims.clone(), data))
}

/// Cast between every float, integer and bool type. Float to integer truncates toward zero
/// (NaN gives 0, values beyond the range wrap from the saturated 64-bit value, as the
/// reference runtimes' C casts do for in-range values); anything non-zero becomes `true`.
pub(crate) fn cast(x: &Const, to: i32) -> Result<Const, OpError> {
    let Some(to_class) = class(to) else {
        return invalid(format!(
            "cast to {}, which the folder does not evaluate",
            bitnet_model::dtype::name(to)
        ));
    };
    let is_bool = to == bool_dtype();
    let data = match (&x.data, to_class) {
        (Data::F32(v), Class::F32) => Data::F32(v.iter().map(|&a| round_f32(to, a)).collect()),
        (Data::F64(v), Class::F32) => Data::F32(v.iter().map(|&a| f64_to(to, a)).collect()),
        (Data::I64(v), Class::F32) => {
            let u = is_u64(x.dtype);
            Data::F32(
                v.iter()
                    .map(|&a| f64_to(to, if u { a as u64 as f64 } else { a as f64 }))
                    .collect(),
            )
        }
        (_, Class::F64) => Data::F64(x.f64()),
        (Data::I64(v), Class::I64) => Data::I64(v.iter().map(|&a| wrap_int(to, a)).collect()),
        (_, Class::I64) if is_bool => {
            Data::I64(x.f64().into_iter().map(|a| (a != 0.0) as i64).collect())
        }
        (_, Class::I64) => {
            let u = is_u64(to);
            Data::I64(
                x.f64()
                    .into_iter()
                    .map(|a| {
                        let t = a.trunc();
                        if u && t >= 0.0 {
                            t as u64 as i64
                        } else {
                            wrap_int(to, t as i64)
                        }
                    })
                    .collect(),
            )
        }
    };
    Ok(Const {
        dims: x.dims.clone(),
        data,
        dtype: to,
    })
}

/// A float64 value rounded once to the float type `to` (no double rounding through float32).
fn f64_to(to: i32, v: f64) -> f32 {
    match DataType::try_from(to) {
        Ok(DataType::Float16) => half::f16::from_f64(v).to_f32(),
        Ok(DataType::Bfloat16) => half::bf16::from_f64(v).to_f32(),
        _ => v as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_index_matches_coordinates() {
        let idx = broadcast_table(&[3, 1], &[2, 3, 4]);
        assert_eq!(idx.len(), 24);
        for (pos, &i) in idx.iter().enumerate() {
            let row = (pos / 4) % 3;
            assert_eq!(i, row, "position {pos}");
        }
        assert!(matches!(broadcast_index(&[], &[2, 2]), BIdx::Scalar(4)));
        assert!(matches!(broadcast_index(&[1, 3], &[3]), BIdx::Same(3)));
        assert!(matches!(broadcast_index(&[3, 1], &[3, 4]), BIdx::Table(_)));
    }

    #[test]
    fn mod_sign_follows_the_divisor_unless_fmod() {
        let i64_ = DataType::Int64 as i32;
        let a = Const {
            dims: vec![2],
            data: Data::I64(vec![-7, 7]),
            dtype: i64_,
        };
        let b = Const::scalar_i64(i64_, 3);
        let n = NodeProto::default();
        assert_eq!(
            arith(&n, "Mod", &a, &b).ok().unwrap().data,
            Data::I64(vec![2, 1])
        );
        let mut f = NodeProto::default();
        f.attribute.push(bitnet_model::proto::AttributeProto {
            name: Some("fmod".into()),
            i: Some(1),
            ..Default::default()
        });
        assert_eq!(
            arith(&f, "Mod", &a, &b).ok().unwrap().data,
            Data::I64(vec![-1, 1])
        );
    }
}
