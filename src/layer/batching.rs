//! Any batch size at inference: which exported computation runs a batch of `n` rows, and how
//! its rows are padded, split into chunks and put back together.
//!
//! - An exported size equal to `n` runs as it is.
//! - Otherwise, for a method the exporter marked paddable, the smallest exported size `>= n`
//!   runs on the rows plus padding, and the outputs that carry the batch axis are sliced back
//!   to `n` rows. A batch larger than every exported size runs in chunks of the largest one
//!   (the last chunk padded), and the chunks' outputs are concatenated.
//! - Training calls never pad (batch statistics and the loss would change); stateful
//!   inference (a decode cache) pads only up to the size its state was created at, and never
//!   splits. Both are refused with [`Error::BatchSize`] at other sizes.

use smallvec::SmallVec;

use super::computation::Computation;
use super::mode::Mode;
use crate::bundle::Batching;
use crate::tensor::TensorView;
use crate::{DType, Error, Result, Tensor};

/// How one call runs: the computations to run, each on a range of the batch's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `(first row, rows, index of the computation)`; the computation's batch size may be
    /// larger than `rows` (the rest is padding).
    pub chunks: SmallVec<[Chunk; 1]>,
    /// The batch size of the call.
    pub rows: usize,
}

/// Rows `start..start + len` of the batch, run by computation `comp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub start: usize,
    pub len: usize,
    pub comp: usize,
}

impl Plan {
    /// Whether the plan runs one computation on the inputs as they are.
    pub fn is_exact(&self, comps: &[Computation]) -> bool {
        matches!(self.chunks.as_slice(), [c] if c.start == 0 && comps[c.comp].batch_size.map_or(true, |b| b == c.len))
    }
}

/// The exported batch sizes of `comps`, sorted.
pub(crate) fn batch_sizes(comps: &[Computation]) -> Vec<usize> {
    let mut sizes: Vec<usize> = comps.iter().filter_map(|c| c.batch_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Checks the input leaves against the method's computations (dtypes, ranks, the dimensions
/// after the batch axis) and chooses how to run them.
pub(crate) fn plan(comps: &[Computation], batching: &Batching, mode: Mode, leaves: &[&TensorView<'_>]) -> Result<Plan> {
    let first = comps.first().ok_or_else(|| Error::invalid("method", "has no computations"))?;
    if leaves.len() != first.inputs.len() {
        return Err(Error::ArgumentCount { what: format!("inputs of {}", first.file), expected: first.inputs.len(), got: leaves.len() });
    }
    for (spec, leaf) in first.inputs.iter().zip(leaves) {
        if leaf.dtype() != spec.dtype {
            return Err(Error::DTypeMismatch { what: format!("input {:?}", spec.name), expected: spec.dtype, got: leaf.dtype() });
        }
    }
    if let Some(i) = comps.iter().position(|c| c.accepts(leaves)) {
        let rows = leaves.first().and_then(|l| l.shape().first().copied()).unwrap_or(0);
        return Ok(Plan { chunks: smallvec::smallvec![Chunk { start: 0, len: rows, comp: i }], rows });
    }
    let sizes = batch_sizes(comps);
    let n = check_rows(first, &sizes, leaves)?;
    let refuse = |reason: &str| Error::BatchSize {
        what: format!("{mode} call of {}", method_of(first)),
        got: n,
        available: sizes.clone(),
        reason: reason.to_string(),
    };
    if mode.is_training() {
        return Err(refuse("training calls never pad: batch statistics and the loss would change"));
    }
    if !batching.paddable {
        let why = batching.reason.as_deref().unwrap_or("the exporter did not mark the method paddable");
        return Err(refuse(&format!("not paddable: {why}")));
    }
    if first.output_batched.iter().any(Option::is_none) {
        return Err(refuse("the bundle does not say which outputs carry the batch axis; re-export it"));
    }
    if n == 0 {
        return Err(refuse("a batch needs at least one row"));
    }
    let bucket = |rows: usize| comps.iter().enumerate().filter(|(_, c)| c.batch_size.is_some_and(|b| b >= rows)).min_by_key(|(_, c)| c.batch_size).map(|(i, _)| i);
    if let Some(comp) = bucket(n) {
        return Ok(Plan { chunks: smallvec::smallvec![Chunk { start: 0, len: n, comp }], rows: n });
    }
    if batching.stateful {
        return Err(refuse("stateful inference pads only up to the batch its state was created at, and never splits a batch"));
    }
    let (largest, &max) = comps.iter().enumerate().filter_map(|(i, c)| c.batch_size.map(|b| (i, b))).max_by_key(|(_, b)| *b).map(|(i, _)| (i, &sizes[sizes.len() - 1])).ok_or_else(|| refuse("no exported batch size"))?;
    let mut chunks = SmallVec::new();
    let mut start = 0;
    while start < n {
        let len = max.min(n - start);
        let comp = if len == max { largest } else { bucket(len).unwrap_or(largest) };
        chunks.push(Chunk { start, len, comp });
        start += len;
    }
    Ok(Plan { chunks, rows: n })
}

fn method_of(c: &Computation) -> &str {
    c.file.split('.').next().unwrap_or(&c.file)
}

/// The batch size the leaves share, after checking ranks and the dimensions after the batch
/// axis against the computation's inputs.
fn check_rows(comp: &Computation, sizes: &[usize], leaves: &[&TensorView<'_>]) -> Result<usize> {
    let mut rows = None;
    for (spec, leaf) in comp.inputs.iter().zip(leaves) {
        let what = || format!("input {:?} (exported batch sizes {sizes:?})", spec.name);
        let shape = leaf.shape();
        let fits = !shape.is_empty() && shape.len() == spec.shape.len() && shape[1..] == spec.shape[1..];
        if !fits || rows.is_some_and(|r| r != shape[0]) {
            let mut expected = spec.shape.clone();
            if let (Some(e), Some(&r)) = (expected.first_mut(), rows.as_ref().or(shape.first())) {
                *e = r;
            }
            return Err(Error::ShapeMismatch { what: what(), expected, got: shape.to_vec() });
        }
        rows = Some(shape[0]);
    }
    rows.ok_or_else(|| Error::invalid("inputs", "a method without inputs has no batch"))
}

/// Rows of a batch for one computation: borrowed from the caller's array, or a new array
/// holding the rows and the padding.
pub(crate) enum Rows<'a> {
    Borrowed(TensorView<'a>),
    Padded(Tensor),
}

impl Rows<'_> {
    pub fn view(&self) -> TensorView<'_> {
        match self {
            Rows::Borrowed(v) => v.clone(),
            Rows::Padded(t) => t.view(),
        }
    }
}

/// Rows `start..start + len` of `leaf`, padded with `pad` to `to` rows: borrowed when no
/// padding is needed, else one new array holding the rows and the padding.
pub(crate) fn rows<'a>(leaf: &'a TensorView<'_>, start: usize, len: usize, to: usize, pad: f64) -> Result<Rows<'a>> {
    let shape = leaf.shape();
    let n = shape.first().copied().unwrap_or(0);
    let row = leaf.as_bytes().len().checked_div(n).unwrap_or(0);
    let bytes = leaf.as_bytes().get(start * row..(start + len) * row).ok_or_else(|| Error::invalid("batch", format!("rows {start}..{} of {n}", start + len)))?;
    let mut new_shape = shape.to_vec();
    new_shape[0] = to;
    if len == to {
        return Ok(Rows::Borrowed(TensorView::new(leaf.dtype(), new_shape, bytes)?));
    }
    let mut t = Tensor::zeros(leaf.dtype(), new_shape)?;
    let out = t.as_mut_bytes();
    out[..bytes.len()].copy_from_slice(bytes);
    if pad != 0.0 {
        fill(&mut out[bytes.len()..], leaf.dtype(), pad);
    }
    Ok(Rows::Padded(t))
}

/// Fills `bytes` with `value` converted to `dtype` (rounded to nearest, saturating for
/// integers; `true` for any non-zero bool).
fn fill(bytes: &mut [u8], dtype: DType, value: f64) {
    let unit: Vec<u8> = match dtype {
        DType::Bool => vec![u8::from(value != 0.0)],
        DType::I8 => (value as i8).to_le_bytes().to_vec(),
        DType::I16 => (value as i16).to_le_bytes().to_vec(),
        DType::I32 => (value as i32).to_le_bytes().to_vec(),
        DType::I64 => (value as i64).to_le_bytes().to_vec(),
        DType::U8 => (value as u8).to_le_bytes().to_vec(),
        DType::U16 => (value as u16).to_le_bytes().to_vec(),
        DType::U32 => (value as u32).to_le_bytes().to_vec(),
        DType::U64 => (value as u64).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DType::F32 => (value as f32).to_le_bytes().to_vec(),
        DType::F64 => value.to_le_bytes().to_vec(),
    };
    for chunk in bytes.chunks_exact_mut(unit.len()) {
        chunk.copy_from_slice(&unit);
    }
}

/// Puts the chunks' outputs back together: the batch-carrying outputs' first `len` rows of
/// every chunk, concatenated; the others from the first chunk.
pub(crate) fn assemble(plan: &Plan, batched: &[Option<bool>], mut per_chunk: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
    if per_chunk.len() == 1 && plan.chunks[0].len == per_chunk[0].first().map_or(0, |t| t.shape().first().copied().unwrap_or(0)) {
        return Ok(per_chunk.remove(0));
    }
    let mut out = Vec::with_capacity(batched.len());
    for (i, &b) in batched.iter().enumerate() {
        if b != Some(true) {
            out.push(per_chunk[0][i].clone());
            continue;
        }
        let first = &per_chunk[0][i];
        let n0 = first.shape().first().copied().unwrap_or(1).max(1);
        let row = first.num_bytes() / n0;
        let mut shape = first.shape().to_vec();
        shape[0] = plan.rows;
        let mut t = Tensor::zeros(first.dtype(), shape)?;
        let dst = t.as_mut_bytes();
        for (chunk, outs) in plan.chunks.iter().zip(&per_chunk) {
            let src = &outs[i].as_bytes()[..chunk.len * row];
            dst[chunk.start * row..(chunk.start + chunk.len) * row].copy_from_slice(src);
        }
        out.push(t);
    }
    Ok(out)
}
