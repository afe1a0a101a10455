//! Which offsets of a queue are safe to commit.

use std::collections::VecDeque;

/// Offsets pulled but not yet finished, and the next offset to pull. The committable offset is
/// the lowest unfinished one: everything below it has been handled, whatever order handlers
/// finished in.
#[derive(Debug, Clone)]
pub(crate) struct OffsetTracker {
    /// Pulled offsets in ascending order with a finished flag. The front is always
    /// unfinished: finished offsets leave as soon as nothing unfinished is below them.
    window: VecDeque<(u64, bool)>,
    unfinished: usize,
    next: u64,
}

impl OffsetTracker {
    pub(crate) fn new(start: u64) -> Self {
        OffsetTracker {
            window: VecDeque::new(),
            unfinished: 0,
            next: start,
        }
    }

    /// The offset to pull next.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Records a pull: these messages are now in flight, and pulling continues at `next_offset`.
    pub(crate) fn pulled(&mut self, offsets: impl IntoIterator<Item = u64>, next_offset: u64) {
        let mut highest = None;
        for o in offsets {
            // Pulls move forward, so this is an append; anything else is placed in order.
            match self.window.back() {
                Some(&(last, _)) if o <= last => {
                    if let Err(at) = self.window.binary_search_by_key(&o, |&(x, _)| x) {
                        self.window.insert(at, (o, false));
                        self.unfinished += 1;
                    }
                }
                _ => {
                    self.window.push_back((o, false));
                    self.unfinished += 1;
                }
            }
            highest = Some(highest.map_or(o, |h: u64| h.max(o)));
        }
        // Never pull the same messages again, even if the broker's next offset lags behind.
        let floor = highest.map_or(self.next, |h| h + 1).max(self.next);
        self.next = next_offset.max(floor);
    }

    /// Moves the pull position after OFFSET_OUT_OF_RANGE; may move backwards (the queue was
    /// truncated), in which case in-flight messages at or above it will be pulled again.
    pub(crate) fn reset(&mut self, offset: u64) {
        self.window.retain(|&(o, _)| o < offset);
        self.unfinished = self.window.iter().filter(|(_, done)| !done).count();
        self.trim();
        self.next = offset;
    }

    /// Marks a message handled. Returns false if it was not in flight.
    pub(crate) fn complete(&mut self, offset: u64) -> bool {
        let Ok(at) = self.window.binary_search_by_key(&offset, |&(o, _)| o) else {
            return false;
        };
        if self.window[at].1 {
            return false;
        }
        self.window[at].1 = true;
        self.unfinished -= 1;
        self.trim();
        true
    }

    /// Drops the finished offsets at the front.
    fn trim(&mut self) {
        while self.window.front().is_some_and(|&(_, done)| done) {
            self.window.pop_front();
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.unfinished
    }

    /// Everything below this offset is handled.
    pub(crate) fn commit_offset(&self) -> u64 {
        self.window
            .front()
            .map_or(self.next, |&(o, _)| o.min(self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_commits_the_lowest_unfinished() {
        let mut t = OffsetTracker::new(10);
        assert_eq!(t.commit_offset(), 10);
        t.pulled(10..15, 15);
        assert_eq!(t.commit_offset(), 10);
        assert!(t.complete(12));
        assert!(t.complete(14));
        assert_eq!(t.commit_offset(), 10);
        assert!(t.complete(10));
        assert_eq!(t.commit_offset(), 11);
        assert!(t.complete(11));
        assert_eq!(t.commit_offset(), 13);
        assert!(t.complete(13));
        assert_eq!(t.commit_offset(), 15);
        assert_eq!(t.in_flight(), 0);
        assert!(!t.complete(13), "double completion is ignored");
    }

    #[test]
    fn gaps_in_offsets_are_skipped() {
        let mut t = OffsetTracker::new(0);
        // The broker may skip offsets (filtered messages): next_offset says where to go on.
        t.pulled([2, 5], 8);
        assert_eq!(t.next(), 8);
        assert_eq!(t.commit_offset(), 2);
        t.complete(2);
        assert_eq!(t.commit_offset(), 5);
        t.complete(5);
        assert_eq!(t.commit_offset(), 8);
        // An empty pull that moves forward advances the commit point too.
        t.pulled([], 9);
        assert_eq!(t.commit_offset(), 9);
    }

    #[test]
    fn next_offset_never_goes_backwards_on_a_normal_pull() {
        let mut t = OffsetTracker::new(5);
        t.pulled([5, 6], 0);
        assert_eq!(t.next(), 7);
        t.pulled([], 3);
        assert_eq!(t.next(), 7);
    }

    #[test]
    fn out_of_order_pulls_and_many_offsets() {
        let mut t = OffsetTracker::new(0);
        t.pulled([5, 7], 8);
        // An earlier offset showing up late is still tracked, once.
        t.pulled([3, 5], 8);
        assert_eq!(t.in_flight(), 3);
        assert_eq!(t.commit_offset(), 3);
        assert!(t.complete(5) && t.complete(3));
        assert_eq!(t.commit_offset(), 7);
        assert!(t.complete(7));
        assert_eq!((t.in_flight(), t.commit_offset()), (0, 8));
        // A long run completed from the back: the commit point jumps once the front is done.
        t.pulled(8..10_008, 10_008);
        for o in (9..10_008).rev() {
            assert!(t.complete(o));
        }
        assert_eq!(t.commit_offset(), 8);
        assert!(t.complete(8));
        assert_eq!((t.in_flight(), t.commit_offset()), (0, 10_008));
    }

    #[test]
    fn reset_moves_the_position_either_way() {
        let mut t = OffsetTracker::new(0);
        t.pulled([0, 1, 2], 3);
        t.complete(0);
        // Queue trimmed below: move up to min; in-flight stay and still hold the commit point.
        t.reset(50);
        assert_eq!(t.next(), 50);
        assert_eq!(t.commit_offset(), 1);
        t.complete(1);
        t.complete(2);
        assert_eq!(t.commit_offset(), 50);
        // Queue truncated above: move down to max; in-flight above it are dropped.
        t.pulled([50, 51], 52);
        t.reset(40);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.commit_offset(), 40);
    }
}
