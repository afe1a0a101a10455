//! A broker's membership in its replica group: starts the replica (log, applier, transport,
//! Raft thread, master gate) and gives the request handlers what they need: is this broker the
//! master (else where is it), propose a send or a metadata operation, and the group status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use raft::Storage as _;
use sluice_proto::v1::MetaOp;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::watch;

use super::applier::BrokerApplier;
use super::backend::{EntryCodec, LogBackend};
use super::config::{AckPolicy, ReplicaConfig};
use super::faults::FaultSwitch;
use super::node::ReplicaNode;
use super::proposals::{EntryId, ProposeError};
use super::role::{run_gate, MasterState};
use super::rpc::ReplicationService;
use super::runner::{mailbox, ReplicaHandle};
use super::snapshot_log::MetaSnapshotLog;
use super::status::{ReplicaStatus, RoleState};
use super::transport::PeerTransport;
use crate::state::StateMachine;
use crate::store::{AppendBatch, Appended, MessageStore};

/// Commands queued for the Raft thread before new ones are refused (peer messages are dropped,
/// proposals fail with UNAVAILABLE).
const MAILBOX: usize = 8192;

/// How a replica group member is set up.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub replica: ReplicaConfig,
    pub broker_name: String,
    /// Every member's address, this one's included.
    pub peers: BTreeMap<u64, String>,
    pub fault_injection: bool,
    /// How long a proposal may wait for its acknowledgement.
    pub propose_timeout: Duration,
    /// This replica's data port (empty: none); peers learn it from Raft acks.
    pub data_address: String,
    /// Signs what this replica sends its peers (the cluster secret), when there is one.
    pub signer: Option<Arc<sluice_proto::auth::Signer>>,
    /// Who replica traffic is taken from (`None`: anyone).
    pub access: Option<Arc<crate::access::Access>>,
    /// Reaches the peers over TLS, when set.
    pub tls: Option<sluice_proto::tls::net::Connector>,
    /// Mutual TLS: Raft traffic only over a certificate for the sending peer's host.
    pub peer_certificates: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("replica setup: {0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> GroupError {
    GroupError::Setup(e.to_string())
}

/// Handle to this broker's replica; shared by the request handlers.
pub struct ReplicaGroup {
    id: u64,
    peers: BTreeMap<u64, String>,
    ack: AckPolicy,
    propose_timeout: Duration,
    codec: Arc<dyn EntryCodec>,
    handle: ReplicaHandle,
    raft_role: watch::Receiver<RoleState>,
    master: watch::Receiver<MasterState>,
    applied: watch::Receiver<u64>,
    /// Joins the Raft thread (taken by `shutdown`).
    joiner: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ReplicaGroup {
    /// Opens the replica on the broker's commit log and starts it. Must run on the tokio
    /// runtime (the transport's sender tasks and the master gate are tasks). Returns the group
    /// and the `Replication` gRPC service peers talk to.
    pub fn start<B: LogBackend>(
        settings: GroupSettings,
        backend: B,
        state: Arc<StateMachine>,
        store: MessageStore,
    ) -> Result<(Arc<ReplicaGroup>, ReplicationService), GroupError> {
        let cfg = &settings.replica;
        cfg.validate().map_err(setup)?;
        let me = cfg.id;
        let log = MetaSnapshotLog::new(backend.raft_log().map_err(setup)?, state.clone());
        let first = log.first_index().map_err(setup)?;
        let last = log.last_index().map_err(setup)?;
        let (applier, applied) =
            BrokerApplier::open(backend.clone(), state, first, last).map_err(setup)?;
        let faults = Arc::new(FaultSwitch::new(settings.fault_injection));
        let transport = PeerTransport::start(
            &settings.broker_name,
            me,
            &settings.peers,
            faults.view(),
            settings.signer.clone(),
            settings.tls.clone(),
        )
        .map_err(setup)?;
        let (handle, mb) = mailbox(MAILBOX);
        let node = ReplicaNode::new(cfg, log, transport, applier).map_err(setup)?;
        let raft_role = node.subscribe();
        let thread = node.spawn(mb).map_err(setup)?;
        let joiner: Box<dyn FnOnce() + Send> = Box::new(move || {
            if thread.join().is_err() {
                tracing::error!("the raft thread panicked");
            }
        });
        let (master_tx, master) = watch::channel(MasterState::default());
        tokio::spawn(run_gate(raft_role.clone(), store, master_tx));
        tracing::info!(
            replica = me,
            broker = %settings.broker_name,
            voters = ?cfg.voters,
            learners = ?cfg.learners,
            first_index = first,
            last_index = last,
            ack = cfg.ack_policy.as_str(),
            "replica started"
        );
        let service = ReplicationService {
            broker_name: settings.broker_name.clone(),
            me,
            members: settings.peers.keys().copied().collect(),
            replica: handle.clone(),
            isolation: faults.view(),
            faults,
            data_address: settings.data_address.clone(),
            access: settings.access.clone(),
            peer_hosts: settings.peer_certificates.then(|| settings.peers.clone()),
        };
        let group = ReplicaGroup {
            id: me,
            peers: settings.peers,
            ack: cfg.ack_policy,
            propose_timeout: settings.propose_timeout,
            codec: Arc::new(backend),
            handle,
            raft_role,
            master,
            applied,
            joiner: Mutex::new(Some(joiner)),
        };
        Ok((Arc::new(group), service))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ack_policy(&self) -> AckPolicy {
        self.ack
    }

    pub fn address_of(&self, id: u64) -> Option<&str> {
        self.peers.get(&id).map(String::as_str)
    }

    /// The applied index (entries up to it are applied on this replica).
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// MASTER/SLAVE changes, for nameserver registration.
    pub fn subscribe_master(&self) -> watch::Receiver<MasterState> {
        self.master.clone()
    }

    pub fn master_state(&self) -> MasterState {
        *self.master.borrow()
    }

    pub fn raft_role(&self) -> RoleState {
        self.raft_role.borrow().clone()
    }

    /// The term of this replica's mastership, read once (NOT_MASTER as [`Self::require_master`]).
    pub fn master_term(&self) -> Result<u64, ApiError> {
        let m = self.master_state();
        if m.is_master {
            return Ok(m.term);
        }
        Err(self.not_master(m.leader_id))
    }

    /// NOT_MASTER with the master's address when this replica is not the master.
    pub fn require_master(&self) -> Result<(), ApiError> {
        let m = self.master_state();
        if m.is_master {
            return Ok(());
        }
        Err(self.not_master(m.leader_id))
    }

    fn not_master(&self, leader: Option<u64>) -> ApiError {
        match leader {
            Some(id) if id == self.id => ApiError::new(
                ErrorCode::NotMaster,
                "this replica was just elected and is catching up; retry shortly",
            ),
            Some(id) => match self.address_of(id) {
                Some(addr) => ApiError::not_master(addr),
                None => ApiError::not_master(""),
            },
            None => ApiError::new(
                ErrorCode::NotMaster,
                "the replica group is electing a master; retry shortly",
            ),
        }
    }

    /// Replicates a send; returns its entry index and each message's offsets once
    /// acknowledged per the ack policy.
    pub async fn propose_send(
        &self,
        batch: &AppendBatch,
        now_ms: i64,
    ) -> Result<(u64, Vec<Appended>), ApiError> {
        self.require_master()?;
        let data = self.codec.encode_send(batch, now_ms)?;
        let id = self.propose(data).await?;
        Ok((id.index, self.codec.entry_results(id.index)?))
    }

    /// Replicates a mixed batch (state ops and messages of any queues) as one entry; returns
    /// its entry index and the messages' offsets once acknowledged.
    /// With `term`, the entry goes into the log only if the Raft term is still that one when
    /// the Raft thread takes it (a write decided in one mastership must not land in the next).
    pub async fn propose_mixed(
        &self,
        batch: &crate::store::MixedBatch,
        now_ms: i64,
        term: Option<u64>,
    ) -> Result<(u64, Vec<Appended>), ApiError> {
        self.require_master()?;
        let data = self.codec.encode_mixed(batch, now_ms)?;
        let id = self.propose_in(data, term).await?;
        Ok((id.index, self.codec.entry_results(id.index)?))
    }

    /// Replicates a state operation; returns once it is applied on this replica.
    pub async fn propose_meta(&self, op: &MetaOp, now_ms: i64) -> Result<(), ApiError> {
        self.require_master()?;
        let data = self.codec.encode_meta(&op.encode_to_vec(), now_ms);
        let id = self.propose(data).await?;
        let mut applied = self.applied.clone();
        let wait = async move { applied.wait_for(|&a| a >= id.index).await.is_ok() };
        match tokio::time::timeout(self.propose_timeout, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the replica stopped before applying the operation",
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::StoreTimeout,
                format!("operation not applied within {:?}", self.propose_timeout),
            )),
        }
    }

    async fn propose(&self, data: bytes::Bytes) -> Result<EntryId, ApiError> {
        self.propose_in(data, None).await
    }

    async fn propose_in(&self, data: bytes::Bytes, term: Option<u64>) -> Result<EntryId, ApiError> {
        let proposed = self.handle.propose_in_term(data, term);
        let r = tokio::time::timeout(self.propose_timeout, proposed).await;
        match r {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(self.propose_error(e)),
            Err(_) => Err(ApiError::new(
                ErrorCode::StoreTimeout,
                format!(
                    "not replicated to a quorum within {:?}; it may or may not be stored",
                    self.propose_timeout
                ),
            )),
        }
    }

    fn propose_error(&self, e: ProposeError) -> ApiError {
        match e {
            ProposeError::NotLeader { leader_id } => self.not_master(leader_id),
            ProposeError::LeadershipLost { .. }
            | ProposeError::Overwritten { .. }
            | ProposeError::TermOver { .. } => {
                let leader = self.raft_role.borrow().leader_id.filter(|&l| l != self.id);
                let master = leader.and_then(|l| self.address_of(l)).unwrap_or("");
                ApiError {
                    master_address: master.to_string(),
                    ..ApiError::new(ErrorCode::NotMaster, e.to_string())
                }
            }
            ProposeError::Dropped(_) | ProposeError::Stopped(_) => e.into(),
        }
    }

    /// The replica's Raft status (role, indexes, and on the leader every member's progress).
    pub async fn status(&self) -> Result<ReplicaStatus, ApiError> {
        self.handle
            .status()
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))
    }

    /// Stops the Raft thread after what is queued and waits for it.
    pub async fn shutdown(&self) {
        self.handle.shutdown();
        let joiner = self.joiner.lock().take();
        if let Some(join) = joiner {
            if tokio::task::spawn_blocking(join).await.is_err() {
                tracing::error!("joining the raft thread failed");
            }
        }
    }
}
