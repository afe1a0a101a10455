//! Consumer groups: queues of the subscribed topics are split among the group's live members,
//! each member pulls its queues and commits offsets only past messages it finished with.
//!
//! Delivery is at-least-once. A handler error sends the message back to its broker by
//! reference: it returns on the group's retry topic `%RETRY%<group>` (which every member reads
//! without being told) after the group's backoff, and goes to the dead-letter topic
//! `%DLQ%<group>` once the group's retries are spent. Its offset counts as finished only once
//! the broker acknowledged the send-back; if the broker cannot be reached the message is
//! retried here after a local backoff instead.

mod allocate;
mod coordinator;
mod fetch;
mod locks;
mod member;
mod orderly;
mod pull;
mod push;
mod sendback;
mod tracker;

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sluice_proto::names;

pub use allocate::allocate_averagely;
pub use pull::PullConsumer;
pub use push::PushConsumer;
pub use sendback::{RetryLater, SendBackOutcome};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::message::ReceivedMessage;
use crate::trace::{ConsumeTracer, Tracer};

/// Where a group starts reading a queue it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest message still stored.
    Earliest,
    /// Only messages sent from now on.
    Latest,
    /// The first message stored at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// Error a handler returns to have its message delivered again.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles one message; `Ok` finishes it, an error re-delivers it after a backoff.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<F, Fut, E> MessageHandler for F
where
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<HandlerError>,
{
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, Result<(), HandlerError>> {
        self(message).map(|r| r.map_err(Into::into)).boxed()
    }
}

/// Settings shared by push and pull consumers. Start with [`ConsumerBuilder::start_push`] or
/// [`ConsumerBuilder::start_pull`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    pub(crate) config: ClientConfig,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) start: StartPosition,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) poll_timeout: Duration,
    pub(crate) pull_batch: u32,
    pub(crate) max_unfinished_per_queue: usize,
    pub(crate) concurrency: usize,
    pub(crate) retry_backoff: (Duration, Duration),
    pub(crate) auto_commit: bool,
    pub(crate) buffer: usize,
    /// Each topic's selector (topics without one take every message).
    pub(crate) selectors: Vec<(String, Selector)>,
    /// Broadcast consumption: this instance's id.
    pub(crate) broadcast: Option<String>,
    /// Ordered consumption, and what to do with a message whose retries are spent.
    pub(crate) orderly: Option<OrderlyFailure>,
    pub(crate) trace: bool,
}

/// Ordered consumption: what happens to a message that still fails after the group's retries
/// (its `max_retries`, retried in place while the queue waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderlyFailure {
    /// To the group's dead-letter topic, so one poison message does not block its queue for
    /// ever (the default).
    DeadLetter,
    /// Keep retrying (backoff capped at the retry backoff's max): nothing after it in its queue
    /// is processed until it succeeds.
    Block,
}

/// Which messages of a topic a subscription takes, judged on the broker: RocketMQ's tag
/// expressions and SQL92 selectors (see the `sluice-filter` crate for the grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `*`, `a`, `a || b || c`: messages with one of these tags.
    Tag(String),
    /// A condition on message properties, the tag being the property `TAGS`:
    /// `region = 'eu' AND amount > 100`.
    Sql(String),
}

impl Selector {
    pub fn tag(expression: impl Into<String>) -> Self {
        Selector::Tag(expression.into())
    }

    pub fn sql(expression: impl Into<String>) -> Self {
        Selector::Sql(expression.into())
    }

    fn parts(&self) -> (sluice_filter::Kind, &str) {
        match self {
            Selector::Tag(e) => (sluice_filter::Kind::Tag, e),
            Selector::Sql(e) => (sluice_filter::Kind::Sql, e),
        }
    }

    /// Compiles the expression as the broker will, so a bad one is refused at subscribe time.
    fn check(&self, topic: &str) -> Result<()> {
        let (kind, e) = self.parts();
        sluice_filter::Filter::compile(kind, e, &sluice_filter::Limits::default())
            .map(|_| ())
            .map_err(|err| {
                Error::InvalidArgument(format!(
                    "the {kind:?} selector of topic {topic} ({e:?}) {err}"
                ))
            })
    }

    /// The wire form for `topic`.
    pub(crate) fn to_wire(&self, topic: &str) -> sluice_proto::v1::SubscriptionFilter {
        let (kind, e) = self.parts();
        let kind = match kind {
            sluice_filter::Kind::Tag => sluice_proto::v1::FilterKind::Tag,
            sluice_filter::Kind::Sql => sluice_proto::v1::FilterKind::Sql,
        };
        sluice_proto::v1::SubscriptionFilter {
            topic: topic.to_string(),
            kind: kind as i32,
            expression: e.to_string(),
        }
    }
}

impl ConsumerBuilder {
    pub fn new(config: ClientConfig, group: impl Into<String>) -> Self {
        ConsumerBuilder {
            config,
            group: group.into(),
            topics: Vec::new(),
            start: StartPosition::Latest,
            heartbeat_interval: Duration::from_secs(5),
            rebalance_interval: Duration::from_secs(5),
            commit_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(10),
            pull_batch: 32,
            max_unfinished_per_queue: 1000,
            concurrency: 16,
            retry_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
            auto_commit: true,
            buffer: 1024,
            selectors: Vec::new(),
            broadcast: None,
            orderly: None,
            trace: false,
        }
    }

    /// Records a trace of every delivery (delivered, and how the handler finished) on the
    /// trace topic, for `sluice message trace ID` (default false). Written in the background;
    /// dropped, never waited for, when the trace topic's broker is slow or refuses them.
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// The trace recorder of a consumer with this id, when tracing.
    pub(crate) fn tracer(&self, client_id: &str) -> Result<Option<ConsumeTracer>> {
        if !self.trace {
            return Ok(None);
        }
        Ok(Some(ConsumeTracer {
            tracer: Tracer::start(self.config.clone())?,
            group: self.group.clone(),
            client_id: client_id.to_string(),
        }))
    }

    /// Adds a topic to consume.
    pub fn subscribe(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        if !self.topics.contains(&topic) {
            self.topics.push(topic);
        }
        self
    }

    /// Adds a topic to consume, taking only the messages `selector` takes (filtered on the
    /// broker; the group's retry topic is filtered the same way). Subscribing again replaces
    /// the topic's selector.
    pub fn subscribe_with(mut self, topic: impl Into<String>, selector: Selector) -> Self {
        let topic = topic.into();
        self.selectors.retain(|(t, _)| *t != topic);
        self.selectors.push((topic.clone(), selector));
        self.subscribe(topic)
    }

    /// Broadcast consumption: every instance of the group gets every message (clustering, the
    /// default, splits the queues among the instances). Each instance keeps its own offsets on
    /// the broker, under the group `GROUP|INSTANCE`, with its own retry and dead-letter topics,
    /// so a restarted instance with the same id resumes where it stopped and a new one starts
    /// at the start position (latest by default). `instance` must stay the same across restarts
    /// and differ between the group's instances (a host or pod name): two instances with one id
    /// would split the messages between them.
    pub fn broadcast(mut self, instance: impl Into<String>) -> Self {
        self.broadcast = Some(instance.into());
        self
    }

    /// Ordered consumption (push consumers): each queue is processed by one consumer of the
    /// group at a time, one message after another, in queue order. The consumer holds a lock
    /// per queue on its broker (leased, renewed, replicated across failover); on a rebalance
    /// the old owner finishes its message, commits and unlocks before the new owner starts.
    /// A failing message is retried in place with the retry backoff while its queue waits, up
    /// to the group's `max_retries`, then handled by `on_failure`. Messages with one key (say
    /// an order id) sent with the producer's key-based queue choice form one ordered stream.
    pub fn orderly(mut self, on_failure: OrderlyFailure) -> Self {
        self.orderly = Some(on_failure);
        self
    }

    /// The group this consumer commits offsets and retries under: the group, or in broadcast
    /// mode the instance's own.
    pub(crate) fn offsets_group(&self) -> String {
        match &self.broadcast {
            Some(instance) => format!("{}|{instance}", self.group),
            None => self.group.clone(),
        }
    }

    /// Where to start on queues without a committed offset (default: latest).
    pub fn start_position(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// How often brokers hear from this consumer (default 5 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How often queues are re-split even without a membership change (default 5 s).
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// How often finished offsets are sent to the brokers (default 5 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// How long a queue being given up waits for its running handlers (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a pull waits at the broker for new messages (default 10 s; brokers cap it).
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = timeout;
        self
    }

    /// Messages per pull request (default 32).
    pub fn pull_batch_size(mut self, n: u32) -> Self {
        self.pull_batch = n;
        self
    }

    /// Unfinished messages a queue may have before its pulling pauses (default 1000).
    pub fn max_unfinished_per_queue(mut self, n: usize) -> Self {
        self.max_unfinished_per_queue = n;
        self
    }

    /// Push consumers: most messages handled at once, over all queues (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Push consumers: delay before re-delivering a message whose handler failed, doubling
    /// from `min` up to `max` (default 1 s .. 30 s).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_backoff = (min, max);
        self
    }

    /// Pull consumers: each `poll` marks the messages of the previous one finished (default
    /// true); with false, only [`PullConsumer::commit`] does.
    pub fn auto_commit(mut self, on: bool) -> Self {
        self.auto_commit = on;
        self
    }

    /// Pull consumers: messages fetched ahead of `poll` (default 1024).
    pub fn buffer_size(mut self, n: usize) -> Self {
        self.buffer = n;
        self
    }

    /// Starts a push consumer calling `handler` for every message.
    pub async fn start_push<H: MessageHandler>(self, handler: H) -> Result<PushConsumer> {
        PushConsumer::start(self.resolved()?, handler).await
    }

    /// Starts a pull consumer.
    pub async fn start_pull(self) -> Result<PullConsumer> {
        if self.orderly.is_some() {
            return Err(Error::Config(
                "ordered consumption needs a push consumer (start_push)".into(),
            ));
        }
        PullConsumer::start(self.resolved()?).await
    }

    /// Checked, with a broadcast instance's own group in place of the group.
    fn resolved(mut self) -> Result<Self> {
        self.validate()?;
        self.group = self.offsets_group();
        self.broadcast = None;
        Ok(self)
    }

    /// The subscribed topics and the group's retry topic (ordered consumers retry in place
    /// and have none).
    pub(crate) fn topics_with_retry(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        if self.orderly.is_some() {
            return topics;
        }
        let retry = names::retry_topic(&self.group);
        if !topics.contains(&retry) {
            topics.push(retry);
        }
        topics
    }

    pub(crate) fn validate(&self) -> Result<()> {
        names::validate_group_name(&self.group)?;
        if self.broadcast.is_some() {
            let own = self.offsets_group();
            names::validate_group_name(&own)
                .and_then(|_| names::validate_topic_name(&names::retry_topic(&own)))
                .map_err(|e| Error::Config(format!("broadcast instance id: {}", e.message)))?;
        }
        if self.topics.is_empty() {
            return Err(Error::Config("subscribe to at least one topic".into()));
        }
        for t in &self.topics {
            names::validate_topic_name(t)?;
        }
        for (t, sel) in &self.selectors {
            sel.check(t)?;
        }
        let durations = [
            ("heartbeat interval", self.heartbeat_interval),
            ("rebalance interval", self.rebalance_interval),
            ("commit interval", self.commit_interval),
            ("retry backoff", self.retry_backoff.0),
        ];
        if let Some((what, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::Config(format!("{what} must be above zero")));
        }
        if self.retry_backoff.1 < self.retry_backoff.0 {
            return Err(Error::Config("retry backoff max is below its min".into()));
        }
        if self.concurrency == 0 || self.buffer == 0 || self.pull_batch == 0 {
            return Err(Error::Config(
                "concurrency, buffer and pull batch size must be at least 1".into(),
            ));
        }
        if self.max_unfinished_per_queue < self.pull_batch as usize {
            return Err(Error::Config(
                "max unfinished messages per queue must be at least the pull batch size".into(),
            ));
        }
        if self.concurrency > tokio::sync::Semaphore::MAX_PERMITS
            || self.buffer > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(Error::Config(
                "concurrency or buffer size is too large".into(),
            ));
        }
        Ok(())
    }
}

/// A unique id for one consumer instance: host, process and a random part, so that several
/// consumers in one process are distinct group members.
pub(crate) fn new_client_id() -> String {
    format!(
        "{}@{}@{:08x}",
        crate::message_id::hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_selector_is_refused_at_subscribe_time_with_its_position() {
        let config = ClientConfig::new(["127.0.0.1:1"]);
        let ok = ConsumerBuilder::new(config.clone(), "g")
            .subscribe_with("orders", Selector::tag("paid || shipped"))
            .subscribe_with("audit", Selector::sql("amount > 100"));
        assert!(ok.validate().is_ok());
        let wire: Vec<_> = ok.selectors.iter().map(|(t, s)| s.to_wire(t)).collect();
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[1].kind, sluice_proto::v1::FilterKind::Sql as i32);

        let bad = ConsumerBuilder::new(config, "g")
            .subscribe_with("orders", Selector::sql("amount > 100 AND"));
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("orders") && e.contains("column 17"), "{e}");
    }

    #[test]
    fn a_broadcast_instance_commits_under_a_group_of_its_own() {
        let config = ClientConfig::new(["127.0.0.1:1"]);
        let b = ConsumerBuilder::new(config.clone(), "caches")
            .subscribe("news")
            .broadcast("host-a");
        assert_eq!(b.offsets_group(), "caches|host-a");
        let r = b.resolved().unwrap();
        assert_eq!(r.group, "caches|host-a");
        assert_eq!(r.topics_with_retry()[1], "%RETRY%caches|host-a");
        let bad = ConsumerBuilder::new(config, "caches")
            .subscribe("news")
            .broadcast("host.example.com");
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("broadcast instance id"), "{e}");
    }
}
