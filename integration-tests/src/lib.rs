//! Helpers for end-to-end tests: start real `sluice-nameserver` / `sluice-broker` processes on
//! free loopback ports (each binds port 0 and reports its address through a ready file), wait
//! for conditions with bounded timeouts, and kill every child on drop, also when a test panics.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use tonic::transport::Channel;

pub mod browser;
pub mod cli_child;
pub mod raw;
pub mod replica;
pub mod secure;

/// Where the workspace's binaries are: `SLUICE_BIN_DIR`, else the cargo target dir this test
/// binary was built into (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SLUICE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// The workspace root (where `scripts/` lives), for tests that run the scripts.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("integration-tests sits inside the workspace")
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Polls `cond` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process that is killed (SIGKILL) when dropped.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts `program args... --ready-file DIR/ready` and waits until it reports its address.
    pub fn start(name: &str, program: PathBuf, dir: &Path, args: Vec<String>) -> Result<Node> {
        std::fs::create_dir_all(dir)?;
        let mut node = Node {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            addr: String::new(),
            program,
            args,
            child: None,
        };
        node.spawn()?;
        Ok(node)
    }

    fn ready_file(&self) -> PathBuf {
        self.dir.join("ready")
    }

    fn spawn(&mut self) -> Result<()> {
        let ready = self.ready_file();
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--ready-file")
            .arg(&ready)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it makes the kernel kill the child if this
            // test process dies without running destructors (e.g. it is itself killed).
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                if !a.trim().is_empty() {
                    self.addr = a.trim().to_string();
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "{} exited with {status} before it was ready; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within 30 s; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL: no chance to flush, unregister or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!(
                        "{} exited with {status} on SIGTERM; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not stop within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the same program again with the same arguments and data (a new port).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts a nameserver on a free port under `dir/ns` with the given expiry and scan interval.
pub fn start_nameserver(dir: &Path, broker_expiry_ms: u64, scan_interval_ms: u64) -> Result<Node> {
    start_nameserver_with(dir, broker_expiry_ms, scan_interval_ms, &[])
}

/// A nameserver with `extra` command-line arguments.
pub fn start_nameserver_with(
    dir: &Path,
    broker_expiry_ms: u64,
    scan_interval_ms: u64,
    extra: &[String],
) -> Result<Node> {
    let mut args = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("ns/data").display().to_string(),
        "--broker-expiry-ms".into(),
        broker_expiry_ms.to_string(),
        "--scan-interval-ms".into(),
        scan_interval_ms.to_string(),
    ];
    args.extend(extra.iter().cloned());
    Node::start(
        "nameserver",
        bin("sluice-nameserver"),
        &dir.join("ns"),
        args,
    )
}

/// Store budget of test brokers: their disk-usage ratios count against it rather than against
/// the host's file system, so a host disk filled by something else cannot turn every test into a
/// DISK_FULL test. The thresholds themselves are tested in the store's retention tests.
pub const TEST_DISK_BUDGET: u64 = 16 << 30;

/// Settings for test clusters: short intervals so expiry and rebalancing happen in seconds.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub broker_expiry_ms: u64,
    pub scan_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub flush: &'static str,
    pub extra_broker_toml: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            broker_expiry_ms: 3_000,
            scan_interval_ms: 200,
            heartbeat_interval_ms: 500,
            flush: "async",
            extra_broker_toml: String::new(),
        }
    }
}

/// A nameserver and some brokers in a temp dir; everything is killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub opts: ClusterOptions,
    pub nameserver: Node,
    pub brokers: Vec<Node>,
}

impl Cluster {
    pub fn start(brokers: usize, opts: ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("sluice-it-").tempdir()?;
        let nameserver =
            start_nameserver(dir.path(), opts.broker_expiry_ms, opts.scan_interval_ms)?;
        let mut c = Cluster {
            dir,
            opts,
            nameserver,
            brokers: Vec::new(),
        };
        for i in 0..brokers {
            c.add_broker(&format!("broker-{}", (b'a' + i as u8) as char))?;
        }
        Ok(c)
    }

    pub fn add_broker(&mut self, name: &str) -> Result<&mut Node> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("broker.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nnameservers = [\"{}\"]\n\
                 cluster_name = \"it\"\nbroker_name = \"{name}\"\nflush = \"{}\"\n\
                 heartbeat_interval_ms = {}\nconsumer_expiry_ms = 3000\nsegment_size = 4194304\n\
                 disk_budget_bytes = {TEST_DISK_BUDGET}\n{}\n",
                dir.join("data").display(),
                self.nameserver.addr,
                self.opts.flush,
                self.opts.heartbeat_interval_ms,
                self.opts.extra_broker_toml,
            ),
        )?;
        let node = Node::start(
            name,
            bin("sluice-broker"),
            &dir,
            vec!["--config".into(), config.display().to_string()],
        )?;
        self.brokers.push(node);
        Ok(self.brokers.last_mut().expect("just pushed"))
    }

    pub fn nameservers(&self) -> String {
        self.nameserver.addr.clone()
    }

    pub async fn broker_client(&self, i: usize) -> Result<BrokerClient<Channel>> {
        connect_broker(&self.brokers[i].addr).await
    }

    pub async fn nameserver_client(&self) -> Result<NameServerClient<Channel>> {
        let ch = Channel::from_shared(format!("http://{}", self.nameserver.addr))?
            .connect()
            .await?;
        Ok(NameServerClient::new(ch))
    }

    /// Runs the `sluice` CLI against this cluster and returns its stdout (fails on non-zero exit).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("sluice"))
            .arg("--nameservers")
            .arg(self.nameservers())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A group's total lag as `sluice group lag GROUP --json` reports it.
    pub fn group_lag_total(&self, group: &str) -> Result<u64> {
        let doc: serde_json::Value =
            serde_json::from_str(&self.cli(&["group", "lag", group, "--json"])?)?;
        let rows = doc
            .as_array()
            .or_else(|| doc.get("queues").and_then(|q| q.as_array()))
            .ok_or_else(|| anyhow::anyhow!("no lag rows in {doc}"))?;
        rows.iter()
            .map(|r| {
                r["lag"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("a lag row without lag: {r}"))
            })
            .sum()
    }
}

pub async fn connect_broker(addr: &str) -> Result<BrokerClient<Channel>> {
    connect_broker_with(addr, None).await
}

/// A channel to `addr`, over TLS with `tls` when given.
pub async fn channel_to(
    addr: &str,
    tls: Option<&sluice_proto::tls::net::Connector>,
) -> Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let e =
        Channel::from_shared(format!("{scheme}://{addr}"))?.connect_timeout(Duration::from_secs(5));
    Ok(match tls {
        Some(c) => e.connect_with_connector(c.clone()).await?,
        None => e.connect().await?,
    })
}

/// A broker client to `addr`, over TLS with `tls` when given.
pub async fn connect_broker_with(
    addr: &str,
    tls: Option<&sluice_proto::tls::net::Connector>,
) -> Result<BrokerClient<Channel>> {
    let ch = channel_to(addr, tls).await?;
    Ok(BrokerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// `msg` as a request for `method` to the broker at `addr` (empty: a nameserver), signed as
/// `creds` when given.
pub fn signed<T>(
    msg: T,
    addr: &str,
    method: &str,
    creds: Option<&sluice_client::Credentials>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(c) = creds {
        let signer = sluice_proto::auth::Signer::new(c.clone(), rand::random());
        let resource = sluice_proto::auth::resource(addr, method);
        let header = signer.sign(&resource, sluice_client::time::now_ms());
        if let Ok(v) = header.parse() {
            req.metadata_mut()
                .insert(sluice_proto::auth::AUTH_HEADER, v);
        }
    }
    req
}

/// A CreateTopic request with `queues` read and write queues, readable and writable.
pub fn create_topic_request(name: &str, queues: u32) -> sluice_proto::v1::CreateTopicRequest {
    sluice_proto::v1::CreateTopicRequest {
        config: Some(sluice_proto::v1::TopicConfig {
            name: name.into(),
            read_queues: queues,
            write_queues: queues,
            perm: sluice_proto::perm::READ_WRITE,
        }),
    }
}
