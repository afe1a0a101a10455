//! The `group` commands: retry policy, lag, list, describe, delete, reset.

use sluice_client::Admin;

use super::admin_cmds::{lag_table, LagDoc};
use super::args::GroupCommand;
use super::output::{print_json, Table};

pub async fn group(admin: &Admin, cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::Config {
            group,
            max_retries,
            backoff,
            out,
        } => {
            let policies = if max_retries.is_none() && backoff.is_none() {
                admin.group_config(&group).await?
            } else {
                let backoff_ms = backoff.map(|b| b.iter().map(|d| d.as_millis() as u64).collect());
                admin
                    .update_group_config(&group, max_retries, backoff_ms)
                    .await?
            };
            if out.json {
                return print_json(&policies);
            }
            let mut t = Table::new(&["BROKER", "MAX_RETRIES", "BACKOFF"]);
            for p in &policies {
                let steps: Vec<String> = p.backoff_ms.iter().map(|ms| human_ms(*ms)).collect();
                t.row(vec![
                    p.broker_name.clone(),
                    p.max_retries.to_string(),
                    steps.join(" "),
                ]);
            }
            t.print()?;
            Ok(())
        }
        GroupCommand::Lag { group, topic, out } => {
            let rows = admin.group_lag(&group, topic.as_deref()).await?;
            let doc = LagDoc {
                group: &group,
                total_lag: rows.iter().map(|r| r.lag).sum(),
                queues: &rows,
            };
            if out.json {
                return print_json(&doc);
            }
            lag_table(&doc).print()?;
            Ok(())
        }
        GroupCommand::List { out } => {
            let groups = admin.list_groups().await?;
            if out.json {
                return print_json(&groups);
            }
            let mut t = Table::new(&["GROUP", "MODE", "MEMBERS", "TOPICS"]);
            for g in &groups {
                t.row(vec![
                    g.group.clone(),
                    g.mode.into(),
                    g.members.len().to_string(),
                    g.topics.join(","),
                ]);
            }
            t.print()?;
            Ok(())
        }
        GroupCommand::Describe { group, out } => {
            let d = admin.describe_group(&group).await?;
            if out.json {
                return print_json(&d);
            }
            println!(
                "group {} ({}), {} member(s): {}; total lag {}",
                d.group.group,
                d.group.mode,
                d.group.members.len(),
                d.group.members.join(", "),
                d.total_lag
            );
            let mut t = Table::new(&[
                "TOPIC",
                "BROKER",
                "QUEUE",
                "MEMBER",
                "COMMITTED",
                "MAX",
                "LAG",
            ]);
            for q in &d.queues {
                t.row(vec![
                    q.topic.clone(),
                    q.broker_name.clone(),
                    q.queue_id.to_string(),
                    q.member.clone().unwrap_or_else(|| "-".into()),
                    q.committed_offset
                        .map_or_else(|| "-".into(), |c| c.to_string()),
                    q.max_offset.to_string(),
                    q.lag.to_string(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        GroupCommand::Delete { group, force } => {
            let on = admin.delete_group(&group, force).await?;
            println!("group {group} deleted on {}", on.join(", "));
            Ok(())
        }
        GroupCommand::Reset {
            group,
            to,
            topic,
            dry_run,
            out,
        } => {
            let rows = admin
                .reset_offsets(&group, topic.as_deref(), to, dry_run)
                .await?;
            if out.json {
                return print_json(&serde_json::json!({
                    "group": group,
                    "dry_run": dry_run,
                    "queues": rows,
                }));
            }
            let mut t = Table::new(&["BROKER", "TOPIC", "QUEUE", "FROM", "TO"]);
            for r in &rows {
                t.row(vec![
                    r.broker_name.clone(),
                    r.topic.clone(),
                    r.queue_id.to_string(),
                    r.from.map_or_else(|| "-".into(), |f| f.to_string()),
                    r.to.to_string(),
                ]);
            }
            t.print()?;
            if dry_run {
                println!("dry run: nothing changed");
            }
            Ok(())
        }
    }
}

fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}
