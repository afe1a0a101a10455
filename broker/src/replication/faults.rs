//! Fault injection for partition tests: the set of peers whose Raft traffic this broker drops,
//! in both directions. Off unless the broker config enables it.

use std::collections::BTreeSet;

use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::watch;

/// Owner of the isolated set; readers hold [`Isolation`] receivers.
pub struct FaultSwitch {
    enabled: bool,
    tx: watch::Sender<BTreeSet<u64>>,
}

/// A read-only view of the isolated set (cheap to clone, read on every message).
#[derive(Clone)]
pub struct Isolation(watch::Receiver<BTreeSet<u64>>);

impl Isolation {
    pub fn is_isolated(&self, peer: u64) -> bool {
        self.0.borrow().contains(&peer)
    }
}

impl FaultSwitch {
    pub fn new(enabled: bool) -> Self {
        FaultSwitch {
            enabled,
            tx: watch::Sender::new(BTreeSet::new()),
        }
    }

    pub fn view(&self) -> Isolation {
        Isolation(self.tx.subscribe())
    }

    fn check_enabled(&self) -> Result<(), ApiError> {
        if self.enabled {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::NoPermission,
                "fault injection is disabled on this broker (set enable_fault_injection = true)",
            ))
        }
    }

    /// Adds `peers` to the isolated set; returns the set.
    pub fn isolate(&self, peers: &[u64]) -> Result<Vec<u64>, ApiError> {
        self.check_enabled()?;
        self.tx.send_modify(|set| set.extend(peers.iter().copied()));
        tracing::warn!(?peers, "fault injection: isolating peers");
        Ok(self.tx.borrow().iter().copied().collect())
    }

    /// Clears the isolated set.
    pub fn heal(&self) -> Result<Vec<u64>, ApiError> {
        self.check_enabled()?;
        self.tx.send_modify(BTreeSet::clear);
        tracing::warn!("fault injection: healed");
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_unless_enabled() {
        let off = FaultSwitch::new(false);
        assert_eq!(off.isolate(&[2]).unwrap_err().code, ErrorCode::NoPermission);
        assert!(!off.view().is_isolated(2));

        let on = FaultSwitch::new(true);
        let view = on.view();
        assert_eq!(on.isolate(&[2, 3]).unwrap(), vec![2, 3]);
        assert!(view.is_isolated(2) && view.is_isolated(3) && !view.is_isolated(1));
        on.heal().unwrap();
        assert!(!view.is_isolated(2));
    }
}
