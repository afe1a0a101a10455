//! The master's timer task: loads the timers due soon from the store's timer index into a
//! window, writes each one into its real queue when it is due (the fired record is the
//! delivery and the "done" mark at once), and serializes cancels with firing, so a timer is
//! either delivered or cancelled, never both.
//!
//! It resumes from the index alone (built from the log on every replica), never from memory
//! of an earlier run; after a write whose outcome it cannot know it waits until everything
//! written is applied ([`WritePath::settle`]) and reads the index again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_proto::props::{self, DELIVER_AT, REAL_QUEUE, REAL_TOPIC, TIMER_OF};
use sluice_proto::record::SYS_FLAG_TIMER_FIRED;
use sluice_proto::v1::cancel_delayed_response::Outcome;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{cancel_record, CancelOutcome, CancelRequest};
use crate::messaging::WritePath;
use crate::store::timer::{slot_of, TimerEntry, TimerState, SLOT_MS};
use crate::store::{AppendBatch, AppendMessage, Appended, MessageStore, StoreError, StoredRecord};

/// Slots are loaded this long before they start, so their first timers fire on time.
const LOOKAHEAD_MS: i64 = 1_000;
/// Most timers fired in one round.
const MAX_ROUND: usize = 8192;

/// Timers due this soon have their records read ahead (a burst due in one second is then
/// mostly written, not read, when it is due), within `PREFETCH_BYTES` of records.
const PREFETCH_MS: i64 = 1_000;
const PREFETCH_BYTES: usize = 64 << 20;

/// Scheduled records read for a round, each with its timer.
type Read = Vec<(TimerEntry, Result<StoredRecord, StoreError>)>;

fn now_ms() -> i64 {
    crate::service::convert::now_ms()
}

pub(super) struct Task {
    store: MessageStore,
    write: WritePath,
    /// Pending timers of the loaded slots, in firing order (due time, then arrival).
    window: BTreeMap<(i64, u64), TimerEntry>,
    /// The chain head each loaded slot had when it was read.
    heads: HashMap<i64, u64>,
    /// End of the last record this run wrote: the index is read only once it is dispatched.
    written_end: u64,
    /// Records of window timers read ahead, by offset, and their bytes.
    ready: HashMap<u64, Result<StoredRecord, StoreError>>,
    ready_bytes: usize,
    prefetching: Option<JoinHandle<Result<Read, ApiError>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Task {
    pub(super) fn new(
        store: MessageStore,
        write: WritePath,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Task {
        Task {
            store,
            write,
            metrics,
            window: BTreeMap::new(),
            heads: HashMap::new(),
            written_end: 0,
            ready: HashMap::new(),
            ready_bytes: 0,
            prefetching: None,
        }
    }

    pub(super) async fn run(
        mut self,
        inbox: &mut mpsc::Receiver<CancelRequest>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut version = self.store.subscribe_timers();
        loop {
            if *stop.borrow() {
                return;
            }
            version.borrow_and_update();
            let now = now_ms();
            if let Err(e) = self.load(now).await {
                tracing::error!(error = %e, "timer index unreadable; retrying");
                if pause(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
                continue;
            }
            let due = self.take_due(now);
            if !due.is_empty() {
                let mut reading = Some(self.read(due));
                while let Some(r) = reading.take() {
                    let fired = match r.await {
                        Ok(Ok(records)) => {
                            let more = self.take_due(now_ms());
                            if !more.is_empty() {
                                reading = Some(self.read(more));
                            }
                            self.fire(records).await
                        }
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(ApiError::internal(format!("timer read failed: {e}"))),
                    };
                    if let Err(e) = fired {
                        tracing::warn!(error = %e, "delivering due timers failed; settling, then retrying");
                        // What was read ahead goes back with the rest: the index is read again.
                        drop(reading.take());
                        if self.recover(&mut stop).await {
                            return;
                        }
                    }
                }
                while let Ok(req) = inbox.try_recv() {
                    self.answer(req, &mut stop).await;
                }
                continue;
            }
            self.prefetch(now);
            let wake = self.next_wake(now);
            let prefetched = async {
                match &mut self.prefetching {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = prefetched => {
                    self.prefetching = None;
                    if let Ok(Ok(records)) = r {
                        for (e, rec) in records {
                            self.ready_bytes += e.size as usize;
                            self.ready.insert(e.sched_phy, rec);
                        }
                    }
                }
                _ = tokio::time::sleep(wake) => {}
                r = version.changed() => if r.is_err() { return },
                req = inbox.recv() => match req {
                    Some(req) => self.answer(req, &mut stop).await,
                    None => return,
                },
                _ = stop.changed() => {}
            }
        }
    }

    /// Reads the chains of slots due within the lookahead that changed since last read.
    async fn load(&mut self, now: i64) -> Result<(), StoreError> {
        let upto = slot_of(now.saturating_add(LOOKAHEAD_MS));
        let slots = self.store.timer_slots_upto(upto);
        self.heads
            .retain(|s, _| *s > upto || slots.iter().any(|(k, _)| k == s));
        for (slot, head) in slots {
            let seen = self.heads.get(&slot).copied().unwrap_or(0);
            if seen == head {
                continue;
            }
            let store = self.store.clone();
            let entries = tokio::task::spawn_blocking(move || store.timer_chain(head, seen))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
            for e in entries {
                self.window.insert((e.due_ms, e.sched_phy), e);
            }
            self.heads.insert(slot, head);
        }
        Ok(())
    }

    fn take_due(&mut self, now: i64) -> Vec<TimerEntry> {
        let mut out = Vec::new();
        while out.len() < MAX_ROUND {
            match self.window.first_key_value() {
                Some((&(due, _), _)) if due <= now => {
                    if let Some((_, e)) = self.window.pop_first() {
                        out.push(e);
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// How long to sleep: until the next due timer or the next slot to load, at most 1 s.
    fn next_wake(&self, now: i64) -> Duration {
        let next_slot = SLOT_MS - (now.saturating_add(LOOKAHEAD_MS)).rem_euclid(SLOT_MS);
        let next_due = self
            .window
            .first_key_value()
            .map_or(i64::MAX, |(&(due, _), _)| due.saturating_sub(now));
        Duration::from_millis(next_slot.min(next_due).clamp(1, 1_000) as u64)
    }

    /// Starts reading ahead the records of window timers due within `PREFETCH_MS`.
    fn prefetch(&mut self, now: i64) {
        if self.prefetching.is_some() {
            return;
        }
        let soon = now.saturating_add(PREFETCH_MS);
        let mut budget = PREFETCH_BYTES.saturating_sub(self.ready_bytes);
        let mut want = Vec::new();
        for (&(due, phy), e) in &self.window {
            if due > soon || (e.size as usize) > budget || want.len() >= 65_536 {
                break;
            }
            if !self.ready.contains_key(&phy) {
                budget -= e.size as usize;
                want.push(*e);
            }
        }
        if !want.is_empty() {
            self.prefetching = Some(self.read_records(want));
        }
    }

    /// The records of `due`: those read ahead, and the rest read on two blocking threads (a
    /// burst of timers is read while the previous round is written); in firing order.
    fn read(&mut self, due: Vec<TimerEntry>) -> JoinHandle<Result<Read, ApiError>> {
        let mut have = Read::new();
        let mut need = Vec::new();
        for e in due {
            match self.ready.remove(&e.sched_phy) {
                Some(r) => {
                    self.ready_bytes = self.ready_bytes.saturating_sub(e.size as usize);
                    have.push((e, r));
                }
                None => need.push(e),
            }
        }
        if need.is_empty() {
            return tokio::spawn(async move { Ok(have) });
        }
        let reading = self.read_records(need);
        tokio::spawn(async move {
            let read = reading
                .await
                .map_err(|e| ApiError::internal(format!("timer read task failed: {e}")))??;
            have.extend(read);
            have.sort_by_key(|(e, _)| (e.due_ms, e.sched_phy));
            Ok(have)
        })
    }

    fn read_records(&self, mut due: Vec<TimerEntry>) -> JoinHandle<Result<Read, ApiError>> {
        let store = self.store.clone();
        tokio::spawn(async move {
            let second = due.split_off(due.len() / 2);
            let other = store.clone();
            let read = |store: MessageStore, part: Vec<TimerEntry>| {
                tokio::task::spawn_blocking(move || {
                    part.into_iter()
                        .map(|e| (e, store.read_at(e.sched_phy)))
                        .collect::<Read>()
                })
            };
            let (a, b) = tokio::join!(read(store, due), read(other, second));
            let failed = |e: tokio::task::JoinError| {
                ApiError::internal(format!("timer read task failed: {e}"))
            };
            let mut a = a.map_err(failed)?;
            a.extend(b.map_err(failed)?);
            Ok(a)
        })
    }

    /// Writes each due timer into its real queue (one batch per queue, in firing order).
    async fn fire(&mut self, records: Read) -> Result<(), ApiError> {
        let mut batches: Vec<AppendBatch> = Vec::new();
        let mut at: HashMap<(String, u32), usize> = HashMap::new();
        let mut broken = Vec::new();
        let mut due_times = Vec::new();
        for (e, r) in records {
            let r = match r {
                Ok(r) => r,
                Err(err @ (StoreError::Io(_) | StoreError::Closed)) => return Err(err.into()),
                Err(err) => {
                    tracing::error!(timer = e.sched_phy, error = %err, "scheduled record unreadable; the timer is cancelled");
                    broken.push(e);
                    continue;
                }
            };
            let Some((topic, queue, m)) = fired(r) else {
                tracing::error!(
                    timer = e.sched_phy,
                    "scheduled record names no real queue; the timer is cancelled"
                );
                broken.push(e);
                continue;
            };
            let i = *at.entry((topic.clone(), queue)).or_insert_with(|| {
                batches.push(AppendBatch {
                    topic,
                    queue_id: queue,
                    messages: Vec::new(),
                });
                batches.len() - 1
            });
            if let Some(b) = batches.get_mut(i) {
                b.messages.push(m);
                due_times.push(e.due_ms);
            }
        }
        let now = now_ms();
        let results = join_all(batches.into_iter().map(|b| self.write.append(b, now))).await;
        for r in results {
            self.wrote(&r?.1);
        }
        if let Some(m) = &self.metrics {
            for due in due_times {
                let late = now.saturating_sub(due).max(0) as f64 / 1000.0;
                m.ops.timer_lateness_seconds.observe(late);
            }
        }
        for e in broken {
            // Resolve it so it does not hold retention back for ever.
            if let Ok(sched) = self.store.read_at(e.sched_phy) {
                self.append(cancel_record(&sched)).await?;
            }
        }
        Ok(())
    }

    async fn append(&mut self, batch: AppendBatch) -> Result<(), ApiError> {
        let (_, appended) = self.write.append(batch, now_ms()).await?;
        self.wrote(&appended);
        Ok(())
    }

    /// Remembers where the records this run wrote end.
    fn wrote(&mut self, appended: &[Appended]) {
        if let Some(last) = appended.last() {
            self.written_end = self
                .written_end
                .max(last.commit_log_offset + u64::from(last.size));
        }
    }

    /// After a failed write: wait until its outcome is in the index, then reload everything.
    /// True when told to stop meanwhile.
    async fn recover(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            tokio::select! {
                r = self.write.settle(&self.store) => match r {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "timer task cannot settle yet");
                        if pause(stop, Duration::from_millis(200)).await {
                            return true;
                        }
                    }
                },
                _ = stop.changed() => return true,
            }
        }
        self.window.clear();
        self.heads.clear();
        self.ready.clear();
        self.ready_bytes = 0;
        self.prefetching = None;
        false
    }

    /// Waits until everything this run wrote is in the index.
    async fn caught_up(&self) -> Result<(), ApiError> {
        let target = self.written_end;
        let mut d = self.store.subscribe_dispatched();
        d.wait_for(|&p| p >= target)
            .await
            .map(|_| ())
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the store stopped"))
    }

    async fn answer(&mut self, req: CancelRequest, stop: &mut watch::Receiver<bool>) {
        let r = self.cancel(req.sched_phy).await;
        if r.is_err() {
            // The cancel record may or may not be written: read the index again.
            if self.recover(stop).await {
                let _ = req.reply.send(r);
                return;
            }
        }
        let _ = req.reply.send(r);
    }

    async fn cancel(&mut self, sched_phy: u64) -> Result<CancelOutcome, ApiError> {
        self.caught_up().await?;
        let store = self.store.clone();
        let (entry, sched) = tokio::task::spawn_blocking(move || {
            let entry = store.timer_entry(sched_phy)?;
            let sched = match entry {
                Some(_) => Some(store.read_at(sched_phy)?),
                None => None,
            };
            Ok::<_, StoreError>((entry, sched))
        })
        .await
        .map_err(|e| ApiError::internal(format!("timer lookup failed: {e}")))??;
        let (Some(entry), Some(sched)) = (entry, sched) else {
            return Err(ApiError::new(
                ErrorCode::MessageNotFound,
                format!("no delayed message is scheduled at offset {sched_phy} (never, or delivered long ago)"),
            ));
        };
        let info = |outcome| CancelOutcome {
            outcome,
            message_id: sched.message_id.clone(),
            deliver_at_ms: entry.due_ms,
            topic: props::get(&sched.properties, REAL_TOPIC)
                .unwrap_or_default()
                .to_string(),
        };
        match entry.state {
            TimerState::Fired => Ok(info(Outcome::AlreadyDelivered)),
            TimerState::Cancelled => Ok(info(Outcome::AlreadyCancelled)),
            TimerState::Pending => {
                self.append(cancel_record(&sched)).await?;
                self.window.remove(&(entry.due_ms, entry.sched_phy));
                if self.ready.remove(&entry.sched_phy).is_some() {
                    self.ready_bytes = self.ready_bytes.saturating_sub(entry.size as usize);
                }
                self.caught_up().await?;
                Ok(info(Outcome::Cancelled))
            }
        }
    }
}

/// The delivered form of a scheduled record: its real topic and queue, and the message with
/// the timer's offset in place of the routing properties.
fn fired(mut r: StoredRecord) -> Option<(String, u32, AppendMessage)> {
    let topic = props::get(&r.properties, REAL_TOPIC)?.to_string();
    let queue: u32 = props::get(&r.properties, REAL_QUEUE)?.parse().ok()?;
    let mut properties: Vec<(String, String)> = std::mem::take(&mut r.properties)
        .into_iter()
        .filter(|(k, _)| k != REAL_TOPIC && k != REAL_QUEUE && k != TIMER_OF)
        .collect();
    // A record without its due time is not one the broker scheduled.
    props::get(&properties, DELIVER_AT)?;
    properties.push((TIMER_OF.into(), r.commit_log_offset.to_string()));
    Some((
        topic,
        queue,
        r.into_message(properties, SYS_FLAG_TIMER_FIRED),
    ))
}

/// Sleeps `d` unless told to stop first (then true).
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
