//! `sluice tx list|commit|rollback`: transactions for operators; `sluice tx send`: one
//! transaction from the command line (commit, roll back, or hold it open for the checks).

use std::io::Write;

use clap::{Subcommand, ValueEnum};

use super::args::JsonFlag;
use super::output::{print_json, Table};
use sluice_client::{Admin, ClientConfig, Message, Producer};

/// What `sluice tx send` does once the messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Then {
    Commit,
    Rollback,
    /// Leave the transaction open and wait until killed: the broker's checks resolve it
    /// with another producer of the group (or `sluice tx commit|rollback ID`).
    Hold,
}

#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// Open and parked transactions: id, producer group, topics, age, checks.
    List {
        /// Also the newest resolved ones (kept for a while so a retried commit gets its answer).
        #[arg(long)]
        all: bool,
        /// With --all: at most this many resolved ones per broker group (the broker gives at
        /// most 10,000).
        #[arg(long, default_value_t = 1000, requires = "all")]
        limit: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Commit a transaction by hand (its messages become visible).
    Commit { id: String },
    /// Roll a transaction back by hand (its messages are dropped).
    Rollback { id: String },
    /// Send BODY... to TOPIC in one transaction, then commit, roll back or hold it open.
    Send {
        topic: String,
        /// One message per body.
        #[arg(required = true)]
        bodies: Vec<String>,
        /// Producer group (the checks go to live producers of this group).
        #[arg(long, default_value = "sluice-cli-tx")]
        group: String,
        /// Sharding key: every message to that key's queue.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, value_enum, default_value = "commit")]
        then: Then,
    },
}

pub async fn run(config: ClientConfig, cmd: TxCommand) -> anyhow::Result<()> {
    if let TxCommand::Send {
        topic,
        bodies,
        group,
        key,
        then,
    } = cmd
    {
        return send(config, &topic, &bodies, &group, key.as_deref(), then).await;
    }
    let admin = &Admin::new(config)?;
    match cmd {
        TxCommand::Send { .. } => Ok(()),
        TxCommand::List { all, limit, out } => {
            let rows: Vec<_> = match all {
                true => admin.transactions_with_resolved(limit).await?,
                // Filtered here too: a broker of an earlier build lists every one it keeps.
                false => admin
                    .open_transactions()
                    .await?
                    .into_iter()
                    .filter(|r| r.state == "open" || r.state == "parked")
                    .collect(),
            };
            if out.json {
                return print_json(&rows);
            }
            let mut t = Table::new(&[
                "ID", "GROUP", "STATE", "TOPICS", "MESSAGES", "AGE", "CHECKS", "BROKER",
            ]);
            for r in &rows {
                t.row(vec![
                    r.transaction_id.clone(),
                    r.producer_group.clone(),
                    r.state.clone(),
                    r.topics.join(","),
                    r.messages.to_string(),
                    format!("{:.1}s", r.age_ms as f64 / 1000.0),
                    r.checks.to_string(),
                    r.broker_name.clone(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        TxCommand::Commit { id } => {
            let broker = admin.end_transaction(&id, true).await?;
            println!("committed transaction {id} on {broker}");
            Ok(())
        }
        TxCommand::Rollback { id } => {
            let broker = admin.end_transaction(&id, false).await?;
            println!("rolled back transaction {id} on {broker}");
            Ok(())
        }
    }
}

async fn send(
    config: ClientConfig,
    topic: &str,
    bodies: &[String],
    group: &str,
    key: Option<&str>,
    then: Then,
) -> anyhow::Result<()> {
    let producer = Producer::builder(config).producer_group(group).build()?;
    let mut tx = producer.begin_transaction()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "transaction {}", tx.id())?;
    for body in bodies {
        let m = Message::new(topic, body.clone());
        let r = match key {
            Some(k) => tx.send_with_key(m, k).await?,
            None => tx.send(m).await?,
        };
        writeln!(
            out,
            "{} queue={}:{} (half)",
            r.message_id, r.broker_name, r.queue_id
        )?;
    }
    match then {
        Then::Commit => {
            for r in tx.commit().await? {
                writeln!(
                    out,
                    "{} queue={}:{} offset={} committed",
                    r.message_id, r.broker_name, r.queue_id, r.queue_offset
                )?;
            }
        }
        Then::Rollback => {
            tx.rollback().await?;
            writeln!(out, "rolled back")?;
        }
        Then::Hold => {
            writeln!(out, "holding the transaction open; stop with Ctrl-C")?;
            out.flush()?;
            drop(out);
            tokio::signal::ctrl_c().await?;
            // Left open on purpose: the checks decide.
            drop(tx);
            return Ok(());
        }
    }
    producer.shutdown().await;
    Ok(())
}
