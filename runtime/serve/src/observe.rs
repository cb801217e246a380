//! What a host shows to its operator over HTTP: `/metrics` (Prometheus text format through the
//! `prometheus-client` crate: per kernel requests, errors, denials, shed messages, in flight,
//! latency histogram, instances created; the instance pool's size), `/healthz` (the process
//! answers) and `/readyz` (every kernel it serves is connected and answering).

use std::net::SocketAddr;
use std::sync::Arc;

use ck_bus::metrics::{ServeMetrics, latency_buckets};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{Kinded, ServeError, ServeErrorKind};
use crate::host::{Health, Host};

/// The label every per-kernel metric carries.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KernelLabel {
    kernel: String,
}

type HistogramFamily = Family<KernelLabel, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The host's metrics: one registry, a family per metric, a member per kernel.
pub(crate) struct HostMetrics {
    registry: Registry,
    requests: Family<KernelLabel, Counter>,
    errors: Family<KernelLabel, Counter>,
    denials: Family<KernelLabel, Counter>,
    shed: Family<KernelLabel, Counter>,
    in_flight: Family<KernelLabel, Gauge>,
    latency: HistogramFamily,
    instances: Family<KernelLabel, Gauge>,
}

impl HostMetrics {
    pub(crate) fn new(max_instances: u32) -> Self {
        let mut registry = Registry::with_prefix("ck");
        let requests = Family::<KernelLabel, Counter>::default();
        let errors = Family::<KernelLabel, Counter>::default();
        let denials = Family::<KernelLabel, Counter>::default();
        let shed = Family::<KernelLabel, Counter>::default();
        let in_flight = Family::<KernelLabel, Gauge>::default();
        let latency: HistogramFamily = Family::new_with_constructor(new_histogram);
        let instances = Family::<KernelLabel, Gauge>::default();
        let pool: Gauge = Gauge::default();
        registry.register("requests", "Messages taken per kernel", requests.clone());
        registry.register("errors", "Error answers per kernel", errors.clone());
        registry.register(
            "denials",
            "Answers 401/403 and refused reply subjects per kernel",
            denials.clone(),
        );
        registry.register(
            "shed",
            "Messages answered 503 overloaded (max_in_flight reached) per kernel",
            shed.clone(),
        );
        registry.register(
            "in_flight",
            "Messages being handled per kernel",
            in_flight.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Delivery to answer per kernel",
            latency.clone(),
        );
        registry.register(
            "instances_created",
            "Guest instances created per kernel (served versions)",
            instances.clone(),
        );
        registry.register(
            "instance_pool_slots",
            "Instances that may exist at once across the host's kernels",
            pool.clone(),
        );
        pool.set(i64::from(max_instances));
        Self {
            registry,
            requests,
            errors,
            denials,
            shed,
            in_flight,
            latency,
            instances,
        }
    }

    /// The serving loop's handles for kernel `name`.
    pub(crate) fn for_kernel(&self, name: &str) -> Arc<ServeMetrics> {
        let label = KernelLabel {
            kernel: name.to_owned(),
        };
        Arc::new(ServeMetrics {
            requests: self.requests.get_or_create(&label).clone(),
            errors: self.errors.get_or_create(&label).clone(),
            denials: self.denials.get_or_create(&label).clone(),
            shed: self.shed.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
        })
    }

    fn render(&self, instances: &[(String, u64)]) -> String {
        for (kernel, created) in instances {
            self.instances
                .get_or_create(&KernelLabel {
                    kernel: kernel.clone(),
                })
                .set(i64::try_from(*created).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics.encode-failed");
        }
        text
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn route(host: &Host, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            let report = host.report().await;
            let instances: Vec<(String, u64)> = report
                .iter()
                .map(|k| (k.name.clone(), k.stats.instances))
                .collect();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                host.metrics().render(&instances),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let report = host.report().await;
            let ready = !report.is_empty()
                && !host.is_stopping()
                && report
                    .iter()
                    .all(|k| matches!(k.health, Health::Serving | Health::Degraded));
            let body = serde_json::json!({
                "ready": ready,
                "kernels": report.iter().map(|k| serde_json::json!({"kernel": k.name, "health": k.health})).collect::<Vec<_>>(),
            });
            reply(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                format!("{body}\n"),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` of `host` on `addr` until the host stops.
/// Returns once listening, with the address bound (port 0 picks one).
pub async fn serve_http(host: Arc<Host>, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .kinded(ServeErrorKind::Engine, || {
            format!("listening on {addr} for /metrics")
        })?;
    let bound = listener
        .local_addr()
        .kinded(ServeErrorKind::Engine, || format!("listening on {addr}"))?;
    tracing::info!(addr = %bound, "http.listening");
    let stop = host.stopping();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "http.accept-failed");
                        continue;
                    }
                },
            };
            let host = host.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let host = host.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            Ok::<_, std::convert::Infallible>(route(&host, &path).await)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}
