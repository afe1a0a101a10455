//! Turns wire requests into validated registrations, with a clear INVALID_ARGUMENT for
//! anything malformed.

use std::collections::BTreeMap;

use sluice_proto::v1::{RegisterBrokerRequest, Role, UnregisterBrokerRequest};
use sluice_proto::{perm, ApiError, ErrorCode};

use super::{Registration, Unregistration};

/// Longest cluster or broker name, in bytes.
pub const MAX_NAME_LEN: usize = 127;
/// Longest topic name, in bytes (the broker's limit, see `ErrorCode::InvalidTopicName`).
pub const MAX_TOPIC_NAME_LEN: usize = 127;
/// Longest broker address (`host:port`), in bytes.
const MAX_ADDRESS_LEN: usize = 255;

/// Cluster and broker names end up in tables and file names: no whitespace or control
/// characters, bounded length.
fn validate_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!(
            "{what} is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid(format!(
            "{what} {name:?} contains whitespace or control characters"
        )));
    }
    Ok(())
}

/// Topic names: 1..=127 bytes of `[A-Za-z0-9_%|-]`, the rule the brokers apply.
pub fn validate_topic_name(topic: &str) -> Result<(), ApiError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '%' | '|' | '-');
    if topic.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidTopicName,
            "topic name is empty",
        ));
    }
    if topic.len() > MAX_TOPIC_NAME_LEN {
        return Err(ApiError::new(
            ErrorCode::InvalidTopicName,
            format!(
                "topic name is {} bytes long, the limit is {MAX_TOPIC_NAME_LEN}",
                topic.len()
            ),
        ));
    }
    if !topic.chars().all(valid_char) {
        return Err(ApiError::new(
            ErrorCode::InvalidTopicName,
            format!("topic name {topic:?} has characters outside [A-Za-z0-9_%|-]"),
        ));
    }
    Ok(())
}

/// `host:port` with a non-empty host and a port in 1..=65535. Hosts may be names, IPv4 or
/// bracketed IPv6 addresses; they are not resolved here.
fn validate_address(address: &str) -> Result<(), ApiError> {
    if address.is_empty() {
        return Err(ApiError::invalid("broker address is empty"));
    }
    if address.len() > MAX_ADDRESS_LEN || address.chars().any(|c| c.is_whitespace()) {
        return Err(ApiError::invalid(format!(
            "broker address {address:?} is not a host:port"
        )));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(ApiError::invalid(format!(
            "broker address {address:?} has no port (expected host:port)"
        )));
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if host.is_empty() || !port_ok {
        return Err(ApiError::invalid(format!(
            "broker address {address:?} is not a host:port with a port in 1..=65535"
        )));
    }
    Ok(())
}

impl Registration {
    pub fn from_request(req: RegisterBrokerRequest) -> Result<Self, ApiError> {
        validate_name("cluster name", &req.cluster_name)?;
        validate_name("broker name", &req.broker_name)?;
        if req.replica_id == 0 {
            return Err(ApiError::invalid(format!(
                "broker {}: replica id must be at least 1 (0 means \"no master\" in routes)",
                req.broker_name
            )));
        }
        let role = match Role::try_from(req.role) {
            Ok(role @ (Role::Master | Role::Slave)) => role,
            _ => {
                return Err(ApiError::invalid(format!(
                    "broker {}: role must be MASTER or SLAVE, got {}",
                    req.broker_name, req.role
                )))
            }
        };
        validate_address(&req.address)?;
        if !req.data_address.is_empty() {
            validate_address(&req.data_address)
                .map_err(|e| ApiError::invalid(format!("data port: {}", e.message)))?;
        }
        let mut topics = BTreeMap::new();
        for topic in req.topics {
            validate_topic_name(&topic.name).map_err(|e| {
                ApiError::invalid(format!("broker {}: {}", req.broker_name, e.message))
            })?;
            if topic.perm & !perm::READ_WRITE != 0 {
                return Err(ApiError::invalid(format!(
                    "broker {}: topic {} has permission {}, only bits READ (4) and WRITE (2) exist",
                    req.broker_name, topic.name, topic.perm
                )));
            }
            if topics.contains_key(&topic.name) {
                return Err(ApiError::invalid(format!(
                    "broker {}: topic {} is listed twice",
                    req.broker_name, topic.name
                )));
            }
            topics.insert(topic.name.clone(), topic);
        }
        Ok(Registration {
            cluster_name: req.cluster_name,
            broker_name: req.broker_name,
            replica_id: req.replica_id,
            role,
            address: req.address,
            data_address: req.data_address,
            term: req.term,
            max_offset: req.max_offset,
            topics,
        })
    }
}

impl Unregistration {
    pub fn from_request(req: UnregisterBrokerRequest) -> Result<Self, ApiError> {
        validate_name("broker name", &req.broker_name)?;
        if req.replica_id == 0 {
            return Err(ApiError::invalid(format!(
                "broker {}: replica id must be at least 1",
                req.broker_name
            )));
        }
        Ok(Unregistration {
            cluster_name: req.cluster_name,
            broker_name: req.broker_name,
            replica_id: req.replica_id,
            address: req.address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::TopicConfig;

    fn request() -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster_name: "c1".into(),
            broker_name: "broker-a".into(),
            replica_id: 1,
            role: Role::Master as i32,
            address: "127.0.0.1:10911".into(),
            topics: vec![TopicConfig {
                name: "orders".into(),
                read_queues: 4,
                write_queues: 4,
                perm: perm::READ_WRITE,
            }],
            term: 3,
            max_offset: 99,
            data_address: "127.0.0.1:10912".into(),
        }
    }

    fn rejected(req: RegisterBrokerRequest) -> String {
        let err = Registration::from_request(req).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    #[test]
    fn accepts_a_well_formed_request() {
        let reg = Registration::from_request(request()).unwrap();
        assert_eq!(reg.role, Role::Master);
        assert_eq!(reg.topics.len(), 1);
        assert_eq!(reg.topics["orders"].read_queues, 4);
        let mut ipv6 = request();
        ipv6.address = "[::1]:9000".into();
        assert!(Registration::from_request(ipv6).is_ok());
    }

    #[test]
    fn rejects_empty_names_and_address() {
        let mut r = request();
        r.cluster_name.clear();
        assert!(rejected(r).contains("cluster name is empty"));
        let mut r = request();
        r.broker_name.clear();
        assert!(rejected(r).contains("broker name is empty"));
        let mut r = request();
        r.address.clear();
        assert!(rejected(r).contains("address is empty"));
        let mut r = request();
        r.broker_name = "a b".into();
        assert!(rejected(r).contains("whitespace"));
        let mut r = request();
        r.broker_name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(rejected(r).contains("limit"));
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "localhost",
            ":9000",
            "host:0",
            "host:70000",
            "host:x",
            "a b:1",
        ] {
            let mut r = request();
            r.address = bad.into();
            assert!(rejected(r).contains("address"), "{bad} accepted");
            let mut r = request();
            r.data_address = bad.into();
            assert!(
                rejected(r).contains("data port"),
                "data port {bad} accepted"
            );
        }
        // No data port at all is fine.
        let mut r = request();
        r.data_address.clear();
        assert_eq!(Registration::from_request(r).unwrap().data_address, "");
    }

    #[test]
    fn rejects_unknown_role_and_replica_zero() {
        let mut r = request();
        r.role = Role::Unspecified as i32;
        assert!(rejected(r).contains("role must be MASTER"));
        let mut r = request();
        r.role = 42;
        assert!(rejected(r).contains("got 42"));
        let mut r = request();
        r.replica_id = 0;
        assert!(rejected(r).contains("replica id"));
    }

    #[test]
    fn rejects_bad_topics() {
        let mut r = request();
        r.topics[0].name = "bad topic".into();
        assert!(rejected(r).contains("outside"));
        let mut r = request();
        r.topics[0].name.clear();
        assert!(rejected(r).contains("topic name is empty"));
        let mut r = request();
        r.topics[0].perm = 1;
        assert!(rejected(r).contains("permission"));
        let mut r = request();
        let dup = r.topics[0].clone();
        r.topics.push(dup);
        assert!(rejected(r).contains("listed twice"));
    }

    #[test]
    fn topic_names_follow_the_broker_rule() {
        assert!(validate_topic_name("%RETRY%group-1|x_y").is_ok());
        assert!(validate_topic_name(&"t".repeat(MAX_TOPIC_NAME_LEN)).is_ok());
        let err = validate_topic_name(&"t".repeat(MAX_TOPIC_NAME_LEN + 1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTopicName);
        assert!(validate_topic_name("a.b").is_err());
    }

    #[test]
    fn unregister_needs_a_broker_name_and_replica_id() {
        let ok = UnregisterBrokerRequest {
            cluster_name: "c1".into(),
            broker_name: "b".into(),
            replica_id: 1,
            address: String::new(),
        };
        assert!(Unregistration::from_request(ok.clone()).is_ok());
        let mut r = ok.clone();
        r.broker_name.clear();
        assert!(Unregistration::from_request(r).is_err());
        let mut r = ok;
        r.replica_id = 0;
        assert!(Unregistration::from_request(r).is_err());
    }
}
