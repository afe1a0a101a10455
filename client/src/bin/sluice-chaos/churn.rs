//! `--orderly`: the consumer group's members, one of which is replaced before every fault
//! cycle, so queue locks change hands (unlocked by a leaving member, taken by the others, given
//! back to the newcomer) while masters die, pause and lose their network.

use anyhow::{Context, Result};
use sluice_client::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::load::{self, Load};
use crate::orderly::{spawn_consumer, Processed};

/// The consumer group under test: pull consumers stopped together at the end, or (with
/// `--orderly`) orderly members, one replaced before every fault cycle.
pub enum Consumers {
    Plain {
        stop: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
    },
    Orderly(Box<Members>),
}

impl Consumers {
    pub async fn start(
        config: &ClientConfig,
        group: &str,
        topic: &str,
        load: &Load,
        log: mpsc::UnboundedSender<Processed>,
        count: u32,
    ) -> Result<Consumers> {
        if load.orderly {
            let m = Members::start(config, group, load.clone(), log, count).await?;
            return Ok(Consumers::Orderly(Box::new(m)));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for m in 0..count {
            let c = load::consumer(config, group, topic)
                .await
                .context("starting a consumer")?;
            tasks.push(load::spawn_consumer(load.clone(), c, m, stop_rx.clone()));
        }
        Ok(Consumers::Plain { stop, tasks })
    }

    /// Orderly: replaces the longest-running member.
    pub async fn before_cycle(&mut self) -> Result<()> {
        match self {
            Consumers::Plain { .. } => Ok(()),
            Consumers::Orderly(m) => m.replace_oldest().await,
        }
    }

    pub fn replaced(&self) -> u64 {
        match self {
            Consumers::Plain { .. } => 0,
            Consumers::Orderly(m) => m.replaced,
        }
    }

    pub async fn stop(self) {
        match self {
            Consumers::Plain { stop, tasks } => {
                stop.send_replace(true);
                for t in tasks {
                    let _ = t.await;
                }
            }
            Consumers::Orderly(m) => m.stop().await,
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Members {
    config: ClientConfig,
    group: String,
    load: Load,
    log: mpsc::UnboundedSender<Processed>,
    /// Oldest first.
    running: Vec<Running>,
    next_member: u32,
    /// Members replaced so far.
    pub replaced: u64,
}

impl Members {
    pub async fn start(
        config: &ClientConfig,
        group: &str,
        load: Load,
        log: mpsc::UnboundedSender<Processed>,
        count: u32,
    ) -> Result<Members> {
        let mut m = Members {
            config: config.clone(),
            group: group.to_string(),
            load,
            log,
            running: Vec::new(),
            next_member: 0,
            replaced: 0,
        };
        for _ in 0..count {
            m.add().await?;
        }
        Ok(m)
    }

    async fn add(&mut self) -> Result<()> {
        let (stop, stop_rx) = watch::channel(false);
        let member = self.next_member;
        self.next_member += 1;
        let task = spawn_consumer(
            &self.config,
            &self.group,
            self.load.clone(),
            member,
            self.log.clone(),
            stop_rx,
        )
        .await
        .with_context(|| format!("starting orderly consumer {member}"))?;
        self.running.push(Running { stop, task });
        Ok(())
    }

    /// Shuts the longest-running member down (it commits and unlocks its queues) and starts a
    /// new one with a new client id.
    pub async fn replace_oldest(&mut self) -> Result<()> {
        if !self.running.is_empty() {
            let oldest = self.running.remove(0);
            oldest.stop.send_replace(true);
            let _ = oldest.task.await;
        }
        self.add().await?;
        self.replaced += 1;
        Ok(())
    }

    pub async fn stop(self) {
        for r in &self.running {
            r.stop.send_replace(true);
        }
        for r in self.running {
            let _ = r.task.await;
        }
    }
}
