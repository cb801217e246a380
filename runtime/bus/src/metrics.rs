//! What the serving loop counts for one kernel (Prometheus metrics through the
//! `prometheus-client` crate: the host registers them per kernel and serves `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets, in seconds: 50 µs to ~3.3 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17)
}

/// One kernel's serving counters (handles into the host's registry).
#[derive(Debug, Clone)]
pub struct ServeMetrics {
    /// Messages taken (answered, refused or shed).
    pub requests: Counter,
    /// Answers that were errors (any code).
    pub errors: Counter,
    /// Answers 401 or 403, and replies refused (a caller not allowed what it asked).
    pub denials: Counter,
    /// Messages answered 503 because `max_in_flight` were being handled already.
    pub shed: Counter,
    /// Messages being handled now.
    pub in_flight: Gauge,
    /// Time from delivery to the answer sent, seconds.
    pub latency: Histogram,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            errors: Counter::default(),
            denials: Counter::default(),
            shed: Counter::default(),
            in_flight: Gauge::default(),
            latency: Histogram::new(latency_buckets()),
        }
    }
}
