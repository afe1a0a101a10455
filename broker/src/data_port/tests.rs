use super::*;

#[test]
fn in_flight_room_is_bounded_by_count_and_bytes() {
    let mut f = InFlight::default();
    // Nothing pending: any single send is taken, however large.
    assert!(f.has_room(MAX_PENDING_BYTES * 2));
    let h = RequestHeader {
        body_len: MAX_PENDING_BYTES - 10,
        kind: Kind::Send as u8,
        request_id: 1,
    };
    f.bytes += h.body_len;
    f.sends.push(std::future::pending().boxed());
    assert!(f.has_room(10));
    assert!(!f.has_room(11));
    f.finished(&h);
    assert!(f.has_room(MAX_PENDING_BYTES));
    for _ in 1..MAX_IN_FLIGHT {
        f.sends.push(std::future::pending().boxed());
    }
    assert!(!f.has_room(0), "count limit");
}

#[test]
fn advertised_keeps_the_host_and_takes_the_port() {
    let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
    assert_eq!(advertised("10.1.2.3:10911", bound), "10.1.2.3:4000");
    assert_eq!(advertised("[::1]:10911", bound), "[::1]:4000");
    assert_eq!(advertised("broker-a:10911", bound), "broker-a:4000");
}

#[test]
fn only_a_client_that_sends_one_at_a_time_is_busy_polled() {
    let mut st = Served::new(true, Wire::default());
    st.note_idle();
    assert!(!st.solo, "a new connection has not shown how it sends");
    st.peak = 1;
    st.note_idle();
    assert!(st.solo && st.peak == 0);
    st.note_idle();
    assert!(st.solo, "an idle stretch changes nothing");
    st.peak = 3;
    st.note_idle();
    assert!(!st.solo, "three in flight at once");
    st.peak = 1;
    st.note_idle();
    assert!(st.solo);
}

#[tokio::test]
async fn busy_polling_reads_what_arrives_and_gives_up_after_its_limit() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (rd, _wr) = server.into_split();
    let mut st = Served::new(true, Wire::default());

    // Off: returns at once without reading.
    client.write_all(b"abc").await.unwrap();
    let r = busy_poll_read(&rd, &mut st, Duration::ZERO).await.unwrap();
    assert!(matches!(r, Polled::Nothing) && st.input.is_empty());
    // What is there (or arrives) is read.
    let r = busy_poll_read(&rd, &mut st, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Read));
    assert_eq!(&st.input[..], b"abc");
    // Nothing arrives: gives up after the limit.
    let started = std::time::Instant::now();
    let r = busy_poll_read(&rd, &mut st, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Nothing));
    assert!(started.elapsed() >= Duration::from_millis(20));
    // Bytes written while it polls, from another task, end the poll.
    let writer = tokio::spawn(async move {
        tokio::task::yield_now().await;
        client.write_all(b"de").await.unwrap();
        client
    });
    let r = busy_poll_read(&rd, &mut st, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Read));
    assert_eq!(&st.input[..], b"abcde");
    // The peer closing is seen too.
    drop(writer.await.unwrap());
    let r = busy_poll_read(&rd, &mut st, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Closed));
}

/// A TLS client and a server connection driven through [`Wire`] over real sockets: bytes
/// arrive whole and in order both ways, whatever the record and read boundaries, including
/// bytes the client sent right behind its handshake and a key update between them.
#[tokio::test]
async fn tls_wire_carries_bytes_both_ways() {
    use sluice_proto::tls::{self, net::Connector};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = tls::gen::local_configs(dir.path(), tls::ALPN_DATA).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // 300 KiB of a pattern, written in uneven pieces.
    let sent: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let to_send = sent.clone();
    let client = tokio::spawn(async move {
        let c = Connector::new(Arc::new(client));
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        let mut tls = c.connect("127.0.0.1", port).await.unwrap();
        let (first, rest) = to_send.split_at(100 * 1024);
        tls.write_all(first).await.unwrap();
        // Mid-stream, the client moves to new keys and asks the server to do the same: the
        // session's own records, both ways, between application data.
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        for piece in rest.chunks(7919) {
            wr.write_all(piece).await.unwrap();
        }
        wr.flush().await.unwrap();
        wr.shutdown().await.unwrap();
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        back
    });
    let (mut sock, _) = listener.accept().await.unwrap();
    let wire = Wire::accept(&mut sock, Arc::new(server)).await.unwrap();
    let mut st = Served::new(true, wire);
    assert!(!st.wire.open(&mut st.input).unwrap());
    let (mut rd, mut wr) = sock.into_split();
    // The client's shutdown is a close_notify: seen as the end, before the socket's.
    loop {
        let n = rd.read_buf(st.wire.read_into(&mut st.input)).await.unwrap();
        assert!(n > 0, "close_notify comes before the end of the stream");
        if st.wire.open(&mut st.input).unwrap() {
            break;
        }
    }
    assert!(
        st.input[..] == sent[..],
        "{} bytes of {}",
        st.input.len(),
        sent.len()
    );
    // Back: larger than rustls' default send limit, in one flush.
    st.output.extend_from_slice(&sent);
    st.output.extend_from_slice(&sent);
    assert!(st.wire.wants_write(&st.output));
    st.wire.flush(&mut st.output, &mut wr).await.unwrap();
    assert!(st.output.is_empty());
    // A clean end, as the server ends a connection: the client reads to its end, no error.
    st.wire.close();
    assert!(st.wire.wants_write(&st.output));
    st.wire.flush(&mut st.output, &mut wr).await.unwrap();
    drop(wr);
    let back = client.await.unwrap();
    assert_eq!(back.len(), 2 * sent.len());
    assert!(back[..sent.len()] == sent[..] && back[sent.len()..] == sent[..]);
}
