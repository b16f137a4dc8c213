//! The Open Inference Protocol v2 (KServe v2) over gRPC: `inference.GRPCInferenceService`
//! (proto/grpc_service.proto) on its own listener, beside HTTP. Health, server and model
//! metadata, model readiness, and `ModelInfer` with tensors as `raw_input_contents` /
//! `raw_output_contents` or as typed `contents`. Inference goes through the same checks and
//! the same dynamic batcher as HTTP requests.
//!
//! Errors are gRPC status codes: `INVALID_ARGUMENT` (names, datatypes, shapes, sizes),
//! `NOT_FOUND` (model or version), `RESOURCE_EXHAUSTED` (a message over the body limit),
//! `DEADLINE_EXCEEDED` (`grpc-timeout`, or the request's `timeout` parameter in microseconds),
//! `UNIMPLEMENTED` (protocol features not served: sequences, shared memory, classification, the
//! RPCs of Triton's extensions), `UNAVAILABLE` (shutting down), `INTERNAL` (the model failed).

#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
#[rustfmt::skip]
pub mod proto {
    //! The messages, server and client of `inference.GRPCInferenceService`, generated from
    //! proto/grpc_service.proto by scripts/gen_grpc.sh (prost and tonic). The client needs a
    //! tonic transport (tonic's `channel` feature) in the crate that uses it.
    include!("inference.rs");
}

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status};

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

use super::datatype;
use super::error::ApiError;
use super::model::{Deadline, Model, Ticket};
use super::state::AppState;
use crate::{DType, Tensor};

/// Streams a client may have open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The largest header block (gRPC metadata) of a request.
const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;
/// A connection with no frame from its client for this long is pinged; one that does not
/// answer within [`KEEP_ALIVE_TIMEOUT`] is closed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// At shutdown, how long in-flight requests may take to finish before their connections are
/// dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long a connection told to go away (idle, or at shutdown) with no request in flight may
/// take to close before its socket is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `inference.GRPCInferenceService` on `listener` until `shutdown` completes, then
/// turns readiness off, refuses new connections and streams (HTTP/2 GOAWAY) and returns once
/// the requests in flight are answered (or after 30 s).
pub(crate) async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let max_message = state.max_body_bytes;
    // As for HTTP (its own count): --max-connections open at once, more closed as soon as they
    // are accepted; a connection with no request in flight for --idle-timeout is closed
    // (HTTP/2 GOAWAY, then the socket), and so is one that never completes its handshake.
    let (max_connections, idle_timeout) = (state.limits.max_connections.clamp(1, u32::MAX as usize), state.limits.idle_timeout);
    let service = GrpcInferenceServiceServer::new(Inference { state: state.clone() }).max_decoding_message_size(max_message).max_encoding_message_size(usize::MAX);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    // One permit per open connection: the cap, and (all permits back) the end of the drain.
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener goes on (after a pause, so a full table isn't spun on).
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let (svc, act) = (service.clone(), activity.clone());
        let hyper_service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut svc = svc.clone();
            let busy = act.begin();
            async move {
                let mut response = svc.call(req).await?;
                drop(busy);
                message_too_large_is_resource_exhausted(&mut response);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let conn = http2.serve_connection(TokioIo::new(stream), hyper_service);
        let mut stopping = stop.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // Since when the connection has been told to go away (idle, or shutting down).
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stopping.changed(), if closing.is_none() => {
                        closing = Some(tokio::time::Instant::now());
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick() => match closing {
                        // Gone away with nothing in flight (or never past the handshake):
                        // the socket is closed.
                        Some(at) if at.elapsed() >= CLOSE_GRACE && activity.in_flight() == 0 => break,
                        None if activity.idle_for() >= idle_timeout => {
                            closing = Some(tokio::time::Instant::now());
                            conn.as_mut().graceful_shutdown();
                        }
                        _ => {}
                    },
                }
            }
        });
    }
    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.acquire_many(max_connections as u32)).await;
    Ok(())
}

/// A connection's requests in flight, and when it last had one.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<std::time::Instant>,
}

/// One request in flight on a connection, until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity { in_flight: 0.into(), last: std::sync::Mutex::new(std::time::Instant::now()) }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long the connection has had no request in flight (zero while it has one).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().map(|l| l.elapsed()).unwrap_or_default()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = std::time::Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// tonic refuses a message over the size limit (from its length prefix, before reading it)
/// with `OUT_OF_RANGE`; gRPC's own servers, and clients, expect `RESOURCE_EXHAUSTED`. No handler
/// here answers `OUT_OF_RANGE`, so the code is rewritten in the (trailers-only) response.
fn message_too_large_is_resource_exhausted<B>(response: &mut hyper::Response<B>) {
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == out_of_range.as_bytes()) {
        let code = (Code::ResourceExhausted as i32).to_string();
        if let Ok(v) = hyper::header::HeaderValue::from_str(&code) {
            response.headers_mut().insert("grpc-status", v);
        }
    }
}

/// The service: what every handler shares.
struct Inference {
    state: Arc<AppState>,
}

/// The model version a request names; an empty version is the highest.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: !self.state.is_draining() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        self.state.repo.get(&r.name, version(&r.version)).map_err(|e| status(&e))?;
        Ok(Response::new(ModelReadyResponse { ready: !self.state.is_draining() }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse { name: "flaxlayer".into(), version: env!("CARGO_PKG_VERSION").into(), extensions: Vec::new() }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.state.repo.get(&r.name, version(&r.version)).map_err(|e| status(&e))?;
        let versions = self.state.repo.versions(&r.name).map_err(|e| status(&e))?;
        // The same metadata as HTTP's, from the same source.
        let meta = model.metadata(&versions);
        let tensors = |key: &str| -> Vec<TensorMetadata> {
            meta[key]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| TensorMetadata {
                            name: t["name"].as_str().unwrap_or_default().to_string(),
                            datatype: t["datatype"].as_str().unwrap_or_default().to_string(),
                            shape: t["shape"].as_array().map(|d| d.iter().filter_map(Value::as_i64).collect()).unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name().to_string(),
            versions: versions.iter().map(u64::to_string).collect(),
            platform: meta["platform"].as_str().unwrap_or_default().to_string(),
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let header_deadline = grpc_timeout(request.metadata()).map_err(|e| status(&e))?;
        let request = request.into_inner();
        let state = &self.state;
        let (model, started) = state.model_for_request(&request.model_name, version(&request.model_version)).map_err(|e| status(&e))?;
        // The server's --request-timeout, tightened by grpc-timeout and the timeout parameter.
        let mut deadline = state.deadline(started);
        if let Some(t) = header_deadline {
            deadline = deadline.tighten(started, t, "the client's grpc-timeout");
        }
        let result = match request_deadline(&request.parameters) {
            Err(e) => Err(e),
            Ok(t) => {
                if let Some(t) = t {
                    deadline = deadline.tighten(started, t, "the request's timeout parameter");
                }
                infer(model, deadline, request).await
            }
        };
        state.account(Some(model), started, result.as_ref().err());
        result.map(Response::new).map_err(|e| status(&e))
    }
}

/// One inference: admitted to the model's queue, the inputs decoded and checked against the
/// model (their bytes reserved in the queue before any is allocated), run through the batcher,
/// the outputs asked for encoded.
async fn infer(model: &Arc<Model>, deadline: Deadline, request: ModelInferRequest) -> Result<ModelInferResponse, ApiError> {
    let mut ticket = model.admit(Some(deadline))?;
    check_parameters(&request.parameters)?;
    let selected = select_outputs(model, &request.outputs)?;
    let typed_request = request.raw_input_contents.is_empty() && !request.inputs.is_empty();
    let named = decode_inputs(model, &mut ticket, request.inputs, request.raw_input_contents)?;
    let (inputs, rows) = model.check_inputs(named)?;
    let outputs = model.infer(ticket, inputs, rows).await?;
    // Typed contents answer typed contents, when every output has a typed field.
    let typed = typed_request && selected.iter().all(|&i| typed_field(outputs[i].dtype()));
    let mut response = ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        id: request.id,
        parameters: HashMap::new(),
        outputs: Vec::with_capacity(selected.len()),
        raw_output_contents: Vec::new(),
    };
    for i in selected {
        let t = &outputs[i];
        let mut out = InferOutputTensor {
            name: model.outputs()[i].name.clone(),
            datatype: datatype::name(t.dtype()).to_string(),
            shape: t.dims_i64(),
            parameters: HashMap::new(),
            contents: None,
        };
        if typed {
            out.contents = Some(to_contents(t));
        } else {
            response.raw_output_contents.push(t.as_bytes().to_vec());
        }
        response.outputs.push(out);
    }
    Ok(response)
}

/// The status a refusal is answered with.
fn status(e: &ApiError) -> Status {
    let code = match e {
        ApiError::Unsupported { .. } => Code::Unimplemented,
        ApiError::BodyTooLarge { .. } | ApiError::Overloaded { .. } => Code::ResourceExhausted,
        ApiError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        _ => match e.status().as_u16() {
            404 => Code::NotFound,
            408 | 504 => Code::DeadlineExceeded,
            413 | 429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            400..=499 => Code::InvalidArgument,
            _ => Code::Internal,
        },
    };
    Status::new(code, e.to_string())
}

/// The `grpc-timeout` header (`{1-8 digits}{H|M|S|m|u|n}`), when there is one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, ApiError> {
    let Some(v) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || ApiError::malformed(format!("grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), got {:?}", String::from_utf8_lossy(v.as_bytes())));
    let s = v.to_str().map_err(|_| bad())?;
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

/// The request's `timeout` parameter (microseconds, as KServe and Triton define it).
fn request_deadline(params: &HashMap<String, InferParameter>) -> Result<Option<Duration>, ApiError> {
    let Some(p) = params.get("timeout") else { return Ok(None) };
    match p.parameter_choice {
        Some(ParameterChoice::Int64Param(us)) if us > 0 => Ok(Some(Duration::from_micros(us as u64))),
        Some(ParameterChoice::Uint64Param(us)) if us > 0 => Ok(Some(Duration::from_micros(us))),
        // Zero: no timeout, as Triton reads it.
        Some(ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0)) => Ok(None),
        _ => Err(ApiError::malformed(format!("parameter timeout must be a positive int64 of microseconds, got {:?}", p.parameter_choice))),
    }
}

/// Refuses what this server does not do: sequences (a `sequence_id` other than 0 or ""), and
/// shared memory.
fn check_parameters(params: &HashMap<String, InferParameter>) -> Result<(), ApiError> {
    if let Some(p) = params.get("sequence_id") {
        let none = matches!(&p.parameter_choice, None | Some(ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0)))
            || matches!(&p.parameter_choice, Some(ParameterChoice::StringParam(s)) if s.is_empty());
        if !none {
            return Err(ApiError::Unsupported { feature: "the sequence extension (sequence_id)".into() });
        }
    }
    refuse_shared_memory(params)
}

fn refuse_shared_memory(params: &HashMap<String, InferParameter>) -> Result<(), ApiError> {
    if params.keys().any(|k| k.starts_with("shared_memory_")) {
        return Err(ApiError::Unsupported { feature: "the shared-memory extension".into() });
    }
    Ok(())
}

/// The outputs to answer, by index: those the request lists, in its order, else all.
fn select_outputs(model: &Model, wanted: &[proto::model_infer_request::InferRequestedOutputTensor]) -> Result<Vec<usize>, ApiError> {
    if wanted.is_empty() {
        return Ok((0..model.outputs().len()).collect());
    }
    wanted
        .iter()
        .map(|o| {
            refuse_shared_memory(&o.parameters)?;
            if o.parameters.get("classification").is_some_and(|p| !matches!(p.parameter_choice, Some(ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0)))) {
                return Err(ApiError::Unsupported { feature: "the classification extension".into() });
            }
            model.output_index(&o.name)
        })
        .collect()
}

/// Each input as a tensor, from its `raw_input_contents` entry (all inputs raw, one entry
/// each, in order) or its typed `contents`. Every size is checked against the model's input
/// and against the bytes received before anything is allocated.
fn decode_inputs(model: &Model, ticket: &mut Ticket, inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> Result<Vec<(String, Tensor)>, ApiError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ApiError::malformed(format!("raw_input_contents has {} entries for {} inputs (one per input, in order)", raw.len(), inputs.len())));
    }
    if inputs.len() > model.inputs().len() {
        return Err(ApiError::malformed(format!("{} inputs given; the model has {}", inputs.len(), model.inputs().len())));
    }
    let mut raw = raw.into_iter();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let raw = raw.next();
        let what = format!("input {:?}", input.name);
        refuse_shared_memory(&input.parameters)?;
        let dtype = datatype::parse(&input.datatype).ok_or_else(|| ApiError::invalid_tensor(&what, format!("a datatype among {}", datatype::known()), format!("{:?}", input.datatype)))?;
        let declared: Vec<u64> = input
            .shape
            .iter()
            .map(|&d| u64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::invalid_tensor(&what, "a shape of sizes >= 0", format!("{:?}", input.shape)))?;
        // Name, datatype, rank, dimensions and batch size against the model's signature; the
        // size in bytes with checked arithmetic; then reserved in the model's queue.
        let (shape, expected) = model.check_declared(&input.name, dtype, &declared)?;
        model.reserve(ticket, expected)?;
        let tensor = match (raw, &input.contents) {
            (Some(_), Some(c)) if !contents_empty(c) => return Err(ApiError::malformed(format!("{what} has both contents and raw_input_contents"))),
            (Some(bytes), _) => {
                if bytes.len() != expected {
                    return Err(ApiError::invalid_tensor(&what, format!("{expected} bytes of raw_input_contents ({} {shape:?})", input.datatype), format!("{} bytes", bytes.len())));
                }
                Tensor::new(dtype, shape, &bytes)
            }
            (None, None) => return Err(ApiError::malformed(format!("{what} has neither contents nor raw_input_contents"))),
            (None, Some(c)) => {
                let bytes = from_contents(&what, dtype, c, expected / dtype.size_in_bytes())?;
                Tensor::new(dtype, shape, &bytes)
            }
        };
        out.push((input.name, tensor.map_err(|e| ApiError::malformed(format!("{what}: {e}")))?));
    }
    Ok(out)
}

fn contents_empty(c: &InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// Whether `dtype` has a typed field in `InferTensorContents` (FP16 and BF16 have none).
fn typed_field(dtype: DType) -> bool {
    !matches!(dtype, DType::F16 | DType::BF16)
}

/// The name of the `InferTensorContents` field that holds `dtype`.
fn field_name(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "bool_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        _ => "raw_input_contents (no typed field)",
    }
}

/// The little-endian bytes of typed contents: exactly `count` elements in the dtype's field,
/// every other field empty, integers in the dtype's range.
fn from_contents(what: &str, dtype: DType, c: &InferTensorContents, count: usize) -> Result<Vec<u8>, ApiError> {
    let lens = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let field = field_name(dtype);
    if let Some((other, _)) = lens.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(ApiError::invalid_tensor(what, format!("its elements in contents.{field} ({})", datatype::name(dtype)), format!("contents.{other}")));
    }
    let given = lens.iter().find(|(f, _)| *f == field).map_or(0, |(_, n)| *n);
    if given != count || !typed_field(dtype) {
        return Err(ApiError::invalid_tensor(what, format!("{count} elements in contents.{field}"), format!("{given}")));
    }
    let mut out = Vec::with_capacity(count * dtype.size_in_bytes());
    let range = |v: &dyn std::fmt::Display| ApiError::invalid_tensor(what, format!("integers in the range of {}", datatype::name(dtype)), v.to_string());
    match dtype {
        DType::Bool => out.extend(c.bool_contents.iter().map(|&b| u8::from(b))),
        DType::I8 => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i8::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        DType::I16 => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i16::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        DType::I32 => c.int_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => c.int64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::U8 => {
            for &v in &c.uint_contents {
                out.push(u8::try_from(v).map_err(|_| range(&v))?);
            }
        }
        DType::U16 => {
            for &v in &c.uint_contents {
                out.extend_from_slice(&u16::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        DType::U32 => c.uint_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::U64 => c.uint64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F32 => c.fp32_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F64 => c.fp64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        _ => return Err(ApiError::invalid_tensor(what, "raw_input_contents (FP16 and BF16 have no typed field)", "contents")),
    }
    Ok(out)
}

/// A tensor's elements as typed contents (its dtype has a typed field).
fn to_contents(t: &Tensor) -> InferTensorContents {
    let b = t.as_bytes();
    let mut c = InferTensorContents::default();
    fn le<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    match t.dtype() {
        DType::Bool => c.bool_contents = b.iter().map(|&x| x != 0).collect(),
        DType::I8 => c.int_contents = b.iter().map(|&x| i32::from(x as i8)).collect(),
        DType::I16 => c.int_contents = le::<2>(b).map(|a| i32::from(i16::from_le_bytes(a))).collect(),
        DType::I32 => c.int_contents = le::<4>(b).map(i32::from_le_bytes).collect(),
        DType::I64 => c.int64_contents = le::<8>(b).map(i64::from_le_bytes).collect(),
        DType::U8 => c.uint_contents = b.iter().map(|&x| u32::from(x)).collect(),
        DType::U16 => c.uint_contents = le::<2>(b).map(|a| u32::from(u16::from_le_bytes(a))).collect(),
        DType::U32 => c.uint_contents = le::<4>(b).map(u32::from_le_bytes).collect(),
        DType::U64 => c.uint64_contents = le::<8>(b).map(u64::from_le_bytes).collect(),
        DType::F32 => c.fp32_contents = le::<4>(b).map(f32::from_le_bytes).collect(),
        DType::F64 => c.fp64_contents = le::<8>(b).map(f64::from_le_bytes).collect(),
        _ => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(timeout: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", timeout.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeouts_parse_and_junk_is_refused() {
        assert_eq!(grpc_timeout(&meta("250m")).unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&meta("3S")).unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&meta("99999999H")).unwrap(), Some(Duration::from_secs(99_999_999 * 3600)));
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()).unwrap(), None);
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert!(grpc_timeout(&meta(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeout_parameter_in_microseconds() {
        let p = |c| HashMap::from([("timeout".to_string(), InferParameter { parameter_choice: Some(c) })]);
        assert_eq!(request_deadline(&p(ParameterChoice::Int64Param(1500))).unwrap(), Some(Duration::from_micros(1500)));
        assert_eq!(request_deadline(&p(ParameterChoice::Int64Param(0))).unwrap(), None);
        assert!(request_deadline(&p(ParameterChoice::Int64Param(-1))).is_err());
        assert!(request_deadline(&p(ParameterChoice::StringParam("1".into()))).is_err());
    }

    #[test]
    fn typed_contents_round_trip_with_counts_and_ranges_checked() {
        for (dtype, c) in [
            (DType::I8, InferTensorContents { int_contents: vec![-128, 0, 127], ..Default::default() }),
            (DType::U16, InferTensorContents { uint_contents: vec![0, 7, 65535], ..Default::default() }),
            (DType::Bool, InferTensorContents { bool_contents: vec![true, false, true], ..Default::default() }),
            (DType::F32, InferTensorContents { fp32_contents: vec![1.5, -2.0, 0.25], ..Default::default() }),
            (DType::I64, InferTensorContents { int64_contents: vec![i64::MIN, 0, i64::MAX], ..Default::default() }),
            (DType::F64, InferTensorContents { fp64_contents: vec![0.1, 0.2, 0.3], ..Default::default() }),
        ] {
            let bytes = from_contents("x", dtype, &c, 3).unwrap();
            let t = Tensor::new(dtype, vec![3], &bytes).unwrap();
            assert_eq!(to_contents(&t), c, "{dtype}");
        }
        let e = from_contents("x", DType::I8, &InferTensorContents { int_contents: vec![128], ..Default::default() }, 1).unwrap_err();
        assert_eq!(e.to_string(), "x: expected integers in the range of INT8, got 128");
        let e = from_contents("x", DType::F32, &InferTensorContents { fp32_contents: vec![1.0; 2], ..Default::default() }, 3).unwrap_err();
        assert_eq!(e.to_string(), "x: expected 3 elements in contents.fp32_contents, got 2");
        let e = from_contents("x", DType::F32, &InferTensorContents { fp64_contents: vec![1.0], ..Default::default() }, 1).unwrap_err();
        assert!(e.to_string().contains("got contents.fp64_contents"), "{e}");
        assert!(from_contents("x", DType::BF16, &InferTensorContents::default(), 0).is_err());
    }

    #[test]
    fn refusals_map_to_grpc_codes() {
        assert_eq!(status(&ApiError::malformed("x")).code(), Code::InvalidArgument);
        assert_eq!(status(&ApiError::ModelNotFound { name: "m".into(), available: "a".into() }).code(), Code::NotFound);
        assert_eq!(status(&ApiError::BodyTooLarge { limit: 1, got: 2 }).code(), Code::ResourceExhausted);
        assert_eq!(status(&ApiError::Unsupported { feature: "f".into() }).code(), Code::Unimplemented);
        assert_eq!(status(&ApiError::Unavailable { reason: "r".into() }).code(), Code::Unavailable);
        let failed = crate::Error::Unsupported { function: "PJRT_Client_Compile" };
        assert_eq!(status(&ApiError::Inference(failed)).code(), Code::Internal);
    }
}
