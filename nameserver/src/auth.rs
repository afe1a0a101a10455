//! Who may register brokers: with a cluster secret configured, only a broker that signs its
//! registration with it (access key = the cluster's name, `sluice_proto::auth`). A stranger
//! cannot take over a group's route, nor unregister a broker. Who may write the config
//! store, once a cluster secret or an admin is configured: the admin, or a holder of the
//! cluster secret.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sluice_proto::auth::{self, AuthError, Credentials, ReplayGuard, DEFAULT_WINDOW_MS};
use sluice_proto::ApiError;
use tonic::metadata::MetadataMap;

/// Signer sessions remembered against replay, in all and per access key (a broker process
/// is one session; about 200 bytes each).
const REPLAY_CAPACITY: usize = 1 << 16;
const REPLAY_PER_KEY: usize = 1 << 12;

pub struct ClusterAuth {
    /// The cluster secret (registrations); `None`: registrations are open.
    secret: Option<Vec<u8>>,
    /// Who may write the config store besides holders of the cluster secret.
    admin: Option<Credentials>,
    window_ms: i64,
    /// Small and short-held: one insert per registration.
    replays: Mutex<ReplayGuard>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ClusterAuth {
    pub fn new(secret: Option<Vec<u8>>, admin: Option<Credentials>) -> ClusterAuth {
        ClusterAuth {
            secret,
            admin,
            window_ms: DEFAULT_WINDOW_MS,
            replays: Mutex::new(ReplayGuard::new(
                DEFAULT_WINDOW_MS,
                REPLAY_CAPACITY,
                REPLAY_PER_KEY,
                now_ms(),
            )),
        }
    }

    /// Checks that a registration for `method` is signed with the secret of `cluster`, once
    /// (anything goes without a cluster secret).
    pub fn check(
        &self,
        metadata: &MetadataMap,
        method: &str,
        cluster: &str,
    ) -> Result<(), ApiError> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        self.verify(metadata, method, cluster, |key| {
            (key == cluster).then(|| secret.clone())
        })
    }

    /// Checks that a config-store write is signed by the admin, or with the cluster secret
    /// (any access key), once.
    pub fn check_admin(&self, metadata: &MetadataMap, method: &str) -> Result<(), ApiError> {
        self.verify(metadata, method, "admin", |key| match &self.admin {
            Some(a) if a.access_key == key => Some(a.secret.clone()),
            _ => self.secret.clone(),
        })
    }

    fn verify(
        &self,
        metadata: &MetadataMap,
        method: &str,
        cluster: &str,
        secret_of: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<(), ApiError> {
        let refuse = |e: AuthError| {
            tracing::warn!(cluster, method, error = %e, "unauthenticated broker request refused");
            ApiError::from(e)
        };
        let value = metadata
            .get(auth::AUTH_HEADER)
            .ok_or(AuthError::Missing)
            .and_then(|v| v.to_str().map_err(|_| AuthError::Malformed("not text")))
            .map_err(refuse)?;
        let signed = auth::parse(value).map_err(refuse)?;
        let now = now_ms();
        auth::verify(&signed, &[method], secret_of, now, self.window_ms).map_err(refuse)?;
        self.replays.lock().admit(&signed, now).map_err(refuse)
    }
}
