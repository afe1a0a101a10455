//! The broker-level role of a replica. Raft's leader becomes the group's *master* only once it
//! has applied everything up to its last index (the core's `master_ready`) and the store has
//! dispatched it (consume queues and index caught up), so the master serves the group from
//! where the old one stopped. It stops being master the moment Raft leadership goes.

use tokio::sync::watch;

use super::status::{Role, RoleState};
use crate::store::MessageStore;

/// What the broker announces: MASTER or SLAVE, with the Raft term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MasterState {
    pub is_master: bool,
    pub term: u64,
    /// The Raft leader this replica knows of (itself when master), if any.
    pub leader_id: Option<u64>,
}

/// Publishes the master state derived from Raft's role changes until the replica stops.
pub async fn run_gate(
    mut raft: watch::Receiver<RoleState>,
    store: MessageStore,
    tx: watch::Sender<MasterState>,
) {
    loop {
        let rs = raft.borrow_and_update().clone();
        let ready = rs.role == Role::Leader && rs.master_ready;
        let current = *tx.borrow();
        // A new term counts as a new mastership even if the in-between states were missed.
        if ready && !(current.is_master && current.term == rs.term) {
            if current.is_master {
                tx.send_modify(|s| s.is_master = false);
            }
            // Dispatch everything applied so far before taking writes.
            let target = store.confirmed_offset();
            let mut dispatched = store.subscribe_dispatched();
            tokio::select! {
                r = dispatched.wait_for(|&d| d >= target) => {
                    if r.is_err() {
                        break;
                    }
                }
                r = raft.changed() => {
                    if r.is_err() {
                        break;
                    }
                    // Re-evaluate with the new role.
                    continue;
                }
            }
            tracing::info!(
                term = rs.term,
                "this replica is now the master of its group"
            );
        } else if !ready && current.is_master {
            tracing::warn!(role = ?rs.role, term = rs.term, leader = ?rs.leader_id, "this replica is no longer the master");
        }
        let state = MasterState {
            is_master: ready,
            term: rs.term,
            leader_id: rs.leader_id,
        };
        tx.send_if_modified(|cur| {
            let changed = *cur != state;
            *cur = state;
            changed
        });
        if raft.changed().await.is_err() {
            break;
        }
    }
    // The replica stopped: never claim mastership again.
    tx.send_modify(|s| s.is_master = false);
}
