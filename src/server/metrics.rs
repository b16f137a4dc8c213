//! Prometheus metrics per model and version: requests, failures, end-to-end and queue time,
//! compute time, and the rows and requests of each batch that ran. Served at `GET /metrics`
//! in the OpenMetrics text format (which Prometheus scrapes).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of a model's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model's name.
    pub model: String,
    /// Its version.
    pub version: String,
}

/// The labels of a failure: the model (empty when the model was not found) and the HTTP
/// status answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The model's name, or empty.
    pub model: String,
    /// Its version, or empty.
    pub version: String,
    /// The HTTP status code.
    pub status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Inference requests received, per model.
    pub requests: Family<ModelLabels, Counter>,
    /// Inference requests answered with an error, per model and status.
    pub failures: Family<FailureLabels, Counter>,
    /// Seconds from a request's arrival to its answer (successful requests).
    pub request_seconds: Histograms<ModelLabels>,
    /// Seconds a request waited in the model's queue before its batch started.
    pub queue_seconds: Histograms<ModelLabels>,
    /// Seconds each batch's call took (inputs up, compute, outputs down).
    pub compute_seconds: Histograms<ModelLabels>,
    /// Rows in each batch that ran.
    pub batch_rows: Histograms<ModelLabels>,
    /// Requests merged into each batch that ran.
    pub batch_requests: Histograms<ModelLabels>,
    /// Queued jobs dropped before they ran, because their client had gone (disconnected, or
    /// its deadline passed).
    pub abandoned: Family<ModelLabels, Counter>,
    /// Requests refused because the model's queue was full (503).
    pub shed: Family<ModelLabels, Counter>,
}

fn seconds() -> Histogram {
    // 10 µs to ~5 s.
    Histogram::new(exponential_buckets(1e-5, 2.5, 15))
}

fn counts() -> Histogram {
    // 1 to 1024.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `flaxlayer` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flaxlayer");
        let requests = Family::<ModelLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let hist = |f: fn() -> Histogram| Histograms::<ModelLabels>::new_with_constructor(f);
        let (request_seconds, queue_seconds, compute_seconds) = (hist(seconds), hist(seconds), hist(seconds));
        let (batch_rows, batch_requests) = (hist(counts), hist(counts));
        registry.register("inference_requests", "Inference requests received", requests.clone());
        registry.register("inference_failures", "Inference requests answered with an error", failures.clone());
        registry.register("request_duration_seconds", "Time from a request's arrival to its answer", request_seconds.clone());
        registry.register("queue_duration_seconds", "Time a request waited before its batch started", queue_seconds.clone());
        registry.register("compute_duration_seconds", "Time of each batch's call, inputs up to outputs down", compute_seconds.clone());
        registry.register("batch_rows", "Rows in each batch that ran", batch_rows.clone());
        registry.register("batch_requests", "Requests merged into each batch that ran", batch_requests.clone());
        let (abandoned, shed) = (Family::<ModelLabels, Counter>::default(), Family::<ModelLabels, Counter>::default());
        registry.register("abandoned_jobs", "Queued jobs dropped unrun because their client had gone", abandoned.clone());
        registry.register("shed_requests", "Requests refused because the model's queue was full", shed.clone());
        Metrics { registry, requests, failures, request_seconds, queue_seconds, compute_seconds, batch_rows, batch_requests, abandoned, shed }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Records a duration in a histogram, in seconds.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_series_per_model() {
        let m = Metrics::new();
        let labels = ModelLabels { model: "mlp".into(), version: "1".into() };
        m.requests.get_or_create(&labels).inc();
        observe(&m.compute_seconds.get_or_create(&labels), Duration::from_micros(30));
        m.batch_rows.get_or_create(&labels).observe(8.0);
        m.failures.get_or_create(&FailureLabels { model: "mlp".into(), version: "1".into(), status: 400 }).inc();
        let text = m.encode();
        assert!(text.contains("flaxlayer_inference_requests_total{model=\"mlp\",version=\"1\"} 1"), "{text}");
        assert!(text.contains("flaxlayer_inference_failures_total{model=\"mlp\",version=\"1\",status=\"400\"} 1"), "{text}");
        assert!(text.contains("flaxlayer_compute_duration_seconds_count{model=\"mlp\",version=\"1\"} 1"), "{text}");
        assert!(text.contains("flaxlayer_batch_rows_sum{model=\"mlp\",version=\"1\"} 8.0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
