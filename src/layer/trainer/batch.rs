//! What a training step takes and gives: a [`Batch`] of named leaves, [`TrainMetrics`] by name,
//! and the rows of a data set gathered into a batch.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Error, Result, Tensor};

/// A batch for [`Trainer::step`](super::Trainer::step): leaves named as the train step's
/// batch inputs (`x`, `y`; `x/...` when the model takes a PyTree).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    leaves: Vec<(String, Tensor)>,
}

impl Batch {
    /// A batch of inputs `x` and targets `y` (int32 labels for cross-entropy).
    pub fn new(x: Tensor, y: Tensor) -> Batch {
        Batch { leaves: vec![("x".into(), x), ("y".into(), y)] }
    }

    /// A batch from named leaves.
    pub fn from_named(leaves: Vec<(String, Tensor)>) -> Batch {
        Batch { leaves }
    }

    /// The leaves.
    pub fn leaves(&self) -> &[(String, Tensor)] {
        &self.leaves
    }
}

/// A training or evaluation step's named scalar metrics: `loss`, `accuracy`, `count`, ...
/// (The server's request counters are `server::Metrics`, a different thing.)
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrainMetrics(BTreeMap<String, f64>);

impl TrainMetrics {
    /// The metric `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The mean loss.
    pub fn loss(&self) -> Option<f64> {
        self.get("loss")
    }

    /// The fraction of correct predictions (classification losses only).
    pub fn accuracy(&self) -> Option<f64> {
        self.get("accuracy")
    }

    /// Every metric, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }

    pub(crate) fn insert(&mut self, name: impl Into<String>, value: f64) {
        self.0.insert(name.into(), value);
    }
}

/// Rows `idx` of `t` (examples along the first axis), zero-padded to `rows` rows.
pub(crate) fn gather_rows(t: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> {
    let n = t.shape().first().copied().unwrap_or(0);
    let mut shape = t.shape().to_vec();
    let Some(first) = shape.first_mut() else {
        return Err(Error::invalid("data", "a scalar has no rows"));
    };
    *first = rows;
    let mut out = Tensor::zeros(t.dtype(), shape)?;
    if n == 0 {
        return Ok(out);
    }
    let row = t.num_bytes() / n;
    let src = t.as_bytes();
    let dst = out.as_mut_bytes();
    for (k, &i) in idx.iter().enumerate().take(rows) {
        let from = src.get(i * row..(i + 1) * row).ok_or_else(|| Error::invalid("data", format!("row {i} of {n}")))?;
        dst[k * row..(k + 1) * row].copy_from_slice(from);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_gathered_and_padded() {
        let t = Tensor::from_vec(vec![3, 2], vec![0i32, 1, 10, 11, 20, 21]).unwrap();
        let g = gather_rows(&t, &[2, 0], 3).unwrap();
        assert_eq!(g.shape(), &[3, 2]);
        assert_eq!(g.to_vec::<i32>().unwrap(), [20, 21, 0, 1, 0, 0]);
        assert!(gather_rows(&t, &[3], 1).is_err());
        assert!(gather_rows(&Tensor::scalar(1f32), &[0], 1).is_err());
    }
}
