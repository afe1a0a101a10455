//! The dispatcher's side of the timer index: what a timer record does to it, and what a
//! publish makes visible.

use std::io;

use sluice_proto::props;
use sluice_proto::record::{self, DispatchView, Fixed as _};

use super::{Resolved, TimerIndex, TimerState};

/// Scheduled timers due within this long wake the master's timer task at once (it looks a
/// second ahead on its own).
pub const HINT_MS: i64 = 2_000;

/// What dispatching one timer record did.
#[derive(Debug, Default)]
pub struct Indexed {
    /// A scheduled record with keys: the topic its keys are indexed under.
    pub real_topic: Option<String>,
    /// A timer due before the caller's hint time was scheduled.
    pub due_soon: bool,
}

impl TimerIndex {
    /// A record with timer bits (`sys`) at `phy`: a scheduled record enters the index; a fired
    /// or cancel record resolves its timer. `hint_before_ms` only decides `due_soon` (a wake-up
    /// hint, not state: the clock may decide it).
    pub fn index_record(
        &mut self,
        view: &DispatchView<'_>,
        phy: u64,
        sys: u32,
        hint_before_ms: i64,
    ) -> io::Result<Indexed> {
        if sys & record::SYS_FLAG_SCHEDULED != 0 {
            let Some(due) = view.property_i64(props::DELIVER_AT) else {
                tracing::error!(
                    offset = phy,
                    "scheduled record without a due time; not indexed"
                );
                return Ok(Indexed::default());
            };
            self.schedule(phy, due, view.total_size())?;
            // Only keys are indexed under the real topic.
            let real_topic = match view.keys().next() {
                None => None,
                Some(_) => view
                    .property(props::REAL_TOPIC)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .map(str::to_owned),
            };
            return Ok(Indexed {
                real_topic,
                due_soon: due <= hint_before_ms,
            });
        }
        let Some(of) = view
            .property_i64(props::TIMER_OF)
            .and_then(|v| u64::try_from(v).ok())
        else {
            tracing::error!(offset = phy, "timer record without the timer it resolves");
            return Ok(Indexed::default());
        };
        let state = if sys & record::SYS_FLAG_TIMER_FIRED != 0 {
            TimerState::Fired
        } else {
            TimerState::Cancelled
        };
        if let Resolved::Before(was) = self.resolve(of, phy, state)? {
            // The leader's timer task proposes one resolution per timer; a second one (or one
            // for a timer this replica does not hold) changes nothing.
            tracing::warn!(
                timer = of,
                by = phy,
                ?was,
                ?state,
                "timer resolved before; ignored"
            );
        }
        Ok(Indexed::default())
    }

    /// Writes buffered entries; returns the floor and the pending count to publish.
    pub fn publish(&mut self) -> io::Result<(u64, u64)> {
        self.flush()?;
        Ok((self.floor()?, self.pending()))
    }
}
