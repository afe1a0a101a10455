//! Replica-group test clusters: one nameserver and N brokers sharing a broker name, each on a
//! fixed loopback port reserved up front (peers must know each other's addresses before they
//! start). Helpers find the master, read replica status, inject partitions and compare the
//! replicas' queues.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::replication_client::ReplicationClient;
use sluice_proto::v1::{
    BrokerStatus, FaultRequest, GetBrokerStatusRequest, GetTopicRouteRequest, Heal, Isolate,
    PullRequest, ReadStats, Role, StoredMessage,
};

use crate::{bin, connect_broker, wait_until, Node};

/// Reserves `n` distinct free loopback ports: binds them all at once (so they differ), notes
/// the ports and releases them. Another process may grab one before the broker binds it;
/// [`ReplicaCluster::start`] retries with new ports then.
pub fn reserve_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Settings of a replica-group cluster.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub replicas: usize,
    /// Replica ids (1-based) that are learners.
    pub learners: Vec<u64>,
    /// `quorum` or `leader`.
    pub ack: &'static str,
    pub flush: &'static str,
    pub heartbeat_interval_ms: u64,
    pub broker_expiry_ms: u64,
    pub raft_tick_ms: u64,
    pub election_ticks: u32,
    pub max_election_ticks: u32,
    pub fault_injection: bool,
    pub segment_size: u64,
    /// More TOML lines for every broker (keys the harness does not set).
    pub extra_broker_toml: String,
    /// More TOML lines for one broker: replica 1's first, then replica 2's...
    pub replica_toml: Vec<String>,
    /// More command-line arguments for the nameserver.
    pub nameserver_args: Vec<String>,
    /// Who the harness's own calls (status, topic creation) sign as.
    pub credentials: Option<sluice_client::Credentials>,
    /// How the harness reaches nodes that speak TLS.
    pub tls: Option<sluice_proto::tls::net::Connector>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            replicas: 3,
            learners: Vec::new(),
            ack: "quorum",
            flush: "async",
            heartbeat_interval_ms: 1_000,
            broker_expiry_ms: 10_000,
            raft_tick_ms: 100,
            election_ticks: 6,
            max_election_ticks: 12,
            fault_injection: false,
            segment_size: 4 << 20,
            extra_broker_toml: String::new(),
            replica_toml: Vec::new(),
            nameserver_args: Vec::new(),
            credentials: None,
            tls: None,
        }
    }
}

/// A nameserver and one replica group; every process is killed on drop.
pub struct ReplicaCluster {
    pub dir: tempfile::TempDir,
    pub opts: ReplicaOptions,
    pub nameserver: Node,
    /// `replicas[i]` is replica id `i + 1`.
    pub replicas: Vec<Node>,
    /// Replica id -> address.
    pub peers: BTreeMap<u64, String>,
}

pub const GROUP: &str = "broker-a";

impl ReplicaCluster {
    pub fn start(opts: ReplicaOptions) -> Result<ReplicaCluster> {
        let dir = tempfile::Builder::new().prefix("sluice-rg-").tempdir()?;
        let nameserver = crate::start_nameserver_with(
            dir.path(),
            opts.broker_expiry_ms,
            200,
            &opts.nameserver_args,
        )?;
        let mut last_err = None;
        for _attempt in 0..3 {
            match Self::start_replicas(dir.path(), &opts, &nameserver.addr) {
                Ok((replicas, peers)) => {
                    return Ok(ReplicaCluster {
                        dir,
                        opts,
                        nameserver,
                        replicas,
                        peers,
                    })
                }
                // Most likely a reserved port was taken meanwhile: try new ones.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    fn start_replicas(
        root: &std::path::Path,
        opts: &ReplicaOptions,
        nameserver: &str,
    ) -> Result<(Vec<Node>, BTreeMap<u64, String>)> {
        let ports = reserve_ports(opts.replicas)?;
        let peers: BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
            .collect();
        let peers_toml = peers
            .iter()
            .map(|(id, a)| format!("{id} = \"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (&id, addr) in &peers {
            let name = format!("replica-{id}");
            let dir = root.join(&name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let config = dir.join("broker.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"{addr}\"\ndata_dir = \"{data}\"\nnameservers = [\"{nameserver}\"]\n\
                     cluster_name = \"it\"\nbroker_name = \"{GROUP}\"\nreplica_id = {id}\n\
                     flush = \"{flush}\"\nack = \"{ack}\"\nheartbeat_interval_ms = {hb}\n\
                     consumer_expiry_ms = 3000\nsegment_size = {seg}\ndisk_budget_bytes = {budget}\nraft_tick_ms = {tick}\n\
                     election_ticks = {el}\nmax_election_ticks = {mel}\n\
                     enable_fault_injection = {fi}\nlearners = {learners:?}\n\
                     peers = {{ {peers_toml} }}\n{extra}\n{own}\n",
                    data = dir.join("data").display(),
                    flush = opts.flush,
                    ack = opts.ack,
                    hb = opts.heartbeat_interval_ms,
                    tick = opts.raft_tick_ms,
                    el = opts.election_ticks,
                    mel = opts.max_election_ticks,
                    fi = opts.fault_injection,
                    seg = opts.segment_size,
                    budget = crate::TEST_DISK_BUDGET,
                    learners = opts.learners,
                    extra = opts.extra_broker_toml,
                    own = opts
                        .replica_toml
                        .get(Self::index(id))
                        .map_or("", String::as_str),
                ),
            )?;
            nodes.push(Node::start(
                &name,
                bin("sluice-broker"),
                &dir,
                vec!["--config".into(), config.display().to_string()],
            )?);
        }
        Ok((nodes, peers))
    }

    /// Index into `replicas` of replica `id`.
    pub fn index(id: u64) -> usize {
        (id - 1) as usize
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.replicas[Self::index(id)]
    }

    pub fn address(&self, id: u64) -> &str {
        &self.peers[&id]
    }

    /// Status of replica `id` (fails when it is down).
    pub async fn status(&self, id: u64) -> Result<BrokerStatus> {
        let mut c = crate::connect_broker_with(self.address(id), self.opts.tls.as_ref()).await?;
        let s = tokio::time::timeout(
            Duration::from_secs(2),
            c.get_broker_status(crate::signed(
                GetBrokerStatusRequest {},
                self.address(id),
                "/sluice.v1.Broker/GetBrokerStatus",
                self.opts.credentials.as_ref(),
            )),
        )
        .await
        .context("status timed out")??;
        Ok(s.into_inner())
    }

    /// What replica `id` served to pulls and the read hints it gave (fails when it is down).
    pub async fn read_stats(&self, id: u64) -> Result<ReadStats> {
        self.status(id)
            .await?
            .read_stats
            .ok_or_else(|| anyhow!("replica {id} reports no read stats"))
    }

    /// The replica that reports itself MASTER, among those that answer.
    pub async fn find_master(&self) -> Option<u64> {
        for &id in self.peers.keys() {
            if let Ok(s) = self.status(id).await {
                if s.role == Role::Master as i32 {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Waits until the replicas' Raft links run on each other's data ports: each replica's
    /// senders learn their peers' data ports from the first gRPC ack and connect, the
    /// `master` to every other replica, each of those (its append answers) to the master.
    pub async fn await_data_port_links(&self, master: u64, timeout: Duration) -> Result<()> {
        let others = self.peers.len() as u64 - 1;
        crate::wait_until(timeout, "raft links on data ports", || async {
            let mut all = true;
            for &id in self.peers.keys() {
                let s = self.status(id).await.unwrap_or_default();
                all &= s.data_port_connections >= if id == master { others } else { 1 };
            }
            all
        })
        .await
    }

    /// Waits for a master other than `not`, which the nameserver also routes `topic` to
    /// (when given).
    pub async fn await_master(
        &self,
        timeout: Duration,
        not: Option<u64>,
        topic: Option<&str>,
    ) -> Result<u64> {
        let start = Instant::now();
        loop {
            if let Some(m) = self.find_master().await.filter(|&m| Some(m) != not) {
                let routed = match topic {
                    None => true,
                    Some(t) => self.routed_master(t).await.ok().flatten() == Some(m),
                };
                if routed {
                    return Ok(m);
                }
            }
            if start.elapsed() > timeout {
                bail!("no master (other than {not:?}) within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a master, creates `topic` with `queues` queues on it and waits until the
    /// nameserver routes the topic to a master; returns that master.
    pub async fn create_topic_on_master(
        &self,
        topic: &str,
        queues: u32,
        timeout: Duration,
    ) -> Result<u64> {
        let master = self.await_master(timeout, None, None).await?;
        crate::connect_broker_with(self.address(master), self.opts.tls.as_ref())
            .await?
            .create_topic(crate::signed(
                crate::create_topic_request(topic, queues),
                self.address(master),
                "/sluice.v1.Broker/CreateTopic",
                self.opts.credentials.as_ref(),
            ))
            .await?;
        self.await_master(timeout, None, Some(topic)).await
    }

    /// The master replica id the nameserver routes `topic` to.
    pub async fn routed_master(&self, topic: &str) -> Result<Option<u64>> {
        let ch = crate::channel_to(&self.nameserver.addr, self.opts.tls.as_ref()).await?;
        let mut ns = sluice_proto::v1::name_server_client::NameServerClient::new(ch);
        let route = ns
            .get_topic_route(GetTopicRouteRequest {
                topic: topic.into(),
            })
            .await?
            .into_inner();
        Ok(route
            .brokers
            .iter()
            .find(|b| b.broker_name == GROUP)
            .map(|b| b.master_replica_id)
            .filter(|&m| m != 0))
    }

    /// Waits until every live replica in `ids` has applied at least `index` and dispatched what
    /// it applied (so its queues serve it).
    pub async fn await_applied(&self, ids: &[u64], index: u64, timeout: Duration) -> Result<()> {
        wait_until(
            timeout,
            &format!("replicas {ids:?} to apply {index}"),
            || async {
                for &id in ids {
                    match self.status(id).await {
                        Ok(s)
                            if s.applied_index >= index
                                && s.dispatched_offset >= s.confirmed_offset => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await
    }

    /// Waits until every replica in `ids` has applied what the master `master` has committed.
    pub async fn await_caught_up(&self, master: u64, ids: &[u64], timeout: Duration) -> Result<()> {
        let commit = self.status(master).await?.commit_index;
        self.await_applied(ids, commit, timeout).await
    }

    /// Fault injection on replica `id`: drop Raft traffic to and from `peers`.
    pub async fn isolate(&self, id: u64, peers: &[u64]) -> Result<Vec<u64>> {
        self.fault(
            id,
            Fault::Isolate(Isolate {
                peer_ids: peers.to_vec(),
            }),
        )
        .await
    }

    pub async fn heal(&self, id: u64) -> Result<Vec<u64>> {
        self.fault(id, Fault::Heal(Heal {})).await
    }

    pub async fn fault(&self, id: u64, fault: Fault) -> Result<Vec<u64>> {
        let ch = crate::channel_to(self.address(id), self.opts.tls.as_ref()).await?;
        let r = ReplicationClient::new(ch)
            .inject_fault(FaultRequest { fault: Some(fault) })
            .await?;
        Ok(r.into_inner().isolated)
    }

    /// Every message of `topic`'s queue `queue_id` on replica `id`, from offset 0 (committed
    /// data only: that is all a replica serves).
    pub async fn read_queue(
        &self,
        id: u64,
        topic: &str,
        queue_id: u32,
    ) -> Result<Vec<StoredMessage>> {
        read_all(self.address(id), topic, queue_id).await
    }
}

/// Reads a whole queue from one broker with plain pulls, from its min offset (0 unless
/// retention or a snapshot moved it). Every batch is read twice, decoded by the broker and as
/// raw records, and the two must agree.
pub async fn read_all(addr: &str, topic: &str, queue_id: u32) -> Result<Vec<StoredMessage>> {
    let mut c = connect_broker(addr).await?;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = PullRequest {
            group: String::new(),
            topic: topic.into(),
            queue_id,
            offset,
            max_messages: 1024,
            max_bytes: 0,
            poll_timeout_ms: 0,
            raw_records: false,
            record_format: 0,
            filters: Vec::new(),
        };
        let r = match c.pull(req.clone()).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = sluice_proto::ApiError::from_status(&status);
                if out.is_empty() && e.code == sluice_proto::ErrorCode::OffsetOutOfRange {
                    if e.min_offset <= offset {
                        bail!("pull at {offset} out of range: {e}");
                    }
                    offset = e.min_offset;
                    continue;
                }
                return Err(status.into());
            }
        };
        if r.messages.is_empty() {
            return Ok(out);
        }
        check_raw_pull(&mut c, req, &r.messages).await?;
        offset = r.next_offset;
        out.extend(r.messages);
    }
}

/// Pulls `req` again as raw records: they must parse (CRC, structure) into `decoded` (more
/// may have arrived since). A client that does not name the record format it parses (built
/// before format 2) asks for raw records too and must get decoded messages instead.
async fn check_raw_pull(
    c: &mut sluice_proto::v1::broker_client::BrokerClient<tonic::transport::Channel>,
    req: PullRequest,
    decoded: &[StoredMessage],
) -> Result<()> {
    let at = req.offset;
    let old = c
        .pull(PullRequest {
            raw_records: true,
            record_format: 0,
            ..req.clone()
        })
        .await?
        .into_inner();
    if !old.records.is_empty() || old.messages.get(..decoded.len()) != Some(decoded) {
        bail!(
            "raw pull at {at} without a record format: {} records, {} messages for {} decoded",
            old.records.len(),
            old.messages.len(),
            decoded.len()
        );
    }
    let raw = c
        .pull(PullRequest {
            raw_records: true,
            record_format: sluice_proto::record::RECORD_FORMAT,
            ..req
        })
        .await?
        .into_inner();
    if !raw.messages.is_empty() || raw.records.len() < decoded.len() {
        bail!(
            "raw pull at {at}: {} messages, {} records for {} decoded",
            raw.messages.len(),
            raw.records.len(),
            decoded.len()
        );
    }
    for (r, m) in raw.records.iter().zip(decoded) {
        let parsed = sluice_proto::record::message_of(r)
            .map_err(|why| anyhow::anyhow!("raw record at offset {}: {why}", m.queue_offset))?;
        if &parsed != m {
            bail!("raw record differs from the decoded message:\n{parsed:?}\n{m:?}");
        }
    }
    Ok(())
}
