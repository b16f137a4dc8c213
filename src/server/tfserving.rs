//! TensorFlow Serving's REST API: `POST /v1/models/M[/versions/V]:predict` with inputs in the
//! row format (`instances`) or the columnar format (`inputs`), and `GET /v1/models/M[/versions/V]`
//! (model status). Tensors are nested JSON lists; their dtypes are the model's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::datatype::{self, Elements, Named};
use super::error::ApiError;
use super::model::{Deadline, Model};
use super::state::{read_body, AppState};
use crate::{Tensor, TensorSpec};

/// The v1 routes. The verb is part of the last path segment (`mlp:predict`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/models/{model}", get(status).post(predict))
        .route("/v1/models/{model}/versions/{version}", get(status_version).post(predict_version))
}

async fn status(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, ApiError> {
    let versions = state.repo.versions(&model)?;
    Ok(status_response(&versions))
}

async fn status_version(State(state): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>) -> Result<Response, ApiError> {
    let m = state.repo.get(&model, Some(&version))?;
    Ok(status_response(&[m.version()]))
}

/// `GetModelStatusResponse` as JSON.
fn status_response(versions: &[u64]) -> Response {
    let status: Vec<Value> = versions
        .iter()
        .rev()
        .map(|v| json!({"version": v.to_string(), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}))
        .collect();
    json_response(&json!({ "model_version_status": status }))
}

async fn predict(State(state): State<Arc<AppState>>, Path(spec): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let name = verb(&spec)?;
    predict_at(&state, name, None, &headers, body).await
}

async fn predict_version(State(state): State<Arc<AppState>>, Path((model, spec)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let version = verb(&spec)?;
    predict_at(&state, &model, Some(version), &headers, body).await
}

/// The part of `spec` before `:predict`; other verbs are refused.
fn verb(spec: &str) -> Result<&str, ApiError> {
    match spec.rsplit_once(':') {
        Some((name, "predict")) => Ok(name),
        Some((_, other)) => Err(ApiError::Unsupported { feature: format!("the {other:?} verb (only :predict is served)") }),
        None => Err(ApiError::malformed(format!("POST {spec:?} has no verb; use /v1/models/NAME:predict"))),
    }
}

async fn predict_at(state: &AppState, name: &str, version: Option<&str>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (model, started) = state.model_for_request(name, version)?;
    let deadline = state.deadline(started);
    let result = match tokio::time::timeout_at(deadline.at.into(), run(state, model, deadline, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(deadline.exceeded()),
    };
    state.account(Some(model), started, result.as_ref().err());
    result
}

/// What the JSON tree of a TF Serving body may take, per byte of the body: a number of two
/// characters (`0,`) becomes a 32-byte `serde_json::Value`. The row and columnar formats
/// give shapes by nesting, so they are parsed as a tree; the tree's size is admitted against
/// the model's queue bytes before it is built.
const TREE_BYTES_PER_BODY_BYTE: usize = 16;

async fn run(state: &AppState, model: &Arc<Model>, deadline: Deadline, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut ticket = model.admit(Some(deadline))?;
    let body = read_body(headers, body, state.max_body_bytes, state.limits.body_read_timeout).await?;
    model.reserve(&mut ticket, body.len().saturating_mul(TREE_BYTES_PER_BODY_BYTE))?;
    let decoded = if body.len() <= super::kserve::INLINE_DECODE_BYTES {
        decode(model, &body)
    } else {
        let m = model.clone();
        tokio::task::spawn_blocking(move || decode(&m, &body))
            .await
            .map_err(|e| ApiError::Internal { reason: format!("decoding the request failed: {e}") })?
    };
    let (inputs, rows, rows_format) = decoded?;
    let outputs = model.infer(ticket, inputs, rows).await?;
    let specs = model.outputs();
    let body = if rows_format {
        serde_json::to_vec(&Predictions { predictions: to_rows(specs, &outputs, rows)? })
    } else {
        serde_json::to_vec(&Outputs { outputs: to_columns(specs, &outputs) })
    };
    let body = body.map_err(|e| ApiError::malformed(format!("writing the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The request's inputs, checked, with their batch size and whether they came as rows.
fn decode(model: &Model, body: &[u8]) -> Result<(Vec<Tensor>, usize, bool), ApiError> {
    let request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| ApiError::malformed(format!("the predict request JSON: {e}")))?;
    check_signature(model, request.get("signature_name"))?;
    let (named, rows_format) = match (request.get("instances"), request.get("inputs")) {
        (Some(_), Some(_)) => return Err(ApiError::malformed("give either \"instances\" (row format) or \"inputs\" (columnar format), not both")),
        (None, None) => return Err(ApiError::malformed("the request has neither \"instances\" (row format) nor \"inputs\" (columnar format)")),
        (Some(instances), None) => (from_rows(model.inputs(), instances)?, true),
        (None, Some(inputs)) => (from_columns(model.inputs(), inputs)?, false),
    };
    let (inputs, rows) = model.check_inputs(named)?;
    Ok((inputs, rows, rows_format))
}

fn check_signature(model: &Model, signature: Option<&Value>) -> Result<(), ApiError> {
    match signature {
        None => Ok(()),
        Some(Value::String(s)) if s == "serving_default" || s == model.layer().method() => Ok(()),
        Some(other) => Err(ApiError::invalid_tensor(
            "signature_name",
            format!("\"serving_default\" or {:?} (the served method)", model.layer().method()),
            other.to_string(),
        )),
    }
}

/// Inputs in the row format: one instance per row, each the input's value (one input), or
/// an object of every input's value.
fn from_rows(specs: &[TensorSpec], instances: &Value) -> Result<Vec<(String, Tensor)>, ApiError> {
    let Value::Array(rows) = instances else {
        return Err(ApiError::malformed("\"instances\" must be a list, one item per row"));
    };
    if rows.is_empty() {
        return Err(ApiError::malformed("\"instances\" is empty; a batch needs at least one row"));
    }
    for row in rows {
        if let Value::Object(named) = row {
            if let Some(extra) = named.keys().find(|k| !specs.iter().any(|s| &&s.name == k)) {
                return Err(ApiError::UnknownTensor { kind: "input", name: extra.clone(), available: names(specs) });
            }
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let what = format!("input {:?}", spec.name);
        let mut values = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let value = match row {
                Value::Object(named) => named.get(&spec.name).ok_or_else(|| ApiError::MissingInput { name: spec.name.clone(), available: format!("{} (instance {i} has keys {:?})", names(specs), named.keys().collect::<Vec<_>>()) })?,
                v if specs.len() == 1 => v,
                _ => return Err(ApiError::malformed(format!("instance {i} must be an object naming each input ({}), as the model has several", names(specs)))),
            };
            values.push(value);
        }
        let row_shape = datatype::shape_of(&what, values[0])?;
        for (i, v) in values.iter().enumerate().skip(1) {
            let s = datatype::shape_of(&what, v)?;
            if s != row_shape {
                return Err(ApiError::invalid_tensor(format!("{what} of instance {i}"), format!("shape {row_shape:?} like instance 0"), format!("{s:?}")));
            }
        }
        let mut shape = vec![rows.len()];
        shape.extend(row_shape);
        let mut bytes = Vec::new();
        for v in values {
            datatype::encode_json(&what, spec.dtype, v, &mut bytes)?;
        }
        out.push((spec.name.clone(), tensor(&what, spec, shape, &bytes)?));
    }
    Ok(out)
}

/// Inputs in the columnar format: the input's value (one input), or an object of every
/// input's value, each with its batch axis.
fn from_columns(specs: &[TensorSpec], inputs: &Value) -> Result<Vec<(String, Tensor)>, ApiError> {
    let named: Vec<(String, &Value)> = match inputs {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        v if specs.len() == 1 => vec![(specs[0].name.clone(), v)],
        _ => return Err(ApiError::malformed(format!("\"inputs\" must be an object naming each input ({}), as the model has several", names(specs)))),
    };
    named
        .into_iter()
        .map(|(name, v)| {
            let what = format!("input {name:?}");
            let spec = specs.iter().find(|s| s.name == name).ok_or_else(|| ApiError::UnknownTensor { kind: "input", name: name.clone(), available: names(specs) })?;
            let shape = datatype::shape_of(&what, v)?;
            let mut bytes = Vec::new();
            datatype::encode_json(&what, spec.dtype, v, &mut bytes)?;
            Ok((name, tensor(&what, spec, shape, &bytes)?))
        })
        .collect()
}

fn tensor(what: &str, spec: &TensorSpec, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, ApiError> {
    Tensor::new(spec.dtype, shape, bytes).map_err(|e| ApiError::malformed(format!("{what}: {e}")))
}

/// The response to a row-format request.
#[derive(Serialize)]
struct Predictions<'a> {
    predictions: OneOrNamed<'a, Vec<Elements<'a>>>,
}

/// The response to a columnar request.
#[derive(Serialize)]
struct Outputs<'a> {
    outputs: OneOrNamed<'a, Elements<'a>>,
}

/// A model's outputs as TF Serving writes them: the value alone when there is one output,
/// else named.
#[derive(Serialize)]
#[serde(untagged)]
enum OneOrNamed<'a, T> {
    One(T),
    Named(Vec<Named<'a, Elements<'a>>>),
    Columns(Named<'a, Elements<'a>>),
}

/// Outputs in the row format: per row, the output's value (one output) or an object of every
/// output's value. Every output must carry the batch axis.
fn to_rows<'a>(specs: &'a [TensorSpec], outputs: &'a [Tensor], rows: usize) -> Result<OneOrNamed<'a, Vec<Elements<'a>>>, ApiError> {
    let mut per_output = Vec::with_capacity(outputs.len());
    for (spec, t) in specs.iter().zip(outputs) {
        if t.shape().first() != Some(&rows) {
            return Err(ApiError::Unsupported {
                feature: format!("the row format for output {:?} of shape {:?}, which has no batch axis of {rows} rows (use the columnar format, \"inputs\")", spec.name, t.shape()),
            });
        }
        let step = t.num_bytes() / rows.max(1);
        let row_shape = &t.shape()[1..];
        per_output.push((0..rows).map(|r| Elements::new(t.dtype(), row_shape, &t.as_bytes()[r * step..(r + 1) * step])).collect::<Vec<_>>());
    }
    if per_output.len() == 1 {
        return Ok(OneOrNamed::One(per_output.remove(0)));
    }
    let named = (0..rows).map(|r| Named(specs.iter().zip(&per_output).map(|(s, o)| (s.name.as_str(), o[r])).collect())).collect();
    Ok(OneOrNamed::Named(named))
}

/// Outputs in the columnar format: the output (one output) or an object of every output.
fn to_columns<'a>(specs: &'a [TensorSpec], outputs: &'a [Tensor]) -> OneOrNamed<'a, Elements<'a>> {
    let value = |t: &'a Tensor| Elements::new(t.dtype(), t.shape(), t.as_bytes());
    if outputs.len() == 1 {
        return OneOrNamed::One(value(&outputs[0]));
    }
    OneOrNamed::Columns(Named(specs.iter().zip(outputs).map(|(s, t)| (s.name.as_str(), value(t))).collect()))
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    mod erased {
        /// Serializes any value to a JSON string (an object-safe `Serialize`).
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    fn specs() -> Vec<TensorSpec> {
        vec![TensorSpec::new("ids", DType::I32, vec![3, 2]), TensorSpec::new("x", DType::F32, vec![3])]
    }

    #[test]
    fn rows_and_columns_give_the_same_tensors() {
        let rows = json!([{"ids": [1, 2], "x": 0.5}, {"ids": [3, 4], "x": 1.5}]);
        let cols = json!({"ids": [[1, 2], [3, 4]], "x": [0.5, 1.5]});
        let a = from_rows(&specs(), &rows).unwrap();
        let mut b = from_columns(&specs(), &cols).unwrap();
        b.sort_by(|p, q| p.0.cmp(&q.0));
        assert_eq!(a, b);
        assert_eq!(a[0].1.shape(), &[2, 2]);
        assert_eq!(a[1].1.as_slice::<f32>().unwrap(), &[0.5, 1.5]);
    }

    #[test]
    fn one_input_may_go_bare_and_bad_rows_are_named() {
        let one = vec![TensorSpec::new("inputs", DType::F32, vec![1, 2])];
        let t = from_rows(&one, &json!([[1, 2], [3, 4], [5, 6]])).unwrap();
        assert_eq!(t[0].1.shape(), &[3, 2]);
        let e = from_rows(&one, &json!([[1, 2], [3]])).unwrap_err().to_string();
        assert_eq!(e, "input \"inputs\" of instance 1: expected shape [2] like instance 0, got [1]");
        let e = from_rows(&specs(), &json!([{"ids": [1, 2]}])).unwrap_err().to_string();
        assert!(e.starts_with("missing input \"x\""), "{e}");
        let e = from_columns(&specs(), &json!({"idz": [[1, 2]]})).unwrap_err().to_string();
        assert!(e.starts_with("unknown input \"idz\""), "{e}");
        assert!(from_rows(&specs(), &json!([[1, 2]])).is_err());
        assert_eq!(verb("mlp:predict").unwrap(), "mlp");
        assert!(matches!(verb("mlp:classify"), Err(ApiError::Unsupported { .. })));
    }

    #[test]
    fn outputs_by_row_and_by_column() {
        let out = vec![Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap(), Tensor::from_vec(vec![2], vec![7i32, 8]).unwrap()];
        let s = vec![TensorSpec::new("0", DType::F32, vec![2, 2]), TensorSpec::new("1", DType::I32, vec![2])];
        let v = |x: &dyn erased::Ser| -> Value { serde_json::from_str(&x.json()).unwrap() };
        assert_eq!(v(&to_rows(&s, &out, 2).unwrap()), json!([{"0": [1.0, 2.0], "1": 7}, {"0": [3.0, 4.0], "1": 8}]));
        assert_eq!(v(&to_columns(&s, &out)), json!({"0": [[1.0, 2.0], [3.0, 4.0]], "1": [7, 8]}));
        assert_eq!(v(&to_rows(&s[..1], &out[..1], 2).unwrap()), json!([[1.0, 2.0], [3.0, 4.0]]));
        let scalar = vec![Tensor::from_vec(vec![], vec![1.0f32]).unwrap()];
        assert!(to_rows(&s[..1], &scalar, 2).is_err());
    }
}
