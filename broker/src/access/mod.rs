//! Who may do what: authentication of every request (a signature header, checked by the gRPC
//! layer in [`layer`] and by the data port's authentication frame) and authorization of each
//! call against the ACL (users and policies in the replicated state, `state/acl.rs`).
//!
//! Principals:
//! - a user of the ACL: their policies decide (deny wins, default deny);
//! - a super user (the bootstrap admin and `auth_super_users`): allowed everything;
//! - the cluster (the cluster secret, access key = the cluster's name): the other replicas,
//!   allowed everything, and the only principal Raft traffic is taken from once a cluster
//!   secret is set.
//!
//! With `auth_enabled = false`, an unsigned request acts anonymously and policies are not
//! enforced; a signed one is still verified (a client with wrong credentials learns at once).

pub mod audit;
pub mod layer;
pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_proto::acl::{self, Action, Resource, Verdict};
use sluice_proto::auth::{self, AuthError, Credentials, ReplayGuard};
use sluice_proto::{ApiError, ErrorCode};

use crate::metrics::ops::RefusalLabels;
use crate::state::acl::AclTable;

/// Sessions (client processes) remembered against replay, in all and per access key; past
/// them new ones are refused (about 200 bytes each).
const REPLAY_SESSIONS: usize = 1 << 18;
const REPLAY_SESSIONS_PER_KEY: usize = 4096;

/// Settings, from the broker's configuration.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Refuse unsigned requests and enforce policies.
    pub enabled: bool,
    /// The bootstrap admin (a super user whose secret is in the configuration).
    pub admin: Option<Credentials>,
    /// Users of the ACL who skip the policies.
    pub super_users: Vec<String>,
    /// The cluster secret (access key: the cluster's name).
    pub cluster: Option<Credentials>,
    pub window_ms: i64,
    /// The addresses clients reach this broker's gRPC port and data port at: a signature
    /// names one (it cannot be replayed to another broker).
    pub targets: Vec<String>,
    pub data_targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Super,
    Cluster,
}

/// An authenticated caller of one request (or one data-port connection).
pub struct Caller {
    pub name: String,
    pub kind: Kind,
    /// What it signed: the gRPC method or the data port.
    pub method: String,
    pub peer: Option<SocketAddr>,
    /// Its secret and the request's nonce: what a secret it sends is wrapped under.
    secret: Arc<[u8]>,
    nonce: [u8; 16],
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// A secret the caller sent wrapped ([`auth::wrap_secret`]).
    pub fn unwrap_secret(&self, wrapped: &[u8]) -> Result<Vec<u8>, ApiError> {
        auth::unwrap_secret(&self.secret, &self.nonce, wrapped).map_err(|e| {
            ApiError::invalid(format!("{e} (wrap it under the caller's secret and nonce)"))
        })
    }
}

/// Who a request acts as; anonymous (`None`) only while authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Principal(pub Option<Arc<Caller>>);

impl Principal {
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("anonymous", |c| c.name.as_str())
    }

    pub fn caller(&self) -> Option<&Caller> {
        self.0.as_deref()
    }
}

/// The principal the gRPC layer attached to `req` (anonymous when there is none).
pub fn principal<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_default()
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("enabled", &self.cfg.enabled)
            .field("cluster_secret", &self.cfg.cluster.is_some())
            .finish_non_exhaustive()
    }
}

pub struct Access {
    cfg: AccessConfig,
    acl: Arc<AclTable>,
    replays: Mutex<ReplayGuard>,
    audit: audit::Audit,
    refusals: Option<Family<RefusalLabels, Counter>>,
}

/// A refusal, with the metric labels it is counted under.
struct Refusal {
    kind: &'static str,
    reason: &'static str,
    error: ApiError,
}

impl Refusal {
    fn unauthenticated(e: AuthError) -> Refusal {
        Refusal {
            kind: "unauthenticated",
            reason: reason(&e),
            error: e.into(),
        }
    }
}

fn reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Malformed(_) => "malformed",
        AuthError::UnknownKey(_) => "unknown_key",
        AuthError::BadSignature => "bad_signature",
        AuthError::Stale { .. } => "stale",
        AuthError::Replayed => "replayed",
        AuthError::TooManySessions => "too_many_sessions",
    }
}

impl Access {
    pub fn new(
        cfg: AccessConfig,
        acl: Arc<AclTable>,
        audit: audit::Audit,
        refusals: Option<Family<RefusalLabels, Counter>>,
    ) -> Access {
        let window = cfg.window_ms.max(1);
        Access {
            replays: Mutex::new(ReplayGuard::new(
                window,
                REPLAY_SESSIONS,
                REPLAY_SESSIONS_PER_KEY,
                crate::store::now_ms(),
            )),
            cfg,
            acl,
            audit,
            refusals,
        }
    }

    /// No checks at all: a broker without authentication or a cluster secret.
    pub fn open(acl: Arc<AclTable>) -> Access {
        Access::new(AccessConfig::default(), acl, audit::Audit::off(), None)
    }

    /// The cluster secret as credentials (what replicas sign their traffic with).
    pub fn cluster_credentials(&self) -> Option<Credentials> {
        self.cfg.cluster.clone()
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn super_users(&self) -> Vec<String> {
        let mut s: Vec<String> = self.cfg.super_users.clone();
        if let Some(a) = &self.cfg.admin {
            s.push(a.access_key.clone());
        }
        s.sort();
        s.dedup();
        s
    }

    fn refused(
        &self,
        kind: &str,
        why: &str,
        who: &str,
        method: &str,
        peer: Option<SocketAddr>,
        detail: &str,
    ) {
        if let Some(f) = &self.refusals {
            f.get_or_create(&RefusalLabels {
                kind: kind.into(),
                reason: why.into(),
            })
            .inc();
        }
        self.audit.refusal(who, method, peer, detail);
    }

    /// An unsigned request where one is needed: counted, audited, and the error.
    fn refuse_anonymous(&self) -> ApiError {
        let e = AuthError::Missing;
        self.refused(
            "unauthenticated",
            reason(&e),
            "anonymous",
            "",
            None,
            &e.to_string(),
        );
        e.into()
    }

    /// The secret and kind of `key`: the cluster, the bootstrap admin, or a user.
    fn lookup(&self, key: &str) -> Option<(Arc<[u8]>, Kind)> {
        if let Some(c) = &self.cfg.cluster {
            if c.access_key == key {
                return Some((c.secret.as_slice().into(), Kind::Cluster));
            }
        }
        if let Some(a) = &self.cfg.admin {
            if a.access_key == key {
                return Some((a.secret.as_slice().into(), Kind::Super));
            }
        }
        let secret = self.acl.view().secret(key)?;
        let kind = if self.cfg.super_users.iter().any(|s| s == key) {
            Kind::Super
        } else {
            Kind::User
        };
        Some((secret, kind))
    }

    /// Authenticates a request for `method` carrying `header` (the signature, if any).
    pub fn authenticate(
        &self,
        method: &str,
        header: Option<&[u8]>,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, ApiError> {
        let refuse = |e: AuthError, who: &str| {
            self.refused(
                "unauthenticated",
                reason(&e),
                who,
                method,
                peer,
                &e.to_string(),
            );
            ApiError::from(e)
        };
        // With authentication off, another scheme's header (a proxy's `Bearer ...`) is not
        // ours to judge.
        let ours = |h: &[u8]| h.starts_with(auth::SCHEME.as_bytes());
        let Some(header) = header.filter(|h| self.cfg.enabled || ours(h)) else {
            return if self.cfg.enabled {
                Err(refuse(AuthError::Missing, "anonymous"))
            } else {
                Ok(Principal(None))
            };
        };
        let text = std::str::from_utf8(header)
            .map_err(|_| refuse(AuthError::Malformed("not text"), "anonymous"))?;
        let signed = auth::parse(text).map_err(|e| refuse(e, "anonymous"))?;
        let who = signed.access_key.as_str();
        let found = self.lookup(who);
        let now = crate::store::now_ms();
        let targets = if method == auth::DATA_PORT_RESOURCE {
            &self.cfg.data_targets
        } else {
            &self.cfg.targets
        };
        let resources: Vec<String> = targets.iter().map(|t| auth::resource(t, method)).collect();
        let window = self.cfg.window_ms.max(1);
        let mut kind = Kind::User;
        let mut secret: Arc<[u8]> = Arc::from(Vec::new());
        auth::verify(
            &signed,
            &resources,
            |_| {
                let (s, k) = found?;
                kind = k;
                secret = s.clone();
                Some(s.to_vec())
            },
            now,
            window,
        )
        .map_err(|e| refuse(e, who))?;
        self.replays
            .lock()
            .admit(&signed, now)
            .map_err(|e| refuse(e, who))?;
        Ok(Principal(Some(Arc::new(Caller {
            name: signed.access_key,
            kind,
            method: method.to_string(),
            peer,
            secret,
            nonce: signed.nonce,
        }))))
    }

    /// Whether `who` may do `action` on `resource`; a refusal is counted and audited.
    pub fn check(
        &self,
        who: &Principal,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        self.decide(who, action, resource).map_err(|r| {
            let (name, method, peer) = who.caller().map_or(("anonymous", "", None), |c| {
                (c.name.as_str(), c.method.as_str(), c.peer)
            });
            self.refused(r.kind, r.reason, name, method, peer, &r.error.message);
            r.error
        })
    }

    /// [`Self::check`] without counting or auditing a refusal (a first of two tries).
    pub fn check_quietly(
        &self,
        who: &Principal,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        self.decide(who, action, resource).map_err(|r| r.error)
    }

    /// The decision. A group's retry and dead-letter topics are the group's (its policies
    /// decide, as in RocketMQ's ACL); the broker's other `%` topics (timers, half messages)
    /// are the cluster's, so no `topic:*` policy reaches them.
    fn decide(
        &self,
        who: &Principal,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), Refusal> {
        let resource = match resource {
            Resource::Topic(t) => match t
                .strip_prefix(sluice_proto::names::RETRY_PREFIX)
                .or_else(|| t.strip_prefix(sluice_proto::names::DLQ_PREFIX))
            {
                Some(group) => Resource::Group(group),
                None if t.starts_with('%') => Resource::Cluster,
                None => Resource::Topic(t),
            },
            r => r,
        };
        let Some(c) = who.caller() else {
            if !self.cfg.enabled {
                return Ok(());
            }
            return Err(Refusal::unauthenticated(AuthError::Missing));
        };
        if c.kind != Kind::User || !self.cfg.enabled {
            return Ok(());
        }
        let view = self.acl.view();
        if !view.has_user(&c.name) {
            // Deleted since it signed in (a data-port connection outlives its Auth frame).
            return Err(Refusal::unauthenticated(AuthError::UnknownKey(
                c.name.clone(),
            )));
        }
        let verdict = acl::evaluate(view.rules(&c.name), action, &resource);
        if verdict == Verdict::Allowed {
            return Ok(());
        }
        Err(Refusal {
            kind: "permission_denied",
            reason: if matches!(verdict, Verdict::Denied(_)) {
                "denied"
            } else {
                "not_allowed"
            },
            error: acl::refusal(&c.name, action, &resource, &verdict),
        })
    }

    /// Managing the ACL: `admin` on `cluster`. Enforced also while authentication is off
    /// (then by super users and the cluster only): grants made anonymously would outlive
    /// turning it on. Users named super by configuration, the admin's and the cluster's names
    /// are for super callers only.
    pub fn check_admin(&self, who: &Principal, user: Option<&str>) -> Result<(), ApiError> {
        let Some(c) = who.caller() else {
            return Err(self.refuse_anonymous());
        };
        let reserved = user.is_some_and(|u| {
            self.super_users().iter().any(|s| s == u)
                || self.cfg.cluster.as_ref().is_some_and(|k| k.access_key == u)
        });
        if c.kind == Kind::User && (reserved || !self.cfg.enabled) {
            let e = ApiError::new(
                ErrorCode::PermissionDenied,
                match user.filter(|_| reserved) {
                    Some(u) => format!("only a super user may manage {u:?}"),
                    None => "with authentication off, only super users manage the ACL".into(),
                },
            );
            self.refused(
                "permission_denied",
                "denied",
                &c.name,
                &c.method,
                c.peer,
                &e.message,
            );
            return Err(e);
        }
        self.check(who, Action::Admin, Resource::Cluster)
    }

    /// Any authenticated caller (or anyone, while authentication is off).
    pub fn check_signed_in(&self, who: &Principal) -> Result<(), ApiError> {
        if who.caller().is_some() || !self.cfg.enabled {
            return Ok(());
        }
        Err(self.refuse_anonymous())
    }

    /// Each of `resources` (all must pass).
    pub fn check_all<'r>(
        &self,
        who: &Principal,
        action: Action,
        resources: impl IntoIterator<Item = Resource<'r>>,
    ) -> Result<(), ApiError> {
        resources
            .into_iter()
            .try_for_each(|r| self.check(who, action, r))
    }

    /// Traffic between replicas: from the cluster only, once a cluster secret is set (with
    /// authentication on and no cluster secret, a super user may, for tools).
    pub fn check_cluster(&self, who: &Principal) -> Result<(), ApiError> {
        let kind = who.caller().map(|c| c.kind);
        let ok = match (&self.cfg.cluster, kind) {
            (Some(_), Some(Kind::Cluster)) => true,
            (Some(_), _) => false,
            (None, Some(Kind::Super | Kind::Cluster)) => true,
            (None, _) => !self.cfg.enabled,
        };
        if ok {
            return Ok(());
        }
        if who.caller().is_none() {
            return Err(self.refuse_anonymous());
        }
        let (name, method, peer) = who.caller().map_or(("anonymous", "", None), |c| {
            (c.name.as_str(), c.method.as_str(), c.peer)
        });
        let e = ApiError::new(
            ErrorCode::PermissionDenied,
            format!("{name:?} is not a member of this cluster: replica traffic is refused"),
        );
        self.refused(
            "permission_denied",
            "not_cluster",
            name,
            method,
            peer,
            &e.message,
        );
        Err(e)
    }

    /// An ACL change, for the audit log.
    pub fn audit_change(&self, who: &Principal, what: &str) {
        let c = who.caller();
        self.audit.change(
            who.name(),
            c.map_or("", |c| c.method.as_str()),
            c.and_then(|c| c.peer),
            what,
        );
    }
}

#[cfg(test)]
mod tests;
