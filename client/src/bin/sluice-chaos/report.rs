//! The run's report: per-cycle timings, the checks' findings, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::features::FeatureFindings;
use crate::orderly::OrderlyFindings;
use crate::verify::Findings;

/// One fault and its undoing.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub cycle: u32,
    pub fault: String,
    pub group: String,
    /// Replica id and node of the master attacked.
    pub old_master: u64,
    pub node: String,
    pub new_master: Option<u64>,
    /// Fault to the first acknowledged send on the group that started after the fault, as
    /// the producers see it; measured from the start of the fault command (an upper bound).
    pub failover_ms: Option<u64>,
    /// How long the fault command itself took (included in `failover_ms`).
    pub fault_cmd_ms: Option<u64>,
    /// Fault to a replica other than the old master reporting MASTER.
    pub new_master_ms: Option<u64>,
    /// Undoing the fault (restart/resume/heal) to the group being healthy again.
    pub recovery_ms: Option<u64>,
    /// Did the old master rejoin as a follower of the new one (checked by the health wait).
    pub rejoined: bool,
    pub error: Option<String>,
}

/// min / median / max in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub count: usize,
    pub min_ms: u64,
    pub median_ms: u64,
    pub max_ms: u64,
}

impl Stats {
    pub fn of(values: impl IntoIterator<Item = u64>) -> Option<Stats> {
        let mut v: Vec<u64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(Stats {
            count: v.len(),
            min_ms: v[0],
            median_ms: v[(v.len() - 1) / 2],
            max_ms: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub topic: String,
    pub consumer_group: String,
    pub groups: Vec<String>,
    pub faults: Vec<String>,
    pub producers: u32,
    pub consumers: u32,
    pub cycles_requested: u32,
    pub cycles_completed: u32,
    pub duration_s: f64,
    pub send_failures: u64,
    pub consume_errors: u64,
    /// Producers were idempotent: a message stored twice is then a violation.
    pub idempotent: bool,
    #[serde(flatten)]
    pub findings: Findings,
    /// Delayed and failing messages (when the run sent any).
    pub features: Option<FeatureFindings>,
    /// Per-key order and one owner per queue (with `--orderly`).
    pub orderly: Option<OrderlyFindings>,
    /// Every replica of every group holds the same queues (after catching up).
    pub replicas_consistent: bool,
    pub replica_mismatches: Vec<String>,
    pub failover: Option<Stats>,
    pub failover_by_fault: BTreeMap<String, Stats>,
    pub recovery: Option<Stats>,
    pub cycles: Vec<CycleReport>,
    /// Problems that stopped the run or a cycle (a stuck election, a group that never healed).
    pub errors: Vec<String>,
    pub ok: bool,
}

impl Report {
    /// Fills in the timing summaries and the verdict.
    pub fn finalize(&mut self) {
        self.failover = Stats::of(self.cycles.iter().filter_map(|c| c.failover_ms));
        self.recovery = Stats::of(self.cycles.iter().filter_map(|c| c.recovery_ms));
        let mut by_fault: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for c in &self.cycles {
            if let Some(ms) = c.failover_ms {
                by_fault.entry(c.fault.clone()).or_default().push(ms);
            }
        }
        self.failover_by_fault = by_fault
            .into_iter()
            .filter_map(|(k, v)| Stats::of(v).map(|s| (k, s)))
            .collect();
        let stored_twice =
            self.findings.duplicated + self.features.as_ref().map_or(0, |f| f.delayed_send_retries);
        self.ok = self.findings.violations() == 0
            && self.features.as_ref().is_none_or(|f| f.violations() == 0)
            && self.orderly.as_ref().is_none_or(|o| o.violations() == 0)
            && (!self.idempotent || stored_twice == 0)
            && self.replicas_consistent
            && self.errors.is_empty()
            && self.cycles.iter().all(|c| c.error.is_none())
            && self.cycles_completed == self.cycles_requested;
    }

    pub fn text(&self) -> String {
        let f = &self.findings;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sluice-chaos run {}: {} of {} cycles ({}) on {} in {:.0} s; topic {}, {} producers, {} consumers",
            self.run_id,
            self.cycles_completed,
            self.cycles_requested,
            self.faults.join(","),
            self.groups.join(","),
            self.duration_s,
            self.topic,
            self.producers,
            self.consumers,
        );
        let _ = writeln!(
            s,
            "cycle  fault      group      master  node            new  failover_ms  (fault_cmd)  new_master_ms  recovery_ms"
        );
        for c in &self.cycles {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                s,
                "{:>5}  {:<9}  {:<9}  {:>6}  {:<14}  {:>3}  {:>11}  {:>11}  {:>13}  {:>11}{}",
                c.cycle,
                c.fault,
                c.group,
                c.old_master,
                c.node,
                opt(c.new_master),
                opt(c.failover_ms),
                opt(c.fault_cmd_ms),
                opt(c.new_master_ms),
                opt(c.recovery_ms),
                c.error
                    .as_ref()
                    .map(|e| format!("  ERROR: {e}"))
                    .unwrap_or_default(),
            );
        }
        let stats = |st: &Option<Stats>| {
            st.map_or("-".into(), |st| {
                format!(
                    "min {} / median {} / max {} ms (n={})",
                    st.min_ms, st.median_ms, st.max_ms, st.count
                )
            })
        };
        let _ = writeln!(
            s,
            "failover (fault -> first acked send on the new master): {}",
            stats(&self.failover)
        );
        for (fault, st) in &self.failover_by_fault {
            let _ = writeln!(s, "  {fault:<9}: {}", stats(&Some(*st)));
        }
        let _ = writeln!(
            s,
            "recovery (restart/resume/heal -> group healthy): {}",
            stats(&self.recovery)
        );
        let _ = writeln!(
            s,
            "acked {}  consumed {}  LOST {}  {} {}  redelivered {}  OUT-OF-ORDER {}  REORDERED {}",
            f.acked,
            f.consumed,
            f.lost,
            if self.idempotent {
                "DUPLICATED (idempotent producers)"
            } else {
                "duplicated (producers not idempotent)"
            },
            f.duplicated,
            f.redelivered,
            f.out_of_order,
            f.reordered
        );
        let _ = writeln!(
            s,
            "missing from log {}  moved {}  conflicting deliveries {}  consumed unacked {}  send failures {}  consume errors {}",
            f.missing_from_log,
            f.moved,
            f.conflicting_deliveries,
            f.consumed_unacked,
            self.send_failures,
            self.consume_errors
        );
        let _ = writeln!(
            s,
            "replicas consistent: {}",
            if self.replicas_consistent {
                "yes"
            } else {
                "NO"
            }
        );
        for m in &self.replica_mismatches {
            let _ = writeln!(s, "  {m}");
        }
        for (kind, samples) in &f.samples {
            let _ = writeln!(s, "{kind}:");
            for x in samples {
                let _ = writeln!(s, "  {x}");
            }
        }
        if let Some(x) = &self.features {
            let _ = writeln!(
                s,
                "delayed: acked {}  delivered {}  LOST {}  DUPLICATED {}  EARLY {}  (stored twice by a retried send: {})",
                x.delayed_acked, x.delayed_delivered, x.delayed_lost, x.delayed_duplicated, x.delayed_early, x.delayed_send_retries
            );
            let _ = writeln!(
                s,
                "failing: acked {}  succeeded after their failures {}  dead-lettered {}  LOST {}  WRONG {}  nack failures {}",
                x.failing_acked, x.failing_succeeded, x.failing_dead_lettered, x.failing_lost, x.failing_wrong, x.nack_failures
            );
            let t = &x.tx;
            let _ = writeln!(
                s,
                "transactions: committed {}  commit failed {}  rolled back {}  abandoned {}  ROLLED-BACK DELIVERED {}  ABANDONED LOST {}",
                t.tx_committed, t.tx_commit_failed, t.tx_rolled_back, t.tx_abandoned, t.tx_rolled_back_delivered, t.tx_abandoned_lost
            );
            for (kind, samples) in &x.samples {
                let _ = writeln!(s, "{kind}:");
                for v in samples {
                    let _ = writeln!(s, "  {v}");
                }
            }
        }
        if let Some(o) = &self.orderly {
            let _ = writeln!(
                s,
                "orderly: keys {}  deliveries checked {}  ORDER VIOLATIONS {}  OVERLAPS {}  (key moves {}, cross-queue reorders {})",
                o.keys, o.deliveries, o.order_violations, o.overlap_violations, o.key_moves, o.cross_queue_reorders
            );
            let _ = writeln!(
                s,
                "  per consumer: {}  queue hand-overs {}  members replaced {}",
                o.by_consumer
                    .iter()
                    .map(|(m, n)| format!("{m}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                o.handovers,
                o.members_replaced
            );
            for (kind, samples) in &o.samples {
                let _ = writeln!(s, "{kind}:");
                for v in samples {
                    let _ = writeln!(s, "  {v}");
                }
            }
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        let _ = writeln!(s, "result: {}", if self.ok { "PASS" } else { "FAIL" });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_min_median_max() {
        assert_eq!(Stats::of([]), None);
        let s = Stats::of([30, 10, 20, 40]).unwrap();
        assert_eq!((s.count, s.min_ms, s.median_ms, s.max_ms), (4, 10, 20, 40));
    }

    #[test]
    fn verdict_follows_findings_and_errors() {
        let cycle = CycleReport {
            cycle: 1,
            fault: "kill".into(),
            group: "broker-a".into(),
            old_master: 1,
            node: "broker-a-1".into(),
            new_master: Some(2),
            failover_ms: Some(900),
            fault_cmd_ms: Some(30),
            new_master_ms: Some(800),
            recovery_ms: Some(2000),
            rejoined: true,
            error: None,
        };
        let mut r = Report {
            run_id: "r".into(),
            topic: "t".into(),
            consumer_group: "g".into(),
            groups: vec!["broker-a".into()],
            faults: vec!["kill".into()],
            producers: 1,
            consumers: 1,
            cycles_requested: 1,
            cycles_completed: 1,
            duration_s: 1.0,
            send_failures: 0,
            consume_errors: 0,
            idempotent: false,
            findings: Findings::default(),
            features: None,
            orderly: None,
            replicas_consistent: true,
            replica_mismatches: Vec::new(),
            failover: None,
            failover_by_fault: BTreeMap::new(),
            recovery: None,
            cycles: vec![cycle],
            errors: Vec::new(),
            ok: false,
        };
        r.finalize();
        assert!(r.ok);
        assert_eq!(r.failover_by_fault["kill"].median_ms, 900);
        assert!(r.text().contains("result: PASS"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["lost"], 0);
        assert_eq!(json["failover"]["median_ms"], 900);

        // A message stored twice fails the run only when the producers were idempotent.
        r.findings.duplicated = 2;
        r.finalize();
        assert!(r.ok);
        r.idempotent = true;
        r.finalize();
        assert!(!r.ok);
        r.findings.duplicated = 0;
        r.finalize();
        assert!(r.ok);

        // An orderly run fails on an order or overlap violation.
        r.orderly = Some(OrderlyFindings {
            keys: 1,
            deliveries: 10,
            ..OrderlyFindings::default()
        });
        r.finalize();
        assert!(r.ok);
        assert!(r.text().contains("orderly: keys 1  deliveries checked 10"));
        r.orderly = Some(OrderlyFindings {
            overlap_violations: 1,
            ..OrderlyFindings::default()
        });
        r.finalize();
        assert!(!r.ok);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["orderly"]["overlap_violations"], 1);
        r.orderly = None;
        r.finalize();
        assert!(r.ok);

        r.findings.lost = 1;
        r.finalize();
        assert!(!r.ok);
        assert!(r.text().contains("result: FAIL"));
    }
}
