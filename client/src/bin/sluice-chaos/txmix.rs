//! Transactions under attack: a share of the messages is sent in a transaction, which its
//! producer commits, rolls back, or abandons for the checker (which commits or rolls it back by
//! what the message says). The audit: a committed message is an ordinary acknowledged one (the
//! main ledger checks it was consumed once); a rolled-back one is never delivered; an abandoned
//! one is delivered exactly when the checker commits it.

use std::collections::HashMap;

use rand::Rng;
use serde::Serialize;
use sluice_client::{CheckedTransaction, Resolution};

use crate::features::Kind;
use crate::ledger::MsgId;

/// What happens to a transaction's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fate {
    Commit,
    Rollback,
    /// Left open; the checker commits it.
    AbandonCommit,
    /// Left open; the checker rolls it back.
    AbandonRollback,
}

impl Fate {
    pub fn tag(self) -> &'static str {
        match self {
            Fate::Commit => "tc",
            Fate::Rollback => "tr",
            Fate::AbandonCommit => "tac",
            Fate::AbandonRollback => "tar",
        }
    }

    pub fn of_tag(tag: &str) -> Option<Fate> {
        Some(match tag {
            "tc" => Fate::Commit,
            "tr" => Fate::Rollback,
            "tac" => Fate::AbandonCommit,
            "tar" => Fate::AbandonRollback,
            _ => return None,
        })
    }

    pub fn draw() -> Fate {
        match rand::thread_rng().gen_range(0..100) {
            0..=49 => Fate::Commit,
            50..=69 => Fate::Rollback,
            70..=84 => Fate::AbandonCommit,
            _ => Fate::AbandonRollback,
        }
    }

    /// Whether the message is to become visible.
    pub fn visible(self) -> bool {
        matches!(self, Fate::Commit | Fate::AbandonCommit)
    }
}

/// The chaos producers' checker: what the message says.
pub fn checker(run: String) -> impl Fn(&CheckedTransaction) -> Resolution + Send + Sync + 'static {
    move |tx| match tx.messages.first().map(|m| Kind::of(&run, &m.body)) {
        Some(Kind::Tx(f)) if f.visible() => Resolution::Commit,
        Some(Kind::Tx(_)) => Resolution::Rollback,
        _ => Resolution::Unknown,
    }
}

/// What was recorded about transactions' messages.
#[derive(Debug, Default)]
pub struct TxTracker {
    /// Acknowledged half messages of rolled-back and abandoned transactions, by fate.
    pub expected: HashMap<MsgId, Fate>,
    /// Deliveries of such messages.
    pub delivered: HashMap<MsgId, u32>,
    pub committed: u64,
    pub commit_failed: u64,
}

impl TxTracker {
    /// Abandoned-for-commit messages not delivered yet.
    pub fn pending(&self) -> u64 {
        self.expected
            .iter()
            .filter(|(id, f)| **f == Fate::AbandonCommit && !self.delivered.contains_key(*id))
            .count() as u64
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct TxFindings {
    pub tx_committed: u64,
    pub tx_commit_failed: u64,
    pub tx_rolled_back: u64,
    pub tx_abandoned: u64,
    /// Rolled back (by the producer or the checker) and delivered all the same.
    pub tx_rolled_back_delivered: u64,
    /// Abandoned, committed by the checker, never delivered.
    pub tx_abandoned_lost: u64,
}

impl TxFindings {
    pub fn violations(&self) -> u64 {
        self.tx_rolled_back_delivered + self.tx_abandoned_lost
    }
}

pub fn check(t: &TxTracker, sample: &mut dyn FnMut(&str, String)) -> TxFindings {
    let mut f = TxFindings {
        tx_committed: t.committed,
        tx_commit_failed: t.commit_failed,
        ..TxFindings::default()
    };
    let mut ids: Vec<(&MsgId, &Fate)> = t.expected.iter().collect();
    ids.sort();
    for (id, fate) in ids {
        let seen = t.delivered.get(id).copied().unwrap_or(0);
        match fate {
            Fate::Rollback => f.tx_rolled_back += 1,
            _ => f.tx_abandoned += 1,
        }
        if fate.visible() && seen == 0 {
            f.tx_abandoned_lost += 1;
            sample("tx_abandoned_lost", format!("{id}"));
        }
        if !fate.visible() && seen > 0 {
            f.tx_rolled_back_delivered += 1;
            sample(
                "tx_rolled_back_delivered",
                format!("{id} ({fate:?}) delivered {seen} times"),
            );
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MsgId {
        MsgId { producer: 1, seq }
    }

    #[test]
    fn tags_round_trip_and_the_checker_follows_the_fate() {
        for f in [
            Fate::Commit,
            Fate::Rollback,
            Fate::AbandonCommit,
            Fate::AbandonRollback,
        ] {
            assert_eq!(Fate::of_tag(f.tag()), Some(f));
            let body = id(7).body_tagged("run", f.tag(), 64);
            assert_eq!(Kind::of("run", &body), Kind::Tx(f));
            let checked = CheckedTransaction {
                transaction_id: "t".into(),
                producer_group: "g".into(),
                check: 1,
                created_ms: 0,
                messages: vec![sluice_proto::v1::StoredMessage {
                    body: body.into(),
                    ..Default::default()
                }],
            };
            let want = if f.visible() {
                Resolution::Commit
            } else {
                Resolution::Rollback
            };
            assert_eq!(checker("run".into())(&checked), want);
        }
    }

    #[test]
    fn rolled_back_deliveries_and_lost_abandoned_commits_are_violations() {
        let mut t = TxTracker::default();
        t.expected.insert(id(1), Fate::Rollback);
        t.expected.insert(id(2), Fate::AbandonCommit);
        t.expected.insert(id(3), Fate::AbandonRollback);
        t.expected.insert(id(4), Fate::AbandonCommit);
        t.delivered.insert(id(4), 1);
        assert_eq!(t.pending(), 1);
        let mut samples = Vec::new();
        let f = check(&t, &mut |k: &str, v: String| {
            samples.push((k.to_string(), v))
        });
        assert_eq!((f.tx_rolled_back, f.tx_abandoned), (1, 3));
        assert_eq!((f.tx_abandoned_lost, f.tx_rolled_back_delivered), (1, 0));
        t.delivered.insert(id(1), 2);
        t.delivered.insert(id(2), 1);
        let f = check(&t, &mut |_: &str, _: String| {});
        assert_eq!((f.tx_abandoned_lost, f.tx_rolled_back_delivered), (0, 1));
        assert_eq!(f.violations(), 1);
    }
}
