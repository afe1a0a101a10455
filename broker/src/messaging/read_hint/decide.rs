//! The read-hint decision: where a consumer should pull a queue next. A pure function over a
//! small input, so every rule is unit-tested without I/O; the pull handler gathers the inputs.

use std::hash::{DefaultHasher, Hash, Hasher};

use sluice_proto::v1::ReadHintReason;

/// What the answering replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Master,
    /// A replica that is not the master; `leader` is the master it follows, if it knows one.
    Slave {
        leader: Option<u64>,
    },
}

/// The master's view of one other replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveView {
    pub id: u64,
    /// Commit-log position up to which the replica holds committed entries (its match index,
    /// capped by the commit index, mapped to the end of that entry).
    pub covered: u64,
    /// In contact with the master recently and being streamed entries.
    pub healthy: bool,
}

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct HintInput<'a> {
    pub me: u64,
    pub position: Position,
    pub slave_read_enable: bool,
    /// Bytes behind the log's end past which a reader counts as "far behind".
    pub behind_threshold: u64,
    /// The group is under write pressure (same measure on every replica: the replicated
    /// append rate).
    pub loaded: bool,
    /// Bytes between the readable end of the commit log and the first message returned; 0
    /// when the pull returned nothing.
    pub behind: u64,
    /// Commit-log end of the last message returned (a slave must hold at least this to take
    /// the next pull); `None` when nothing was returned.
    pub needed: Option<u64>,
    /// The replica does not have the requested offset yet (it is past its queue's end).
    pub lacks_offset: bool,
    /// Master only: the other replicas.
    pub slaves: &'a [SlaveView],
    /// Spreads queues over slaves (e.g. a hash of group, topic and queue).
    pub spread_key: u64,
}

/// The answer: pull next from `replica_id` (0: the group's master, whoever it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub replica_id: u64,
    pub reason: ReadHintReason,
}

impl Hint {
    /// True when the hint sends the consumer away from the replica that answered.
    pub fn redirects(&self, me: u64) -> bool {
        self.replica_id != me
    }
}

pub fn decide(i: &HintInput<'_>) -> Hint {
    match i.position {
        Position::Master => on_master(i),
        Position::Slave { leader } => on_slave(i, leader),
    }
}

fn on_master(i: &HintInput<'_>) -> Hint {
    let stay = |reason| Hint {
        replica_id: i.me,
        reason,
    };
    if !i.slave_read_enable {
        return stay(ReadHintReason::SlaveReadDisabled);
    }
    // Nothing returned: the consumer is at the end, where the master has the freshest data.
    let Some(needed) = i.needed else {
        return stay(ReadHintReason::Stay);
    };
    let reason = if i.behind > i.behind_threshold {
        ReadHintReason::ConsumerBehind
    } else if i.loaded {
        ReadHintReason::MasterLoaded
    } else {
        return stay(ReadHintReason::Stay);
    };
    match pick_slave(i.slaves, needed, i.spread_key) {
        Some(id) => Hint {
            replica_id: id,
            reason,
        },
        None => stay(ReadHintReason::NoSlaveReady),
    }
}

fn on_slave(i: &HintInput<'_>, leader: Option<u64>) -> Hint {
    let to_master = |reason| Hint {
        replica_id: leader.unwrap_or(0),
        reason,
    };
    if leader.is_none() || i.lacks_offset {
        return to_master(ReadHintReason::SlaveLagging);
    }
    if !i.slave_read_enable {
        return to_master(ReadHintReason::SlaveReadDisabled);
    }
    // Half the threshold on the way back, so a reader near the limit does not flap.
    let caught_up = i.behind <= i.behind_threshold / 2;
    if caught_up && !i.loaded {
        return to_master(ReadHintReason::CaughtUp);
    }
    Hint {
        replica_id: i.me,
        reason: ReadHintReason::Stay,
    }
}

/// Among healthy slaves that hold `needed`, the one with the highest score for this key
/// (rendezvous hashing): stable across pulls, spread over keys, and only the keys of a slave
/// that drops out move.
fn pick_slave(slaves: &[SlaveView], needed: u64, key: u64) -> Option<u64> {
    slaves
        .iter()
        .filter(|s| s.healthy && s.covered >= needed)
        .max_by_key(|s| (score(key, s.id), s.id))
        .map(|s| s.id)
}

fn score(key: u64, id: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (key, id).hash(&mut h);
    h.finish()
}

/// The spread key of a queue read by a group.
pub fn spread_key(group: &str, topic: &str, queue_id: u32) -> u64 {
    let mut h = DefaultHasher::new();
    (group, topic, queue_id).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReadHintReason as R;

    const SLAVES: [SlaveView; 2] = [
        SlaveView {
            id: 2,
            covered: 1_000,
            healthy: true,
        },
        SlaveView {
            id: 3,
            covered: 1_000,
            healthy: true,
        },
    ];

    fn master(behind: u64, needed: Option<u64>) -> HintInput<'static> {
        HintInput {
            me: 1,
            position: Position::Master,
            slave_read_enable: true,
            behind_threshold: 100,
            loaded: false,
            behind,
            needed,
            lacks_offset: false,
            slaves: &SLAVES,
            spread_key: 7,
        }
    }

    fn slave(behind: u64) -> HintInput<'static> {
        HintInput {
            me: 2,
            position: Position::Slave { leader: Some(1) },
            slaves: &[],
            ..master(behind, Some(500))
        }
    }

    fn hint(replica_id: u64, reason: ReadHintReason) -> Hint {
        Hint { replica_id, reason }
    }

    #[test]
    fn master_keeps_readers_near_the_end() {
        assert_eq!(decide(&master(50, Some(900))), hint(1, R::Stay));
        assert_eq!(decide(&master(100, Some(900))), hint(1, R::Stay));
        // Nothing returned: at the end, even with a zero threshold.
        let i = HintInput {
            behind_threshold: 0,
            ..master(0, None)
        };
        assert_eq!(decide(&i), hint(1, R::Stay));
    }

    #[test]
    fn master_sends_far_behind_readers_to_a_slave() {
        let h = decide(&master(101, Some(900)));
        assert_eq!(h.reason, R::ConsumerBehind);
        assert!([2, 3].contains(&h.replica_id));
        assert!(h.redirects(1));
        let zero = HintInput {
            behind_threshold: 0,
            ..master(1, Some(900))
        };
        assert_eq!(decide(&zero).reason, R::ConsumerBehind);
    }

    #[test]
    fn a_loaded_master_sends_readers_to_a_slave() {
        let i = HintInput {
            loaded: true,
            ..master(10, Some(900))
        };
        assert_eq!(decide(&i).reason, R::MasterLoaded);
        // Far behind wins as the reason when both hold.
        let i = HintInput {
            loaded: true,
            ..master(1_000, Some(900))
        };
        assert_eq!(decide(&i).reason, R::ConsumerBehind);
        // Loaded, but the reader is at the end: stays.
        let i = HintInput {
            loaded: true,
            ..master(0, None)
        };
        assert_eq!(decide(&i), hint(1, R::Stay));
    }

    #[test]
    fn only_healthy_slaves_that_hold_the_data_are_chosen() {
        let slaves = [
            SlaveView {
                id: 2,
                covered: 899,
                healthy: true,
            },
            SlaveView {
                id: 3,
                covered: 5_000,
                healthy: false,
            },
            SlaveView {
                id: 4,
                covered: 900,
                healthy: true,
            },
        ];
        for key in 0..50 {
            let i = HintInput {
                slaves: &slaves,
                spread_key: key,
                ..master(1_000, Some(900))
            };
            assert_eq!(decide(&i), hint(4, R::ConsumerBehind));
        }
        let i = HintInput {
            slaves: &slaves[..2],
            ..master(1_000, Some(900))
        };
        assert_eq!(decide(&i), hint(1, R::NoSlaveReady));
        let i = HintInput {
            slaves: &[],
            ..master(1_000, Some(900))
        };
        assert_eq!(decide(&i), hint(1, R::NoSlaveReady));
    }

    #[test]
    fn queues_spread_over_slaves_and_stick() {
        let mut counts = [0usize; 2];
        for q in 0..64 {
            let key = spread_key("g", "t", q);
            let i = HintInput {
                spread_key: key,
                ..master(1_000, Some(900))
            };
            let first = decide(&i).replica_id;
            assert_eq!(decide(&i).replica_id, first, "stable across pulls");
            counts[(first - 2) as usize] += 1;
        }
        assert!(counts[0] >= 16 && counts[1] >= 16, "spread: {counts:?}");
        // A slave dropping out moves only its own queues.
        let only3 = [SLAVES[1]];
        for q in 0..64 {
            let key = spread_key("g", "t", q);
            let both = decide(&HintInput {
                spread_key: key,
                ..master(1_000, Some(900))
            });
            let one = decide(&HintInput {
                spread_key: key,
                slaves: &only3,
                ..master(1_000, Some(900))
            });
            assert_eq!(one.replica_id, 3);
            if both.replica_id == 3 {
                assert_eq!(one, both);
            }
        }
    }

    #[test]
    fn disabled_switch_keeps_reads_on_the_master() {
        let i = HintInput {
            slave_read_enable: false,
            loaded: true,
            ..master(1_000, Some(900))
        };
        assert_eq!(decide(&i), hint(1, R::SlaveReadDisabled));
        let i = HintInput {
            slave_read_enable: false,
            ..slave(1_000)
        };
        assert_eq!(decide(&i), hint(1, R::SlaveReadDisabled));
    }

    #[test]
    fn slave_keeps_far_behind_readers() {
        assert_eq!(decide(&slave(1_000)), hint(2, R::Stay));
        assert!(!decide(&slave(1_000)).redirects(2));
        // Between half the threshold and the threshold: still stays (hysteresis).
        assert_eq!(decide(&slave(51)), hint(2, R::Stay));
    }

    #[test]
    fn slave_sends_caught_up_readers_back_unless_the_master_is_loaded() {
        assert_eq!(decide(&slave(50)), hint(1, R::CaughtUp));
        assert_eq!(decide(&slave(0)), hint(1, R::CaughtUp));
        let i = HintInput {
            loaded: true,
            ..slave(0)
        };
        assert_eq!(decide(&i), hint(2, R::Stay));
    }

    #[test]
    fn lagging_slave_sends_readers_to_the_master() {
        let i = HintInput {
            lacks_offset: true,
            loaded: true,
            ..slave(1_000)
        };
        assert_eq!(decide(&i), hint(1, R::SlaveLagging));
        // Not following any master (cut off, electing): "the master", whoever it is.
        let i = HintInput {
            position: Position::Slave { leader: None },
            ..slave(1_000)
        };
        assert_eq!(decide(&i), hint(0, R::SlaveLagging));
    }
}
