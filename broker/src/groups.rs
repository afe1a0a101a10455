//! Live members of consumer groups, fed by consumer heartbeats. Clients compute their queue
//! assignment from the sorted member list (rebalancing is client-side, as in RocketMQ).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct ConsumerGroups {
    expiry: Duration,
    /// group -> client id -> (last heartbeat, subscribed topics)
    groups: Mutex<HashMap<String, BTreeMap<String, Member>>>,
}

struct Member {
    last_seen: Instant,
    topics: Vec<String>,
    orderly: bool,
}

/// A group with live members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGroup {
    pub name: String,
    /// Sorted client ids.
    pub members: Vec<String>,
    /// Sorted topics they subscribe to.
    pub topics: Vec<String>,
    /// Some member consumes orderly.
    pub orderly: bool,
}

impl ConsumerGroups {
    pub fn new(expiry: Duration) -> Self {
        ConsumerGroups {
            expiry,
            groups: Mutex::new(HashMap::new()),
        }
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    pub fn heartbeat(
        &self,
        group: &str,
        client_id: &str,
        topics: Vec<String>,
        orderly: bool,
        now: Instant,
    ) {
        self.groups
            .lock()
            .entry(group.to_string())
            .or_default()
            .insert(
                client_id.to_string(),
                Member {
                    last_seen: now,
                    topics,
                    orderly,
                },
            );
    }

    pub fn unregister(&self, group: &str, client_id: &str) {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get_mut(group) {
            g.remove(client_id);
            if g.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// Sorted ids of members heard from within the expiry.
    pub fn members(&self, group: &str, now: Instant) -> Vec<String> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return Vec::new();
        };
        g.retain(|_, m| now.saturating_duration_since(m.last_seen) < self.expiry);
        g.keys().cloned().collect()
    }

    /// Every group with a live member, sorted by name.
    pub fn live(&self, now: Instant) -> Vec<LiveGroup> {
        let names: Vec<String> = self.groups.lock().keys().cloned().collect();
        let mut out: Vec<LiveGroup> = names
            .into_iter()
            .map(|g| {
                let members = self.members(&g, now);
                let topics = self.topics(&g, now);
                let orderly = self.groups.lock().get(&g).is_some_and(|ms| {
                    ms.values().any(|m| {
                        m.orderly && now.saturating_duration_since(m.last_seen) < self.expiry
                    })
                });
                LiveGroup {
                    name: g,
                    members,
                    topics,
                    orderly,
                }
            })
            .filter(|g| !g.members.is_empty())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Topics the live members of a group subscribe to.
    pub fn topics(&self, group: &str, now: Instant) -> Vec<String> {
        let groups = self.groups.lock();
        let mut t: Vec<String> = groups
            .get(group)
            .map(|g| {
                g.values()
                    .filter(|m| now.saturating_duration_since(m.last_seen) < self.expiry)
                    .flat_map(|m| m.topics.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t.dedup();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_expire_and_unregister() {
        let g = ConsumerGroups::new(Duration::from_secs(10));
        let t0 = Instant::now();
        g.heartbeat("g", "b", vec!["t".into()], false, t0);
        g.heartbeat(
            "g",
            "a",
            vec!["t".into()],
            true,
            t0 + Duration::from_secs(5),
        );
        assert!(g.live(t0 + Duration::from_secs(6))[0].orderly);
        assert_eq!(g.members("g", t0 + Duration::from_secs(6)), vec!["a", "b"]);
        assert_eq!(g.members("g", t0 + Duration::from_secs(11)), vec!["a"]);
        g.unregister("g", "a");
        assert!(g.members("g", t0 + Duration::from_secs(11)).is_empty());
        assert!(g.members("unknown", t0).is_empty());
    }
}
