//! Bad calls: each is a typed error naming the target and the buffer or attribute, and no
//! result byte is written.

use super::*;
use crate::linalg::{is_supported, supported_targets, BufferRef};

/// A well-formed potrf call on a 2×2 SPD matrix, to break one piece at a time.
struct PotrfCall {
    input: In,
    outs: Vec<(DType, Vec<i64>)>,
    attrs: Attrs<'static>,
}

impl PotrfCall {
    fn new() -> Self {
        PotrfCall {
            input: In::new(&[2, 2], &[4.0f64, 2.0, 2.0, 5.0]),
            outs: vec![out(DType::F64, &[2, 2]), out(DType::I32, &[])],
            attrs: char_attrs(&[("uplo", b'L')]),
        }
    }

    /// Runs it with every result pre-filled with 0xAB, returning the error and whether the
    /// results kept that fill.
    fn run(&self) -> (Result<(), KernelError>, bool) {
        let mut bufs: Vec<Buf> = self
            .outs
            .iter()
            .map(|(d, dims)| {
                let mut b = Buf::zeroed(dims.iter().product::<i64>().max(0) as usize * d.size_in_bytes());
                b.bytes_mut().fill(0xAB);
                b
            })
            .collect();
        let operands =
            [Operand { dtype: self.input.dtype, dims: &self.input.dims, data: Some(self.input.buf.bytes()) }];
        let mut results: Vec<ResultBuf<'_>> = bufs
            .iter_mut()
            .zip(&self.outs)
            .map(|(b, (dtype, dims))| ResultBuf { dtype: *dtype, dims, data: b.bytes_mut() })
            .collect();
        let result = call("lapack_dpotrf_ffi", &operands, &mut results, &self.attrs);
        drop(results);
        let untouched = bufs.iter().all(|b| b.bytes().iter().all(|&x| x == 0xAB));
        (result, untouched)
    }
}

fn expect_err(call: &PotrfCall) -> KernelError {
    let (result, untouched) = call.run();
    let err = result.expect_err("a bad call is refused");
    assert!(untouched, "a refused call wrote a result: {err}");
    let message = err.to_string();
    assert!(message.starts_with("lapack_dpotrf_ffi: "), "message names the target: {message}");
    err
}

#[test]
fn good_call_runs() {
    let (result, untouched) = PotrfCall::new().run();
    result.expect("the well-formed call runs");
    assert!(!untouched);
}

#[test]
fn unknown_and_complex_targets_are_refused() {
    for target in ["lapack_cgeqrf_ffi", "lapack_sgeev_ffi", "nope"] {
        let err = call(target, &[], &mut [], &Attrs::new()).unwrap_err();
        assert_eq!(err, KernelError::UnknownTarget { target: target.into() });
        assert!(!is_supported(target));
    }
    assert_eq!(supported_targets().len(), 18);
    assert!(supported_targets().iter().all(|t| is_supported(t)));
}

#[test]
fn wrong_operand_count() {
    let c = PotrfCall::new();
    let err = call("lapack_dpotrf_ffi", &[], &mut [], &c.attrs).unwrap_err();
    assert!(matches!(err, KernelError::Arity { what: "operands", expected: 1, got: 0, .. }), "{err}");
}

#[test]
fn wrong_result_count() {
    let mut c = PotrfCall::new();
    c.outs.pop();
    let err = expect_err(&c);
    assert!(matches!(err, KernelError::Arity { what: "results", expected: 2, got: 1, .. }), "{err}");
}

#[test]
fn wrong_operand_dtype() {
    let mut c = PotrfCall::new();
    c.input = In::new(&[2, 2], &[4.0f32, 2.0, 2.0, 5.0]);
    let err = expect_err(&c);
    let buffer = BufferRef::Operand { index: 0, name: "a" };
    assert_eq!(
        err,
        KernelError::DType {
            target: "lapack_dpotrf_ffi".into(),
            buffer,
            expected: DType::F64,
            got: DType::F32
        }
    );
    assert_eq!(err.to_string(), "lapack_dpotrf_ffi: operand 0 (a) has dtype float32, expected float64");
}

#[test]
fn wrong_result_dtype() {
    let mut c = PotrfCall::new();
    c.outs[1] = out(DType::I64, &[]);
    let err = expect_err(&c);
    assert!(
        matches!(err, KernelError::DType { buffer: BufferRef::Result { index: 1, name: "info" }, .. }),
        "{err}"
    );
}

#[test]
fn non_square_operand() {
    let mut c = PotrfCall::new();
    c.input = In::new(&[2, 3], &[0.0f64; 6]);
    let err = expect_err(&c);
    assert!(matches!(err, KernelError::Shape { buffer: BufferRef::Operand { index: 0, .. }, .. }), "{err}");
}

#[test]
fn vector_operand() {
    let mut c = PotrfCall::new();
    c.input = In::new(&[4], &[0.0f64; 4]);
    assert!(matches!(expect_err(&c), KernelError::Shape { .. }));
}

#[test]
fn negative_dim() {
    let mut c = PotrfCall::new();
    c.input = In::new(&[-2, 2], &[0.0f64; 4]);
    assert!(matches!(expect_err(&c), KernelError::Shape { .. }));
}

#[test]
fn wrong_result_shape() {
    let mut c = PotrfCall::new();
    c.outs[1] = out(DType::I32, &[1]);
    let err = expect_err(&c);
    assert_eq!(err.to_string(), "lapack_dpotrf_ffi: result 1 (info) has shape [1], expected []");
}

#[test]
fn short_operand_bytes() {
    let mut c = PotrfCall::new();
    c.input.dims = vec![2, 2];
    c.input.buf = Buf::of(&[4.0f64, 2.0, 2.0]);
    assert!(matches!(expect_err(&c), KernelError::ByteLength { expected: 32, got: 24, .. }));
}

#[test]
fn missing_attr() {
    let mut c = PotrfCall::new();
    c.attrs = Attrs::new();
    let err = expect_err(&c);
    assert!(matches!(err, KernelError::MissingAttr { name: "uplo", .. }), "{err}");
    assert_eq!(err.to_string(), "lapack_dpotrf_ffi: missing attribute \"uplo\" (u8 'L' or 'U')");
}

#[test]
fn bad_attr_value() {
    let mut c = PotrfCall::new();
    c.attrs = char_attrs(&[("uplo", b'X')]);
    let err = expect_err(&c);
    assert_eq!(
        err.to_string(),
        "lapack_dpotrf_ffi: attribute \"uplo\" is u8 88 ('X'), expected u8 'L' or 'U'"
    );
}

#[test]
fn bad_attr_type() {
    let mut c = PotrfCall::new();
    c.attrs = Attrs::new().with("uplo", AttrValue::Bool(true));
    assert!(matches!(expect_err(&c), KernelError::AttrValue { name: "uplo", .. }));
    c.attrs = Attrs::new().with("uplo", AttrValue::Str("L"));
    assert!(matches!(expect_err(&c), KernelError::AttrValue { name: "uplo", .. }));
}

#[test]
fn misaligned_result() {
    let input = In::new(&[1, 1], &[4.0f64]);
    let mut words = vec![0u64; 3];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let (_, shifted) = bytes.split_at_mut(4);
    let mut info = Buf::zeroed(4);
    let operands = [Operand { dtype: DType::F64, dims: &input.dims, data: Some(input.buf.bytes()) }];
    let mut results = [
        ResultBuf { dtype: DType::F64, dims: &[1, 1], data: &mut shifted[..8] },
        ResultBuf { dtype: DType::I32, dims: &[], data: info.bytes_mut() },
    ];
    let err = call("lapack_dpotrf_ffi", &operands, &mut results, &char_attrs(&[("uplo", b'L')])).unwrap_err();
    assert!(matches!(err, KernelError::Misaligned { align: 8, .. }), "{err}");
}

#[test]
fn unaliased_operand_without_data() {
    // trsm's `a` is never written in place, so it must come with data.
    let a = In::new(&[2, 2], &[1.0f64, 0.0, 0.0, 1.0]);
    let b = In::new(&[2, 1], &[1.0f64, 2.0]);
    let operands = [
        Operand { dtype: DType::F64, dims: &a.dims, data: None },
        Operand { dtype: DType::F64, dims: &b.dims, data: Some(b.buf.bytes()) },
    ];
    let mut x = Buf::zeroed(16);
    let mut results = [ResultBuf { dtype: DType::F64, dims: &[2, 1], data: x.bytes_mut() }];
    let attrs = char_attrs(&[("side", b'L'), ("uplo", b'L'), ("trans_x", b'N'), ("diag", b'N')]);
    let err = call("lapack_dtrsm_ffi", &operands, &mut results, &attrs).unwrap_err();
    assert!(
        matches!(err, KernelError::NotAliased { buffer: BufferRef::Operand { index: 0, name: "a" }, .. }),
        "{err}"
    );
}

#[test]
fn trsm_mismatched_a() {
    let a = Tensor { dims: vec![3, 3], data: vec![1.0f64; 9] };
    let b = Tensor { dims: vec![2, 4], data: vec![1.0f64; 8] };
    let attrs = char_attrs(&[("side", b'L'), ("uplo", b'L'), ("trans_x", b'N'), ("diag", b'N')]);
    let err = run(
        "lapack_dtrsm_ffi",
        &[In::matrices(&a), In::matrices(&b)],
        &[out(DType::F64, &[2, 4])],
        &attrs,
        None,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "lapack_dtrsm_ffi: operand 0 (a) has shape [3, 3], expected [2, 2]");
}

#[test]
fn orgqr_needs_m_ge_n_ge_k() {
    let a = Tensor { dims: vec![2, 3], data: vec![1.0f64; 6] };
    let tau = Tensor { dims: vec![2], data: vec![0.5f64; 2] };
    let err = run(
        "lapack_dorgqr_ffi",
        &[In::matrices(&a), In::vector(&tau)],
        &[out(DType::F64, &[2, 3])],
        &Attrs::new(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::Shape { buffer: BufferRef::Operand { index: 0, .. }, .. }), "{err}");
    let a = Tensor { dims: vec![4, 3], data: vec![1.0f64; 12] };
    let tau = Tensor { dims: vec![5, 2], data: vec![0.5f64; 10] };
    let err = run(
        "lapack_dorgqr_ffi",
        &[In::matrices(&a), In::vector(&tau)],
        &[out(DType::F64, &[4, 3])],
        &Attrs::new(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::Shape { buffer: BufferRef::Operand { index: 1, .. }, .. }), "{err}");
}

#[test]
fn svd_mode_o_is_unimplemented_and_shapes_follow_mode() {
    let a = Tensor { dims: vec![3, 2], data: vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 7.0] };
    let outs = |u: &[i64], vt: &[i64]| {
        vec![
            out(DType::F64, &[3, 2]),
            out(DType::F64, &[2]),
            out(DType::F64, u),
            out(DType::F64, vt),
            out(DType::I32, &[]),
        ]
    };
    let err = run(
        "lapack_dgesdd_ffi",
        &[In::matrices(&a)],
        &outs(&[3, 3], &[2, 2]),
        &char_attrs(&[("mode", b'O')]),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::Unimplemented { .. }), "{err}");
    // Thin shapes with mode 'A'.
    let err = run(
        "lapack_dgesdd_ffi",
        &[In::matrices(&a)],
        &outs(&[3, 2], &[2, 2]),
        &char_attrs(&[("mode", b'A')]),
        None,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "lapack_dgesdd_ffi: result 2 (u) has shape [3, 2], expected [3, 3]");
}

#[test]
fn ormqr_needs_bool_attrs() {
    let a = Tensor { dims: vec![3, 2], data: vec![1.0f64; 6] };
    let tau = Tensor { dims: vec![2], data: vec![0.5f64; 2] };
    let c = Tensor { dims: vec![3, 1], data: vec![1.0f64; 3] };
    let inputs = [In::matrices(&a), In::vector(&tau), In::matrices(&c)];
    let attrs = Attrs::new().with("left", AttrValue::U8(1)).with("transpose", AttrValue::Bool(false));
    let err = run("lapack_dormqr_ffi", &inputs, &[out(DType::F64, &[3, 1])], &attrs, None).unwrap_err();
    assert!(matches!(err, KernelError::AttrValue { name: "left", expected: "bool", .. }), "{err}");
}

#[test]
fn batch_dims_must_match() {
    let a = Tensor { dims: vec![2, 2, 2], data: vec![1.0f64; 8] };
    let outs = [out(DType::F64, &[2, 2, 2]), out(DType::I32, &[3, 2]), out(DType::I32, &[2])];
    let err = run("lapack_dgetrf_ffi", &[In::matrices(&a)], &outs, &Attrs::new(), None).unwrap_err();
    assert_eq!(err.to_string(), "lapack_dgetrf_ffi: result 1 (ipiv) has shape [3, 2], expected [2, 2]");
}

#[test]
fn attrs_map_replaces_and_ignores_extras() {
    let mut attrs = Attrs::new();
    assert_eq!(attrs.insert("uplo", AttrValue::U8(b'U')), None);
    assert_eq!(attrs.insert("uplo", AttrValue::U8(b'L')), Some(AttrValue::U8(b'U')));
    attrs.insert("unrelated", AttrValue::I64(7));
    assert_eq!(attrs.len(), 2);
    let mut c = PotrfCall::new();
    c.attrs = attrs;
    c.run().0.expect("extra attributes are ignored");
}

/// Empty matrices and empty batches run without touching faer's asserts.
#[test]
#[allow(clippy::type_complexity)] // one table of cases, read row by row
fn empty_shapes_run() {
    let f = DType::F64;
    let i = DType::I32;
    let none = Attrs::new();
    let cases: Vec<(&str, Vec<In>, Vec<(DType, Vec<i64>)>, Attrs<'static>)> = vec![
        (
            "lapack_dgeqrf_ffi",
            vec![In::new::<f64>(&[0, 3], &[])],
            vec![out(f, &[0, 3]), out(f, &[0])],
            none.clone(),
        ),
        (
            "lapack_dgeqrf_ffi",
            vec![In::new::<f64>(&[0, 2, 2], &[])],
            vec![out(f, &[0, 2, 2]), out(f, &[0, 2])],
            none.clone(),
        ),
        (
            "lapack_dorgqr_ffi",
            vec![In::new::<f64>(&[3, 0], &[]), In::new::<f64>(&[0], &[])],
            vec![out(f, &[3, 0])],
            none.clone(),
        ),
        (
            "lapack_dgetrf_ffi",
            vec![In::new::<f64>(&[2, 0, 3], &[])],
            vec![out(f, &[2, 0, 3]), out(i, &[2, 0]), out(i, &[2])],
            none.clone(),
        ),
        (
            "lapack_dpotrf_ffi",
            vec![In::new::<f64>(&[0, 0], &[])],
            vec![out(f, &[0, 0]), out(i, &[])],
            char_attrs(&[("uplo", b'U')]),
        ),
        (
            "lapack_dtrsm_ffi",
            vec![In::new::<f64>(&[0, 0], &[]), In::new::<f64>(&[0, 2], &[])],
            vec![out(f, &[0, 2])],
            char_attrs(&[("side", b'L'), ("uplo", b'L'), ("trans_x", b'N'), ("diag", b'N')]),
        ),
        (
            "lapack_dsyevd_ffi",
            vec![In::new::<f64>(&[0, 0], &[])],
            vec![out(f, &[0, 0]), out(f, &[0]), out(i, &[])],
            char_attrs(&[("uplo", b'L'), ("mode", b'V')]),
        ),
    ];
    for (target, inputs, outs, attrs) in cases {
        run(target, &inputs, &outs, &attrs, None).unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    // A 3×0 SVD with full U: the identity.
    let outs = [out(f, &[3, 0]), out(f, &[0]), out(f, &[3, 3]), out(f, &[0, 0]), out(i, &[])];
    let bufs = run(
        "lapack_dgesdd_ffi",
        &[In::new::<f64>(&[3, 0], &[])],
        &outs,
        &char_attrs(&[("mode", b'A')]),
        None,
    )
    .expect("empty svd runs");
    assert_eq!(bufs[2].to_vec::<f64>(), [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
}
