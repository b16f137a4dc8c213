//! The Open Inference Protocol v2 (KServe v2) over HTTP/REST, with Triton's binary tensor
//! data extension: health, server and model metadata, and inference with tensors as JSON
//! `data` or as raw little-endian bytes after the JSON (`Inference-Header-Content-Length`,
//! `binary_data_size`, `binary_data`, `binary_data_output`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::datatype;
use super::error::ApiError;
use super::model::{Deadline, Model, Ticket};
use super::state::{read_body, AppState};
use crate::{DType, Tensor};

/// Bodies up to this size are decoded on the runtime's thread: a few microseconds of parsing,
/// less than a handoff to a blocking thread and back (see BENCHMARKS.md, serving).
pub(crate) const INLINE_DECODE_BYTES: usize = 16 << 10;

/// The header giving the length of the JSON part of a body that carries binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The v2 routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
}

async fn server_metadata() -> Response {
    json_response(&json!({"name": "flaxlayer", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.is_draining() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn model_metadata(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, ApiError> {
    metadata(&state, &model, None)
}

async fn model_metadata_version(State(state): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>) -> Result<Response, ApiError> {
    metadata(&state, &model, Some(&version))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let model = state.repo.get(name, version)?;
    Ok(json_response(&model.metadata(&state.repo.versions(name)?)))
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<StatusCode, ApiError> {
    model_ready_at(&state, &model, None)
}

async fn model_ready_version(State(state): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    model_ready_at(&state, &model, Some(&version))
}

fn model_ready_at(state: &AppState, name: &str, version: Option<&str>) -> Result<StatusCode, ApiError> {
    state.repo.get(name, version)?;
    Ok(if state.is_draining() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK })
}

async fn infer(State(state): State<Arc<AppState>>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    infer_at(&state, &model, None, &headers, body).await
}

async fn infer_version(State(state): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    infer_at(&state, &model, Some(&version), &headers, body).await
}

async fn infer_at(state: &AppState, name: &str, version: Option<&str>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (model, started) = state.model_for_request(name, version)?;
    let deadline = state.deadline(started);
    let result = match tokio::time::timeout_at(deadline.at.into(), run(state, model, started, deadline, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(deadline.exceeded()),
    };
    state.account(Some(model), started, result.as_ref().err());
    result
}

/// `$inference_request`, with each input's `data` left as JSON text (decoded straight into
/// tensor bytes once its shape has been checked).
#[derive(Deserialize)]
struct InferRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<RequestInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

/// `$request_input`.
#[derive(Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// `$request_output`.
#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A decoded, checked request: ready for the batcher.
struct Decoded {
    id: Option<String>,
    selected: Vec<(usize, bool)>,
    inputs: Vec<Tensor>,
    rows: usize,
    /// KServe's `timeout` parameter.
    timeout: Option<Duration>,
}

async fn run(state: &AppState, model: &Arc<Model>, started: Instant, deadline: Deadline, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut ticket = model.admit(Some(deadline))?;
    let body = read_body(headers, body, state.max_body_bytes, state.limits.body_read_timeout).await?;
    let json_length = header_length(headers)?;
    // Decoding is CPU work that grows with the body: off the runtime's threads, unless the
    // body is so small that the handoff would cost more than the parse.
    let (decoded, mut ticket) = if body.len() <= INLINE_DECODE_BYTES {
        let d = decode_request(model, &body, json_length, &mut ticket);
        (d, ticket)
    } else {
        let m = model.clone();
        tokio::task::spawn_blocking(move || {
            let d = decode_request(&m, &body, json_length, &mut ticket);
            (d, ticket)
        })
        .await
        .map_err(|e| ApiError::Internal { reason: format!("decoding the request failed: {e}") })?
    };
    let Decoded { id, selected, inputs, rows, timeout } = decoded?;
    if let (Some(t), Some(d)) = (timeout, ticket.deadline) {
        ticket.deadline = Some(d.tighten(started, t, "the request's timeout parameter"));
    }
    let outputs = model.infer(ticket, inputs, rows).await?;
    encode_response(model, id, &selected, &outputs)
}

/// Parses and checks a request body against the model, reserving its input bytes in the
/// ticket before any is allocated.
fn decode_request(model: &Model, body: &[u8], json_length: Option<usize>, ticket: &mut Ticket) -> Result<Decoded, ApiError> {
    let (json_part, binary) = split_body(json_length, body)?;
    let request: InferRequest<'_> = serde_json::from_slice(json_part).map_err(|e| ApiError::malformed(format!("the inference request JSON: {e}")))?;
    let timeout = check_request_parameters(&request.parameters)?;
    let selected = select_outputs(model, &request)?;
    let named = decode_inputs(&request.inputs, binary, |name, dtype, shape| {
        let (shape, bytes) = model.check_declared(name, dtype, shape)?;
        model.reserve(ticket, bytes)?;
        Ok((shape, bytes))
    })?;
    let (inputs, rows) = model.check_inputs(named)?;
    Ok(Decoded { id: request.id, selected, inputs, rows, timeout })
}

/// `Inference-Header-Content-Length`, when present: the length of the JSON part.
fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        ApiError::malformed(format!("Inference-Header-Content-Length must be a byte count, got {:?}", String::from_utf8_lossy(v.as_bytes())))
    })
}

/// The JSON part and the binary part of a body: split at `Inference-Header-Content-Length`
/// when present, else all JSON.
fn split_body(json_length: Option<usize>, body: &[u8]) -> Result<(&[u8], &[u8]), ApiError> {
    let Some(n) = json_length else { return Ok((body, &[])) };
    if n > body.len() {
        return Err(ApiError::malformed(format!("Inference-Header-Content-Length is {n} but the body has {} bytes", body.len())));
    }
    Ok(body.split_at(n))
}

/// Checks the request-level parameters; returns the `timeout` parameter (microseconds, as
/// Triton reads it), if any.
fn check_request_parameters(params: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    let sequence = params.get("sequence_id").is_some_and(|v| v.as_u64() != Some(0) && v.as_str() != Some(""));
    if sequence {
        return Err(ApiError::Unsupported { feature: "the sequence extension (sequence_id)".into() });
    }
    if params.get("binary_data_output").is_some_and(|v| !v.is_boolean()) {
        return Err(ApiError::malformed("parameter binary_data_output must be a boolean"));
    }
    match params.get("timeout") {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(us) => Ok(Some(Duration::from_micros(us))),
            None => Err(ApiError::malformed(format!("parameter timeout must be a whole number of microseconds, got {v}"))),
        },
    }
}

fn refuse_shared_memory(params: &Map<String, Value>) -> Result<(), ApiError> {
    if params.keys().any(|k| k.starts_with("shared_memory_")) {
        return Err(ApiError::Unsupported { feature: "the shared-memory extension".into() });
    }
    Ok(())
}

/// Each input as a tensor: its JSON `data`, or its `binary_data_size` bytes taken in order from
/// the binary part, which must be used up exactly. `check` sees each input's name, dtype and
/// declared shape before anything is allocated for it, and gives the shape and its size in
/// bytes (or refuses it); every declared size is then held against the bytes that came.
fn decode_inputs(
    inputs: &[RequestInput<'_>],
    binary: &[u8],
    mut check: impl FnMut(&str, DType, &[u64]) -> Result<(Vec<usize>, usize), ApiError>,
) -> Result<Vec<(String, Tensor)>, ApiError> {
    let mut at = 0usize;
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        refuse_shared_memory(&input.parameters)?;
        let what = format!("input {:?}", input.name);
        let dtype = datatype::parse(&input.datatype)
            .ok_or_else(|| ApiError::invalid_tensor(&what, format!("a datatype among {}", datatype::known()), format!("{:?}", input.datatype)))?;
        let source = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(_), Some(_)) => return Err(ApiError::malformed(format!("{what} has both \"data\" and binary_data_size"))),
            (None, None) => return Err(ApiError::malformed(format!("{what} has neither \"data\" nor binary_data_size"))),
            (Some(size), None) => Ok(size),
            (None, Some(data)) => Err(data),
        };
        let (shape, expected) = check(&input.name, dtype, &input.shape)?;
        let t = match source {
            Ok(size) => {
                let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| ApiError::malformed(format!("{what}: binary_data_size must be a byte count, got {size}")))?;
                if size != expected {
                    return Err(ApiError::invalid_tensor(&what, format!("{expected} bytes of binary data ({} {shape:?})", input.datatype), format!("binary_data_size {size}")));
                }
                let end = at.checked_add(size).filter(|&e| e <= binary.len()).ok_or_else(|| {
                    ApiError::malformed(format!("{what}: binary_data_size {size} runs past the body's {} bytes of binary data (Inference-Header-Content-Length missing or wrong?)", binary.len()))
                })?;
                let slice = &binary[at..end];
                at = end;
                Tensor::new(dtype, shape, slice).map_err(|e| ApiError::invalid_tensor(&what, "valid binary data", e.to_string()))?
            }
            Err(data) => {
                // Every element takes at least one character of JSON: a declared shape larger
                // than the text is refused before its bytes are allocated.
                let elements = expected / dtype.size_in_bytes();
                let text = data.get();
                if elements > text.len() {
                    return Err(ApiError::invalid_tensor(&what, format!("{elements} elements for shape {shape:?}"), format!("\"data\" of {} characters, too short to hold them", text.len())));
                }
                datatype::decode_data(&what, dtype, shape, text)?
            }
        };
        out.push((input.name.clone(), t));
    }
    if at != binary.len() {
        return Err(ApiError::malformed(format!("{} bytes of binary data follow the JSON but the inputs' binary_data_size add up to {at}", binary.len())));
    }
    Ok(out)
}

/// The outputs to answer, by index, each with whether it goes as binary data: those the
/// request lists (in its order), else all of them.
fn select_outputs(model: &Model, request: &InferRequest<'_>) -> Result<Vec<(usize, bool)>, ApiError> {
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let Some(wanted) = &request.outputs else {
        return Ok((0..model.outputs().len()).map(|i| (i, all_binary)).collect());
    };
    wanted
        .iter()
        .map(|o| {
            refuse_shared_memory(&o.parameters)?;
            if o.parameters.get("classification").is_some_and(|v| v.as_u64() != Some(0)) {
                return Err(ApiError::Unsupported { feature: "the classification extension".into() });
            }
            let binary = match o.parameters.get("binary_data") {
                None => all_binary,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(ApiError::malformed(format!("output {:?}: binary_data must be a boolean, got {v}", o.name))),
            };
            Ok((model.output_index(&o.name)?, binary))
        })
        .collect()
}

/// `$inference_response`.
#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<ResponseOutput<'a>>,
}

/// `$response_output`: JSON `data`, or the size of its binary data.
#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<datatype::Elements<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// `$inference_response`, followed by the binary outputs when any is binary.
fn encode_response(model: &Model, id: Option<String>, selected: &[(usize, bool)], outputs: &[Tensor]) -> Result<Response, ApiError> {
    let mut binary = Vec::new();
    let mut outs = Vec::with_capacity(selected.len());
    for &(i, as_binary) in selected {
        let (spec, t) = (&model.outputs()[i], &outputs[i]);
        let mut o = ResponseOutput { name: &spec.name, datatype: datatype::name(t.dtype()), shape: t.shape(), parameters: None, data: None };
        if as_binary {
            o.parameters = Some(BinarySize { binary_data_size: t.num_bytes() });
            binary.extend_from_slice(t.as_bytes());
        } else {
            o.data = Some(datatype::Elements::flat(t.dtype(), t.as_bytes()));
        }
        outs.push(o);
    }
    let response = InferResponse { model_name: model.name(), model_version: model.version().to_string(), id, outputs: outs };
    let mut body = serde_json::to_vec(&response).map_err(|e| ApiError::malformed(format!("writing the response: {e}")))?;
    if !selected.iter().any(|&(_, b)| b) {
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let json_len = body.len();
    body.extend_from_slice(&binary);
    let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(r)
}

fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check of a server with no model: any shape, its size by checked arithmetic.
    fn any_shape(_: &str, dtype: DType, shape: &[u64]) -> Result<(Vec<usize>, usize), ApiError> {
        let shape: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).unwrap()).collect();
        let bytes = shape.iter().try_fold(dtype.size_in_bytes(), |a, &d| a.checked_mul(d)).ok_or_else(|| ApiError::malformed("too large"))?;
        Ok((shape, bytes))
    }

    fn parse(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn binary_inputs_are_taken_in_order_and_used_up() {
        let text = parse(json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "UINT32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [3], "datatype": "BOOL", "data": [true, false, true]},
                {"name": "c", "shape": [1], "datatype": "INT16", "parameters": {"binary_data_size": 2}}
            ]
        }));
        let req: InferRequest<'_> = serde_json::from_str(&text).unwrap();
        let bin = [1u8, 0, 0, 0, 2, 0, 0, 0, 0xff, 0x7f];
        let got = decode_inputs(&req.inputs, &bin, any_shape).unwrap();
        assert_eq!(got[0].1.as_slice::<u32>().unwrap(), &[1, 2]);
        assert_eq!(got[1].1.to_bools().unwrap(), vec![true, false, true]);
        assert_eq!(got[2].1.as_slice::<i16>().unwrap(), &[i16::MAX]);
        let e = decode_inputs(&req.inputs, &bin[..9], any_shape).unwrap_err().to_string();
        assert!(e.contains("runs past"), "{e}");
        let mut longer = bin.to_vec();
        longer.push(0);
        let e = decode_inputs(&req.inputs, &longer, any_shape).unwrap_err().to_string();
        assert!(e.contains("11 bytes of binary data follow the JSON"), "{e}");
    }

    #[test]
    fn inputs_are_checked_against_their_shape_and_datatype() {
        let one = |v: Value| -> String {
            let text = parse(json!({"inputs": [v]}));
            let req: InferRequest<'_> = serde_json::from_str(&text).unwrap();
            decode_inputs(&req.inputs, &[], any_shape).unwrap_err().to_string()
        };
        assert_eq!(one(json!({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]})), "input \"x\": expected 4 elements for shape [2, 2], got 3 elements in \"data\"");
        assert!(one(json!({"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]})).contains("expected a datatype among BOOL"));
        assert!(one(json!({"name": "x", "shape": [1], "datatype": "FP32"})).contains("neither"));
        assert!(one(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"shared_memory_region": "r"}})).contains("shared-memory"));
        assert!(one(json!({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}})).contains("expected 4 bytes"));
    }

    #[test]
    fn declared_sizes_are_held_against_the_data_before_allocating() {
        let one = |v: Value| -> String {
            let text = parse(json!({"inputs": [v]}));
            let req: InferRequest<'_> = serde_json::from_str(&text).unwrap();
            decode_inputs(&req.inputs, &[], any_shape).unwrap_err().to_string()
        };
        // Issue 22: these aborted the process (a 1 TiB allocation) or panicked (capacity
        // overflow) before the size was checked.
        let e = one(json!({"name": "x", "shape": [4294967296u64, 64], "datatype": "FP32", "data": [0]}));
        assert!(e.contains("274877906944 elements") && e.contains("too short"), "{e}");
        let e = one(json!({"name": "x", "shape": [1u64 << 62], "datatype": "UINT8", "data": [0]}));
        assert!(e.contains("too short"), "{e}");
        let e = one(json!({"name": "x", "shape": [1u64 << 61], "datatype": "FP32", "data": [0]}));
        assert!(e.contains("too short"), "{e}");
        let e = one(json!({"name": "x", "shape": [1u64 << 62, 4], "datatype": "FP32", "data": [0]}));
        assert!(e.contains("too large"), "{e}");
        let e = one(json!({"name": "x", "shape": [1u64 << 40], "datatype": "FP32", "parameters": {"binary_data_size": 4}}));
        assert!(e.contains("binary_data_size 4"), "{e}");
        let e = one(json!({"name": "x", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}));
        assert!(e.contains("runs past"), "{e}");
        let e = one(json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}));
        assert!(e.contains("expected 2 elements as its shape says, got more"), "{e}");
        let e = one(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [{"a": 1}]}));
        assert!(e.contains("a number for a FP32 element"), "{e}");
        // Deep nesting: skipped over without recursion as raw JSON, refused by the decoder's
        // recursion limit.
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": {deep}}}]}}"#);
        let req: InferRequest<'_> = serde_json::from_str(&text).unwrap();
        let e = decode_inputs(&req.inputs, &[], any_shape).unwrap_err().to_string();
        assert!(e.contains("recursion limit"), "{e}");
        let nested = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        let e = datatype::decode_data("input", DType::F32, vec![1], &nested).map(|t| t.as_slice::<f32>().unwrap().to_vec());
        assert_eq!(e.unwrap(), vec![1.0]);
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(datatype::decode_data("input", DType::F32, vec![1], &nested).is_err());
    }

    #[test]
    fn the_header_length_splits_the_body() {
        let mut h = HeaderMap::new();
        assert_eq!(header_length(&h).unwrap(), None);
        assert_eq!(split_body(None, b"{}xyz").unwrap(), (&b"{}xyz"[..], &b""[..]));
        h.insert(HEADER_LENGTH, HeaderValue::from(2));
        assert_eq!(split_body(header_length(&h).unwrap(), b"{}xyz").unwrap(), (&b"{}"[..], &b"xyz"[..]));
        assert!(split_body(Some(9), b"{}xyz").is_err());
        h.insert(HEADER_LENGTH, HeaderValue::from_static("two"));
        assert!(header_length(&h).is_err());
    }
}
