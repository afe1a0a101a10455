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
    /// This replica's data port, told to peers in every ack so they switch to it.
    pub(crate) data_address: String,
    /// Who Raft traffic and faults are taken from (`None`: anyone).
    pub(crate) access: Option<Arc<crate::access::Access>>,
}

impl ReplicationService {
    /// Replica traffic comes from the cluster alone (see `Access::check_cluster`).
    pub(crate) fn check(&self, who: &crate::access::Principal) -> Result<(), ApiError> {
        self.access
            .as_ref()
            .map_or(Ok(()), |a| a.check_cluster(who))
    }

    pub(crate) fn accept(&self, batch: RaftBatch) -> Result<RaftAck, ApiError> {
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
            return Ok(RaftAck {
                accepted: 0,
                data_address: self.data_address.clone(),
            });
        }
        // The replica decodes and validates each message; garbage is counted and dropped there.
        let mut accepted = 0;
        for m in batch.messages {
            if self.replica.deliver(m) {
                accepted += 1;
            }
        }
        Ok(RaftAck {
            accepted,
            data_address: self.data_address.clone(),
        })
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.check(&crate::access::principal(&req))?;
        self.accept(req.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn inject_fault(
        &self,
        req: Request<FaultRequest>,
    ) -> Result<Response<FaultResponse>, Status> {
        self.check(&crate::access::principal(&req))?;
        let isolated = match req.into_inner().fault {
            Some(Fault::Isolate(i)) => self.faults.isolate(&i.peer_ids),
            Some(Fault::Heal(_)) => self.faults.heal(),
            None => Err(ApiError::invalid("give a fault: isolate or heal")),
        }
        .map_err(Status::from)?;
        Ok(Response::new(FaultResponse { isolated }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::runner::mailbox;
    use sluice_proto::v1::Isolate;
    use sluice_proto::ErrorCode;

    /// The service and its replica's mailbox (kept so deliveries have somewhere to go).
    fn service(faults: bool) -> (ReplicationService, crate::replication::Mailbox) {
        let (replica, mailbox) = mailbox(2);
        let faults = Arc::new(FaultSwitch::new(faults));
        let s = ReplicationService {
            broker_name: "b".into(),
            me: 1,
            members: [1, 2, 3].into_iter().collect(),
            replica,
            isolation: faults.view(),
            faults,
            data_address: "h:9".into(),
            access: None,
        };
        (s, mailbox)
    }

    fn batch(name: &str, from: u64, to: u64, n: usize) -> RaftBatch {
        RaftBatch {
            broker_name: name.into(),
            from,
            to,
            messages: vec![bytes::Bytes::from_static(b"opaque"); n],
        }
    }

    #[test]
    fn refuses_batches_for_others_and_from_strangers() {
        let (s, _mb) = service(false);
        for bad in [
            batch("x", 2, 1, 1),
            batch("b", 2, 3, 1),
            batch("b", 9, 1, 1),
            batch("b", 1, 1, 1),
        ] {
            assert_eq!(s.accept(bad).unwrap_err().code, ErrorCode::InvalidArgument);
        }
        // A full mailbox drops the rest (Raft retransmits).
        let ack = s.accept(batch("b", 2, 1, 3)).unwrap();
        assert_eq!(ack.accepted, 2);
        assert_eq!(ack.data_address, "h:9");
    }

    #[tokio::test]
    async fn isolated_peers_are_dropped_until_healed() {
        let (s, _mb) = service(true);
        let isolate = FaultRequest {
            fault: Some(Fault::Isolate(Isolate { peer_ids: vec![2] })),
        };
        let r = s.inject_fault(Request::new(isolate)).await.unwrap();
        assert_eq!(r.into_inner().isolated, vec![2]);
        assert_eq!(s.accept(batch("b", 2, 1, 1)).unwrap().accepted, 0);
        assert_eq!(s.accept(batch("b", 3, 1, 1)).unwrap().accepted, 1);
        let heal = FaultRequest {
            fault: Some(Fault::Heal(sluice_proto::v1::Heal {})),
        };
        s.inject_fault(Request::new(heal)).await.unwrap();
        assert_eq!(s.accept(batch("b", 2, 1, 1)).unwrap().accepted, 1);
        let empty = s
            .inject_fault(Request::new(FaultRequest { fault: None }))
            .await
            .unwrap_err();
        assert_eq!(
            ApiError::from_status(&empty).code,
            ErrorCode::InvalidArgument
        );
    }
}
