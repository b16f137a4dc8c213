//! The command line a newcomer meets (issue 27): a closed pipe, `run`'s inputs from .npy and
//! JSON files or zeros/random values, `--print`, `bench`'s labels, flags only where they
//! apply, and errors that name the file, what was found and expected, and what to do.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use flaxlayer::{DType, Tensor};

use crate::common::golden::Golden;
use crate::common::{copy_dir, hlo};

fn flaxlayer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flaxlayer")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed run: exit 1, no panic, and the error text.
fn fails(out: &std::process::Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout {} stderr {err}", text(&out.stdout));
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_closed_pipe_ends_quietly() {
    // The reader is gone before the first line is written: every write fails with EPIPE
    // (Rust ignores SIGPIPE), which `println!` turned into a panic (exit 101).
    for _ in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
            .args(["inspect", s(&hlo("cnn"))])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(err.is_empty(), "{err}");
    }
    // And as a shell runs it.
    for _ in 0..20 {
        let out = Command::new("bash")
            .args(["-c", "set -o pipefail; \"$0\" inspect \"$1\" | head -1 >/dev/null", env!("CARGO_BIN_EXE_flaxlayer"), s(&hlo("cnn"))])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn run_reads_npy_and_json_and_prints_jax_outputs() {
    let g = Golden::load("image_meta");
    let (img, meta) = (g.get("inputs/image"), g.get("inputs/meta"));
    let want = g.get("inference/outputs");
    let dir = tempfile::tempdir().unwrap();
    img.write_npy(dir.path().join("image.npy")).unwrap();
    // meta as JSON, from the golden values.
    let rows: Vec<Vec<f32>> = meta.to_vec::<f32>().unwrap().chunks(3).map(<[f32]>::to_vec).collect();
    std::fs::write(dir.path().join("meta.json"), serde_json::json!({"meta": rows}).to_string()).unwrap();
    let image_arg = format!("image={}", s(&dir.path().join("image.npy")));
    let out = flaxlayer(&["run", s(&hlo("image_meta")), "--input", &image_arg, "--input", s(&dir.path().join("meta.json")), "--print", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &printed["outputs"];
    assert_eq!(o["dtype"], "float32");
    assert_eq!(o["shape"], serde_json::json!([2, 2]));
    let got: Vec<f32> = o["data"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    let got = Tensor::from_vec(vec![2, 2], got).unwrap();
    // JSON carries f32 exactly (printed as the f64 of the f32).
    assert!(got.max_abs_diff(want).unwrap() <= 2e-5, "{got} vs {want}");
    // The table: a header per output and one line per row.
    let out = flaxlayer(&["run", s(&hlo("image_meta")), "--input", &image_arg, "--input", s(&dir.path().join("meta.json"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().next(), Some("outputs: float32[2, 2]"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains(&format!("{:.6}", want.to_vec::<f32>().unwrap()[0])), "{table}");
}

#[test]
fn run_on_zeros_or_random_at_a_batch_size() {
    for args in [&["--zeros", "--batch", "3"][..], &["--random", "7", "--batch", "3", "--print", "json"]] {
        let out = flaxlayer(&[&["run", s(&hlo("image_meta"))], args].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("float32[3, 2]") || stdout.contains("[3,2]"), "{stdout}");
    }
    // Random values are the seed's: the same seed twice gives the same outputs.
    let a = flaxlayer(&["run", s(&hlo("mixed")), "--random", "3", "--print", "json"]);
    let b = flaxlayer(&["run", s(&hlo("mixed")), "--random", "3", "--print", "json"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    // --batch without --zeros or --random is refused by the parser.
    let out = flaxlayer(&["run", s(&hlo("mlp")), "--batch", "3", "--input", "x.safetensors"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn bench_says_batch_mode_and_what_was_timed() {
    let out = flaxlayer(&["bench", s(&hlo("cnn")), "--iters", "3", "--warmup", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["batch"], 4, "{j}"); // the first exported size
    assert_eq!(j["mode"], "inference");
    assert!(j["timed"].as_str().unwrap().contains("host in to host out"), "{j}");
    let out = flaxlayer(&["bench", s(&hlo("mlp")), "--batch", "3", "--iters", "3", "--warmup", "1"]);
    let t = text(&out.stdout);
    assert!(t.contains("(inference), batch 3, 3 iters") && t.contains("timed: one call"), "{t}");
    // Cold starts: a small default count, labelled, in ms.
    let out = flaxlayer(&["bench", s(&hlo("mlp")), "--cold-start", "--iters", "2"]);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t.contains("2 cold starts") && t.contains(" ms") && t.contains("timed: a cold start"), "{t}");
    let help = text(&flaxlayer(&["bench", "--help"]).stdout);
    assert!(help.contains("20 with --cold-start"), "{help}");
}

#[test]
fn flags_only_where_they_apply() {
    let help = |args: &[&str]| text(&flaxlayer(args).stdout);
    for cmd in [&["plugin", "install", "--help"][..], &["inspect", "--help"], &["plugin", "show", "--help"]] {
        let h = help(cmd);
        for flag in ["--untrusted", "--no-frozen", "--devices", "--compile-timeout"] {
            assert!(!h.contains(flag), "{cmd:?} offers {flag}:\n{h}");
        }
    }
    assert!(!help(&["plugin", "install", "--help"]).contains("--plugin"));
    for cmd in ["run", "bench", "train"] {
        let h = help(&[cmd, "--help"]);
        for flag in ["--plugin", "--untrusted", "--no-frozen", "--devices"] {
            assert!(h.contains(flag), "{cmd} lacks {flag}");
        }
    }
    let h = help(&["serve", "--help"]);
    assert!(h.contains("--untrusted") && h.contains("--devices") && !h.contains("--no-frozen"), "{h}");
}

#[test]
fn an_extra_tensor_is_named_with_what_to_do() {
    let g = Golden::load("image_meta");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let extra = Tensor::zeros(DType::F32, vec![2]).unwrap();
    Tensor::write_safetensors(&input, [("image", g.get("inputs/image")), ("meta", g.get("inputs/meta")), ("label", &extra)]).unwrap();
    let err = fails(&flaxlayer(&["run", s(&hlo("image_meta")), "--input", s(&input)]));
    assert!(err.contains(s(&input)) && err.contains("\"label\""), "{err}");
    assert!(err.contains("image: float32[?, 8, 8, 1]") && err.contains("remove the extra tensor") && err.contains("--ignore-extra"), "{err}");
    assert!(!err.contains("from_named_leaves"), "no internal names: {err}");
    let out = flaxlayer(&["run", s(&hlo("image_meta")), "--input", s(&input), "--ignore-extra", "--print", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ignoring tensor \"label\""));
    // A missing one names it, and what the method takes.
    Tensor::write_safetensors(&input, [("image", g.get("inputs/image"))]).unwrap();
    let err = fails(&flaxlayer(&["run", s(&hlo("image_meta")), "--input", s(&input)]));
    assert!(err.contains("missing input(s) meta") && err.contains("meta: float32[?, 3]"), "{err}");
}

#[test]
fn an_input_that_is_not_safetensors_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::write(&input, "x,y\n1,2\n").unwrap();
    let err = fails(&flaxlayer(&["run", s(&hlo("mlp")), "--input", s(&input)]));
    assert!(err.contains(s(&input)) && err.contains("this is not a safetensors file"), "{err}");
    std::fs::write(dir.path().join("x.npy"), "not numpy").unwrap();
    let err = fails(&flaxlayer(&["run", s(&hlo("mlp")), "--input", s(&dir.path().join("x.npy"))]));
    assert!(err.contains("x.npy") && err.contains("not a .npy file"), "{err}");
}

/// A copy of `hlo/mlp` with `file` cut to half its size.
fn truncated(dir: &Path, file: &str) -> std::path::PathBuf {
    let b = dir.join(file.replace(['.', '/'], "_"));
    copy_dir(&hlo("mlp"), &b);
    let bytes = std::fs::read(b.join(file)).unwrap();
    std::fs::write(b.join(file), &bytes[..bytes.len() / 2]).unwrap();
    b
}

#[test]
fn truncated_bundle_files_say_re_export() {
    let dir = tempfile::tempdir().unwrap();
    let b = truncated(dir.path(), "__call__.inference.b1.jaxexport");
    let err = fails(&flaxlayer(&["run", s(&b), "--zeros"]));
    assert!(err.contains("__call__.inference.b1.jaxexport") && err.contains("corrupt") && err.contains("re-export"), "{err}");
    let b = truncated(dir.path(), "variables.safetensors");
    let err = fails(&flaxlayer(&["run", s(&b), "--zeros"]));
    assert!(err.contains("variables.safetensors") && err.contains("truncated") && err.contains("re-export"), "{err}");
    assert!(!err.contains("not a safetensors file"), "{err}");
    // inspect names the bundle's path, as run does.
    let b = truncated(dir.path(), "manifest.json");
    for cmd in ["inspect", "run"] {
        let args: Vec<&str> = if cmd == "run" { vec![cmd, s(&b), "--zeros"] } else { vec![cmd, s(&b)] };
        let err = fails(&flaxlayer(&args));
        assert!(err.contains(s(&b.join("manifest.json"))) && err.contains("re-export"), "{cmd}: {err}");
    }
}

#[test]
fn the_output_directory_is_checked_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/out.safetensors");
    // The bundle does not exist either: the output is checked first, before anything loads.
    let err = fails(&flaxlayer(&["run", s(&dir.path().join("no-bundle")), "--zeros", "--output", s(&missing)]));
    assert!(err.contains("--output") && err.contains("does not exist") && err.contains("nothing was run"), "{err}");
    let err = fails(&flaxlayer(&["run", s(&hlo("mlp")), "--zeros", "--save-variables", s(&missing)]));
    assert!(err.contains("--save-variables") && err.contains("does not exist"), "{err}");
}
