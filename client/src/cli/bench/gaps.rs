//! The longest time between two successes (acks or deliveries) seen by any worker: how long a
//! failover kept the system from making progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub struct GapClock {
    origin: Instant,
    /// Microseconds after `origin` of the latest success, plus one (0: none yet).
    last: AtomicU64,
    max: AtomicU64,
}

impl GapClock {
    pub fn new(origin: Instant) -> Self {
        GapClock {
            origin,
            last: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records a success at `now`.
    pub fn tick(&self, now: Instant) {
        let t = u64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let prev = self.last.fetch_max(t, Ordering::Relaxed);
        if prev != 0 && t > prev {
            self.max.fetch_max(t - prev, Ordering::Relaxed);
        }
    }

    /// The longest gap between two successes so far.
    pub fn longest(&self) -> Duration {
        Duration::from_micros(self.max.load(Ordering::Relaxed))
    }

    /// When the latest success happened, if any.
    pub fn last(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            t => Some(self.origin + Duration::from_micros(t - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_between_successes() {
        let t0 = Instant::now();
        let g = GapClock::new(t0);
        assert_eq!(g.longest(), Duration::ZERO);
        assert!(g.last().is_none());
        let at = |ms| t0 + Duration::from_millis(ms);
        // The wait before the first success does not count.
        g.tick(at(500));
        g.tick(at(510));
        g.tick(at(2010));
        // A late report of an earlier success changes nothing.
        g.tick(at(1000));
        g.tick(at(2020));
        assert_eq!(g.longest(), Duration::from_millis(1500));
        assert_eq!(g.last(), Some(at(2020)));
    }
}
