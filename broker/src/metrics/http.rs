//! The HTTP listener of `metrics_listen`: `GET /metrics` in Prometheus text exposition, over
//! HTTPS when the broker has TLS.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use sluice_proto::tls::http::HttpListener;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Produces the exposition (async: it reads the broker's status first).
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

async fn metrics(State(render): State<Render>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render().await,
    )
}

/// Serves until `stop` turns true (over TLS with `tls`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    render: Render,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(render);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let listener = match HttpListener::new(listener, tls) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener failed");
            return;
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}
