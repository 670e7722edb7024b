//! `genai_config.json`: what onnxruntime-genai needs to run the decoder (docs/formats.md
//! section 4): the input and output names the graph uses, the KV cache's shape, the context
//! length, the special tokens and greedy search defaults.

use std::path::Path;

use serde_json::json;

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// The pad token onnxruntime-genai is told about: the config's, else the first EOS.
pub fn pad_token_id(c: &crate::Config) -> i64 {
    c.pad_token_id
        .or_else(|| c.eos_token_ids.first().copied())
        .unwrap_or(0)
}

/// `filename`: the graph's path relative to the folder (`model.onnx`, or a web folder's
/// `onnx/model_q2.onnx`); `custom_ops_library` is the custom-op library's file name inside the
/// folder (`--kernel bitnet`), which onnxruntime-genai registers on the decoder's session options.
pub fn config_json(
    ck: &Checkpoint,
    filename: &str,
    custom_ops_library: Option<&str>,
) -> serde_json::Value {
    let c = &ck.config;
    let eos: Vec<i64> = c.eos_token_ids.clone();
    let pad = pad_token_id(c);
    let mut session_options = json!({
        "log_id": "onnxruntime-genai",
        "provider_options": []
    });
    if let Some(lib) = custom_ops_library {
        session_options["custom_ops_library"] = json!(lib);
    }
    json!({
        "model": {
            "bos_token_id": c.bos_token_id.unwrap_or(0),
            "context_length": c.max_position_embeddings,
            "decoder": {
                "session_options": session_options,
                "filename": filename,
                "head_size": c.cache_head_dim,
                "hidden_size": c.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value"
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"
                },
                "num_attention_heads": c.num_heads,
                "num_hidden_layers": c.num_layers,
                "num_key_value_heads": c.num_kv_heads
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": "decoder",
            "vocab_size": c.vocab_size
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": false,
            "early_stopping": true,
            "length_penalty": 1.0,
            "max_length": c.max_position_embeddings,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": true,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0
        }
    })
}

pub fn write_config(
    ck: &Checkpoint,
    filename: &str,
    custom_ops_library: Option<&str>,
    path: &Path,
) -> Result<()> {
    crate::files::write_json(&config_json(ck, filename, custom_ops_library), path)
}
