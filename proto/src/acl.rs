//! Authorization, modelled on RocketMQ 5's ACL 2.0: a policy lets (or forbids) one user some
//! actions on the resources one pattern names. Deny wins over allow; with no matching policy
//! the answer is deny. Super users skip the policies (the broker decides who they are).
//!
//! Text forms, as the CLI and the wire carry them:
//! - resources: `cluster`, `topic:NAME`, `group:NAME`; a pattern is a literal name, a prefix
//!   ending in `*` (`topic:orders-*`), or `*` alone (any name of that type);
//! - actions: `pub`, `sub`, `create`, `update`, `delete`, `get`, `list`, `admin`, or `all`;
//! - decisions: `allow`, `deny`.

use std::fmt;

use crate::v1::AclPolicy;
use crate::{ApiError, ErrorCode};

/// Longest resource pattern accepted.
pub const MAX_PATTERN_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pub,
    Sub,
    Create,
    Update,
    Delete,
    Get,
    List,
    Admin,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Pub,
        Action::Sub,
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Get,
        Action::List,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pub => "pub",
            Action::Sub => "sub",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Get => "get",
            Action::List => "list",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// A list of actions (`all` expands), sorted and without repeats.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Action>, ApiError> {
        let mut out = Vec::new();
        for s in items {
            let s = s.as_ref().trim();
            if s == "all" {
                out.extend(Action::ALL);
                continue;
            }
            out.push(Action::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown action {s:?} (pub, sub, create, update, delete, get, list, admin, all)"
                ))
            })?);
        }
        out.sort_unstable();
        out.dedup();
        if out.is_empty() {
            return Err(ApiError::invalid("a policy needs at least one action"));
        }
        Ok(out)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    Cluster,
    Topic(&'a str),
    Group(&'a str),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Cluster => f.write_str("cluster"),
            Resource::Topic(t) => write!(f, "topic:{t}"),
            Resource::Group(g) => write!(f, "group:{g}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cluster,
    Topic,
    Group,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    Literal(String),
    Prefixed(String),
    Any,
}

/// A parsed resource pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    kind: Kind,
    names: Names,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, ApiError> {
        let bad = |why: &str| ApiError::invalid(format!("resource {s:?}: {why}"));
        if s.len() > MAX_PATTERN_LEN {
            return Err(bad("too long"));
        }
        if s == "cluster" {
            return Ok(Pattern {
                kind: Kind::Cluster,
                names: Names::Any,
            });
        }
        let (kind, name) = if let Some(n) = s.strip_prefix("topic:") {
            (Kind::Topic, n)
        } else if let Some(n) = s.strip_prefix("group:") {
            (Kind::Group, n)
        } else {
            return Err(bad("expected cluster, topic:NAME or group:NAME"));
        };
        let names = if name == "*" {
            Names::Any
        } else if let Some(prefix) = name.strip_suffix('*') {
            Names::Prefixed(prefix.to_string())
        } else {
            Names::Literal(name.to_string())
        };
        let plain = match &names {
            Names::Literal(n) | Names::Prefixed(n) => n.as_str(),
            Names::Any => "",
        };
        if plain.contains('*') {
            return Err(bad("`*` only at the end"));
        }
        if matches!(names, Names::Literal(_)) && plain.is_empty() {
            return Err(bad("empty name"));
        }
        if !plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%_-|".contains(&b))
        {
            return Err(bad("names hold letters, digits and % _ - | only"));
        }
        Ok(Pattern { kind, names })
    }

    pub fn matches(&self, r: &Resource<'_>) -> bool {
        let name = match (self.kind, r) {
            (Kind::Cluster, Resource::Cluster) => return true,
            (Kind::Topic, Resource::Topic(n)) | (Kind::Group, Resource::Group(n)) => n,
            _ => return false,
        };
        match &self.names {
            Names::Any => true,
            Names::Literal(l) => l == name,
            Names::Prefixed(p) => name.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Cluster => return f.write_str("cluster"),
            Kind::Topic => "topic",
            Kind::Group => "group",
        };
        match &self.names {
            Names::Any => write!(f, "{kind}:*"),
            Names::Literal(n) => write!(f, "{kind}:{n}"),
            Names::Prefixed(p) => write!(f, "{kind}:{p}*"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn parse(s: &str) -> Result<Decision, ApiError> {
        match s {
            "allow" => Ok(Decision::Allow),
            "deny" => Ok(Decision::Deny),
            _ => Err(ApiError::invalid(format!(
                "decision {s:?}: expected allow or deny"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// A policy checked and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub user: String,
    pub pattern: Pattern,
    pub actions: Vec<Action>,
    pub decision: Decision,
}

impl Rule {
    pub fn from_policy(p: &AclPolicy) -> Result<Rule, ApiError> {
        crate::names::validate_access_key(&p.user)?;
        Ok(Rule {
            user: p.user.clone(),
            pattern: Pattern::parse(&p.resource)?,
            actions: Action::parse_list(&p.actions)?,
            decision: Decision::parse(&p.decision)?,
        })
    }

    /// The canonical wire form (resource in canonical text, actions sorted).
    pub fn to_policy(&self) -> AclPolicy {
        AclPolicy {
            user: self.user.clone(),
            resource: self.pattern.to_string(),
            actions: self
                .actions
                .iter()
                .map(|a| a.as_str().to_string())
                .collect(),
            decision: self.decision.as_str().to_string(),
        }
    }
}

/// Why a request was allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// A deny policy matched (its pattern).
    Denied(String),
    /// No allow policy matched.
    NotAllowed,
}

/// The decision of `rules` (a user's) for `action` on `resource`: deny wins, default deny.
pub fn evaluate<'r>(
    rules: impl IntoIterator<Item = &'r Rule>,
    action: Action,
    resource: &Resource<'_>,
) -> Verdict {
    let mut allowed = false;
    for r in rules {
        if !r.actions.contains(&action) || !r.pattern.matches(resource) {
            continue;
        }
        match r.decision {
            Decision::Deny => return Verdict::Denied(r.pattern.to_string()),
            Decision::Allow => allowed = true,
        }
    }
    if allowed {
        Verdict::Allowed
    } else {
        Verdict::NotAllowed
    }
}

/// The refusal sent for `verdict` (PERMISSION_DENIED naming the action and resource).
pub fn refusal(user: &str, action: Action, resource: &Resource<'_>, verdict: &Verdict) -> ApiError {
    let why = match verdict {
        Verdict::Denied(p) => format!("denied by the policy on {p}"),
        _ => "no policy allows it".to_string(),
    };
    ApiError::new(
        ErrorCode::PermissionDenied,
        format!("user {user:?} may not {action} on {resource}: {why}"),
    )
}

#[cfg(test)]
mod tests;
