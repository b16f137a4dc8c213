//! The ways of passing inputs (issue 27): `inputs!`, maps, `(name, tensor)` pairs, tuples,
//! `ndarray` views, `.npy` and safetensors files. Each is checked against JAX's outputs on a
//! two-input model (`hlo/image_meta`: `{"image", "meta"}`) or a two-positional-input one
//! (`hlo/wrapper`), and the borrowed forms are checked not to copy the tensors' data.

use std::collections::{BTreeMap, HashMap};

use flaxlayer::{inputs, AsInputs, DType, FlaxLayer, Mode, Tensor, TreeView};

use crate::common::golden::{assert_close, named, Golden};
use crate::common::hlo;

/// The leaf at `path` of a view points into `t`'s own memory: nothing was copied.
fn borrows(view: &TreeView<'_>, path: &str, t: &Tensor) {
    let leaf = view.get_leaf(path).unwrap_or_else(|| panic!("no leaf {path}"));
    assert_eq!(leaf.as_bytes().as_ptr(), t.as_bytes().as_ptr(), "{path}: the view must borrow the tensor, not copy it");
}

#[test]
fn two_named_inputs_by_macro_map_pairs_and_file() {
    let golden = Golden::load("image_meta");
    let (img, meta) = (golden.get("inputs/image"), golden.get("inputs/meta"));
    let want = golden.group("inference");
    let mut layer = FlaxLayer::builder(hlo("image_meta")).build().unwrap();

    // ort's way: inputs! borrows.
    let x = inputs! {"image" => img, "meta" => meta};
    borrows(&x, "image", img);
    borrows(&x, "meta", meta);
    assert_close("inputs!", &named(&layer.call(&x, Mode::Inference).unwrap()), &want);

    // A HashMap of references, and one of owned tensors (both borrowed by the call).
    let by_ref: HashMap<&str, &Tensor> = HashMap::from([("image", img), ("meta", meta)]);
    borrows(&by_ref.as_inputs(), "meta", meta);
    assert_close("HashMap<&str, &Tensor>", &named(&layer.predict(&by_ref).unwrap()), &want);
    let owned: HashMap<String, Tensor> = HashMap::from([("image".to_string(), img.clone()), ("meta".to_string(), meta.clone())]);
    borrows(&owned.as_inputs(), "image", &owned["image"]);
    assert_close("HashMap<String, Tensor>", &named(&layer.predict(&owned).unwrap()), &want);

    // Pairs: an array and a slice of (&str, &Tensor).
    let pairs = [("image", img), ("meta", meta)];
    borrows(&pairs.as_inputs(), "image", img);
    assert_close("[(&str, &Tensor); 2]", &named(&layer.predict(pairs).unwrap()), &want);
    assert_close("&[(&str, &Tensor)]", &named(&layer.predict(&pairs[..]).unwrap()), &want);

    // Mixed leaves: an ndarray view next to a tensor.
    let meta_array = meta.to_array::<f32>().unwrap();
    let meta_view = meta_array.view();
    let mixed = inputs! {"image" => img, "meta" => &meta_view};
    assert_close("inputs! with an ndarray view", &named(&layer.predict(&mixed).unwrap()), &want);

    // A safetensors file read into a map, and .npy files.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&path, [("image", img), ("meta", meta)]).unwrap();
    let from_file: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap();
    assert_close("Tensor::read_safetensors", &named(&layer.predict(&from_file).unwrap()), &want);
    img.write_npy(dir.path().join("image.npy")).unwrap();
    meta.write_npy(dir.path().join("meta.npy")).unwrap();
    let img_npy = Tensor::read_npy(dir.path().join("image.npy")).unwrap();
    let meta_npy = Tensor::read_npy(dir.path().join("meta.npy")).unwrap();
    assert_eq!((&img_npy, &meta_npy), (img, meta));

    // A wrong key is refused before anything runs, naming what the method takes.
    let e = layer.predict(inputs! {"image" => img, "metadata" => meta}).unwrap_err();
    assert!(e.to_string().contains("meta"), "{e}");
}

#[test]
fn positional_inputs_as_tuples() {
    let golden = Golden::load("wrapper");
    let (x1, x2) = (golden.get("inputs/0"), golden.get("inputs/1"));
    let want = golden.group("inference");
    let layer = FlaxLayer::builder(hlo("wrapper")).build().unwrap();
    let tuple = (x1, x2);
    borrows(&tuple.as_inputs(), "1", x2);
    assert_close("(&Tensor, &Tensor)", &named(&layer.predict(tuple).unwrap()), &want);
    let positional = inputs![x1, x2];
    borrows(&positional, "0", x1);
    assert_close("inputs![..]", &named(&layer.predict(&positional).unwrap()), &want);
    // ndarray views, one of them not in C order (copied once into C order).
    let a1 = x1.to_array::<f32>().unwrap();
    let a2t = x2.to_array::<f32>().unwrap().reversed_axes().as_standard_layout().into_owned().reversed_axes();
    assert!(!a2t.is_standard_layout());
    assert_close("(ArrayView, ArrayView)", &named(&layer.predict(&(a1.view(), a2t.view())).unwrap()), &want);
}

#[test]
fn specs_mark_the_batch_axis_that_varies() {
    let layer = FlaxLayer::builder(hlo("image_meta")).build().unwrap();
    let ins: Vec<String> = layer.inputs().iter().map(ToString::to_string).collect();
    assert_eq!(ins, ["image: float32[?, 8, 8, 1]", "meta: float32[?, 3]"]);
    let outs = layer.outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].to_string(), "outputs: float32[?, 2]");
    assert_eq!(outs[0].dims_i64(), [-1, 2]);
    assert!(layer.inputs()[0].accepts(DType::F32, &[7, 8, 8, 1]));
    // A method exported at one batch size that may not pad keeps that size...
    let decoder = FlaxLayer::builder(hlo("decoder")).build().unwrap();
    assert!(!decoder.batching().paddable());
    assert_eq!(decoder.inputs()[0].shape, [Some(1), Some(1)]);
    // ...and one exported at several sizes that may not pad varies among them.
    let bn = FlaxLayer::builder(hlo("bn_batch_stats")).build().unwrap();
    assert!(!bn.batching().paddable());
    assert_eq!(bn.inputs()[0].shape, [None, Some(5)]);
    assert!(!bn.inputs()[0].accepts(DType::F32, &[4, 6]));
}

#[test]
fn a_safetensors_file_read_into_the_input_tree() {
    let g = Golden::load("wrapper");
    let layer = FlaxLayer::builder(hlo("wrapper")).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.safetensors");
    Tensor::write_safetensors(&path, [("0", g.get("inputs/0")), ("1", g.get("inputs/1"))]).unwrap();
    let tree = flaxlayer::PyTree::read_safetensors(&path, layer.input_tree(), "inputs").unwrap();
    assert_close("PyTree::read_safetensors", &named(&layer.predict(&tree).unwrap()), &g.group("inference"));
    // An extra tensor: the file, the name, and what the tree holds.
    Tensor::write_safetensors(&path, [("0", g.get("inputs/0")), ("1", g.get("inputs/1")), ("label", g.get("inputs/0"))]).unwrap();
    let e = flaxlayer::PyTree::read_safetensors(&path, layer.input_tree(), "inputs").unwrap_err().to_string();
    assert!(e.contains("in.safetensors") && e.contains("[label] not in the tree, whose leaves are [0, 1]"), "{e}");
}
