//! `sluice acl user add|list|delete` and `sluice acl policy grant|revoke|list`: users and
//! permissions of every broker group (docs/security.md).

use std::path::PathBuf;

use clap::Subcommand;

use super::args::JsonFlag;
use super::output::{print_json, Table};
use sluice_client::{Admin, PolicyRow};

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Users: access keys with a secret.
    #[command(subcommand)]
    User(UserCommand),
    /// Policies: what a user may (or may not) do on which resources.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
// Field names differ from the global `access_key`: clap would merge them.
pub enum UserCommand {
    /// Add a user, or set an existing user's secret (rotation). The secret comes from a file,
    /// or is generated and printed once; it is never a flag.
    Add {
        #[arg(value_name = "ACCESS_KEY")]
        user: String,
        /// A file holding the secret.
        #[arg(
            long,
            conflicts_with = "generate",
            required_unless_present = "generate"
        )]
        secret_file: Option<PathBuf>,
        /// Generate a random secret and print it.
        #[arg(long)]
        generate: bool,
        /// Fail if the user exists instead of setting their secret.
        #[arg(long)]
        create_only: bool,
    },
    /// Users of every broker group (super users marked).
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove a user and their policies.
    Delete {
        #[arg(value_name = "ACCESS_KEY")]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Allow (or with --deny, forbid) ACTIONS on RESOURCE to USER.
    ///
    /// RESOURCE: cluster, topic:NAME or group:NAME, where NAME is a name, a prefix ending in
    /// `*`, or `*`. ACTIONS: comma-separated pub, sub, create, update, delete, get, list,
    /// admin, or all. Deny wins over allow; without a matching allow, the answer is deny.
    Grant(PolicyArgs),
    /// Remove ACTIONS from the allow (or --deny) policy of USER on RESOURCE.
    Revoke(PolicyArgs),
    /// Policies of every broker group (one user's with --user).
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    user: String,
    resource: String,
    actions: String,
    #[arg(long)]
    deny: bool,
}

impl PolicyArgs {
    fn row(self) -> PolicyRow {
        PolicyRow {
            user: self.user,
            resource: self.resource,
            actions: self
                .actions
                .split(',')
                .map(|a| a.trim().to_string())
                .collect(),
            decision: if self.deny { "deny" } else { "allow" }.to_string(),
        }
    }
}

fn print_changes(changes: &[sluice_client::AclChange], what: &str) {
    for c in changes {
        match &c.policy {
            Some(p) => println!(
                "{}: {} {} {} on {}",
                c.broker_name,
                p.user,
                p.decision,
                p.actions.join(","),
                p.resource
            ),
            None => println!("{}: {what}", c.broker_name),
        }
    }
}

pub async fn run(admin: &Admin, cmd: AclCommand) -> anyhow::Result<()> {
    match cmd {
        AclCommand::User(UserCommand::Add {
            user: access_key,
            secret_file,
            generate,
            create_only,
        }) => {
            let secret = match secret_file {
                Some(f) => sluice_proto::auth::read_secret_file(&f).map_err(anyhow::Error::msg)?,
                None => {
                    debug_assert!(generate);
                    let s = sluice_proto::hex::encode(&rand::random::<[u8; 24]>());
                    println!("secret: {s}");
                    s.into_bytes()
                }
            };
            let changes = admin.put_user(&access_key, &secret, create_only).await?;
            for c in &changes {
                let what = if c.changed { "added" } else { "secret set" };
                println!("{}: user {access_key} {what}", c.broker_name);
            }
        }
        AclCommand::User(UserCommand::List { out }) => {
            let rows = admin.list_users().await?;
            if out.json {
                return print_json(&rows);
            }
            let mut t = Table::new(&["USER", "SUPER", "BROKER"]);
            for r in rows {
                let sup = if r.super_user { "yes" } else { "" };
                t.row(vec![r.access_key, sup.into(), r.broker_name]);
            }
            t.print()?;
        }
        AclCommand::User(UserCommand::Delete { user: access_key }) => {
            let changes = admin.delete_user(&access_key).await?;
            print_changes(&changes, &format!("user {access_key} deleted"));
        }
        AclCommand::Policy(PolicyCommand::Grant(p)) => {
            let changes = admin.change_policy(p.row(), true).await?;
            print_changes(&changes, "no policy");
        }
        AclCommand::Policy(PolicyCommand::Revoke(p)) => {
            let changes = admin.change_policy(p.row(), false).await?;
            print_changes(&changes, "policy removed");
        }
        AclCommand::Policy(PolicyCommand::List { user, out }) => {
            let rows = admin.list_policies(user.as_deref()).await?;
            if out.json {
                let flat: Vec<_> = rows
                    .iter()
                    .map(|(b, p)| serde_json::json!({"broker_name": b, "policy": p}))
                    .collect();
                return print_json(&flat);
            }
            let mut t = Table::new(&["USER", "RESOURCE", "DECISION", "ACTIONS", "BROKER"]);
            for (b, p) in rows {
                t.row(vec![p.user, p.resource, p.decision, p.actions.join(","), b]);
            }
            t.print()?;
        }
    }
    Ok(())
}
