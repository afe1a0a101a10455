//! Send and cancel over `sluice.v1`: wire <-> `messaging::produce` / `messaging::timer`.

use sluice_proto::acl::{Action, Resource};
use sluice_proto::v1::{
    CancelDelayedRequest, CancelDelayedResponse, InitProducerRequest, InitProducerResponse,
    SendRequest, SendResponse, SendResult,
};
use sluice_proto::ApiError;

use super::convert::{now_ms, to_append};
use super::BrokerService;
use crate::messaging::idempotence::Sequence;
use crate::messaging::produce::Outgoing;
use crate::messaging::timer::{self, Delay};
use crate::messaging::txn::TxSend;

impl BrokerService {
    pub(crate) async fn do_send(
        &self,
        req: SendRequest,
        who: &crate::access::Principal,
    ) -> Result<SendResponse, ApiError> {
        self.access
            .check(who, Action::Pub, Resource::Topic(&req.topic))?;
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in req.messages {
            if !m.topic.is_empty() && m.topic != req.topic {
                return Err(ApiError::invalid(format!(
                    "message for topic {} in a send to topic {}",
                    m.topic, req.topic
                )));
            }
            let delay = Delay::of_wire(&m)?;
            messages.push(Outgoing {
                message: to_append(m, &self.ids, self.limits.max_message_size)?,
                delay,
            });
        }
        let tx = (!req.transaction_id.is_empty()).then(|| TxSend {
            id: req.transaction_id.clone(),
            group: req.producer_group.clone(),
        });
        let seq = (req.producer_id != 0).then_some(Sequence {
            producer_id: req.producer_id,
            epoch: req.producer_epoch,
            base_sequence: req.base_sequence,
        });
        let receipts = self
            .producing
            .send(&req.topic, req.queue_id, messages, seq, tx, now_ms())
            .await?;
        Ok(SendResponse {
            store_timestamp_ms: receipts.first().map_or(0, |r| r.store_timestamp_ms),
            broker_name: self.identity.broker_name.clone(),
            queue_id: req.queue_id,
            results: receipts
                .into_iter()
                .map(|r| {
                    let (delay_handle, deliver_at_ms) = r.delayed.unwrap_or_default();
                    SendResult {
                        message_id: r.message_id,
                        queue_offset: r.queue_offset,
                        commit_log_offset: r.commit_log_offset,
                        delay_handle,
                        deliver_at_ms,
                    }
                })
                .collect(),
        })
    }

    pub(crate) async fn do_init_producer(
        &self,
        req: InitProducerRequest,
    ) -> Result<InitProducerResponse, ApiError> {
        let producer_id = self
            .producing
            .idempotence()
            .register(&req.producer_group, now_ms())
            .await?;
        Ok(InitProducerResponse {
            producer_id,
            producer_epoch: 0,
            broker_name: self.identity.broker_name.clone(),
        })
    }

    pub(crate) async fn do_cancel_delayed(
        &self,
        req: CancelDelayedRequest,
        who: &crate::access::Principal,
    ) -> Result<CancelDelayedResponse, ApiError> {
        let phy = timer::parse_handle(&self.identity.broker_name, &req.handle)?;
        // Cancelling needs `pub` on the message's topic (the scheduled record names it); a
        // handle that reads nothing goes on to the timer task's own answer.
        if let Ok(sched) = self.store.read_at(phy) {
            let scheduled = sched.sys_flag & sluice_proto::record::SYS_FLAGS_TIMER != 0;
            let topic =
                sluice_proto::props::get(&sched.properties, sluice_proto::props::REAL_TOPIC)
                    .filter(|_| scheduled)
                    .unwrap_or(&sched.topic);
            self.access
                .check(who, Action::Pub, Resource::Topic(topic))?;
        } else {
            self.access.check_signed_in(who)?;
        }
        let o = self.timers.cancel(phy).await?;
        Ok(CancelDelayedResponse {
            outcome: o.outcome as i32,
            message_id: o.message_id,
            deliver_at_ms: o.deliver_at_ms,
            topic: o.topic,
        })
    }
}
