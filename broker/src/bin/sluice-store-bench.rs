//! Storage-engine benchmark: appends through the real `MessageStore` and reports throughput
//! and per-append latency; optionally measures the disk itself first (`--disk-probe`).
//!
//! Example (the table in docs/benchmarks.md):
//! `sluice-store-bench --dir /tmp/sb --disk-probe --size 128,1024,4096 --flush async,sync \
//!   --writers 64 --count 200000`

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use sluice_broker::store::{AppendBatch, AppendMessage, FlushMode, MessageStore, StoreConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the Sluice storage engine and the disk under it")]
struct Args {
    /// Scratch directory (each run uses and removes a fresh subdirectory).
    #[arg(long)]
    dir: PathBuf,
    /// Message body sizes in bytes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    size: Vec<usize>,
    /// Messages per run (all writers together).
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// Flush modes to run (comma-separated): async, sync.
    #[arg(long, value_delimiter = ',', default_value = "async")]
    flush: Vec<String>,
    /// Concurrent writers (comma-separated list for several runs).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    writers: Vec<usize>,
    /// Messages per append call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Queues the writers spread over.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    /// Commit-log segment size in MiB.
    #[arg(long, default_value_t = 1024)]
    segment_mib: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measure the disk first: sequential write bandwidth and write+fdatasync latency.
    #[arg(long)]
    disk_probe: bool,
    /// Bytes written by the sequential-write probe, in MiB.
    #[arg(long, default_value_t = 2048)]
    probe_mib: usize,
    /// Number of write+fdatasync rounds in the latency probe.
    #[arg(long, default_value_t = 2000)]
    probe_syncs: usize,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    fs::create_dir_all(&args.dir)?;
    if args.disk_probe {
        disk_probe(&args.dir, args.probe_mib, args.probe_syncs)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    println!();
    println!("| body | flush | writers | batch | messages | msgs/s | MB/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | with final fsync |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for flush in &args.flush {
        let mode = match flush.as_str() {
            "async" => FlushMode::Async,
            "sync" => FlushMode::Sync,
            other => return Err(format!("--flush: unknown mode {other:?} (async|sync)").into()),
        };
        for &size in &args.size {
            for &writers in &args.writers {
                let run = Run {
                    size,
                    mode,
                    writers: writers.max(1),
                    batch: args.batch.max(1),
                };
                let r = rt.block_on(run.execute(&args))?;
                println!(
                    "| {} B | {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.0} msgs/s |",
                    size,
                    flush,
                    run.writers,
                    run.batch,
                    r.messages,
                    r.messages as f64 / r.acked.as_secs_f64(),
                    (r.messages * size) as f64 / r.acked.as_secs_f64() / 1e6,
                    r.hist.value_at_quantile(0.5),
                    r.hist.value_at_quantile(0.9),
                    r.hist.value_at_quantile(0.99),
                    r.hist.value_at_quantile(0.999),
                    r.hist.max(),
                    r.messages as f64 / r.total.as_secs_f64(),
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Run {
    size: usize,
    mode: FlushMode,
    writers: usize,
    batch: usize,
}

struct Outcome {
    messages: usize,
    /// Until the last append was acknowledged.
    acked: Duration,
    /// Including the shutdown's final fsync and checkpoint.
    total: Duration,
    /// Per-append latency in microseconds.
    hist: Histogram<u64>,
}

impl Run {
    async fn execute(self, args: &Args) -> Result<Outcome, BoxError> {
        let dir = args.dir.join(format!(
            "run-{}-{:?}-{}",
            self.size, self.mode, self.writers
        ));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let mut cfg = StoreConfig::new(&dir);
        cfg.flush = self.mode;
        cfg.segment_size = args.segment_mib << 20;
        cfg.store_host = "127.0.0.1:10911".into();
        let store = MessageStore::open(cfg).await?;
        let per_writer = (args.count / self.writers / self.batch).max(1);
        let body = Bytes::from(vec![b'x'; self.size]);
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(self.writers);
        for w in 0..self.writers {
            let store = store.clone();
            let body = body.clone();
            let queue = (w as u32) % args.queues.max(1);
            let batch = self.batch;
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                for i in 0..per_writer {
                    let messages = (0..batch)
                        .map(|j| AppendMessage {
                            message_id: format!("{w}-{i}-{j}"),
                            body: body.clone(),
                            tag: "bench".into(),
                            born_timestamp_ms: 1,
                            ..Default::default()
                        })
                        .collect();
                    let t0 = Instant::now();
                    store
                        .append(AppendBatch {
                            topic: "bench".into(),
                            queue_id: queue,
                            messages,
                        })
                        .await?;
                    hist.record((t0.elapsed().as_micros() as u64).max(1))?;
                }
                Ok::<_, BoxError>(hist)
            }));
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for t in tasks {
            hist.add(t.await??)?;
        }
        let acked = start.elapsed();
        store.shutdown().await?;
        let total = start.elapsed();
        drop(store);
        fs::remove_dir_all(&dir)?;
        Ok(Outcome {
            messages: per_writer * self.writers * self.batch,
            acked,
            total,
            hist,
        })
    }
}

/// Measures what the disk under `dir` can do, with the same kind of I/O the store does.
fn disk_probe(dir: &Path, mib: usize, syncs: usize) -> Result<(), BoxError> {
    let path = dir.join("disk-probe.tmp");
    // Sequential write bandwidth: 1 MiB writes, then one fdatasync; the time includes it, so
    // this is what reaches the disk, not the page cache.
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let start = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "disk: sequential write {} MiB in 1 MiB writes + fdatasync: {:.0} MB/s",
        mib,
        (mib << 20) as f64 / secs / 1e6
    );
    drop(f);
    fs::remove_file(&path)?;

    // Append 4 KiB + fdatasync, as a sync-mode group commit of a few messages does.
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0xa5u8; 4096];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let start = Instant::now();
    for i in 0..syncs {
        let t0 = Instant::now();
        f.write_all_at(&block, (i * 4096) as u64)?;
        f.sync_data()?;
        hist.record((t0.elapsed().as_micros() as u64).max(1))?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "disk: 4 KiB append + fdatasync: {:.0}/s, latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        syncs as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    drop(f);
    fs::remove_file(&path)?;
    Ok(())
}
