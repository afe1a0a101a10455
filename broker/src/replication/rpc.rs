//! The `sluice.v1.Replication` gRPC service: Raft messages from peers into the replica's
//! mailbox, and the fault-injection hook.

use std::collections::BTreeSet;
use std::sync::Arc;

use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::replication_server::Replication;
use sluice_proto::v1::{FaultRequest, FaultResponse, RaftAck, RaftBatch};
use sluice_proto::ApiError;
use tonic::{Request, Response, Status};

use super::faults::{FaultSwitch, Isolation};
use super::runner::ReplicaHandle;

/// Most messages accepted in one batch (a sender batches what it has queued, at most its
/// queue length).
const MAX_MESSAGES: usize = 16 * 1024;

pub struct ReplicationService {
    pub(crate) broker_name: String,
    pub(crate) me: u64,
    pub(crate) members: BTreeSet<u64>,
    pub(crate) replica: ReplicaHandle,
    pub(crate) faults: Arc<FaultSwitch>,
    pub(crate) isolation: Isolation,
}

impl ReplicationService {
    fn accept(&self, batch: RaftBatch) -> Result<RaftAck, ApiError> {
        if batch.broker_name != self.broker_name {
            return Err(ApiError::invalid(format!(
                "raft batch for broker group {:?}; this is {:?}",
                batch.broker_name, self.broker_name
            )));
        }
        if batch.to != self.me {
            return Err(ApiError::invalid(format!(
                "raft batch for replica {}; this is replica {}",
                batch.to, self.me
            )));
        }
        if batch.from == self.me || !self.members.contains(&batch.from) {
            return Err(ApiError::invalid(format!(
                "raft batch from {}, which is not a peer of replica {}",
                batch.from, self.me
            )));
        }
        if batch.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(format!(
                "raft batch of {} messages exceeds {MAX_MESSAGES}",
                batch.messages.len()
            )));
        }
        if self.isolation.is_isolated(batch.from) {
            return Ok(RaftAck { accepted: 0 });
        }
        // The replica decodes and validates each message; garbage is counted and dropped there.
        let mut accepted = 0;
        for m in batch.messages {
            if self.replica.deliver(m) {
                accepted += 1;
            }
        }
        Ok(RaftAck { accepted })
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.accept(req.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn inject_fault(
        &self,
        req: Request<FaultRequest>,
    ) -> Result<Response<FaultResponse>, Status> {
        let isolated = match req.into_inner().fault {
            Some(Fault::Isolate(i)) => self.faults.isolate(&i.peer_ids),
            Some(Fault::Heal(_)) => self.faults.heal(),
            None => Err(ApiError::invalid("give a fault: isolate or heal")),
        }
        .map_err(Status::from)?;
        Ok(Response::new(FaultResponse { isolated }))
    }
}
