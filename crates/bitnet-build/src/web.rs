//! `build --for web`: the folder layout Transformers.js (4.3) loads with
//! `pipeline('text-generation', ...)` or `AutoModelForCausalLM.from_pretrained(...)`, in a
//! browser (onnxruntime-web) or in Node (onnxruntime-node). What it relies on, read from
//! Transformers.js 4.3.2's source:
//!
//! - The graph is `onnx/model{suffix}.onnx`, the suffix chosen by the `dtype` option; the
//!   folder's `config.json` names the default under `transformers.js_config.dtype`, so callers
//!   need not pass one. `q2` (suffix `_q2`) is the 2-bit dtype: our ternary layers are 2-bit
//!   `MatMulNBits`.
//! - External data is fetched only when `transformers.js_config.use_external_data_format`
//!   says how many files: `model_q2.onnx_data`, then `model_q2.onnx_data_1`, ... (at most 100).
//!   In a browser each file becomes one `ArrayBuffer` handed to onnxruntime-web, which matches
//!   it to the `location` written in the graph; in Node the path is given to onnxruntime-node,
//!   which resolves the location beside the graph. Either way the location is the file name.
//! - `config.json`'s `model_type` must be one Transformers.js knows (`bitnet` is refused:
//!   "Unsupported model type"). With `llama` it builds an empty KV cache from
//!   `num_key_value_heads`, `head_dim` and `num_hidden_layers` (names `past_key_values.%d.key`,
//!   outputs `present.%d.key`, which the graph uses) and feeds the graph only the inputs it
//!   declares (no `position_ids` here: the graph computes positions from the mask). Nothing
//!   else of Llama's architecture is read: the graph is BitNet's. transformers' own config is
//!   kept beside it as `transformers_config.json`, a name neither reader opens.
//! - Its text-generation pipeline asks the tokenizer for special tokens (BOS) only when
//!   `tokenizer_config.json` sets `add_bos_token` (or `add_eos_token`); transformers'
//!   `tokenizer(text)` adds them by default, so the copy sets `add_bos_token` unless the
//!   checkpoint's file says otherwise.
//!
//! The same folder runs in onnxruntime-genai: `genai_config.json` names `onnx/model_q2.onnx`.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::checkpoint::Checkpoint;
use crate::error::{BuildError, Result};
use crate::files;

/// The Transformers.js dtype the graph is published under.
pub const DTYPE: &str = "q2";
/// The folder holding the graphs, and the graph's file name.
pub const ONNX_DIR: &str = "onnx";
pub const MODEL_FILE: &str = "model_q2.onnx";
/// The graph's external data (Transformers.js's `{model}.onnx_data`).
pub const DATA_FILE: &str = "model_q2.onnx_data";
/// transformers' `config.json` of the checkpoint, copied as it is.
pub const SOURCE_CONFIG: &str = "transformers_config.json";

/// The largest external data file written: one file is one `ArrayBuffer` in the browser, and
/// Chromium refuses those of 2 GiB or more (Emscripten's file packager splits at 2046 MiB for
/// the same reason). onnxruntime-web's 32-bit WebAssembly heap holds every weight in at most
/// 4 GiB besides. Splitting into `_data_1`... chunks is not implemented: a larger folder is
/// refused, naming the flags that make it smaller.
pub const MAX_DATA_BYTES: u64 = 2046 << 20;

/// The `config.json` Transformers.js reads.
pub fn config_json(ck: &Checkpoint) -> Value {
    let c = &ck.config;
    let mut v = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        // The KV cache's head size, which Transformers.js allocates past tensors with.
        "head_dim": c.cache_head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "transformers.js_config": {
            "dtype": DTYPE,
            "use_external_data_format": { MODEL_FILE: 1 },
        },
        "bitnet_onnx": {
            "note": "A BitNet b1.58 decoder built by bitnet-onnx for Transformers.js, which \
                     runs the ONNX graph as it is and reads only the KV-cache shape from this \
                     file; model_type llama is the name it accepts for that. transformers' own \
                     config of the checkpoint is transformers_config.json.",
            "source_config": SOURCE_CONFIG,
        },
    });
    if let Value::Object(o) = &mut v {
        o.extend(special_tokens(ck));
    }
    v
}

/// The checkpoint's `tokenizer_config.json` with `add_bos_token` set when the checkpoint has a
/// BOS token and the file does not decide (see the module notes); `None` when the checkpoint
/// has no such file and no BOS token.
pub fn tokenizer_config(ck: &Checkpoint, src: &Path) -> Result<Option<Value>> {
    let mut obj = if src.is_file() {
        let bytes = files::read_capped(src, files::MAX_TOKENIZER_BYTES)?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(o)) => o,
            _ => return Err(BuildError::config(src, "not a JSON object")),
        }
    } else if ck.config.bos_token_id.is_some() {
        Map::new()
    } else {
        return Ok(None);
    };
    if ck.config.bos_token_id.is_some() && !obj.contains_key("add_bos_token") {
        obj.insert("add_bos_token".into(), Value::Bool(true));
    }
    Ok(Some(Value::Object(obj)))
}

/// A `generation_config.json` for a checkpoint without one: its special tokens.
pub fn generation_config(ck: &Checkpoint) -> Value {
    Value::Object(special_tokens(ck))
}

/// The checkpoint's BOS, EOS (one id or a list) and pad token ids, those it has, as
/// transformers' config files spell them.
fn special_tokens(ck: &Checkpoint) -> Map<String, Value> {
    let c = &ck.config;
    let mut o = Map::new();
    if let Some(b) = c.bos_token_id {
        o.insert("bos_token_id".into(), json!(b));
    }
    match c.eos_token_ids.as_slice() {
        [] => {}
        [one] => {
            o.insert("eos_token_id".into(), json!(one));
        }
        many => {
            o.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = c.pad_token_id {
        o.insert("pad_token_id".into(), json!(p));
    }
    o
}
