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
