//! What `call` and `predict` accept: a [`PyTree`], a [`Tensor`], an `ndarray` array or view,
//! or borrowed views of any of them, seen as a tree of host arrays without copying.

use crate::pytree::{PyTree, Tree, TreeView};
use crate::tensor::{Tensor, TensorView};
use crate::Element;

/// Host inputs of a call: anything that can be seen as a tree of arrays. Implemented for
/// [`PyTree`], [`TreeView`], [`Tensor`], [`TensorView`], `ndarray` arrays and views (a bare
/// array is the tree of one leaf), and references to them.
///
/// Nothing is copied to build the view, except an `ndarray` view that is not in standard
/// (C) order, which is copied once into C order.
pub trait AsInputs {
    /// The inputs as a tree of borrowed host arrays.
    fn as_inputs(&self) -> TreeView<'_>;
}

impl<T: AsInputs + ?Sized> AsInputs for &T {
    fn as_inputs(&self) -> TreeView<'_> {
        (**self).as_inputs()
    }
}

impl<T: AsInputs + ?Sized> AsInputs for std::sync::Arc<T> {
    fn as_inputs(&self) -> TreeView<'_> {
        (**self).as_inputs()
    }
}

impl AsInputs for PyTree {
    fn as_inputs(&self) -> TreeView<'_> {
        self.view()
    }
}

impl AsInputs for TreeView<'_> {
    fn as_inputs(&self) -> TreeView<'_> {
        self.map(TensorView::clone)
    }
}

impl AsInputs for Tensor {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(self.view())
    }
}

impl AsInputs for TensorView<'_> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(self.clone())
    }
}

impl<T: Element, D: ndarray::Dimension> AsInputs for ndarray::Array<T, D> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(TensorView::from_array_view(self.view()))
    }
}

impl<T: Element, D: ndarray::Dimension> AsInputs for ndarray::ArrayView<'_, T, D> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(TensorView::from_array_view(self.view()))
    }
}

impl<T: Element, D: ndarray::Dimension> AsInputs for ndarray::ArcArray<T, D> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(TensorView::from_array_view(self.view()))
    }
}

impl<T: Element, D: ndarray::Dimension> AsInputs for ndarray::ArrayViewMut<'_, T, D> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(TensorView::from_array_view(self.view()))
    }
}

impl<T: Element, D: ndarray::Dimension> AsInputs for ndarray::CowArray<'_, T, D> {
    fn as_inputs(&self) -> TreeView<'_> {
        Tree::Leaf(TensorView::from_array_view(self.view()))
    }
}

/// A dict of named inputs: the keys are the dict's keys (`"image"`, not a path such as
/// `"0/image"`); the values are borrowed.
fn dict_of<'a, K: AsRef<str> + 'a, V: AsInputs + 'a>(items: impl Iterator<Item = (&'a K, &'a V)>) -> TreeView<'a> {
    Tree::Dict(items.map(|(k, v)| (k.as_ref().to_string(), v.as_inputs())).collect())
}

/// A `dict` input: each value is a sub-tree (a [`Tensor`], an array, a [`PyTree`], ...),
/// borrowed, not copied.
///
/// ```no_run
/// # fn main() -> flaxlayer::Result<()> {
/// use std::collections::HashMap;
/// use flaxlayer::{FlaxLayer, Tensor};
/// let layer = FlaxLayer::builder("hlo/image_meta").build()?;
/// let inputs = HashMap::from([
///     ("image", Tensor::zeros(flaxlayer::DType::F32, vec![2, 8, 8, 1])?),
///     ("meta", Tensor::zeros(flaxlayer::DType::F32, vec![2, 3])?),
/// ]);
/// let y = layer.predict(&inputs)?;
/// # Ok(())
/// # }
/// ```
impl<K: AsRef<str>, V: AsInputs, S> AsInputs for std::collections::HashMap<K, V, S> {
    fn as_inputs(&self) -> TreeView<'_> {
        dict_of(self.iter())
    }
}

/// A `dict` input, as for `HashMap`. `Tensor::read_safetensors` returns one.
impl<K: AsRef<str>, V: AsInputs> AsInputs for std::collections::BTreeMap<K, V> {
    fn as_inputs(&self) -> TreeView<'_> {
        dict_of(self.iter())
    }
}

/// A `dict` input from `(name, value)` pairs, such as `[("image", &img), ("meta", &meta)]`;
/// with a repeated name the last value wins, as in a Python dict literal.
impl<K: AsRef<str>, V: AsInputs> AsInputs for [(K, V)] {
    fn as_inputs(&self) -> TreeView<'_> {
        dict_of(self.iter().map(|(k, v)| (k, v)))
    }
}

/// A `dict` input from `(name, value)` pairs, as for a slice.
impl<K: AsRef<str>, V: AsInputs, const N: usize> AsInputs for [(K, V); N] {
    fn as_inputs(&self) -> TreeView<'_> {
        self.as_slice().as_inputs()
    }
}

/// A `dict` input from `(name, value)` pairs, as for a slice.
impl<K: AsRef<str>, V: AsInputs> AsInputs for Vec<(K, V)> {
    fn as_inputs(&self) -> TreeView<'_> {
        self.as_slice().as_inputs()
    }
}

/// Tuples of inputs are a `tuple` node, as a Python tuple of arrays: `(&a, &b)` calls a
/// method of two positional inputs (`forward(x1, x2)`) without copying either.
macro_rules! tuple_inputs {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name: AsInputs),+> AsInputs for ($($name,)+) {
            fn as_inputs(&self) -> TreeView<'_> {
                Tree::Tuple(vec![$(self.$idx.as_inputs()),+])
            }
        }
    };
}
tuple_inputs!(A.0);
tuple_inputs!(A.0, B.1);
tuple_inputs!(A.0, B.1, C.2);
tuple_inputs!(A.0, B.1, C.2, D.3);
tuple_inputs!(A.0, B.1, C.2, D.3, E.4);
tuple_inputs!(A.0, B.1, C.2, D.3, E.4, F.5);
tuple_inputs!(A.0, B.1, C.2, D.3, E.4, F.5, G.6);
tuple_inputs!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7);

/// The view of borrowed inputs, for [`inputs!`](crate::inputs): it ties the view to the
/// borrow it was given, so `let x = inputs!{...};` outlives the macro.
#[doc(hidden)]
pub fn view_of<'a, T: AsInputs + ?Sized>(value: &'a T) -> TreeView<'a> {
    value.as_inputs()
}

/// Named or positional inputs of a call, borrowed, as ort's `inputs!`:
/// `inputs!{"image" => &img, "meta" => &meta}` is a `dict` input and
/// `inputs![&x1, &x2]` a `tuple` input. Each value is a reference to anything that is
/// [`AsInputs`] (a [`Tensor`], an `ndarray` array or view, a [`PyTree`], a map, ...), and
/// nothing is copied: the result is a [`TreeView`] of the values' memory.
///
/// ```no_run
/// # fn main() -> flaxlayer::Result<()> {
/// use flaxlayer::{inputs, FlaxLayer, Mode, Tensor};
/// let mut layer = FlaxLayer::builder("hlo/image_meta").build()?;
/// let img = Tensor::zeros(flaxlayer::DType::F32, vec![2, 8, 8, 1])?;
/// let meta = flaxlayer::ndarray::Array2::<f32>::zeros((2, 3));
/// let y = layer.call(&inputs!{"image" => &img, "meta" => &meta}, Mode::Inference)?;
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! inputs {
    ($($key:expr => $value:expr),+ $(,)?) => {
        $crate::Tree::Dict(::std::collections::BTreeMap::from([
            $((::std::string::String::from($key), $crate::layer::inputs::view_of($value))),+
        ]))
    };
    ($($value:expr),+ $(,)?) => {
        $crate::Tree::Tuple(::std::vec![$($crate::layer::inputs::view_of($value)),+])
    };
}
