//! The dashboard's history: every interval the sampler asks the cluster for each topic's
//! stored messages and each group's lag, and publishes the last samples. It is the only
//! writer; pages read the latest published history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sluice_client::time::now_ms;
use sluice_client::Admin;
use tokio::sync::watch;

/// One look at the cluster.
#[derive(Debug, Default)]
pub struct Sample {
    pub at_ms: i64,
    /// Per topic: the sum of its queues' max offsets (messages ever stored).
    pub topics: BTreeMap<String, u64>,
    /// Per group: lag per queue (`topic broker:queue`) and in total.
    pub groups: BTreeMap<String, GroupSample>,
}

#[derive(Debug, Default)]
pub struct GroupSample {
    pub total_lag: u64,
    pub queues: BTreeMap<String, u64>,
}

/// The newest samples, oldest first.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub samples: VecDeque<Arc<Sample>>,
}

impl History {
    /// One topic's rate in messages a second between consecutive samples: (time, rate).
    pub fn topic_rates(&self, topic: &str) -> Vec<(i64, f64)> {
        self.rates(|p, s| Some(grown(p.topics.get(topic)?, s.topics.get(topic)?)))
    }

    /// All topics' stored messages a second: the growth of each topic both samples could
    /// read (a topic missing from one, or a sample that read none, is not a burst or a drop).
    pub fn total_rates(&self) -> Vec<(i64, f64)> {
        self.rates(|p, s| {
            let both = s
                .topics
                .iter()
                .filter_map(|(t, v)| Some(grown(p.topics.get(t)?, v)));
            (!p.topics.is_empty() && !s.topics.is_empty()).then(|| both.sum())
        })
    }

    /// Per pair of consecutive samples, the growth `delta` gives (None: a gap) per second.
    fn rates(&self, delta: impl Fn(&Sample, &Sample) -> Option<u64>) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        for (p, s) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            let secs = (s.at_ms - p.at_ms) as f64 / 1000.0;
            if let Some(d) = delta(p, s).filter(|_| secs > 0.0) {
                out.push((s.at_ms, d as f64 / secs));
            }
        }
        out
    }

    /// A group's total lag over time.
    pub fn group_lag(&self, group: &str) -> Vec<(i64, f64)> {
        self.samples
            .iter()
            .filter_map(|s| s.groups.get(group).map(|g| (s.at_ms, g.total_lag as f64)))
            .collect()
    }

    /// A group's lag per queue over time, the `max` queues with the most lag now.
    pub fn queue_lags(&self, group: &str, max: usize) -> Vec<(String, Vec<(i64, f64)>)> {
        let Some(last) = self.samples.back().and_then(|s| s.groups.get(group)) else {
            return Vec::new();
        };
        let mut names: Vec<(&String, &u64)> = last.queues.iter().collect();
        names.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        names
            .into_iter()
            .take(max)
            .map(|(q, _)| {
                let points = self
                    .samples
                    .iter()
                    .filter_map(|s| {
                        let lag = s.groups.get(group)?.queues.get(q)?;
                        Some((s.at_ms, *lag as f64))
                    })
                    .collect();
                (q.clone(), points)
            })
            .collect()
    }
}

/// Samples every `interval`, keeping `keep` samples, until the receiver side is gone.
pub async fn run(admin: Admin, interval: Duration, keep: usize, tx: watch::Sender<Arc<History>>) {
    let mut history = History::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sample = take(&admin).await;
        history.samples.push_back(Arc::new(sample));
        while history.samples.len() > keep.max(2) {
            history.samples.pop_front();
        }
        if tx.send(Arc::new(history.clone())).is_err() {
            return;
        }
    }
}

/// One sample; what cannot be read this time is left out (a chart shows a gap).
async fn take(admin: &Admin) -> Sample {
    let mut s = Sample {
        at_ms: now_ms(),
        ..Sample::default()
    };
    if let Ok(topics) = admin.list_topics().await {
        for t in topics {
            if let Ok(queues) = admin.topic_queues(&t).await {
                s.topics
                    .insert(t, queues.iter().map(|q| q.max_offset).sum());
            }
        }
    }
    if let Ok(groups) = admin.list_groups().await {
        for g in groups {
            if let Ok(d) = admin.describe_group(&g.group).await {
                let queues = d
                    .queues
                    .iter()
                    .map(|q| (queue_name(&q.topic, &q.broker_name, q.queue_id), q.lag))
                    .collect();
                s.groups.insert(
                    g.group,
                    GroupSample {
                        total_lag: d.total_lag,
                        queues,
                    },
                );
            }
        }
    }
    s
}

/// Messages stored between two readings of a counter (a topic deleted and created again
/// starts over: no negative growth).
fn grown(before: &u64, after: &u64) -> u64 {
    after.saturating_sub(*before)
}

pub fn queue_name(topic: &str, broker: &str, queue: u32) -> String {
    format!("{topic} {broker}:{queue}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, stored: u64, lag: &[(&str, u64)]) -> Arc<Sample> {
        let mut s = Sample {
            at_ms,
            ..Sample::default()
        };
        s.topics.insert("t".into(), stored);
        s.groups.insert(
            "g".into(),
            GroupSample {
                total_lag: lag.iter().map(|(_, l)| l).sum(),
                queues: lag.iter().map(|(q, l)| (q.to_string(), *l)).collect(),
            },
        );
        Arc::new(s)
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_never_go_negative() {
        let h = History {
            samples: [
                sample(1_000, 10, &[("a", 5), ("b", 1)]),
                sample(3_000, 30, &[("a", 2), ("b", 9)]),
                sample(4_000, 5, &[("a", 0), ("b", 7)]),
            ]
            .into(),
        };
        assert_eq!(h.topic_rates("t"), vec![(3_000, 10.0), (4_000, 0.0)]);
        assert_eq!(h.total_rates(), h.topic_rates("t"));
        // A sample that read no topics is a gap, not a burst after it.
        let mut blind = History {
            samples: h.samples.clone(),
        };
        blind.samples.insert(
            1,
            Arc::new(Sample {
                at_ms: 2_000,
                ..Sample::default()
            }),
        );
        assert_eq!(blind.total_rates(), vec![(4_000, 0.0)]);
        assert!(h.topic_rates("missing").is_empty());
        assert_eq!(
            h.group_lag("g"),
            vec![(1_000, 6.0), (3_000, 11.0), (4_000, 7.0)]
        );
        let by_queue = h.queue_lags("g", 1);
        assert_eq!(by_queue.len(), 1);
        assert_eq!(by_queue[0].0, "b", "the queue with the most lag now");
        assert_eq!(
            by_queue[0].1,
            vec![(1_000, 1.0), (3_000, 9.0), (4_000, 7.0)]
        );
    }
}
