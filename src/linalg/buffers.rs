//! The buffers of a call (operands in, results out) and the checks made on them before any
//! kernel reads or writes a byte.

use super::error::{BufferRef, KernelError};
use crate::DType;

pub(crate) use crate::pjrt::{Operand, ResultBuf};

/// A batch of matrices: leading batch dims, then `rows × cols`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batched<'d> {
    pub batch_dims: &'d [i64],
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Batched<'_> {
    /// The batch dims followed by `tail`: the dims of a result that shares the batch.
    pub fn dims_with(&self, tail: &[usize]) -> Vec<i64> {
        let mut dims = self.batch_dims.to_vec();
        dims.extend(tail.iter().map(|&d| d as i64));
        dims
    }

    /// Elements in one matrix.
    pub fn matrix_len(&self) -> usize {
        self.rows * self.cols
    }
}

/// A target's name and the names jaxlib gives its operands and results: the checks on a
/// call's buffers, with errors that name the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signature<'t> {
    pub target: &'t str,
    pub operands: &'static [&'static str],
    pub results: &'static [&'static str],
}

impl<'t> Signature<'t> {
    /// Checks the operand and result counts.
    pub fn check_arity(
        &self,
        operands: &[Operand<'_>],
        results: &[ResultBuf<'_>],
    ) -> Result<(), KernelError> {
        let arity = |what, names: &[&str], got| KernelError::Arity {
            target: self.target(),
            what,
            names: names.join(", "),
            expected: names.len(),
            got,
        };
        if operands.len() != self.operands.len() {
            return Err(arity("operands", self.operands, operands.len()));
        }
        if results.len() != self.results.len() {
            return Err(arity("results", self.results, results.len()));
        }
        Ok(())
    }

    pub fn operand_ref(&self, index: usize) -> BufferRef {
        BufferRef::Operand { index, name: self.operands.get(index).copied().unwrap_or("?") }
    }

    pub fn result_ref(&self, index: usize) -> BufferRef {
        BufferRef::Result { index, name: self.results.get(index).copied().unwrap_or("?") }
    }

    pub fn target(&self) -> String {
        self.target.to_owned()
    }

    /// Operand `index` as a batch of matrices of `dtype` (rank >= 2).
    pub fn matrices<'d>(
        &self,
        operands: &[Operand<'d>],
        index: usize,
        dtype: DType,
    ) -> Result<Batched<'d>, KernelError> {
        let operand = &operands[index];
        let buffer = self.operand_ref(index);
        self.check_dtype(buffer, dtype, operand.dtype)?;
        let dims: &'d [i64] = operand.dims;
        let Some((batch_dims, &[rows, cols])) = dims.split_last_chunk::<2>() else {
            return Err(self.shape_error(buffer, "a batch of matrices (rank >= 2)".into(), dims));
        };
        let (Some(count), Ok(rows), Ok(cols)) =
            (element_count(batch_dims), usize::try_from(rows), usize::try_from(cols))
        else {
            return Err(self.shape_error(buffer, "non-negative dims".into(), dims));
        };
        self.check_len(buffer, operand.data.map(<[u8]>::len), dims, dtype)?;
        Ok(Batched { batch_dims, count, rows, cols })
    }

    /// Checks operand `index` against a dtype and exact dims.
    pub fn check_operand(
        &self,
        operands: &[Operand<'_>],
        index: usize,
        dtype: DType,
        dims: &[i64],
    ) -> Result<(), KernelError> {
        let operand = &operands[index];
        let buffer = self.operand_ref(index);
        self.check_dtype(buffer, dtype, operand.dtype)?;
        if operand.dims != dims {
            return Err(self.shape_error(buffer, format!("{dims:?}"), operand.dims));
        }
        self.check_len(buffer, operand.data.map(<[u8]>::len), dims, dtype)
    }

    /// Checks result `index` against a dtype and exact dims.
    pub fn check_result(
        &self,
        results: &[ResultBuf<'_>],
        index: usize,
        dtype: DType,
        dims: &[i64],
    ) -> Result<(), KernelError> {
        self.check_result_any(results, index, dtype, &[dims])
    }

    /// Checks result `index` against a dtype and any one of several dims.
    pub fn check_result_any(
        &self,
        results: &[ResultBuf<'_>],
        index: usize,
        dtype: DType,
        choices: &[&[i64]],
    ) -> Result<(), KernelError> {
        let result = &results[index];
        let buffer = self.result_ref(index);
        self.check_dtype(buffer, dtype, result.dtype)?;
        let Some(&dims) = choices.iter().find(|&&c| c == result.dims) else {
            let expected = choices.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" or ");
            return Err(self.shape_error(buffer, expected, result.dims));
        };
        self.check_len(buffer, Some(result.data.len()), dims, dtype)
    }

    fn check_dtype(&self, buffer: BufferRef, expected: DType, got: DType) -> Result<(), KernelError> {
        if expected != got {
            return Err(KernelError::DType { target: self.target(), buffer, expected, got });
        }
        Ok(())
    }

    fn check_len(
        &self,
        buffer: BufferRef,
        len: Option<usize>,
        dims: &[i64],
        dtype: DType,
    ) -> Result<(), KernelError> {
        let Some(expected) = element_count(dims).and_then(|n| n.checked_mul(dtype.size_in_bytes())) else {
            return Err(self.shape_error(
                buffer,
                "non-negative dims of a size that fits in memory".into(),
                dims,
            ));
        };
        match len {
            Some(got) if got != expected => {
                Err(KernelError::ByteLength { target: self.target(), buffer, expected, got })
            }
            _ => Ok(()),
        }
    }

    fn shape_error(&self, buffer: BufferRef, expected: String, got: &[i64]) -> KernelError {
        KernelError::Shape { target: self.target(), buffer, expected, got: got.to_vec() }
    }

    /// A shape error about operand `index`, for relations between buffers.
    pub fn operand_shape_error(
        &self,
        operands: &[Operand<'_>],
        index: usize,
        expected: String,
    ) -> KernelError {
        self.shape_error(self.operand_ref(index), expected, operands[index].dims)
    }

    /// Operand `index`'s elements: an operand no result aliases, so it must have data.
    pub fn operand_data<'d, T: bytemuck::Pod>(
        &self,
        operands: &[Operand<'d>],
        index: usize,
    ) -> Result<&'d [T], KernelError> {
        let buffer = self.operand_ref(index);
        let Some(bytes) = operands[index].data else {
            return Err(KernelError::NotAliased { target: self.target(), buffer });
        };
        bytemuck::try_cast_slice(bytes).map_err(|_| self.misaligned::<T>(buffer))
    }

    /// The results as an array, so a kernel can hold one `&mut` per result.
    pub fn split_results<'r, 'd, const N: usize>(
        &self,
        results: &'r mut [ResultBuf<'d>],
    ) -> Result<&'r mut [ResultBuf<'d>; N], KernelError> {
        let got = results.len();
        <&mut [ResultBuf<'d>; N]>::try_from(results).map_err(|_| KernelError::Arity {
            target: self.target(),
            what: "results",
            names: self.results.join(", "),
            expected: N,
            got,
        })
    }

    /// Result `index`'s bytes as elements of `T`.
    pub fn result_data<'r, T: bytemuck::Pod>(
        &self,
        index: usize,
        result: &'r mut ResultBuf<'_>,
    ) -> Result<&'r mut [T], KernelError> {
        let buffer = self.result_ref(index);
        bytemuck::try_cast_slice_mut(&mut *result.data).map_err(|_| self.misaligned::<T>(buffer))
    }

    fn misaligned<T>(&self, buffer: BufferRef) -> KernelError {
        KernelError::Misaligned { target: self.target(), buffer, align: std::mem::align_of::<T>() }
    }
}

/// Copies operand `operand`'s bytes into `out` unless they are already there (aliased). The
/// lengths were checked equal by the shape checks.
pub(crate) fn copy_in<T: bytemuck::Pod>(operand: &Operand<'_>, out: &mut [T]) {
    if let Some(bytes) = operand.data {
        bytemuck::cast_slice_mut::<T, u8>(out).copy_from_slice(bytes);
    }
}

/// Product of `dims` as usize, or `None` if a dim is negative or the product overflows.
fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}
