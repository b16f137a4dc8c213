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
    pub(crate) version: u32,
    /// The cache length: prompt plus generated tokens of one generation.
    pub(crate) max_len: usize,
    /// The vocabulary size: the logits' last dimension.
    pub(crate) vocab_size: usize,
    /// The tokens that end a generation (the model's `eos_token_id`, possibly several).
    #[serde(default)]
    pub(crate) eos_token_id: Vec<i64>,
    /// The model's padding token, informational.
    #[serde(default)]
    pub(crate) pad_token_id: Option<i64>,
    /// The batch sizes prefill and decode are exported at.
    pub(crate) batch_sizes: Vec<usize>,
    /// The method that runs one token: `{"input_ids": int32[B, 1]} -> {"logits": [B, V]}`.
    pub(crate) decode: String,
    /// The prefill methods by prompt length, ascending:
    /// `{"input_ids": int32[B, L], "length": int32[B]} -> {"logits": [B, V]}`.
    pub(crate) prefill: Vec<PrefillSpec>,
    /// The sampling step, batch 1: `{"logits", "key", "temperature", "top_k", "top_p"} ->
    /// {"key", "token"}`.
    pub(crate) sample: String,
    /// The state variables that count the tokens in the cache (Hugging Face's
    /// `cache_index`es): a new generation sets them to zero. Empty: every state variable is
    /// put back to its initial value.
    #[serde(default)]
    pub(crate) counters: Vec<String>,
}

impl GenerationSpec {
    /// The section's version (1).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The cache length: prompt plus generated tokens of one generation.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The vocabulary size: the logits' last dimension.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokens that end a generation (the model's `eos_token_id`, possibly several).
    pub fn eos_token_id(&self) -> &[i64] {
        &self.eos_token_id
    }

    /// The model's padding token, informational.
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token_id
    }

    /// The batch sizes prefill and decode are exported at.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.batch_sizes
    }

    /// The method that runs one token: `{"input_ids": int32[B, 1]} -> {"logits": [B, V]}`.
    pub fn decode(&self) -> &str {
        &self.decode
    }

    /// The prefill methods by prompt length, ascending:
    /// `{"input_ids": int32[B, L], "length": int32[B]} -> {"logits": [B, V]}`.
    pub fn prefill(&self) -> &[PrefillSpec] {
        &self.prefill
    }

    /// The sampling step, batch 1: `{"logits", "key", "temperature", "top_k", "top_p"} ->
    /// {"key", "token"}`.
    pub fn sample(&self) -> &str {
        &self.sample
    }

    /// The state variables that count the tokens in the cache (Hugging Face's
    /// `cache_index`es): a new generation sets them to zero. Empty: every state variable is
    /// put back to its initial value.
    pub fn counters(&self) -> &[String] {
        &self.counters
    }
}

/// One exported prompt length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillSpec {
    /// The prompt length `L`.
    pub(crate) length: usize,
    /// Its method.
    pub(crate) method: String,
}

impl PrefillSpec {
    /// The prompt length `L`.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Its method.
    pub fn method(&self) -> &str {
        &self.method
    }
}
