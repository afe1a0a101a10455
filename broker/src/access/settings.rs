//! [`AccessConfig`] from the broker's configuration (secrets read from their files).

use sluice_proto::auth::{read_secret_file, Credentials};
use sluice_proto::names::validate_access_key;

use super::AccessConfig;
use crate::config::BrokerConfig;

/// The settings; `targets` and `data_targets` are filled in by the server once it knows its
/// addresses.
pub fn from_config(c: &BrokerConfig) -> Result<AccessConfig, String> {
    let window = crate::messaging::timer::parse_duration(&c.auth_window)
        .map_err(|e| format!("auth_window: {e}"))?;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    if !(1_000..=sluice_proto::auth::replay::MAX_WINDOW_MS).contains(&window_ms) {
        return Err("auth_window must be within 1s..=1d".into());
    }
    let admin = match (&c.auth_admin, &c.auth_admin_secret_file) {
        (Some(key), Some(file)) => {
            validate_access_key(key).map_err(|e| format!("auth_admin: {}", e.message))?;
            Some(Credentials {
                access_key: key.clone(),
                secret: read_secret_file(file)?,
            })
        }
        (None, None) => None,
        _ => return Err("auth_admin and auth_admin_secret_file go together".into()),
    };
    for u in &c.auth_super_users {
        validate_access_key(u).map_err(|e| format!("auth_super_users: {}", e.message))?;
    }
    let cluster = match &c.cluster_secret_file {
        Some(file) => Some(Credentials {
            access_key: c.cluster_name.clone(),
            secret: read_secret_file(file)?,
        }),
        None => None,
    };
    if c.auth_enabled && !c.peers.is_empty() && cluster.is_none() {
        return Err(
            "auth_enabled in a replica group needs cluster_secret_file: replicas sign their \
             traffic with it"
                .into(),
        );
    }
    if c.auth_enabled && admin.is_none() && cluster.is_none() {
        return Err(
            "auth_enabled needs auth_admin (with auth_admin_secret_file) or cluster_secret_file: \
             someone must be able to add the first users"
                .into(),
        );
    }
    Ok(AccessConfig {
        enabled: c.auth_enabled,
        admin,
        super_users: c.auth_super_users.clone(),
        cluster,
        window_ms,
        targets: Vec::new(),
        data_targets: Vec::new(),
    })
}

/// Where the audit log goes, if anywhere.
pub fn audit_path(c: &BrokerConfig) -> Option<std::path::PathBuf> {
    c.audit_log.clone().or_else(|| {
        (c.auth_enabled || c.cluster_secret_file.is_some()).then(|| c.data_dir.join("audit.log"))
    })
}
