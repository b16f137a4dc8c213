//! A served model version: a layer over the bundle, what its inputs and outputs are (names,
//! dtypes, shapes with `-1` where any size goes), the check every request passes before it is
//! queued, and its batcher.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::batcher::{Admission, Arrivals, Arriving, Batcher, Job, Policy, QueueLimits};
use super::config::{ModelConfig, ServerConfig};
use super::datatype;
use super::error::ApiError;
use super::metrics::{Metrics, ModelLabels};
use crate::bundle::Role;
use crate::pjrt::Client;
use crate::{DType, FlaxLayer, Mode, Result, Tensor, TensorSpec};

/// One version of a model, loaded and ready to serve.
pub struct Model {
    name: String,
    version: u64,
    layer: Arc<FlaxLayer>,
    /// Input leaves in flatten order (names are PyTree paths), as the first exported
    /// computation has them.
    inputs: Vec<TensorSpec>,
    /// Output leaves in flatten order.
    outputs: Vec<TensorSpec>,
    /// Shapes as metadata shows them: `-1` where the size varies.
    input_dims: Vec<Vec<i64>>,
    output_dims: Vec<Vec<i64>>,
    /// The exported batch sizes.
    batch_sizes: Vec<usize>,
    /// Any batch size is accepted (the layer pads and splits).
    any_batch: bool,
    policy: Policy,
    config: ModelConfig,
    labels: ModelLabels,
    arrivals: Arc<Arrivals>,
    limits: Arc<QueueLimits>,
    /// Why requests are not merged (`None` when they are).
    unbatched_because: Option<String>,
    metrics: Arc<Metrics>,
    batcher: Batcher,
}

/// A request admitted to a model ([`Model::admit`]): it counts against the model's queue
/// limits until its job is answered or dropped, and as arriving (so that a forming batch
/// waits for it) until it is queued or refused. Any front end (HTTP, gRPC) goes through it.
pub struct Ticket {
    admission: Admission,
    arriving: Arriving,
    /// The request's deadline, if any: a job still queued then is dropped.
    pub deadline: Option<Deadline>,
}

/// When a request's answer stops being wanted.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The time allowed, from the request's start.
    pub limit: Duration,
    /// Whose limit: the server's `--request-timeout`, or the request's `timeout` parameter.
    pub which: &'static str,
}

impl Deadline {
    /// The error answered past it.
    pub fn exceeded(&self) -> ApiError {
        ApiError::DeadlineExceeded { limit_ms: self.limit.as_millis(), which: self.which }
    }

    /// The earlier of `self` and a limit of `limit` from `started`, set by `which`.
    pub fn tighten(self, started: Instant, limit: Duration, which: &'static str) -> Deadline {
        match started.checked_add(limit) {
            Some(at) if at < self.at => Deadline { at, limit, which },
            _ => self,
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("version", &self.version).field("batching", &self.policy.merge).finish()
    }
}

impl Model {
    /// Loads the bundle at `dir` as version `version` of `name`, decides how it batches,
    /// warms it up (unless the config says not to) and starts its workers.
    pub(crate) fn load(name: &str, version: u64, dir: &Path, config: &ModelConfig, server: &ServerConfig, client: &Client, metrics: Arc<Metrics>) -> Result<Model> {
        // The server keeps the compile cache on, as the command line does (the library's default
        // is off unless $FLAXLAYER_CACHE names a directory).
        let mut builder = FlaxLayer::builder(dir).client(client.clone()).compile_cache(crate::layer::cache::CacheSetting::FromEnv);
        if let Some(iso) = &server.untrusted {
            builder = builder.untrusted(iso.clone());
        }
        if let Some(m) = &config.method {
            builder = builder.method(m);
        }
        let layer = Arc::new(builder.build()?);
        let specs_in = layer.input_specs(Mode::Inference);
        let specs_out = layer.output_specs(Mode::Inference);
        let (inputs, outputs) = (specs_in.first().cloned().unwrap_or_default(), specs_out.first().cloned().unwrap_or_default());
        let batching = layer.batching().clone();
        let method = layer.method_spec()?;
        let output_batched: Vec<Option<bool>> = method
            .inference
            .first()
            .map(|c| c.results.iter().filter(|s| s.role == Role::Output).map(|s| s.batched).collect())
            .unwrap_or_default();
        // Inference may return state (BatchNorm's running averages, NNX's RNG counters): the
        // server never writes it back, so it does not keep requests apart. What does is state
        // that inference *changes* and that the next call reads (a decode cache): the exporter
        // records that as `stateful`, from the jaxpr (a state result that is not its input
        // passed through).
        let all_marked = output_batched.len() == outputs.len() && output_batched.iter().all(Option::is_some);
        let batch_sizes = layer.batch_sizes(Mode::Inference);
        let any_batch = batching.paddable && all_marked;
        let unbatched_because = if !config.dynamic_batching {
            Some(format!("dynamic_batching is off in {}", super::config::MODEL_CONFIG_FILE))
        } else if batching.stateful {
            Some("its inference changes state (a decode cache), so each request runs alone".to_string())
        } else if !batching.paddable {
            Some(format!("not paddable: {}", batching.reason.as_deref().unwrap_or("the exporter did not mark the method paddable")))
        } else if !all_marked {
            Some("the bundle does not say which outputs carry the batch axis (re-export it)".to_string())
        } else {
            None
        };
        let merge = unbatched_because.is_none();
        let input_dims = dims(&specs_in, |_| any_batch);
        let output_dims = dims(&specs_out, |i| any_batch && output_batched.get(i).copied().flatten() == Some(true));
        let costs = if config.warmup { warm_up(&layer, &specs_in)? } else { guessed_costs(&specs_in) };
        let policy = Policy {
            merge,
            max_rows: config.max_batch_size.unwrap_or_else(|| batch_sizes.last().copied().unwrap_or(1)),
            max_delay: Duration::from_micros(config.max_queue_delay_us),
            output_batched: output_batched.iter().map(|b| b.unwrap_or(false)).collect(),
            chunk_costs: if any_batch { costs } else { Vec::new() },
        };
        let labels = ModelLabels { model: name.to_string(), version: version.to_string() };
        let arrivals = Arc::new(Arrivals::default());
        let limits = Arc::new(QueueLimits::new(
            config.max_queue_requests.unwrap_or(server.limits.max_queue_requests),
            config.max_queue_bytes.unwrap_or(server.limits.max_queue_bytes),
        ));
        let batcher = Batcher::start(layer.clone(), policy.clone(), config.instances, arrivals.clone(), metrics.clone(), labels.clone())?;
        Ok(Model {
            name: name.to_string(),
            version,
            layer,
            inputs,
            outputs,
            input_dims,
            output_dims,
            batch_sizes,
            any_batch,
            policy,
            config: config.clone(),
            labels,
            arrivals,
            limits,
            unbatched_because,
            metrics,
            batcher,
        })
    }

    /// How the model's requests run, for the start-up line: `dynamic batching (...)`, or
    /// `unbatched: WHY`.
    pub fn batching_summary(&self) -> String {
        match &self.unbatched_because {
            None => format!("dynamic batching (up to {} rows, waiting up to {} µs)", self.policy.max_rows, self.config.max_queue_delay_us),
            Some(why) => format!("unbatched: {why}"),
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The layer serving it.
    pub fn layer(&self) -> &Arc<FlaxLayer> {
        &self.layer
    }

    /// The input leaves, in flatten order.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The output leaves, in flatten order.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Whether concurrent requests are merged into one call.
    pub fn merges(&self) -> bool {
        self.policy.merge
    }

    /// The labels of its metrics.
    pub(crate) fn labels(&self) -> &ModelLabels {
        &self.labels
    }

    /// The index of the output named `name`.
    pub fn output_index(&self, name: &str) -> Result<usize, ApiError> {
        self.outputs.iter().position(|o| o.name == name).ok_or_else(|| ApiError::UnknownTensor { kind: "output", name: name.to_string(), available: names(&self.outputs) })
    }

    /// Checks named input tensors against the model: every input given once and nothing
    /// else, each with the input's dtype, rank and dimensions after the batch axis, all with
    /// one batch size that the model accepts. Returns them in flatten order, with that size.
    pub fn check_inputs(&self, given: Vec<(String, Tensor)>) -> Result<(Vec<Tensor>, usize), ApiError> {
        let mut seen = HashSet::new();
        for (name, _) in &given {
            if !self.inputs.iter().any(|s| &s.name == name) {
                return Err(ApiError::UnknownTensor { kind: "input", name: name.clone(), available: names(&self.inputs) });
            }
            if !seen.insert(name.clone()) {
                return Err(ApiError::malformed(format!("input {name:?} is given twice")));
            }
        }
        let mut given = given;
        let mut ordered = Vec::with_capacity(self.inputs.len());
        let mut rows: Option<(usize, &str)> = None;
        for (spec, dims) in self.inputs.iter().zip(&self.input_dims) {
            let at = given.iter().position(|(n, _)| n == &spec.name).ok_or_else(|| ApiError::MissingInput { name: spec.name.clone(), available: names(&self.inputs) })?;
            let (_, t) = given.swap_remove(at);
            let what = format!("input {:?}", spec.name);
            if t.dtype() != spec.dtype {
                return Err(ApiError::invalid_tensor(what, format!("datatype {}", datatype::name(spec.dtype)), datatype::name(t.dtype())));
            }
            let shape = t.shape();
            let fits = shape.len() == spec.shape.len() && shape.iter().zip(dims).skip(1).all(|(&s, &d)| d < 0 || s as i64 == d);
            if !fits || shape.is_empty() {
                return Err(ApiError::invalid_tensor(what, format!("shape {}", self.describe_shape(dims)), format!("{shape:?}")));
            }
            match rows {
                Some((r, other)) if r != shape[0] => {
                    return Err(ApiError::invalid_tensor(what, format!("batch size {r} like input {other:?}"), format!("{}", shape[0])));
                }
                _ => rows = Some((shape[0], &spec.name)),
            }
            ordered.push(t);
        }
        let n = rows.map_or(0, |(r, _)| r);
        let accepted = if self.any_batch { n >= 1 } else { self.batch_sizes.contains(&n) || (self.batch_sizes.is_empty() && self.input_dims.first().is_some_and(|d| dims_fixed(d, n))) };
        if !accepted {
            let first = self.inputs.first().map_or("", |s| s.name.as_str());
            return Err(ApiError::invalid_tensor(format!("input {first:?}"), format!("a batch size in {}", self.describe_batch()), n.to_string()));
        }
        Ok((ordered, n))
    }

    fn describe_batch(&self) -> String {
        if self.any_batch {
            "1, 2, 3, ... (any)".to_string()
        } else {
            format!("{:?} (the exported sizes; the bundle is not marked paddable)", self.batch_sizes)
        }
    }

    fn describe_shape(&self, dims: &[i64]) -> String {
        let shown: Vec<String> = dims.iter().enumerate().map(|(i, &d)| if i == 0 { "N".to_string() } else { d.to_string() }).collect();
        format!("[{}] with N in {}", shown.join(", "), self.describe_batch())
    }

    /// Admits a request to the model's queue, before its body is read or decoded: refused
    /// with [`ApiError::Overloaded`] (503, `Retry-After`) when the model already holds its
    /// limit of requests. Batches forming meanwhile wait for it (until it is queued or
    /// refused). `deadline`: when the answer stops being wanted.
    pub fn admit(&self, deadline: Option<Deadline>) -> Result<Ticket, ApiError> {
        let admission = self.limits.admit().map_err(|full| self.overloaded(full.0))?;
        Ok(Ticket { admission, arriving: self.arrivals.arrive(), deadline })
    }

    fn overloaded(&self, reason: String) -> ApiError {
        self.metrics.shed.get_or_create(&self.labels).inc();
        ApiError::Overloaded { model: self.name.clone(), reason, retry_after_s: 1 }
    }

    /// Adds a request's input bytes (as declared, checked against the model's signature by
    /// [`Model::check_declared`]) to the admitted bytes, before they are allocated: refused
    /// with 503 when the queue holds too many bytes now, with 413 when the request alone is
    /// more than the queue ever holds.
    pub fn reserve(&self, ticket: &mut Ticket, bytes: usize) -> Result<(), ApiError> {
        let (_, max) = self.queue_limits();
        if bytes > max {
            return Err(ApiError::invalid_tensor(
                "the request's inputs",
                format!("at most {max} bytes in all (the model's queue limit, --max-queue-bytes)"),
                format!("{bytes} bytes declared"),
            ));
        }
        ticket.admission.add_bytes(bytes).map_err(|full| self.overloaded(full.0))
    }

    /// The model's queue limits: requests and bytes admitted at once.
    pub fn queue_limits(&self) -> (usize, usize) {
        self.limits.max()
    }

    /// The requests and bytes admitted now (queued or running).
    pub fn queue_in_use(&self) -> (usize, usize) {
        self.limits.in_use()
    }

    /// Checks an input as a client declares it (name, datatype, shape), before anything is
    /// allocated for it: a known input, its dtype, its rank and the dimensions after the batch
    /// axis, a batch size the model accepts. Returns the shape and its size in bytes
    /// (computed with checked arithmetic).
    pub fn check_declared(&self, name: &str, dtype: DType, shape: &[u64]) -> Result<(Vec<usize>, usize), ApiError> {
        let i = self.inputs.iter().position(|s| s.name == name).ok_or_else(|| ApiError::UnknownTensor { kind: "input", name: name.to_string(), available: names(&self.inputs) })?;
        let (spec, dims) = (&self.inputs[i], &self.input_dims[i]);
        let what = format!("input {name:?}");
        if dtype != spec.dtype {
            return Err(ApiError::invalid_tensor(what, format!("datatype {}", datatype::name(spec.dtype)), datatype::name(dtype)));
        }
        let wrong = || ApiError::invalid_tensor(&what, format!("shape {}", self.describe_shape(dims)), format!("{shape:?}"));
        if shape.is_empty() || shape.len() != dims.len() {
            return Err(wrong());
        }
        let shape: Vec<usize> = shape.iter().map(|&d| usize::try_from(d)).collect::<std::result::Result<_, _>>().map_err(|_| wrong())?;
        if !shape.iter().zip(dims).skip(1).all(|(&s, &d)| d < 0 || i64::try_from(s).is_ok_and(|s| s == d)) {
            return Err(wrong());
        }
        let n = shape[0];
        let accepted = if self.any_batch { n >= 1 } else { self.batch_sizes.contains(&n) || (self.batch_sizes.is_empty() && dims_fixed(dims, n)) };
        if !accepted {
            return Err(ApiError::invalid_tensor(what, format!("a batch size in {}", self.describe_batch()), n.to_string()));
        }
        let bytes = shape
            .iter()
            .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ApiError::invalid_tensor(&what, "a shape whose size in bytes fits in 64 bits", format!("{shape:?}")))?;
        Ok((shape, bytes))
    }

    /// Runs checked inputs through the batcher; the outputs in flatten order. The ticket's
    /// arriving mark ends once the job is queued; its admission once the job is answered or
    /// dropped. Past the ticket's deadline the answer is [`ApiError::DeadlineExceeded`] and the
    /// job, if still queued, is dropped.
    pub async fn infer(&self, ticket: Ticket, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, ApiError> {
        let Ticket { admission, arriving, deadline } = ticket;
        if let Some(d) = deadline.filter(|d| Instant::now() >= d.at) {
            return Err(d.exceeded());
        }
        let (reply, rx) = oneshot::channel();
        let job = Job { inputs, rows, enqueued: Instant::now(), deadline: deadline.map(|d| d.at), reply, admission };
        if self.batcher.submit(job) {
            arriving.queued();
        } else {
            return Err(ApiError::Unavailable { reason: format!("the workers of model {:?} have stopped", self.name) });
        }
        let answer = match deadline {
            Some(d) => match tokio::time::timeout_at(d.at.into(), rx).await {
                Ok(a) => a,
                Err(_) => return Err(d.exceeded()),
            },
            None => rx.await,
        };
        match answer {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(ApiError::Inference(e)),
            Err(_) => match deadline {
                // Dropped unrun: its deadline passed in the queue.
                Some(d) if Instant::now() >= d.at => Err(d.exceeded()),
                _ => Err(ApiError::Unavailable { reason: format!("the workers of model {:?} stopped before answering", self.name) }),
            },
        }
    }

    /// The KServe v2 model metadata, with the versions served listed.
    pub fn metadata(&self, versions: &[u64]) -> Value {
        let tensors = |specs: &[TensorSpec], dims: &[Vec<i64>]| -> Vec<Value> {
            specs.iter().zip(dims).map(|(s, d)| json!({"name": s.name, "datatype": datatype::name(s.dtype), "shape": d})).collect()
        };
        json!({
            "name": self.name,
            "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
            "platform": "jax_stablehlo",
            "inputs": tensors(&self.inputs, &self.input_dims),
            "outputs": tensors(&self.outputs, &self.output_dims),
            "parameters": {
                "method": self.layer.method(),
                "batch_sizes": self.batch_sizes,
                "any_batch_size": self.any_batch,
                "dynamic_batching": self.policy.merge,
                "batching": self.batching_summary(),
                "max_queue_requests": self.limits.max().0,
                "max_queue_bytes": self.limits.max().1,
                "max_batch_size": self.policy.max_rows,
                "max_queue_delay_us": self.config.max_queue_delay_us,
                "instances": self.config.instances,
            }
        })
    }
}

/// Whether the model's fixed leading dimension is `n` (bundles without batch sizes).
fn dims_fixed(dims: &[i64], n: usize) -> bool {
    dims.first().is_some_and(|&d| d < 0 || d as usize == n)
}

/// Metadata shapes for the leaves of every exported size: a dimension that differs between
/// sizes is `-1`, and so is the leading one of leaf `i` when `any(i)`.
fn dims(per_size: &[Vec<TensorSpec>], any: impl Fn(usize) -> bool) -> Vec<Vec<i64>> {
    let Some(first) = per_size.first() else { return Vec::new() };
    first
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            spec.shape
                .iter()
                .enumerate()
                .map(|(d, &n)| {
                    let varies = per_size.iter().any(|s| s.get(i).and_then(|t| t.shape.get(d)) != Some(&n));
                    if varies || (d == 0 && any(i)) {
                        -1
                    } else {
                        n as i64
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs every exported computation on zeros, so that each is compiled (or loaded from the
/// compile cache) before the first request; returns each batch size with the least time of
/// its calls after the first, in seconds.
fn warm_up(layer: &FlaxLayer, per_size: &[Vec<TensorSpec>]) -> Result<Vec<(usize, f64)>> {
    const TIMED_CALLS: usize = 3;
    let mut costs = Vec::with_capacity(per_size.len());
    for specs in per_size {
        let zeros = specs.iter().map(|s| Tensor::zeros(s.dtype, s.shape.clone())).collect::<Result<Vec<_>>>()?;
        let tree = layer.input_tree().unflatten(zeros)?;
        layer.predict(&tree)?;
        let mut least = f64::INFINITY;
        for _ in 0..TIMED_CALLS {
            let t = Instant::now();
            layer.predict(&tree)?;
            least = least.min(t.elapsed().as_secs_f64());
        }
        if let Some(rows) = specs.first().and_then(|s| s.shape.first()) {
            costs.push((*rows, least));
        }
    }
    Ok(costs)
}

/// Call costs when nothing was timed: a call's overhead as much as ten rows, plus its rows.
fn guessed_costs(per_size: &[Vec<TensorSpec>]) -> Vec<(usize, f64)> {
    per_size.iter().filter_map(|specs| specs.first()?.shape.first().map(|&b| (b, 10.0 + b as f64))).collect()
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn dims_mark_what_varies() {
        let at = |b: usize| vec![TensorSpec::new("x", DType::F32, vec![b, 64]), TensorSpec::new("s", DType::F32, vec![])];
        assert_eq!(dims(&[at(1), at(8)], |_| false), vec![vec![-1, 64], vec![]]);
        assert_eq!(dims(&[at(4)], |_| false), vec![vec![4, 64], vec![]]);
        assert_eq!(dims(&[at(4)], |i| i == 0), vec![vec![-1, 64], vec![]]);
    }
}
