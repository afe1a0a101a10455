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
    let mut st = Served {
        input: BytesMut::new(),
        output: BytesMut::new(),
        pending: InFlight::default(),
        skip: 0,
        reading: true,
        peak: 0,
        solo: false,
        who: Principal::default(),
    };
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
    let mut input = BytesMut::new();

    // Off: returns at once without reading.
    client.write_all(b"abc").await.unwrap();
    let r = busy_poll_read(&rd, &mut input, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(r, Polled::Nothing) && input.is_empty());
    // What is there (or arrives) is read.
    let r = busy_poll_read(&rd, &mut input, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Read));
    assert_eq!(&input[..], b"abc");
    // Nothing arrives: gives up after the limit.
    let started = std::time::Instant::now();
    let r = busy_poll_read(&rd, &mut input, Duration::from_millis(20))
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
    let r = busy_poll_read(&rd, &mut input, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Read));
    assert_eq!(&input[..], b"abcde");
    // The peer closing is seen too.
    drop(writer.await.unwrap());
    let r = busy_poll_read(&rd, &mut input, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(r, Polled::Closed));
}
