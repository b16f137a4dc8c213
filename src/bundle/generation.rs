//! The manifest's `generation` section: which methods of a causal LM bundle prefill a prompt,
//! decode a token and sample one (docs/generation.md, docs/bundle-format.md).

use serde::{Deserialize, Serialize};

/// The `generation` section's versions this crate reads.
pub const GENERATION_VERSION: u32 = 1;

/// A causal LM's generation methods, as `flaxlayer_export.export_causal_lm` / `export_lm`
/// write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// The section's version (1).
    pub version: u32,
    /// The cache length: prompt plus generated tokens of one generation.
    pub max_len: usize,
    /// The vocabulary size: the logits' last dimension.
    pub vocab_size: usize,
    /// The tokens that end a generation (the model's `eos_token_id`, possibly several).
    #[serde(default)]
    pub eos_token_id: Vec<i64>,
    /// The model's padding token, informational.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// The batch sizes prefill and decode are exported at.
    pub batch_sizes: Vec<usize>,
    /// The method that runs one token: `{"input_ids": int32[B, 1]} -> {"logits": [B, V]}`.
    pub decode: String,
    /// The prefill methods by prompt length, ascending:
    /// `{"input_ids": int32[B, L], "length": int32[B]} -> {"logits": [B, V]}`.
    pub prefill: Vec<PrefillSpec>,
    /// The sampling step, batch 1: `{"logits", "key", "temperature", "top_k", "top_p"} ->
    /// {"key", "token"}`.
    pub sample: String,
    /// The state variables that count the tokens in the cache (Hugging Face's
    /// `cache_index`es): a new generation sets them to zero. Empty: every state variable is
    /// put back to its initial value.
    #[serde(default)]
    pub counters: Vec<String>,
}

/// One exported prompt length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillSpec {
    /// The prompt length `L`.
    pub length: usize,
    /// Its method.
    pub method: String,
}
