//! `FlaxLayer` against JAX: every bundle under `hlo/` (written by `scripts/export_examples.py`)
//! carries golden data that JAX computed with plain Flax at export time.

use std::collections::BTreeMap;
use std::sync::Arc;

use flaxlayer::tensor::read_safetensors;
use flaxlayer::{Mode, Bundle, DType, Error, FlaxLayer, FlaxLayerConfig, PyTree, Tensor};

use crate::common::golden::{assert_close, Golden};
use crate::common::{client, hlo};

const BUNDLES: [&str; 7] = ["cnn", "wrapper", "dense_bn_dropout", "mixed", "decoder", "mlp", "multi_platform"];



fn bundle(name: &str) -> Arc<Bundle> {
    Arc::new(Bundle::open(hlo(name)).unwrap())
}

fn layer(name: &str) -> FlaxLayer {
    FlaxLayer::builder(bundle(name)).client(client()).build().unwrap()
}

fn inputs(layer: &FlaxLayer, golden: &Golden) -> PyTree {
    PyTree::from_named_leaves(layer.input_tree(), "inputs", golden.group("inputs")).unwrap()
}

fn named(tree: &PyTree) -> Vec<(String, Tensor)> {
    tree.flatten_with_paths("outputs").into_iter().map(|(n, t)| (n, t.clone())).collect()
}

fn state_only(vars: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    vars.into_iter().filter(|(n, _)| !n.starts_with("params/")).collect()
}

#[test]
fn init_on_device_equals_jax_init() {
    for name in BUNDLES {
        let layer = FlaxLayer::builder(bundle(name)).init_variables().client(client()).build().unwrap();
        let want = read_safetensors(hlo(name).join("variables.safetensors")).unwrap();
        assert_close(&format!("{name} init"), &layer.variables().unwrap(), &want);
    }
}

#[test]
fn inference_matches_jax() {
    for name in BUNDLES {
        let golden = Golden::load(name);
        let mut layer = layer(name);
        let x = inputs(&layer, &golden);
        let out = layer.call(&x, Mode::Inference).unwrap();
        assert_close(&format!("{name} inference"), &named(&out), &golden.group("inference"));
        let state = state_only(layer.variables().unwrap());
        assert_close(&format!("{name} inference state"), &state, &golden.group("inference_state"));
    }
}

#[test]
fn two_training_calls_match_jax_under_the_rng_contract() {
    for name in BUNDLES {
        let golden = Golden::load(name);
        let mut layer = layer(name);
        let x = inputs(&layer, &golden);
        for step in 0..2 {
            let out = layer.call(&x, Mode::Training).unwrap();
            assert_close(&format!("{name} training/{step}"), &named(&out), &golden.group(&format!("training/{step}")));
        }
        let state = state_only(layer.variables().unwrap());
        assert_close(&format!("{name} after_training"), &state, &golden.group("after_training"));
        let key = golden.get("key/after_training").to_vec::<u32>().unwrap();
        assert_eq!(layer.key().unwrap().to_vec(), key, "{name}: key after two training calls");
    }
}

#[test]
fn dropout_masks_differ_between_steps_and_from_inference() {
    let golden = Golden::load("dense_bn_dropout");
    let mut layer = layer("dense_bn_dropout");
    let x = inputs(&layer, &golden);
    let a = layer.call(&x, Mode::Training).unwrap();
    let b = layer.call(&x, Mode::Training).unwrap();
    let (a, b) = (a.as_tensor().unwrap(), b.as_tensor().unwrap());
    assert!(a.max_abs_diff(b).unwrap() > 1e-3, "two training steps drew the same dropout mask");
}

#[test]
fn decoder_greedy_tokens_equal_jax() {
    let golden = Golden::load("decoder");
    let prompt = golden.get("greedy/prompt").to_vec::<i32>().unwrap();
    let want = golden.get("greedy/tokens").to_vec::<i32>().unwrap();
    let got = crate::common::greedy_decode(&mut layer("decoder"), &prompt, want.len());
    println!("decoder greedy tokens {got:?}");
    assert_eq!(got, want);
}

#[test]
fn save_then_load_gives_the_same_outputs_variables_and_key() {
    let golden = Golden::load("dense_bn_dropout");
    let mut layer = layer("dense_bn_dropout");
    let x = inputs(&layer, &golden);
    layer.call(&x, Mode::Training).unwrap();
    let dir = tempfile::tempdir().unwrap();
    layer.save(dir.path()).unwrap();
    let mut loaded = FlaxLayer::builder(dir.path()).client(client()).load().unwrap();
    assert_eq!(loaded.variables().unwrap(), layer.variables().unwrap());
    assert_eq!(loaded.key().unwrap(), layer.key().unwrap());
    let a = layer.call(&x, Mode::Training).unwrap();
    let b = loaded.call(&x, Mode::Training).unwrap();
    assert_eq!(a, b, "the next training call after load must be identical");
    assert!(crate::common::leftovers(dir.path()).is_empty(), "temp files left: {:?}", crate::common::leftovers(dir.path()));
}

#[test]
fn config_round_trips() {
    let layer = FlaxLayer::builder(hlo("wrapper")).seed(7).client(client()).build().unwrap();
    let config = layer.get_config();
    assert_eq!(config.method, "my_flax_module_wrapper");
    assert_eq!(config.seed, 7);
    let json = config.to_json().unwrap();
    let back = FlaxLayerConfig::from_json(&json).unwrap();
    assert_eq!(back, config);
    let rebuilt = FlaxLayer::from_config(&back).unwrap();
    assert_eq!(rebuilt.get_config(), config);
    assert_eq!(rebuilt.variables().unwrap(), layer.variables().unwrap(), "same seed, same init");
    assert!(matches!(FlaxLayerConfig::from_json("{\"bundle\": 3}"), Err(Error::Json { .. })));
}

#[test]
fn seed_changes_init_and_key() {
    let a = FlaxLayer::builder(hlo("mlp")).seed(0).init_variables().client(client()).build().unwrap();
    let b = FlaxLayer::builder(hlo("mlp")).seed(1).init_variables().client(client()).build().unwrap();
    assert_ne!(a.variables().unwrap(), b.variables().unwrap());
    let c = FlaxLayer::builder(hlo("mlp")).seed(1).client(client()).build().unwrap();
    assert_eq!(c.variables().unwrap(), read_safetensors(hlo("mlp").join("variables.safetensors")).unwrap(), "a seed alone keeps the bundle's variables");
    assert_eq!(c.key().unwrap(), [0, 1]);
    assert_eq!(a.key().unwrap(), [0, 0]);
    assert_eq!(b.key().unwrap(), [0, 1]);
}

#[test]
fn weights_are_listed_and_counted_as_keras_does() {
    let layer = layer("dense_bn_dropout");
    let trainable: Vec<String> = layer.trainable_weights().into_iter().map(|w| w.name).collect();
    let non_trainable: Vec<String> = layer.non_trainable_weights().into_iter().map(|w| w.name).collect();
    assert_eq!(trainable.len(), 6);
    assert!(trainable.iter().all(|n| n.starts_with("params/")));
    assert_eq!(non_trainable, ["batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var"]);
    // Dense 12->32, BatchNorm(32) scale+bias, Dense 32->3, plus 64 batch stats.
    assert_eq!(layer.count_params(), (12 * 32 + 32) + 64 + (32 * 3 + 3) + 64);
}

#[test]
fn given_variables_are_used_and_set_variables_replaces_them() {
    let golden = Golden::load("mlp");
    let mut vars = read_safetensors(hlo("mlp").join("variables.safetensors")).unwrap();
    for (_, t) in vars.iter_mut() {
        for v in t.as_mut_slice::<f32>().unwrap() {
            *v *= 0.5;
        }
    }
    let mut layer = FlaxLayer::builder(hlo("mlp")).variables(vars.clone()).client(client()).build().unwrap();
    assert_eq!(layer.variables().unwrap(), vars);
    let x = inputs(&layer, &golden);
    let halved = layer.call(&x, Mode::Inference).unwrap();
    let original = read_safetensors(hlo("mlp").join("variables.safetensors")).unwrap();
    layer.set_variables(&original).unwrap();
    let out = layer.call(&x, Mode::Inference).unwrap();
    assert_close("mlp after set_variables", &named(&out), &golden.group("inference"));
    assert_ne!(halved, out);
}

#[test]
fn batch_sizes_pick_their_computation() {
    let mut layer = layer("mlp");
    for batch in [1usize, 8, 256] {
        let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![batch, 64]).unwrap());
        let out = layer.call(&x, Mode::Inference).unwrap();
        assert_eq!(out.as_tensor().unwrap().shape(), &[batch, 10]);
    }
}

#[test]
fn inference_from_several_threads_on_one_layer() {
    let golden = Golden::load("mlp");
    let layer = Arc::new(layer("mlp"));
    let x = Arc::new(inputs(&layer, &golden));
    let want = golden.group("inference");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (layer, x) = (layer.clone(), x.clone());
            std::thread::spawn(move || (0..20).map(|_| named(&layer.predict(&x).unwrap())).collect::<Vec<_>>())
        })
        .collect();
    for h in handles {
        for out in h.join().unwrap() {
            assert_close("mlp predict (threads)", &out, &want);
        }
    }
}

// ---- errors: typed, named, and leaving the layer untouched ----

/// Everything a failed call must leave as it was.
fn snapshot(layer: &FlaxLayer) -> (Vec<(String, Tensor)>, [u32; 2]) {
    (layer.variables().unwrap(), layer.key().unwrap())
}

#[test]
fn wrong_tree_is_a_tree_error_naming_the_path() {
    let golden = Golden::load("mixed");
    let mut layer = layer("mixed");
    let x = inputs(&layer, &golden);
    layer.call(&x, Mode::Training).unwrap();
    let before = snapshot(&layer);
    let mut good: BTreeMap<String, PyTree> = match inputs(&layer, &golden) {
        PyTree::Dict(d) => d,
        other => panic!("{other:?}"),
    };
    good.remove("ids");
    let err = layer.call(PyTree::Dict(good), Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::TreeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("ids"), "{err}");
    let err = layer.call(PyTree::tuple([]), Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::TreeMismatch { .. }), "{err}");
    assert_eq!(snapshot(&layer), before);
}

#[test]
fn wrong_dtype_is_a_dtype_error_naming_the_input() {
    let golden = Golden::load("mixed");
    let mut layer = layer("mixed");
    let before = snapshot(&layer);
    let mut x = inputs(&layer, &golden);
    if let PyTree::Dict(d) = &mut x {
        d.insert("ids".into(), PyTree::leaf(Tensor::zeros(DType::I64, vec![3, 4]).unwrap()));
    }
    let err = layer.call(&x, Mode::Training).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, expected, got } if what.contains("ids") && *expected == DType::I32 && *got == DType::I64),
        "{err}"
    );
    assert_eq!(snapshot(&layer), before);
}

#[test]
fn wrong_shape_is_a_shape_error_naming_the_input() {
    let mut layer = layer("dense_bn_dropout");
    let before = snapshot(&layer);
    let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![4, 11]).unwrap());
    let err = layer.call(&x, Mode::Training).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { what, expected, got } if what.contains("inputs") && expected == &[4, 12] && got == &[4, 11]),
        "{err}"
    );
    let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![5, 12]).unwrap());
    let err = layer.call(&x, Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::BatchSize { got: 5, available, .. } if available == &[4]), "{err}");
    assert!(err.to_string().contains("batch must be one of [4], got 5"), "{err}");
    assert_eq!(snapshot(&layer), before);
}

#[test]
fn bad_variables_are_refused_before_anything_changes() {
    let mut layer = layer("dense_bn_dropout");
    let before = snapshot(&layer);
    let mut vars = layer.variables().unwrap();
    vars[0].1 = Tensor::zeros(DType::F32, vec![31]).unwrap();
    assert!(matches!(layer.set_variables(&vars), Err(Error::ShapeMismatch { .. })));
    vars[0].1 = Tensor::zeros(DType::F64, vec![32]).unwrap();
    assert!(matches!(layer.set_variables(&vars), Err(Error::DTypeMismatch { .. })));
    let unknown = vec![("params/Nope/kernel".to_string(), Tensor::zeros(DType::F32, vec![1]).unwrap())];
    assert!(matches!(layer.set_variables(&unknown), Err(Error::NotFound { .. })));
    assert_eq!(snapshot(&layer), before);
    let partial = layer.variables().unwrap().into_iter().take(3).collect();
    let err = FlaxLayer::builder(hlo("dense_bn_dropout")).variables(partial).client(client()).build().unwrap_err();
    assert!(matches!(err, Error::NotFound { what: "variable", .. }), "{err}");
}

#[test]
fn unknown_method_and_missing_bundle_are_errors() {
    let err = FlaxLayer::builder(hlo("mlp")).method("nope").client(client()).build().unwrap_err();
    assert!(matches!(&err, Error::NotFound { what: "method", name, .. } if name == "nope"), "{err}");
    let err = FlaxLayer::builder(hlo("no_such_bundle")).client(client()).build().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn load_of_a_corrupt_save_is_an_error() {
    let layer = layer("mlp");
    let dir = tempfile::tempdir().unwrap();
    layer.save(dir.path()).unwrap();
    std::fs::write(dir.path().join("layer.json"), b"{ not json").unwrap();
    assert!(matches!(FlaxLayer::builder(dir.path()).client(client()).load(), Err(Error::Json { .. })));
    layer.save(dir.path()).unwrap();
    std::fs::write(dir.path().join("variables.safetensors"), b"garbage").unwrap();
    assert!(matches!(FlaxLayer::builder(dir.path()).client(client()).load(), Err(Error::SafeTensors { .. })));
}

#[test]
fn variables_file_is_checked_and_used() {
    let golden = Golden::load("mlp");
    let mut layer = FlaxLayer::builder(hlo("mlp")).variables_file(hlo("mlp").join("variables.safetensors")).client(client()).build().unwrap();
    let x = inputs(&layer, &golden);
    let out = layer.call(&x, Mode::Inference).unwrap();
    assert_close("mlp from variables_file", &named(&out), &golden.group("inference"));
    let missing = FlaxLayer::builder(hlo("mlp")).variables_file(hlo("mlp").join("nope.safetensors")).client(client()).build();
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
    let wrong = FlaxLayer::builder(hlo("mlp")).variables_file(hlo("dense_bn_dropout").join("variables.safetensors")).client(client()).build();
    assert!(matches!(wrong, Err(Error::NotFound { .. } | Error::ShapeMismatch { .. })), "{wrong:?}");
}

#[test]
fn compile_cache_setting_is_honoured() {
    use flaxlayer::layer::cache::CacheSetting;
    let dir = tempfile::tempdir().unwrap();
    let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![1, 64]).unwrap());
    let count = || std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
    let mut off = FlaxLayer::builder(hlo("mlp")).compile_cache(CacheSetting::Off).client(client()).build().unwrap();
    off.call(&x, Mode::Inference).unwrap();
    assert_eq!(count(), 0);
    let cached = dir.path().join("cache");
    let mut on = FlaxLayer::builder(hlo("mlp")).init_variables().compile_cache(CacheSetting::Dir(cached.clone())).client(client()).build().unwrap();
    let entries = || std::fs::read_dir(&cached).unwrap().count();
    assert_eq!(entries(), 1, "init compiled through the cache");
    on.call(&x, Mode::Inference).unwrap();
    assert_eq!(entries(), 2, "the batch-1 inference computation compiled on its first call");
    on.call(PyTree::leaf(Tensor::zeros(DType::F32, vec![8, 64]).unwrap()), Mode::Inference).unwrap();
    assert_eq!(entries(), 3, "batch 8 compiled lazily, on its own first call");
    let mut again = FlaxLayer::builder(hlo("mlp")).compile_cache(CacheSetting::Dir(cached.clone())).client(client()).build().unwrap();
    assert_eq!(again.call(&x, Mode::Inference).unwrap(), off.call(&x, Mode::Inference).unwrap());
    assert_eq!(entries(), 3, "a warm cache adds nothing");
}

#[test]
fn jax_layer_takes_params_and_state_apart_as_keras_does() {
    // dense_bn_dropout has params and batch_stats (state): Keras' JaxLayer(call_fn, init_fn,
    // params, state) is FlaxLayer::jax_layer(bundle, params, state).
    let name = "dense_bn_dropout";
    let golden = Golden::load(name);
    let vars = read_safetensors(hlo(name).join("variables.safetensors")).unwrap();
    let (params, state): (Vec<_>, Vec<_>) = vars.iter().cloned().partition(|(n, _)| n.starts_with("params/"));
    assert!(!params.is_empty() && !state.is_empty());
    let mut layer = FlaxLayer::jax_layer(bundle(name), Some(params.clone()), Some(state.clone())).unwrap().client(client()).build().unwrap();
    let out = layer.call(inputs(&layer, &golden), Mode::Inference).unwrap();
    assert_close(&format!("{name} jax_layer inference"), &named(&out), &golden.group("inference"));
    // Neither: init runs on the device under the seed, as Keras' JaxLayer calls init_fn.
    let init = FlaxLayer::jax_layer(bundle(name), None, None).unwrap();
    assert!(matches!(init.options().variables, flaxlayer::layer::VariablesSource::Init));
    let layer = init.client(client()).build().unwrap();
    assert_close(&format!("{name} jax_layer init"), &layer.variables().unwrap(), &vars);
    // A leaf in the wrong collection, or state without params, is refused by name.
    let err = FlaxLayer::jax_layer(bundle(name), Some(vars.clone()), None).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { what, .. } if what.contains("batch_stats/")), "{err}");
    let err = FlaxLayer::jax_layer(bundle(name), Some(params.clone()), Some(vars.clone())).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { what, .. } if what.starts_with("state leaf \"params/")), "{err}");
    let err = FlaxLayer::jax_layer(bundle(name), None, Some(state)).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { what, .. } if what == "params"), "{err}");
    // Params only, on a bundle with state: the build names what is missing.
    let err = FlaxLayer::jax_layer(bundle(name), Some(params), None).unwrap().client(client()).build().unwrap_err();
    assert!(err.to_string().contains("batch_stats"), "{err}");
}
