//! PyTrees of host tensors, and tree structures (`TreeDef`) as JAX serializes them.
//!
//! Names follow the bundle format: tuple and list indices as numbers, dict keys as
//! themselves, levels joined by `/`; a bare leaf is named by a root name the caller gives
//! (`inputs`, `outputs`). Dicts are ordered by sorted keys, as JAX flattens them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::tensor::Tensor;
use crate::{Error, Result};

/// A nested value of tensors: JAX's built-in PyTree node types.
#[derive(Clone, Debug, PartialEq)]
pub enum PyTree {
    /// An array.
    Leaf(Tensor),
    /// Python's `None`: a node with no children (and no leaves).
    None,
    /// A tuple.
    Tuple(Vec<PyTree>),
    /// A list.
    List(Vec<PyTree>),
    /// A dict with string keys, kept sorted as JAX flattens them.
    Dict(BTreeMap<String, PyTree>),
}

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

impl PyTree {
    /// A leaf.
    pub fn leaf(t: Tensor) -> PyTree {
        PyTree::Leaf(t)
    }

    /// A dict; with a repeated key the last value wins, as in a Python dict literal.
    pub fn dict<K: Into<String>>(items: impl IntoIterator<Item = (K, PyTree)>) -> PyTree {
        PyTree::Dict(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A tuple.
    pub fn tuple(items: impl IntoIterator<Item = PyTree>) -> PyTree {
        PyTree::Tuple(items.into_iter().collect())
    }

    /// A list.
    pub fn list(items: impl IntoIterator<Item = PyTree>) -> PyTree {
        PyTree::List(items.into_iter().collect())
    }

    /// The tensor of a leaf.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            PyTree::Leaf(t) => Some(t),
            _ => None,
        }
    }

    /// The node's kind, as error messages show it: `leaf`, `None`, `tuple of 2`,
    /// `list of 3`, `dict with keys [a, b]`.
    pub fn describe(&self) -> String {
        match self {
            PyTree::Leaf(_) => "leaf".into(),
            PyTree::None => "None".into(),
            PyTree::Tuple(c) => format!("tuple of {}", c.len()),
            PyTree::List(c) => format!("list of {}", c.len()),
            PyTree::Dict(m) => format!("dict with keys {}", key_list(m.keys())),
        }
    }

    /// The sub-tree at `path` (`"0/ids"`; `""` is the tree itself). A dict key that
    /// contains `/` cannot be reached this way.
    pub fn get(&self, path: &str) -> Option<&PyTree> {
        if path.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for seg in path.split('/') {
            node = match node {
                PyTree::Tuple(c) | PyTree::List(c) => c.get(seg.parse::<usize>().ok()?)?,
                PyTree::Dict(m) => m.get(seg)?,
                PyTree::Leaf(_) | PyTree::None => return None,
            };
        }
        Some(node)
    }

    /// The tensor at `path`, or [`Error::NotFound`] listing the leaf paths there are
    /// (a bare leaf is found under `""`).
    pub fn get_tensor(&self, path: &str) -> Result<&Tensor> {
        self.get(path).and_then(PyTree::as_tensor).ok_or_else(|| Error::NotFound {
            what: "PyTree leaf",
            name: path.to_string(),
            available: self
                .flatten_with_paths("")
                .into_iter()
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The number of leaves.
    pub fn num_leaves(&self) -> usize {
        match self {
            PyTree::Leaf(_) => 1,
            PyTree::None => 0,
            PyTree::Tuple(c) | PyTree::List(c) => c.iter().map(PyTree::num_leaves).sum(),
            PyTree::Dict(m) => m.values().map(PyTree::num_leaves).sum(),
        }
    }

    /// The leaves in JAX's flatten order.
    pub fn leaves(&self) -> Vec<&Tensor> {
        fn walk<'a>(t: &'a PyTree, out: &mut Vec<&'a Tensor>) {
            match t {
                PyTree::Leaf(x) => out.push(x),
                PyTree::None => {}
                PyTree::Tuple(c) | PyTree::List(c) => c.iter().for_each(|c| walk(c, out)),
                PyTree::Dict(m) => m.values().for_each(|c| walk(c, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// The leaves in JAX's flatten order, moved out.
    pub fn into_leaves(self) -> Vec<Tensor> {
        fn walk(t: PyTree, out: &mut Vec<Tensor>) {
            match t {
                PyTree::Leaf(x) => out.push(x),
                PyTree::None => {}
                PyTree::Tuple(c) | PyTree::List(c) => c.into_iter().for_each(|c| walk(c, out)),
                PyTree::Dict(m) => m.into_values().for_each(|c| walk(c, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// The leaves in flatten order with their paths; a bare leaf is named `root_name`.
    pub fn flatten_with_paths(&self, root_name: &str) -> Vec<(String, &Tensor)> {
        fn walk<'a>(t: &'a PyTree, path: &str, out: &mut Vec<(String, &'a Tensor)>) {
            match t {
                PyTree::Leaf(x) => out.push((path.to_string(), x)),
                PyTree::None => {}
                PyTree::Tuple(c) | PyTree::List(c) => {
                    for (i, c) in c.iter().enumerate() {
                        walk(c, &join(path, &i.to_string()), out);
                    }
                }
                PyTree::Dict(m) => {
                    for (k, c) in m {
                        walk(c, &join(path, k), out);
                    }
                }
            }
        }
        if let PyTree::Leaf(x) = self {
            return vec![(root_name.to_string(), x)];
        }
        let mut out = Vec::new();
        walk(self, "", &mut out);
        out
    }

    /// The tree's structure.
    pub fn structure(&self) -> TreeDef {
        match self {
            PyTree::Leaf(_) => TreeDef::Leaf,
            PyTree::None => TreeDef::None,
            PyTree::Tuple(c) => TreeDef::Tuple(c.iter().map(PyTree::structure).collect()),
            PyTree::List(c) => TreeDef::List(c.iter().map(PyTree::structure).collect()),
            PyTree::Dict(m) => TreeDef::Dict {
                keys: m.keys().cloned().collect(),
                children: m.values().map(PyTree::structure).collect(),
            },
        }
    }

    /// Builds a tree of structure `def` from leaves named by their paths (a bare leaf is
    /// named `root_name`). Every leaf of `def` must be given, and nothing else.
    pub fn from_named_leaves(
        def: &TreeDef,
        root_name: &str,
        leaves: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<PyTree> {
        let mut named: HashMap<String, Tensor> = HashMap::new();
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
                "PyTree::from_named_leaves",
                format!("leaves not in the tree: {}", extra.join(", ")),
            ));
        }
        def.unflatten(ordered)
    }
}

impl From<Tensor> for PyTree {
    fn from(t: Tensor) -> PyTree {
        PyTree::Leaf(t)
    }
}

impl fmt::Display for PyTree {
    /// Python-like: `({'ids': int32[2,8]}, None)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyTree::Leaf(t) => {
                let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
                write!(f, "{}[{}]", t.dtype(), dims.join(","))
            }
            PyTree::None => f.write_str("None"),
            PyTree::Tuple(c) => write_seq(f, "(", ")", c.iter(), c.len() == 1),
            PyTree::List(c) => write_seq(f, "[", "]", c.iter(), false),
            PyTree::Dict(m) => write_dict(f, m.iter()),
        }
    }
}

/// The structure of a PyTree: JAX's `PyTreeDef` for the node types JAX serializes without a
/// registry (leaf, `None`, tuple, list, dict with string keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TreeDef {
    /// An array.
    Leaf,
    /// `None`.
    None,
    /// A tuple.
    Tuple(Vec<TreeDef>),
    /// A list.
    List(Vec<TreeDef>),
    /// A dict: `keys[i]` names `children[i]`; JAX keeps keys sorted, and flattens in key
    /// order. [`TreeDef::dict`] sorts; deserialized trees are checked to be sorted.
    Dict { keys: Vec<String>, children: Vec<TreeDef> },
}

impl TreeDef {
    /// A dict node, with keys sorted; a repeated key is an error.
    pub fn dict<K: Into<String>>(items: impl IntoIterator<Item = (K, TreeDef)>) -> Result<TreeDef> {
        let mut items: Vec<(String, TreeDef)> = items.into_iter().map(|(k, v)| (k.into(), v)).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = items.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid("TreeDef::dict", format!("key {:?} given twice", w[0].0)));
        }
        let (keys, children) = items.into_iter().unzip();
        Ok(TreeDef::Dict { keys, children })
    }

    /// The number of leaves.
    pub fn num_leaves(&self) -> usize {
        match self {
            TreeDef::Leaf => 1,
            TreeDef::None => 0,
            _ => self.children().iter().map(TreeDef::num_leaves).sum(),
        }
    }

    /// The child nodes (none for a leaf or `None`).
    pub fn children(&self) -> &[TreeDef] {
        match self {
            TreeDef::Leaf | TreeDef::None => &[],
            TreeDef::Tuple(c) | TreeDef::List(c) => c,
            TreeDef::Dict { children, .. } => children,
        }
    }

    /// The `i`-th child.
    pub fn child(&self, i: usize) -> Option<&TreeDef> {
        self.children().get(i)
    }

    /// A dict node's keys.
    pub fn keys(&self) -> Option<&[String]> {
        match self {
            TreeDef::Dict { keys, .. } => Some(keys),
            _ => None,
        }
    }

    /// The path name of each child: indices, or dict keys.
    fn child_names(&self) -> Vec<String> {
        match self {
            TreeDef::Dict { keys, .. } => keys.clone(),
            _ => (0..self.children().len()).map(|i| i.to_string()).collect(),
        }
    }

    /// The sub-tree at `path` (`"0/ids"`; `""` is the tree itself).
    pub fn get(&self, path: &str) -> Option<&TreeDef> {
        if path.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for seg in path.split('/') {
            node = match node {
                TreeDef::Tuple(c) | TreeDef::List(c) => c.get(seg.parse::<usize>().ok()?)?,
                TreeDef::Dict { keys, children } => children.get(keys.iter().position(|k| k == seg)?)?,
                TreeDef::Leaf | TreeDef::None => return None,
            };
        }
        Some(node)
    }

    /// An exported function's `in_tree` is `((args...), {kwargs})`: returns the args tuple
    /// and the kwargs dict.
    pub fn args_kwargs(&self) -> Result<(&TreeDef, &TreeDef)> {
        match self {
            TreeDef::Tuple(c) if c.len() == 2 && matches!(c[0], TreeDef::Tuple(_)) && matches!(c[1], TreeDef::Dict { .. }) => {
                Ok((&c[0], &c[1]))
            }
            other => Err(Error::TreeMismatch {
                path: "<root>".into(),
                expected: "tuple of 2 (an args tuple and a kwargs dict)".into(),
                got: other.describe(),
            }),
        }
    }

    /// The node's kind, as error messages show it: `leaf`, `None`, `tuple of 2`,
    /// `list of 3`, `dict with keys [a, b]`.
    pub fn describe(&self) -> String {
        match self {
            TreeDef::Leaf => "leaf".into(),
            TreeDef::None => "None".into(),
            TreeDef::Tuple(c) => format!("tuple of {}", c.len()),
            TreeDef::List(c) => format!("list of {}", c.len()),
            TreeDef::Dict { keys, .. } => format!("dict with keys {}", key_list(keys.iter())),
        }
    }

    /// The path of every leaf, in flatten order; a bare leaf is named `root_name`.
    pub fn leaf_paths(&self, root_name: &str) -> Vec<String> {
        fn walk(d: &TreeDef, path: &str, out: &mut Vec<String>) {
            match d {
                TreeDef::Leaf => out.push(path.to_string()),
                TreeDef::None => {}
                _ => {
                    for (name, c) in d.child_names().iter().zip(d.children()) {
                        walk(c, &join(path, name), out);
                    }
                }
            }
        }
        if *self == TreeDef::Leaf {
            return vec![root_name.to_string()];
        }
        let mut out = Vec::new();
        walk(self, "", &mut out);
        out
    }

    /// The mismatch error at `path` between this node and `tree`'s.
    fn mismatch(&self, path: &str, tree: &PyTree) -> Error {
        Error::TreeMismatch { path: shown(path), expected: self.describe(), got: tree.describe() }
    }

    /// Whether `tree`'s top node has this node's kind and arity (and dict keys).
    fn node_matches(&self, tree: &PyTree) -> bool {
        match (self, tree) {
            (TreeDef::Leaf, PyTree::Leaf(_)) | (TreeDef::None, PyTree::None) => true,
            (TreeDef::Tuple(d), PyTree::Tuple(t)) | (TreeDef::List(d), PyTree::List(t)) => d.len() == t.len(),
            (TreeDef::Dict { keys, .. }, PyTree::Dict(m)) => {
                keys.len() == m.len() && keys.iter().all(|k| m.contains_key(k))
            }
            _ => false,
        }
    }

    /// The leaves of `tree` in flatten order, after checking that `tree` has this
    /// structure; a difference is an [`Error::TreeMismatch`] naming the first path where
    /// they differ.
    pub fn flatten<'a>(&self, tree: &'a PyTree) -> Result<Vec<&'a Tensor>> {
        fn walk<'a>(d: &TreeDef, t: &'a PyTree, path: &str, out: &mut Vec<&'a Tensor>) -> Result<()> {
            if !d.node_matches(t) {
                return Err(d.mismatch(path, t));
            }
            match (d, t) {
                (TreeDef::Leaf, PyTree::Leaf(x)) => out.push(x),
                (TreeDef::Tuple(dc), PyTree::Tuple(tc)) | (TreeDef::List(dc), PyTree::List(tc)) => {
                    for (i, (dc, tc)) in dc.iter().zip(tc).enumerate() {
                        walk(dc, tc, &join(path, &i.to_string()), out)?;
                    }
                }
                (TreeDef::Dict { keys, children }, PyTree::Dict(m)) => {
                    for (k, dc) in keys.iter().zip(children) {
                        let tc = m.get(k).ok_or_else(|| d.mismatch(path, t))?;
                        walk(dc, tc, &join(path, k), out)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        let mut out = Vec::with_capacity(self.num_leaves());
        walk(self, tree, "", &mut out)?;
        Ok(out)
    }

    /// Like [`TreeDef::flatten`], moving the leaves out of `tree`.
    pub fn flatten_owned(&self, tree: PyTree) -> Result<Vec<Tensor>> {
        fn walk(d: &TreeDef, t: PyTree, path: &str, out: &mut Vec<Tensor>) -> Result<()> {
            if !d.node_matches(&t) {
                return Err(d.mismatch(path, &t));
            }
            match (d, t) {
                (TreeDef::Leaf, PyTree::Leaf(x)) => out.push(x),
                (TreeDef::Tuple(dc), PyTree::Tuple(tc)) | (TreeDef::List(dc), PyTree::List(tc)) => {
                    for (i, (dc, tc)) in dc.iter().zip(tc).enumerate() {
                        walk(dc, tc, &join(path, &i.to_string()), out)?;
                    }
                }
                (TreeDef::Dict { keys, children }, PyTree::Dict(mut m)) => {
                    for (k, dc) in keys.iter().zip(children) {
                        let tc = m.remove(k).ok_or_else(|| Error::TreeMismatch {
                            path: shown(&join(path, k)),
                            expected: dc.describe(),
                            got: "nothing (a repeated key in the structure)".into(),
                        })?;
                        walk(dc, tc, &join(path, k), out)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        let mut out = Vec::with_capacity(self.num_leaves());
        walk(self, tree, "", &mut out)?;
        Ok(out)
    }

    /// A tree of this structure from leaves in flatten order.
    pub fn unflatten(&self, leaves: Vec<Tensor>) -> Result<PyTree> {
        fn build(d: &TreeDef, it: &mut std::vec::IntoIter<Tensor>) -> Result<PyTree> {
            Ok(match d {
                TreeDef::Leaf => PyTree::Leaf(it.next().ok_or_else(|| {
                    Error::invalid("TreeDef::unflatten", "ran out of leaves")
                })?),
                TreeDef::None => PyTree::None,
                TreeDef::Tuple(c) => PyTree::Tuple(c.iter().map(|c| build(c, it)).collect::<Result<_>>()?),
                TreeDef::List(c) => PyTree::List(c.iter().map(|c| build(c, it)).collect::<Result<_>>()?),
                TreeDef::Dict { keys, children } => {
                    let mut m = BTreeMap::new();
                    for (k, c) in keys.iter().zip(children) {
                        if m.insert(k.clone(), build(c, it)?).is_some() {
                            return Err(Error::invalid("TreeDef::unflatten", format!("dict key {k:?} repeats")));
                        }
                    }
                    PyTree::Dict(m)
                }
            })
        }
        let expected = self.num_leaves();
        if leaves.len() != expected {
            return Err(Error::SizeMismatch {
                what: "TreeDef::unflatten".into(),
                expected,
                got: leaves.len(),
                unit: "leaves",
            });
        }
        build(self, &mut leaves.into_iter())
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

fn write_seq<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    open: &str,
    close: &str,
    items: impl Iterator<Item = T>,
    trailing_comma: bool,
) -> fmt::Result {
    f.write_str(open)?;
    for (i, c) in items.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{c}")?;
    }
    if trailing_comma {
        f.write_str(",")?;
    }
    f.write_str(close)
}

fn write_dict<K: AsRef<str>, V: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    items: impl Iterator<Item = (K, V)>,
) -> fmt::Result {
    f.write_str("{")?;
    for (i, (k, v)) in items.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}: {v}", py_repr(k.as_ref()))?;
    }
    f.write_str("}")
}

/// The body of JAX's `PyTreeDef(...)` text.
struct TreeBody<'a>(&'a TreeDef);

impl fmt::Display for TreeBody<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TreeDef::Leaf => f.write_str("*"),
            TreeDef::None => f.write_str("None"),
            TreeDef::Tuple(c) => write_seq(f, "(", ")", c.iter().map(TreeBody), c.len() == 1),
            TreeDef::List(c) => write_seq(f, "[", "]", c.iter().map(TreeBody), false),
            TreeDef::Dict { keys, children } => write_dict(f, keys.iter().zip(children.iter().map(TreeBody))),
        }
    }
}

impl fmt::Display for TreeDef {
    /// As JAX prints it: `PyTreeDef(((*, {'a': *}), {}))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PyTreeDef({})", TreeBody(self))
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
        assert_eq!(TreeDef::Leaf.leaf_paths("outputs"), vec!["outputs"]);
        assert_eq!(PyTree::None.flatten_with_paths("x").len(), 0);
        assert_eq!(TreeDef::Tuple(vec![]).leaf_paths("x"), Vec::<String>::new());
        let d = TreeDef::dict([("x", TreeDef::Leaf), ("ids", TreeDef::Leaf)]).unwrap();
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
        let bare = PyTree::from_named_leaves(&TreeDef::Leaf, "inputs", [("inputs".to_string(), t(1.0))]).unwrap();
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
        assert_eq!(def.get("1/x"), Some(&TreeDef::Leaf));
        assert_eq!(def.get("1"), def.child(1));
        assert_eq!(def.get("1").unwrap().keys().unwrap(), &["ids".to_string(), "x".to_string()]);
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
    fn unflatten_and_named_errors() {
        let def = sample().structure();
        let e = def.unflatten(vec![t(0.0)]).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { expected: 4, got: 1, unit: "leaves", .. }), "{e}");
        let named = |ps: &[&str]| ps.iter().map(|p| (p.to_string(), t(0.0))).collect::<Vec<_>>();
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "1/ids", "1/x"])).unwrap_err();
        assert!(matches!(&e, Error::NotFound { name, .. } if name == "2/1"), "{e}");
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "1/ids", "1/x", "2/1", "extra"])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = PyTree::from_named_leaves(&def, "inputs", named(&["0", "0"])).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn treedef_dict_sorts_and_rejects_duplicates() {
        let d = TreeDef::dict([("b", TreeDef::Leaf), ("a", TreeDef::None)]).unwrap();
        assert_eq!(d, TreeDef::Dict { keys: vec!["a".into(), "b".into()], children: vec![TreeDef::None, TreeDef::Leaf] });
        assert!(TreeDef::dict([("a", TreeDef::Leaf), ("a", TreeDef::Leaf)]).is_err());
    }

    #[test]
    fn args_kwargs() {
        let def = TreeDef::Tuple(vec![TreeDef::Tuple(vec![TreeDef::Leaf]), TreeDef::dict([("k", TreeDef::Leaf)]).unwrap()]);
        let (a, k) = def.args_kwargs().unwrap();
        assert_eq!(a, &TreeDef::Tuple(vec![TreeDef::Leaf]));
        assert_eq!(k.keys().unwrap(), &["k".to_string()]);
        assert!(matches!(TreeDef::Leaf.args_kwargs(), Err(Error::TreeMismatch { .. })));
    }

    #[test]
    fn display_like_jax() {
        let d = TreeDef::Tuple(vec![
            TreeDef::Tuple(vec![TreeDef::Leaf]),
            TreeDef::Tuple(vec![]),
            TreeDef::List(vec![]),
            TreeDef::dict([("it's", TreeDef::Leaf), ("a\\b", TreeDef::None)]).unwrap(),
        ]);
        assert_eq!(d.to_string(), r#"PyTreeDef(((*,), (), [], {'a\\b': None, "it's": *}))"#);
        let z = PyTree::leaf(Tensor::zeros(DType::BF16, vec![2, 3]).unwrap());
        assert_eq!(z.to_string(), "bfloat16[2,3]");
    }
}
