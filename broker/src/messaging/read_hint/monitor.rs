//! Gathers what read hints need but a pull should not compute: the group's write rate, the
//! master's view of each slave (how far it holds committed entries, whether it is healthy) and
//! the recent read rate. One task owns the samples and publishes a snapshot on a watch channel
//! every tick; pulls only borrow the latest snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::decide::SlaveView;
use super::stats::ReadCounters;
use super::ReadHintSettings;
use crate::replication::{PeerState, ReplicaGroup};
use crate::store::MessageStore;

const TICK: Duration = Duration::from_millis(100);
/// The write rate is measured over this window.
const WRITE_WINDOW: Duration = Duration::from_secs(1);
/// The read rate shown in the status is measured over this window.
const READ_WINDOW: Duration = Duration::from_secs(5);
/// A slave counts as healthy if the master heard from it within this long. Raft clears its
/// "recently active" flag at every check-quorum round, so one sample is not enough.
const HEALTH_WINDOW: Duration = Duration::from_secs(2);
/// Longest the monitor waits for the Raft thread's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The latest measurements.
#[derive(Debug, Clone, Default)]
pub struct HintView {
    /// Bytes appended to the commit log per second, recently.
    pub write_bytes_per_sec: f64,
    pub loaded: bool,
    /// On the master: every other replica of the group. Empty elsewhere.
    pub slaves: Arc<[SlaveView]>,
    pub recent_messages_per_sec: f64,
}

/// Samples of a growing counter over a sliding window.
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn sample(&mut self, now: Instant, value: u64, window: Duration) -> f64 {
        self.samples.push_back((now, value));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.duration_since(t) >= window)
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => {
                // A truncated tail can move the position back; count that as no writes.
                v1.saturating_sub(v0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

pub(super) struct Monitor {
    pub settings: ReadHintSettings,
    pub store: MessageStore,
    pub group: Option<Arc<ReplicaGroup>>,
    pub counters: Arc<ReadCounters>,
    pub tx: watch::Sender<HintView>,
}

impl Monitor {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writes = Rate::default();
        let mut reads = Rate::default();
        let mut last_active: BTreeMap<u64, Instant> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = Instant::now();
            let write_bytes_per_sec =
                writes.sample(now, self.store.commit_log_range().1, WRITE_WINDOW);
            let recent_messages_per_sec = reads.sample(now, self.counters.messages(), READ_WINDOW);
            let limit = self.settings.write_pressure_bytes_per_sec;
            let slaves = match &self.group {
                Some(g) if g.master_state().is_master => {
                    self.slaves(g, now, &mut last_active).await
                }
                _ => {
                    last_active.clear();
                    Vec::new()
                }
            };
            self.tx.send_replace(HintView {
                write_bytes_per_sec,
                loaded: limit > 0 && write_bytes_per_sec >= limit as f64,
                slaves: slaves.into(),
                recent_messages_per_sec,
            });
        }
    }

    /// The master's view of the other replicas; empty when the status is unavailable.
    async fn slaves(
        &self,
        group: &ReplicaGroup,
        now: Instant,
        last_active: &mut BTreeMap<u64, Instant>,
    ) -> Vec<SlaveView> {
        let status = match tokio::time::timeout(STATUS_TIMEOUT, group.status()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "replica status unavailable for read hints");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        status
            .peers
            .iter()
            .filter(|p| p.id != group.id())
            .map(|p| {
                if p.recent_active {
                    last_active.insert(p.id, now);
                }
                let seen = last_active
                    .get(&p.id)
                    .is_some_and(|&t| now.duration_since(t) < HEALTH_WINDOW);
                // What the slave holds *and* may serve: a follower applies only committed
                // entries, so the match index is capped by the commit index.
                let index = p.matched.min(status.commit_index);
                let covered = if index == 0 {
                    0
                } else {
                    // Compacted or unknown here: nothing known to be covered.
                    self.store.entry_end_offset(index).unwrap_or(0)
                };
                SlaveView {
                    id: p.id,
                    covered,
                    healthy: seen && p.state == PeerState::Replicate,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_a_sliding_window() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        assert_eq!(r.sample(t0, 0, w), 0.0);
        let rate = r.sample(t0 + Duration::from_millis(500), 500, w);
        assert!((rate - 1000.0).abs() < 1e-6, "{rate}");
        let rate = r.sample(t0 + Duration::from_millis(1000), 1000, w);
        assert!((rate - 1000.0).abs() < 1e-6, "{rate}");
        // Old samples leave the window: only the idle second counts.
        let rate = r.sample(t0 + Duration::from_millis(2000), 1000, w);
        let rate2 = r.sample(t0 + Duration::from_millis(3000), 1000, w);
        assert!(rate < 1000.0 && rate2 == 0.0, "{rate} {rate2}");
        // Moving backwards (truncation) is not a negative rate.
        assert_eq!(r.sample(t0 + Duration::from_millis(3100), 10, w), 0.0);
    }
}
