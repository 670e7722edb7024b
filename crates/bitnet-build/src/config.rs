//! A checkpoint's `config.json`, read as transformers' `BitNetConfig` reads it (defaults
//! included), and every value the built graph depends on checked: a value the graph cannot
//! represent is refused by name instead of built wrong.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{self, json_error, quote, BuildError, Result};
use crate::family::{Activation, Family, Quantization};
use crate::files;
use crate::rope::Rope;

/// The longest context `build` writes. The model holds two rotary tables (cos and sin) of
/// `max_position_embeddings x head_dim / 2` float32 values, since ONNX Runtime's
/// GroupQueryAttention needs a row for every position up to the total sequence length, and
/// onnxruntime-genai allocates the KV cache for the whole context of each sequence. 131072
/// positions (Llama 3.1's context, 32 times microsoft/bitnet-b1.58-2B-4T's 4096) cost 64 MiB of
/// tables at head_dim 128; an unchecked value could ask for terabytes or overflow.
pub const MAX_CONTEXT: usize = 1 << 17;

/// ONNX Runtime's GroupQueryAttention (CPU) with rotary caches needs a head size that is a
/// multiple of 16 (and rotary tables of a multiple of 8 columns); it checks this at the first
/// generation step. Heads of another even size are zero-padded up to it.
pub const GQA_HEAD_MULTIPLE: usize = 16;

/// Which transformers class computes the checkpoint's linear layers (docs/formats.md
/// section 3), which decides how its weights and `weight_scale` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearForm {
    /// `BitLinear`: packed uint8 weights, `y = (x_q @ codes) / (s * weight_scale)`.
    BitLinear,
    /// `AutoBitLinear` offline: codes (packed or as floats), `y = linear(..) * weight_scale`.
    AutoOffline,
    /// `AutoBitLinear` online: master weights ternarised per tensor by `WeightQuant`.
    AutoOnline,
    /// No `quantization_config`: plain float linear layers whose weights already are ternary
    /// codes times a scale per tensor, row or group along the input, recovered exactly; float
    /// activations, as transformers computes them.
    FloatTernary,
}

impl LinearForm {
    pub fn name(self) -> &'static str {
        match self {
            LinearForm::BitLinear => "bitlinear (offline, packed)",
            LinearForm::AutoOffline => "autobitlinear (offline)",
            LinearForm::AutoOnline => "autobitlinear (online, master weights)",
            LinearForm::FloatTernary => "float linear layers on float-stored ternary weights",
        }
    }
}

/// The values of a config the graph is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The family recognised from `model_type` and `architectures` ([`crate::family`]).
    pub family: &'static Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The head size the graph's attention runs at: `head_dim` rounded up to a multiple of
    /// [`GQA_HEAD_MULTIPLE`] (or of [`crate::BuildOptions::head_dim_multiple`]), each head
    /// zero-padded (see `decoder.rs`: exact). Equal to `head_dim` for most models; 1bitLLM's
    /// bitnet_b1_58-3B has 100, which runs at 112.
    pub cache_head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope: Rope,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub linear: LinearForm,
    /// `quantization_config.use_rms_norm`: an RMSNorm (`<proj>.rms_norm.weight`, this eps)
    /// on every linear layer's input before its activation quantization.
    pub linear_norm_eps: Option<f32>,
}

impl Config {
    pub fn read(path: &Path) -> Result<Config> {
        let text = files::read_capped(path, files::MAX_CONFIG_BYTES)?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| BuildError::config(path, format!("not valid JSON: {}", json_error(&e))))?;
        let obj = v
            .as_object()
            .ok_or_else(|| BuildError::config(path, "not a JSON object"))?;
        parse(path, obj)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn unsupported(path: &Path, key: &str, value: &Value, why: &str) -> BuildError {
    BuildError::unsupported(path, key, value, why)
}

/// The family a config names (`model_type`, `architectures`), or a refusal saying what it is
/// and what is supported.
fn family(path: &Path, o: &Map<String, Value>) -> Result<&'static Family> {
    let model_type = o.get("model_type").filter(|v| !v.is_null());
    let mt = match model_type {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| unsupported(path, "model_type", v, "expected a string"))?,
        ),
    };
    let archs = match o.get("architectures").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(error::short))
                        .collect::<Option<Vec<String>>>()
                })
                .ok_or_else(|| {
                    unsupported(path, "architectures", v, "expected a list of strings")
                })?,
        ),
    };
    let has_q = o.get("quantization_config").is_some_and(|v| !v.is_null());
    crate::family::recognise(mt, archs.as_deref(), has_q).map_err(|why| BuildError::Unsupported {
        path: path.to_path_buf(),
        key: "model_type".into(),
        value: model_type.map_or("(missing)".into(), quote),
        why,
    })
}

fn parse(path: &Path, o: &Map<String, Value>) -> Result<Config> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let family = family(path, o)?;
    let d = &family.defaults;
    let uint = |k: &str, default: Option<usize>| -> Result<usize> {
        match get(k) {
            None => default.ok_or_else(|| BuildError::config(path, format!("`{k}` is missing"))),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    BuildError::config(
                        path,
                        format!("`{k}` = {} is not a positive integer", quote(v)),
                    )
                }),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    BuildError::config(
                        path,
                        format!("`{k}` = {} is not a positive number", quote(v)),
                    )
                }),
        }
    };
    let boolean = |k: &str, default: bool| -> Result<bool> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                BuildError::config(path, format!("`{k}` = {} is not true or false", quote(v)))
            }),
        }
    };
    // The family's config class defaults (transformers' BitNetConfig, LlamaConfig, ...).
    let vocab_size = uint("vocab_size", Some(d.vocab_size))?;
    let hidden_size = uint("hidden_size", Some(d.hidden_size))?;
    let intermediate_size = uint("intermediate_size", Some(d.intermediate_size))?;
    let num_layers = uint("num_hidden_layers", Some(d.num_hidden_layers))?;
    let num_heads = uint("num_attention_heads", Some(d.num_attention_heads))?;
    // Missing: the config class's default; `null`: as many as the attention heads (its
    // `__post_init__`).
    let kv_default = match o.get("num_key_value_heads") {
        Some(Value::Null) => num_heads,
        _ => d.num_key_value_heads.unwrap_or(num_heads),
    };
    let num_kv_heads = uint("num_key_value_heads", Some(kv_default))?;
    let max_position_embeddings = uint("max_position_embeddings", Some(d.max_position_embeddings))?;
    if max_position_embeddings > MAX_CONTEXT {
        return Err(unsupported(
            path,
            "max_position_embeddings",
            &Value::from(max_position_embeddings),
            &format!(
                "build writes contexts of at most {MAX_CONTEXT} positions: the model holds \
                 rotary tables with a row per position, and onnxruntime-genai allocates the KV \
                 cache for the whole context"
            ),
        ));
    }
    let rms_norm_eps = float("rms_norm_eps", d.rms_norm_eps)? as f32;
    if !rms_norm_eps.is_normal() {
        return Err(unsupported(
            path,
            "rms_norm_eps",
            &get("rms_norm_eps").cloned().unwrap_or(Value::Null),
            "not a normal float32 (the graph computes in float32)",
        ));
    }
    let tie_word_embeddings = boolean("tie_word_embeddings", false)?;
    let head_dim = match (get("head_dim"), d.head_dim) {
        (None, Some(h)) => h,
        (None, None) => {
            if hidden_size % num_heads != 0 {
                return Err(BuildError::config(
                    path,
                    format!(
                        "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
                    ),
                ));
            }
            hidden_size / num_heads
        }
        (Some(_), _) => uint("head_dim", None)?,
    };
    if num_heads % num_kv_heads != 0 {
        return Err(BuildError::config(
            path,
            format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"),
        ));
    }
    if family.names.attn_sub_norm.is_some() && num_heads.checked_mul(head_dim) != Some(hidden_size)
    {
        // The attention sub-norm has hidden_size weights and normalises the attention output.
        return Err(unsupported(
            path,
            "head_dim",
            &Value::from(head_dim),
            &format!(
                "the {} family's attention sub-norm has hidden_size ({hidden_size}) weights, so num_attention_heads x head_dim must equal it ({num_heads} x {head_dim})",
                family.name
            ),
        ));
    }
    if num_heads.checked_mul(head_dim).is_none_or(|q| q > 1 << 24) {
        return Err(unsupported(
            path,
            "head_dim",
            &Value::from(head_dim),
            "num_attention_heads x head_dim is out of range",
        ));
    }
    if !head_dim.is_multiple_of(2) {
        // transformers' rotate_half splits each head in two halves.
        return Err(unsupported(
            path,
            "head_dim",
            &Value::from(head_dim),
            "rotary embeddings rotate the two halves of each head, so it must be even",
        ));
    }
    let act_value = get("hidden_act")
        .cloned()
        .unwrap_or_else(|| Value::from(d.hidden_act));
    let activation = act_value
        .as_str()
        .and_then(Activation::from_hidden_act)
        .filter(|a| family.activations.contains(a))
        .ok_or_else(|| {
            let names: Vec<&str> = family.activations.iter().map(|a| a.name()).collect();
            unsupported(
                path,
                "hidden_act",
                &act_value,
                &format!(
                    "the {} family (model_type {:?}) computes its MLP with {}",
                    family.name,
                    family.model_type,
                    names.join(" or ")
                ),
            )
        })?;
    for k in ["attention_bias", "mlp_bias"] {
        if boolean(k, false)? {
            return Err(unsupported(
                path,
                k,
                &Value::Bool(true),
                "BitNet b1.58 linear layers have no bias",
            ));
        }
    }
    // transformers 5's per-layer attention kinds (Qwen3): only full attention is built.
    if let Some(v) = get("layer_types") {
        let full = v
            .as_array()
            .is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")));
        if !full {
            return Err(unsupported(
                path,
                "layer_types",
                v,
                "only full-attention layers are built (no sliding-window or other attention kinds)",
            ));
        }
    }
    for (k, why) in family.refused_flags {
        if boolean(k, false)? {
            return Err(unsupported(path, k, &Value::Bool(true), why));
        }
    }
    let rope = Rope::read(path, o, d.rope_theta, max_position_embeddings)?;
    let ids = |k: &str| -> Result<Vec<i64>> {
        match get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| BuildError::config(path, format!("`{k}` must be token ids"))),
            Some(v) => v.as_i64().map(|x| vec![x]).ok_or_else(|| {
                BuildError::config(path, format!("`{k}` = {} is not a token id", quote(v)))
            }),
        }
    };
    let bos_token_id = ids("bos_token_id")?.first().copied();
    let eos_token_ids = ids("eos_token_id")?;
    let pad_token_id = ids("pad_token_id")?.first().copied();
    for (k, id) in [
        ("bos_token_id", bos_token_id),
        ("pad_token_id", pad_token_id),
    ]
    .into_iter()
    .chain(eos_token_ids.iter().map(|&e| ("eos_token_id", Some(e))))
    {
        if let Some(id) = id {
            if id < 0 || id as usize >= vocab_size {
                return Err(BuildError::config(
                    path,
                    format!("`{k}` {id} is outside the vocabulary (vocab_size {vocab_size})"),
                ));
            }
        }
    }
    let (linear, linear_norm_eps) = quantization(path, o, family)?;
    Ok(Config {
        family,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        cache_head_dim: head_dim.next_multiple_of(GQA_HEAD_MULTIPLE),
        max_position_embeddings,
        rms_norm_eps,
        rope,
        activation,
        tie_word_embeddings,
        bos_token_id,
        eos_token_ids,
        pad_token_id,
        linear,
        linear_norm_eps,
    })
}

/// The linear class from `quantization_config`, as transformers' BitNet quantizer picks it.
/// With it, the eps of the RMSNorm inside each linear layer (`use_rms_norm`), or `None`.
/// A family whose own code quantizes without a `quantization_config` gets its implied form.
fn quantization(
    path: &Path,
    o: &Map<String, Value>,
    family: &Family,
) -> Result<(LinearForm, Option<f32>)> {
    let Some(q) = o.get("quantization_config").filter(|v| !v.is_null()) else {
        return match family.quantization {
            Quantization::Implied(form) => Ok((form, None)),
            Quantization::Absent => Ok((LinearForm::FloatTernary, None)),
            Quantization::Required => Err(BuildError::config(
                path,
                format!(
                    "no `quantization_config`: without it transformers runs the {} family's \
                     linear layers as plain float ones, not BitNet's ternary ones",
                    family.name
                ),
            )),
        };
    };
    let q = q
        .as_object()
        .ok_or_else(|| unsupported(path, "quantization_config", q, "expected an object"))?;
    let field = |k: &str, default: &str| -> Result<String> {
        match q.get(k).filter(|v| !v.is_null()) {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(str::to_string).ok_or_else(|| {
                unsupported(
                    path,
                    &format!("quantization_config.{k}"),
                    v,
                    "expected a string",
                )
            }),
        }
    };
    let method = field("quant_method", "")?;
    if method != "bitnet" {
        return Err(unsupported(
            path,
            "quantization_config.quant_method",
            &Value::from(method),
            "build reads BitNet's own quantization (\"bitnet\")",
        ));
    }
    // transformers' BitNetQuantConfig: `use_rms_norm` false, `rms_norm_eps` 1e-6.
    let use_rms_norm = match q.get("use_rms_norm").filter(|v| !v.is_null()) {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            unsupported(
                path,
                "quantization_config.use_rms_norm",
                v,
                "expected true or false",
            )
        })?,
    };
    let linear_norm_eps = if use_rms_norm {
        let eps = match q.get("rms_norm_eps").filter(|v| !v.is_null()) {
            None => 1e-6,
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    BuildError::config(
                        path,
                        format!(
                            "`quantization_config.rms_norm_eps` = {} is not a positive number",
                            quote(v)
                        ),
                    )
                })?,
        } as f32;
        if !eps.is_normal() {
            return Err(unsupported(
                path,
                "quantization_config.rms_norm_eps",
                &Value::from(eps as f64),
                "not a normal float32 (the graph computes in float32)",
            ));
        }
        Some(eps)
    } else {
        None
    };
    if let Some(v) = q.get("modules_to_not_convert").filter(|v| !v.is_null()) {
        let ok = v.as_array().is_some_and(|a| {
            a.iter().all(|m| {
                m.as_str()
                    .is_some_and(|s| s == "lm_head" || s == "lm_head.weight")
            })
        });
        if !ok {
            return Err(unsupported(
                path,
                "quantization_config.modules_to_not_convert",
                v,
                "only the LM head may stay float (every decoder linear layer is built ternary)",
            ));
        }
    }
    let class = field("linear_class", "bitlinear")?;
    let mode = field("quantization_mode", "offline")?;
    let form = match (class.as_str(), mode.as_str()) {
        ("bitlinear", "offline" | "online") => Ok(LinearForm::BitLinear),
        ("autobitlinear", "offline") => Ok(LinearForm::AutoOffline),
        ("autobitlinear", "online") => Ok(LinearForm::AutoOnline),
        ("bitlinear" | "autobitlinear", m) => Err(unsupported(
            path,
            "quantization_config.quantization_mode",
            &Value::from(m),
            "expected \"offline\" or \"online\"",
        )),
        (c, _) => Err(unsupported(
            path,
            "quantization_config.linear_class",
            &Value::from(c),
            "expected \"bitlinear\" or \"autobitlinear\"",
        )),
    }?;
    Ok((form, linear_norm_eps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_run_padded_to_a_multiple_of_16() {
        let c = cfg(serde_json::json!({"num_attention_heads": 8})).unwrap();
        assert_eq!((c.head_dim, c.cache_head_dim), (8, 16));
        let c = cfg(serde_json::json!({"hidden_size": 400, "head_dim": 100})).unwrap();
        assert_eq!((c.head_dim, c.cache_head_dim), (100, 112));
        let c = cfg(serde_json::json!({})).unwrap();
        assert_eq!((c.head_dim, c.cache_head_dim), (16, 16));
    }

    fn cfg(extra: Value) -> Result<Config> {
        let mut base = serde_json::json!({
            "model_type": "bitnet", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 3],
            "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse(Path::new("config.json"), base.as_object().unwrap())
    }

    #[test]
    fn reads_defaults_and_rope() {
        let c = cfg(
            serde_json::json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
        )
        .unwrap();
        assert_eq!(
            (c.head_dim, c.rope.theta, c.eos_token_ids.clone()),
            (16, 10000.0, vec![2, 3])
        );
        assert_eq!(c.linear, LinearForm::BitLinear);
        let c = cfg(serde_json::json!({})).unwrap();
        assert_eq!((c.rope.theta, c.family.name), (500000.0, "bitnet"));
        assert_eq!(c.activation, Activation::Relu2);
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        for (extra, key) in [
            (serde_json::json!({"model_type": "mistral"}), "model_type"),
            (
                serde_json::json!({"model_type": "llama", "hidden_act": "relu2"}),
                "hidden_act",
            ),
            (
                serde_json::json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_act": "relu2", "quantization_config": null}),
                "hidden_act",
            ),
            (
                serde_json::json!({"model_type": "qwen3", "use_sliding_window": true}),
                "use_sliding_window",
            ),
            (
                serde_json::json!({"model_type": "qwen3", "layer_types": ["full_attention", "sliding_attention"]}),
                "layer_types",
            ),
            (
                serde_json::json!({"quantization_config": {"quant_method": "bitnet", "use_rms_norm": 1}}),
                "use_rms_norm",
            ),
            (
                serde_json::json!({"architectures": "BitNetForCausalLM"}),
                "architectures",
            ),
            (serde_json::json!({"hidden_act": "gelu"}), "hidden_act"),
            (serde_json::json!({"hidden_act": "silu"}), "hidden_act"),
            (
                serde_json::json!({"attention_bias": true}),
                "attention_bias",
            ),
            (
                serde_json::json!({"rope_scaling": {"rope_type": "longrope", "factor": 8.0}}),
                "rope_scaling.rope_type",
            ),
            (
                serde_json::json!({"quantization_config": {"quant_method": "bitnet", "linear_class": "x"}}),
                "linear_class",
            ),
            (
                serde_json::json!({"quantization_config": {"quant_method": "gptq"}}),
                "quant_method",
            ),
            (
                serde_json::json!({"quantization_config": null}),
                "quantization_config",
            ),
            (
                serde_json::json!({"num_key_value_heads": 3}),
                "num_key_value_heads",
            ),
            (serde_json::json!({"eos_token_id": 100}), "eos_token_id"),
            // Heads of 1 (64 / 64): rotary embedding needs two halves per head.
            (
                serde_json::json!({"num_attention_heads": 64, "num_key_value_heads": 64}),
                "head_dim",
            ),
            (
                serde_json::json!({"max_position_embeddings": MAX_CONTEXT + 1}),
                "max_position_embeddings",
            ),
            (
                serde_json::json!({"max_position_embeddings": u64::MAX}),
                "max_position_embeddings",
            ),
            (serde_json::json!({"rms_norm_eps": 1e-300}), "rms_norm_eps"),
            (serde_json::json!({"head_dim": u64::MAX}), "head_dim"),
        ] {
            let e = cfg(extra.clone()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("config.json"), "{extra}: {e}");
        }
        let c = cfg(serde_json::json!({"max_position_embeddings": MAX_CONTEXT})).unwrap();
        assert_eq!(c.max_position_embeddings, MAX_CONTEXT);
    }

    /// Each family's own config class defaults, its implied quantization, and the keys that
    /// move between families (head_dim, the linear norm).
    #[test]
    fn reads_each_family_with_its_defaults() {
        let c = cfg(
            serde_json::json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "head_dim": 32, "rope_theta": 1000042.0, "tie_word_embeddings": false}),
        )
        .unwrap();
        assert_eq!(c.family.name, "llama-bitnet");
        assert_eq!((c.head_dim, c.q_dim(), c.rope.theta), (32, 128, 1000042.0));
        assert_eq!((c.activation, c.rms_norm_eps), (Activation::Silu, 1e-6));
        let c = cfg(
            serde_json::json!({"model_type": "llama", "architectures": ["BitnetForCausalLM"],
            "quantization_config": null}),
        )
        .unwrap();
        assert_eq!(
            (c.family.name, c.linear),
            ("1bitllm", LinearForm::AutoOnline)
        );
        assert_eq!(c.rope.theta, 10000.0);
        let c = cfg(
            serde_json::json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "online", "use_rms_norm": true, "rms_norm_eps": 1e-5}}),
        )
        .unwrap();
        assert_eq!(c.family.name, "qwen3-bitnet");
        // Qwen3Config's head_dim is 128 whatever hidden_size / heads.
        assert_eq!((c.head_dim, c.linear_norm_eps), (128, Some(1e-5)));
        // BitNetConfig: 5 KV heads when the key is missing, as many as the heads when null.
        let mut base = serde_json::json!({"model_type": "bitnet", "hidden_size": 320,
            "num_attention_heads": 20, "quantization_config": {"quant_method": "bitnet"}});
        let c = parse(Path::new("config.json"), base.as_object().unwrap()).unwrap();
        assert_eq!((c.num_heads, c.num_kv_heads), (20, 5));
        base["num_key_value_heads"] = Value::Null;
        let c = parse(Path::new("config.json"), base.as_object().unwrap()).unwrap();
        assert_eq!(c.num_kv_heads, 20);
        let c = cfg(serde_json::json!({"quantization_config": {"quant_method": "bitnet", "use_rms_norm": true}}))
            .unwrap();
        assert_eq!(c.linear_norm_eps, Some(1e-6));
        let e = cfg(
            serde_json::json!({"model_type": "gemma3", "architectures": ["Gemma3ForCausalLM"]}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("gemma3") && e.contains("Gemma3ForCausalLM") && e.contains("llama-bitnet"),
            "{e}"
        );
    }

    #[test]
    fn quotes_a_short_prefix_of_a_long_value() {
        let e = cfg(serde_json::json!({"hidden_act": "z".repeat(100_000)}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act") && e.contains("zzz..."), "{e}");
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        let e = cfg(serde_json::json!({"vocab_size": "v".repeat(100_000)}))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 300, "{} bytes", e.len());
    }
}
