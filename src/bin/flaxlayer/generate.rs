//! `flaxlayer generate`: new token ids after a prompt of token ids, from a causal LM bundle
//! (`export_causal_lm`; docs/generation.md). No tokenizer: ids in, ids out.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use flaxlayer::generate::{GenerateOptions, Generation, Generator, Sampling, StopReason};
use flaxlayer::FlaxLayer;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A bundle with a generation section (flaxlayer_export.export_causal_lm).
    bundle: PathBuf,
    /// The prompt's token ids, comma-separated (`5,17,42`).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    prompt_ids: Vec<i64>,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Sample (Hugging Face's Flax sampling) with this temperature; without --temperature,
    /// --top-k, --top-p or --seed the decoding is greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample from the K most likely tokens (0: all).
    #[arg(long)]
    top_k: Option<u32>,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long)]
    top_p: Option<f32>,
    /// The sampling seed: the key is jax.random.PRNGKey(SEED) (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// More token ids that end the generation (comma-separated), besides the model's EOS.
    #[arg(long, value_delimiter = ',')]
    stop_token_ids: Vec<i64>,
    /// Don't stop at the model's eos_token_id.
    #[arg(long)]
    ignore_eos: bool,
    /// Print the tokens as they come, then as the last line one JSON object: output_ids,
    /// prompt_tokens, prefill_ms, decode_tokens_per_s.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs, common: &super::Common) -> Result<()> {
    let sampled = args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some() || args.seed.is_some();
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let sampling = sampled.then(|| Sampling {
        temperature: args.temperature.unwrap_or(1.0),
        top_k: args.top_k.unwrap_or(0),
        top_p: args.top_p.unwrap_or(1.0),
        seed: args.seed.unwrap_or(0),
    });
    let layer = common.apply(FlaxLayer::builder(&args.bundle)).build().with_context(|| format!("loading bundle {}", args.bundle.display()))?;
    let mut generator = Generator::from_layer(layer)?;
    let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, stop_token_ids: args.stop_token_ids.clone(), stop_on_eos: !args.ignore_eos };
    // Each token is printed as it comes; a failed write (a closed pipe, a full disk) ends the
    // generation there instead of decoding the rest for nobody.
    let mut stream = generator.stream(&args.prompt_ids, &opts)?;
    let (prefill, started) = (stream.prefill_time(), Instant::now());
    let mut output_ids = Vec::new();
    for t in stream.by_ref() {
        let t = t?;
        outln!("{t}");
        std::io::stdout().flush().context("writing the tokens to standard output")?;
        output_ids.push(t);
    }
    let stop = stream.stop_reason().unwrap_or(StopReason::MaxNewTokens);
    let g = Generation { output_ids, prompt_tokens: args.prompt_ids.len(), prefill, decode: started.elapsed(), stop };
    if args.json {
        let line = serde_json::json!({
            "output_ids": g.output_ids,
            "prompt_tokens": g.prompt_tokens,
            "prefill_ms": g.prefill.as_secs_f64() * 1e3,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        });
        outln!("{line}");
    }
    Ok(())
}
