//! A transformers BitNet checkpoint directory: its config and every tensor the decoder needs,
//! checked (present, dtype, shape, scales usable) before anything is written, then read one
//! weight at a time.

use std::path::{Path, PathBuf};

use bitnet_math::hf;
use bitnet_math::quant::Ternary;

use crate::config::{Config, LinearForm};
use crate::error::{BuildError, Result};
use crate::family::{Names, Proj};
use crate::safetensors::{Dtype, TensorInfo, Tensors};

/// The linear layers of one decoder layer.
pub const PROJECTIONS: [Proj; 7] = [
    Proj::Q,
    Proj::K,
    Proj::V,
    Proj::O,
    Proj::Gate,
    Proj::Up,
    Proj::Down,
];

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub tensors: Tensors,
}

/// A linear layer's ternary codes `[out][in]` and how its class scales their integer product.
pub struct Linear {
    pub codes: Vec<i8>,
    pub out: usize,
    pub k: usize,
    pub scale: Rescale,
    /// The weight was stored as codes (packed or float codes): nothing was rounded.
    pub stored_as_codes: bool,
}

impl Checkpoint {
    /// Reads `config.json` and the safetensors headers, and checks every tensor the decoder
    /// reads.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(BuildError::config(dir, "is not a checkpoint directory"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(BuildError::config(
                dir,
                "no config.json in the checkpoint directory",
            ));
        }
        let mut config = Config::read(&config_path)?;
        let generation = dir.join("generation_config.json");
        if generation.is_file() {
            for id in generation_eos(&generation, config.vocab_size)? {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        let tensors = Tensors::open(dir)?;
        let ck = Checkpoint {
            dir: dir.to_path_buf(),
            config_path,
            config,
            tensors,
        };
        ck.check().map_err(|e| ck.with_layout_hint(e))?;
        Ok(ck)
    }

    /// Where the tensor names would be found (the index for sharded checkpoints).
    fn weights_path(&self) -> PathBuf {
        let index = self.dir.join("model.safetensors.index.json");
        if index.is_file() {
            index
        } else {
            self.dir.join("model.safetensors")
        }
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .tensors
            .get(name)
            .ok_or_else(|| BuildError::MissingTensor {
                path: self.weights_path(),
                tensor: name.to_string(),
            })
    }

    fn expect_float(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self.info(name)?;
        let path = self.tensors.path_of(info);
        if !info.dtype.is_float() {
            return Err(BuildError::tensor(
                path,
                name,
                format!("dtype {}, expected F32, F16 or BF16", info.dtype.name()),
            ));
        }
        if info.shape != shape {
            return Err(BuildError::tensor(
                path,
                name,
                format!(
                    "shape {:?}, expected {shape:?} from config.json",
                    info.shape
                ),
            ));
        }
        Ok(info)
    }

    /// The family's tensor names.
    pub fn names(&self) -> &'static Names {
        &self.config.family.names
    }

    /// The embedding table's name.
    pub fn embed_name(&self) -> &'static str {
        self.names().embed
    }

    /// The LM head's table: the family's head, or the embedding when tied.
    pub fn head_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            self.names().embed
        } else {
            self.names().lm_head
        }
    }

    /// `(out, in)` of a layer's projection.
    pub fn linear_shape(&self, p: Proj) -> (usize, usize) {
        let c = &self.config;
        match p {
            Proj::Q => (c.q_dim(), c.hidden_size),
            Proj::K | Proj::V => (c.kv_dim(), c.hidden_size),
            Proj::O => (c.hidden_size, c.q_dim()),
            Proj::Gate | Proj::Up => (c.intermediate_size, c.hidden_size),
            Proj::Down => (c.hidden_size, c.intermediate_size),
        }
    }

    /// The name (without `.weight`) of a layer's projection.
    pub fn linear_name(&self, layer: usize, p: Proj) -> String {
        self.names().linear(layer, p)
    }

    /// Every norm weight of layer `l` the family has, with its length.
    pub fn layer_norms(&self, l: usize) -> Vec<(String, usize)> {
        let (c, n) = (&self.config, self.names());
        let mut out = vec![
            (Names::layer_weight(l, n.input_norm), c.hidden_size),
            (Names::layer_weight(l, n.post_attention_norm), c.hidden_size),
        ];
        for (rel, len) in [
            (n.attn_sub_norm, c.q_dim()),
            (n.ffn_sub_norm, c.intermediate_size),
            (n.q_norm, c.head_dim),
            (n.k_norm, c.head_dim),
        ] {
            if let Some(rel) = rel {
                out.push((Names::layer_weight(l, rel), len));
            }
        }
        if c.linear_norm_eps.is_some() {
            for p in PROJECTIONS {
                let k = self.linear_shape(p).1;
                out.push((format!("{}.rms_norm.weight", self.linear_name(l, p)), k));
            }
        }
        out
    }

    /// A missing tensor of a checkpoint whose tensors carry another family's norm names
    /// (config.json naming one family, the weights laid out as another's) says so.
    fn with_layout_hint(&self, e: BuildError) -> BuildError {
        let BuildError::MissingTensor { path, tensor } = e else {
            return e;
        };
        let own = self.config.family;
        let hint = crate::family::FAMILIES
            .iter()
            .filter(|f| !std::ptr::eq(*f, own))
            .find_map(|f| {
                let n = &f.names;
                let names: Vec<String> = [n.attn_sub_norm, n.ffn_sub_norm, n.q_norm, n.k_norm]
                    .into_iter()
                    .flatten()
                    .map(|rel| Names::layer_weight(0, rel))
                    .collect();
                let all =
                    !names.is_empty() && names.iter().all(|t| self.tensors.tensors.contains_key(t));
                all.then_some((f.name, names))
            });
        match hint {
            None => BuildError::MissingTensor { path, tensor },
            Some((family, names)) => BuildError::Tensor {
                path,
                tensor,
                message: format!(
                    "is missing; the checkpoint has {}, the {family} family's names, but config.json \
                     says {} (check its model_type and architectures)",
                    names.join(", "),
                    own.name
                ),
            },
        }
    }

    fn check(&self) -> Result<()> {
        let c = &self.config;
        let (v, h) = (c.vocab_size, c.hidden_size);
        let n = self.names();
        self.expect_float(n.embed, &[v, h])?;
        if !c.tie_word_embeddings {
            self.expect_float(n.lm_head, &[v, h])?;
        }
        self.expect_float(n.final_norm, &[h])?;
        for l in 0..c.num_layers {
            for (name, len) in self.layer_norms(l) {
                self.expect_float(&name, &[len])?;
            }
            for p in PROJECTIONS {
                self.check_linear(&self.linear_name(l, p), self.linear_shape(p))?;
            }
        }
        Ok(())
    }

    /// The stored form of a linear weight, checked against the config's linear class.
    fn check_linear(&self, name: &str, (out, k): (usize, usize)) -> Result<()> {
        let wname = format!("{name}.weight");
        let info = self.info(&wname)?;
        let path = self.tensors.path_of(info);
        let packed = info.dtype == Dtype::U8;
        let form = self.config.linear;
        if packed {
            if !out.is_multiple_of(4) || info.shape != [out / 4, k] {
                return Err(BuildError::tensor(
                    path,
                    &wname,
                    format!(
                        "packed uint8 shape {:?}, expected [{}, {k}] (out_features {out} / 4, in_features) from config.json",
                        info.shape,
                        out as f64 / 4.0
                    ),
                ));
            }
            if form == LinearForm::AutoOnline {
                return Err(BuildError::tensor(
                    path,
                    &wname,
                    "packed uint8 weights, but quantization_config says autobitlinear online \
                     (master weights); transformers would not unpack them",
                ));
            }
            if form == LinearForm::FloatTernary {
                return Err(BuildError::tensor(
                    path,
                    &wname,
                    "packed uint8 weights without a quantization_config: transformers would not \
                     unpack them",
                ));
            }
        } else {
            if form == LinearForm::BitLinear {
                return Err(BuildError::tensor(
                    path,
                    &wname,
                    format!(
                        "dtype {}, but quantization_config's linear_class bitlinear stores packed uint8 weights",
                        info.dtype.name()
                    ),
                ));
            }
            self.expect_float(&wname, &[out, k])?;
        }
        if form != LinearForm::AutoOnline && form != LinearForm::FloatTernary {
            let sname = format!("{name}.weight_scale");
            let s = self.info(&sname)?;
            let spath = self.tensors.path_of(s);
            if !s.dtype.is_float() || s.elements() != 1 || s.shape.len() > 1 {
                return Err(BuildError::tensor(
                    spath,
                    &sname,
                    format!(
                        "{} of shape {:?}, expected one float (shape [1]): BitNet's scale is per tensor",
                        s.dtype.name(),
                        s.shape
                    ),
                ));
            }
            let value = self.tensors.read_f32(&sname, s)?[0];
            if !value.is_finite() || value == 0.0 {
                return Err(BuildError::tensor(
                    spath,
                    &sname,
                    format!("value {value} cannot scale a weight"),
                ));
            }
        }
        Ok(())
    }

    /// A float-stored ternary weight's codes and scales, recovered exactly: the weight must
    /// hold only `{-a, 0, +a}` per tensor, per row (a scale per shard of rows is one per row),
    /// or per group of `block_size` along the input (ONNX Runtime's 2-bit `MatMulNBits` holds
    /// a scale per block of `block_size`; a checkpoint's group of 128 needs `--block-size` 128
    /// or a divisor of it). Float16 and bfloat16 widen to float32 exactly, so a stored
    /// `code * a` is `a` to the bit: the tolerance is 0.
    pub fn float_ternary(
        &self,
        name: &str,
        (out, k): (usize, usize),
        block_size: usize,
    ) -> Result<Ternary> {
        use bitnet_math::quant::{detect_ternary, detect_ternary_at, Granularity};
        let wname = format!("{name}.weight");
        let info = self.info(&wname)?;
        let w = self.tensors.read_f32(&wname, info)?;
        detect_ternary(&w, out, k, 0.0)
            .or_else(|| detect_ternary_at(&w, out, k, Granularity::Group(block_size), 0.0))
            .ok_or_else(|| {
                BuildError::tensor(
                    self.tensors.path_of(info),
                    &wname,
                    format!(
                        "not ternary: without a quantization_config the weight must already be \
                         codes -1/0/+1 times one scale per tensor, per row, or per group of \
                         {block_size} along the input (--block-size), and it is none of these"
                    ),
                )
            })
    }

    /// A linear layer's codes and dequantization factor, as its transformers class computes
    /// them.
    pub fn linear(&self, name: &str, (out, k): (usize, usize)) -> Result<Linear> {
        let wname = format!("{name}.weight");
        let info = self.info(&wname)?;
        let path = self.tensors.path_of(info).to_path_buf();
        let form = self.config.linear;
        let weight_scale = || -> Result<f32> {
            let sname = format!("{name}.weight_scale");
            Ok(self.tensors.read_f32(&sname, self.info(&sname)?)?[0])
        };
        let terr = |e: hf::HfError| BuildError::tensor(&path, &wname, e.to_string());
        let (codes, scale, stored) = if info.dtype == Dtype::U8 {
            let raw = self.tensors.read(&wname, info)?;
            let codes = hf::unpack_packed(&raw, out, k).map_err(terr)?;
            (codes, rescale(form, weight_scale()?), true)
        } else {
            let w = self.tensors.read_f32(&wname, info)?;
            match form {
                LinearForm::AutoOnline => {
                    // WeightQuant's `codes / s`: every weight is `code * (1 / s)`, the
                    // quotient rounded once in float32, which `weight_quant` returns.
                    let (codes, scale) = hf::weight_quant(&w);
                    (codes, Rescale::Multiply(scale), false)
                }
                _ => {
                    let codes = hf::float_codes(&w).map_err(|e| {
                        BuildError::tensor(
                            &path,
                            &wname,
                            format!(
                                "{e}: autobitlinear offline uses the stored weight as it is, so it must hold ternary codes"
                            ),
                        )
                    })?;
                    (codes, rescale(form, weight_scale()?), true)
                }
            }
        };
        Ok(Linear {
            codes,
            out,
            k,
            scale,
            stored_as_codes: stored,
        })
    }
}

/// The end-of-sequence ids of `generation_config.json` (an id or a list; none when absent).
/// transformers' `generate` stops on these, which may be more than config.json's (chat
/// models add their end-of-turn token there), so onnxruntime-genai is told about both.
fn generation_eos(path: &Path, vocab_size: usize) -> Result<Vec<i64>> {
    let bytes = crate::files::read_capped(path, crate::files::MAX_CONFIG_BYTES)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        BuildError::config(
            path,
            format!("not a JSON object: {}", crate::error::json_error(&e)),
        )
    })?;
    let ids = match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a.iter().map(|x| x.as_i64()).collect(),
        Some(x) => x.as_i64().map(|i| vec![i]),
    };
    let ids = ids.ok_or_else(|| {
        BuildError::config(path, "`eos_token_id` must be a token id or a list of them")
    })?;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab_size) {
        return Err(BuildError::config(
            path,
            format!("`eos_token_id` {bad} is outside the vocabulary (vocab_size {vocab_size})"),
        ));
    }
    Ok(ids)
}

/// How a layer's class turns the integer product `y = q . codes` (int8 activation codes `q`,
/// per-token scale `s = 127 / max|x|`) into its output, in the class's own order of float
/// operations (transformers 5.23.0, `integrations/bitnet.py`), so that a graph computing `y`
/// exactly and then these steps rounds where transformers rounds:
///
/// * `BitLinear` (packed, offline): `y / (s * weight_scale)`, the product first
///   (`post_quant_process`).
/// * `AutoBitLinear` offline: `ActQuant` hands the matmul `q / s`, and the output is multiplied
///   by `weight_scale`: `(y / s) * weight_scale`.
/// * `AutoBitLinear` online: `WeightQuant` hands it `code * m` with `m = 1 / s_w` (rounded in
///   float32) and `ActQuant` `q / s`: `(y / s) * m`.
///
/// transformers' own float32 matmul rounds `q / s` and each partial sum of the last two; the
/// exact `y` divided once is the value those roundings approximate. `weight_scale` is read from
/// the checkpoint's float16/bfloat16/float32 value widened to float32 (exact): transformers'
/// buffer is float32 in a float32 model, and a bfloat16 buffer times a float32 tensor is
/// computed in float32 too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rescale {
    /// `y / (s * c)`.
    Divide(f32),
    /// `(y / s) * c`.
    Multiply(f32),
}

impl Rescale {
    /// The constant `c`.
    pub fn value(self) -> f32 {
        match self {
            Rescale::Divide(c) | Rescale::Multiply(c) => c,
        }
    }
}

/// `BitLinear` divides by `weight_scale`, `AutoBitLinear` offline multiplies.
fn rescale(form: LinearForm, weight_scale: f32) -> Rescale {
    match form {
        LinearForm::BitLinear => Rescale::Divide(weight_scale),
        _ => Rescale::Multiply(weight_scale),
    }
}
