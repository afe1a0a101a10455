//! The HTTP listener of `metrics_listen`: `GET /metrics` in Prometheus text exposition.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
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

/// Serves until `stop` turns true.
pub async fn serve(listener: TcpListener, render: Render, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(render);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}
