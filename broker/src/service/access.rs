//! The `sluice.v1.Access` service: users and policies, through the replicated state. Every
//! call needs `admin` on `cluster`; changes go to the audit log.

use sluice_proto::acl::Rule;
use sluice_proto::names::validate_access_key;
use sluice_proto::v1::access_server::Access;
use sluice_proto::v1::meta_op::Op;
use sluice_proto::v1::*;
use sluice_proto::{ApiError, ErrorCode};
use tonic::Request;

use super::{reply, BrokerService, Reply};
use crate::access::{principal, Principal};
use crate::state::StateOp;
use crate::store::now_ms;

impl BrokerService {
    fn admin(&self, who: &Principal) -> Result<(), ApiError> {
        self.access.check_admin(who, None)
    }

    async fn change(&self, who: &Principal, op: Op, what: String) -> Result<(), ApiError> {
        self.write.require_writer()?;
        self.write.apply(StateOp { op: Some(op) }, now_ms()).await?;
        self.access.audit_change(who, &what);
        Ok(())
    }

    async fn do_put_user(
        &self,
        who: Principal,
        r: PutUserRequest,
    ) -> Result<PutUserResponse, ApiError> {
        self.access.check_admin(&who, Some(&r.access_key))?;
        validate_access_key(&r.access_key)?;
        let Some(caller) = who.caller() else {
            return Err(ApiError::invalid(
                "sign this request: the new secret travels wrapped under the caller's secret",
            ));
        };
        let secret = caller.unwrap_secret(&r.wrapped_secret)?;
        let exists = self.write.state().acl.view().has_user(&r.access_key);
        if exists && r.create_only {
            return Err(ApiError::new(
                ErrorCode::UserAlreadyExists,
                format!("user {} exists", r.access_key),
            ));
        }
        let op = Op::PutUser(AclUser {
            access_key: r.access_key.clone(),
            secret: secret.into(),
        });
        let what = if exists { "secret set" } else { "added" };
        self.change(&who, op, format!("user {} {what}", r.access_key))
            .await?;
        Ok(PutUserResponse { created: !exists })
    }

    async fn do_delete_user(
        &self,
        who: Principal,
        r: DeleteUserRequest,
    ) -> Result<DeleteUserResponse, ApiError> {
        self.access.check_admin(&who, Some(&r.access_key))?;
        validate_access_key(&r.access_key)?;
        let view = self.write.state().acl.view();
        if !view.has_user(&r.access_key) {
            return Err(ApiError::new(
                ErrorCode::UserNotFound,
                format!("no user {}", r.access_key),
            ));
        }
        let policies = view.policies(&r.access_key).len() as u32;
        let op = Op::DeleteUser(r.access_key.clone());
        self.change(&who, op, format!("user {} deleted", r.access_key))
            .await?;
        Ok(DeleteUserResponse {
            deleted: true,
            policies_deleted: policies,
        })
    }

    async fn do_policy(
        &self,
        who: Principal,
        p: Option<AclPolicy>,
        grant: bool,
    ) -> Result<Option<AclPolicy>, ApiError> {
        self.admin(&who)?;
        let p = p.ok_or_else(|| ApiError::invalid("give a policy"))?;
        let rule = Rule::from_policy(&p)?;
        let view = self.write.state().acl.view();
        if grant && !view.has_user(&rule.user) && !self.access.super_users().contains(&rule.user) {
            return Err(ApiError::new(
                ErrorCode::UserNotFound,
                format!("no user {} (add it first)", rule.user),
            ));
        }
        let canonical = rule.to_policy();
        let what = format!(
            "{} {} {} {} on {}",
            if grant { "grant" } else { "revoke" },
            canonical.decision,
            canonical.actions.join(","),
            canonical.user,
            canonical.resource
        );
        let op = if grant {
            Op::Grant(canonical.clone())
        } else {
            Op::Revoke(canonical.clone())
        };
        self.change(&who, op, what).await?;
        Ok(crate::state::acl::current(
            &self.write.state().acl.view(),
            &canonical,
        ))
    }
}

#[tonic::async_trait]
impl Access for BrokerService {
    async fn put_user(&self, req: Request<PutUserRequest>) -> Reply<PutUserResponse> {
        let who = principal(&req);
        reply(self.do_put_user(who, req.into_inner()).await)
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Reply<DeleteUserResponse> {
        let who = principal(&req);
        reply(self.do_delete_user(who, req.into_inner()).await)
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Reply<ListUsersResponse> {
        reply(self.admin(&principal(&req)).map(|()| ListUsersResponse {
            users: self.write.state().acl.view().users(),
            super_users: self.access.super_users(),
        }))
    }

    async fn grant(&self, req: Request<GrantRequest>) -> Reply<GrantResponse> {
        let who = principal(&req);
        let r = self.do_policy(who, req.into_inner().policy, true).await;
        reply(r.map(|policy| GrantResponse { policy }))
    }

    async fn revoke(&self, req: Request<RevokeRequest>) -> Reply<RevokeResponse> {
        let who = principal(&req);
        let r = self.do_policy(who, req.into_inner().policy, false).await;
        reply(r.map(|policy| RevokeResponse { policy }))
    }

    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Reply<ListPoliciesResponse> {
        let who = principal(&req);
        let user = req.into_inner().user;
        reply(self.admin(&who).map(|()| ListPoliciesResponse {
            policies: self.write.state().acl.view().policies(&user),
        }))
    }
}
