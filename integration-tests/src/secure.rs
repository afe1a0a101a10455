//! Secrets and settings of a secured test cluster: a cluster secret, a bootstrap admin
//! (`root`) and a super user of the ACL (`ops`), in files under a temp dir.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sluice_client::Credentials;

use crate::replica::ReplicaOptions;

pub const CLUSTER: &str = "it";
pub const ADMIN: &str = "root";
pub const ADMIN_SECRET: &str = "root-secret-for-tests";
pub const CLUSTER_SECRET: &str = "cluster-secret-for-tests";
/// A super user by configuration (added to the ACL by the tests that use it).
pub const SUPER: &str = "ops";

pub struct Secrets {
    pub cluster_file: PathBuf,
    pub admin_file: PathBuf,
    /// A CA and one certificate for every node (loopback), when the cluster speaks TLS.
    pub tls: Option<TlsFiles>,
}

pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: brokers require client certificates, and every client shows the node's.
    pub mutual: bool,
}

impl TlsFiles {
    /// A CA and a node certificate for 127.0.0.1 and localhost, in `dir`.
    pub fn write(dir: &Path) -> Result<TlsFiles> {
        Self::write_for(dir, &sluice_proto::tls::gen::Ca::new("sluice test CA")?)
    }

    /// `ca` and a node certificate it issues for 127.0.0.1 and localhost, in `dir`.
    pub fn write_for(dir: &Path, ca: &sluice_proto::tls::gen::Ca) -> Result<TlsFiles> {
        use sluice_proto::tls::gen::write_pem;
        let node = ca.issue(&["127.0.0.1".into(), "localhost".into()], None)?;
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
            mutual: false,
        };
        write_pem(&files.ca, &ca.cert_pem(), false)?;
        write_pem(&files.cert, &node.cert_pem, false)?;
        write_pem(&files.key, &node.key_pem, true)?;
        Ok(files)
    }

    /// How a client of these nodes connects.
    pub fn connector(&self) -> Result<sluice_proto::tls::net::Connector> {
        use sluice_proto::tls;
        let shown = match self.mutual {
            true => Some(tls::Reloading::load(&self.cert, &self.key)?),
            false => None,
        };
        let cfg = tls::client_config(&self.ca, shown, &[tls::ALPN_H2])?;
        Ok(sluice_proto::tls::net::Connector::new(std::sync::Arc::new(
            cfg,
        )))
    }

    fn toml(&self) -> String {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n\
             tls_client_cert_required = {}\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display(),
            self.mutual
        )
    }
}

impl Secrets {
    /// Writes the secret files into `dir`.
    pub fn write(dir: &Path) -> Result<Secrets> {
        std::fs::create_dir_all(dir)?;
        let s = Secrets {
            cluster_file: dir.join("cluster.secret"),
            admin_file: dir.join("admin.secret"),
            tls: None,
        };
        std::fs::write(&s.cluster_file, format!("{CLUSTER_SECRET}\n"))?;
        std::fs::write(&s.admin_file, format!("{ADMIN_SECRET}\n"))?;
        Ok(s)
    }

    /// [`Self::write`], and TLS on every node.
    pub fn write_with_tls(dir: &Path) -> Result<Secrets> {
        let mut s = Self::write(dir)?;
        s.tls = Some(TlsFiles::write(dir)?);
        Ok(s)
    }

    /// A client configuration for this cluster, signing as `creds`.
    pub fn client(
        &self,
        nameserver: &str,
        creds: Credentials,
    ) -> Result<sluice_client::ClientConfig> {
        let c = sluice_client::ClientConfig::new([nameserver.to_string()])
            .request_timeout(std::time::Duration::from_secs(5))
            .credentials(creds);
        Ok(match &self.tls {
            Some(t) => c.tls(&t.ca, t.mutual.then_some((&*t.cert, &*t.key)))?,
            None => c,
        })
    }

    /// Broker settings: authentication on, the admin, the super user, the cluster secret.
    pub fn broker_toml(&self) -> String {
        let tls = self.tls.as_ref().map(TlsFiles::toml).unwrap_or_default();
        tls + &format!(
            "auth_enabled = true\nauth_admin = \"{ADMIN}\"\nauth_admin_secret_file = \"{}\"\n\
             auth_super_users = [\"{SUPER}\"]\ncluster_secret_file = \"{}\"\n",
            self.admin_file.display(),
            self.cluster_file.display()
        )
    }

    /// Nameserver arguments: the cluster secret and the admin.
    pub fn nameserver_args(&self) -> Vec<String> {
        let mut args: Vec<String> = match &self.tls {
            Some(t) => vec![
                "--tls-cert-file".into(),
                t.cert.display().to_string(),
                "--tls-key-file".into(),
                t.key.display().to_string(),
            ],
            None => Vec::new(),
        };
        args.extend([
            "--cluster-secret-file".into(),
            self.cluster_file.display().to_string(),
            "--admin-access-key".into(),
            ADMIN.into(),
            "--admin-secret-file".into(),
            self.admin_file.display().to_string(),
        ]);
        args
    }

    /// Replica-group settings with all of the above.
    pub fn replica_options(&self, replicas: usize) -> ReplicaOptions {
        ReplicaOptions {
            tls: self
                .tls
                .as_ref()
                .map(|t| t.connector().expect("test CA loads")),
            replicas,
            extra_broker_toml: self.broker_toml(),
            nameserver_args: self.nameserver_args(),
            credentials: Some(admin()),
            ..ReplicaOptions::default()
        }
    }
}

pub fn credentials(key: &str, secret: &str) -> Credentials {
    Credentials {
        access_key: key.into(),
        secret: secret.as_bytes().to_vec(),
    }
}

pub fn admin() -> Credentials {
    credentials(ADMIN, ADMIN_SECRET)
}

pub fn cluster() -> Credentials {
    credentials(CLUSTER, CLUSTER_SECRET)
}
