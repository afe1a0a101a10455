//! Raft replica-group scenarios on the simulated cluster: elections, failover, log repair,
//! learners, snapshots, hostile input, ack policies, determinism.

mod raft_sim;

use bytes::Bytes;
use raft::prelude::{Entry, Message, MessageType};
use raft::Storage;
use raft_sim::{Cluster, SimOptions};
use rand::Rng;
use sluice_broker::replication::{
    encode_message, AckPolicy, EntryKind, ProposeError, Role, StepError,
};

fn data(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Proposes on the master and waits until it is answered.
fn commit(c: &mut Cluster, s: &str) -> sluice_broker::replication::EntryId {
    let master = c.await_master(10_000);
    let t = c.propose(master, data(s));
    c.run_until(5_000, |c| c.outcome(t).is_some());
    match c.outcome(t) {
        Some(Ok(id)) => *id,
        other => panic!(
            "seed {}: proposal {s} on {master} ended as {other:?}",
            c.seed
        ),
    }
}

fn applied_everywhere(c: &Cluster, index: u64) -> bool {
    c.up_ids().iter().all(|&id| c.recorder(id).applied >= index)
}

#[test]
fn three_voters_elect_one_master_and_replicate() {
    let mut c = Cluster::new(1, &[1, 2, 3], &[], SimOptions::default());
    // A fresh leader is not master until its no-op entry has committed and been applied.
    c.run_until(5_000, |c| !c.leaders().is_empty())
        .expect("no leader");
    let first = c.leaders()[0];
    let r = c.role(first).unwrap();
    assert!(!r.master_ready && c.recorder(first).applied == 0, "{r:?}");
    let master = c.await_master(5_000);
    assert_eq!(master, first);
    assert_eq!(c.leaders(), vec![master]);
    c.run_until(1_000, |c| {
        c.ids()
            .iter()
            .all(|&id| c.role(id).unwrap().leader_id == Some(master))
    })
    .expect("followers did not learn the leader");
    for id in c.ids() {
        let r = c.role(id).unwrap();
        assert_eq!(r.leader_id, Some(master), "{r:?}");
        assert_eq!(r.master_ready, id == master);
    }
    let ids: Vec<_> = (0..10).map(|i| commit(&mut c, &format!("m{i}"))).collect();
    assert!(ids.windows(2).all(|w| w[1].index == w[0].index + 1));
    let last = ids.last().unwrap().index;
    assert!(c
        .run_until(2_000, |c| applied_everywhere(c, last))
        .is_some());
    let global = c.check_safety().unwrap();
    // Index 1 is the first leader's no-op.
    assert_eq!(global[&1].1, Bytes::new());
    for id in c.ids() {
        let kinds: Vec<_> = c.recorder(id).entries.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[0], EntryKind::LeaderNoop);
        assert_eq!(
            kinds.iter().filter(|k| **k == EntryKind::Normal).count(),
            10
        );
    }
    // The leader's view of its peers: everyone caught up.
    let status = c.node(master).unwrap().status();
    assert_eq!(status.peers.len(), 3);
    assert!(status.peers.iter().all(|p| p.matched == last), "{status:?}");
    assert!(c.node(master).unwrap().store().sync_count() > 0);
    assert!(c.step_errors.is_empty(), "{:?}", c.step_errors);
}

#[test]
fn a_single_voter_commits_alone() {
    let mut c = Cluster::new(2, &[1], &[], SimOptions::default());
    let id = commit(&mut c, "solo");
    assert_eq!(id.index, 2);
    c.check_safety().unwrap();
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut c = Cluster::new(3, &[1, 2, 3], &[], SimOptions::default());
    let master = c.await_master(5_000);
    let follower = c.ids().into_iter().find(|&id| id != master).unwrap();
    let t = c.propose(follower, data("x"));
    assert_eq!(
        c.outcome(t),
        Some(&Err(ProposeError::NotLeader {
            leader_id: Some(master)
        }))
    );
    let t = c.propose(master, Bytes::new());
    assert!(matches!(c.outcome(t), Some(Err(ProposeError::Dropped(_)))));
}

#[test]
fn isolated_leader_steps_down_cannot_commit_and_rejoins() {
    let mut c = Cluster::new(4, &[1, 2, 3, 4, 5], &[], SimOptions::default());
    commit(&mut c, "before");
    let old = c.master().unwrap();
    let old_term = c.role(old).unwrap().term;
    c.isolate(old);
    let stuck = c.propose(old, data("stuck"));

    let failover = c
        .run_until(5_000, |c| c.master().is_some_and(|m| m != old))
        .expect("no new master after isolating the leader");
    let new = c.master().unwrap();
    assert!(c.role(new).unwrap().term > old_term);
    // Election timeout is 10-20 ticks of 100 ms, plus a few message delays.
    assert!(failover <= 2_200, "failover took {failover} ms");

    // Check-quorum: the old leader gives up within two election timeouts of silence.
    c.run_until(2_100, |c| c.role(old).unwrap().role != Role::Leader)
        .expect("isolated leader did not step down");
    assert!(matches!(
        c.outcome(stuck),
        Some(Err(ProposeError::LeadershipLost { .. }))
    ));
    let t = c.propose(old, data("late"));
    assert!(matches!(
        c.outcome(t),
        Some(Err(ProposeError::NotLeader { .. }))
    ));

    let after = commit(&mut c, "after");
    c.heal();
    assert!(c
        .run_until(3_000, |c| applied_everywhere(c, after.index))
        .is_some());
    let r = c.role(old).unwrap();
    assert_eq!((r.role, r.leader_id), (Role::Follower, Some(new)));
    let global = c.check_safety().unwrap();
    assert!(global.values().all(|(_, d)| d != &data("stuck")));
}

#[test]
fn a_deposed_leaders_uncommitted_tail_is_truncated() {
    let mut c = Cluster::new(5, &[1, 2, 3], &[], SimOptions::default());
    let base = commit(&mut c, "base");
    let old = c.master().unwrap();
    c.isolate(old);
    let doomed: Vec<_> = (0..5)
        .map(|i| c.propose(old, data(&format!("doomed{i}"))))
        .collect();
    let old_store = c.node(old).unwrap().store();
    let old_last = old_store.last_index().unwrap();
    assert_eq!(
        old_last,
        base.index + 5,
        "the isolated leader appended locally"
    );

    c.run_until(5_000, |c| c.master().is_some_and(|m| m != old))
        .expect("no new master");
    let winners: Vec<_> = (0..3).map(|i| commit(&mut c, &format!("new{i}"))).collect();
    let new_term = winners[0].term;
    c.heal();
    let last = winners.last().unwrap().index;
    assert!(c
        .run_until(5_000, |c| applied_everywhere(c, last))
        .is_some());

    // The old leader's tail now holds the new leader's entries.
    let store = c.node(old).unwrap().store();
    for idx in base.index + 1..=last {
        assert!(
            store.term(idx).unwrap() >= new_term,
            "index {idx} kept a stale entry"
        );
    }
    for t in doomed {
        assert!(
            matches!(
                c.outcome(t),
                Some(Err(
                    ProposeError::LeadershipLost { .. } | ProposeError::Overwritten { .. }
                ))
            ),
            "{:?}",
            c.outcome(t)
        );
    }
    let global = c.check_safety().unwrap();
    assert!(global.values().all(|(_, d)| !d.starts_with(b"doomed")));
}

#[test]
fn learners_replicate_but_never_vote() {
    let mut c = Cluster::new(6, &[1, 2, 3], &[4], SimOptions::default());
    let master = c.await_master(5_000);
    assert_ne!(master, 4);
    assert!(c.role(4).unwrap().is_learner);
    let id = commit(&mut c, "to-learner");
    assert!(c
        .run_until(2_000, |c| c.recorder(4).applied >= id.index)
        .is_some());
    let status = c.node(master).unwrap().status();
    let learner = status.peers.iter().find(|p| p.id == 4).unwrap();
    assert!(learner.is_learner);

    // Without a voter quorum nobody leads, and the learner never even campaigns.
    let others: Vec<_> = [1, 2, 3].into_iter().filter(|&v| v != master).collect();
    c.crash(others[0]);
    c.crash(master);
    for _ in 0..100 {
        c.run_for(100);
        let r = c.role(4).unwrap();
        assert_eq!(r.role, Role::Follower, "learner changed role: {r:?}");
        assert!(c.master().is_none());
    }
    c.restart(master);
    c.restart(others[0]);
    let again = commit(&mut c, "after-restart");
    assert!(c
        .run_until(2_000, |c| c.recorder(4).applied >= again.index)
        .is_some());
    c.check_safety().unwrap();
}

#[test]
fn a_restarted_cluster_keeps_every_committed_entry() {
    let mut c = Cluster::new(7, &[1, 2, 3], &[], SimOptions::default());
    let ids: Vec<_> = (0..5).map(|i| commit(&mut c, &format!("k{i}"))).collect();
    for id in c.ids() {
        c.crash(id);
    }
    c.run_for(1_000);
    for id in c.ids() {
        c.restart(id);
    }
    let later = commit(&mut c, "later");
    assert!(later.index > ids.last().unwrap().index);
    assert!(c
        .run_until(2_000, |c| applied_everywhere(c, later.index))
        .is_some());
    c.check_safety().unwrap();
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_from_a_snapshot() {
    let mut c = Cluster::new(8, &[1, 2, 3], &[], SimOptions::default());
    let master = c.await_master(5_000);
    let lagger = c.ids().into_iter().find(|&id| id != master).unwrap();
    c.crash(lagger);
    let ids: Vec<_> = (0..20).map(|i| commit(&mut c, &format!("s{i}"))).collect();
    let upto = ids[15].index;
    for id in c.up_ids() {
        let node = c.node_mut(id).unwrap();
        node.compact(upto).unwrap();
        assert_eq!(node.status().first_index, upto);
    }
    // Compacting past what was applied is refused.
    let err = c.node_mut(master).unwrap().compact(1_000).unwrap_err();
    assert!(err.to_string().contains("applied"), "{err}");

    c.restart(lagger);
    let last = commit(&mut c, "after-snapshot");
    assert!(c
        .run_until(3_000, |c| c.recorder(lagger).applied >= last.index)
        .is_some());
    let rec = c.recorder(lagger);
    assert_eq!(rec.snapshots, vec![(upto - 1, ids[0].term)]);
    assert_eq!(rec.entries.last().unwrap().data, data("after-snapshot"));
    c.check_safety().unwrap();
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

#[test]
fn garbage_and_malformed_messages_are_refused_without_harm() {
    let mut c = Cluster::new(9, &[1, 2, 3], &[], SimOptions::default());
    let base = commit(&mut c, "base");
    let master = c.master().unwrap();
    let follower = c.ids().into_iter().find(|&id| id != master).unwrap();
    let term = c.role(follower).unwrap().term;
    let node = c.node_mut(follower).unwrap();
    let enc = |m: &Message| encode_message(m).unwrap();

    assert!(matches!(
        node.step(&bytes::Bytes::from_static(b"\xff\xff\xff garbage")),
        Err(StepError::Decode(_))
    ));
    assert!(matches!(
        node.step(&enc(&message(MessageType::MsgHeartbeat, 9, follower, term))),
        Err(StepError::UnknownSender { from: 9 })
    ));
    assert!(matches!(
        node.step(&enc(&message(MessageType::MsgHeartbeat, master, 7, term))),
        Err(StepError::WrongRecipient { .. })
    ));
    // A member's batch carrying a message in another member's name (a holder of one
    // replica's certificate posing as another): refused; under its own name it is taken.
    let third = 6 - master - follower;
    let forged = enc(&message(MessageType::MsgHeartbeat, master, follower, term));
    assert!(matches!(
        node.step_from(&forged, Some(third)),
        Err(StepError::ForgedSender { from, sender }) if from == master && sender == third
    ));
    assert!(node.step_from(&forged, Some(master)).is_ok());
    assert!(matches!(
        node.step(&enc(&message(MessageType::MsgHup, master, follower, 0))),
        Err(StepError::UnexpectedType(MessageType::MsgHup))
    ));
    assert!(matches!(
        node.step(&enc(&message(MessageType::MsgPropose, master, follower, 0))),
        Err(StepError::UnexpectedType(MessageType::MsgPropose))
    ));
    assert!(matches!(
        node.step(&enc(&message(
            MessageType::MsgRequestVote,
            master,
            follower,
            0
        ))),
        Err(StepError::Malformed { .. })
    ));
    // raft-rs would panic on a commit index beyond the log.
    let mut hb = message(MessageType::MsgHeartbeat, master, follower, term);
    hb.commit = 1_000_000;
    assert!(matches!(
        node.step(&enc(&hb)),
        Err(StepError::Malformed { .. })
    ));
    // Entries that do not follow the previous index.
    let mut app = message(MessageType::MsgAppend, master, follower, term);
    app.index = base.index;
    app.log_term = base.term;
    let e = Entry {
        index: base.index + 5,
        term,
        ..Default::default()
    };
    app.set_entries(vec![e].into());
    assert!(matches!(
        node.step(&enc(&app)),
        Err(StepError::Malformed { .. })
    ));
    let mut resp = message(MessageType::MsgAppendResponse, master, follower, term);
    resp.index = 1_000_000;
    assert!(
        node.step(&enc(&resp)).is_ok(),
        "only the leader checks acks"
    );
    assert_eq!(node.status().rejected_messages, 9);

    // The replica and the group are unaffected.
    let after = commit(&mut c, "after");
    assert!(c
        .run_until(2_000, |c| applied_everywhere(c, after.index))
        .is_some());
    // A leader refuses an ack for entries it does not have.
    let master = c.master().unwrap();
    let mut resp = message(MessageType::MsgAppendResponse, follower, master, after.term);
    resp.index = 1_000_000;
    let leader = c.node_mut(master).unwrap();
    assert!(matches!(
        leader.step(&encode_message(&resp).unwrap()),
        Err(StepError::Malformed { .. })
    ));
    assert_eq!(c.role(master).unwrap().role, Role::Leader);
    c.check_safety().unwrap();
}

#[test]
fn leader_acks_come_before_commit_quorum_acks_after() {
    for policy in [AckPolicy::Leader, AckPolicy::Quorum] {
        let opts = SimOptions {
            ack_policy: policy,
            ..SimOptions::default()
        };
        let mut c = Cluster::new(10, &[1, 2, 3], &[], opts);
        commit(&mut c, "warmup");
        let master = c.master().unwrap();
        c.isolate(master);
        let t = c.propose(master, data("unreplicated"));
        c.run_for(300);
        match policy {
            AckPolicy::Leader => assert!(
                matches!(c.outcome(t), Some(Ok(_))),
                "leader ack expected, got {:?}",
                c.outcome(t)
            ),
            AckPolicy::Quorum => assert!(c.outcome(t).is_none(), "{:?}", c.outcome(t)),
        }
        c.heal();
        c.run_for(3_000);
        if policy == AckPolicy::Quorum {
            // Reconnected in time: the entry commits and the quorum ack arrives.
            assert!(matches!(c.outcome(t), Some(Ok(_))), "{:?}", c.outcome(t));
            c.check_safety().unwrap();
        }
    }
}

fn chaotic_run(seed: u64) -> String {
    let opts = SimOptions {
        drop_rate: 0.1,
        dup_rate: 0.1,
        max_delay_ms: 50,
        ..SimOptions::default()
    };
    let mut c = Cluster::new(seed, &[1, 2, 3], &[4], opts);
    for i in 0..60 {
        let target = c.leaders().first().copied().unwrap_or(1);
        c.propose(target, data(&format!("d{i}")));
        if i % 20 == 10 {
            c.isolate(target);
        }
        if i % 20 == 15 {
            c.heal();
        }
        c.run_for(150);
    }
    c.check_safety().unwrap();
    c.fingerprint()
}

#[test]
fn a_seed_replays_exactly() {
    let a = chaotic_run(11);
    assert_eq!(a, chaotic_run(11));
    assert_ne!(a, chaotic_run(12));
}

/// Over many seeds: ms from isolating the master to a new master, and to the old master
/// stepping down.
fn failover_times(voters: &[u64], opts: &SimOptions, runs: u64) -> (Vec<u64>, Vec<u64>) {
    (0..runs)
        .map(|seed| {
            let mut c = Cluster::new(1000 + seed, voters, &[], opts.clone());
            let old = c.await_master(10_000);
            // Isolate at a random point of the heartbeat cycle.
            let pause = c.rng.gen_range(0..1_000);
            c.run_for(pause);
            c.isolate(old);
            let start = c.now;
            let mut stepped_down = None;
            let mut elected = None;
            c.run_until(10_000, |c| {
                c.role(old).unwrap().role != Role::Leader && c.master().is_some_and(|m| m != old)
            });
            // Replay the same seed to time each event separately.
            let mut r = Cluster::new(1000 + seed, voters, &[], opts.clone());
            r.await_master(10_000);
            let pause = r.rng.gen_range(0..1_000);
            r.run_for(pause);
            r.isolate(old);
            assert_eq!(r.now, start, "replay diverged");
            while (stepped_down.is_none() || elected.is_none()) && r.now < start + 10_000 {
                r.run_until(10_000, |c| {
                    (stepped_down.is_none() && c.role(old).unwrap().role != Role::Leader)
                        || (elected.is_none() && c.master().is_some_and(|m| m != old))
                });
                if stepped_down.is_none() && r.role(old).unwrap().role != Role::Leader {
                    stepped_down = Some(r.now - start);
                }
                if elected.is_none() && r.master().is_some_and(|m| m != old) {
                    elected = Some(r.now - start);
                }
            }
            (
                elected.expect("no failover"),
                stepped_down.expect("old leader kept leading"),
            )
        })
        .unzip()
}

fn stats(v: &[u64]) -> String {
    let mut s = v.to_vec();
    s.sort_unstable();
    format!(
        "min {} / avg {} / p50 {} / p90 {} / max {} ms",
        s[0],
        avg(v),
        s[(s.len() - 1) / 2],
        p90(v),
        max(v)
    )
}

fn max(v: &[u64]) -> u64 {
    v.iter().copied().max().unwrap_or_default()
}

fn avg(v: &[u64]) -> u64 {
    v.iter().sum::<u64>() / v.len().max(1) as u64
}

fn p90(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[(s.len() - 1) * 90 / 100]
}

#[test]
fn failover_time_matches_the_election_timeout() {
    let runs = 100;
    // The defaults (elections after 10-20 silent ticks), and 8-16 ticks for ~1 s failover.
    let configs = [(10, 20), (8, 16)];
    for (lo, hi) in configs {
        let opts = SimOptions {
            election_ticks: lo,
            max_election_ticks: hi,
            ..SimOptions::default()
        };
        for voters in [&[1, 2, 3][..], &[1, 2, 3, 4, 5][..]] {
            let (elected, stepped_down) = failover_times(voters, &opts, runs);
            println!(
                "{} voters, tick 100 ms, election {lo}-{hi} ticks: new master {}; old leader \
                 steps down {}",
                voters.len(),
                stats(&elected),
                stats(&stepped_down)
            );
            // A follower's timer runs lo..hi ticks from its last heartbeat (up to a tick
            // before the isolation), then pre-vote and vote take two round trips. A follower
            // that heard the leader recently ignores votes (check-quorum lease), and two
            // candidates can split a vote: both cost another timeout at times.
            let lo_ms = lo as u64 * 100;
            let hi_ms = hi as u64 * 100;
            assert!(elected.iter().all(|&t| t >= lo_ms - 200), "{elected:?}");
            assert!(avg(&elected) <= (lo_ms + hi_ms) * 2 / 3, "{elected:?}");
            assert!(p90(&elected) <= hi_ms, "{elected:?}");
            assert!(max(&elected) <= hi_ms * 3, "{elected:?}");
            // Check-quorum rounds come every `lo` ticks: the old leader gives up after one or
            // two of them.
            assert!(
                stepped_down
                    .iter()
                    .all(|&t| t >= lo_ms - 200 && t <= 2 * lo_ms),
                "{stepped_down:?}"
            );
        }
    }
}
