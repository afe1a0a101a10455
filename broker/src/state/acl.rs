//! Users and policies of the ACL: two tables of the replicated state (users by access key;
//! policies by user, resource and decision) with an in-memory view the request checks read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message as _;
use sluice_proto::acl::Rule;
use sluice_proto::auth::MAX_SECRET_LEN;
use sluice_proto::names::validate_access_key;
use sluice_proto::v1::{AclPolicy, AclUser};

use super::{table_key, Applied, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const USERS: &str = "acl_users";
pub const POLICIES: &str = "acl_policies";

/// What the checks read: every user's secret and parsed rules.
#[derive(Default)]
pub struct AclView {
    secrets: HashMap<String, Arc<[u8]>>,
    rules: HashMap<String, Vec<Rule>>,
    policies: Vec<AclPolicy>,
}

impl AclView {
    pub fn secret(&self, access_key: &str) -> Option<Arc<[u8]>> {
        self.secrets.get(access_key).cloned()
    }

    pub fn rules(&self, user: &str) -> &[Rule] {
        self.rules.get(user).map_or(&[], Vec::as_slice)
    }

    pub fn has_user(&self, access_key: &str) -> bool {
        self.secrets.contains_key(access_key)
    }

    pub fn users(&self) -> Vec<String> {
        let mut u: Vec<String> = self.secrets.keys().cloned().collect();
        u.sort();
        u
    }

    /// Policies in key order, of `user` only when it is not empty.
    pub fn policies(&self, user: &str) -> Vec<AclPolicy> {
        self.policies
            .iter()
            .filter(|p| user.is_empty() || p.user == user)
            .cloned()
            .collect()
    }
}

/// The in-memory view; only [`super::StateMachine`] refreshes it.
pub struct AclTable {
    view: RwLock<Arc<AclView>>,
}

fn corrupt(what: &str, k: &[u8], e: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("{what} {:?}: {e}", String::from_utf8_lossy(k)),
    }
}

impl AclTable {
    pub(crate) fn load(meta: &dyn MetaStore) -> Result<Self, MetaError> {
        let t = AclTable {
            view: RwLock::new(Arc::new(AclView::default())),
        };
        t.reload(meta)?;
        Ok(t)
    }

    pub(crate) fn reload(&self, meta: &dyn MetaStore) -> Result<(), MetaError> {
        let mut view = AclView::default();
        for (k, v) in meta.scan_prefix(TREE, &table_key(USERS, b""))? {
            let u = AclUser::decode(v.as_slice()).map_err(|e| corrupt("acl user", &k, e))?;
            view.secrets
                .insert(u.access_key, Arc::from(u.secret.as_ref()));
        }
        for (k, v) in meta.scan_prefix(TREE, &table_key(POLICIES, b""))? {
            let p = AclPolicy::decode(v.as_slice()).map_err(|e| corrupt("acl policy", &k, e))?;
            // Stored policies were checked before they were applied.
            let rule = Rule::from_policy(&p).map_err(|e| corrupt("acl policy", &k, e))?;
            view.rules.entry(p.user.clone()).or_default().push(rule);
            view.policies.push(p);
        }
        *self.view.write() = Arc::new(view);
        Ok(())
    }

    pub fn view(&self) -> Arc<AclView> {
        self.view.read().clone()
    }
}

fn policy_key(p: &AclPolicy) -> Vec<u8> {
    table_key(
        POLICIES,
        format!("{}\0{}\0{}", p.user, p.resource, p.decision).as_bytes(),
    )
}

pub(super) fn apply_put_user(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    u: &AclUser,
) -> Result<Applied, MetaError> {
    if validate_access_key(&u.access_key).is_err()
        || u.secret.is_empty()
        || u.secret.len() > MAX_SECRET_LEN
    {
        tracing::error!(user = %u.access_key, "skipping an invalid ACL user");
        return Ok(Applied::Unchanged);
    }
    let key = table_key(USERS, u.access_key.as_bytes());
    let value = u.encode_to_vec();
    if staged.get(meta, &key)?.as_deref() == Some(value.as_slice()) {
        return Ok(Applied::Unchanged);
    }
    tracing::info!(user = %u.access_key, "ACL user set");
    staged.put(key, value);
    Ok(Applied::Changed)
}

pub(super) fn apply_delete_user(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    user: &str,
) -> Result<Applied, MetaError> {
    let mut changed = false;
    let key = table_key(USERS, user.as_bytes());
    if staged.get(meta, &key)?.is_some() {
        staged.delete(key);
        changed = true;
    }
    let prefix = table_key(POLICIES, format!("{user}\0").as_bytes());
    for (k, _) in staged.scan_prefix(meta, &prefix)? {
        staged.delete(k);
        changed = true;
    }
    if changed {
        tracing::info!(user, "ACL user and policies deleted");
        Ok(Applied::Changed)
    } else {
        Ok(Applied::Unchanged)
    }
}

/// Adds (`grant`) or removes the policy's actions; a policy left without actions goes.
pub(super) fn apply_policy(
    meta: &dyn MetaStore,
    staged: &mut Staged,
    p: &AclPolicy,
    grant: bool,
) -> Result<Applied, MetaError> {
    let rule = match Rule::from_policy(p) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(user = %p.user, error = %e, "skipping an invalid ACL policy");
            return Ok(Applied::Unchanged);
        }
    };
    let canonical = rule.to_policy();
    let key = policy_key(&canonical);
    let before = staged.get(meta, &key)?;
    let mut actions: BTreeSet<String> = match &before {
        Some(v) => AclPolicy::decode(v.as_slice())
            .map_err(|e| corrupt("acl policy", &key, e))?
            .actions
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    for a in &canonical.actions {
        if grant {
            actions.insert(a.clone());
        } else {
            actions.remove(a);
        }
    }
    let after = (!actions.is_empty()).then(|| {
        // Canonical order: the order of `Action`, which `Rule` gives.
        let mut merged = canonical.clone();
        let listed: Vec<String> = actions.into_iter().collect();
        merged.actions = Rule::from_policy(&AclPolicy {
            actions: listed,
            ..canonical
        })
        .map(|r| r.to_policy().actions)
        .unwrap_or_default();
        merged.encode_to_vec()
    });
    if after == before {
        return Ok(Applied::Unchanged);
    }
    tracing::info!(user = %p.user, resource = %p.resource, grant, "ACL policy changed");
    match after {
        Some(v) => staged.put(key, v),
        None => staged.delete(key),
    }
    Ok(Applied::Changed)
}

/// The policy of (user, resource, decision) as it is in the view, for answers.
pub fn current(view: &AclView, p: &AclPolicy) -> Option<AclPolicy> {
    let canonical = Rule::from_policy(p).ok()?.to_policy();
    view.policies(&canonical.user)
        .into_iter()
        .find(|x| x.resource == canonical.resource && x.decision == canonical.decision)
}
