//! A bundle's `golden.safetensors` (JAX's outputs at export time, docs/bundle-format.md) and
//! the comparison of named tensors with it.

use std::collections::BTreeMap;

use flaxlayer::tensor::read_safetensors;
use flaxlayer::{DType, PyTree, Tensor};

use super::hlo;

/// The golden tensors of a committed bundle, by name.
pub struct Golden(pub BTreeMap<String, Tensor>);

impl Golden {
    pub fn load(bundle: &str) -> Golden {
        Golden(read_safetensors(hlo(bundle).join("golden.safetensors")).unwrap().into_iter().collect())
    }

    /// Tensors under `prefix/`, with the prefix removed.
    pub fn group(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let p = format!("{prefix}/");
        self.0.iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), v.clone()))).collect()
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.0.get(key).unwrap_or_else(|| panic!("golden {key}"))
    }
}

/// Tolerance for a dtype: float math may differ from JAX's by a few ulps (another CPU, another
/// fusion); integer and bool leaves must be equal.
pub fn tolerance(t: &Tensor) -> f64 {
    match t.dtype() {
        DType::F32 => 2e-5,
        DType::BF16 => 1e-2,
        DType::F16 => 1e-3,
        DType::F64 => 1e-9,
        _ => 0.0,
    }
}

/// Compares named tensors with the wanted ones (same names, dtypes, shapes; values within
/// [`tolerance`]) and returns the largest absolute error.
pub fn assert_close(what: &str, got: &[(String, Tensor)], want: &[(String, Tensor)]) -> f64 {
    let got: BTreeMap<_, _> = got.iter().cloned().collect();
    let want: BTreeMap<_, _> = want.iter().cloned().collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: names");
    let mut worst = 0f64;
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dtype(), w.dtype(), "{what}/{name}: dtype");
        assert_eq!(g.shape(), w.shape(), "{what}/{name}: shape");
        let err = g.max_abs_diff(w).unwrap();
        assert!(err <= tolerance(w), "{what}/{name}: max abs error {err:e} > {:e}", tolerance(w));
        worst = worst.max(err);
    }
    println!("{what}: max abs error {worst:e}");
    worst
}

/// The leaves of an output tree by path (a bare array is `outputs`).
pub fn named(tree: &PyTree) -> Vec<(String, Tensor)> {
    tree.flatten_with_paths("outputs").into_iter().map(|(n, t)| (n, t.clone())).collect()
}

/// The variables that are not params (`params/...`).
pub fn state_only(vars: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    vars.into_iter().filter(|(n, _)| !n.starts_with("params/")).collect()
}
