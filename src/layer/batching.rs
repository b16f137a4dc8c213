//! Any batch size at inference: which exported computation runs a batch of `n` rows, and how
//! its rows are padded, split into chunks and put back together.
//!
//! - An exported size equal to `n` runs as it is.
//! - Otherwise, for a method the exporter marked paddable, the smallest exported size `>= n`
//!   runs on the rows plus padding, and the outputs that carry the batch axis are sliced back
//!   to `n` rows. A batch larger than every exported size runs in chunks of the largest one
//!   (the last chunk padded), and the chunks' outputs are concatenated.
//! - A caller that merges requests (the server's batcher) concatenates their rows
//!   ([`concat_rows`]), may plan the chunks by measured cost ([`plan_by_cost`]) and runs each
//!   chunk through the layer (which pads it as above), then joins the chunks ([`assemble`])
//!   and splits the rows back per request ([`split_rows`]): one batching path for the layer
//!   and the server.
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
    /// A plan of consecutive chunks of the given lengths (their computation chosen later, by
    /// the layer each chunk is run through).
    pub fn from_lengths(lengths: &[usize]) -> Plan {
        let mut chunks = SmallVec::new();
        let mut start = 0;
        for &len in lengths {
            chunks.push(Chunk { start, len, comp: 0 });
            start += len;
        }
        Plan { chunks, rows: start }
    }

    /// Whether the plan runs one computation on the inputs as they are.
    pub fn is_exact(&self, comps: &[Computation]) -> bool {
        matches!(self.chunks.as_slice(), [c] if c.start == 0 && comps[c.comp].batch_size.is_none_or(|b| b == c.len))
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

/// The chunk lengths that run `rows` rows at least cost, given each exported size's cost of
/// one call (a chunk of `len` rows runs at the smallest size `>= len`, padded). One chunk of
/// all rows when there are no costs. The server plans merged batches with the costs measured
/// at warm-up (9 rows of sizes 4 and 256 run as 4 + 4 + 1, not as 256).
pub(crate) fn plan_by_cost(rows: usize, costs: &[(usize, f64)]) -> Vec<usize> {
    if costs.is_empty() || rows == 0 {
        return vec![rows];
    }
    // best[r]: the least cost of r rows, and the size of the first chunk that gets it.
    let mut best: Vec<(f64, usize)> = vec![(0.0, 0); rows + 1];
    for r in 1..=rows {
        best[r] = costs
            .iter()
            .map(|&(size, cost)| (cost + best[r.saturating_sub(size)].0, size))
            .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
    }
    let mut chunks = Vec::new();
    let mut r = rows;
    while r > 0 {
        let len = best[r].1.min(r).max(1);
        chunks.push(len);
        r -= len;
    }
    chunks
}

/// Several requests' input leaves (each in flatten order, with its own rows) concatenated
/// along the batch axis, leaf by leaf.
pub(crate) fn concat_rows(parts: &[&[Tensor]]) -> Result<Vec<Tensor>> {
    let first = parts.first().ok_or_else(|| Error::invalid("batch", "no requests to merge"))?;
    let mut out = Vec::with_capacity(first.len());
    for (i, leaf) in first.iter().enumerate() {
        let mut rows = 0usize;
        for p in parts {
            let t = p.get(i).ok_or_else(|| Error::invalid("batch", "requests with different numbers of inputs"))?;
            if t.dtype() != leaf.dtype() || t.shape().get(1..) != leaf.shape().get(1..) {
                return Err(Error::ShapeMismatch { what: format!("input {i} of a merged batch"), expected: leaf.shape().to_vec(), got: t.shape().to_vec() });
            }
            rows = rows.checked_add(t.shape().first().copied().unwrap_or(0)).ok_or_else(|| Error::invalid("batch", "too many rows"))?;
        }
        let mut shape = leaf.shape().to_vec();
        shape[0] = rows;
        let mut t = Tensor::zeros(leaf.dtype(), shape)?;
        let dst = t.as_mut_bytes();
        let mut at = 0;
        for p in parts {
            let src = p[i].as_bytes();
            dst[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        }
        out.push(t);
    }
    Ok(out)
}

/// Each request's part of a merged batch's outputs, by its row count: its rows of the
/// outputs that carry the batch axis, a copy of the others.
pub(crate) fn split_rows(outputs: &[Tensor], rows: &[usize], batched: &[bool]) -> Result<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for (out, &is_batched) in outputs.iter().zip(batched) {
        if !is_batched {
            parts.iter_mut().for_each(|p| p.push(out.clone()));
            continue;
        }
        if out.shape().first() != Some(&total) {
            return Err(Error::ShapeMismatch { what: "a batched output".into(), expected: vec![total], got: out.shape().to_vec() });
        }
        let row = out.num_bytes() / total.max(1);
        let mut start = 0;
        for (&n, part) in rows.iter().zip(parts.iter_mut()) {
            let mut shape = out.shape().to_vec();
            shape[0] = n;
            part.push(Tensor::new(out.dtype(), shape, &out.as_bytes()[start * row..(start + n) * row])?);
            start += n;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_split_give_each_request_its_rows() {
        let a = vec![Tensor::from_vec(vec![1, 2], vec![0.0f32, 1.0]).unwrap()];
        let b = vec![Tensor::from_vec(vec![3, 2], (0..6).map(|i| 100.0 + i as f32).collect::<Vec<_>>()).unwrap()];
        let merged = concat_rows(&[&a, &b]).unwrap();
        assert_eq!(merged[0].shape(), &[4, 2]);
        assert_eq!(merged[0].as_slice::<f32>().unwrap(), &[0.0, 1.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0]);
        let scalar = Tensor::from_vec(vec![], vec![7i32]).unwrap();
        let parts = split_rows(&[merged[0].clone(), scalar.clone()], &[1, 3], &[true, false]).unwrap();
        assert_eq!(parts[0][0].as_slice::<f32>().unwrap(), &[0.0, 1.0]);
        assert_eq!(parts[1][0].shape(), &[3, 2]);
        assert_eq!(parts[1][0].as_slice::<f32>().unwrap()[0], 100.0);
        assert_eq!(parts[1][1], scalar);
        assert!(split_rows(&[scalar], &[1, 3], &[true]).is_err());
        let wrong = vec![Tensor::from_vec(vec![1, 3], vec![0.0f32; 3]).unwrap()];
        assert!(concat_rows(&[&a, &wrong]).is_err());
    }

    #[test]
    fn chunks_cost_least() {
        // The CNN: sizes 4 and 256, a call at 256 costing ~50 at 4.
        let cnn = [(4, 1.0), (256, 50.0)];
        assert_eq!(plan_by_cost(1, &cnn), vec![1]);
        assert_eq!(plan_by_cost(9, &cnn), vec![4, 4, 1]);
        assert_eq!(plan_by_cost(256, &cnn), vec![256]);
        assert_eq!(plan_by_cost(300, &cnn).iter().sum::<usize>(), 300);
        // Calls that cost about the same at every size: one call, padded.
        let mlp = [(1, 1.0), (8, 1.1), (256, 1.5)];
        assert_eq!(plan_by_cost(9, &mlp), vec![9]);
        assert_eq!(plan_by_cost(9, &[(1, 1.0), (8, 1.1), (256, 3.0)]), vec![1, 8]);
        assert_eq!(plan_by_cost(3, &mlp), vec![3]);
        assert_eq!(plan_by_cost(600, &mlp).iter().sum::<usize>(), 600);
        assert_eq!(plan_by_cost(5, &[]), vec![5]);
    }

    #[test]
    fn chunk_outputs_assemble_in_order() {
        let a = Tensor::from_vec(vec![2, 1], vec![1.0f32, 2.0]).unwrap();
        let b = Tensor::from_vec(vec![1, 1], vec![3.0f32]).unwrap();
        let s = Tensor::from_vec(vec![], vec![9i32]).unwrap();
        let plan = Plan::from_lengths(&[2, 1]);
        let out = assemble(&plan, &[Some(true), Some(false)], vec![vec![a.clone(), s.clone()], vec![b, s.clone()]]).unwrap();
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0]);
        assert_eq!(out[1], s);
        let v = a.view();
        let r = rows(&v, 1, 1, 1, 0.0).unwrap();
        assert_eq!((r.view().shape(), r.view().as_bytes()), (&[1usize, 1][..], &2.0f32.to_le_bytes()[..]));
    }
}
