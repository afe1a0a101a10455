//! Prometheus metrics of a nameserver (`metrics_listen`, `GET /metrics`): registrations, routes
//! served and refused, expiries, and the registry's size when scraped.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;
use tokio::net::TcpListener;

use crate::service::SharedRegistry;

pub struct NsMetrics {
    metrics: Metrics,
    pub registrations: Counter,
    pub routes_served: Counter,
    pub routes_refused: Counter,
    pub expiries: Counter,
    replicas: Gauge,
    topics: Gauge,
}

impl Default for NsMetrics {
    fn default() -> Self {
        let m = NsMetrics {
            metrics: Metrics::default(),
            registrations: Counter::default(),
            routes_served: Counter::default(),
            routes_refused: Counter::default(),
            expiries: Counter::default(),
            replicas: Gauge::default(),
            topics: Gauge::default(),
        };
        let mut r = Metrics::with_prefix("sluice_nameserver");
        r.register(
            "registrations",
            "Broker registrations and heartbeats accepted",
            m.registrations.clone(),
        );
        r.register(
            "routes_served",
            "Topic routes answered",
            m.routes_served.clone(),
        );
        r.register(
            "routes_refused",
            "Route requests for topics no broker hosts",
            m.routes_refused.clone(),
        );
        r.register(
            "broker_expiries",
            "Brokers dropped after going silent",
            m.expiries.clone(),
        );
        r.register(
            "brokers",
            "Broker replicas registered now",
            m.replicas.clone(),
        );
        r.register(
            "topics",
            "Topics some registered broker hosts",
            m.topics.clone(),
        );
        NsMetrics { metrics: r, ..m }
    }
}

impl NsMetrics {
    /// The exposition, with the registry's size read now.
    pub fn render(&self, registry: &SharedRegistry) -> String {
        let (replicas, topics) = {
            let r = registry.read();
            (r.replica_count(), r.list_topics().len())
        };
        self.replicas
            .set(i64::try_from(replicas).unwrap_or(i64::MAX));
        self.topics.set(i64::try_from(topics).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.metrics) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

type Shared = (Arc<NsMetrics>, SharedRegistry);

async fn scrape(State((metrics, registry)): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(&registry),
    )
}

/// Serves `GET /metrics` (over TLS with `tls`) until the task is dropped or aborted.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<NsMetrics>,
    registry: SharedRegistry,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, registry));
    let listener = match sluice_proto::tls::http::HttpListener::new(listener, tls) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener failed");
            return;
        }
    };
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}
