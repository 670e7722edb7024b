//! The rotary embedding's inverse frequencies and cos/sin scaling, read from `config.json` and
//! computed as transformers 5.23.0 computes them (`modeling_rope_utils.py`), step by step in
//! the same float precision, so that the cos/sin caches GroupQueryAttention reads hold what
//! transformers' rotary embedding multiplies the queries and keys by.
//!
//! Reading, as transformers' `convert_rope_params_to_dict` / `standardize_rope_params` do:
//! `rope_scaling` (transformers 4 configs) wins over `rope_parameters` (transformers 5); the
//! type is `rope_type`, else `type`, else `default`; `rope_theta` is the dict's, else the
//! top-level key, else the config class's default; `llama3` and `yarn` read
//! `original_max_position_embeddings` from the dict, else the top-level key, else
//! `max_position_embeddings`.
//!
//! Float precision, as torch computes it: the parameters are Python floats (double) until they
//! meet a float32 tensor, where torch converts them to float32 and computes in float32;
//! `scalar / tensor` is `tensor.reciprocal() * scalar` (torch's `__rdiv__`), two roundings.
//! `base ** exponents` is torch's float32 `pow`, which this computes as Rust's `powf` (the C
//! library's); the generated reference tables (`samples/generate_rope_reference.py`) measure
//! what that costs.
//!
//! `dynamic` (NTK) is built exactly: transformers recomputes its frequencies only for
//! sequences longer than `max_position_embeddings`, and the built context is
//! `max_position_embeddings`, so every position uses the frequencies of its initial
//! computation (the default ones from a base multiplied by
//! `(factor * L / L - (factor - 1)) ** (dim / (dim - 2))`, evaluated in double as transformers
//! does, with `L = max_position_embeddings`). `longrope` (two sets switched at run time by
//! sequence length), `proportional` and any other type are refused by name.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{quote, BuildError, Result};

/// The rotary variant and its parameters, as read from the config.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeKind {
    Default,
    Linear {
        factor: f64,
    },
    Dynamic {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        /// `None`: `max_position_embeddings / original_max_position_embeddings`.
        factor: Option<f64>,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        original_max_position_embeddings: f64,
        truncate: bool,
    },
}

impl RopeKind {
    pub fn name(&self) -> &'static str {
        match self {
            RopeKind::Default => "default",
            RopeKind::Linear { .. } => "linear",
            RopeKind::Dynamic { .. } => "dynamic",
            RopeKind::Llama3 { .. } => "llama3",
            RopeKind::Yarn { .. } => "yarn",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub kind: RopeKind,
}

/// The rope types `build` computes.
pub const SUPPORTED: &str = "default, linear, dynamic, llama3, yarn";

impl Rope {
    /// Reads the rotary settings of a config object.
    pub fn read(
        path: &Path,
        o: &Map<String, Value>,
        default_theta: f64,
        max_position_embeddings: usize,
    ) -> Result<Rope> {
        let positive = |key: &str, v: &Value| -> Result<f64> {
            v.as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    BuildError::config(
                        path,
                        format!("`{key}` = {} is not a positive number", quote(v)),
                    )
                })
        };
        let present = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
        // transformers: `rope_scaling or rope_parameters` (an empty dict counts as absent).
        let mut section: Option<(&str, &Map<String, Value>)> = None;
        for key in ["rope_scaling", "rope_parameters"] {
            match o.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(p)) if p.is_empty() => {}
                Some(Value::Object(p)) => {
                    section = Some((key, p));
                    break;
                }
                Some(v) => {
                    return Err(BuildError::unsupported(
                        path,
                        key,
                        v,
                        "expected an object or null",
                    ))
                }
            }
        }
        let top_theta = match present(o.get("rope_theta")) {
            Some(v) => positive("rope_theta", &v)?,
            None => default_theta,
        };
        let Some((key, p)) = section else {
            return Ok(Rope {
                theta: top_theta,
                kind: RopeKind::Default,
            });
        };
        let sub = |k: &str| format!("{key}.{k}");
        if let Some(v) = present(p.get("partial_rotary_factor")) {
            if v.as_f64() != Some(1.0) {
                return Err(BuildError::unsupported(
                    path,
                    &sub("partial_rotary_factor"),
                    &v,
                    "rotary embeddings on part of each head are not built",
                ));
            }
        }
        let theta = match present(p.get("rope_theta")) {
            Some(v) => positive(&sub("rope_theta"), &v)?,
            None => top_theta,
        };
        let ty_value = present(p.get("rope_type"))
            .or_else(|| present(p.get("type")))
            .unwrap_or_else(|| Value::from("default"));
        let Some(ty) = ty_value.as_str() else {
            return Err(BuildError::unsupported(
                path,
                &sub("rope_type"),
                &ty_value,
                "expected a string",
            ));
        };
        let num = |k: &str| -> Result<Option<f64>> {
            match present(p.get(k)) {
                None => Ok(None),
                Some(v) => positive(&sub(k), &v).map(Some),
            }
        };
        let required = |k: &str| -> Result<f64> {
            num(k)?.ok_or_else(|| {
                BuildError::config(
                    path,
                    format!(
                        "`{}` {ty:?} needs `{}`, which is missing",
                        sub("rope_type"),
                        sub(k)
                    ),
                )
            })
        };
        let original = || -> Result<f64> {
            if let Some(x) = num("original_max_position_embeddings")? {
                return Ok(x);
            }
            match present(o.get("original_max_position_embeddings")) {
                Some(v) => positive("original_max_position_embeddings", &v),
                None => Ok(max_position_embeddings as f64),
            }
        };
        let kind = match ty {
            "default" => RopeKind::Default,
            "linear" => RopeKind::Linear {
                factor: required("factor")?,
            },
            "dynamic" => RopeKind::Dynamic {
                factor: required("factor")?,
            },
            "llama3" => RopeKind::Llama3 {
                factor: required("factor")?,
                low_freq_factor: required("low_freq_factor")?,
                high_freq_factor: required("high_freq_factor")?,
                original_max_position_embeddings: original()?,
            },
            "yarn" => {
                let truncate = match present(p.get("truncate")) {
                    None => true,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        BuildError::unsupported(path, &sub("truncate"), &v, "expected true or false")
                    })?,
                };
                RopeKind::Yarn {
                    factor: num("factor")?,
                    attention_factor: num("attention_factor")?,
                    mscale: num("mscale")?,
                    mscale_all_dim: num("mscale_all_dim")?,
                    beta_fast: num("beta_fast")?,
                    beta_slow: num("beta_slow")?,
                    original_max_position_embeddings: original()?,
                    truncate,
                }
            }
            _ => {
                return Err(BuildError::unsupported(
                    path,
                    &sub("rope_type"),
                    &ty_value,
                    format!(
                        "build computes the rotary types {SUPPORTED} (longrope switches its frequencies with the sequence length at run time, which static cos/sin caches cannot)"
                    ),
                ))
            }
        };
        if let RopeKind::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = kind
        {
            if low_freq_factor == high_freq_factor {
                return Err(BuildError::config(
                    path,
                    format!(
                        "`{}` equals `{}`: llama3's smoothing divides by their difference",
                        sub("low_freq_factor"),
                        sub("high_freq_factor")
                    ),
                ));
            }
        }
        Ok(Rope { theta, kind })
    }

    /// The inverse frequencies (`head_dim / 2` float32 values) and the factor transformers
    /// multiplies cos and sin by (`attention_scaling`).
    pub fn inv_freq(&self, head_dim: usize, max_position_embeddings: usize) -> (Vec<f32>, f64) {
        let dim = head_dim;
        let half = dim / 2;
        // `base ** (arange(0, dim, 2).float() / dim)`: the exponents are float32 quotients.
        let pow = |base: f64| -> Vec<f32> {
            (0..half)
                .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
                .collect()
        };
        // `1.0 / t` is `t.reciprocal() * 1.0`.
        let default = |base: f64| -> Vec<f32> { pow(base).iter().map(|&p| 1.0 / p).collect() };
        match &self.kind {
            RopeKind::Default => (default(self.theta), 1.0),
            RopeKind::Linear { factor } => {
                // `inv_freq /= factor`.
                let f = *factor as f32;
                (default(self.theta).iter().map(|&x| x / f).collect(), 1.0)
            }
            RopeKind::Dynamic { factor } => {
                // At the first computation `seq_len` is max_position_embeddings.
                let l = max_position_embeddings as f64;
                let base = self.theta
                    * (factor * l / l - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0));
                (default(base), 1.0)
            }
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let inv = default(self.theta);
                let low_wavelen = (old / low_freq_factor) as f32;
                let high_wavelen = (old / high_freq_factor) as f32;
                let (factor32, low32) = (*factor as f32, *low_freq_factor as f32);
                let denom = (high_freq_factor - low_freq_factor) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let old32 = *old as f32;
                let out = inv
                    .iter()
                    .map(|&f| {
                        // `2 * math.pi / inv_freq`.
                        let wavelen = (1.0 / f) * two_pi;
                        let llama = if wavelen > low_wavelen {
                            f / factor32
                        } else {
                            f
                        };
                        // `(old_context_len / wavelen - low_freq_factor) / (high - low)`.
                        let smooth = ((1.0 / wavelen) * old32 - low32) / denom;
                        let smoothed = (1.0 - smooth) * llama / factor32 + smooth * llama;
                        // `~(wavelen < high) * ~(wavelen > low)`; the frequencies are finite.
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            smoothed
                        } else {
                            llama
                        }
                    })
                    .collect();
                (out, 1.0)
            }
            RopeKind::Yarn {
                factor,
                attention_factor,
                mscale,
                mscale_all_dim,
                beta_fast,
                beta_slow,
                original_max_position_embeddings: orig,
                truncate,
            } => {
                let base = self.theta;
                let factor = factor.unwrap_or(max_position_embeddings as f64 / orig);
                let get_mscale = |scale: f64, m: f64| -> f64 {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) => get_mscale(factor, *m) / get_mscale(factor, *ma),
                    _ => get_mscale(factor, 1.0),
                };
                let beta_fast = beta_fast.unwrap_or(32.0);
                let beta_slow = beta_slow.unwrap_or(1.0);
                let d = dim as f64;
                let correction_dim = |rot: f64| -> f64 {
                    (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let pos_freqs = pow(base);
                let f32factor = factor as f32;
                let span = (high - low) as f32;
                let low32 = low as f32;
                let out = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (f32factor * p);
                        let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
                        let ef = 1.0 - ramp;
                        interpolation * (1.0 - ef) + extrapolation * ef
                    })
                    .collect();
                (out, attention)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: Value) -> Result<Rope> {
        Rope::read(
            Path::new("config.json"),
            v.as_object().unwrap(),
            10000.0,
            2048,
        )
    }

    #[test]
    fn reads_both_spellings_and_the_defaults() {
        let r = read(serde_json::json!({})).unwrap();
        assert_eq!((r.theta, r.kind), (10000.0, RopeKind::Default));
        let r = read(serde_json::json!({"rope_theta": 1000042.0})).unwrap();
        assert_eq!(r.theta, 1000042.0);
        let r = read(serde_json::json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5.0}}))
            .unwrap();
        assert_eq!((r.theta, r.kind), (5.0, RopeKind::Linear { factor: 2.0 }));
        // transformers 4: `type`, the theta at the top level; rope_scaling wins.
        let r = read(serde_json::json!({
            "rope_theta": 7.0,
            "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
            "rope_parameters": {"rope_type": "default"}
        }))
        .unwrap();
        assert_eq!(r.theta, 7.0);
        assert_eq!(
            r.kind,
            RopeKind::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 2048.0
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_compute_by_name() {
        for (v, key) in [
            (
                serde_json::json!({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}),
                "rope_scaling.rope_type",
            ),
            (
                serde_json::json!({"rope_parameters": {"rope_type": "su"}}),
                "rope_parameters.rope_type",
            ),
            (
                serde_json::json!({"rope_scaling": {"type": "linear"}}),
                "rope_scaling.factor",
            ),
            (
                serde_json::json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}),
                "rope_parameters.low_freq_factor",
            ),
            (
                serde_json::json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                "rope_parameters.partial_rotary_factor",
            ),
            (serde_json::json!({"rope_scaling": 3}), "rope_scaling"),
            (serde_json::json!({"rope_theta": -1.0}), "rope_theta"),
        ] {
            let e = read(v.clone()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("config.json"), "{v}: {e}");
        }
    }

    #[test]
    fn linear_divides_and_dynamic_is_default_within_the_context() {
        let base = read(serde_json::json!({})).unwrap().inv_freq(64, 2048).0;
        let lin = read(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}}))
            .unwrap()
            .inv_freq(64, 2048)
            .0;
        for (a, b) in base.iter().zip(&lin) {
            assert_eq!(a / 4.0, *b);
        }
        let dy = read(serde_json::json!({"rope_scaling": {"type": "dynamic", "factor": 4.0}}))
            .unwrap()
            .inv_freq(64, 2048);
        assert_eq!((dy.0, dy.1), (base, 1.0));
    }
}
