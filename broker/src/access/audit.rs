//! The audit log: one JSON line per refused request and per ACL change (time, event, user,
//! method, peer address, detail), appended to a file by a task of its own. Writing never
//! holds a request up: past a bounded queue, lines are dropped and counted. The file is
//! rotated at [`MAX_FILE_BYTES`] (one previous file kept, `.1`), so a flood of refused
//! requests cannot fill the disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 4096;
/// Size at which the log is rotated.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Clone, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
}

async fn append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// The one owner of the file: writes, and rotates past `max_bytes`.
struct Writer {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    max_bytes: u64,
}

impl Writer {
    async fn rotate(&mut self) {
        let _ = self.file.flush().await;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let reopened = match tokio::fs::rename(&self.path, &old).await {
            Ok(()) => append(&self.path).await,
            Err(e) => Err(e),
        };
        match reopened {
            Ok(f) => {
                self.file = f;
                self.size = 0;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "audit log rotation failed: {e}")
            }
        }
    }

    async fn write(&mut self, buf: &[u8]) {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate().await;
        }
        match self.file.write_all(buf).await {
            Ok(()) => self.size += buf.len() as u64,
            Err(e) => tracing::error!(path = %self.path.display(), "audit log write failed: {e}"),
        }
    }
}

impl Audit {
    /// No audit log.
    pub fn off() -> Audit {
        Audit::default()
    }

    /// Appends to `path` (created if missing) until every `Audit` clone is dropped.
    pub async fn open(path: &Path) -> std::io::Result<(Audit, tokio::task::JoinHandle<()>)> {
        Self::open_rotating(path, MAX_FILE_BYTES).await
    }

    /// [`Self::open`], rotating at `max_bytes`.
    pub async fn open_rotating(
        path: &Path,
        max_bytes: u64,
    ) -> std::io::Result<(Audit, tokio::task::JoinHandle<()>)> {
        let named = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
        };
        let file = append(path).await.map_err(named)?;
        let size = file.metadata().await.map_err(named)?.len();
        let mut writer = Writer {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        // Batches stay well below the rotation size, so a file ends close to it.
        let batch = (max_bytes / 4).clamp(1, 64 << 10) as usize;
        let task = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut buf = line.into_bytes();
                // More of what is queued goes in the same write.
                while buf.len() < batch {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(more.as_bytes()),
                        Err(_) => break,
                    }
                }
                writer.write(&buf).await;
            }
            let _ = writer.file.flush().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_is_rotated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, task) = Audit::open_rotating(&path, 2_000).await.unwrap();
        for i in 0..100 {
            audit.refusal("mallory", "/m", None, &format!("refusal {i}"));
        }
        drop(audit);
        task.await.unwrap();
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("audit.log.1"))
            .unwrap()
            .len();
        // A batch is at most a quarter of the limit plus one line.
        assert!(
            now <= 2_700 && (1_000..=2_700).contains(&old),
            "{now} {old}"
        );
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("refusal 99"), "{last}");
        let line: serde_json::Value = serde_json::from_str(last.lines().next().unwrap()).unwrap();
        assert_eq!(line["event"], "refused");
        assert_eq!(line["user"], "mallory");
    }
}
