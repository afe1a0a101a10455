//! A chaos run: load on, then cycles of fault (kill -9, SIGSTOP or a partition of a group's
//! master), failover measurement, undo and health wait; then drain and check everything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_client::{Admin, ClientConfig};
use tokio::sync::{mpsc, watch};

use crate::control::{Action, Control, NodeInfo};
use crate::features;
use crate::ledger::{self, Ledger, MsgId};
use crate::load::{self, Load};
use crate::probe::{self, Group, Replica};
use crate::report::{CycleReport, Report};
use crate::verify::{self, QueueLog};
use crate::{churn, orderly};

mod compare;

/// How often the final check re-reads a follower that is behind the master.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// kill -9 the master, restart it after the failover.
    Kill,
    /// SIGSTOP the master, SIGCONT it after the failover.
    Pause,
    /// Cut the master off from its peers, heal after the failover.
    Partition,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
        }
    }

    fn inject(self) -> Action {
        match self {
            FaultKind::Kill => Action::Kill,
            FaultKind::Pause => Action::Pause,
            FaultKind::Partition => Action::Partition,
        }
    }

    fn undo(self) -> Action {
        match self {
            FaultKind::Kill => Action::Restart,
            FaultKind::Pause => Action::Resume,
            FaultKind::Partition => Action::Heal,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub control: Vec<String>,
    pub nameservers: Option<String>,
    pub cycles: u32,
    pub faults: Vec<FaultKind>,
    pub producers: u32,
    pub consumers: u32,
    pub queues: u32,
    pub body_size: usize,
    pub topic: Option<String>,
    pub send_timeout: Duration,
    pub idempotence: bool,
    pub warmup_acks: u64,
    pub hold_acks: u64,
    pub failover_timeout: Duration,
    pub heal_timeout: Duration,
    pub drain_timeout: Duration,
    /// Shares of delayed and failing messages.
    pub mix: features::Mix,
    /// Keyed producers and orderly consumers, checked for order and one owner per queue.
    pub orderly: bool,
}

/// The groups to attack, from the control script's node list: brokers with a group and a
/// replica id, by group name and replica id.
pub fn groups_of(nodes: &[NodeInfo]) -> Result<Vec<Group>> {
    let mut by_name: BTreeMap<String, Vec<Replica>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.kind == "broker") {
        let Some(g) = &n.group else { continue };
        by_name.entry(g.clone()).or_default().push(Replica {
            id: n.replica_id,
            address: n.address.clone(),
            node: n.name.clone(),
        });
    }
    if by_name.is_empty() {
        bail!("the control script lists no broker");
    }
    let mut groups = Vec::new();
    for (name, mut replicas) in by_name {
        replicas.sort_by_key(|r| r.id);
        if replicas.len() < 3 || replicas.iter().any(|r| r.id == 0) {
            bail!(
                "group {name} has {} replica(s); chaos needs replica groups of at least 3 \
                 (e.g. cluster.sh up --replicas 3) so a quorum survives one fault",
                replicas.len()
            );
        }
        groups.push(Group { name, replicas });
    }
    Ok(groups)
}

struct Run {
    opts: Options,
    control: Control,
    nameservers: Vec<String>,
    groups: Vec<Group>,
    topic: String,
    ledger: Ledger,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub async fn run(opts: Options) -> Result<Report> {
    let started = Instant::now();
    let control = Control::new(opts.control.clone())?;
    let nodes = control.nodes().await?;
    let groups = groups_of(&nodes)?;
    let ns_list = match &opts.nameservers {
        Some(l) => l.clone(),
        None => control.nameservers().await?,
    };
    let config = ClientConfig::from_list(&ns_list)
        .context("nameserver list")?
        .request_timeout(opts.send_timeout)
        .connect_timeout(Duration::from_millis(500))
        .route_refresh_interval(Duration::from_secs(5));
    let config = crate::auth::configure(config)?;
    let nameservers = config.nameservers().to_vec();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let topic = opts
        .topic
        .clone()
        .unwrap_or_else(|| format!("chaos-{run_id}"));
    let consumer_group = format!("chaos-{run_id}");

    for g in &groups {
        probe::await_healthy(g, &nameservers, None, opts.heal_timeout).await?;
    }
    let admin = Admin::new(config.clone())?;
    admin
        .create_topic(&topic, opts.queues, None)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    if opts.mix.fail_share > 0.0 {
        // A short backoff, so failing messages settle within the run.
        admin
            .update_group_config(
                &consumer_group,
                Some(opts.mix.max_retries),
                Some(vec![1_000]),
            )
            .await
            .context("setting the consumer group's retry policy")?;
    }
    for g in &groups {
        probe::await_healthy(g, &nameservers, Some(&topic), opts.heal_timeout).await?;
    }
    eprintln!(
        "chaos {run_id}: topic {topic}, groups {}, {} producers, {} consumers",
        groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        opts.producers,
        opts.consumers
    );

    let ledger = Ledger::new(ledger::start());
    let group_index: HashMap<String, u16> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.clone(), i as u16))
        .collect();
    let load = Load {
        run: Arc::from(run_id.as_str()),
        topic: Arc::from(topic.as_str()),
        body_size: opts.body_size,
        groups: Arc::new(group_index),
        events: ledger.sender(),
        mix: opts.mix,
        features: features::start(),
        orderly: opts.orderly,
    };
    let (processed_tx, mut processed_rx) = mpsc::unbounded_channel();
    let mut consumers = churn::Consumers::start(
        &config,
        &consumer_group,
        &topic,
        &load,
        processed_tx,
        opts.consumers,
    )
    .await?;
    let (stop_producers, producers_stop_rx) = watch::channel(false);
    // Answers transaction checks until the end, also after the sending producers stopped.
    let checker = match opts.mix.tx_share > 0.0 {
        true => Some(load::producer(
            &config,
            opts.send_timeout,
            opts.idempotence,
            &run_id,
        )?),
        false => None,
    };
    let mut producer_tasks = Vec::new();
    for p in 0..opts.producers {
        let producer = load::producer(&config, opts.send_timeout, opts.idempotence, &run_id)?;
        producer_tasks.push(load::spawn_producer(
            load.clone(),
            producer,
            p,
            producers_stop_rx.clone(),
        ));
    }

    let run = Run {
        opts,
        control,
        nameservers,
        groups,
        topic,
        ledger,
    };
    let mut errors = Vec::new();
    let mut cycles = Vec::new();
    match run.warm_up().await {
        Err(e) => errors.push(format!("{e:#}")),
        Ok(()) => {
            for i in 0..run.opts.cycles {
                // Orderly: queue locks change hands while the fault happens.
                if let Err(e) = consumers.before_cycle().await {
                    errors.push(format!("{e:#}"));
                }
                let c = run.cycle(i).await;
                eprintln!("{}", cycle_line(&c));
                // A group that did not heal makes further cycles meaningless.
                let fatal = !c.rejoined;
                cycles.push(c);
                if fatal {
                    errors.push(format!(
                        "cycle {} left group {} unhealthy; stopping the fault loop",
                        i + 1,
                        cycles
                            .last()
                            .map_or("?", |c: &CycleReport| c.group.as_str())
                    ));
                    break;
                }
            }
        }
    }

    stop_producers.send_replace(true);
    for t in producer_tasks {
        let _ = t.await;
    }
    if let Err(e) = run.drain().await {
        errors.push(format!("{e:#}"));
    }
    if run.opts.mix.active() {
        let mut patience = run.opts.drain_timeout.max(run.opts.mix.max_delay);
        if run.opts.mix.tx_share > 0.0 {
            // Abandoned transactions wait for their checks, which back off up to a minute.
            patience = patience.max(Duration::from_secs(130));
        }
        if let Err(e) = features::drain(&load.features, patience).await {
            errors.push(format!("{e:#}"));
        }
    }
    let replaced = consumers.replaced();
    consumers.stop().await;
    let processed = orderly::collect(&mut processed_rx);
    if let Some(c) = checker {
        c.shutdown().await;
    }

    let (logs, mismatches) = match run.final_logs(&load.run).await {
        Ok(x) => x,
        Err(e) => {
            errors.push(format!("final log check: {e:#}"));
            (HashMap::new(), vec!["not checked".to_string()])
        }
    };
    let record = run
        .ledger
        .finish()
        .await
        .context("the ledger task is gone")?;
    let findings = verify::check(&record, &logs);
    let orderly = run.opts.orderly.then(|| orderly::OrderlyFindings {
        members_replaced: replaced,
        ..orderly::check(&processed, &record.acks)
    });
    let feature_findings = match run.opts.mix.active() {
        true => features::finish(&load.features)
            .await
            .map(|t| features::check(&t, run.opts.mix.max_retries)),
        false => None,
    };
    let mut report = Report {
        run_id,
        topic: run.topic.clone(),
        consumer_group,
        groups: run.groups.iter().map(|g| g.name.clone()).collect(),
        faults: run
            .opts
            .faults
            .iter()
            .map(|f| f.name().to_string())
            .collect(),
        producers: run.opts.producers,
        idempotent: run.opts.idempotence,
        consumers: run.opts.consumers,
        cycles_requested: run.opts.cycles,
        cycles_completed: cycles.iter().filter(|c| c.error.is_none()).count() as u32,
        duration_s: started.elapsed().as_secs_f64(),
        send_failures: record.counts.send_failures,
        consume_errors: record.consume_errors,
        findings,
        features: feature_findings,
        orderly,
        replicas_consistent: mismatches.is_empty(),
        replica_mismatches: mismatches,
        failover: None,
        failover_by_fault: BTreeMap::new(),
        recovery: None,
        cycles,
        errors,
        ok: false,
    };
    report.finalize();
    Ok(report)
}

fn cycle_line(c: &CycleReport) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    format!(
        "cycle {}: {} {} master {} ({}) -> {}: failover {}, recovery {}{}",
        c.cycle,
        c.fault,
        c.group,
        c.old_master,
        c.node,
        c.new_master.map_or("-".into(), |m| m.to_string()),
        opt(c.failover_ms),
        opt(c.recovery_ms),
        c.error
            .as_ref()
            .map(|e| format!("; ERROR {e}"))
            .unwrap_or_default()
    )
}

impl Run {
    async fn warm_up(&self) -> Result<()> {
        for (i, g) in self.groups.iter().enumerate() {
            if !self
                .ledger
                .acks_after(i as u16, self.opts.warmup_acks, Duration::from_secs(60))
                .await
            {
                bail!(
                    "group {}: fewer than {} acknowledged sends within 60 s of starting the load",
                    g.name,
                    self.opts.warmup_acks
                );
            }
        }
        Ok(())
    }

    /// One fault on the master of group `i % groups`, kind `i % faults`.
    async fn cycle(&self, i: u32) -> CycleReport {
        let gi = i as usize % self.groups.len();
        let group = &self.groups[gi];
        let fault = self.opts.faults[i as usize % self.opts.faults.len()];
        let mut c = CycleReport {
            cycle: i + 1,
            fault: fault.name().to_string(),
            group: group.name.clone(),
            old_master: 0,
            node: String::new(),
            new_master: None,
            failover_ms: None,
            fault_cmd_ms: None,
            new_master_ms: None,
            recovery_ms: None,
            rejoined: false,
            error: None,
        };
        if let Err(e) = self.attack(gi as u16, group, fault, &mut c).await {
            c.error = Some(format!("{e:#}"));
        }
        c
    }

    async fn attack(
        &self,
        gi: u16,
        group: &Group,
        fault: FaultKind,
        c: &mut CycleReport,
    ) -> Result<()> {
        let o = &self.opts;
        let old = probe::await_healthy(group, &self.nameservers, Some(&self.topic), o.heal_timeout)
            .await?;
        let node = group
            .replica(old)
            .map(|r| r.node.clone())
            .context("the master is not in the node list")?;
        c.old_master = old;
        c.node = node.clone();
        // Under load when it strikes.
        if !self.ledger.acks_after(gi, 50, o.failover_timeout).await {
            bail!("no load on {} before the fault", group.name);
        }

        // The fault takes effect somewhere while the control command runs. Only sends started
        // after it returned are sure to miss the old master, and timing them from its start
        // makes the failover an upper bound (it includes the command's own latency).
        let fault_at = Instant::now();
        self.control.act(fault.inject(), &node).await?;
        let fault_done = Instant::now();
        c.fault_cmd_ms = Some(ms(fault_done - fault_at));
        // The new master is looked for among the others: the attacked one may not answer.
        let others = Group {
            name: group.name.clone(),
            replicas: group
                .replicas
                .iter()
                .filter(|r| r.id != old)
                .cloned()
                .collect(),
        };
        let (first_ack, new_master) = tokio::join!(
            self.ledger
                .first_ack_since(gi, fault_done, o.failover_timeout),
            async {
                let m = probe::await_master(&others, None, o.failover_timeout).await;
                (m, fault_at.elapsed())
            }
        );
        c.failover_ms = first_ack.map(|at| ms(at.duration_since(fault_at)));
        let mut problem = None;
        match new_master {
            (Ok(m), took) => {
                c.new_master = Some(m);
                c.new_master_ms = Some(ms(took));
            }
            (Err(e), _) => problem = Some(format!("{e:#}")),
        }
        if c.failover_ms.is_none() {
            problem.get_or_insert_with(|| {
                format!(
                    "no acknowledged send on {} within {:?} of the fault",
                    group.name, o.failover_timeout
                )
            });
        } else if !self
            .ledger
            .acks_after(gi, o.hold_acks, o.failover_timeout)
            .await
        {
            problem.get_or_insert_with(|| "the load stalled on the new master".into());
        }

        // Undo whatever happened above, so the next cycle (or the drain) finds a whole group.
        let undo_at = Instant::now();
        self.control.act(fault.undo(), &node).await?;
        probe::await_healthy(group, &self.nameservers, Some(&self.topic), o.heal_timeout).await?;
        c.recovery_ms = Some(ms(undo_at.elapsed()));
        c.rejoined = true;
        match problem {
            Some(p) => bail!(p),
            None => Ok(()),
        }
    }

    /// Waits until the consumers have received every acknowledged message, or until they
    /// make no progress for the drain timeout.
    async fn drain(&self) -> Result<()> {
        for g in &self.groups {
            probe::await_healthy(
                g,
                &self.nameservers,
                Some(&self.topic),
                self.opts.heal_timeout,
            )
            .await?;
        }
        let mut last = self.ledger.counts().await;
        let mut progress_at = Instant::now();
        loop {
            let now = self.ledger.counts().await;
            if now.acked_unconsumed == 0 {
                return Ok(());
            }
            if now.deliveries != last.deliveries {
                progress_at = Instant::now();
                last = now;
            }
            if progress_at.elapsed() > self.opts.drain_timeout {
                bail!(
                    "{} acknowledged messages still unconsumed after {:?} without progress",
                    now.acked_unconsumed,
                    self.opts.drain_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every queue of the topic from every replica once the groups are healthy; returns
    /// the masters' logs and the differences between replicas.
    async fn final_logs(
        &self,
        run_id: &str,
    ) -> Result<(HashMap<(u16, u32), QueueLog>, Vec<String>)> {
        let mut logs = HashMap::new();
        let mut mismatches = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let master = probe::await_healthy(
                g,
                &self.nameservers,
                Some(&self.topic),
                self.opts.heal_timeout,
            )
            .await?;
            let master_addr = &g.replica(master).context("master not listed")?.address;
            // A follower learns of the last commits with the leader's next message, and a healed
            // one may still be catching up; and the master may append after it was read (a
            // delayed message coming due, a transaction committed by its check, of a send that
            // failed for the client and is not awaited). Replicas whose queues are a prefix of
            // one another are read again until this deadline.
            let deadline = Instant::now() + self.opts.heal_timeout;
            for q in 0..self.opts.queues {
                let (reference, diverged) = loop {
                    let reference = probe::read_queue(master_addr, &self.topic, q).await?;
                    let mut diverged = Vec::new();
                    let mut settling = false;
                    for r in g.replicas.iter().filter(|r| r.id != master) {
                        let copy = probe::read_queue(&r.address, &self.topic, q).await?;
                        match compare::replicas(&reference, &copy) {
                            compare::Compared::Same => {}
                            compare::Compared::Prefix if Instant::now() < deadline => {
                                settling = true
                            }
                            _ => diverged.push(compare::describe_mismatch(
                                &g.name, q, master, r.id, &reference, &copy,
                            )),
                        }
                    }
                    if !settling {
                        break (reference, diverged);
                    }
                    tokio::time::sleep(CATCH_UP_POLL).await;
                };
                mismatches.extend(diverged);
                let log: QueueLog = reference
                    .iter()
                    .map(|m| (m.offset, MsgId::parse(run_id, &m.body)))
                    .collect();
                logs.insert((gi as u16, q), log);
            }
        }
        Ok((logs, mismatches))
    }
}

#[cfg(test)]
mod tests;
