//! Settings: command line, optional TOML file (same keys, snake_case), defaults. The command
//! line overrides the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// RocketMQ's defaults: a broker silent for 2 minutes is dropped; scans run every 5 s.
pub const DEFAULT_BROKER_EXPIRY: Duration = Duration::from_secs(120);
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0} is required (on the command line or in the config file)")]
    Missing(&'static str),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// How long brokers live without a heartbeat, and how often the registry is swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub broker_expiry: Duration,
    pub scan_interval: Duration,
}

impl Timing {
    /// `scan_interval` defaults to 5 s, or a quarter of the expiry if that is shorter, so an
    /// expired broker never lingers much past its expiry.
    pub fn new(broker_expiry: Duration, scan_interval: Option<Duration>) -> Self {
        let scan_interval = scan_interval.unwrap_or_else(|| {
            DEFAULT_SCAN_INTERVAL
                .min(broker_expiry / 4)
                .max(Duration::from_millis(1))
        });
        Timing {
            broker_expiry,
            scan_interval,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(DEFAULT_BROKER_EXPIRY, None)
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `HOST:PORT`; port 0 picks a free one.
    pub listen: String,
    /// Holds the config store (`DIR/kv`).
    pub data_dir: PathBuf,
    pub timing: Timing,
    /// Receives the bound `ip:port` once serving (written atomically).
    pub ready_file: Option<PathBuf>,
    /// Prometheus metrics at `/metrics` on this `HOST:PORT`; off when absent.
    pub metrics_listen: Option<String>,
    /// A file holding the cluster secret: brokers must sign their registrations with it.
    pub cluster_secret_file: Option<PathBuf>,
    /// The admin (access key, secret file) who may write the config store.
    pub admin: Option<(String, PathBuf)>,
    /// TLS (PEM files, reloaded when they change); the CA verifies clients that show a
    /// certificate.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
}

impl Config {
    pub fn new(listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: listen.into(),
            data_dir: data_dir.into(),
            timing: Timing::default(),
            ready_file: None,
            metrics_listen: None,
            cluster_secret_file: None,
            admin: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
        }
    }
}

/// The Sluice nameserver: the route registry brokers register with and clients ask for routes.
#[derive(Debug, Parser)]
#[command(name = "sluice-nameserver", version)]
pub struct Cli {
    /// Address to listen on, HOST:PORT (port 0 = any free port).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Directory for the persistent config store.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with the keys listen, data_dir, broker_expiry_ms, scan_interval_ms.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Drop a broker silent for this long [default: 120000].
    #[arg(long, value_name = "N")]
    pub broker_expiry_ms: Option<u64>,
    /// How often to look for silent brokers [default: min(5000, expiry/4)].
    #[arg(long, value_name = "N")]
    pub scan_interval_ms: Option<u64>,
    /// Write the bound ip:port to this file once serving.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on this address.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// File holding the cluster secret: only brokers that sign their registration with it
    /// are accepted (the secret never goes on the command line).
    #[arg(long, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The admin who may write the config store (with a cluster secret or this set, writes
    /// must be signed by the admin or with the cluster secret).
    #[arg(long, value_name = "KEY")]
    pub admin_access_key: Option<String>,
    /// File holding the admin's secret.
    #[arg(long, value_name = "PATH")]
    pub admin_secret_file: Option<PathBuf>,
    /// Serve over TLS: the certificate and key (PEM, reloaded when they change).
    #[arg(long, value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA that verifies clients showing a certificate.
    #[arg(long, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,
}

/// The TOML file: the same settings as the command line, all optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub broker_expiry_ms: Option<u64>,
    pub scan_interval_ms: Option<u64>,
    pub metrics_listen: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub admin_access_key: Option<String>,
    pub admin_secret_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

impl Cli {
    /// Reads the config file if one is given and merges: command line, then file, then defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    pub fn merge(self, file: FileConfig) -> Result<Config, ConfigError> {
        let listen = self
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing("data_dir"))?;
        let expiry_ms = self
            .broker_expiry_ms
            .or(file.broker_expiry_ms)
            .unwrap_or(duration_ms(DEFAULT_BROKER_EXPIRY));
        if expiry_ms == 0 {
            return Err(ConfigError::Zero("broker_expiry_ms"));
        }
        let scan_ms = self.scan_interval_ms.or(file.scan_interval_ms);
        if scan_ms == Some(0) {
            return Err(ConfigError::Zero("scan_interval_ms"));
        }
        let admin = match (
            self.admin_access_key.or(file.admin_access_key),
            self.admin_secret_file.or(file.admin_secret_file),
        ) {
            (Some(k), Some(f)) => Some((k, f)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Missing(
                    "admin_access_key with admin_secret_file",
                ))
            }
        };
        Ok(Config {
            admin,
            tls_cert_file: self.tls_cert_file.or(file.tls_cert_file),
            tls_key_file: self.tls_key_file.or(file.tls_key_file),
            tls_ca_file: self.tls_ca_file.or(file.tls_ca_file),
            listen,
            data_dir,
            timing: Timing::new(
                Duration::from_millis(expiry_ms),
                scan_ms.map(Duration::from_millis),
            ),
            ready_file: self.ready_file,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            cluster_secret_file: self.cluster_secret_file.or(file.cluster_secret_file),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sluice-nameserver").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn command_line_alone() {
        let c = cli(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/d",
            "--ready-file",
            "/r",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.ready_file, Some(PathBuf::from("/r")));
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.timing.broker_expiry, Duration::from_secs(120));
        assert_eq!(c.timing.scan_interval, Duration::from_secs(5));
    }

    #[test]
    fn scan_interval_defaults_to_a_quarter_of_a_short_expiry() {
        let c = cli(&[
            "--listen",
            "h:1",
            "--data-dir",
            "d",
            "--broker-expiry-ms",
            "800",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.timing.scan_interval, Duration::from_millis(200));
        let c = cli(&[
            "--listen",
            "h:1",
            "--data-dir",
            "d",
            "--broker-expiry-ms",
            "2",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.timing.scan_interval, Duration::from_millis(1));
        let c = cli(&[
            "--listen",
            "h:1",
            "--data-dir",
            "d",
            "--broker-expiry-ms",
            "800",
            "--scan-interval-ms",
            "30",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.timing.scan_interval, Duration::from_millis(30));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = FileConfig::parse(
            Path::new("ns.toml"),
            "listen = \"0.0.0.0:9876\"\ndata_dir = \"/file\"\nbroker_expiry_ms = 1000\nscan_interval_ms = 50\n",
        )
        .unwrap();
        let c = cli(&["--data-dir", "/cli", "--scan-interval-ms", "7"])
            .merge(file)
            .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9876");
        assert_eq!(c.data_dir, PathBuf::from("/cli"));
        assert_eq!(c.timing.broker_expiry, Duration::from_millis(1000));
        assert_eq!(c.timing.scan_interval, Duration::from_millis(7));
    }

    #[test]
    fn config_file_is_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\ndata_dir = \"x\"\n").unwrap();
        let c = cli(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        let missing = dir.path().join("missing.toml");
        let err = cli(&["--config", missing.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("cannot read config file"), "{err}");
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let err = cli(&["--data-dir", "d"]).resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "listen is required (on the command line or in the config file)"
        );
        let err = cli(&["--listen", "h:1"]).resolve().unwrap_err();
        assert!(err.to_string().starts_with("data_dir is required"));
        let err = cli(&[
            "--listen",
            "h:1",
            "--data-dir",
            "d",
            "--broker-expiry-ms",
            "0",
        ])
        .resolve()
        .unwrap_err();
        assert_eq!(err.to_string(), "broker_expiry_ms must be at least 1");
        let err = FileConfig::parse(Path::new("f.toml"), "listne = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err =
            FileConfig::parse(Path::new("f.toml"), "broker_expiry_ms = \"soon\"").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid config file f.toml"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["sluice-nameserver", "--broker-expiry-ms", "x"]).is_err());
    }
}
