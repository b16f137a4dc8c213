//! Every `lapack_*_ffi` target through flaxlayer's XLA FFI handlers, against JAX: small
//! programs that `scripts/make_lapack_fixtures.py` exported into `tests/fixtures/lapack/`
//! (`jnp.linalg.qr`, `cholesky`, `solve`, `inv`, `det`, `eigh`, `svd`, `jax.scipy.linalg.lu`,
//! `solve_triangular`, Flax's orthogonal initializer, ...), float32 and float64, unbatched and
//! batched, run through PJRT (`Client::compile` + `execute`) and compared with the outputs JAX
//! computed with jaxlib's LAPACK.
//!
//! Floats match within 1e-5 (float32) and 1e-12 (float64) relative to the largest magnitude of
//! each output; NaN and infinite entries (JAX's handling of LAPACK's `info`: non-SPD,
//! singular, NaN inputs) must be at the same places; integers (pivots, permutations) exactly.
//! Where LAPACK leaves a choice (signs of eigen/singular vectors, the complement of a full
//! SVD) the programs return what is unique: sign-fixed vectors, reconstructions, Gram
//! matrices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flaxlayer::layer::BUILTIN_CUSTOM_CALL_TARGETS;
use flaxlayer::pjrt::{Buffer, CompileOptions, FfiHandlers, LoadedExecutable, Program};
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{DType, Error, Tensor};

use crate::common::client;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lapack")
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    targets: Vec<String>,
    dtype: String,
    /// For a case that must not compile: a substring of the error.
    error: Option<String>,
}

fn index() -> BTreeMap<String, Case> {
    serde_json::from_slice(&std::fs::read(fixtures().join("index.json")).unwrap()).unwrap()
}

fn golden() -> BTreeMap<String, Tensor> {
    read_safetensors(fixtures().join("golden.safetensors")).unwrap().into_iter().collect()
}

fn compile(name: &str) -> flaxlayer::Result<LoadedExecutable> {
    let code = std::fs::read(fixtures().join(format!("{name}.mlirbc"))).unwrap();
    client().compile(Program::Mlir(&code), &CompileOptions::default())
}

fn upload(t: &Tensor) -> Buffer {
    let c = client();
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    c.buffer_from_bytes(t.dtype(), &dims, t.as_bytes(), &c.device(0).unwrap()).unwrap()
}

fn download(b: &Buffer) -> Tensor {
    let mut bytes = vec![0u8; b.host_size_in_bytes()];
    b.copy_to_host_bytes(&mut bytes).unwrap();
    Tensor::new(b.dtype(), b.dims().iter().map(|&d| d as usize).collect(), &bytes).unwrap()
}

fn floats(t: &Tensor) -> Vec<f64> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect(),
        DType::F64 => t.to_vec::<f64>().unwrap(),
        other => panic!("not a float: {other}"),
    }
}

/// The error of `got` against `want` relative to `want`'s largest finite magnitude, or why
/// they differ otherwise (dtype, shape, non-finite entries, integers).
fn compare(got: &Tensor, want: &Tensor) -> Result<f64, String> {
    if (got.dtype(), got.shape()) != (want.dtype(), want.shape()) {
        return Err(format!("{} {:?} vs JAX's {} {:?}", got.dtype(), got.shape(), want.dtype(), want.shape()));
    }
    if !want.dtype().is_float() {
        return if got.as_bytes() == want.as_bytes() { Ok(0.0) } else { Err("integers differ".into()) };
    }
    let (g, w) = (floats(got), floats(want));
    let scale = w.iter().filter(|v| v.is_finite()).fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if b.is_nan() != a.is_nan() || (b.is_infinite() && a != b) || (a.is_infinite() && a != b) {
            return Err(format!("element {i}: {a} vs JAX's {b}"));
        }
        if b.is_finite() {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    Ok(worst)
}

fn tolerance(dtype: &str) -> f64 {
    match dtype {
        "float32" => 1e-5,
        "float64" => 1e-12,
        other => panic!("case dtype {other}"),
    }
}

/// Runs a case and returns its worst relative error, or what went wrong.
fn run_case(name: &str, case: &Case, golden: &BTreeMap<String, Tensor>) -> Result<f64, String> {
    let exe = compile(name).map_err(|e| e.to_string())?;
    let inputs: Vec<Buffer> = (0..).map_while(|i| golden.get(&format!("{name}/in/{i}"))).map(upload).collect();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let outs = exe.execute(&refs, &vec![false; refs.len()]).map_err(|e| e.to_string())?;
    let wants: Vec<&Tensor> = (0..).map_while(|j| golden.get(&format!("{name}/out/{j}"))).collect();
    if outs.len() != wants.len() {
        return Err(format!("{} outputs, JAX has {}", outs.len(), wants.len()));
    }
    let mut worst = 0f64;
    for (j, (out, want)) in outs.iter().zip(wants).enumerate() {
        let err = compare(&download(out), want).map_err(|e| format!("out/{j}: {e}"))?;
        if err > tolerance(&case.dtype) {
            return Err(format!("out/{j}: relative error {err:e} > {:e}", tolerance(&case.dtype)));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Runs every case of `dtype` and checks it against JAX.
fn cases_match_jax(dtype: &str, at_least: usize) {
    let (index, golden) = (index(), golden());
    let (mut failures, mut worst, mut ran) = (Vec::new(), 0f64, 0);
    for (name, case) in index.iter().filter(|(_, c)| c.error.is_none() && c.dtype == dtype) {
        match run_case(name, case, &golden) {
            Ok(err) => (worst, ran) = (worst.max(err), ran + 1),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!("{ran} {dtype} cases match JAX; worst relative error {worst:e}");
    assert!(failures.is_empty(), "{} case(s) differ from JAX:\n{}", failures.len(), failures.join("\n"));
    assert!(ran >= at_least, "only {ran} {dtype} cases ran");
}

#[test]
fn every_float32_case_matches_jax() {
    cases_match_jax("float32", 80);
}

#[test]
fn every_float64_case_matches_jax() {
    cases_match_jax("float64", 75);
}

#[test]
fn every_handler_flaxlayer_registers_is_exercised() {
    let called: BTreeSet<String> = index().into_values().flat_map(|c| c.targets).collect();
    for target in FfiHandlers::provided().filter(|t| t.starts_with("lapack_")) {
        assert!(called.contains(target), "no case calls {target}");
    }
    let c = client();
    let handlers = c.plugin().ffi_handlers();
    assert!(FfiHandlers::provided().all(|t| handlers.is_registered(t)), "{handlers:?}");
}

#[test]
fn a_target_no_one_registered_fails_in_xla_at_compile() {
    // What the runtime's check (tests/custom_calls.rs) turns into a typed error beforehand.
    let (name, case) = index().into_iter().find(|(_, c)| c.error.is_some()).unwrap();
    let err = compile(&name).map(|_| ()).unwrap_err();
    let want = case.error.unwrap();
    assert!(matches!(&err, Error::Pjrt { call: "PJRT_Client_Compile", message, .. } if message.contains(&want)), "{err}");
}

/// `y = custom_call @target(x * x) + x` with the attributes JAX gives the target.
fn identity_program(target: &str) -> String {
    let attrs = match target {
        "Sharding" | "SPMDShardToFullShape" => r#"mhlo.sharding = "{replicated}""#,
        "SPMDFullToShardShape" => r#"mhlo.sharding = "{manual}""#,
        "annotate_device_placement" => r#"has_side_effect = true, mhlo.frontend_attributes = {_xla_buffer_placement = "pinned_host"}"#,
        _ => "",
    };
    format!(
        r#"module @m {{
  func.func public @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {{
    %0 = stablehlo.multiply %x, %x : tensor<2x3xf32>
    %1 = stablehlo.custom_call @{target}(%0) {{{attrs}}} : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %2 = stablehlo.add %1, %x : tensor<2x3xf32>
    return %2 : tensor<2x3xf32>
  }}
}}"#
    )
}

#[test]
fn the_builtin_targets_compile_and_run_on_the_cpu_plugin() {
    // ApproxTopK takes other operands; its exported case (builtin_approx_top_k) runs above,
    // as do exported `Sharding` and `annotate_device_placement` programs.
    let c = client();
    let x: Vec<f32> = (0..6).map(|i| i as f32 - 2.0).collect();
    let want: Vec<f32> = x.iter().map(|v| v * v + v).collect();
    let buf = c.buffer_from_slice(&x, &[2, 3], &c.device(0).unwrap()).unwrap();
    for target in BUILTIN_CUSTOM_CALL_TARGETS.iter().filter(|&&t| t != "ApproxTopK") {
        let program = identity_program(target);
        let exe = c.compile(Program::Mlir(program.as_bytes()), &CompileOptions::default()).unwrap_or_else(|e| panic!("{target}: {e}"));
        let out = exe.execute(&[&buf], &[false]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), want, "{target}");
    }
    let index = index();
    for target in ["ApproxTopK", "Sharding", "annotate_device_placement"] {
        assert!(index.values().any(|c| c.error.is_none() && c.targets == [target]), "no exported case calls {target}");
    }
}
