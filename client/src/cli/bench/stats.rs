//! Latency histograms, rates and the report `sluice bench` prints (table or JSON).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub struct Latencies {
    hist: Histogram<u64>,
}

const MAX_US: u64 = 3_600_000_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            // Constant, valid bounds: this cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
        }
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US);
        // Saturating: an out-of-range value lands at the edge instead of being lost.
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; keep going if it ever did.
        let _ = self.hist.add(&other.hist);
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self, kind: &str) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let q = |p: f64| self.hist.value_at_quantile(p);
        Some(LatencySummary {
            kind: kind.to_string(),
            samples: self.hist.len(),
            mean: self.hist.mean().round() as u64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
        })
    }
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    /// What one sample measures, e.g. "send to ack, per send".
    pub kind: String,
    pub samples: u64,
    pub mean: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Messages and bytes moved in some time, as rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    pub messages: u64,
    pub failed: u64,
    /// Body bytes.
    pub bytes: u64,
    pub elapsed_s: f64,
    pub msgs_per_sec: f64,
    /// Megabytes (10^6 bytes) of bodies per second.
    pub mb_per_sec: f64,
}

impl Throughput {
    pub fn new(messages: u64, failed: u64, bytes: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let rate = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        Throughput {
            messages,
            failed,
            bytes,
            elapsed_s: secs,
            msgs_per_sec: rate(messages),
            mb_per_sec: rate(bytes) / 1e6,
        }
    }
}

/// The broker settings that decide what an ack means.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BrokerSettings {
    pub brokers: usize,
    pub flush_mode: Option<String>,
    pub replicated: bool,
    pub ack_policy: Option<String>,
}

/// How the run was set up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSettings {
    pub workload: String,
    pub topic: String,
    pub queues: u32,
    pub message_size: usize,
    pub producers: usize,
    pub consumers: usize,
    /// Sends in flight per producer (1: each send waits for its ack).
    pub in_flight: usize,
    pub batching: bool,
    /// Messages per explicit `send_batch` call, if the run sent explicit batches.
    pub send_batch: Option<usize>,
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub linger_ms: f64,
    pub pull_batch: u32,
    /// pull, push or orderly.
    pub consume_mode: &'static str,
    /// Target send rate over all producers, if throttled.
    pub rate: Option<u64>,
}

/// Everything one section (sending or receiving) measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    #[serde(flatten)]
    pub throughput: Throughput,
    pub latency_us: Option<LatencySummary>,
    /// Longest time without a successful ack (sending) or delivery (receiving) once the first
    /// one came, in ms: the availability gap of a failover.
    pub max_gap_ms: f64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub settings: RunSettings,
    pub broker: BrokerSettings,
    pub produce: Option<Section>,
    pub consume: Option<Section>,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn section_lines(out: &mut String, verb: &str, s: &Section) {
    let t = &s.throughput;
    let _ = writeln!(
        out,
        "  {verb:<9}{} ok, {} failed in {:.2} s: {} msgs/s, {:.1} MB/s",
        thousands(t.messages),
        thousands(t.failed),
        t.elapsed_s,
        thousands(t.msgs_per_sec.round() as u64),
        t.mb_per_sec
    );
    if let Some(l) = &s.latency_us {
        let _ = writeln!(
            out,
            "  latency  {} (us): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  ({} samples)",
            l.kind,
            thousands(l.p50),
            thousands(l.p90),
            thousands(l.p99),
            thousands(l.p999),
            thousands(l.max),
            thousands(l.mean),
            thousands(l.samples)
        );
    }
    let _ = writeln!(
        out,
        "  longest gap between successes: {:.1} ms",
        s.max_gap_ms
    );
    if let Some(e) = &s.first_error {
        let _ = writeln!(out, "  first error: {e}");
    }
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let c = &self.settings;
        let b = &self.broker;
        let mut out = String::new();
        let _ = write!(
            out,
            "{}: {} B messages, topic {} ({} queues)",
            c.workload, c.message_size, c.topic, c.queues
        );
        if c.producers > 0 {
            let _ = write!(
                out,
                ", {} producer(s) x {} in flight",
                c.producers, c.in_flight
            );
            if let Some(n) = c.send_batch {
                let _ = write!(out, " batches of {n} (explicit send_batch)");
            } else if c.in_flight > 1 && c.batching {
                let _ = write!(
                    out,
                    ", batches <= {} msgs / {} KiB, linger {} ms",
                    c.batch_max_messages,
                    c.batch_max_bytes / 1024,
                    c.linger_ms
                );
            } else if c.in_flight > 1 {
                out.push_str(", one request per message");
            }
            if let Some(r) = c.rate {
                let _ = write!(out, ", rate {} msgs/s", thousands(r));
            }
        }
        if c.consumers > 0 {
            let _ = write!(
                out,
                ", {} {} consumer(s), pulls of {}",
                c.consumers, c.consume_mode, c.pull_batch
            );
        }
        let _ = writeln!(
            out,
            "\n  brokers  {} master(s), flush {}, {}",
            b.brokers,
            b.flush_mode.as_deref().unwrap_or("unknown"),
            if b.replicated {
                format!(
                    "replicated, ack {}",
                    b.ack_policy.as_deref().unwrap_or("unknown")
                )
            } else {
                "not replicated".to_string()
            }
        );
        if let Some(s) = &self.produce {
            section_lines(&mut out, "sent", s);
        }
        if let Some(s) = &self.consume {
            section_lines(&mut out, "received", s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut l = Latencies::default();
        assert!(l.summary("x").is_none());
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary("send to ack").unwrap();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
        assert_eq!(s.mean, 501);
        // Values outside the range are kept at its edges, not dropped.
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(10 * 3600));
        assert_eq!(l.len(), 1002);
        assert_eq!(l.summary("x").unwrap().max, hdr_edge());
    }

    fn hdr_edge() -> u64 {
        let mut h = Latencies::default();
        h.record_us(MAX_US);
        h.hist.max()
    }

    #[test]
    fn merging_adds_samples() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        a.record_us(100);
        b.record_us(300);
        b.record_us(300);
        a.merge(&b);
        let s = a.summary("x").unwrap();
        assert_eq!((s.samples, s.p50, s.max), (3, 300, 300));
    }

    #[test]
    fn rates_divide_by_elapsed_time() {
        let t = Throughput::new(300_000, 2, 300_000 * 1024, Duration::from_millis(1500));
        assert_eq!(t.msgs_per_sec, 200_000.0);
        assert!((t.mb_per_sec - 204.8).abs() < 1e-9);
        let zero = Throughput::new(5, 0, 5, Duration::ZERO);
        assert_eq!(zero.msgs_per_sec, 0.0);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn sample_report() -> Report {
        let mut l = Latencies::default();
        l.record_us(150);
        Report {
            settings: RunSettings {
                workload: "produce".into(),
                topic: "bench".into(),
                queues: 8,
                message_size: 1024,
                producers: 2,
                consumers: 0,
                in_flight: 256,
                batching: true,
                send_batch: None,
                batch_max_messages: 1024,
                batch_max_bytes: 1 << 20,
                linger_ms: 0.0,
                pull_batch: 0,
                consume_mode: "pull",
                rate: None,
            },
            broker: BrokerSettings {
                brokers: 1,
                flush_mode: Some("async".into()),
                replicated: false,
                ack_policy: None,
            },
            produce: Some(Section {
                throughput: Throughput::new(1000, 0, 1024 * 1000, Duration::from_secs(2)),
                latency_us: l.summary("send to ack, per send"),
                max_gap_ms: 3.25,
                first_error: None,
            }),
            consume: None,
        }
    }

    #[test]
    fn report_renders_every_figure() {
        let text = sample_report().render();
        assert!(text.starts_with("produce: 1024 B messages, topic bench (8 queues), 2 producer(s) x 256 in flight, batches <= 1024 msgs / 1024 KiB, linger 0 ms\n"), "{text}");
        assert!(text.contains("flush async, not replicated"), "{text}");
        assert!(
            text.contains("sent     1,000 ok, 0 failed in 2.00 s: 500 msgs/s, 0.5 MB/s"),
            "{text}"
        );
        assert!(text.contains("latency  send to ack, per send (us): p50 150  p90 150  p99 150  p99.9 150  max 150  mean 150  (1 samples)"), "{text}");
        assert!(
            text.contains("longest gap between successes: 3.2 ms") || text.contains("3.3 ms"),
            "{text}"
        );
    }

    #[test]
    fn report_json_shape() {
        let v = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(v["settings"]["workload"], "produce");
        assert_eq!(v["broker"]["flush_mode"], "async");
        let p = &v["produce"];
        assert_eq!(p["messages"], 1000);
        assert_eq!(p["msgs_per_sec"], 500.0);
        assert_eq!(p["latency_us"]["p50"], 150);
        assert_eq!(p["latency_us"]["p999"], 150);
        assert_eq!(p["max_gap_ms"], 3.25);
        assert!(v["consume"].is_null());
    }
}
