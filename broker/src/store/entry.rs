//! Raft entry data as commit-log records (raft mode; see `docs/replication.md`).
//!
//! A proposal is a run of records encoded with queue offset, physical offset, term and entry
//! index zero but a valid CRC. The writer fills those fields in when it persists the entry, so
//! the stored form differs from the proposed one only in them and in the entry-end mark; both
//! forms decode to the same messages. Entry data that is not such a run (raft's empty no-op,
//! membership changes, anything else) is stored as one NOOP or RAW record that remembers the
//! entry type, and is given back exactly as it was appended.

use bytes::Bytes;
use raft::prelude::{Entry, EntryType};

use super::record::{
    self, Fixed as _, Probe, HEADER_LEN, META_TOPIC, OFF_MAGIC, OFF_SYS_FLAG, SYS_FLAG_META,
    SYS_FLAG_NOOP, SYS_FLAG_RAW,
};
use super::{AppendBatch, AppendMessage, Appended, StoreError, StoredRecord};

fn corrupt(offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        offset,
        reason: reason.into(),
    }
}

/// Records encoded back to back, and each one's `(start, len)` in the buffer.
pub(crate) type Encoded = (Vec<u8>, Vec<(usize, usize)>);

/// Validates a batch and encodes its records back to back. `max_message_size` bounds body
/// plus properties when given.
pub(crate) fn encode_batch(
    batch: &AppendBatch,
    store_host: &str,
    max_message_size: Option<usize>,
) -> Result<Encoded, StoreError> {
    sluice_proto::names::validate_topic_name(&batch.topic)
        .map_err(|e| StoreError::Invalid(e.message))?;
    if batch.messages.is_empty() {
        return Err(StoreError::Invalid("empty batch".into()));
    }
    let mut buf = Vec::with_capacity(
        batch
            .messages
            .iter()
            .map(|m| record::payload_size(m) + 256)
            .sum::<usize>(),
    );
    let mut records = Vec::with_capacity(batch.messages.len());
    for m in &batch.messages {
        let size = record::payload_size(m);
        if let Some(limit) = max_message_size {
            if size > limit {
                return Err(StoreError::MessageTooLarge { size, limit });
            }
        }
        if m.message_id.is_empty() {
            return Err(StoreError::Invalid("message id is empty".into()));
        }
        let start = buf.len();
        record::encode(&mut buf, &batch.topic, batch.queue_id, m, store_host)?;
        records.push((start, buf.len() - start));
    }
    Ok((buf, records))
}

/// Entry data for a send: the batch's records in proposal form (positions, term and index
/// zero, store time and host as given, valid CRCs). Same validation as `MessageStore::append`
/// except the size limits, which are the proposer's to apply.
pub fn encode_for_proposal(
    batch: &AppendBatch,
    store_host: &str,
    store_timestamp_ms: i64,
) -> Result<Bytes, StoreError> {
    let (mut buf, records) = encode_batch(batch, store_host, None)?;
    for (start, len) in records {
        record::seal_proposal(&mut buf[start..start + len], store_timestamp_ms);
    }
    Ok(buf.into())
}

/// A record of the store's own (META, NOOP, RAW): no topic host or id beyond what is given,
/// so every replica encodes it to the same bytes.
pub(crate) fn system_record(
    topic: &str,
    sys_flag: u32,
    flag: u32,
    body: Bytes,
    host: &str,
    ts: i64,
) -> Vec<u8> {
    let m = AppendMessage {
        body,
        flag,
        sys_flag,
        ..Default::default()
    };
    let mut buf = Vec::with_capacity(HEADER_LEN + 32 + m.body.len() + host.len());
    // Only a body over 4 GiB or a host over 64 KiB can fail; both are cut to what fits.
    if let Err(e) = record::encode_any(&mut buf, topic, 0, &m, host) {
        tracing::error!(error = %e, "system record does not fit the record format; body dropped");
        buf.clear();
        let empty = AppendMessage {
            flag,
            sys_flag,
            ..Default::default()
        };
        let _ = record::encode_any(&mut buf, topic, 0, &empty, "");
    }
    record::seal_proposal(&mut buf, ts);
    buf
}

/// Entry data for a metadata operation: one META record whose body is `body`.
pub fn encode_meta_for_proposal(body: &[u8], store_host: &str, store_timestamp_ms: i64) -> Bytes {
    let host = if store_host.len() <= usize::from(u16::MAX) {
        store_host
    } else {
        ""
    };
    system_record(
        META_TOPIC,
        SYS_FLAG_META,
        0,
        Bytes::copy_from_slice(body),
        host,
        store_timestamp_ms,
    )
    .into()
}

/// Cheap check: is the entry's first record a META record?
pub fn is_meta_entry(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN
        && record::is_record_magic(record::u32_at(data, OFF_MAGIC))
        && record::u32_at(data, OFF_SYS_FLAG) & SYS_FLAG_META != 0
}

/// Decodes the records of an entry's data (proposed or stored form). Every record must be
/// complete and pass its CRC. Empty data (a no-op) has no records.
pub fn decode_entry(data: &[u8]) -> Result<Vec<StoredRecord>, StoreError> {
    let owner = Bytes::copy_from_slice(data);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < owner.len() {
        let t = match record::probe(&owner[at..]) {
            Probe::Record(t) => t as usize,
            Probe::Filler => return Err(corrupt(at as u64, "filler inside entry data")),
            Probe::Incomplete => return Err(corrupt(at as u64, "incomplete record")),
            Probe::Corrupt(why) => return Err(corrupt(at as u64, why)),
        };
        let view = record::parse(&owner[at..at + t]).map_err(|why| corrupt(at as u64, why))?;
        out.push(record::to_stored(&view, &owner, at));
        at += t;
    }
    Ok(out)
}

/// The bodies of an entry's META records (the state ops of a mixed entry), every record checked
/// and parsed as [`decode_entry`] does, without copying or converting its messages: the end of
/// a batch of commits carries hundreds of copies that the state does not read.
pub fn meta_bodies(data: &[u8]) -> Result<Vec<Bytes>, StoreError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
        let t = match record::probe(rest) {
            Probe::Record(t) => t as usize,
            Probe::Filler => return Err(corrupt(at as u64, "filler inside entry data")),
            Probe::Incomplete => return Err(corrupt(at as u64, "incomplete record")),
            Probe::Corrupt(why) => return Err(corrupt(at as u64, why)),
        };
        let raw = rest
            .get(..t)
            .ok_or_else(|| corrupt(at as u64, "incomplete record"))?;
        // Every record parsed (no copy), so that an entry is refused exactly when decoding it
        // would be (its text fields, a v1 record's layout).
        let view = record::parse(raw).map_err(|why| corrupt(at as u64, why))?;
        if record::u32_at(raw, OFF_SYS_FLAG) & SYS_FLAG_META != 0 {
            let body = raw
                .get(view.body.clone())
                .ok_or_else(|| corrupt(at as u64, "body past the record"))?;
            out.push(Bytes::copy_from_slice(body));
        }
        at += t;
    }
    Ok(out)
}

/// `(start, len)` of each record of a run that passed [`is_record_run`] or was built by the
/// store.
pub(crate) fn record_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= data.len() {
        let t = record::u32_at(data, at) as usize;
        if t == 0 || at + t > data.len() {
            break;
        }
        out.push((at, t));
        at += t;
    }
    out
}

/// True when `data` is a non-empty run of complete, CRC-valid records that are messages with
/// valid topic names or META records. Anything else is kept opaque (RAW), which every replica
/// decides the same way.
fn is_record_run(data: &[u8]) -> bool {
    let mut at = 0usize;
    while at < data.len() {
        let Probe::Record(t) = record::probe(&data[at..]) else {
            return false;
        };
        let t = t as usize;
        let Ok(view) = record::parse(&data[at..at + t]) else {
            return false;
        };
        let sys = view.sys_flag();
        if sys & (SYS_FLAG_NOOP | SYS_FLAG_RAW) != 0 {
            return false;
        }
        let named = if sys & SYS_FLAG_META != 0 {
            view.topic == META_TOPIC
        } else {
            sluice_proto::names::validate_topic_name(view.topic).is_ok()
        };
        if !named {
            return false;
        }
        at += t;
    }
    at > 0
}

fn type_code(t: EntryType) -> u32 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type(code: u32) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

/// The records to persist for a raft entry, before the writer fills them in: the entry's own
/// data when it is a run of records (not copied here; the writer copies it once, into its
/// write buffer), else one system record made for it.
pub(crate) fn stored_form(e: &Entry) -> std::borrow::Cow<'_, [u8]> {
    let ty = type_code(e.get_entry_type());
    if e.data.is_empty() {
        return system_record("", SYS_FLAG_NOOP, ty, Bytes::new(), "", 0).into();
    }
    if e.get_entry_type() == EntryType::EntryNormal && is_record_run(&e.data) {
        return e.data[..].into();
    }
    system_record("", SYS_FLAG_RAW, ty, e.data.clone(), "", 0).into()
}

/// The raft entry stored as `stored` (the records of entry `index` of `term`): data as it
/// was appended for NOOP and RAW entries, the filled records otherwise.
///
/// Every record must be whole and carry this entry's index and term, but CRCs and strings are
/// not checked again: these bytes passed both on their way into this log, and what is read
/// here is either sent to a follower (which checks every record of an entry it appends) or
/// handed to the applier (whose metadata decoding checks them too). The raft thread reads
/// every entry back at least once (to send it, then to apply it); it used to checksum and
/// parse each message each time.
pub(crate) fn to_raft_entry(index: u64, term: u64, stored: Bytes) -> Result<Entry, String> {
    let mut at = 0usize;
    let mut first_len = None;
    while at < stored.len() {
        let Probe::Record(t) = record::probe_written(&stored[at..]) else {
            return Err(format!("entry {index}: damaged record at byte {at}"));
        };
        let rec = &stored[at..at + t as usize];
        let (rec_index, rec_term) = (
            record::u64_at(rec, record::OFF_ENTRY_INDEX),
            record::u64_at(rec, record::OFF_TERM),
        );
        if rec_index != index || rec_term != term {
            return Err(format!(
                "entry {index} (term {term}) holds a record of entry {rec_index} (term {rec_term})"
            ));
        }
        first_len.get_or_insert(t as usize);
        at += t as usize;
    }
    let Some(first_len) = first_len else {
        return Err(format!("entry {index} has no records"));
    };
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    let sys = record::u32_at(&stored, OFF_SYS_FLAG);
    if sys & (SYS_FLAG_NOOP | SYS_FLAG_RAW) != 0 {
        // A no-op or opaque entry is one system record: its body is the entry's data.
        let first =
            record::parse(&stored[..first_len]).map_err(|why| format!("entry {index}: {why}"))?;
        let flag = first.flag();
        let ty = entry_type(flag).ok_or_else(|| format!("entry {index}: unknown type {flag}"))?;
        e.set_entry_type(ty);
        if sys & SYS_FLAG_RAW != 0 {
            e.data = stored.slice(first.body.clone());
        }
    } else {
        e.data = stored;
    }
    Ok(e)
}

/// Queue and commit-log offsets of the messages (not META records) of a stored entry.
pub(crate) fn message_results(stored: &[u8]) -> Result<Vec<Appended>, StoreError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < stored.len() {
        // The writer built `stored` from records it had checked.
        let Probe::Record(t) = record::probe_written(&stored[at..]) else {
            return Err(corrupt(at as u64, "damaged record in a stored entry"));
        };
        let view =
            record::parse(&stored[at..at + t as usize]).map_err(|w| corrupt(at as u64, w))?;
        if !view.is_system() {
            out.push(Appended {
                queue_offset: view.queue_offset(),
                commit_log_offset: view.physical_offset(),
                size: t,
                store_timestamp_ms: view.store_timestamp(),
            });
        }
        at += t as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> AppendBatch {
        AppendBatch {
            topic: "t".into(),
            queue_id: 2,
            messages: (0..3)
                .map(|i| AppendMessage {
                    message_id: format!("m{i}"),
                    body: Bytes::from(vec![i as u8; 10]),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn proposals_decode_and_are_record_runs() {
        let data = encode_for_proposal(&batch(), "h:1", 77).unwrap();
        let recs = decode_entry(&data).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(recs
            .iter()
            .all(|r| r.store_timestamp_ms == 77 && r.queue_id == 2));
        assert!(is_record_run(&data));
        assert!(!is_meta_entry(&data));
        let meta = encode_meta_for_proposal(b"op", "h:1", 5);
        assert!(is_meta_entry(&meta));
        assert!(is_record_run(&meta));
        assert_eq!(&decode_entry(&meta).unwrap()[0].body[..], b"op");
        assert!(decode_entry(&data[..data.len() - 1]).is_err());
        assert!(decode_entry(b"").unwrap().is_empty());
    }

    #[test]
    fn meta_bodies_are_the_meta_records_of_a_mixed_entry() {
        let mixed = super::super::mixed::MixedBatch {
            state: vec![Bytes::from_static(b"op1"), Bytes::from_static(b"op2")],
            parts: vec![batch(), batch()],
        };
        let data = super::super::mixed::encode_mixed_for_proposal(&mixed, "h:1", 5).unwrap();
        let decoded: Vec<Bytes> = decode_entry(&data)
            .unwrap()
            .into_iter()
            .filter(|r| r.sys_flag & SYS_FLAG_META != 0)
            .map(|r| r.body)
            .collect();
        assert_eq!(decoded.len(), 2);
        assert_eq!(meta_bodies(&data).unwrap(), decoded);
        let plain = encode_for_proposal(&batch(), "h:1", 77).unwrap();
        assert!(meta_bodies(&plain).unwrap().is_empty());
        assert!(meta_bodies(b"").unwrap().is_empty());
        // Torn or flipped bytes anywhere, in a message as in a state record, are refused.
        assert!(meta_bodies(&data[..data.len() - 1]).is_err());
        let mut flipped = data.to_vec();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(meta_bodies(&flipped).is_err());
        // A message whose CRCs hold but whose id is not text: refused as decoding refuses it.
        let mut bad = data.to_vec();
        let (at, len) = record_spans(&bad)[2];
        let rec = &mut bad[at..at + len];
        let id = rec
            .windows(2)
            .position(|w| w == b"m0")
            .expect("the first message's id");
        rec[id] = 0xff;
        record::seal(rec, 0, 0, 5);
        assert!(decode_entry(&bad).is_err());
        assert!(meta_bodies(&bad).is_err());
    }

    #[test]
    fn reserved_flags_are_refused() {
        let mut b = batch();
        b.messages[1].sys_flag = SYS_FLAG_NOOP;
        assert!(matches!(
            encode_for_proposal(&b, "h", 0),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn opaque_and_empty_entries_round_trip() {
        for (ty, data) in [
            (EntryType::EntryNormal, Bytes::new()),
            (EntryType::EntryConfChangeV2, Bytes::new()),
            (EntryType::EntryNormal, Bytes::from_static(b"e1")),
            (
                EntryType::EntryConfChange,
                Bytes::from_static(b"\x08\x01\x10\x02"),
            ),
        ] {
            let mut e = Entry {
                index: 9,
                term: 3,
                data: data.clone(),
                ..Default::default()
            };
            e.set_entry_type(ty);
            let mut stored = stored_form(&e).into_owned();
            let spans = record_spans(&stored);
            assert_eq!(spans.len(), 1);
            record::fill(&mut stored, 0, 100, 3, 9, true);
            let back = to_raft_entry(9, 3, stored.clone().into()).unwrap();
            assert_eq!((back.index, back.term, back.get_entry_type()), (9, 3, ty));
            assert_eq!(back.data, data);
            assert!(to_raft_entry(8, 3, stored.into()).is_err());
        }
    }
}
