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
}

impl Secrets {
    /// Writes the secret files into `dir`.
    pub fn write(dir: &Path) -> Result<Secrets> {
        std::fs::create_dir_all(dir)?;
        let s = Secrets {
            cluster_file: dir.join("cluster.secret"),
            admin_file: dir.join("admin.secret"),
        };
        std::fs::write(&s.cluster_file, format!("{CLUSTER_SECRET}\n"))?;
        std::fs::write(&s.admin_file, format!("{ADMIN_SECRET}\n"))?;
        Ok(s)
    }

    /// Broker settings: authentication on, the admin, the super user, the cluster secret.
    pub fn broker_toml(&self) -> String {
        format!(
            "auth_enabled = true\nauth_admin = \"{ADMIN}\"\nauth_admin_secret_file = \"{}\"\n\
             auth_super_users = [\"{SUPER}\"]\ncluster_secret_file = \"{}\"\n",
            self.admin_file.display(),
            self.cluster_file.display()
        )
    }

    /// Nameserver arguments: the cluster secret and the admin.
    pub fn nameserver_args(&self) -> Vec<String> {
        vec![
            "--cluster-secret-file".into(),
            self.cluster_file.display().to_string(),
            "--admin-access-key".into(),
            ADMIN.into(),
            "--admin-secret-file".into(),
            self.admin_file.display().to_string(),
        ]
    }

    /// Replica-group settings with all of the above.
    pub fn replica_options(&self, replicas: usize) -> ReplicaOptions {
        ReplicaOptions {
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
