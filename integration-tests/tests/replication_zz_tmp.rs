use std::time::{Duration, Instant};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, create_topic_request};
use sluice_proto::v1::SendRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tmp_latency() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let master = cluster.await_master(Duration::from_secs(10), None, None).await.unwrap();
    let follower = cluster.peers.keys().copied().find(|&i| i != master).unwrap();
    let mut m = connect_broker(cluster.address(master)).await.unwrap();
    m.create_topic(create_topic_request("t", 1)).await.unwrap();
    let lp = cluster.node(master).pid().unwrap();
    let fp = cluster.node(follower).pid().unwrap();
    let mut s1 = std::process::Command::new("strace").args(["-f", "-T", "-tt", "-e", "trace=fsync,fdatasync,rename,sendto,recvfrom,write,writev,read,readv,epoll_wait,futex", "-o", "/tmp/st_leader.txt", "-p", &lp.to_string()]).spawn().unwrap();
    let mut s2 = std::process::Command::new("strace").args(["-f", "-T", "-tt", "-e", "trace=fsync,fdatasync,rename,sendto,recvfrom,write,writev", "-o", "/tmp/st_follower.txt", "-p", &fp.to_string()]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        m.send(SendRequest { topic: "t".into(), queue_id: 0, messages: vec![sluice_proto::v1::Message { body: format!("{i}").into_bytes().into(), ..Default::default() }] }).await.unwrap();
        println!("send {i}: {:?}", t.elapsed());
    }
    println!("per send {:?}", start.elapsed() / 20);
    unsafe { libc::kill(s1.id() as i32, libc::SIGINT); libc::kill(s2.id() as i32, libc::SIGINT); }
    let _ = s1.wait(); let _ = s2.wait();
}
