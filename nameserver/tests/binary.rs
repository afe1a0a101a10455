//! The `sluice-nameserver` binary: startup line, ready file, config file, SIGTERM, restart.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{GetConfigRequest, PutConfigRequest, RegisterBrokerRequest, Role};

const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_sluice-nameserver");

/// A child process killed when the test ends, also on panic.
struct Proc {
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdout_lines: rx,
        }
    }

    fn first_line(&self) -> String {
        self.stdout_lines
            .recv_timeout(WAIT)
            .expect("no line on stdout in time")
    }

    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_ready(path: &Path) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.parse().expect("ready file holds ip:port");
        }
        assert!(Instant::now() < deadline, "no ready file in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_stops_on_sigterm_and_keeps_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ready = dir.path().join("ns.addr");
    let data_s = data.to_str().unwrap();
    let ready_s = ready.to_str().unwrap();

    let mut p = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_s,
        "--ready-file",
        ready_s,
    ]);
    let line = p.first_line();
    let addr = read_ready(&ready);
    assert_eq!(line, format!("sluice-nameserver listening on {addr}"));
    assert_ne!(addr.port(), 0);

    let mut c = NameServerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.put_config(PutConfigRequest {
        namespace: "ns".into(),
        key: "k".into(),
        value: "v".into(),
    })
    .await
    .unwrap();
    drop(c);
    let status = p.terminate();
    assert!(status.success(), "exit status {status:?}");

    // Restart from a config file; the command line overrides its expiry.
    let cfg = dir.path().join("ns.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{data_s}\"\nbroker_expiry_ms = 999\n"),
    )
    .unwrap();
    std::fs::remove_file(&ready).unwrap();
    let mut p = Proc::spawn(&[
        "--config",
        cfg.to_str().unwrap(),
        "--broker-expiry-ms",
        "4321",
        "--ready-file",
        ready_s,
    ]);
    let addr = read_ready(&ready);
    let mut c = NameServerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let got = c
        .get_config(GetConfigRequest {
            namespace: "ns".into(),
            key: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, "v");
    let resp = c
        .register_broker(RegisterBrokerRequest {
            cluster_name: "c".into(),
            broker_name: "b".into(),
            replica_id: 1,
            role: Role::Master as i32,
            address: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.expiry_ms, 4321);
    drop(c);
    assert!(p.terminate().success());
}

#[test]
fn bad_command_lines_fail_with_a_message() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data_dir is required"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on not-an-address"),
        "{stderr}"
    );
}

/// GET /metrics from `addr`: the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_registrations_routes_and_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let metrics = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let _p = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
        "--broker-expiry-ms",
        "300",
        "--metrics-listen",
        &metrics,
    ]);
    let addr = read_ready(&ready);
    let mut c = NameServerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.register_broker(RegisterBrokerRequest {
        cluster_name: "c".into(),
        broker_name: "b".into(),
        replica_id: 1,
        role: Role::Master as i32,
        address: "127.0.0.1:1".into(),
        topics: vec![sluice_proto::v1::TopicConfig {
            name: "t".into(),
            read_queues: 1,
            write_queues: 1,
            perm: 6,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let route = |topic: &str| sluice_proto::v1::GetTopicRouteRequest {
        topic: topic.into(),
    };
    c.get_topic_route(route("t")).await.unwrap();
    assert!(c.get_topic_route(route("missing")).await.is_err());
    let text = tokio::task::block_in_place(|| scrape(&metrics));
    for line in [
        "sluice_nameserver_registrations_total 1",
        "sluice_nameserver_routes_served_total 1",
        "sluice_nameserver_routes_refused_total 1",
        "sluice_nameserver_brokers 1",
        "sluice_nameserver_topics 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    // Silent past its expiry: dropped and counted.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = tokio::task::block_in_place(|| scrape(&metrics));
        if text
            .lines()
            .any(|l| l == "sluice_nameserver_broker_expiries_total 1")
        {
            assert!(
                text.lines().any(|l| l == "sluice_nameserver_brokers 0"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no expiry counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
