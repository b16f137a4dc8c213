//! The manifest's `generation` section: which methods of a causal LM bundle prefill a prompt,
//! decode a token and sample one (docs/generation.md, docs/bundle-format.md).

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, MethodSpec};
use crate::{DType, Error, Result};

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

impl GenerationSpec {
    /// Checks the section against the manifest's methods: every named method exists and
    /// takes and gives the leaves the section promises.
    pub(crate) fn validate(&self, m: &Manifest) -> Result<()> {
        let bad = |reason: String| Err(Error::format("manifest.json", format!("generation: {reason}")));
        if self.version != GENERATION_VERSION {
            return bad(format!("version {} is not supported (this crate reads {GENERATION_VERSION})", self.version));
        }
        if self.max_len < 2 || self.vocab_size == 0 {
            return bad(format!("max_len {} must be at least 2 and vocab_size {} positive", self.max_len, self.vocab_size));
        }
        if self.eos_token_id.iter().any(|&t| t < 0 || t as u64 >= self.vocab_size as u64) {
            return bad(format!("eos_token_id {:?} outside the vocabulary 0..{}", self.eos_token_id, self.vocab_size));
        }
        if !self.batch_sizes.contains(&1) {
            return bad(format!("batch_sizes {:?} lack 1, which the generator runs", self.batch_sizes));
        }
        if self.prefill.is_empty() || self.prefill.windows(2).any(|w| w[0].length >= w[1].length) {
            return bad("prefill must list prompt lengths in ascending order".into());
        }
        if let Some(p) = self.prefill.iter().find(|p| p.length < 2 || p.length > self.max_len) {
            return bad(format!("prefill length {} is not in 2..={}", p.length, self.max_len));
        }
        if let Some(c) = self.counters.iter().find(|c| m.variable(c).map_or(true, |v| v.is_param())) {
            return bad(format!("counters names {c:?}, which is not a state variable"));
        }
        let method = |name: &str| m.methods.get(name).ok_or_else(|| Error::format("manifest.json", format!("generation names method {name:?}, which the bundle lacks")));
        check_inputs(method(&self.decode)?, "decode", &self.decode, &[("input_ids", DType::I32, &[1])])?;
        for p in &self.prefill {
            check_inputs(method(&p.method)?, "prefill", &p.method, &[("input_ids", DType::I32, &[p.length]), ("length", DType::I32, &[])])?;
        }
        let logits = method(&self.decode)?.outputs.iter().find(|o| o.name == "logits").map(|o| o.dtype).unwrap_or(DType::F32);
        let v = self.vocab_size;
        let sample = method(&self.sample)?;
        check_inputs(sample, "sample", &self.sample, &[("key", DType::U32, &[2]), ("logits", logits, &[v]), ("temperature", logits, &[]), ("top_k", DType::I32, &[]), ("top_p", logits, &[])])?;
        if sample.inference.iter().all(|c| c.batch_size != Some(1)) {
            return bad(format!("the sample method {:?} is not exported at batch 1", self.sample));
        }
        for name in std::iter::once(&self.decode).chain(self.prefill.iter().map(|p| &p.method)) {
            let out = &method(name)?.outputs;
            if !out.iter().any(|o| o.name == "logits" && o.shape.len() == 2 && o.shape[1] == v) {
                return bad(format!("method {name:?} gives no logits [B, {v}]"));
            }
        }
        Ok(())
    }
}

/// `method`'s inputs are exactly `want` (name, dtype, shape after the batch axis), sorted by
/// name as the exporter lists them.
fn check_inputs(method: &MethodSpec, role: &str, name: &str, want: &[(&str, DType, &[usize])]) -> Result<()> {
    let got: Vec<(&str, DType, &[usize])> = method.inputs.iter().map(|s| (s.name.as_str(), s.dtype, s.shape.get(1..).unwrap_or(&[]))).collect();
    if got != want {
        return Err(Error::format("manifest.json", format!("generation.{role} names method {name:?}, which takes {got:?}, expected {want:?} (name, dtype, shape after the batch axis)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/lm_gpt2/manifest.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest> {
        Manifest::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn the_committed_section_parses() {
        let m = parse(&manifest()).unwrap();
        let g = m.generation.unwrap();
        assert_eq!((g.max_len, g.vocab_size, g.eos_token_id.as_slice()), (48, 211, &[210][..]));
        assert_eq!(g.prefill.iter().map(|p| p.length).collect::<Vec<_>>(), [8, 16]);
        assert_eq!(g.counters.len(), 2);
    }

    #[test]
    fn bad_sections_are_refused() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/generation/version", serde_json::json!(2), "version 2"),
            ("/generation/decode", serde_json::json!("nope"), "lacks"),
            ("/generation/sample", serde_json::json!("prefill_8"), "sample"),
            ("/generation/decode", serde_json::json!("prefill_8"), "decode"),
            ("/generation/eos_token_id", serde_json::json!([211]), "outside the vocabulary"),
            ("/generation/eos_token_id", serde_json::json!([-1]), "outside the vocabulary"),
            ("/generation/batch_sizes", serde_json::json!([2]), "lack 1"),
            ("/generation/max_len", serde_json::json!(1), "max_len"),
            ("/generation/vocab_size", serde_json::json!(212), "logits"),
            ("/generation/prefill/1/length", serde_json::json!(8), "ascending"),
            ("/generation/prefill/1/length", serde_json::json!(49), "2..=48"),
            ("/generation/prefill/1/method", serde_json::json!("prefill_8"), "prefill_8"),
            ("/generation/counters/0", serde_json::json!("params/transformer/wte/embedding"), "not a state variable"),
            ("/generation/counters/0", serde_json::json!("cache/nope"), "not a state variable"),
        ];
        for (ptr, value, says) in cases {
            let mut m = manifest();
            *m.pointer_mut(ptr).unwrap() = value;
            let e = parse(&m).unwrap_err();
            assert!(matches!(e, Error::InvalidFormat { .. }) && e.to_string().contains(says), "{ptr}: {e}");
        }
    }
}
