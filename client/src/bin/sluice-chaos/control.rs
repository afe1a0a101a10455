//! The control script that owns the cluster's processes: `scripts/cluster.sh --dir DIR` on
//! loopback, `scripts/deploy.sh --inventory FILE` on hosts or network namespaces. Both speak
//! the same verbs (`nodes`, `nameservers`, `kill`, `restart`, `pause`, `resume`, `partition`,
//! `heal`), so the chaos loop does not care where the nodes run.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// Longest a control verb may take: `restart` waits for the node to serve and register.
const VERB_TIMEOUT: Duration = Duration::from_secs(240);

/// A node as the control script lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub kind: String,
    /// Broker group (broker name); `None` for nameservers.
    pub group: Option<String>,
    /// Replica id within the group; 0 for nameservers and standalone brokers.
    pub replica_id: u64,
    pub address: String,
    /// running, paused, stopped or partitioned.
    pub state: String,
}

/// A fault action or its undoing, as a control-script verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kill,
    Restart,
    Pause,
    Resume,
    Partition,
    Heal,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Restart => "restart",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Partition => "partition",
            Action::Heal => "heal",
        }
    }
}

/// The control command: a program and its leading arguments, the verb goes after them.
#[derive(Debug, Clone)]
pub struct Control {
    program: String,
    args: Vec<String>,
}

impl Control {
    pub fn new(mut command: Vec<String>) -> Result<Control> {
        if command.is_empty() {
            bail!(
                "no control command given (after `--`, e.g. `-- scripts/cluster.sh --dir .cluster`)"
            );
        }
        let program = command.remove(0);
        Ok(Control {
            program,
            args: command,
        })
    }

    /// Runs `program args... verb [node]` and returns its stdout; fails on a non-zero exit,
    /// with the script's stderr in the error.
    async fn run(&self, verb: &str, node: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg(verb)
            .args(node)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out script must not linger.
            .kill_on_drop(true);
        let what = format!(
            "{} {} {verb} {}",
            self.program,
            self.args.join(" "),
            node.unwrap_or("")
        );
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.program))?;
        let out = tokio::time::timeout(VERB_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("`{what}` did not finish within {VERB_TIMEOUT:?}"))?
            .with_context(|| format!("`{what}` failed to run"))?;
        if !out.status.success() {
            bail!(
                "`{what}` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        parse_nodes(&self.run("nodes", None).await?)
    }

    /// The cluster's nameserver list, comma-separated.
    pub async fn nameservers(&self) -> Result<String> {
        let out = self.run("nameservers", None).await?;
        let list = out.trim();
        if list.is_empty() {
            bail!("the control script reports no nameserver");
        }
        Ok(list.to_string())
    }

    pub async fn act(&self, action: Action, node: &str) -> Result<()> {
        self.run(action.verb(), Some(node)).await.map(drop)
    }
}

/// Parses `nodes` output: one node a line, tab- or space-separated
/// `NAME KIND GROUP REPLICA_ID ADDRESS STATE` (`-` for no group); `#` starts a comment.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeInfo>> {
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, kind, group, replica, address, state] = f[..] else {
            bail!(
                "line {} of the node list has {} fields, expected 6 (NAME KIND GROUP REPLICA_ID ADDRESS STATE): {line:?}",
                i + 1,
                f.len()
            );
        };
        let replica_id = replica
            .parse()
            .with_context(|| format!("line {}: replica id {replica:?} is not a number", i + 1))?;
        nodes.push(NodeInfo {
            name: name.to_string(),
            kind: kind.to_string(),
            group: (group != "-").then(|| group.to_string()),
            replica_id,
            address: address.to_string(),
            state: state.to_string(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_lines() {
        let nodes = parse_nodes(
            "# NAME KIND GROUP REPLICA ADDRESS STATE\n\
             ns-1\tnameserver\t-\t0\t127.0.0.1:4000\trunning\n\
             broker-a-2 broker broker-a 2 127.0.0.1:4002 paused\n\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].group, None);
        assert_eq!(nodes[1].group.as_deref(), Some("broker-a"));
        assert_eq!(nodes[1].replica_id, 2);
        assert_eq!(nodes[1].state, "paused");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_nodes("ns-1 nameserver - 0 127.0.0.1:1").is_err());
        assert!(parse_nodes("b broker g x 127.0.0.1:1 running").is_err());
    }

    #[tokio::test]
    async fn runs_verbs_and_reports_failures() {
        let c = Control::new(vec!["sh".into(), "-c".into(), "echo \"$0 $1\"".into()]).unwrap();
        assert_eq!(c.run("kill", Some("n1")).await.unwrap().trim(), "kill n1");
        let bad = Control::new(vec![
            "sh".into(),
            "-c".into(),
            "echo nope >&2; exit 3".into(),
        ])
        .unwrap();
        let e = bad.act(Action::Heal, "n1").await.unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        assert!(Control::new(Vec::new()).is_err());
    }
}
