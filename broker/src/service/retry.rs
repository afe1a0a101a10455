//! Send-back, group retry policy and dead-letter redrive: wire <-> `messaging::retry`.

use sluice_proto::v1::{
    GetGroupConfigRequest, GroupConfig, RedriveRequest, RedriveResponse, SendBackRequest,
    SendBackResponse, UpdateGroupConfigRequest,
};
use sluice_proto::ApiError;

use super::convert::now_ms;
use super::BrokerService;

impl BrokerService {
    pub(super) async fn do_send_back(
        &self,
        req: SendBackRequest,
        who: &crate::access::Principal,
    ) -> Result<SendBackResponse, ApiError> {
        let may_read = |topic: &str| {
            self.access.check(
                who,
                sluice_proto::acl::Action::Sub,
                sluice_proto::acl::Resource::Topic(topic),
            )
        };
        let r = self
            .retries
            .send_back(
                crate::messaging::retry::SendBack {
                    group: &req.group,
                    phy: req.commit_log_offset,
                    message_id: &req.message_id,
                    delay_ms: req.delay_ms,
                    reason: &req.reason,
                    dead_letter_after: req.dead_letter.then_some(req.attempts),
                    may_read: &may_read,
                },
                now_ms(),
            )
            .await?;
        Ok(SendBackResponse {
            outcome: r.outcome as i32,
            reconsume_times: r.reconsume_times,
            deliver_at_ms: r.deliver_at_ms,
        })
    }

    pub(super) fn do_get_group_config(
        &self,
        req: GetGroupConfigRequest,
    ) -> Result<GroupConfig, ApiError> {
        self.retries.group_config(&req.group)
    }

    pub(super) async fn do_update_group_config(
        &self,
        req: UpdateGroupConfigRequest,
    ) -> Result<GroupConfig, ApiError> {
        let cfg = req
            .config
            .ok_or_else(|| ApiError::invalid("config is required"))?;
        self.retries.update_group_config(cfg, now_ms()).await
    }

    pub(super) async fn do_redrive(
        &self,
        req: RedriveRequest,
    ) -> Result<RedriveResponse, ApiError> {
        let (redriven, skipped) = self
            .retries
            .redrive(&req.group, &req.message_ids, req.all, now_ms())
            .await?;
        Ok(RedriveResponse { redriven, skipped })
    }
}
