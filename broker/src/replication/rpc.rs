//! The `sluice.v1.Replication` gRPC service: Raft messages from peers into the replica's
//! mailbox, and the fault-injection hook.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sluice_proto::tls::identity::PeerNames;
use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::replication_server::Replication;
use sluice_proto::v1::{FaultRequest, FaultResponse, RaftAck, RaftBatch};
use sluice_proto::{ApiError, ErrorCode};
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
    /// Under mutual TLS, the members' addresses: a batch from a member must come over a
    /// certificate issued for that member's host.
    pub(crate) peer_hosts: Option<BTreeMap<u64, String>>,
}

impl ReplicationService {
    /// Replica traffic comes from the cluster alone (see `Access::check_cluster`).
    pub(crate) fn check(&self, who: &crate::access::Principal) -> Result<(), ApiError> {
        self.access
            .as_ref()
            .map_or(Ok(()), |a| a.check_cluster(who))
    }

    /// Takes a batch that came over a connection whose certificate named `peer`.
    pub(crate) fn accept(&self, batch: RaftBatch, peer: &PeerNames) -> Result<RaftAck, ApiError> {
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
        self.check_certificate(batch.from, peer)?;
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
            if self.replica.deliver(batch.from, m) {
                accepted += 1;
            }
        }
        Ok(RaftAck {
            accepted,
            data_address: self.data_address.clone(),
        })
    }

    /// Under mutual TLS, replica `from` speaks only over a certificate for its own host: a
    /// holder of another node's certificate (and the cluster secret) cannot pose as it.
    fn check_certificate(&self, from: u64, peer: &PeerNames) -> Result<(), ApiError> {
        let Some(hosts) = &self.peer_hosts else {
            return Ok(());
        };
        let addr = hosts.get(&from).map_or("", String::as_str);
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        if peer.covers(host) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "raft batch from replica {from} ({addr}) over a certificate for {:?}: \
                 replicas must show a certificate for their own host",
                peer.names()
            ),
        ))
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.check(&crate::access::principal(&req))?;
        let peer = req
            .extensions()
            .get::<PeerNames>()
            .cloned()
            .unwrap_or_default();
        self.accept(req.into_inner(), &peer)
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
            peer_hosts: None,
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
            assert_eq!(
                s.accept(bad, &PeerNames::default()).unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        // A full mailbox drops the rest (Raft retransmits).
        let ack = s
            .accept(batch("b", 2, 1, 3), &PeerNames::default())
            .unwrap();
        assert_eq!(ack.accepted, 2);
        assert_eq!(ack.data_address, "h:9");
    }

    #[test]
    fn under_mutual_tls_a_member_speaks_only_over_a_certificate_for_its_host() {
        let (mut s, _mb) = service(false);
        s.peer_hosts = Some(
            [
                (1, "10.0.0.1:9"),
                (2, "10.0.0.2:9"),
                (3, "broker-c.example:9"),
            ]
            .into_iter()
            .map(|(id, a)| (id, a.to_string()))
            .collect(),
        );
        let names = |n: &[&str]| PeerNames::from_names(n.iter().copied());
        assert_eq!(
            s.accept(batch("b", 2, 1, 1), &names(&["10.0.0.2"]))
                .unwrap()
                .accepted,
            1
        );
        assert_eq!(
            s.accept(batch("b", 3, 1, 1), &names(&["BROKER-C.example"]))
                .unwrap()
                .accepted,
            1
        );
        // Another member's certificate, a stranger's, or none: refused, naming what it showed.
        for (from, shown) in [
            (2, names(&["10.0.0.3"])),
            (3, names(&["10.0.0.2"])),
            (2, PeerNames::default()),
        ] {
            let e = s.accept(batch("b", from, 1, 1), &shown).unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
            assert!(e.message.contains(&format!("replica {from}")), "{e:?}");
        }
        // Without mutual TLS the certificate is not looked at (the mailbox, of 2, is full).
        s.peer_hosts = None;
        assert!(s.accept(batch("b", 2, 1, 1), &PeerNames::default()).is_ok());
    }

    #[tokio::test]
    async fn isolated_peers_are_dropped_until_healed() {
        let (s, _mb) = service(true);
        let isolate = FaultRequest {
            fault: Some(Fault::Isolate(Isolate { peer_ids: vec![2] })),
        };
        let r = s.inject_fault(Request::new(isolate)).await.unwrap();
        assert_eq!(r.into_inner().isolated, vec![2]);
        assert_eq!(
            s.accept(batch("b", 2, 1, 1), &PeerNames::default())
                .unwrap()
                .accepted,
            0
        );
        assert_eq!(
            s.accept(batch("b", 3, 1, 1), &PeerNames::default())
                .unwrap()
                .accepted,
            1
        );
        let heal = FaultRequest {
            fault: Some(Fault::Heal(sluice_proto::v1::Heal {})),
        };
        s.inject_fault(Request::new(heal)).await.unwrap();
        assert_eq!(
            s.accept(batch("b", 2, 1, 1), &PeerNames::default())
                .unwrap()
                .accepted,
            1
        );
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
