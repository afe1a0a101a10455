//! Runs a [`ReplicaNode`] on its own thread, fed through a bounded mailbox. A dedicated thread
//! (not a tokio task) because the Ready loop blocks on fsync; handles are usable from async
//! code and never block.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::command::{Command, NodeError};
use super::io::{Applier, Transport};
use super::log_store::RaftLogStore;
use super::node::ReplicaNode;
use super::proposals::{EntryId, ProposeError};
use super::status::ReplicaStatus;

/// Commands handled before one Ready is processed: batches proposals into one fsync.
const MAX_BATCH: usize = 256;

/// What travels through a mailbox.
enum Input {
    Cmd(Command),
    Stop,
}

/// The receiving end of a replica's mailbox; give it to [`ReplicaNode::spawn`].
pub struct Mailbox(Receiver<Input>);

/// Creates a mailbox holding up to `capacity` commands, and the handle that feeds it. The
/// handle can exist before the node does (transports need peers' handles to be built).
pub fn mailbox(capacity: usize) -> (ReplicaHandle, Mailbox) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    (ReplicaHandle { tx }, Mailbox(rx))
}

/// Feeds a running replica. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaHandle {
    tx: SyncSender<Input>,
}

impl ReplicaHandle {
    /// Delivers an encoded Raft message that came in a batch from peer `from` (a message
    /// claiming another sender is refused). Never blocks: when the mailbox is full
    /// the message is dropped (Raft retransmits) and `false` is returned.
    pub fn deliver(&self, from: u64, bytes: Bytes) -> bool {
        self.tx
            .try_send(Input::Cmd(Command::Message { from, bytes }))
            .is_ok()
    }

    /// Proposes `data` and waits for the acknowledgement.
    pub async fn propose(&self, data: Bytes) -> Result<EntryId, ProposeError> {
        self.propose_in_term(data, None).await
    }

    /// [`Self::propose`], refused (`TermOver`) unless the Raft term is `term` when given.
    pub async fn propose_in_term(
        &self,
        data: Bytes,
        term: Option<u64>,
    ) -> Result<EntryId, ProposeError> {
        let (done, rx) = oneshot::channel();
        match self
            .tx
            .try_send(Input::Cmd(Command::Propose { data, term, done }))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ProposeError::Dropped("replica mailbox is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ProposeError::Stopped("replica is shut down".into()))
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(ProposeError::Stopped("replica is shut down".into())))
    }

    /// Reads the replica's status.
    pub async fn status(&self) -> Result<ReplicaStatus, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status(reply))?;
        rx.await.map_err(|_| stopped())
    }

    /// Discards the log before `index` (which must be applied).
    pub async fn compact(&self, index: u64) -> Result<(), NodeError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Compact { index, done })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops the replica thread after the commands already queued (the thread returns the
    /// node). Peers' transports usually hold handles too, so dropping handles is not enough.
    pub fn shutdown(&self) {
        // Blocks only while the mailbox is full, which the replica thread drains.
        let _ = self.tx.send(Input::Stop);
    }

    fn send(&self, cmd: Command) -> Result<(), NodeError> {
        self.tx.try_send(Input::Cmd(cmd)).map_err(|e| match e {
            TrySendError::Full(_) => NodeError::Failed("replica mailbox is full".into()),
            TrySendError::Disconnected(_) => stopped(),
        })
    }
}

fn stopped() -> NodeError {
    NodeError::Failed("replica is shut down".into())
}

impl<S, T, A> ReplicaNode<S, T, A>
where
    S: RaftLogStore + Send + 'static,
    T: Transport + Send + 'static,
    A: Applier + Send + 'static,
{
    /// Runs the replica on a new thread until [`ReplicaHandle::shutdown`] or until every
    /// handle is dropped; the thread then returns the node.
    pub fn spawn(self, mailbox: Mailbox) -> std::io::Result<JoinHandle<Self>> {
        std::thread::Builder::new()
            .name(format!("raft-{}", self.id()))
            .spawn(move || self.run(mailbox.0))
    }

    fn run(mut self, rx: Receiver<Input>) -> Self {
        let interval = self.tick_interval();
        let mut next_tick = Instant::now() + interval;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = match rx.recv_timeout(wait) {
                Ok(Input::Cmd(cmd)) => {
                    self.handle(cmd);
                    false
                }
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            for _ in 0..MAX_BATCH {
                if stop {
                    break;
                }
                match rx.try_recv() {
                    Ok(Input::Cmd(cmd)) => self.handle(cmd),
                    Ok(Input::Stop) | Err(TryRecvError::Disconnected) => stop = true,
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if !stop && now >= next_tick {
                self.tick();
                next_tick += interval;
                if next_tick <= now {
                    // Fell behind (a long fsync): skip missed ticks rather than bursting them.
                    next_tick = now + interval;
                }
            }
            self.process_ready();
            if stop {
                return self;
            }
        }
    }
}
