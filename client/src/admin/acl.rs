//! Users and policies of the ACL (`sluice acl`). Each broker group keeps its own (replicated
//! among its replicas), so every change goes to every master.

use serde::Serialize;
use sluice_proto::names::validate_access_key;
use sluice_proto::v1::access_client::AccessClient;
use sluice_proto::v1::*;

use super::Admin;
use crate::error::{Error, Result};
use crate::pool::Transport;
use crate::rpc;

const PUT_USER: &str = "/sluice.v1.Access/PutUser";

/// What one broker group did with a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclChange {
    pub broker_name: String,
    /// A user added (not only their secret set), or a policy that exists after the change.
    pub changed: bool,
    /// The policy as it is now on that group (grant and revoke).
    pub policy: Option<PolicyRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRow {
    pub user: String,
    pub resource: String,
    pub actions: Vec<String>,
    pub decision: String,
}

impl From<AclPolicy> for PolicyRow {
    fn from(p: AclPolicy) -> Self {
        PolicyRow {
            user: p.user,
            resource: p.resource,
            actions: p.actions,
            decision: p.decision,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    pub broker_name: String,
    pub access_key: String,
    pub super_user: bool,
}

impl Admin {
    fn access(&self, addr: &str) -> Result<AccessClient<Transport>> {
        Ok(AccessClient::new(self.core.pool.transport(addr)?))
    }

    /// Adds a user (or, unless `create_only`, sets an existing user's secret) on every broker
    /// group. The secret travels wrapped under this admin's own secret.
    pub async fn put_user(
        &self,
        access_key: &str,
        secret: &[u8],
        create_only: bool,
    ) -> Result<Vec<AclChange>> {
        validate_access_key(access_key)?;
        if secret.is_empty() || secret.len() > sluice_proto::auth::MAX_SECRET_LEN {
            return Err(Error::InvalidArgument(format!(
                "a secret is 1 to {} bytes",
                sluice_proto::auth::MAX_SECRET_LEN
            )));
        }
        let Some(signer) = self.core.config.signer.clone() else {
            return Err(Error::Config(
                "managing users needs credentials (--access-key and a secret)".into(),
            ));
        };
        let t = self.core.timeout();
        let mut out = Vec::new();
        for b in self.masters(None).await? {
            let resource = sluice_proto::auth::resource(&b.address, PUT_USER);
            let (header, wrapped) = signer.sign_wrapping(&resource, crate::time::now_ms(), secret);
            let mut req = rpc::request(
                PutUserRequest {
                    access_key: access_key.to_string(),
                    wrapped_secret: wrapped.into(),
                    create_only,
                },
                t,
            );
            let value = header
                .parse()
                .map_err(|_| Error::Config("signature is not valid metadata".into()))?;
            // The transport leaves a request it finds signed as it is.
            req.metadata_mut()
                .insert(sluice_proto::auth::AUTH_HEADER, value);
            let r = rpc::call(&b.address, t, self.access(&b.address)?.put_user(req)).await?;
            out.push(AclChange {
                broker_name: b.broker_name,
                changed: r.created,
                policy: None,
            });
        }
        Ok(out)
    }

    /// Removes a user and their policies from every broker group.
    pub async fn delete_user(&self, access_key: &str) -> Result<Vec<AclChange>> {
        validate_access_key(access_key)?;
        let t = self.core.timeout();
        let mut out = Vec::new();
        for b in self.masters(None).await? {
            let req = rpc::request(
                DeleteUserRequest {
                    access_key: access_key.to_string(),
                },
                t,
            );
            let r = rpc::call(&b.address, t, self.access(&b.address)?.delete_user(req)).await?;
            out.push(AclChange {
                broker_name: b.broker_name,
                changed: r.deleted,
                policy: None,
            });
        }
        Ok(out)
    }

    /// Every broker group's users (super users from the brokers' configuration included).
    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        let t = self.core.timeout();
        let mut rows = Vec::new();
        for b in self.masters(None).await? {
            let req = rpc::request(ListUsersRequest {}, t);
            let r = rpc::call(&b.address, t, self.access(&b.address)?.list_users(req)).await?;
            for u in &r.super_users {
                rows.push(UserRow {
                    broker_name: b.broker_name.clone(),
                    access_key: u.clone(),
                    super_user: true,
                });
            }
            for u in r.users.into_iter().filter(|u| !r.super_users.contains(u)) {
                rows.push(UserRow {
                    broker_name: b.broker_name.clone(),
                    access_key: u,
                    super_user: false,
                });
            }
        }
        Ok(rows)
    }

    /// Adds (`grant`) or removes actions of a policy on every broker group.
    pub async fn change_policy(&self, policy: PolicyRow, grant: bool) -> Result<Vec<AclChange>> {
        let p = AclPolicy {
            user: policy.user,
            resource: policy.resource,
            actions: policy.actions,
            decision: policy.decision,
        };
        // Checked here too, so a typo fails before any broker group changed.
        sluice_proto::acl::Rule::from_policy(&p)?;
        let t = self.core.timeout();
        let mut out = Vec::new();
        for b in self.masters(None).await? {
            let mut client = self.access(&b.address)?;
            let now = if grant {
                let req = rpc::request(
                    GrantRequest {
                        policy: Some(p.clone()),
                    },
                    t,
                );
                rpc::call(&b.address, t, client.grant(req)).await?.policy
            } else {
                let req = rpc::request(
                    RevokeRequest {
                        policy: Some(p.clone()),
                    },
                    t,
                );
                rpc::call(&b.address, t, client.revoke(req)).await?.policy
            };
            out.push(AclChange {
                broker_name: b.broker_name,
                changed: now.is_some(),
                policy: now.map(PolicyRow::from),
            });
        }
        Ok(out)
    }

    /// Every broker group's policies (of `user` only, when given).
    pub async fn list_policies(&self, user: Option<&str>) -> Result<Vec<(String, PolicyRow)>> {
        let t = self.core.timeout();
        let mut rows = Vec::new();
        for b in self.masters(None).await? {
            let req = rpc::request(
                ListPoliciesRequest {
                    user: user.unwrap_or_default().to_string(),
                },
                t,
            );
            let r = rpc::call(&b.address, t, self.access(&b.address)?.list_policies(req)).await?;
            rows.extend(
                r.policies
                    .into_iter()
                    .map(|p| (b.broker_name.clone(), PolicyRow::from(p))),
            );
        }
        Ok(rows)
    }
}
