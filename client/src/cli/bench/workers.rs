//! Every benchmark producer and consumer runs on a thread of its own with a single-threaded
//! runtime, as separate client processes would: a client's wake-ups never cross threads and no
//! worker waits for another's scheduler. The main task sets them up, then opens a gate so
//! that all start together.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What the workers wait for before they start measuring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    Closed,
    /// Start now; stop sending at the deadline, if there is one.
    Open {
        start: Instant,
        deadline: Option<Instant>,
    },
    /// Setup failed somewhere: give up.
    Abort,
}

/// Waits until the gate opens; `Err` if the run was aborted.
pub async fn wait_open(
    gate: &mut watch::Receiver<Gate>,
) -> anyhow::Result<(Instant, Option<Instant>)> {
    let g = *gate
        .wait_for(|g| *g != Gate::Closed)
        .await
        .map_err(|_| anyhow!("the benchmark ended before it started"))?;
    match g {
        Gate::Open { start, deadline } => Ok((start, deadline)),
        _ => Err(anyhow!("the benchmark was aborted")),
    }
}

/// A worker's setup outcome: Ok once it is ready to start, or why it could not get ready.
pub type Ready = Result<(), String>;

/// The result of a worker thread.
pub struct Worker<T> {
    result: oneshot::Receiver<anyhow::Result<T>>,
}

impl<T> Worker<T> {
    pub async fn join(self) -> anyhow::Result<T> {
        self.result
            .await
            .map_err(|_| anyhow!("a benchmark worker thread panicked"))?
    }
}

/// Runs the future `work` builds on a new thread with its own runtime.
pub fn spawn<F, Fut, T>(name: String, work: F) -> anyhow::Result<Worker<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(work()),
                Err(e) => Err(anyhow!("cannot start a runtime: {e}")),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| anyhow!("cannot start a worker thread: {e}"))?;
    Ok(Worker { result: rx })
}

/// Waits (bounded) for `n` workers to report ready; the first failure ends the wait.
pub async fn all_ready(
    ready: &mut mpsc::UnboundedReceiver<Ready>,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(anyhow!(e)),
            Ok(None) => return Err(anyhow!("a benchmark worker stopped during setup")),
            Err(_) => return Err(anyhow!("benchmark workers not ready after {limit:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_start_together_and_report_results() {
        let (gate_tx, gate) = watch::channel(Gate::Closed);
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let mut workers = Vec::new();
        for i in 0..3u64 {
            let mut gate = gate.clone();
            let ready_tx = ready_tx.clone();
            workers.push(
                spawn(format!("w{i}"), move || async move {
                    let _ = ready_tx.send(Ok(()));
                    let (start, _) = wait_open(&mut gate).await?;
                    Ok((i, start))
                })
                .unwrap(),
            );
        }
        all_ready(&mut ready, 3, Duration::from_secs(10))
            .await
            .unwrap();
        let start = Instant::now();
        gate_tx
            .send(Gate::Open {
                start,
                deadline: None,
            })
            .unwrap();
        for (i, w) in workers.into_iter().enumerate() {
            assert_eq!(w.join().await.unwrap(), (i as u64, start));
        }

        // A failed setup ends the wait with its reason; an abort releases the others.
        let (gate_tx, gate) = watch::channel(Gate::Closed);
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let failing = ready_tx.clone();
        let bad = spawn("bad".into(), move || async move {
            let _ = failing.send(Err("no route".to_string()));
            anyhow::Ok(())
        })
        .unwrap();
        let mut g = gate.clone();
        let waiting = spawn(
            "waiting".into(),
            move || async move { wait_open(&mut g).await },
        )
        .unwrap();
        let err = all_ready(&mut ready, 2, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no route");
        gate_tx.send(Gate::Abort).unwrap();
        assert!(waiting.join().await.is_err());
        bad.join().await.unwrap();
        drop(ready_tx);
    }
}
