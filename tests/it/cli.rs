//! The `flaxlayer` binary against golden data that JAX computed (`scripts/export_examples.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::Tensor;

use crate::common::{hlo, row_range};


fn flaxlayer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flaxlayer")).args(args).output().unwrap()
}

fn golden(name: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(hlo(name).join("golden.safetensors")).unwrap().into_iter().collect()
}

fn group(g: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    g.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

/// Floats may differ from JAX's by an ulp when the golden data was made on another CPU (XLA's
/// CPU code generator picks instructions per CPU); integers and bools must be equal.
fn assert_close(what: &str, got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: names");
    for (name, w) in want {
        let g = &got[name];
        assert_eq!((g.dtype(), g.shape()), (w.dtype(), w.shape()), "{what}/{name}");
        let tol = if w.dtype().is_float() { 2e-5 } else { 0.0 };
        let err = g.max_abs_diff(w).unwrap();
        assert!(err <= tol, "{what}/{name}: max abs error {err:e} > {tol:e}");
    }
}

fn write_inputs(g: &BTreeMap<String, Tensor>, path: &Path) {
    let inputs = group(g, "inputs/");
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(path, &refs, None).unwrap();
}

#[test]
fn run_training_two_steps_writes_jax_outputs_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let g = golden("dense_bn_dropout");
    let (input, output, vars) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"), dir.path().join("vars.safetensors"));
    write_inputs(&g, &input);
    let bundle = hlo("dense_bn_dropout");
    let out = flaxlayer(&[
        "run", bundle.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(),
        "--training", "--steps", "2", "--seed", "0", "--save-variables", vars.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: BTreeMap<String, Tensor> = read_safetensors(&output).unwrap().into_iter().collect();
    assert_close("outputs of the second training call", &got, &group(&g, "training/1/"));
    let got_vars: BTreeMap<String, Tensor> = read_safetensors(&vars).unwrap().into_iter().collect();
    let init: BTreeMap<String, Tensor> = read_safetensors(bundle.join("variables.safetensors")).unwrap().into_iter().collect();
    let after = group(&g, "after_training/");
    assert_eq!(got_vars.len(), init.len());
    let want: BTreeMap<String, Tensor> = got_vars.keys().map(|n| (n.clone(), after.get(n).unwrap_or(&init[n]).clone())).collect();
    assert_close("variables after two training calls", &got_vars, &want);
}

#[test]
fn run_names_dict_and_tuple_leaves_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let g = golden("mixed");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    write_inputs(&g, &input);
    let out = flaxlayer(&["run", hlo("mixed").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: BTreeMap<String, Tensor> = read_safetensors(&output).unwrap().into_iter().collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_close("mixed inference", &got, &group(&g, "inference/"));
}

#[test]
fn inspect_lists_methods_inputs_and_weights() {
    let out = flaxlayer(&["inspect", hlo("wrapper").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("method my_flax_module_wrapper (default)"), "{text}");
    assert!(text.contains("0: float32[3, 6], 1: float32[3, 10]"), "{text}");
    assert!(text.contains("trainable weights: 6 (420 params)"), "{text}");
}

#[test]
fn inspect_says_what_each_file_costs() {
    let dir = hlo("mlp_frozen");
    let out = flaxlayer(&["inspect", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |file: &str| text.lines().find(|l| l.trim_start().starts_with(file)).unwrap_or_else(|| panic!("no line for {file}:\n{text}")).to_string();
    let bytes = |file: &str| std::fs::metadata(dir.join(file)).unwrap().len();
    // Sizes under 1000 bytes are exact; larger ones in kB with one decimal.
    let kb = |n: u64| if n < 1000 { format!("{n} B") } else { format!("{:.1} kB", n as f64 / 1000.0) };
    let weights = line("variables.safetensors");
    assert!(weights.contains(&kb(bytes("variables.safetensors"))) && weights.contains("weights"), "{weights}");
    let frozen = line("__call__.inference.b8.frozen.jaxexport");
    assert!(frozen.contains("frozen copy: __call__ inference b8") && frozen.contains(&kb(bytes("__call__.inference.b8.frozen.jaxexport"))), "{frozen}");
    assert!(line("__call__.training.b1.jaxexport").contains("computation: __call__ training b1"), "{text}");
    assert!(line("golden.safetensors").contains("golden test data"), "{text}");
    assert!(line("init.jaxexport").contains("init computation"), "{text}");
    let n = std::fs::read_dir(&dir).unwrap().count();
    assert!(text.contains(&format!(" in {n} files):")), "{text}");
    assert!(text.contains("by kind: ") && text.contains("frozen copies "), "{text}");
}

#[test]
fn bad_input_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let wrong = Tensor::zeros(flaxlayer::DType::F32, vec![4, 13]).unwrap();
    write_safetensors(&input, &[("inputs", &wrong)], None).unwrap();
    let out = flaxlayer(&["run", hlo("dense_bn_dropout").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", dir.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inputs") && err.contains("[4, 12]") && err.contains("[4, 13]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    write_safetensors(&input, &[("image", &wrong)], None).unwrap();
    let out = flaxlayer(&["run", hlo("dense_bn_dropout").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", dir.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inputs"), "{err}");
}

#[test]
fn run_and_bench_take_any_batch_of_a_paddable_bundle() {
    // hlo/buckets is exported at batch sizes 1, 4 and 16: 7 rows are padded to 16, 21 run as
    // 16 + 5 padded to 16; the golden data has JAX's outputs at exactly those sizes.
    let dir = tempfile::tempdir().unwrap();
    let g = golden("buckets");
    for n in [7usize, 21] {
        let (input, output) = (dir.path().join(format!("in{n}.safetensors")), dir.path().join(format!("out{n}.safetensors")));
        let (a, b) = (row_range(&g["rows/a"], 0, n), row_range(&g["rows/b"], 0, n));
        write_safetensors(&input, &[("a", &a), ("b", &b)], None).unwrap();
        let out = flaxlayer(&["run", hlo("buckets").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: BTreeMap<String, Tensor> = read_safetensors(&output).unwrap().into_iter().collect();
        assert_close(&format!("run at batch {n}"), &got, &group(&g, &format!("exact/{n}/")));
    }
    let out = flaxlayer(&["bench", hlo("buckets").to_str().unwrap(), "--batch", "7", "--iters", "5", "--warmup", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_batch_a_bundle_cannot_pad_is_a_typed_error_with_the_sizes() {
    // hlo/bn_batch_stats normalises over the batch at inference: exported sizes only.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write_safetensors(&input, &[("inputs", &Tensor::zeros(flaxlayer::DType::F32, vec![5, 5]).unwrap())], None).unwrap();
    let out = flaxlayer(&["run", hlo("bn_batch_stats").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", dir.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[4, 8]") && err.contains('5') && !err.contains("panicked"), "{err}");
    let out = flaxlayer(&["bench", hlo("bn_batch_stats").to_str().unwrap(), "--batch", "5", "--iters", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[4, 8]") && !err.contains("panicked"), "{err}");
}
