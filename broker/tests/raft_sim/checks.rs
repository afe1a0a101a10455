//! What a run is judged by: the safety properties over everything applied, and a fingerprint
//! to compare replays.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;

use super::Cluster;

impl Cluster {
    /// Checks the safety properties over everything the replicas ever applied:
    /// * no two replicas applied different entries at one index (each replica's sequence is a
    ///   prefix of one global sequence, as each replica applies contiguously);
    /// * no proposal data was applied twice;
    /// * every proposal acknowledged as committed is in that sequence at its id;
    /// * every proposal reported as certainly absent is not in it.
    ///
    /// Returns the global sequence (index -> (term, data)).
    pub fn check_safety(&self) -> Result<BTreeMap<u64, (u64, Bytes)>, String> {
        let mut global: BTreeMap<u64, (u64, Bytes)> = BTreeMap::new();
        for id in self.ids() {
            for e in &self.recorder(id).entries {
                match global.get(&e.index) {
                    Some((term, data)) if (*term, data) != (e.term, &e.data) => {
                        return Err(format!(
                            "index {} applied as (term {term}, {data:?}) elsewhere but as \
                             (term {}, {:?}) on node {id}",
                            e.index, e.term, e.data
                        ));
                    }
                    Some(_) => {}
                    None => {
                        global.insert(e.index, (e.term, e.data.clone()));
                    }
                }
            }
        }
        let mut seen: HashMap<&Bytes, u64> = HashMap::new();
        for (&index, (_, data)) in &global {
            if data.is_empty() {
                continue;
            }
            if let Some(prev) = seen.insert(data, index) {
                return Err(format!("{data:?} applied twice, at {prev} and {index}"));
            }
        }
        for t in &self.tickets {
            match &t.outcome {
                Some(Ok(id)) => match global.get(&id.index) {
                    Some((term, data)) if *term == id.term && *data == t.data => {}
                    other => {
                        return Err(format!(
                            "acknowledged proposal {:?} at {id:?} (via node {}) is not in the \
                             log; found {other:?}",
                            t.data, t.node
                        ))
                    }
                },
                Some(Err(e)) if e.definitely_absent() => {
                    if let Some(index) = seen.get(&t.data) {
                        return Err(format!(
                            "proposal {:?} failed with '{e}' but was applied at {index}",
                            t.data
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(global)
    }

    /// A deterministic description of the run, to compare replays.
    pub fn fingerprint(&self) -> String {
        let mut s = format!("now={} delivered={}\n", self.now, self.delivered);
        for id in self.ids() {
            let r = self.recorder(id);
            let _ = writeln!(
                s,
                "{id}: role={:?} applied={} snaps={:?} last={:?}",
                self.role(id),
                r.applied,
                r.snapshots,
                r.entries.last().map(|e| (e.index, e.term))
            );
        }
        for t in &self.tickets {
            let _ = writeln!(s, "{:?} {:?}", t.data, t.outcome);
        }
        s
    }
}
