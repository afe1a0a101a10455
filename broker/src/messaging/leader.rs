//! Leader-only tasks: work only the master does (timer delivery now; transaction check-back
//! and redelivery later). A task starts when this broker becomes master (for a replica
//! group: once it has applied and dispatched its whole log, so it resumes from replicated
//! progress, never from memory), and is told to stop when it is deposed; a new mastership
//! (a later term) starts a fresh run only after the previous one has ended.

use std::future::Future;

use tokio::sync::watch;

use crate::replication::MasterState;

/// Runs `task` once per mastership until `shutdown`. The task gets a receiver that turns true
/// when it must stop, and must return soon after.
pub fn spawn<F, Fut>(
    name: &'static str,
    mut master: watch::Receiver<MasterState>,
    mut shutdown: watch::Receiver<bool>,
    task: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            // Wait for a mastership (or the end).
            let term = loop {
                if *shutdown.borrow() {
                    return;
                }
                let m = *master.borrow_and_update();
                if m.is_master {
                    break m.term;
                }
                tokio::select! {
                    r = master.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => {}
                }
            };
            tracing::info!(task = name, term, "leader task starting");
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut run = tokio::spawn(task(stop_rx));
            // Until deposed, a new term, shutdown, or the task ends on its own.
            let ended = loop {
                tokio::select! {
                    r = master.changed() => {
                        let m = *master.borrow_and_update();
                        if r.is_err() || !m.is_master || m.term != term {
                            break false;
                        }
                    }
                    _ = shutdown.changed() => break false,
                    _ = &mut run => break true,
                }
            };
            if !ended {
                let _ = stop_tx.send(true);
                if let Err(e) = run.await {
                    tracing::error!(task = name, error = %e, "leader task panicked");
                }
            }
            tracing::info!(task = name, term, "leader task stopped");
            if ended {
                // It ended on its own (an error it could not get past): wait for the next
                // mastership change rather than spin.
                tokio::select! {
                    r = master.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => {}
                }
            }
        }
    })
}

/// A master state that never changes (a standalone broker is always its own master); keep
/// the sender for as long as the tasks run.
pub fn always_master() -> watch::Sender<MasterState> {
    watch::channel(MasterState {
        is_master: true,
        term: 1,
        leader_id: None,
    })
    .0
}
