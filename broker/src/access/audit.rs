//! The audit log: one JSON line per refused request and per ACL change (time, event, user,
//! method, peer address, detail), appended to a file by a task of its own. Writing never
//! holds a request up: past a bounded queue, lines are dropped and counted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 4096;

#[derive(Clone, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// No audit log.
    pub fn off() -> Audit {
        Audit::default()
    }

    /// Appends to `path` (created if missing) until every `Audit` clone is dropped.
    pub async fn open(path: &Path) -> std::io::Result<(Audit, tokio::task::JoinHandle<()>)> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
            })?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let shown = path.display().to_string();
        let task = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut buf = line.into_bytes();
                // Whatever else is queued goes in the same write.
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(more.as_bytes());
                }
                if let Err(e) = file.write_all(&buf).await {
                    tracing::error!(path = %shown, "audit log write failed: {e}");
                }
            }
            let _ = file.flush().await;
        });
        Ok((
            Audit {
                tx: Some(tx),
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        ))
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn write(&self, event: &str, user: &str, method: &str, peer: Option<SocketAddr>, detail: &str) {
        tracing::debug!(target: "sluice::audit", event, user, method, ?peer, detail);
        let Some(tx) = &self.tx else { return };
        let mut line = serde_json::json!({
            "time_ms": crate::store::now_ms(),
            "event": event,
            "user": user,
            "method": method,
            "peer": peer.map(|p| p.to_string()),
            "detail": detail,
        })
        .to_string();
        line.push('\n');
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refusal(&self, user: &str, method: &str, peer: Option<SocketAddr>, detail: &str) {
        self.write("refused", user, method, peer, detail);
    }

    pub fn change(&self, user: &str, method: &str, peer: Option<SocketAddr>, detail: &str) {
        self.write("acl_change", user, method, peer, detail);
    }
}
