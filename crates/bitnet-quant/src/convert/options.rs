//! What a conversion is asked to do: the options the driver passes to every stage, and the
//! progress callback.

use bitnet_model::load::Mappings;
use bitnet_model::save::Writer;
use regex::Regex;

use crate::emit::Emitter;
use crate::quant::QuantConfig;

/// Which linear layers to convert.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
    pub min_params: u64,
    /// Convert the output projection feeding a graph output to ternary like the other layers.
    pub quantize_head: bool,
}

pub struct ConvertOptions<'a> {
    pub quant: QuantConfig,
    pub selection: Selection,
    pub emitter: &'a dyn Emitter,
    /// The embedding and LM head as 4- or 8-bit tables (ONNX Runtime targets); a head taken
    /// here is left out of the ternary layers.
    pub vocab: crate::vocab::VocabOptions,
    /// `--logits last`: the LM heads compute the last position only
    /// ([`crate::vocab::last_position_logits`]).
    pub last_logits: bool,
    /// The command line flags, recorded in the output's metadata.
    pub flags: String,
    /// Told what is queued and what is done (the library never prints).
    pub progress: Option<&'a dyn Progress>,
    /// The memory maps the model's payloads point into: each weight's pages are released once
    /// it is quantized, and the next batch's are read ahead.
    pub source: Option<&'a Mappings>,
    /// Takes every initializer an emitter adds, once final: `save::Writer::store` moves its
    /// payload to the output's external data file at once.
    pub sink: Option<&'a Writer>,
    /// Bytes of float copies and codes one batch of weights may hold; a batch always takes at
    /// least one weight. `None`: 512 KiB per thread, or the largest weight's need if more.
    /// Batching never changes the output.
    pub batch_bytes: Option<u64>,
}

/// Progress of a conversion, as it happens. Calls come one at a time, in weight order (not
/// necessarily from the calling thread).
pub trait Progress: Sync {
    /// `weights` more distinct weights holding `bytes` bytes will be converted (called once
    /// per graph that has any).
    fn queued(&self, weights: usize, bytes: u64);
    /// `weight` (`bytes` bytes before conversion) was converted.
    fn converted(&self, weight: &str, bytes: u64);
}
