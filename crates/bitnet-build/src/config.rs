//! A checkpoint's `config.json`, read as transformers' `BitNetConfig` reads it (defaults
//! included), and every value the built graph depends on checked: a value the graph cannot
//! represent is refused by name instead of built wrong.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{json_error, quote, BuildError, Result};
use crate::files;

/// The longest context `build` writes. The model holds two rotary tables (cos and sin) of
/// `max_position_embeddings x head_dim / 2` float32 values, since ONNX Runtime's
/// GroupQueryAttention needs a row for every position up to the total sequence length, and
/// onnxruntime-genai allocates the KV cache for the whole context of each sequence. 131072
/// positions (Llama 3.1's context, 32 times microsoft/bitnet-b1.58-2B-4T's 4096) cost 64 MiB of
/// tables at head_dim 128; an unchecked value could ask for terabytes or overflow.
pub const MAX_CONTEXT: usize = 1 << 17;

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
}

impl LinearForm {
    pub fn name(self) -> &'static str {
        match self {
            LinearForm::BitLinear => "bitlinear (offline, packed)",
            LinearForm::AutoOffline => "autobitlinear (offline)",
            LinearForm::AutoOnline => "autobitlinear (online, master weights)",
        }
    }
}

/// The values of a BitNet config the graph is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub linear: LinearForm,
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

fn parse(path: &Path, o: &Map<String, Value>) -> Result<Config> {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let model_type = get("model_type").cloned().unwrap_or(Value::Null);
    if model_type.as_str() != Some("bitnet") {
        return Err(unsupported(
            path,
            "model_type",
            &model_type,
            "build reads transformers BitNet checkpoints (model_type \"bitnet\", BitNetForCausalLM)",
        ));
    }
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
    // transformers' BitNetConfig defaults.
    let vocab_size = uint("vocab_size", Some(128256))?;
    let hidden_size = uint("hidden_size", Some(2560))?;
    let intermediate_size = uint("intermediate_size", Some(6912))?;
    let num_layers = uint("num_hidden_layers", Some(30))?;
    let num_heads = uint("num_attention_heads", Some(20))?;
    let num_kv_heads = uint("num_key_value_heads", Some(num_heads))?;
    let max_position_embeddings = uint("max_position_embeddings", Some(2048))?;
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
    let rms_norm_eps = float("rms_norm_eps", 1e-5)? as f32;
    if !rms_norm_eps.is_normal() {
        return Err(unsupported(
            path,
            "rms_norm_eps",
            &get("rms_norm_eps").cloned().unwrap_or(Value::Null),
            "not a normal float32 (the graph computes in float32)",
        ));
    }
    let tie_word_embeddings = boolean("tie_word_embeddings", false)?;
    if hidden_size % num_heads != 0 && get("head_dim").is_none() {
        return Err(BuildError::config(
            path,
            format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            ),
        ));
    }
    let head_dim = uint("head_dim", Some(hidden_size / num_heads))?;
    if num_heads % num_kv_heads != 0 {
        return Err(BuildError::config(
            path,
            format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"),
        ));
    }
    if num_heads.checked_mul(head_dim) != Some(hidden_size) {
        // attn_sub_norm normalises hidden_size values of the attention output.
        return Err(unsupported(
            path,
            "head_dim",
            &Value::from(head_dim),
            &format!(
                "BitNet's attn_sub_norm has hidden_size ({hidden_size}) weights, so num_attention_heads x head_dim must equal it ({num_heads} x {head_dim})"
            ),
        ));
    }
    if !head_dim.is_multiple_of(16) {
        // ONNX Runtime's GroupQueryAttention (CPU) checks this when it is given rotary caches,
        // at the first generation step; microsoft/bitnet-b1.58-2B-4T's head_dim is 128.
        return Err(unsupported(
            path,
            "head_dim",
            &Value::from(head_dim),
            "ONNX Runtime's GroupQueryAttention with rotary embeddings needs a multiple of 16",
        ));
    }
    if let Some(v) = get("hidden_act") {
        if v.as_str() != Some("relu2") {
            return Err(unsupported(
                path,
                "hidden_act",
                v,
                "BitNet's MLP is relu squared (\"relu2\")",
            ));
        }
    }
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
    let rope_theta = rope(path, o)?;
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
    let linear = quantization(path, o)?;
    Ok(Config {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        tie_word_embeddings,
        bos_token_id,
        eos_token_ids,
        pad_token_id,
        linear,
    })
}

/// The rotary base: `rope_parameters` (transformers 5) or `rope_theta`; only the default
/// (unscaled) rotary embedding is built.
fn rope(path: &Path, o: &Map<String, Value>) -> Result<f64> {
    let mut theta = 500000.0;
    let check_type = |key: &str, p: &Map<String, Value>| -> Result<()> {
        let t = p.get("rope_type").or_else(|| p.get("type"));
        match t {
            None => Ok(()),
            Some(v) if v.as_str() == Some("default") => Ok(()),
            Some(v) => Err(unsupported(
                path,
                &format!("{key}.rope_type"),
                v,
                "only the default rotary embedding is built (no scaled or extended RoPE)",
            )),
        }
    };
    if let Some(v) = o.get("rope_theta").filter(|v| !v.is_null()) {
        theta = v
            .as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| {
                BuildError::config(
                    path,
                    format!("`rope_theta` = {} is not a positive number", quote(v)),
                )
            })?;
    }
    for key in ["rope_parameters", "rope_scaling"] {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(p)) => {
                check_type(key, p)?;
                if let Some(v) = p.get("rope_theta") {
                    theta = v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| {
                            BuildError::config(
                                path,
                                format!(
                                    "`{key}.rope_theta` = {} is not a positive number",
                                    quote(v)
                                ),
                            )
                        })?;
                }
            }
            Some(v) => return Err(unsupported(path, key, v, "expected an object or null")),
        }
    }
    Ok(theta)
}

/// The linear class from `quantization_config`, as transformers' BitNet quantizer picks it.
fn quantization(path: &Path, o: &Map<String, Value>) -> Result<LinearForm> {
    let Some(q) = o.get("quantization_config").filter(|v| !v.is_null()) else {
        return Err(BuildError::config(
            path,
            "no `quantization_config`: without it transformers runs plain float linear layers, \
             not BitNet's ternary ones",
        ));
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
    if let Some(v) = q.get("use_rms_norm").filter(|v| !v.is_null()) {
        if v.as_bool() != Some(false) {
            return Err(unsupported(
                path,
                "quantization_config.use_rms_norm",
                v,
                "an RMSNorm inside every linear layer is not built (BitNet b1.58 models have none)",
            ));
        }
    }
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
    match (class.as_str(), mode.as_str()) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (c.head_dim, c.rope_theta, c.eos_token_ids.clone()),
            (16, 10000.0, vec![2, 3])
        );
        assert_eq!(c.linear, LinearForm::BitLinear);
        assert_eq!(cfg(serde_json::json!({})).unwrap().rope_theta, 500000.0);
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        for (extra, key) in [
            (serde_json::json!({"model_type": "llama"}), "model_type"),
            (serde_json::json!({"hidden_act": "silu"}), "hidden_act"),
            (
                serde_json::json!({"attention_bias": true}),
                "attention_bias",
            ),
            (
                serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
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
            // 8 heads of 8: GroupQueryAttention needs multiples of 16.
            (serde_json::json!({"num_attention_heads": 8}), "head_dim"),
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
