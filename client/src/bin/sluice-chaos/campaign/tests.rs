use super::*;

fn node(name: &str, group: Option<&str>, id: u64) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        kind: if group.is_some() {
            "broker"
        } else {
            "nameserver"
        }
        .into(),
        group: group.map(String::from),
        replica_id: id,
        address: format!("127.0.0.1:{}", 1000 + id),
        state: "running".into(),
    }
}

#[test]
fn groups_need_three_replicas() {
    let mut nodes = vec![
        node("ns-1", None, 0),
        node("broker-a-3", Some("broker-a"), 3),
        node("broker-a-1", Some("broker-a"), 1),
        node("broker-a-2", Some("broker-a"), 2),
    ];
    let g = groups_of(&nodes).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(
        g[0].replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(g[0].replica(2).unwrap().node, "broker-a-2");
    nodes.push(node("broker-b-1", Some("broker-b"), 1));
    assert!(groups_of(&nodes)
        .unwrap_err()
        .to_string()
        .contains("broker-b has 1"));
    assert!(groups_of(&nodes[..1]).is_err());
}
