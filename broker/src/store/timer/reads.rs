//! What the rest of the broker reads of the timer index, through the store's handle.

use std::sync::atomic::Ordering;

use super::{TimerEntry, TimerIndex};
use crate::store::{MessageStore, StoreError};

impl MessageStore {
    fn timers(&self) -> parking_lot::MutexGuard<'_, TimerIndex> {
        self.shared().timers.lock()
    }

    /// The timer index entry of the delayed message scheduled at `sched_phy`, if held.
    pub fn timer_entry(&self, sched_phy: u64) -> Result<Option<TimerEntry>, StoreError> {
        Ok(self.timers().find(sched_phy)?)
    }

    /// Slots up to `slot` holding pending timers, with their chain heads.
    pub fn timer_slots_upto(&self, slot: i64) -> Vec<(i64, u64)> {
        self.timers().slots_upto(slot)
    }

    /// The pending timers of a slot's chain from `head` down to `stop` (see
    /// [`TimerIndex::chain`]). Blocking file reads.
    pub fn timer_chain(&self, head: u64, stop: u64) -> Result<Vec<TimerEntry>, StoreError> {
        Ok(self.timers().chain(head, stop)?)
    }

    /// Delayed messages not delivered or cancelled yet.
    pub fn timers_pending(&self) -> u64 {
        self.shared().timer_pending.load(Ordering::Acquire)
    }

    /// Where retention stops for pending timers (`u64::MAX`: nowhere).
    pub fn timer_floor(&self) -> u64 {
        self.shared().timer_floor.load(Ordering::Acquire)
    }

    /// Changes whenever the dispatcher changed the timer index.
    pub fn subscribe_timers(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().timer_version.subscribe()
    }
}
