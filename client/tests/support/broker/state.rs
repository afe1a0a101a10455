//! The fake broker's state: what tests read and the failures they inject.

use super::*;

impl BrokerState {
    pub fn addr(&self) -> String {
        self.addr.lock().unwrap().clone()
    }

    /// Creates a topic here and registers it with the nameservers at once.
    pub fn add_topic(&self, topic: &str, queues: u32) {
        let config = TopicConfig {
            name: topic.into(),
            read_queues: queues,
            write_queues: queues,
            perm: 6,
        };
        self.topics
            .lock()
            .unwrap()
            .insert(topic.into(), config.clone());
        for ns in &self.ns {
            ns.add_topic(&self.name, config.clone());
        }
    }

    pub fn fail_next_sends(&self, statuses: Vec<Status>) {
        self.send_failures.lock().unwrap().extend(statuses);
    }

    pub fn messages(&self, topic: &str, queue: u32) -> Vec<StoredMessage> {
        self.queues
            .lock()
            .unwrap()
            .get(&(topic.to_string(), queue))
            .map(|q| q.messages.clone())
            .unwrap_or_default()
    }

    pub fn message_count(&self, topic: &str) -> usize {
        self.queues
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, q)| q.messages.len())
            .sum()
    }

    pub fn committed(&self, group: &str, topic: &str, queue: u32) -> Option<u64> {
        self.offsets
            .lock()
            .unwrap()
            .get(&(group.to_string(), topic.to_string(), queue))
            .copied()
    }

    pub fn set_committed(&self, group: &str, topic: &str, queue: u32, offset: u64) {
        self.offsets
            .lock()
            .unwrap()
            .insert((group.into(), topic.into(), queue), offset);
    }

    /// Drops messages below `min` (retention).
    pub fn trim(&self, topic: &str, queue: u32, min: u64) {
        let mut queues = self.queues.lock().unwrap();
        let q = queues.entry((topic.to_string(), queue)).or_default();
        let drop = (min.saturating_sub(q.min) as usize).min(q.messages.len());
        q.messages.drain(..drop);
        q.min += drop as u64;
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        let now = Instant::now();
        let mut m = self.members.lock().unwrap();
        let g = m.entry(group.to_string()).or_default();
        g.retain(|_, seen| now.duration_since(*seen) < self.member_expiry);
        g.keys().cloned().collect()
    }

    pub(super) fn check_up(&self) -> Result<(), Status> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "connection refused (fake broker is down)",
            ));
        }
        Ok(())
    }

    pub(super) fn topic(&self, topic: &str) -> Result<TopicConfig, Status> {
        self.topics
            .lock()
            .unwrap()
            .get(topic)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::TopicNotFound, format!("topic {topic} not found")).into()
            })
    }

    pub(super) fn append(
        &self,
        topic: &str,
        queue_id: u32,
        messages: Vec<Message>,
    ) -> Vec<SendResult> {
        let mut queues = self.queues.lock().unwrap();
        let q = queues.entry((topic.to_string(), queue_id)).or_default();
        let results = messages
            .into_iter()
            .map(|m| {
                let offset = q.max();
                let clo = self
                    .commit_log
                    .fetch_add(100 + m.body.len() as u64, Ordering::SeqCst);
                let id = if m.message_id.is_empty() {
                    format!("broker-{offset}")
                } else {
                    m.message_id.clone()
                };
                q.messages.push(StoredMessage {
                    topic: topic.to_string(),
                    queue_id,
                    queue_offset: offset,
                    commit_log_offset: clo,
                    message_id: id.clone(),
                    body: m.body,
                    tag: m.tag,
                    keys: m.keys,
                    properties: m.properties,
                    flag: m.flag,
                    born_timestamp_ms: m.born_timestamp_ms,
                    born_host: m.born_host,
                    store_timestamp_ms: now_ms(),
                    store_host: self.addr(),
                    ..Default::default()
                });
                SendResult {
                    delay_handle: String::new(),
                    deliver_at_ms: 0,
                    message_id: id,
                    queue_offset: offset,
                    commit_log_offset: clo,
                }
            })
            .collect();
        drop(queues);
        self.appended.notify_waiters();
        results
    }

    pub(super) fn all_messages(&self) -> Vec<StoredMessage> {
        self.queues
            .lock()
            .unwrap()
            .values()
            .flat_map(|q| q.messages.clone())
            .collect()
    }
}
