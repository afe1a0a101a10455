//! Who may register brokers: with a cluster secret configured, only a broker that signs its
//! registration with it (access key = the cluster's name, `sluice_proto::auth`). A stranger
//! cannot take over a group's route, nor unregister a broker.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sluice_proto::auth::{self, AuthError, ReplayGuard, DEFAULT_WINDOW_MS};
use sluice_proto::ApiError;
use tonic::metadata::MetadataMap;

/// Registrations remembered against replay per window; brokers sign one every heartbeat.
const REPLAY_CAPACITY: usize = 1 << 20;

pub struct ClusterAuth {
    secret: Vec<u8>,
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
    pub fn new(secret: Vec<u8>) -> ClusterAuth {
        ClusterAuth {
            secret,
            window_ms: DEFAULT_WINDOW_MS,
            replays: Mutex::new(ReplayGuard::new(
                DEFAULT_WINDOW_MS,
                REPLAY_CAPACITY,
                now_ms(),
            )),
        }
    }

    /// Checks that a request for `method` is signed with the secret of `cluster`, once.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        method: &str,
        cluster: &str,
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
        auth::verify(
            &signed,
            method,
            |key| (key == cluster).then(|| self.secret.clone()),
            now,
            self.window_ms,
        )
        .map_err(refuse)?;
        self.replays.lock().admit(&signed, now).map_err(refuse)
    }
}
