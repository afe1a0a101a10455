//! Cluster, topic and consumer-group pages.

use axum::extract::{Path, State};
use maud::{html, Markup};
use sluice_client::time::format_time;
use sluice_client::BrokerStatusRow;

use super::chart::{chart, sparkline, Series};
use super::sampler::queue_name;
use super::{encode, error_box, page, App};

fn ratio_bar(r: f64) -> Markup {
    let pct = (r * 100.0).clamp(0.0, 100.0);
    html! { span.bar title={(format!("{pct:.1} %"))} { span style={"width:" (format!("{pct:.0}")) "%"} {} } " " (format!("{pct:.1} %")) }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn broker_row(b: &BrokerStatusRow) -> Markup {
    let log = b.min_offset.map(|min| b.max_offset.saturating_sub(min));
    let replicas: Vec<String> = b
        .replicas
        .iter()
        .map(|r| format!("{}: {} behind", r.replica_id, r.lag))
        .collect();
    html! {
        tr data-broker={(b.broker_name) "/" (b.replica_id)} {
            td { (b.cluster_name) }
            td { (b.broker_name) }
            td.num { (b.replica_id) }
            td.role { (b.role) }
            td { (b.address) }
            td.num { (b.term) }
            td { (b.raft_role.as_deref().unwrap_or("-")) }
            td.num { (b.commit_index.map_or("-".into(), |i| i.to_string())) " / " (b.applied_index.map_or("-".into(), |i| i.to_string())) }
            td { (replicas.join(", ")) }
            td { @if let Some(r) = b.disk_usage_ratio { (ratio_bar(r)) } @else { "-" } }
            td.num { (log.map_or("-".into(), mib)) }
            td.num { (b.timers_pending.map_or("-".into(), |t| t.to_string())) }
            td {
                @if b.reachable { span.ok { "up" } }
                @else { span.bad { "unreachable" } " " (b.error.as_deref().unwrap_or("")) }
            }
        }
    }
}

pub(crate) async fn cluster(State(app): State<App>) -> Markup {
    let history = app.history();
    let rates = history.total_rates();
    let body = match app.admin.cluster_status().await {
        Err(e) => error_box("cluster status", &e),
        Ok(rows) => html! {
            table #brokers {
                tr { th { "Cluster" } th { "Broker group" } th { "Replica" } th { "Role" } th { "Address" }
                     th { "Term" } th { "Raft" } th { "Commit / applied" } th { "Replicas" } th { "Disk" }
                     th { "Commit log" } th { "Timers" } th { "Status" } }
                @for b in &rows { (broker_row(b)) }
            }
            (chart("Messages stored per second, all topics", "msgs/s", &[Series { name: "all", points: &rates }]))
        },
    };
    page("Cluster", "/", Some(app.refresh), body)
}

pub(crate) async fn topics(State(app): State<App>) -> Markup {
    let history = app.history();
    let body = match app.admin.list_topics().await {
        Err(e) => error_box("topics", &e),
        Ok(names) => {
            let mut rows = Vec::new();
            for name in names {
                let queues = app.admin.topic_queues(&name).await;
                rows.push((name, queues));
            }
            html! {
                table #topics {
                    tr { th { "Topic" } th { "Queues" } th { "Messages" } th { "Last stored" } th { "msgs/s" } th { "Trend" } }
                    @for (name, queues) in &rows {
                        @let rates = history.topic_rates(name);
                        tr data-topic=(name) {
                            td { a href={"/topics/" (encode(name))} { (name) } }
                            @match queues {
                                Ok(q) => {
                                    td.num { (q.len()) }
                                    td.num.messages { (q.iter().map(|q| q.max_offset.saturating_sub(q.min_offset)).sum::<u64>()) }
                                    td { (q.iter().filter_map(|q| q.last_store_timestamp_ms).max().map(format_time).unwrap_or_default()) }
                                }
                                Err(e) => { td colspan="3" { span.bad { (e.to_string()) } } }
                            }
                            td.num { (rates.last().map_or("-".into(), |r| format!("{:.1}", r.1))) }
                            td { (sparkline(&rates)) }
                        }
                    }
                }
            }
        }
    };
    page("Topics", "/topics", Some(app.refresh), body)
}

pub(crate) async fn topic(State(app): State<App>, Path(name): Path<String>) -> Markup {
    let rates = app.history().topic_rates(&name);
    let body = match app.admin.topic_queues(&name).await {
        Err(e) => error_box(&name, &e),
        Ok(queues) => html! {
            table #queues {
                tr { th { "Broker group" } th { "Queue" } th { "Min offset" } th { "Max offset" } th { "Messages" } th { "Last stored" } }
                @for q in &queues {
                    tr data-queue={(q.broker_name) ":" (q.queue_id)} {
                        td { (q.broker_name) }
                        td.num { (q.queue_id) }
                        td.num.min { (q.min_offset) }
                        td.num.max { (q.max_offset) }
                        td.num { (q.max_offset.saturating_sub(q.min_offset)) }
                        td { (q.last_store_timestamp_ms.map(format_time).unwrap_or_default()) }
                    }
                }
            }
            (chart("Messages stored per second", "msgs/s", &[Series { name: &name, points: &rates }]))
            p { a href={"/messages?topic=" (encode(&name))} { "Search this topic's messages" } }
        },
    };
    page(&format!("Topic {name}"), "/topics", Some(app.refresh), body)
}

pub(crate) async fn groups(State(app): State<App>) -> Markup {
    let history = app.history();
    let latest = history.samples.back().cloned();
    let body = match app.admin.list_groups().await {
        Err(e) => error_box("groups", &e),
        Ok(groups) => html! {
            table #groups {
                tr { th { "Group" } th { "Mode" } th { "Members" } th { "Topics" } th { "Lag" } th { "Trend" } }
                @for g in &groups {
                    @let lag = latest.as_ref().and_then(|s| s.groups.get(&g.group)).map(|s| s.total_lag);
                    tr data-group=(g.group) {
                        td { a href={"/groups/" (encode(&g.group))} { (g.group) } }
                        td { (g.mode) }
                        td.num { (g.members.len()) }
                        td { (g.topics.join(", ")) }
                        td.num { (lag.map_or("-".into(), |l| l.to_string())) }
                        td { (sparkline(&history.group_lag(&g.group))) }
                    }
                }
            }
        },
    };
    page("Consumer groups", "/groups", Some(app.refresh), body)
}

pub(crate) async fn group(State(app): State<App>, Path(name): Path<String>) -> Markup {
    let history = app.history();
    let total = history.group_lag(&name);
    let per_queue = history.queue_lags(&name, 8);
    let body = match app.admin.describe_group(&name).await {
        Err(e) => error_box(&name, &e),
        Ok(d) => html! {
            p { "Mode " strong { (d.group.mode) } ", total lag " strong #total-lag { (d.total_lag) } ". "
                a href={"/dlq?group=" (encode(&name))} { "Dead letters" } }
            h2 { "Members" }
            @if d.group.members.is_empty() { p.muted { "No live member." } }
            ul #members { @for m in &d.group.members { li { (m) } } }
            h2 { "Queues" }
            table #queues {
                tr { th { "Topic" } th { "Broker group" } th { "Queue" } th { "Member" } th { "Committed" } th { "Max offset" } th { "Lag" } }
                @for q in &d.queues {
                    tr data-queue=(queue_name(&q.topic, &q.broker_name, q.queue_id)) {
                        td { (q.topic) }
                        td { (q.broker_name) }
                        td.num { (q.queue_id) }
                        td { (q.member.as_deref().unwrap_or("-")) }
                        td.num { (q.committed_offset.map_or("-".into(), |c| c.to_string())) }
                        td.num { (q.max_offset) }
                        td.num.lag { (q.lag) }
                    }
                }
            }
            (chart("Lag", "messages", &[Series { name: "total", points: &total }]))
            @let series: Vec<Series<'_>> = per_queue.iter().map(|(q, p)| Series { name: q, points: p }).collect();
            (chart("Lag per queue (the 8 with the most now)", "messages", &series))
        },
    };
    page(&format!("Group {name}"), "/groups", Some(app.refresh), body)
}
