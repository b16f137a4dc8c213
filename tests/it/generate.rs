//! Generation from causal LM bundles (hlo/lm_*: tiny transformers Flax GPT-2, Llama, Mistral,
//! Gemma with random weights, `export_causal_lm`): the tokens must be Hugging Face's Flax
//! `generate`'s (hlo/lm_expected.json, scripts/make_lm_fixtures.py), greedy at an exported
//! prompt length (8), at one that is not (5), over two prefill chunks (21), and sampled with
//! seeds, temperature, top-k and top-p; from the Rust API, the CLI and both server endpoints.

use std::process::{Command, Stdio};
use std::time::Duration;

use flaxlayer::generate::{GenerateOptions, Generator, Sampling, StopReason};
use flaxlayer::{FlaxLayer, Mode, PyTree, Tensor};
use serde_json::{json, Value};

use crate::common::{client, hlo, start_server};

const MODELS: [&str; 4] = ["lm_gpt2", "lm_llama", "lm_mistral", "lm_gemma"];

struct Case {
    prompt: Vec<i64>,
    sampling: Option<Sampling>,
    output_ids: Vec<i64>,
}

fn cases(model: &str) -> (usize, Vec<Case>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(hlo("lm_expected.json")).unwrap()).unwrap();
    let n = v["max_new_tokens"].as_u64().unwrap() as usize;
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
    let list = v["models"][model].as_array().unwrap().iter().map(|c| Case {
        prompt: ids(&c["prompt"]),
        sampling: c.get("seed").map(|s| Sampling {
            temperature: c["temperature"].as_f64().unwrap() as f32,
            top_k: c["top_k"].as_u64().unwrap() as u32,
            top_p: c["top_p"].as_f64().unwrap() as f32,
            seed: s.as_u64().unwrap(),
        }),
        output_ids: ids(&c["output_ids"]),
    });
    (n, list.collect())
}

fn generator(model: &str) -> Generator {
    Generator::from_layer(FlaxLayer::builder(hlo(model)).client(client()).build().unwrap()).unwrap()
}

fn opts(n: usize, sampling: Option<Sampling>) -> GenerateOptions {
    GenerateOptions { max_new_tokens: n, sampling, stop_on_eos: false, ..Default::default() }
}

#[test]
fn the_rust_api_gives_hugging_faces_tokens() {
    for model in MODELS {
        let (n, cases) = cases(model);
        let mut g = generator(model);
        for c in &cases {
            let mut streamed = Vec::new();
            let got = g.generate(&c.prompt, &opts(n, c.sampling), |t| streamed.push(t)).unwrap();
            assert_eq!(got.output_ids, c.output_ids, "{model}: prompt {:?}, sampling {:?}", c.prompt, c.sampling);
            assert_eq!(streamed, got.output_ids, "{model}: the callback saw each token once, in order");
            assert_eq!((got.prompt_tokens, got.stop), (c.prompt.len(), StopReason::MaxNewTokens));
        }
        // the iterator gives the same tokens, one per next()
        let c = &cases[3];
        let it: Vec<i64> = g.stream(&c.prompt, &opts(n, c.sampling)).unwrap().map(Result::unwrap).collect();
        assert_eq!(it, c.output_ids, "{model}: stream");
    }
}

#[test]
fn generation_stops_on_stop_tokens_and_eos() {
    let (n, cases) = cases("lm_llama");
    let mut g = generator("lm_llama");
    let c = &cases[2];
    let stop = c.output_ids[3];
    let first = c.output_ids.iter().position(|&t| t == stop).unwrap();
    let o = GenerateOptions { stop_token_ids: vec![stop], ..opts(n, None) };
    let got = g.generate(&c.prompt, &o, |_| {}).unwrap();
    assert_eq!((got.output_ids.as_slice(), got.stop), (&c.output_ids[..=first], StopReason::StopToken));
    // The bundle's eos is 210; a copy whose eos is the fourth token stops there, eos included.
    let dir = tempfile::tempdir().unwrap();
    crate::common::copy_dir(&hlo("lm_llama"), dir.path());
    let mpath = dir.path().join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["generation"]["eos_token_id"] = json!([stop]);
    std::fs::write(&mpath, m.to_string()).unwrap();
    let mut g = Generator::from_layer(FlaxLayer::builder(dir.path()).client(client()).build().unwrap()).unwrap();
    let got = g.generate(&c.prompt, &GenerateOptions { stop_on_eos: true, ..opts(n, None) }, |_| {}).unwrap();
    assert_eq!((got.output_ids.as_slice(), got.stop), (&c.output_ids[..=first], StopReason::Eos));
}

#[test]
fn bad_prompts_and_options_are_refused_and_the_generator_still_works() {
    let (n, cases) = cases("lm_gpt2");
    let mut g = generator("lm_gpt2");
    let max_len = g.spec().max_len();
    let sampled = |s: Sampling| opts(4, Some(s));
    let refusals: Vec<(Vec<i64>, GenerateOptions, &str)> = vec![
        (vec![], opts(4, None), "empty"),
        (vec![1, 211], opts(4, None), "outside the vocabulary"),
        (vec![1, -1], opts(4, None), "outside the vocabulary"),
        (vec![1; max_len], opts(2, None), "exceed the bundle's max_len"),
        (vec![1], opts(usize::MAX, None), "exceed the bundle's max_len"),
        (vec![1], opts(0, None), "max_new_tokens"),
        (vec![1], sampled(Sampling { temperature: 0.0, ..Default::default() }), "temperature"),
        (vec![1], sampled(Sampling { temperature: f32::NAN, ..Default::default() }), "temperature"),
        (vec![1], sampled(Sampling { top_p: 0.0, ..Default::default() }), "top_p"),
        (vec![1], sampled(Sampling { top_p: 1.5, ..Default::default() }), "top_p"),
    ];
    for (prompt, o, says) in refusals {
        let e = g.generate(&prompt, &o, |_| {}).unwrap_err().to_string();
        assert!(e.contains(says), "{prompt:?} {o:?}: {e}");
    }
    // a prompt that fills the cache to the last token still generates that token
    let full = g.generate(&vec![3; max_len], &opts(1, None), |_| {}).unwrap();
    assert_eq!(full.output_ids.len(), 1);
    let c = &cases[0];
    assert_eq!(g.generate(&c.prompt, &opts(n, c.sampling), |_| {}).unwrap().output_ids, c.output_ids);
}

/// The regression test of "a layer is bound to one method": prefill and decode are two
/// methods of one bundle over one device-resident cache.
#[test]
fn a_layer_calls_every_method_of_its_bundle_over_one_state() {
    let (_, cases) = cases("lm_mistral");
    let c = &cases[0]; // an 8-token prompt, exported length 8
    let mut layer = FlaxLayer::builder(hlo("lm_mistral")).client(client()).build().unwrap();
    assert_eq!(layer.method(), "decode");
    let names: Vec<&str> = layer.method_names().collect();
    assert_eq!(names, ["decode", "prefill_16", "prefill_8", "sample"]);
    let ids: Vec<i32> = c.prompt.iter().map(|&t| t as i32).collect();
    let inputs = PyTree::dict([("input_ids", PyTree::leaf(Tensor::from_vec(vec![1, 8], ids).unwrap())), ("length", PyTree::leaf(Tensor::from_vec(vec![1], vec![8i32]).unwrap()))]);
    let argmax = |out: &PyTree| flaxlayer::generate::argmax(&out.get_tensor("logits").unwrap().to_vec::<f32>().unwrap()) as i64;
    let mut t = argmax(&layer.call_method("prefill_8", &inputs, Mode::Inference).unwrap());
    let mut got = vec![t];
    for _ in 1..4 {
        let ids = PyTree::dict([("input_ids", PyTree::leaf(Tensor::from_vec(vec![1, 1], vec![t as i32]).unwrap()))]);
        t = argmax(&layer.call(&ids, Mode::Inference).unwrap()); // the default method, decode
        got.push(t);
    }
    assert_eq!(got, c.output_ids[..4], "decode continued the cache prefill_8 wrote");
    let e = layer.call_method("nope", &inputs, Mode::Inference).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("prefill_8"), "{e}");
    let e = layer.call_method("prefill_8", &inputs, Mode::Training).unwrap_err().to_string();
    assert!(e.contains("no computations"), "{e}");
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flaxlayer")).args(args).output().unwrap()
}

#[test]
fn the_cli_prints_hugging_faces_tokens() {
    for model in MODELS {
        let (n, cases) = cases(model);
        // greedy at a length that was not exported, and the second sampled case
        for c in [&cases[1], &cases[4]] {
            let bundle = hlo(model);
            let prompt = c.prompt.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
            let n = n.to_string();
            let mut args = vec!["generate", bundle.to_str().unwrap(), "--prompt-ids", &prompt, "--max-new-tokens", &n, "--ignore-eos", "--json"];
            let s = c.sampling.map(|s| [s.temperature.to_string(), s.top_k.to_string(), s.top_p.to_string(), s.seed.to_string()]);
            if let Some([t, k, p, seed]) = &s {
                args.extend(["--temperature", t, "--top-k", k, "--top-p", p, "--seed", seed]);
            }
            let out = cli(&args);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
            let lines: Vec<&str> = stdout.lines().collect();
            let (last, tokens) = lines.split_last().unwrap();
            let tokens: Vec<i64> = tokens.iter().map(|l| l.parse().unwrap()).collect();
            assert_eq!(tokens, c.output_ids, "{model} {args:?}");
            let j: Value = serde_json::from_str(last).unwrap();
            assert_eq!(j["output_ids"], json!(c.output_ids));
            assert_eq!(j["prompt_tokens"], json!(c.prompt.len()));
            assert!(j["prefill_ms"].as_f64().unwrap() > 0.0 && j["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{last}");
        }
    }
    let out = cli(&["generate", hlo("lm_gpt2").to_str().unwrap(), "--prompt-ids", "1,2,999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the vocabulary"));
    let out = cli(&["generate", hlo("mlp").to_str().unwrap(), "--prompt-ids", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no generation section"));
}

/// A token that can't be written ends `flaxlayer generate` with an error (it was dropped, and
/// the command decoded on and exited 0).
#[test]
fn the_cli_fails_when_its_tokens_cant_be_written() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
        .args(["generate", hlo("lm_gpt2").to_str().unwrap(), "--prompt-ids", "1,2,3", "--max-new-tokens", "4"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 with every token lost: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

fn post(url: &str, body: &str) -> (u16, String) {
    let mut resp = agent().post(url).send(body.as_bytes()).unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
}

fn body(c: &Case, n: usize) -> String {
    let mut p = json!({"max_new_tokens": n});
    if let Some(s) = c.sampling {
        p["temperature"] = json!(s.temperature);
        p["top_k"] = json!(s.top_k);
        p["top_p"] = json!(s.top_p);
        p["seed"] = json!(s.seed);
    }
    json!({"input_ids": c.prompt, "parameters": p}).to_string()
}

/// The SSE events' `data:` objects.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n").filter(|e| !e.trim().is_empty()).map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))).unwrap()).collect()
}

#[test]
fn the_server_generates_hugging_faces_tokens_plain_and_streaming() {
    let repo = tempfile::tempdir().unwrap();
    for model in MODELS {
        std::fs::create_dir_all(repo.path().join(model)).unwrap();
        std::os::unix::fs::symlink(hlo(model), repo.path().join(model).join("1")).unwrap();
    }
    std::fs::create_dir_all(repo.path().join("mlp")).unwrap();
    std::os::unix::fs::symlink(hlo("mlp"), repo.path().join("mlp/1")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaxlayer"));
    cmd.args(["serve", "--models", repo.path().to_str().unwrap(), "--port", "0"]).stderr(Stdio::inherit());
    let (mut child, url) = start_server(cmd);
    let result = std::panic::catch_unwind(|| {
        for model in MODELS {
            let (n, cases) = cases(model);
            for (i, c) in cases.iter().enumerate() {
                let (status, text) = post(&format!("{url}/v2/models/{model}/generate"), &body(c, n));
                assert_eq!(status, 200, "{model}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!((v["model_name"].as_str(), &v["output_ids"]), (Some(model), &json!(c.output_ids)), "{model} case {i}");
                let (status, text) = post(&format!("{url}/v2/models/{model}/versions/1/generate_stream"), &body(c, n));
                assert_eq!(status, 200, "{model}: {text}");
                let toks: Vec<Value> = events(&text).into_iter().map(|e| e["output_ids"].clone()).collect();
                assert_eq!(toks, c.output_ids.iter().map(|t| json!([t])).collect::<Vec<_>>(), "{model} case {i} streamed");
            }
        }
        // concurrent requests: each gets its own tokens (they take turns on the model)
        let (n, gemma) = cases("lm_gemma");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (c, url) = (&gemma[i % gemma.len()], &url);
                    s.spawn(move || {
                        let stream = i % 2 == 1;
                        let path = if stream { "generate_stream" } else { "generate" };
                        let (status, text) = post(&format!("{url}/v2/models/lm_gemma/{path}"), &body(c, n));
                        assert_eq!(status, 200, "{text}");
                        let got: Vec<i64> = if stream {
                            events(&text).iter().map(|e| e["output_ids"][0].as_i64().unwrap()).collect()
                        } else {
                            serde_json::from_str::<Value>(&text).unwrap()["output_ids"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect()
                        };
                        assert_eq!(got, c.output_ids, "request {i}");
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        });
        // hostile bodies: 400 with a JSON error naming the problem
        let g = format!("{url}/v2/models/lm_gpt2/generate");
        let refusals: Vec<(String, u16, &str)> = vec![
            ("not json".into(), 400, "not JSON"),
            ("[1, 2]".into(), 400, "JSON object"),
            (r#"{"parameters": {}}"#.into(), 400, "missing input_ids"),
            (r#"{"input_ids": []}"#.into(), 400, "at least one"),
            (r#"{"input_ids": "1 2 3"}"#.into(), 400, "an array of token ids"),
            (r#"{"input_ids": [1, 2.5]}"#.into(), 400, "token ids in 0..211"),
            (r#"{"input_ids": [1, 211]}"#.into(), 400, "token ids in 0..211"),
            (r#"{"input_ids": [1, -3]}"#.into(), 400, "token ids in 0..211"),
            (r#"{"input_ids": [1, 99999999999999999999]}"#.into(), 400, "token ids"),
            (json!({"input_ids": vec![1; 49]}).to_string(), 400, "at most 48"),
            (r#"{"input_ids": [1], "text_input": "hi"}"#.into(), 400, "unknown field"),
            (r#"{"input_ids": [1], "parameters": []}"#.into(), 400, "must be an object"),
            (r#"{"input_ids": [1], "parameters": {"beams": 2}}"#.into(), 400, "unknown parameter"),
            (r#"{"input_ids": [1], "parameters": {"max_new_tokens": 0}}"#.into(), 400, "max_new_tokens 0"),
            (r#"{"input_ids": [1], "parameters": {"max_new_tokens": 49}}"#.into(), 400, "max_new_tokens 49"),
            (r#"{"input_ids": [1], "parameters": {"max_new_tokens": "5"}}"#.into(), 400, "non-negative integer"),
            (r#"{"input_ids": [1], "parameters": {"max_new_tokens": -1}}"#.into(), 400, "non-negative integer"),
            (r#"{"input_ids": [1], "parameters": {"temperature": 0}}"#.into(), 400, "temperature"),
            (r#"{"input_ids": [1], "parameters": {"temperature": "hot"}}"#.into(), 400, "temperature"),
            (r#"{"input_ids": [1], "parameters": {"top_p": 1.5}}"#.into(), 400, "top_p"),
            (r#"{"input_ids": [1], "parameters": {"top_k": 4294967296}}"#.into(), 400, "top_k"),
            (r#"{"input_ids": [1], "parameters": {"seed": -1}}"#.into(), 400, "seed"),
            (r#"{"input_ids": [1], "parameters": {"stop_token_ids": [300]}}"#.into(), 400, "stop_token_ids"),
            (json!({"input_ids": [1], "parameters": {"stop_token_ids": vec![1; 1025]}}).to_string(), 400, "stop_token_ids"),
        ];
        for (b, want, says) in refusals {
            for path in [g.clone(), format!("{g}_stream")] {
                let (status, text) = post(&path, &b);
                assert_eq!(status, want, "{b}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{b}: not JSON ({e}): {text}"));
                assert!(v["error"].as_str().unwrap().contains(says), "{b}: {text} does not say {says:?}");
            }
        }
        let (status, text) = post(&format!("{url}/v2/models/mlp/generate"), r#"{"input_ids": [1]}"#);
        assert!(status == 400 && text.contains("no generation section"), "{status} {text}");
        let (status, _) = post(&format!("{url}/v2/models/nope/generate"), r#"{"input_ids": [1]}"#);
        assert_eq!(status, 404);
        // the model still answers right after the refusals
        let (n, cases) = cases("lm_gpt2");
        let (_, text) = post(&g, &body(&cases[4], n));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["output_ids"], json!(cases[4].output_ids));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
