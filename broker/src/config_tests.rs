use super::*;

#[test]
fn parses_toml_and_rejects_unknown_keys() {
    let c: BrokerConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nflush = \"sync\"\nnameservers = [\"a:1\", \"b:2\"]\nauto_create_topics = true\n",
    )
    .unwrap();
    assert_eq!(c.flush, FlushMode::Sync);
    assert_eq!(c.nameservers.len(), 2);
    assert!(c.auto_create_topics);
    assert_eq!(c.default_queues, 8);
    assert!(toml::from_str::<BrokerConfig>("bogus = 1").is_err());
    // A broker's retention waits for its transactions' floor.
    assert!(c.store_config("h:1").hold_until_transaction_floor);
}

#[test]
fn validation() {
    let c = BrokerConfig {
        replica_id: 0,
        ..Default::default()
    };
    assert!(c.validate().is_err());
    assert!(BrokerConfig::default().validate().is_ok());
    let c = BrokerConfig {
        read_hint_behind_memory_ratio: 1.5,
        ..Default::default()
    };
    assert!(c.validate().is_err());
    // Entries a replication RPC cannot carry.
    let c = BrokerConfig {
        max_request_size: 64 << 20,
        ..Default::default()
    };
    assert!(c.validate().is_err());
    let c = BrokerConfig {
        max_transaction_bytes: 40 << 20,
        ..Default::default()
    };
    assert!(c.validate().is_err());
    let c = BrokerConfig {
        max_transaction_messages: 1 << 20,
        ..Default::default()
    };
    assert!(c.validate().is_err());
}

#[test]
fn read_hint_keys() {
    let c = BrokerConfig::default();
    assert!(c.slave_read_enable);
    assert_eq!(c.read_hint_behind_memory_ratio, 0.40);
    let c: BrokerConfig = toml::from_str(
        "slave_read_enable = false\nread_hint_behind_memory_ratio = 0.0\n\
         read_hint_write_pressure_bytes_per_sec = 0\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert!(!c.slave_read_enable);
    assert_eq!(c.read_hint_behind_memory_ratio, 0.0);
    assert_eq!(c.read_hint_write_pressure_bytes_per_sec, 0);
}

#[test]
fn replica_group_settings() {
    let c: BrokerConfig = toml::from_str(
        "replica_id = 2\nack = \"leader\"\nlearners = [4]\nenable_fault_injection = true\n\
         [peers]\n1 = \"127.0.0.1:1001\"\n2 = \"127.0.0.1:1002\"\n3 = \"127.0.0.1:1003\"\n\
         4 = \"127.0.0.1:1004\"\n",
    )
    .unwrap();
    c.validate().unwrap();
    let r = c.replica_config().unwrap().unwrap();
    assert_eq!(
        (r.id, r.voters.clone(), r.learners.clone()),
        (2, vec![1, 2, 3], vec![4])
    );
    assert_eq!(r.ack_policy, AckPolicy::Leader);
    assert_eq!(c.store_config("x").confirm, ConfirmMode::External);
    assert_eq!(
        BrokerConfig::default().store_config("x").confirm,
        ConfirmMode::FollowWrite
    );

    let err = |f: &dyn Fn(&mut BrokerConfig)| {
        let mut c2 = c.clone();
        f(&mut c2);
        c2.validate().unwrap_err().to_string()
    };
    assert!(err(&|c| c.replica_id = 9).contains("not in peers"));
    assert!(err(&|c| c.voters = vec![1, 2]).contains("neither a voter"));
    assert!(err(&|c| c.voters = vec![1, 2, 3, 5]).contains("no address"));
    assert!(err(&|c| {
        c.peers.insert(3, "nope".into());
    })
    .contains("HOST:PORT"));
    assert!(err(&|c| c.election_ticks = 20).contains("max_election_ticks"));
    assert!(toml::from_str::<BrokerConfig>("[peers]\nx = \"a:1\"\n").is_err());
    assert!(toml::from_str::<BrokerConfig>("ack = \"all\"\n").is_err());
}

#[test]
fn peers_flag() {
    let p = parse_peers("1=a:1, 2=b:2,3=c:3").unwrap();
    assert_eq!(p.get(&2).map(String::as_str), Some("b:2"));
    assert!(parse_peers("1=a:1,1=b:2").is_err());
    assert!(parse_peers("a:1").is_err());
    assert!(parse_peers("x=a:1").is_err());
}
