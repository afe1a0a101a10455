//! Writing records of the commit log: encoding, sealing, the raft fill; the format itself
//! (and every read of it) is `sluice_proto::record`, shared with clients that read records.

use bytes::Bytes;

pub use sluice_proto::record::*;

use super::{AppendMessage, StoreError, StoredRecord};

/// Topic of META records.
pub const META_TOPIC: &str = "%SYS%META";

/// Stable 64-bit hash of a tag, kept in consume-queue entries for broker-side filtering
/// (FNV-1a: persisted, so it must never change).
pub fn tag_hash(tag: &[u8]) -> u64 {
    if tag.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn short_len(s: &str, what: &str) -> Result<u16, StoreError> {
    u16::try_from(s.len()).map_err(|_| {
        StoreError::Invalid(format!("{what} is {} bytes; the limit is 65535", s.len()))
    })
}

fn put_str16(buf: &mut Vec<u8>, s: &str, what: &str) -> Result<(), StoreError> {
    put_u16(buf, short_len(s, what)?);
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Bytes of a message that count against `max_message_size`: body plus properties
/// (tag, keys, user properties).
pub fn payload_size(m: &AppendMessage) -> usize {
    m.body.len()
        + m.tag.len()
        + m.keys.iter().map(String::len).sum::<usize>()
        + m.properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Encodes one record into `buf`. Queue offset, physical offset, store time and the record
/// CRC are left zero: the writer fills them in with [`seal`] when it assigns a position.
/// Sys-flag bits the store reserves are refused.
pub fn encode(
    buf: &mut Vec<u8>,
    topic: &str,
    queue_id: u32,
    m: &AppendMessage,
    store_host: &str,
) -> Result<(), StoreError> {
    if m.sys_flag & SYS_FLAGS_RESERVED != 0 {
        return Err(StoreError::Invalid(format!(
            "sys flag {:#x} uses bits reserved by the store ({SYS_FLAGS_RESERVED:#x})",
            m.sys_flag
        )));
    }
    encode_any(buf, topic, queue_id, m, store_host)
}

/// [`encode`] without the reserved-bit check (the store's own records).
pub fn encode_any(
    buf: &mut Vec<u8>,
    topic: &str,
    queue_id: u32,
    m: &AppendMessage,
    store_host: &str,
) -> Result<(), StoreError> {
    let start = buf.len();
    buf.resize(start + HEADER_LEN, 0);
    {
        let h = &mut buf[start..start + HEADER_LEN];
        h[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC_V2.to_le_bytes());
        h[OFF_BODY_CRC..OFF_BODY_CRC + 4].copy_from_slice(&crc32c::crc32c(&m.body).to_le_bytes());
        h[16..20].copy_from_slice(&queue_id.to_le_bytes());
        h[20..24].copy_from_slice(&m.flag.to_le_bytes());
        h[24..28].copy_from_slice(&m.sys_flag.to_le_bytes());
        h[28..32].copy_from_slice(&m.reconsume_times.to_le_bytes());
        h[48..56].copy_from_slice(&m.born_timestamp_ms.to_le_bytes());
        h[64..72].copy_from_slice(&m.prepared_transaction_offset.to_le_bytes());
    }
    put_str16(buf, topic, "topic")?;
    put_str16(buf, &m.born_host, "born host")?;
    put_str16(buf, store_host, "store host")?;
    put_str16(buf, &m.message_id, "message id")?;
    put_str16(buf, &m.tag, "tag")?;
    let nkeys = u16::try_from(m.keys.len())
        .map_err(|_| StoreError::Invalid(format!("{} keys; the limit is 65535", m.keys.len())))?;
    put_u16(buf, nkeys);
    for k in &m.keys {
        put_str16(buf, k, "key")?;
    }
    let nprops = u16::try_from(m.properties.len()).map_err(|_| {
        StoreError::Invalid(format!(
            "{} properties; the limit is 65535",
            m.properties.len()
        ))
    })?;
    put_u16(buf, nprops);
    for (k, v) in &m.properties {
        put_str16(buf, k, "property name")?;
        let vlen = u32::try_from(v.len())
            .map_err(|_| StoreError::Invalid("property value too long".into()))?;
        put_u32(buf, vlen);
        buf.extend_from_slice(v.as_bytes());
    }
    let blen =
        u32::try_from(m.body.len()).map_err(|_| StoreError::Invalid("body too long".into()))?;
    put_u32(buf, blen);
    buf.extend_from_slice(&m.body);
    let total = u32::try_from(buf.len() - start)
        .map_err(|_| StoreError::Invalid("record too long".into()))?;
    buf[start..start + 4].copy_from_slice(&total.to_le_bytes());
    Ok(())
}

/// Fills in the position fields of an encoded record and computes its CRC.
pub fn seal(rec: &mut [u8], queue_offset: u64, physical_offset: u64, store_ts_ms: i64) {
    rec[OFF_QUEUE_OFFSET..OFF_QUEUE_OFFSET + 8].copy_from_slice(&queue_offset.to_le_bytes());
    rec[OFF_PHYSICAL..OFF_PHYSICAL + 8].copy_from_slice(&physical_offset.to_le_bytes());
    rec[OFF_STORE_TS..OFF_STORE_TS + 8].copy_from_slice(&store_ts_ms.to_le_bytes());
    // term and entry_index stay 0 in standalone mode.
    let crc = record_crc(rec);
    rec[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Raft mode: fills in queue offset, physical offset, term and entry index (store time is the
/// proposer's), marks the entry's last record and recomputes the CRC.
pub fn fill(
    rec: &mut [u8],
    queue_offset: u64,
    physical_offset: u64,
    term: u64,
    index: u64,
    last: bool,
) {
    rec[OFF_QUEUE_OFFSET..OFF_QUEUE_OFFSET + 8].copy_from_slice(&queue_offset.to_le_bytes());
    rec[OFF_PHYSICAL..OFF_PHYSICAL + 8].copy_from_slice(&physical_offset.to_le_bytes());
    rec[OFF_TERM..OFF_TERM + 8].copy_from_slice(&term.to_le_bytes());
    rec[OFF_ENTRY_INDEX..OFF_ENTRY_INDEX + 8].copy_from_slice(&index.to_le_bytes());
    let mut sys = u32_at(rec, OFF_SYS_FLAG) & !SYS_FLAG_ENTRY_END;
    if last {
        sys |= SYS_FLAG_ENTRY_END;
    }
    rec[OFF_SYS_FLAG..OFF_SYS_FLAG + 4].copy_from_slice(&sys.to_le_bytes());
    set_crc(rec);
}

/// True when `rec` already holds exactly what [`fill`] with these values would write (its CRC
/// aside): a record a peer filled in agrees with this log.
pub fn holds_fill(
    rec: &[u8],
    queue_offset: u64,
    physical_offset: u64,
    term: u64,
    index: u64,
    last: bool,
) -> bool {
    u64_at(rec, OFF_QUEUE_OFFSET) == queue_offset
        && u64_at(rec, OFF_PHYSICAL) == physical_offset
        && u64_at(rec, OFF_TERM) == term
        && u64_at(rec, OFF_ENTRY_INDEX) == index
        && (u32_at(rec, OFF_SYS_FLAG) & SYS_FLAG_ENTRY_END != 0) == last
}

/// Sets the store time and computes the CRC of an encoded record (a proposal's form).
pub fn seal_proposal(rec: &mut [u8], store_ts_ms: i64) {
    rec[OFF_STORE_TS..OFF_STORE_TS + 8].copy_from_slice(&store_ts_ms.to_le_bytes());
    set_crc(rec);
}

fn set_crc(rec: &mut [u8]) {
    let crc = record_crc(rec);
    rec[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// True when a record carries any of the fields the raft writer fills (it was read back from
/// a replica's log rather than freshly proposed).
pub fn is_filled(rec: &[u8]) -> bool {
    u64_at(rec, OFF_QUEUE_OFFSET) != 0
        || u64_at(rec, OFF_PHYSICAL) != 0
        || u64_at(rec, OFF_TERM) != 0
        || u64_at(rec, OFF_ENTRY_INDEX) != 0
        || u32_at(rec, OFF_SYS_FLAG) & SYS_FLAG_ENTRY_END != 0
}

/// Builds the owned record of a parsed view; `body` becomes a slice of `owner` (which must be
/// the buffer `view.raw` lives in, starting at `raw_at`).
pub fn to_stored(view: &RecordView<'_>, owner: &Bytes, raw_at: usize) -> StoredRecord {
    StoredRecord {
        topic: view.topic.to_owned(),
        queue_id: view.queue_id(),
        queue_offset: view.queue_offset(),
        commit_log_offset: view.physical_offset(),
        store_size: view.total_size(),
        body_crc: view.body_crc(),
        message_id: view.message_id.to_owned(),
        body: owner.slice(raw_at + view.body.start..raw_at + view.body.end),
        tag: view.tag.to_owned(),
        keys: view.keys().map(str::to_owned).collect(),
        properties: view.properties().collect(),
        flag: view.flag(),
        // The entry-end mark is the store's bookkeeping, not part of the message.
        sys_flag: view.sys_flag() & !SYS_FLAG_ENTRY_END,
        born_timestamp_ms: view.born_timestamp(),
        born_host: view.born_host.to_owned(),
        store_timestamp_ms: view.store_timestamp(),
        store_host: view.store_host.to_owned(),
        reconsume_times: view.reconsume_times(),
        prepared_transaction_offset: view.prepared_transaction_offset(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> AppendMessage {
        AppendMessage {
            message_id: "id-1".into(),
            body: Bytes::from_static(b"hello"),
            tag: "t".into(),
            keys: vec!["k1".into(), "k2".into()],
            properties: vec![("a".into(), "1".into()), ("b".into(), "".into())],
            flag: 7,
            sys_flag: 3,
            born_timestamp_ms: 42,
            born_host: "10.0.0.1:5".into(),
            reconsume_times: 2,
            prepared_transaction_offset: 99,
        }
    }

    #[test]
    fn round_trip_and_every_byte_is_covered() {
        let mut buf = Vec::new();
        encode(&mut buf, "topic", 3, &msg(), "host:1").unwrap();
        seal(&mut buf, 5, 1000, 1234);
        assert_eq!(probe(&buf), Probe::Record(buf.len() as u32));
        let bytes = Bytes::from(buf.clone());
        let view = parse(&bytes).unwrap();
        let r = to_stored(&view, &bytes, 0);
        assert_eq!(r.topic, "topic");
        assert_eq!(r.queue_id, 3);
        assert_eq!(r.queue_offset, 5);
        assert_eq!(r.commit_log_offset, 1000);
        assert_eq!(r.store_timestamp_ms, 1234);
        assert_eq!(r.body, Bytes::from_static(b"hello"));
        assert_eq!(r.keys, vec!["k1", "k2"]);
        assert_eq!(r.properties, msg().properties);
        assert_eq!((r.flag, r.sys_flag, r.reconsume_times), (7, 3, 2));
        assert_eq!(r.prepared_transaction_offset, 99);
        assert_eq!(r.born_host, "10.0.0.1:5");
        assert_eq!(r.store_host, "host:1");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_ne!(
                probe(&bad),
                Probe::Record(buf.len() as u32),
                "flip at {i} undetected"
            );
        }
        assert_eq!(probe(&buf[..buf.len() - 1]), Probe::Incomplete);
    }

    #[test]
    fn a_raw_record_reads_as_the_stored_message_and_damage_is_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, "topic", 3, &msg(), "host:1").unwrap();
        fill(&mut buf, 5, 1000, 9, 17, true);
        let bytes = Bytes::from(buf.clone());
        let m = message_of(&bytes).unwrap();
        let r = to_stored(&parse(&bytes).unwrap(), &bytes, 0);
        assert_eq!(
            (
                m.topic.as_str(),
                m.queue_id,
                m.queue_offset,
                m.commit_log_offset
            ),
            (
                r.topic.as_str(),
                r.queue_id,
                r.queue_offset,
                r.commit_log_offset
            )
        );
        assert_eq!(
            (&m.message_id, &m.body, &m.tag, &m.keys),
            (&r.message_id, &r.body, &r.tag, &r.keys)
        );
        let props: std::collections::HashMap<_, _> = r.properties.iter().cloned().collect();
        assert_eq!(m.properties, props);
        assert_eq!(
            (m.flag, m.reconsume_times, m.prepared_transaction_offset),
            (7, 2, 99)
        );
        // The store's entry-end mark is not the sender's.
        assert_eq!((m.sys_flag, r.sys_flag), (3, 3));
        assert_eq!(
            (m.born_timestamp_ms, m.born_host.as_str()),
            (42, "10.0.0.1:5")
        );
        assert_eq!(
            (m.store_host.as_str(), m.store_size),
            ("host:1", buf.len() as u32)
        );
        assert_eq!(m.body_crc, crc32c::crc32c(b"hello"));
        // The body is a slice of the record, not a copy.
        assert_eq!(m.body.as_ptr(), bytes[buf.len() - 5..].as_ptr());

        for i in [0, OFF_CRC, OFF_QUEUE_ID, HEADER_LEN + 3, buf.len() - 1] {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(
                message_of(&Bytes::from(bad)).is_err(),
                "flip at {i} accepted"
            );
        }
        assert_eq!(
            message_of(&bytes.slice(..buf.len() - 1)).unwrap_err(),
            "incomplete record"
        );
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(
            message_of(&Bytes::from(longer)).unwrap_err(),
            "bytes after the record"
        );
        assert!(message_of(&Bytes::copy_from_slice(&filler(100))).is_err());
    }

    #[test]
    fn dispatch_view_agrees_with_parse_and_checks_structure_not_text() {
        let mut buf = Vec::new();
        encode(&mut buf, "topic", 3, &msg(), "host:1").unwrap();
        seal(&mut buf, 5, 1000, 1234);
        let full = parse(&buf).unwrap();
        let d = parse_for_dispatch(&buf).unwrap();
        assert_eq!(d.topic, full.topic);
        assert_eq!(d.message_id, full.message_id.as_bytes());
        assert_eq!(d.tag, full.tag.as_bytes());
        let keys: Vec<&[u8]> = d.keys().collect();
        let full_keys: Vec<&[u8]> = full.keys().map(str::as_bytes).collect();
        assert_eq!(keys, full_keys);
        assert_eq!(
            (d.queue_id(), d.queue_offset(), d.physical_offset()),
            (3, 5, 1000)
        );
        assert_eq!(
            (d.store_timestamp(), d.total_size()),
            (1234, buf.len() as u32)
        );
        assert_eq!(d.is_system(), full.is_system());

        // A message id that is not UTF-8: parse refuses it, the dispatcher's view does not
        // look (the text was checked when the record was written).
        let id_at = HEADER_LEN + 2 + 5 + 2 + "10.0.0.1:5".len() + 2 + "host:1".len() + 2;
        assert_eq!(&buf[id_at..id_at + 4], b"id-1");
        let mut not_text = buf.clone();
        not_text[id_at] = 0xff;
        assert_eq!(parse(&not_text).unwrap_err(), "invalid UTF-8");
        assert_eq!(parse_for_dispatch(&not_text).unwrap().message_id[0], 0xff);
        // Structure is still checked.
        assert!(parse_for_dispatch(&buf[..buf.len() - 1]).is_err());
        let mut trailing = buf.clone();
        trailing.push(0);
        assert_eq!(
            parse_for_dispatch(&trailing).unwrap_err(),
            "trailing bytes after the body"
        );
        let mut long_topic = buf.clone();
        long_topic[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(parse_for_dispatch(&long_topic).is_err());
    }

    #[test]
    fn probe_written_skips_only_the_crc() {
        let mut buf = Vec::new();
        encode(&mut buf, "topic", 3, &msg(), "host:1").unwrap();
        seal(&mut buf, 5, 1000, 1234);
        let body_byte = buf.len() - 1;
        buf[body_byte] ^= 1;
        assert_eq!(probe(&buf), Probe::Corrupt("body CRC mismatch"));
        assert_eq!(probe_written(&buf), Probe::Record(buf.len() as u32));
        // Structure is still checked.
        assert_eq!(probe_written(&buf[..buf.len() - 1]), Probe::Incomplete);
        let mut bad_magic = buf.clone();
        bad_magic[OFF_MAGIC] ^= 1;
        assert_eq!(probe_written(&bad_magic), Probe::Corrupt("bad magic"));
        assert_eq!(probe_written(&filler(100)), Probe::Filler);
    }

    #[test]
    fn v2_record_crc_leaves_the_body_to_the_body_crc() {
        let mut buf = Vec::new();
        encode(&mut buf, "topic", 3, &msg(), "host:1").unwrap();
        seal(&mut buf, 5, 1000, 1234);
        assert_eq!(u32_at(&buf, OFF_MAGIC), MAGIC_V2);
        let body_at = buf.len() - 5;
        // The record CRC stops where the body starts...
        let head = crc32c::crc32c_append(crc32c::crc32c(&buf[..OFF_CRC]), &buf[12..body_at]);
        assert_eq!(u32_at(&buf, OFF_CRC), head);
        // ...so a damaged body is the body CRC's to catch, and the body CRC field is covered.
        let mut body = buf.clone();
        body[body_at] ^= 1;
        assert_eq!(probe(&body), Probe::Corrupt("body CRC mismatch"));
        let mut field = buf.clone();
        field[OFF_BODY_CRC] ^= 1;
        assert_eq!(probe(&field), Probe::Corrupt("record CRC mismatch"));
        let mut pos = buf.clone();
        pos[OFF_QUEUE_OFFSET] ^= 1;
        assert_eq!(probe(&pos), Probe::Corrupt("record CRC mismatch"));
        // Filling positions in again re-seals it without the body.
        fill(&mut buf, 6, 2000, 4, 11, true);
        assert_eq!(probe(&buf), Probe::Record(buf.len() as u32));
        assert_eq!(parse(&buf).unwrap().queue_offset(), 6);
    }

    #[test]
    fn v1_records_are_still_read_and_filled() {
        // A v1 record (an older build's log, or an entry an older leader proposed).
        let mut v1 = Vec::new();
        encode(&mut v1, "topic", 3, &msg(), "host:1").unwrap();
        v1[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC_V1.to_le_bytes());
        seal(&mut v1, 5, 1000, 1234);
        let whole = crc32c::crc32c_append(crc32c::crc32c(&v1[..OFF_CRC]), &v1[12..]);
        assert_eq!(u32_at(&v1, OFF_CRC), whole);
        assert_eq!(probe(&v1), Probe::Record(v1.len() as u32));
        let mut bad = v1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(probe(&bad), Probe::Corrupt("record CRC mismatch"));
        fill(&mut v1, 6, 2000, 4, 11, false);
        assert_eq!(probe(&v1), Probe::Record(v1.len() as u32));
        let bytes = Bytes::from(v1);
        assert_eq!(
            message_of(&bytes).unwrap().body,
            Bytes::from_static(b"hello")
        );
    }

    #[test]
    fn filler_probe() {
        let f = filler(100);
        assert_eq!(probe(&f), Probe::Filler);
        assert_eq!(probe(&[0u8; 64]), Probe::Corrupt("bad magic"));
    }
}
