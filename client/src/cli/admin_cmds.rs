//! topic, cluster, group and message commands.

use serde::Serialize;
use sluice_client::{Admin, BrokerStatusRow, LagRow, TopicCreated, TopicRouteInfo, TopicUpdate};

use super::args::{ClusterCommand, DlqCommand, MessageCommand, TopicCommand};
use super::output::{message_line, print_json, MessageView, Table};
use sluice_client::time::format_time;

#[derive(Serialize)]
struct CreatedDoc<'a> {
    topic: &'a str,
    queues: u32,
    brokers: &'a [TopicCreated],
}

#[derive(Serialize)]
struct TopicsDoc<'a> {
    topics: &'a [String],
}

#[derive(Serialize)]
struct TopicQueuesDoc<'a> {
    topic: &'a str,
    /// Messages stored in all queues (max - min).
    messages: u64,
    queues: &'a [sluice_client::QueueOffsetsRow],
}

#[derive(Serialize)]
struct ClusterDoc<'a> {
    brokers: &'a [BrokerStatusRow],
}

#[derive(Debug, Serialize)]
pub struct LagDoc<'a> {
    pub group: &'a str,
    pub total_lag: u64,
    pub queues: &'a [LagRow],
}

#[derive(Serialize)]
struct MessagesDoc {
    count: usize,
    messages: Vec<MessageView>,
}

pub async fn topic(admin: &Admin, cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            queues,
            cluster,
            out,
        } => {
            let created = admin
                .create_topic(&name, queues, cluster.as_deref())
                .await?;
            if out.json {
                return print_json(&CreatedDoc {
                    topic: &name,
                    queues,
                    brokers: &created,
                });
            }
            let mut t = Table::new(&["BROKER", "ADDRESS", "RESULT"]);
            for c in &created {
                let result = if c.created {
                    "created"
                } else {
                    "already existed"
                };
                t.row(vec![
                    c.broker_name.clone(),
                    c.address.clone(),
                    result.into(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        TopicCommand::List { out } => {
            let topics = admin.list_topics().await?;
            if out.json {
                return print_json(&TopicsDoc { topics: &topics });
            }
            let mut t = Table::new(&["TOPIC"]);
            for name in topics {
                t.row(vec![name]);
            }
            t.print()?;
            Ok(())
        }
        TopicCommand::Describe { name, out } => {
            let queues = admin.topic_queues(&name).await?;
            if out.json {
                return print_json(&TopicQueuesDoc {
                    topic: &name,
                    messages: queues
                        .iter()
                        .map(|q| q.max_offset - q.min_offset.min(q.max_offset))
                        .sum(),
                    queues: &queues,
                });
            }
            let mut t = Table::new(&["BROKER", "QUEUE", "MIN", "MAX", "LAST STORED"]);
            for q in &queues {
                t.row(vec![
                    q.broker_name.clone(),
                    q.queue_id.to_string(),
                    q.min_offset.to_string(),
                    q.max_offset.to_string(),
                    q.last_store_timestamp_ms
                        .map(format_time)
                        .unwrap_or_default(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        TopicCommand::Route { name, out } => {
            let route = admin.topic_route(&name).await?;
            if out.json {
                return print_json(&route);
            }
            route_table(&route).print()?;
            Ok(())
        }
        TopicCommand::Update {
            name,
            queues,
            read_queues,
            perm,
            out,
        } => {
            let update = TopicUpdate {
                write_queues: queues,
                read_queues,
                perm,
            };
            if update == TopicUpdate::default() {
                anyhow::bail!("nothing to change: give --queues, --read-queues or --perm");
            }
            let updated = admin.update_topic(&name, update).await?;
            if out.json {
                return print_json(&updated);
            }
            let mut t = Table::new(&["BROKER", "READ_QUEUES", "WRITE_QUEUES", "PERM", "RESULT"]);
            for u in &updated {
                let result = if u.changed { "updated" } else { "unchanged" };
                t.row(vec![
                    u.broker_name.clone(),
                    u.read_queues.to_string(),
                    u.write_queues.to_string(),
                    perm_text(u.perm),
                    result.into(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        TopicCommand::Delete { name, out } => {
            let deleted = admin.delete_topic(&name).await?;
            if out.json {
                return print_json(&serde_json::json!({ "topic": name, "deleted_on": deleted }));
            }
            println!("topic {name} deleted on {}", deleted.join(", "));
            Ok(())
        }
    }
}

fn route_table(route: &TopicRouteInfo) -> Table {
    let mut t = Table::new(&[
        "CLUSTER",
        "BROKER",
        "READ_QUEUES",
        "WRITE_QUEUES",
        "PERM",
        "REPLICA",
        "ROLE",
        "ADDRESS",
        "MASTER",
    ]);
    for b in &route.brokers {
        for r in &b.replicas {
            let is_master = b.master_address.as_deref() == Some(r.address.as_str());
            t.row(vec![
                b.cluster_name.clone(),
                b.broker_name.clone(),
                b.read_queues.to_string(),
                b.write_queues.to_string(),
                perm_text(b.perm),
                r.replica_id.to_string(),
                r.role.clone(),
                r.address.clone(),
                if is_master { "yes" } else { "" }.to_string(),
            ]);
        }
    }
    t
}

fn perm_text(perm: u32) -> String {
    let r = if perm & sluice_proto::perm::READ != 0 {
        "r"
    } else {
        "-"
    };
    let w = if perm & sluice_proto::perm::WRITE != 0 {
        "w"
    } else {
        "-"
    };
    format!("{r}{w}")
}

pub async fn cluster(admin: &Admin, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { out } => {
            let rows = admin.cluster_status().await?;
            if out.json {
                return print_json(&ClusterDoc { brokers: &rows });
            }
            let mut t = Table::new(&[
                "CLUSTER",
                "BROKER",
                "REPLICA",
                "ROLE",
                "ADDRESS",
                "MAX_OFFSET",
                "CONFIRMED",
                "TERM",
                "RAFT",
                "COMMIT",
                "TOPICS",
                "DISK",
                "HEARTBEAT",
                "STATUS",
            ]);
            for r in &rows {
                t.row(vec![
                    r.cluster_name.clone(),
                    r.broker_name.clone(),
                    r.replica_id.to_string(),
                    r.role.clone(),
                    r.address.clone(),
                    r.max_offset.to_string(),
                    r.confirmed_offset.map_or("-".into(), |o| o.to_string()),
                    r.term.to_string(),
                    r.raft_role.clone().unwrap_or_else(|| "-".into()),
                    r.commit_index.map_or("-".into(), |c| c.to_string()),
                    r.topic_count.to_string(),
                    r.disk_usage_ratio
                        .map_or("-".into(), |d| format!("{:.1}%", d * 100.0)),
                    format!("{:.1}s ago", r.last_heartbeat_ago_ms as f64 / 1000.0),
                    match &r.error {
                        None => "ok".to_string(),
                        Some(e) => format!("unreachable: {e}"),
                    },
                ]);
            }
            t.print()?;
            print_replication(&rows)?;
            print_reads(&rows)
        }
    }
}

/// Each replica group's progress as its master reports it: match index and lag per replica.
fn print_replication(rows: &[sluice_client::BrokerStatusRow]) -> anyhow::Result<()> {
    let masters: Vec<_> = rows.iter().filter(|r| !r.replicas.is_empty()).collect();
    if masters.is_empty() {
        return Ok(());
    }
    println!();
    let mut t = Table::new(&[
        "GROUP", "MASTER", "TERM", "COMMIT", "REPLICA", "ADDRESS", "MATCH", "LAG", "STATE",
        "ACTIVE",
    ]);
    for m in masters {
        for p in &m.replicas {
            t.row(vec![
                m.broker_name.clone(),
                m.replica_id.to_string(),
                m.term.to_string(),
                m.commit_index.map_or("-".into(), |c| c.to_string()),
                format!(
                    "{}{}",
                    p.replica_id,
                    if p.learner { " (learner)" } else { "" }
                ),
                p.address.clone(),
                p.match_index.to_string(),
                p.lag.to_string(),
                p.state.clone(),
                if p.active { "yes" } else { "no" }.to_string(),
            ]);
        }
    }
    t.print()?;
    Ok(())
}

/// What each replica served to pulls and its share of its group's reads (read hints move
/// consumers between replicas).
fn print_reads(rows: &[sluice_client::BrokerStatusRow]) -> anyhow::Result<()> {
    let readers: Vec<_> = rows.iter().filter(|r| r.reads.is_some()).collect();
    if readers.is_empty() {
        return Ok(());
    }
    println!();
    let mut t = Table::new(&[
        "GROUP",
        "REPLICA",
        "ROLE",
        "READ SHARE",
        "MSGS/S",
        "MESSAGES",
        "PULLS",
        "REDIRECTS",
        "SLAVE READ",
        "WRITE MB/S",
    ]);
    for r in readers {
        let Some(reads) = &r.reads else { continue };
        t.row(vec![
            r.broker_name.clone(),
            r.replica_id.to_string(),
            r.role.clone(),
            reads
                .read_share
                .map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
            format!("{:.0}", reads.recent_messages_per_sec),
            reads.messages.to_string(),
            reads.pulls.to_string(),
            reads.redirects.to_string(),
            if reads.slave_read_enable { "on" } else { "off" }.to_string(),
            format!(
                "{:.1}{}",
                reads.write_bytes_per_sec / (1 << 20) as f64,
                if reads.write_pressure {
                    " (loaded)"
                } else {
                    ""
                }
            ),
        ]);
    }
    t.print()?;
    Ok(())
}

pub async fn dlq(admin: &Admin, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { group, max, out } => {
            let letters = admin.dead_letters(&group, max).await?;
            if out.json {
                return print_json(&letters);
            }
            let mut t = Table::new(&[
                "ID", "TOPIC", "ATTEMPTS", "STORED", "REDRIVEN", "BROKER", "FAILURE",
            ]);
            for d in &letters {
                t.row(vec![
                    d.message_id.clone(),
                    d.topic.clone(),
                    d.attempts.to_string(),
                    d.stored_at.clone(),
                    if d.redriven { "yes" } else { "no" }.into(),
                    d.broker_name.clone(),
                    d.failure.escape_debug().to_string(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        DlqCommand::Redrive {
            group,
            ids,
            all,
            out,
        } => {
            let r = admin.redrive(&group, &ids, all).await?;
            if out.json {
                return print_json(&r);
            }
            let total: u32 = r.iter().map(|b| b.redriven).sum();
            let skipped: u32 = r.iter().map(|b| b.skipped).sum();
            println!("redriven {total} dead letter(s) of {group}; {skipped} named id(s) not found");
            Ok(())
        }
    }
}

pub fn lag_table(doc: &LagDoc<'_>) -> Table {
    let mut t = Table::new(&[
        "TOPIC",
        "BROKER",
        "QUEUE",
        "MIN_OFFSET",
        "MAX_OFFSET",
        "COMMITTED",
        "LAG",
    ]);
    for r in doc.queues {
        t.row(vec![
            r.topic.clone(),
            r.broker_name.clone(),
            r.queue_id.to_string(),
            r.min_offset.to_string(),
            r.max_offset.to_string(),
            r.committed_offset.map_or("-".into(), |c| c.to_string()),
            r.lag.to_string(),
        ]);
    }
    t.row(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        doc.total_lag.to_string(),
    ]);
    t
}

pub async fn message(admin: &Admin, cmd: MessageCommand) -> anyhow::Result<()> {
    let (found, json) = match cmd {
        MessageCommand::Cancel { .. } => anyhow::bail!("cancel takes a producer (see cli::run)"),
        MessageCommand::Trace { id, out } => {
            return super::trace_cmd::trace(admin, &id, out.json).await
        }
        MessageCommand::Get { id, out } => {
            let m = admin.get_message(&id).await?;
            if out.json {
                return print_json(&MessageView::from(&m));
            }
            (vec![m], false)
        }
        MessageCommand::Find {
            topic,
            key,
            from,
            to,
            max,
            out,
        } => {
            let found = match (key, from, to) {
                (Some(key), _, _) => admin.find_by_key(&topic, &key, max).await?,
                (None, Some(from), Some(to)) => admin.find_by_time(&topic, from, to, max).await?,
                // clap enforces --key or both --from and --to.
                _ => anyhow::bail!("give --key, or --from and --to"),
            };
            (found, out.json)
        }
    };
    if json {
        return print_json(&MessagesDoc {
            count: found.len(),
            messages: found.iter().map(MessageView::from).collect(),
        });
    }
    for m in &found {
        println!("{}", message_line(m));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<LagRow> {
        vec![
            LagRow {
                topic: "t".into(),
                broker_name: "b".into(),
                queue_id: 0,
                min_offset: 0,
                max_offset: 10,
                committed_offset: Some(4),
                lag: 6,
            },
            LagRow {
                topic: "t".into(),
                broker_name: "b".into(),
                queue_id: 1,
                min_offset: 2,
                max_offset: 5,
                committed_offset: None,
                lag: 3,
            },
        ]
    }

    #[test]
    fn lag_json_shape() {
        let rows = rows();
        let doc = LagDoc {
            group: "g",
            total_lag: 9,
            queues: &rows,
        };
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["group"], "g");
        assert_eq!(v["total_lag"], 9);
        assert_eq!(v["queues"][0]["committed_offset"], 4);
        assert!(v["queues"][1]["committed_offset"].is_null());
        let mut keys: Vec<String> = v["queues"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "broker_name",
                "committed_offset",
                "lag",
                "max_offset",
                "min_offset",
                "queue_id",
                "topic"
            ]
        );
        let text = lag_table(&doc).render();
        assert!(
            text.starts_with("TOPIC  BROKER  QUEUE  MIN_OFFSET  MAX_OFFSET  COMMITTED  LAG\n"),
            "{text}"
        );
        assert!(
            text.contains("\nt      b       1      2           5           -          3\n"),
            "{text}"
        );
        assert!(
            text.ends_with("TOTAL                                                    9\n"),
            "{text}"
        );
    }

    #[test]
    fn route_json_and_table() {
        use sluice_proto::v1::{BrokerRoute, ReplicaRoute, Role, TopicRoute};
        let route = TopicRouteInfo::from_proto(TopicRoute {
            topic: "t".into(),
            brokers: vec![BrokerRoute {
                cluster_name: "c".into(),
                broker_name: "b".into(),
                read_queues: 4,
                write_queues: 4,
                perm: 6,
                replicas: vec![
                    ReplicaRoute {
                        replica_id: 2,
                        address: "h:2".into(),
                        role: Role::Slave as i32,
                        data_address: String::new(),
                    },
                    ReplicaRoute {
                        replica_id: 1,
                        address: "h:1".into(),
                        role: Role::Master as i32,
                        data_address: "h:11".into(),
                    },
                ],
                master_replica_id: 1,
            }],
        });
        let v = serde_json::to_value(&route).unwrap();
        assert_eq!(v["topic"], "t");
        assert_eq!(v["brokers"][0]["master_address"], "h:1");
        assert_eq!(v["brokers"][0]["replicas"][0]["role"], "MASTER");
        assert_eq!(v["brokers"][0]["replicas"][1]["address"], "h:2");
        assert_eq!(v["brokers"][0]["replicas"][0]["data_address"], "h:11");
        assert!(v["brokers"][0]["replicas"][1].get("data_address").is_none());
        assert_eq!(route.master_data_address("b"), Some("h:11"));
        assert_eq!(route.master_data_address("x"), None);
        let text = route_table(&route).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with("MASTER  h:1      yes"), "{text}");
        assert!(lines[2].contains("rw"), "{text}");
    }
}
