//! The model families `build` reads, as data: one [`Family`] entry each says how the family is
//! recognised in `config.json`, the defaults its transformers config class fills in, the names
//! of its tensors, which norms it has and where, its MLP activations, and how its linear layers
//! are quantized when the config does not say. The config reader ([`crate::config`]), the
//! tensor checks ([`crate::checkpoint`]) and the graph ([`crate::decoder`]) read the entry; none
//! of them branches on a family's name. Adding a family is one entry in [`FAMILIES`] and its
//! test (the layout follows llama.cpp's gguf-py tensor tables and candle-transformers'
//! one-file-per-model: everything that tells one family from another in one place).
//!
//! What each entry records, and where it comes from (transformers 5.23.0):
//! * `BitNetForCausalLM` (`models/bitnet`): `attn_sub_norm` on the attention output before
//!   `o_proj`, `ffn_sub_norm` on `act(gate) * up` before `down_proj`, relu2 by default.
//! * `LlamaForCausalLM` with `quantization_config.quant_method: bitnet` (Falcon3-1.58bit,
//!   HF1BitLLM Llama3-8B-1.58, Falcon-E): the llama decoder (no sub-norms, SiLU) whose linear
//!   layers the BitNet quantizer replaces (`integrations/bitnet.py`).
//! * 1bitLLM `bitnet_b1_58-*` (`architectures: BitnetForCausalLM`, `model_type: llama`, remote
//!   code): BitNet's sub-norms under the names `self_attn.inner_attn_ln` and
//!   `mlp.ffn_layernorm`, SiLU, float master weights ternarised at run time by absmean and
//!   per-token int8 activations: what transformers' `AutoBitLinear` online computes (the remote
//!   code's `weight_quant` is `round(w / mean|w|)` clamped to [-1, 1] and divided by the same
//!   scale, its `activation_quant` BitNet's absmax 127), so a checkpoint without a
//!   `quantization_config` is read as that.
//! * `Qwen3ForCausalLM` with a BitNet `quantization_config` (codys12's Qwen3 BitNet models):
//!   per-head RMSNorms `self_attn.q_norm` / `self_attn.k_norm` (head_dim weights, the config's
//!   `rms_norm_eps`) on the projected queries and keys before the rotary embedding, no
//!   sub-norms, SiLU, `head_dim` 128 by default whatever the hidden size.
//! * `LlamaForCausalLM` / `Qwen3ForCausalLM` without a `quantization_config` (SpectraSuite
//!   TriLM `*_Unpacked`, prism-ml Ternary-Bonsai `-unpacked`): transformers runs float linear
//!   layers, on weights that already are ternary codes times a scale per shard of rows (TriLM)
//!   or per group of 128 along the input (Bonsai); `build` recovers them exactly.

use crate::config::LinearForm;

/// The MLP's activation on the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu(x)^2` (transformers' `"relu2"`).
    Relu2,
    /// `x * sigmoid(x)` (transformers' `"silu"`, also spelled `"swish"`).
    Silu,
}

impl Activation {
    /// The activation a `hidden_act` value names, if `build` computes it.
    pub fn from_hidden_act(s: &str) -> Option<Activation> {
        match s {
            "relu2" => Some(Activation::Relu2),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }
}

/// How a family's linear layers are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// `quantization_config` with `quant_method: bitnet` must be present (without it
    /// transformers runs float linear layers); its `linear_class` and `quantization_mode`
    /// decide the scale rule.
    Required,
    /// Read from `quantization_config` when present, else this form (the family's own code
    /// quantizes without one).
    Implied(LinearForm),
    /// No `quantization_config`: transformers runs plain float linear layers on weights that
    /// already are ternary codes times a scale per row (or shard of rows) or per group along
    /// the input ([`LinearForm::FloatTernary`]). A config with one is another family.
    Absent,
}

impl Quantization {
    /// Whether a config with (`true`) or without a `quantization_config` can be this family.
    fn admits(self, has_quantization_config: bool) -> bool {
        match self {
            Quantization::Required => has_quantization_config,
            Quantization::Absent => !has_quantization_config,
            Quantization::Implied(_) => true,
        }
    }
}

/// The values a family's transformers config class fills in for a missing key.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None`: as many as `num_attention_heads`. An explicit `null` in config.json is always
    /// as many as `num_attention_heads` (the config classes' `__post_init__`).
    pub num_key_value_heads: Option<usize>,
    /// `None`: `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    /// The config class's `default_theta`.
    pub rope_theta: f64,
    pub hidden_act: &'static str,
}

/// The tensor names of one decoder layer, relative to `model.layers.{i}.`, and the model's
/// own. A `None` norm is one the family does not have.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub embed: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    pub input_norm: &'static str,
    pub post_attention_norm: &'static str,
    /// On the attention output (`num_heads * head_dim` values), before `o_proj`.
    pub attn_sub_norm: Option<&'static str>,
    /// On `act(gate) * up` (`intermediate_size` values), before `down_proj`.
    pub ffn_sub_norm: Option<&'static str>,
    /// Per head (`head_dim` values), on the projected queries and keys before rotary.
    pub q_norm: Option<&'static str>,
    pub k_norm: Option<&'static str>,
    /// The linear layers, `(block, name)`: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub q_proj: (&'static str, &'static str),
    pub k_proj: (&'static str, &'static str),
    pub v_proj: (&'static str, &'static str),
    pub o_proj: (&'static str, &'static str),
    pub gate_proj: (&'static str, &'static str),
    pub up_proj: (&'static str, &'static str),
    pub down_proj: (&'static str, &'static str),
}

/// The one role of each linear layer of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Names {
    /// `(block, name)` of a projection.
    pub fn proj(&self, p: Proj) -> (&'static str, &'static str) {
        match p {
            Proj::Q => self.q_proj,
            Proj::K => self.k_proj,
            Proj::V => self.v_proj,
            Proj::O => self.o_proj,
            Proj::Gate => self.gate_proj,
            Proj::Up => self.up_proj,
            Proj::Down => self.down_proj,
        }
    }

    /// `model.layers.{layer}.{block}.{name}` of a projection (without `.weight`).
    pub fn linear(&self, layer: usize, p: Proj) -> String {
        let (block, name) = self.proj(p);
        format!("model.layers.{layer}.{block}.{name}")
    }

    /// `model.layers.{layer}.{rel}.weight`.
    pub fn layer_weight(layer: usize, rel: &str) -> String {
        format!("model.layers.{layer}.{rel}.weight")
    }
}

/// One family: how it is recognised and everything the graph builder reads from it.
#[derive(Debug)]
pub struct Family {
    /// The name `build` reports and records (`bitnet_onnx.family`).
    pub name: &'static str,
    /// How it is recognised, in a few words, for the list of supported families in a refusal.
    pub recognised_by: &'static str,
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The `architectures` entries that select this family for its `model_type` (a config
    /// without `architectures` matches the first family of its `model_type` that accepts
    /// it, `architecture_optional`), among the families whose [`Quantization`] admits the
    /// config's `quantization_config` or its absence.
    pub architectures: &'static [&'static str],
    pub architecture_optional: bool,
    pub quantization: Quantization,
    pub defaults: Defaults,
    /// The `hidden_act` values accepted.
    pub activations: &'static [Activation],
    pub names: Names,
    /// Top-level keys whose presence with a true value the graph cannot represent, with why.
    pub refused_flags: &'static [(&'static str, &'static str)],
}

const LLAMA_LINEARS: Names = Names {
    embed: "model.embed_tokens.weight",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    input_norm: "input_layernorm",
    post_attention_norm: "post_attention_layernorm",
    attn_sub_norm: None,
    ffn_sub_norm: None,
    q_norm: None,
    k_norm: None,
    q_proj: ("self_attn", "q_proj"),
    k_proj: ("self_attn", "k_proj"),
    v_proj: ("self_attn", "v_proj"),
    o_proj: ("self_attn", "o_proj"),
    gate_proj: ("mlp", "gate_proj"),
    up_proj: ("mlp", "up_proj"),
    down_proj: ("mlp", "down_proj"),
};

/// transformers' `LlamaConfig` defaults.
const LLAMA_DEFAULTS: Defaults = Defaults {
    vocab_size: 32000,
    hidden_size: 4096,
    intermediate_size: 11008,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: None,
    head_dim: None,
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    hidden_act: "silu",
};

/// transformers' `Qwen3Config` defaults (`head_dim` 128 whatever the hidden size).
const QWEN3_DEFAULTS: Defaults = Defaults {
    vocab_size: 151936,
    hidden_size: 4096,
    intermediate_size: 22016,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: Some(32),
    head_dim: Some(128),
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    hidden_act: "silu",
};

/// Qwen3's names: Llama's, and per-head RMSNorms on the projected queries and keys.
const QWEN3_NAMES: Names = Names {
    q_norm: Some("self_attn.q_norm"),
    k_norm: Some("self_attn.k_norm"),
    ..LLAMA_LINEARS
};

/// Every family `build` reads, in the order they are tried.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "bitnet",
        recognised_by: "model_type bitnet, BitNetForCausalLM",
        // transformers BitNet (BitNetForCausalLM: microsoft/bitnet-b1.58-2B-4T and its -bf16 master weights)
        model_type: "bitnet",
        architectures: &["BitNetForCausalLM"],
        architecture_optional: true,
        quantization: Quantization::Required,
        // transformers' BitNetConfig.
        defaults: Defaults {
            vocab_size: 128256,
            hidden_size: 2560,
            intermediate_size: 6912,
            num_hidden_layers: 30,
            num_attention_heads: 20,
            num_key_value_heads: Some(5),
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            hidden_act: "relu2",
        },
        activations: &[Activation::Relu2],
        names: Names {
            attn_sub_norm: Some("self_attn.attn_sub_norm"),
            ffn_sub_norm: Some("mlp.ffn_sub_norm"),
            ..LLAMA_LINEARS
        },
        refused_flags: &[],
    },
    Family {
        name: "llama-bitnet",
        recognised_by: "model_type llama, LlamaForCausalLM, quant_method bitnet",
        // Llama-architecture BitNet (LlamaForCausalLM with quant_method bitnet: tiiuae Falcon3-*-1.58bit, HF1BitLLM Llama3-8B-1.58, tiiuae Falcon-E)
        model_type: "llama",
        architectures: &["LlamaForCausalLM"],
        architecture_optional: true,
        quantization: Quantization::Required,
        defaults: LLAMA_DEFAULTS,
        activations: &[Activation::Silu],
        names: LLAMA_LINEARS,
        refused_flags: &[],
    },
    Family {
        name: "1bitllm",
        recognised_by: "model_type llama, BitnetForCausalLM",
        // 1bitLLM bitnet_b1_58 (BitnetForCausalLM, model_type llama, remote code: float master weights ternarised by absmean at run time, sub-norms inner_attn_ln / ffn_layernorm)
        model_type: "llama",
        architectures: &["BitnetForCausalLM"],
        architecture_optional: false,
        quantization: Quantization::Implied(LinearForm::AutoOnline),
        defaults: LLAMA_DEFAULTS,
        activations: &[Activation::Silu],
        names: Names {
            attn_sub_norm: Some("self_attn.inner_attn_ln"),
            ffn_sub_norm: Some("mlp.ffn_layernorm"),
            ..LLAMA_LINEARS
        },
        refused_flags: &[],
    },
    Family {
        name: "qwen3-bitnet",
        recognised_by: "model_type qwen3, Qwen3ForCausalLM, quant_method bitnet",
        // Qwen3-architecture BitNet (Qwen3ForCausalLM with quant_method bitnet: codys12's Qwen3 BitNet models; per-head q_norm / k_norm)
        model_type: "qwen3",
        architectures: &["Qwen3ForCausalLM"],
        architecture_optional: true,
        quantization: Quantization::Required,
        defaults: QWEN3_DEFAULTS,
        activations: &[Activation::Silu],
        names: QWEN3_NAMES,
        refused_flags: &[(
            "use_sliding_window",
            "sliding-window attention layers are not built (every layer attends to the whole context)",
        )],
    },
    Family {
        name: "llama-ternary-float",
        recognised_by: "model_type llama, LlamaForCausalLM, no quantization_config",
        // Llama-architecture ternary weights stored as floats (SpectraSuite TriLM *_Unpacked: float16 codes times a scale per shard of rows)
        model_type: "llama",
        architectures: &["LlamaForCausalLM"],
        architecture_optional: true,
        quantization: Quantization::Absent,
        defaults: LLAMA_DEFAULTS,
        activations: &[Activation::Silu],
        names: LLAMA_LINEARS,
        refused_flags: &[],
    },
    Family {
        name: "qwen3-ternary-float",
        recognised_by: "model_type qwen3, Qwen3ForCausalLM, no quantization_config",
        // Qwen3-architecture ternary weights stored as floats (prism-ml Ternary-Bonsai -unpacked: float16 codes times a scale per group of 128 along the input)
        model_type: "qwen3",
        architectures: &["Qwen3ForCausalLM"],
        architecture_optional: true,
        quantization: Quantization::Absent,
        defaults: QWEN3_DEFAULTS,
        activations: &[Activation::Silu],
        names: QWEN3_NAMES,
        refused_flags: &[(
            "use_sliding_window",
            "sliding-window attention layers are not built (every layer attends to the whole context)",
        )],
    },
];

/// What a config says it is, for a refusal: `model_type` and `architectures` as found.
pub fn supported_list() -> String {
    FAMILIES
        .iter()
        .map(|f| format!("{} ({})", f.name, f.recognised_by))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The family of a config with this `model_type` and `architectures` (`None`: absent).
/// `Err` carries why nothing matched.
pub fn recognise(
    model_type: Option<&str>,
    architectures: Option<&[String]>,
    has_quantization_config: bool,
) -> Result<&'static Family, String> {
    let candidates: Vec<&Family> = FAMILIES
        .iter()
        .filter(|f| Some(f.model_type) == model_type)
        .filter(|f| f.quantization.admits(has_quantization_config))
        .collect();
    let found = match architectures {
        None | Some([]) => candidates.iter().find(|f| f.architecture_optional),
        Some(archs) => candidates
            .iter()
            .find(|f| archs.iter().any(|a| f.architectures.contains(&a.as_str()))),
    };
    found.copied().ok_or_else(|| {
        format!(
            "model_type {} with architectures {} and {} quantization_config is not a family build reads; supported: {}",
            model_type.map_or("(missing)".to_string(), |m| format!("{m:?}")),
            architectures.map_or("(missing)".to_string(), |a| format!("{a:?}")),
            if has_quantization_config { "a" } else { "no" },
            supported_list()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_each_family_by_model_type_and_architecture() {
        for (mt, a, q, want) in [
            (
                "bitnet",
                Some(archs(&["BitNetForCausalLM"])),
                true,
                "bitnet",
            ),
            ("bitnet", None, true, "bitnet"),
            (
                "llama",
                Some(archs(&["LlamaForCausalLM"])),
                true,
                "llama-bitnet",
            ),
            ("llama", None, true, "llama-bitnet"),
            (
                "llama",
                Some(archs(&["BitnetForCausalLM"])),
                false,
                "1bitllm",
            ),
            (
                "llama",
                Some(archs(&["BitnetForCausalLM"])),
                true,
                "1bitllm",
            ),
            (
                "qwen3",
                Some(archs(&["Qwen3ForCausalLM"])),
                true,
                "qwen3-bitnet",
            ),
            (
                "llama",
                Some(archs(&["LlamaForCausalLM"])),
                false,
                "llama-ternary-float",
            ),
            ("qwen3", None, false, "qwen3-ternary-float"),
        ] {
            let f = recognise(Some(mt), a.as_deref(), q).unwrap();
            assert_eq!(f.name, want, "{mt} {a:?} {q}");
        }
        // BitNet without its quantization_config is no family.
        assert!(recognise(Some("bitnet"), None, false).is_err());
    }

    #[test]
    fn an_unknown_family_is_named_and_the_supported_listed() {
        for (mt, a) in [
            (Some("mistral"), Some(archs(&["MistralForCausalLM"]))),
            (
                Some("llama"),
                Some(archs(&["LlamaForSequenceClassification"])),
            ),
            (None, None),
        ] {
            let e = recognise(mt, a.as_deref(), true).unwrap_err();
            assert!(
                e.contains(&format!("{mt:?}").replace("Some(", "").replace(')', ""))
                    || mt.is_none()
            );
            for f in FAMILIES {
                assert!(e.contains(f.name), "{e}");
            }
            if let Some(a) = &a {
                assert!(e.contains(&a[0]), "{e}");
            }
        }
    }

    #[test]
    fn every_family_names_each_tensor_once() {
        for f in FAMILIES {
            let n = &f.names;
            let mut all: Vec<String> = [
                Proj::Q,
                Proj::K,
                Proj::V,
                Proj::O,
                Proj::Gate,
                Proj::Up,
                Proj::Down,
            ]
            .iter()
            .map(|&p| n.linear(0, p))
            .collect();
            for rel in [Some(n.input_norm), Some(n.post_attention_norm)]
                .into_iter()
                .chain([n.attn_sub_norm, n.ffn_sub_norm, n.q_norm, n.k_norm])
                .flatten()
            {
                all.push(Names::layer_weight(0, rel));
            }
            let len = all.len();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), len, "{}", f.name);
            assert_eq!(n.q_norm.is_some(), n.k_norm.is_some(), "{}", f.name);
        }
    }
}
