//! Counters the workers bump and the once-a-second progress line on stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Running totals shared by the workers of one run; each worker only adds.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub send_failed: AtomicU64,
    pub received: AtomicU64,
    /// Set when the run should end (count reached, duration over, Ctrl-C).
    pub stop: AtomicBool,
}

impl Counters {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One progress line: totals and the rate since the previous line.
pub fn line(elapsed: Duration, snapshot: (u64, u64, u64), rate: (f64, f64), size: usize) -> String {
    let (sent, failed, received) = snapshot;
    let (send_rate, recv_rate) = rate;
    let mut s = format!("[{:>5.1}s]", elapsed.as_secs_f64());
    if sent > 0 || failed > 0 || send_rate > 0.0 {
        s.push_str(&format!(
            " sent {sent} ({:.0} msgs/s, {:.1} MB/s), failed {failed}",
            send_rate,
            send_rate * size as f64 / 1e6
        ));
    }
    if received > 0 || recv_rate > 0.0 {
        s.push_str(&format!(
            " received {received} ({:.0} msgs/s, {:.1} MB/s)",
            recv_rate,
            recv_rate * size as f64 / 1e6
        ));
    }
    s
}

/// Prints a progress line to stderr every second until `counters.stop` is set.
pub async fn report(counters: Arc<Counters>, size: usize, started: Instant) {
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev = (0u64, 0u64, Instant::now());
    loop {
        tick.tick().await;
        if counters.stopped() {
            return;
        }
        let sent = counters.sent.load(Ordering::Relaxed);
        let failed = counters.send_failed.load(Ordering::Relaxed);
        let received = counters.received.load(Ordering::Relaxed);
        let now = Instant::now();
        let dt = now.duration_since(prev.2).as_secs_f64().max(1e-9);
        let rates = (
            (sent.saturating_sub(prev.0)) as f64 / dt,
            (received.saturating_sub(prev.1)) as f64 / dt,
        );
        prev = (sent, received, now);
        eprintln!(
            "{}",
            line(
                now.duration_since(started),
                (sent, failed, received),
                rates,
                size
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_what_moved() {
        assert_eq!(
            line(
                Duration::from_millis(3000),
                (1000, 2, 0),
                (500.0, 0.0),
                1000
            ),
            "[  3.0s] sent 1000 (500 msgs/s, 0.5 MB/s), failed 2"
        );
        assert_eq!(
            line(
                Duration::from_millis(1500),
                (0, 0, 10),
                (0.0, 10.0),
                1_000_000
            ),
            "[  1.5s] received 10 (10 msgs/s, 10.0 MB/s)"
        );
        let both = line(Duration::from_secs(2), (5, 0, 4), (5.0, 4.0), 10);
        assert!(
            both.contains("sent 5") && both.contains("received 4"),
            "{both}"
        );
    }
}
