//! `sluice tx list|commit|rollback`: transactions for operators.

use clap::Subcommand;

use super::args::JsonFlag;
use super::output::{print_json, Table};
use sluice_client::Admin;

#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// Open, parked and recently resolved transactions: id, producer group, topics, age, checks.
    List {
        /// Also the resolved ones (kept for a while so a retried commit gets its answer).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Commit a transaction by hand (its messages become visible).
    Commit { id: String },
    /// Roll a transaction back by hand (its messages are dropped).
    Rollback { id: String },
}

pub async fn run(admin: &Admin, cmd: TxCommand) -> anyhow::Result<()> {
    match cmd {
        TxCommand::List { all, out } => {
            let rows: Vec<_> = admin
                .transactions()
                .await?
                .into_iter()
                .filter(|r| all || r.state == "open" || r.state == "parked")
                .collect();
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
