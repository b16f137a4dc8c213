//! Text generation over a causal LM bundle (`flaxlayer_export.export_causal_lm` /
//! `export_lm`): prefill the prompt, then decode one token at a time, greedy or sampled as
//! Hugging Face's Flax `generate` samples (docs/generation.md).
//!
//! ```no_run
//! # fn main() -> flaxlayer::Result<()> {
//! use flaxlayer::generate::{GenerateOptions, Generator, Sampling};
//! let mut g = Generator::new("lm_bundle")?;
//! let opts = GenerateOptions { max_new_tokens: 20, sampling: Some(Sampling { temperature: 0.8, top_k: 50, top_p: 0.95, seed: 0 }), ..Default::default() };
//! for token in g.stream(&[5, 17, 42], &opts)? {
//!     println!("{}", token?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! There is no tokenizer: token ids in, token ids out.

use std::time::{Duration, Instant};

use crate::bundle::{Bundle, GenerationSpec};
use crate::layer::{BundleSource, FlaxLayer, Mode};
use crate::{DType, Error, PyTree, Result, Tensor};

/// How the next token is drawn: Hugging Face's Flax sampling (`do_sample=True`) with its
/// temperature, top-k and top-p warpers, under `prng_key = jax.random.PRNGKey(seed)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits (1: unchanged). Must be positive and finite.
    pub temperature: f32,
    /// Keeps the `top_k` most likely tokens (0: all). Hugging Face's `GenerationConfig`
    /// defaults to 50; here nothing is implied: pass 50 for its default.
    pub top_k: u32,
    /// Keeps the smallest set of most likely tokens whose probability reaches `top_p`
    /// (1: all). In `(0, 1]`.
    pub top_p: f32,
    /// `jax.random.PRNGKey(seed)` starts the key.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// What one generation does.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// `None`: greedy (the most likely token, the first on ties, as `jnp.argmax`).
    pub sampling: Option<Sampling>,
    /// More tokens that end the generation (after being returned), besides the model's
    /// `eos_token_id`.
    pub stop_token_ids: Vec<i64>,
    /// Whether the model's `eos_token_id` ends the generation (default true).
    pub stop_on_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 16, sampling: None, stop_token_ids: Vec::new(), stop_on_eos: true }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model's end-of-sequence token came (and was returned).
    Eos,
    /// A token of [`GenerateOptions::stop_token_ids`] came (and was returned).
    StopToken,
    /// [`GenerateOptions::max_new_tokens`] tokens came.
    MaxNewTokens,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens (without the prompt).
    pub output_ids: Vec<i64>,
    /// The prompt's length.
    pub prompt_tokens: usize,
    /// The prefill's wall time (the first token's logits).
    pub prefill: Duration,
    /// The wall time of everything after the prefill.
    pub decode: Duration,
    /// Why it ended.
    pub stop: StopReason,
}

impl Generation {
    /// New tokens per second after the prefill (the first token comes from the prefill and
    /// is not counted); 0 with fewer than two tokens.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.output_ids.len().saturating_sub(1);
        let s = self.decode.as_secs_f64();
        if n == 0 || s <= 0.0 {
            0.0
        } else {
            n as f64 / s
        }
    }
}

/// A causal LM bundle on a device, ready to generate: its prefill, decode and sample methods
/// over one device-resident cache. One generation at a time (`&mut self`).
pub struct Generator {
    layer: FlaxLayer,
    spec: GenerationSpec,
    /// What puts the cache back to empty: the counters at zero, or every state variable's
    /// initial value when the section names no counters.
    reset: Vec<(String, Tensor)>,
    logits_dtype: DType,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("bundle", &self.layer.bundle().dir()).field("max_len", &self.spec.max_len).finish()
    }
}

impl Generator {
    /// A generator over the bundle at `bundle` on the default plugin's first device.
    pub fn new(bundle: impl Into<BundleSource>) -> Result<Generator> {
        let bundle = bundle.into().open()?;
        let layer = FlaxLayer::builder(bundle.clone()).build()?;
        Generator::from_layer(layer)
    }

    /// A generator over a layer built on a generation bundle (any method chosen: it calls
    /// them by name). The layer's state should hold an empty cache; each generation starts
    /// from one.
    pub fn from_layer(layer: FlaxLayer) -> Result<Generator> {
        let spec = generation_spec(layer.bundle())?;
        let specs = layer.non_trainable_weights();
        let reset = if spec.counters.is_empty() {
            layer.variables()?.into_iter().filter(|(n, _)| specs.iter().any(|s| &s.name == n)).collect()
        } else {
            spec.counters
                .iter()
                .map(|n| {
                    let s = specs.iter().find(|s| &s.name == n).ok_or_else(|| Error::format("manifest.json", format!("generation.counters names {n:?}, not a state variable")))?;
                    Ok((n.clone(), Tensor::zeros(s.dtype, s.shape.clone())?))
                })
                .collect::<Result<_>>()?
        };
        layer.compile_inference()?;
        let logits_dtype = layer.bundle().method(&spec.decode)?.outputs.iter().find(|o| o.name == "logits").map_or(DType::F32, |o| o.dtype);
        Ok(Generator { layer, spec, reset, logits_dtype })
    }

    /// The bundle's generation section.
    pub fn spec(&self) -> &GenerationSpec {
        &self.spec
    }

    /// The layer underneath.
    pub fn layer(&self) -> &FlaxLayer {
        &self.layer
    }

    /// Generates after `prompt`, calling `on_token` with each new token as it comes; returns
    /// the whole generation.
    pub fn generate(&mut self, prompt: &[i64], opts: &GenerateOptions, mut on_token: impl FnMut(i64)) -> Result<Generation> {
        let mut stream = self.stream(prompt, opts)?;
        let mut output_ids = Vec::new();
        for t in stream.by_ref() {
            let t = t?;
            on_token(t);
            output_ids.push(t);
        }
        let stop = stream.stop.unwrap_or(StopReason::MaxNewTokens);
        Ok(Generation { output_ids, prompt_tokens: prompt.len(), prefill: stream.prefill, decode: stream.started.elapsed(), stop })
    }

    /// Checks `prompt` and `opts` against the bundle, resets the cache and runs the prefill;
    /// the new tokens then come from the iterator, one per `next()`.
    pub fn stream<'a>(&'a mut self, prompt: &[i64], opts: &GenerateOptions) -> Result<TokenStream<'a>> {
        self.check(prompt, opts)?;
        let t0 = Instant::now();
        self.layer.set_variables(&self.reset)?;
        let logits = self.prefill(prompt)?;
        let prefill = t0.elapsed();
        let key = opts.sampling.map(|s| crate::layer::seed_key(s.seed));
        Ok(TokenStream { g: self, opts: opts.clone(), logits: Some(logits), key, produced: 0, stop: None, prefill, started: Instant::now(), failed: false })
    }

    fn check(&self, prompt: &[i64], opts: &GenerateOptions) -> Result<()> {
        let (max_len, vocab) = (self.spec.max_len, self.spec.vocab_size);
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "is empty; it needs at least one token"));
        }
        if let Some((i, t)) = prompt.iter().enumerate().find(|(_, &t)| t < 0 || t as u64 >= vocab as u64) {
            return Err(Error::invalid("prompt", format!("token {t} at position {i} is outside the vocabulary 0..{vocab}")));
        }
        if opts.max_new_tokens == 0 {
            return Err(Error::invalid("max_new_tokens", "is 0; ask for at least one token"));
        }
        // The last token is never fed back, so the cache holds prompt + new - 1 tokens.
        let needed = prompt.len().checked_add(opts.max_new_tokens).map(|n| n - 1);
        if needed.is_none_or(|n| n > max_len) {
            return Err(Error::invalid(
                "prompt and max_new_tokens",
                format!("{} prompt tokens + {} new tokens - 1 exceed the bundle's max_len {max_len}", prompt.len(), opts.max_new_tokens),
            ));
        }
        if let Some(s) = &opts.sampling {
            if !(s.temperature.is_finite() && s.temperature > 0.0) {
                return Err(Error::invalid("temperature", format!("{} is not a positive finite number", s.temperature)));
            }
            if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                return Err(Error::invalid("top_p", format!("{} is not in (0, 1]", s.top_p)));
            }
            if s.top_k > i32::MAX as u32 {
                return Err(Error::invalid("top_k", format!("{} is too large", s.top_k)));
            }
            if self.logits_dtype != DType::F32 {
                return Err(Error::invalid("sampling", format!("the bundle's logits are {:?}; sampling takes float32 logits", self.logits_dtype)));
            }
        }
        Ok(())
    }

    /// Runs the prompt through the prefill methods in chunks: each chunk at the smallest
    /// exported length that holds the rest of the prompt and fits the cache, else the largest
    /// that fits (decode, length 1, always does). Returns the last token's logits.
    fn prefill(&mut self, prompt: &[i64]) -> Result<Tensor> {
        let mut pos = 0;
        let mut logits = None;
        while pos < prompt.len() {
            let (method, len, take) = chunk(&self.spec, pos, prompt.len() - pos);
            let mut ids = vec![0i32; len];
            for (d, &t) in ids.iter_mut().zip(&prompt[pos..pos + take]) {
                *d = t as i32;
            }
            let ids = Tensor::from_vec(vec![1, len], ids)?;
            let inputs = if len == 1 && method == self.spec.decode {
                PyTree::dict([("input_ids", PyTree::leaf(ids))])
            } else {
                PyTree::dict([("input_ids", PyTree::leaf(ids)), ("length", PyTree::leaf(Tensor::from_vec(vec![1], vec![take as i32])?))])
            };
            logits = Some(take_logits(self.layer.call_method(&method, &inputs, Mode::Inference)?)?);
            pos += take;
        }
        logits.ok_or_else(|| Error::invalid("prompt", "is empty"))
    }

    fn decode(&mut self, token: i64) -> Result<Tensor> {
        let ids = Tensor::from_vec(vec![1, 1], vec![token as i32])?;
        let name = self.spec.decode.clone();
        take_logits(self.layer.call_method(&name, PyTree::dict([("input_ids", PyTree::leaf(ids))]), Mode::Inference)?)
    }

    fn sample(&mut self, logits: &Tensor, key: [u32; 2], s: &Sampling) -> Result<(i64, [u32; 2])> {
        let inputs = PyTree::dict([
            ("key", PyTree::leaf(Tensor::from_vec(vec![1, 2], key.to_vec())?)),
            ("logits", PyTree::leaf(logits.clone())),
            ("temperature", PyTree::leaf(Tensor::from_vec(vec![1], vec![s.temperature])?)),
            ("top_k", PyTree::leaf(Tensor::from_vec(vec![1], vec![s.top_k as i32])?)),
            ("top_p", PyTree::leaf(Tensor::from_vec(vec![1], vec![s.top_p])?)),
        ]);
        let name = self.spec.sample.clone();
        let out = self.layer.predict_method(&name, &inputs)?;
        let token = out.get_tensor("token")?.to_vec::<i32>()?;
        let next = out.get_tensor("key")?.to_vec::<u32>()?;
        match (token.as_slice(), next.as_slice()) {
            (&[t], &[a, b]) => Ok((t as i64, [a, b])),
            _ => Err(Error::invalid("sample method", "gave no [1] token and [1, 2] key")),
        }
    }
}

/// The generation section of `bundle`, or a typed error naming what is missing.
pub fn generation_spec(bundle: &Bundle) -> Result<GenerationSpec> {
    bundle.manifest().generation.clone().ok_or_else(|| {
        Error::invalid(format!("bundle {}", bundle.dir().display()), "has no generation section; export it with flaxlayer_export.export_causal_lm or export_lm")
    })
}

/// The method, its length and how many prompt tokens it takes, for the chunk at `pos` with
/// `rest` tokens to go.
fn chunk(spec: &GenerationSpec, pos: usize, rest: usize) -> (String, usize, usize) {
    let room = spec.max_len.saturating_sub(pos);
    let fits = |l: usize| l <= room;
    if let Some(p) = spec.prefill.iter().find(|p| p.length >= rest && fits(p.length)) {
        return (p.method.clone(), p.length, rest);
    }
    match spec.prefill.iter().rev().find(|p| fits(p.length) && p.length <= rest) {
        Some(p) => (p.method.clone(), p.length, p.length),
        None => (spec.decode.clone(), 1, 1),
    }
}

fn take_logits(out: PyTree) -> Result<Tensor> {
    let t = out.get_tensor("logits")?.clone();
    Ok(t)
}

/// The index of the largest value, the first on ties (`jnp.argmax`); NaN counts as largest,
/// as in JAX.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        let b = values[best];
        if b.is_nan() {
            break;
        }
        if v.is_nan() || v > b {
            best = i;
        }
    }
    best
}

/// The new tokens of one generation, one per `next()` (see [`Generator::stream`]).
pub struct TokenStream<'a> {
    g: &'a mut Generator,
    opts: GenerateOptions,
    logits: Option<Tensor>,
    key: Option<[u32; 2]>,
    produced: usize,
    stop: Option<StopReason>,
    prefill: Duration,
    started: Instant,
    failed: bool,
}

impl TokenStream<'_> {
    /// The prefill's wall time.
    pub fn prefill_time(&self) -> Duration {
        self.prefill
    }

    /// Why the generation ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    fn step(&mut self) -> Result<Option<i64>> {
        if self.stop.is_some() || self.failed {
            return Ok(None);
        }
        let logits = match self.logits.take() {
            Some(l) => l,
            None => return Ok(None),
        };
        let token = match (&self.opts.sampling, self.key) {
            (Some(s), Some(key)) => {
                let (t, next) = self.g.sample(&logits, key, s)?;
                self.key = Some(next);
                t
            }
            _ => {
                let v = logits.to_f64_vec();
                let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
                argmax(&v) as i64
            }
        };
        self.produced += 1;
        if self.opts.stop_on_eos && self.g.spec.eos_token_id.contains(&token) {
            self.stop = Some(StopReason::Eos);
        } else if self.opts.stop_token_ids.contains(&token) {
            self.stop = Some(StopReason::StopToken);
        } else if self.produced >= self.opts.max_new_tokens {
            self.stop = Some(StopReason::MaxNewTokens);
        } else {
            self.logits = Some(self.g.decode(token)?);
        }
        Ok(Some(token))
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<i64>;

    fn next(&mut self) -> Option<Result<i64>> {
        match self.step() {
            Ok(t) => t.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::PrefillSpec;

    fn spec(lens: &[usize], max_len: usize) -> GenerationSpec {
        GenerationSpec {
            version: 1,
            max_len,
            vocab_size: 10,
            eos_token_id: vec![],
            pad_token_id: None,
            batch_sizes: vec![1],
            decode: "decode".into(),
            prefill: lens.iter().map(|&l| PrefillSpec { length: l, method: format!("prefill_{l}") }).collect(),
            sample: "sample".into(),
            counters: vec![],
        }
    }

    #[test]
    fn chunks_take_the_smallest_length_that_holds_the_rest_and_fits() {
        let s = spec(&[8, 16], 48);
        assert_eq!(chunk(&s, 0, 5), ("prefill_8".into(), 8, 5));
        assert_eq!(chunk(&s, 0, 9), ("prefill_16".into(), 16, 9));
        assert_eq!(chunk(&s, 0, 21), ("prefill_16".into(), 16, 16));
        assert_eq!(chunk(&s, 16, 5), ("prefill_8".into(), 8, 5));
        // near the end of the cache: a padded chunk must not run past max_len
        assert_eq!(chunk(&s, 42, 5), ("decode".into(), 1, 1));
        assert_eq!(chunk(&s, 38, 9), ("prefill_8".into(), 8, 8));
        assert_eq!(chunk(&s, 40, 3), ("prefill_8".into(), 8, 3));
    }

    #[test]
    fn argmax_is_first_on_ties_and_nan_wins() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[1.0, f32::NAN, 5.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }
}
