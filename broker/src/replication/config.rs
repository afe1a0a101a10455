//! Configuration of one replica (one member of a replica group).

use std::collections::HashSet;
use std::time::Duration;

/// When a proposal is answered (broker config `ack = "quorum" | "leader"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// After the entry is committed (stored on a quorum of voters) and applied locally.
    /// Nothing acknowledged this way is lost while a quorum survives.
    #[default]
    Quorum,
    /// Right after the leader has persisted the entry locally. Faster, but an acknowledged
    /// entry is lost if the leader dies before replicating it and a new leader overwrites it.
    Leader,
}

impl AckPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AckPolicy::Quorum => "quorum",
            AckPolicy::Leader => "leader",
        }
    }
}

/// Why a [`ReplicaConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid replica config: {0}")]
pub struct ConfigError(pub String);

/// Settings of one replica. Ids are the group-local Raft ids of the brokers (non-zero).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id.
    pub id: u64,
    /// Voting members (3 or 5 in production; any non-empty set is accepted).
    pub voters: Vec<u64>,
    /// Non-voting members: they receive the log but never vote or lead.
    pub learners: Vec<u64>,
    /// Wall-clock length of one tick, used by [`super::ReplicaNode::spawn`].
    pub tick_interval: Duration,
    /// A follower that hears nothing from a leader for a random number of ticks in
    /// `[election_ticks, max_election_ticks)` starts an election; a leader that has not heard
    /// from a quorum within `election_ticks` steps down (check-quorum).
    pub election_ticks: usize,
    /// Exclusive upper bound of the randomised election timeout.
    pub max_election_ticks: usize,
    /// The leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// Pre-vote: a node only increments its term after learning it could win, so a node that
    /// was cut off cannot depose a healthy leader when it rejoins.
    pub pre_vote: bool,
    /// Check-quorum: a leader that loses contact with a quorum steps down on its own.
    pub check_quorum: bool,
    /// Upper bound of the entry bytes in one append message.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower before the leader waits for acks.
    pub max_inflight_msgs: usize,
    /// Uncommitted bytes the leader accepts before refusing proposals (back-pressure).
    pub max_uncommitted_size: u64,
    /// When proposals are answered.
    pub ack_policy: AckPolicy,
    /// Seed of the election-timeout randomisation; `None` draws one from the OS. Fix it to
    /// replay a simulated run exactly.
    pub rng_seed: Option<u64>,
}

impl ReplicaConfig {
    /// Defaults for a replica: 100 ms ticks, elections after 1-2 s of silence, heartbeats
    /// every tick, pre-vote and check-quorum on, quorum acks.
    pub fn new(id: u64, voters: Vec<u64>, learners: Vec<u64>) -> Self {
        ReplicaConfig {
            id,
            voters,
            learners,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            max_election_ticks: 20,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 256 * 1024 * 1024,
            ack_policy: AckPolicy::Quorum,
            rng_seed: None,
        }
    }

    /// True when this replica is a learner.
    pub fn is_learner(&self) -> bool {
        self.learners.contains(&self.id)
    }

    /// Checks the settings; every error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.id == 0 {
            return err("id must be non-zero".into());
        }
        if self.voters.is_empty() {
            return err("voters must not be empty".into());
        }
        let mut seen = HashSet::new();
        for &id in self.voters.iter().chain(self.learners.iter()) {
            if id == 0 {
                return err("member ids must be non-zero".into());
            }
            if !seen.insert(id) {
                return err(format!(
                    "member {id} is listed twice (voters and learners must be disjoint)"
                ));
            }
        }
        if !seen.contains(&self.id) {
            return err(format!("id {} is neither a voter nor a learner", self.id));
        }
        if self.tick_interval.is_zero() {
            return err("tick_interval must be positive".into());
        }
        if self.heartbeat_ticks == 0 {
            return err("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return err(format!(
                "election_ticks ({}) must exceed heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.max_election_ticks <= self.election_ticks {
            return err(format!(
                "max_election_ticks ({}) must exceed election_ticks ({})",
                self.max_election_ticks, self.election_ticks
            ));
        }
        if self.max_inflight_msgs == 0 {
            return err("max_inflight_msgs must be at least 1".into());
        }
        if self.max_size_per_msg == 0 {
            return err("max_size_per_msg must be positive".into());
        }
        if self.max_uncommitted_size == 0 {
            return err("max_uncommitted_size must be positive".into());
        }
        self.to_raft_config(0)
            .validate()
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// The raft-rs configuration, starting from applied index `applied`.
    pub(crate) fn to_raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            min_election_tick: self.election_ticks,
            max_election_tick: self.max_election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            max_uncommitted_size: self.max_uncommitted_size,
            ..raft::Config::default()
        }
    }

    /// The membership a fresh log is bootstrapped with.
    pub(crate) fn conf_state(&self) -> raft::prelude::ConfState {
        raft::prelude::ConfState {
            voters: sorted(&self.voters),
            learners: sorted(&self.learners),
            ..Default::default()
        }
    }
}

pub(crate) fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ReplicaConfig::new(1, vec![1, 2, 3], vec![4])
            .validate()
            .unwrap();
        ReplicaConfig::new(4, vec![1, 2, 3], vec![4])
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_bad_membership_and_timing() {
        let bad = |f: &dyn Fn(&mut ReplicaConfig)| {
            let mut c = ReplicaConfig::new(1, vec![1, 2, 3], vec![]);
            f(&mut c);
            c.validate().unwrap_err().0
        };
        assert!(bad(&|c| c.id = 0).contains("non-zero"));
        assert!(bad(&|c| c.id = 9).contains("neither"));
        assert!(bad(&|c| c.voters.clear()).contains("voters"));
        assert!(bad(&|c| c.learners = vec![3]).contains("twice"));
        assert!(bad(&|c| c.voters = vec![1, 0]).contains("non-zero"));
        assert!(bad(&|c| c.election_ticks = 1).contains("election_ticks"));
        assert!(bad(&|c| c.max_election_ticks = 10).contains("max_election_ticks"));
        assert!(bad(&|c| c.heartbeat_ticks = 0).contains("heartbeat"));
        assert!(bad(&|c| c.max_inflight_msgs = 0).contains("inflight"));
        assert!(bad(&|c| c.tick_interval = Duration::ZERO).contains("tick"));
    }
}
