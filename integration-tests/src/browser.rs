//! A real headless browser for page tests: Debian's Chromium driven through ChromeDriver
//! (WebDriver). `scripts/browser-deps.sh` installs both; `scripts/test.sh` runs it first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder};

use crate::replica::reserve_ports;
use crate::wait_until;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// ChromeDriver and a browser session; the driver and every browser process it started are
/// killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// The browser's profile: unique, so its processes can be found by it.
    profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Result<Browser> {
        for path in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(path).exists() {
                bail!("{path} is missing: run scripts/browser-deps.sh (scripts/test.sh does)");
            }
        }
        let port = reserve_ports(1)?[0];
        let profile = tempfile::Builder::new()
            .prefix("sluice-chromium-")
            .tempdir()?;
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: the browser it starts is killed with it.
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe; the driver dies with the test process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut driver = cmd.spawn().context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let up = wait_until(
            Duration::from_secs(20),
            "chromedriver to listen",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        if let Err(e) = up {
            let _ = driver.kill();
            return Err(e);
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = match ClientBuilder::rustls() {
            Ok(mut b) => b.capabilities(caps).connect(&url).await,
            Err(e) => {
                let _ = driver.kill();
                bail!("webdriver client: {e}");
            }
        };
        match client {
            Ok(client) => Ok(Browser {
                client,
                driver,
                profile,
            }),
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                bail!("connecting to chromedriver at {url}: {e}")
            }
        }
    }

    /// Saves a PNG of the page as `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let png = self.client.screenshot().await?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.driver.id()) {
            // SAFETY: a plain syscall on the group this struct started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.driver.wait();
        // Browser processes that left the group (Chromium's zygote starts new sessions).
        let marker = self.profile.path().display().to_string();
        for pid in processes_mentioning(&marker) {
            // SAFETY: as above, on processes started with this browser's own profile.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Pids whose command line contains `text`.
fn processes_mentioning(text: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(text)
            .then_some(pid)
    })
    .collect()
}
