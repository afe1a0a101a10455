//! A long-running `sluice` CLI process a test talks to through its stdout and kills (SIGKILL)
//! when it wants to, or on drop, also when the test panics.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct CliChild {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
}

impl CliChild {
    /// Starts `sluice --nameservers NS args...` with its stdout captured line by line.
    pub fn spawn(nameservers: &str, args: &[&str]) -> Result<CliChild> {
        Self::spawn_with_env(nameservers, args, &[])
    }

    /// [`Self::spawn`] with more environment variables (secrets, which never go in flags).
    pub fn spawn_with_env(
        nameservers: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<CliChild> {
        let mut cmd = Command::new(crate::bin("sluice"));
        cmd.envs(env.iter().copied());
        cmd.arg("--nameservers")
            .arg(nameservers)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; the child dies with the test process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting sluice")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(CliChild {
            child: Some(child),
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads lines until one contains `needle`; fails after `timeout` or at end of output.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "no line with {needle:?} within {timeout:?}; saw {:?}",
                        self.seen
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "sluice ended without a line with {needle:?}; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CliChild {
    fn drop(&mut self) {
        self.kill9();
    }
}
