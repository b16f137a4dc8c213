//! PyTrees: JAX's built-in containers (tuple, list, dict, `None`) around leaves.
//!
//! One generic [`Tree`] serves three uses with one set of walkers:
//! - [`PyTree`] = `Tree<Tensor>`: host values, the inputs and outputs of a layer;
//! - [`TreeView`] = `Tree<TensorView>`: borrowed host values (zero-copy inputs);
//! - [`TreeDef`] = `Tree<()>`: a structure without values, as JAX serializes `PyTreeDef`s.
//!
//! Names follow the bundle format: tuple and list indices as numbers, dict keys as
//! themselves, levels joined by `/`; a bare leaf is named by a root name the caller gives
//! (`inputs`, `outputs`). Dicts are ordered by sorted keys, as JAX flattens them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::tensor::{Tensor, TensorView};
use crate::{Error, Result};

/// A nested value: JAX's built-in PyTree node types around leaves of type `L`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tree<L> {
    /// A leaf (an array, or `()` in a [`TreeDef`]).
    Leaf(L),
    /// Python's `None`: a node with no children (and no leaves).
    None,
    /// A tuple.
    Tuple(Vec<Tree<L>>),
    /// A list.
    List(Vec<Tree<L>>),
    /// A dict with string keys, kept sorted as JAX flattens them.
    Dict(BTreeMap<String, Tree<L>>),
}

/// A tree of host tensors: a layer's inputs and outputs.
pub type PyTree = Tree<Tensor>;

/// A tree of borrowed host arrays: inputs passed without copying them first.
pub type TreeView<'a> = Tree<TensorView<'a>>;

/// The structure of a tree without its values: JAX's `PyTreeDef` for the node types JAX
/// serializes without a registry (leaf, `None`, tuple, list, dict with string keys).
pub type TreeDef = Tree<()>;

/// Joins a path prefix and one more level.
fn join(prefix: &str, segment: &str) -> String {
    if prefix.is_empty() {
        segment.to_string()
    } else {
        format!("{prefix}/{segment}")
    }
}

/// A path for error messages: the root is `<root>`.
fn shown(path: &str) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    }
}

/// `[a, b]`, as error messages show dict keys.
fn key_list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    format!("[{}]", keys.map(String::as_str).collect::<Vec<_>>().join(", "))
}

impl<L> Tree<L> {
    /// A leaf.
    pub fn leaf(value: L) -> Tree<L> {
        Tree::Leaf(value)
    }

    /// A dict; with a repeated key the last value wins, as in a Python dict literal.
    pub fn dict<K: Into<String>>(items: impl IntoIterator<Item = (K, Tree<L>)>) -> Tree<L> {
        Tree::Dict(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A tuple.
    pub fn tuple(items: impl IntoIterator<Item = Tree<L>>) -> Tree<L> {
        Tree::Tuple(items.into_iter().collect())
    }

    /// A list.
    pub fn list(items: impl IntoIterator<Item = Tree<L>>) -> Tree<L> {
        Tree::List(items.into_iter().collect())
    }

    /// The value of a leaf node.
    pub fn as_leaf(&self) -> Option<&L> {
        match self {
            Tree::Leaf(x) => Some(x),
            _ => None,
        }
    }

    /// The child nodes with their path segments (indices, or dict keys), in flatten order.
    fn children(&self) -> Vec<(String, &Tree<L>)> {
        match self {
            Tree::Leaf(_) | Tree::None => Vec::new(),
            Tree::Tuple(c) | Tree::List(c) => c.iter().enumerate().map(|(i, c)| (i.to_string(), c)).collect(),
            Tree::Dict(m) => m.iter().map(|(k, c)| (k.clone(), c)).collect(),
        }
    }

    /// The child nodes, in flatten order.
    pub fn child_nodes(&self) -> Vec<&Tree<L>> {
        match self {
            Tree::Leaf(_) | Tree::None => Vec::new(),
            Tree::Tuple(c) | Tree::List(c) => c.iter().collect(),
            Tree::Dict(m) => m.values().collect(),
        }
    }

    /// A dict node's keys (sorted).
    pub fn keys(&self) -> Option<Vec<&str>> {
        match self {
            Tree::Dict(m) => Some(m.keys().map(String::as_str).collect()),
            _ => None,
        }
    }

    /// The node's kind, as error messages show it: `leaf`, `None`, `tuple of 2`,
    /// `list of 3`, `dict with keys [a, b]`.
    pub fn describe(&self) -> String {
        match self {
            Tree::Leaf(_) => "leaf".into(),
            Tree::None => "None".into(),
            Tree::Tuple(c) => format!("tuple of {}", c.len()),
            Tree::List(c) => format!("list of {}", c.len()),
            Tree::Dict(m) => format!("dict with keys {}", key_list(m.keys())),
        }
    }

    /// The sub-tree at `path` (`"0/ids"`; `""` is the tree itself). A dict key that
    /// contains `/` cannot be reached this way.
    pub fn get(&self, path: &str) -> Option<&Tree<L>> {
        if path.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for seg in path.split('/') {
            node = match node {
                Tree::Tuple(c) | Tree::List(c) => c.get(seg.parse::<usize>().ok()?)?,
                Tree::Dict(m) => m.get(seg)?,
                Tree::Leaf(_) | Tree::None => return None,
            };
        }
        Some(node)
    }

    /// The leaf at `path`; a bare leaf is found under `""` and under any root name.
    pub fn get_leaf(&self, path: &str) -> Option<&L> {
        match self {
            Tree::Leaf(x) => Some(x),
            _ => self.get(path)?.as_leaf(),
        }
    }

    /// The number of leaves.
    pub fn num_leaves(&self) -> usize {
        match self {
            Tree::Leaf(_) => 1,
            _ => self.child_nodes().into_iter().map(Tree::num_leaves).sum(),
        }
    }

    /// Calls `f` with each leaf's path and value, in flatten order. This is the one walk that
    /// every read-only traversal here is built on.
    fn visit<'a>(&'a self, path: &str, f: &mut impl FnMut(&str, &'a L)) {
        match self {
            Tree::Leaf(x) => f(path, x),
            _ => {
                for (seg, c) in self.children() {
                    c.visit(&join(path, &seg), f);
                }
            }
        }
    }

    /// The leaves in JAX's flatten order.
    pub fn leaves(&self) -> Vec<&L> {
        let mut out = Vec::new();
        self.visit("", &mut |_, x| out.push(x));
        out
    }

    /// The leaves in flatten order with their paths; a bare leaf is named `root_name`.
    pub fn flatten_with_paths(&self, root_name: &str) -> Vec<(String, &L)> {
        let mut out = Vec::new();
        self.visit("", &mut |p, x| out.push((if p.is_empty() { root_name.to_string() } else { p.to_string() }, x)));
        out
    }

    /// The path of every leaf, in flatten order; a bare leaf is named `root_name`.
    pub fn leaf_paths(&self, root_name: &str) -> Vec<String> {
        self.flatten_with_paths(root_name).into_iter().map(|(p, _)| p).collect()
    }

    /// The same tree with every leaf mapped by `f`.
    pub fn map<'a, M>(&'a self, mut f: impl FnMut(&'a L) -> M) -> Tree<M> {
        fn walk<'a, L, M>(t: &'a Tree<L>, f: &mut impl FnMut(&'a L) -> M) -> Tree<M> {
            match t {
                Tree::Leaf(x) => Tree::Leaf(f(x)),
                Tree::None => Tree::None,
                Tree::Tuple(c) => Tree::Tuple(c.iter().map(|c| walk(c, f)).collect()),
                Tree::List(c) => Tree::List(c.iter().map(|c| walk(c, f)).collect()),
                Tree::Dict(m) => Tree::Dict(m.iter().map(|(k, c)| (k.clone(), walk(c, f))).collect()),
            }
        }
        walk(self, &mut f)
    }

    /// The tree's structure.
    pub fn structure(&self) -> TreeDef {
        self.map(|_| ())
    }

    /// The leaves in JAX's flatten order, moved out.
    pub fn into_leaves(self) -> Vec<L> {
        fn walk<L>(t: Tree<L>, out: &mut Vec<L>) {
            match t {
                Tree::Leaf(x) => out.push(x),
                Tree::None => {}
                Tree::Tuple(c) | Tree::List(c) => c.into_iter().for_each(|c| walk(c, out)),
                Tree::Dict(m) => m.into_values().for_each(|c| walk(c, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// Builds a tree of structure `def` from leaves named by their paths (a bare leaf is
    /// named `root_name`). Every leaf of `def` must be given, and nothing else.
    pub fn from_named_leaves(def: &TreeDef, root_name: &str, leaves: impl IntoIterator<Item = (String, L)>) -> Result<Tree<L>> {
        let mut named: HashMap<String, L> = HashMap::new();
        for (name, t) in leaves {
            if named.contains_key(&name) {
                return Err(Error::invalid("PyTree::from_named_leaves", format!("leaf {name:?} given twice")));
            }
            named.insert(name, t);
        }
        let paths = def.leaf_paths(root_name);
        let mut ordered = Vec::with_capacity(paths.len());
        for p in &paths {
            match named.remove(p) {
                Some(t) => ordered.push(t),
                None => {
                    let mut available: Vec<&String> = named.keys().collect();
                    available.sort();
                    return Err(Error::NotFound {
                        what: "PyTree leaf",
                        name: p.clone(),
                        available: available.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        if !named.is_empty() {
            let mut extra: Vec<String> = named.into_keys().collect();
            extra.sort();
            return Err(Error::invalid(
                "named leaves",
                format!("{} not in the tree, whose leaves are [{}]: remove {}", key_list(extra.iter()), paths.join(", "), if extra.len() == 1 { "it" } else { "them" }),
            ));
        }
        def.unflatten(ordered)
    }
}

impl PyTree {
    /// Reads a safetensors file into the tree `def` (a layer's `input_tree()`), its tensors
    /// named by leaf path (`image`, `0`, `1/ids`; `root_name` for a bare leaf). A missing or an
    /// extra tensor is an error naming the file.
    pub fn read_safetensors(path: impl AsRef<std::path::Path>, def: &TreeDef, root_name: &str) -> Result<PyTree> {
        let path = path.as_ref();
        let named = crate::tensor::read_safetensors(path)?;
        PyTree::from_named_leaves(def, root_name, named).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::invalid(path.display().to_string(), reason),
            Error::NotFound { name, available, .. } => {
                Error::invalid(path.display().to_string(), format!("no tensor {name:?} (it holds [{available}])"))
            }
            e => e,
        })
    }

    /// The tensor of a leaf.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        self.as_leaf()
    }

    /// The tensor at `path`, or [`Error::NotFound`] listing the leaf paths there are
    /// (a bare leaf is found under `""` and any root name).
    pub fn get_tensor(&self, path: &str) -> Result<&Tensor> {
        self.get_leaf(path).ok_or_else(|| Error::NotFound {
            what: "PyTree leaf",
            name: path.to_string(),
            available: self.leaf_paths("").join(", "),
        })
    }

    /// Borrowed views of every leaf, for a call that should not copy the tensors.
    pub fn view(&self) -> TreeView<'_> {
        self.map(Tensor::view)
    }
}

impl<L> std::ops::Index<&str> for Tree<L> {
    type Output = L;
    /// The leaf at a path, as ort's `SessionOutputs["name"]`: `out["logits"]`,
    /// `out["1/ids"]`. Panics when there is no leaf there; use [`Tree::get_leaf`] to ask.
    fn index(&self, path: &str) -> &L {
        match self.get_leaf(path) {
            Some(x) => x,
            None => panic!("no leaf at path {path:?}; leaves: {:?}", self.leaf_paths("")),
        }
    }
}

impl<L> std::ops::Index<usize> for Tree<L> {
    type Output = L;
    /// The `i`-th leaf in flatten order (`out[0]` for a bare output). Panics when there are
    /// fewer leaves.
    fn index(&self, i: usize) -> &L {
        let leaves = self.leaves();
        let n = leaves.len();
        match leaves.into_iter().nth(i) {
            Some(x) => x,
            None => panic!("leaf index {i} out of range: the tree has {n} leaves"),
        }
    }
}

impl From<Tensor> for PyTree {
    fn from(t: Tensor) -> PyTree {
        Tree::Leaf(t)
    }
}

impl<'a> From<TensorView<'a>> for TreeView<'a> {
    fn from(t: TensorView<'a>) -> TreeView<'a> {
        Tree::Leaf(t)
    }
}

impl<T: crate::Element> From<ndarray::ArrayD<T>> for PyTree {
    fn from(a: ndarray::ArrayD<T>) -> PyTree {
        Tree::Leaf(Tensor::from(a))
    }
}

impl<K: Into<String>> FromIterator<(K, PyTree)> for PyTree {
    /// A dict from `(key, value)` pairs.
    fn from_iter<I: IntoIterator<Item = (K, PyTree)>>(items: I) -> PyTree {
        Tree::dict(items)
    }
}

impl TreeDef {
    /// A dict node, with keys sorted; a repeated key is an error.
    pub fn dict_checked<K: Into<String>>(items: impl IntoIterator<Item = (K, TreeDef)>) -> Result<TreeDef> {
        let mut m = BTreeMap::new();
        for (k, v) in items {
            let k = k.into();
            if m.contains_key(&k) {
                return Err(Error::invalid("TreeDef::dict", format!("key {k:?} given twice")));
            }
            m.insert(k, v);
        }
        Ok(Tree::Dict(m))
    }

    /// An exported function's `in_tree` is `((args...), {kwargs})`: returns the args tuple
    /// and the kwargs dict.
    pub fn args_kwargs(&self) -> Result<(&TreeDef, &TreeDef)> {
        match self {
            Tree::Tuple(c) if c.len() == 2 && matches!(c[0], Tree::Tuple(_)) && matches!(c[1], Tree::Dict(_)) => Ok((&c[0], &c[1])),
            other => Err(Error::TreeMismatch {
                path: "<root>".into(),
                expected: "tuple of 2 (an args tuple and a kwargs dict)".into(),
                got: other.describe(),
            }),
        }
    }

    /// The mismatch error at `path` between this node and `tree`'s.
    fn mismatch<L>(&self, path: &str, tree: &Tree<L>) -> Error {
        Error::TreeMismatch { path: shown(path), expected: self.describe(), got: tree.describe() }
    }

    /// Whether `tree`'s top node has this node's kind and arity (and dict keys).
    fn node_matches<L>(&self, tree: &Tree<L>) -> bool {
        match (self, tree) {
            (Tree::Leaf(()), Tree::Leaf(_)) | (Tree::None, Tree::None) => true,
            (Tree::Tuple(d), Tree::Tuple(t)) | (Tree::List(d), Tree::List(t)) => d.len() == t.len(),
            (Tree::Dict(d), Tree::Dict(m)) => d.len() == m.len() && d.keys().all(|k| m.contains_key(k)),
            _ => false,
        }
    }

    /// Checks that `tree` has this structure: a difference is an [`Error::TreeMismatch`]
    /// naming the first path where they differ.
    pub fn check<L>(&self, tree: &Tree<L>) -> Result<()> {
        fn walk<L>(d: &TreeDef, t: &Tree<L>, path: &str) -> Result<()> {
            if !d.node_matches(t) {
                return Err(d.mismatch(path, t));
            }
            for ((seg, dc), tc) in d.children().into_iter().zip(t.child_nodes()) {
                walk(dc, tc, &join(path, &seg))?;
            }
            Ok(())
        }
        walk(self, tree, "")
    }

    /// The leaves of `tree` in flatten order, after checking that `tree` has this
    /// structure ([`TreeDef::check`]).
    pub fn flatten<'a, L>(&self, tree: &'a Tree<L>) -> Result<Vec<&'a L>> {
        self.check(tree)?;
        Ok(tree.leaves())
    }

    /// Like [`TreeDef::flatten`], moving the leaves out of `tree`.
    pub fn flatten_owned<L>(&self, tree: Tree<L>) -> Result<Vec<L>> {
        self.check(&tree)?;
        Ok(tree.into_leaves())
    }

    /// A tree of this structure from leaves in flatten order.
    pub fn unflatten<L>(&self, leaves: Vec<L>) -> Result<Tree<L>> {
        fn build<L>(d: &TreeDef, it: &mut std::vec::IntoIter<L>) -> Tree<L> {
            match d {
                // `unflatten` checked the count, so there is a leaf for every position.
                Tree::Leaf(()) => it.next().map_or(Tree::None, Tree::Leaf),
                Tree::None => Tree::None,
                Tree::Tuple(c) => Tree::Tuple(c.iter().map(|c| build(c, it)).collect()),
                Tree::List(c) => Tree::List(c.iter().map(|c| build(c, it)).collect()),
                Tree::Dict(m) => Tree::Dict(m.iter().map(|(k, c)| (k.clone(), build(c, it))).collect()),
            }
        }
        let expected = self.num_leaves();
        if leaves.len() != expected {
            return Err(Error::SizeMismatch { what: "TreeDef::unflatten".into(), expected, got: leaves.len(), unit: "leaves" });
        }
        Ok(build(self, &mut leaves.into_iter()))
    }
}

/// Python's `repr` of a string (single quotes unless the text has one and no double).
fn py_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Writes a tree Python-style, each leaf through `leaf`.
fn write_tree<L>(f: &mut fmt::Formatter<'_>, t: &Tree<L>, leaf: &dyn Fn(&mut fmt::Formatter<'_>, &L) -> fmt::Result) -> fmt::Result {
    let seq = |f: &mut fmt::Formatter<'_>, open: &str, close: &str, c: &[Tree<L>], trailing: bool| -> fmt::Result {
        f.write_str(open)?;
        for (i, c) in c.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write_tree(f, c, leaf)?;
        }
        if trailing {
            f.write_str(",")?;
        }
        f.write_str(close)
    };
    match t {
        Tree::Leaf(x) => leaf(f, x),
        Tree::None => f.write_str("None"),
        Tree::Tuple(c) => seq(f, "(", ")", c, c.len() == 1),
        Tree::List(c) => seq(f, "[", "]", c, false),
        Tree::Dict(m) => {
            f.write_str("{")?;
            for (i, (k, c)) in m.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}: ", py_repr(k))?;
                write_tree(f, c, leaf)?;
            }
            f.write_str("}")
        }
    }
}

impl fmt::Display for PyTree {
    /// Python-like: `({'ids': int32[2,8]}, None)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_tree(f, self, &|f, t: &Tensor| {
            let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
            write!(f, "{}[{}]", t.dtype(), dims.join(","))
        })
    }
}

impl fmt::Display for TreeDef {
    /// As JAX prints it: `PyTreeDef(((*, {'a': *}), {}))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PyTreeDef(")?;
        write_tree(f, self, &|f, _: &()| f.write_str("*"))?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn t(v: f32) -> Tensor {
        Tensor::scalar(v)
    }

    fn leaf(v: f32) -> PyTree {
        PyTree::leaf(t(v))
    }

    /// `(leaf0, {"x": leaf1, "ids": leaf2}, [None, leaf3])`
    fn sample() -> PyTree {
        PyTree::tuple([
            leaf(0.0),
            PyTree::dict([("x", leaf(1.0)), ("ids", leaf(2.0))]),
            PyTree::list([PyTree::None, leaf(3.0)]),
        ])
    }

    fn values(ts: &[&Tensor]) -> Vec<f32> {
        ts.iter().map(|t| t.as_slice::<f32>().unwrap()[0]).collect()
    }

    #[test]
    fn flatten_order_and_paths() {
        let tree = sample();
        assert_eq!(tree.num_leaves(), 4);
        // Dict keys are flattened sorted: ids before x.
        assert_eq!(values(&tree.leaves()), vec![0.0, 2.0, 1.0, 3.0]);
        let paths: Vec<String> = tree.flatten_with_paths("inputs").into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, vec!["0", "1/ids", "1/x", "2/1"]);
        let def = tree.structure();
        assert_eq!(def.leaf_paths("inputs"), paths);
        assert_eq!(def.num_leaves(), 4);
        assert_eq!(values(&def.flatten(&tree).unwrap()), vec![0.0, 2.0, 1.0, 3.0]);
        assert_eq!(def.to_string(), "PyTreeDef((*, {'ids': *, 'x': *}, [None, *]))");
        assert_eq!(tree.to_string(), "(float32[], {'ids': float32[], 'x': float32[]}, [None, float32[]])");
    }

    #[test]
    fn bare_leaf_is_named_by_root() {
        let tree = leaf(5.0);
        assert_eq!(tree.flatten_with_paths("outputs")[0].0, "outputs");
        assert_eq!(TreeDef::Leaf(()).leaf_paths("outputs"), vec!["outputs"]);
        assert_eq!(PyTree::None.flatten_with_paths("x").len(), 0);
        assert_eq!(TreeDef::Tuple(vec![]).leaf_paths("x"), Vec::<String>::new());
        let d = TreeDef::dict([("x", TreeDef::Leaf(())), ("ids", TreeDef::Leaf(()))]);
        assert_eq!(d.leaf_paths("inputs"), vec!["ids", "x"]);
    }

    #[test]
    fn round_trips() {
        let tree = sample();
        let def = tree.structure();
        let leaves = tree.clone().into_leaves();
        assert_eq!(def.unflatten(leaves.clone()).unwrap(), tree);
        assert_eq!(def.flatten_owned(tree.clone()).unwrap(), leaves);
        let named: Vec<(String, Tensor)> =
            tree.flatten_with_paths("inputs").into_iter().map(|(p, t)| (p, t.clone())).collect();
        assert_eq!(PyTree::from_named_leaves(&def, "inputs", named).unwrap(), tree);
        let bare = PyTree::from_named_leaves(&TreeDef::Leaf(()), "inputs", [("inputs".to_string(), t(1.0))]).unwrap();
        assert_eq!(bare, leaf(1.0));
    }

    #[test]
    fn get_paths() {
        let tree = sample();
        assert_eq!(tree.get("1/ids"), Some(&leaf(2.0)));
        assert_eq!(tree.get("2/0"), Some(&PyTree::None));
        assert_eq!(tree.get(""), Some(&tree));
        assert_eq!(tree.get("3"), None);
        assert_eq!(tree.get("1/y"), None);
        assert_eq!(tree.get("0/0"), None);
        assert_eq!(tree.get("x"), None);
        assert_eq!(tree.get_tensor("2/1").unwrap(), &t(3.0));
        let e = tree.get_tensor("2/0").unwrap_err();
        assert!(matches!(&e, Error::NotFound { available, .. } if available == "0, 1/ids, 1/x, 2/1"), "{e}");
        let def = tree.structure();
        assert_eq!(def.get("1/x"), Some(&TreeDef::Leaf(())));
        assert_eq!(def.get("1"), def.child_nodes().get(1).copied());
        assert_eq!(def.get("1").unwrap().keys().unwrap(), ["ids", "x"]);
        assert_eq!(def.get("9"), None);
    }

    fn mismatch(def: &TreeDef, tree: &PyTree) -> (String, String, String) {
        let a = def.flatten(tree).unwrap_err();
        let b = def.flatten_owned(tree.clone()).unwrap_err();
        assert_eq!(a.to_string(), b.to_string());
        match a {
            Error::TreeMismatch { path, expected, got } => (path, expected, got),
            e => panic!("not a TreeMismatch: {e}"),
        }
    }

    #[test]
    fn every_mismatch_names_its_path() {
        let def = sample().structure();
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        // Root kind.
        assert_eq!(mismatch(&def, &leaf(0.0)), s("<root>", "tuple of 3", "leaf"));
        // Arity.
        assert_eq!(mismatch(&def, &PyTree::tuple([leaf(0.0)])), s("<root>", "tuple of 3", "tuple of 1"));
        // Tuple vs list.
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[2] = PyTree::tuple([PyTree::None, leaf(3.0)]);
        }
        assert_eq!(mismatch(&def, &tree), s("2", "list of 2", "tuple of 2"));
        // Dict keys.
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[1] = PyTree::dict([("x", leaf(1.0)), ("idz", leaf(2.0))]);
        }
        assert_eq!(mismatch(&def, &tree), s("1", "dict with keys [ids, x]", "dict with keys [idz, x]"));
        // Dict vs tuple, the example of the docs.
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[1] = PyTree::tuple([leaf(1.0), leaf(2.0)]);
        }
        assert_eq!(mismatch(&def, &tree), s("1", "dict with keys [ids, x]", "tuple of 2"));
        // Leaf vs None, and None vs leaf, deep.
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[2] = PyTree::list([leaf(9.0), leaf(3.0)]);
        }
        assert_eq!(mismatch(&def, &tree), s("2/0", "None", "leaf"));
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[1] = PyTree::dict([("x", leaf(1.0)), ("ids", PyTree::None)]);
        }
        assert_eq!(mismatch(&def, &tree), s("1/ids", "leaf", "None"));
        // A sub-tree where a leaf should be.
        let mut tree = sample();
        if let PyTree::Tuple(c) = &mut tree {
            c[0] = PyTree::list([]);
        }
        assert_eq!(mismatch(&def, &tree), s("0", "leaf", "list of 0"));
    }

    #[test]
    fn index_by_path_and_position() {
        let tree = sample();
        assert_eq!(tree["1/x"], t(1.0));
        assert_eq!(tree[3], t(3.0));
        let bare = leaf(5.0);
        assert_eq!(bare["outputs"], t(5.0));
        assert_eq!(bare[0], t(5.0));
        assert!(std::panic::catch_unwind(|| tree["1/nope"].clone()).is_err());
        let view = tree.view();
        assert_eq!(view["1/ids"].as_bytes(), t(2.0).as_bytes());
        assert_eq!(view.structure(), tree.structure());
    }

    #[test]
    fn unflatten_and_named_errors() {
        let def = sample().structure();
        let e = def.unflatten(vec![t(0.0)]).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { expected: 4, got: 1, unit: "leaves", .. }), "{e}");
        let named = |ps: &[&str]| ps.iter().map(|p| (p.to_string(), t(0.0))).collect::<Vec<_>>();
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "1/ids", "1/x"])).unwrap_err();
        assert!(matches!(&e, Error::NotFound { name, .. } if name == "2/1"), "{e}");
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "1/ids", "1/x", "2/1", "extra"])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        // No internal function name: which leaf, what the tree holds, what to do.
        assert_eq!(e.to_string(), "named leaves: [extra] not in the tree, whose leaves are [0, 1/ids, 1/x, 2/1]: remove it");
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "0"])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn treedef_dict_sorts_and_rejects_duplicates() {
        let d = TreeDef::dict_checked([("b", TreeDef::Leaf(())), ("a", TreeDef::None)]).unwrap();
        assert_eq!(d.keys().unwrap(), ["a", "b"]);
        assert_eq!(d.leaf_paths("x"), ["b"]);
        assert!(TreeDef::dict_checked([("a", TreeDef::Leaf(())), ("a", TreeDef::Leaf(()))]).is_err());
    }

    #[test]
    fn args_kwargs() {
        let def = TreeDef::Tuple(vec![TreeDef::Tuple(vec![TreeDef::Leaf(())]), TreeDef::dict([("k", TreeDef::Leaf(()))])]);
        let (a, k) = def.args_kwargs().unwrap();
        assert_eq!(a, &TreeDef::Tuple(vec![TreeDef::Leaf(())]));
        assert_eq!(k.keys().unwrap(), ["k"]);
        assert!(matches!(TreeDef::Leaf(()).args_kwargs(), Err(Error::TreeMismatch { .. })));
    }

    #[test]
    fn display_like_jax() {
        let d = TreeDef::Tuple(vec![
            TreeDef::Tuple(vec![TreeDef::Leaf(())]),
            TreeDef::Tuple(vec![]),
            TreeDef::List(vec![]),
            TreeDef::dict([("it's", TreeDef::Leaf(())), ("a\\b", TreeDef::None)]),
        ]);
        assert_eq!(d.to_string(), r#"PyTreeDef(((*,), (), [], {'a\\b': None, "it's": *}))"#);
        let z = PyTree::leaf(Tensor::zeros(DType::BF16, vec![2, 3]).unwrap());
        assert_eq!(z.to_string(), "bfloat16[2,3]");
    }
}
