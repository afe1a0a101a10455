//! On-disk record format of the commit log.
//!
//! Every record is self-describing: a fixed 88-byte header followed by length-prefixed
//! variable fields. All integers are little-endian. The record CRC (CRC32C) covers the whole
//! record except the CRC field itself, so any torn or flipped byte is detected.
//!
//! ```text
//!  0 u32 total_size        4 u32 magic            8 u32 record_crc     12 u32 body_crc
//! 16 u32 queue_id         20 u32 flag            24 u32 sys_flag      28 u32 reconsume_times
//! 32 u64 queue_offset     40 u64 physical_offset 48 i64 born_ts_ms    56 i64 store_ts_ms
//! 64 u64 prepared_tx_off  72 u64 term            80 u64 entry_index
//! 88 topic(u16) born_host(u16) store_host(u16) message_id(u16) tag(u16)
//!    keys: u16 count, each u16 len + bytes
//!    properties: u16 count, each u16 key len + key, u32 value len + value
//!    body: u32 len + bytes
//! ```
//!
//! A segment that cannot hold the next record ends with a 12-byte filler: total_size = bytes
//! left in the segment, magic = [`FILLER_MAGIC`], CRC over the first 8 bytes.

use bytes::Bytes;

use super::{AppendMessage, StoreError, StoredRecord};

pub const MAGIC_V1: u32 = 0x534C_5501;
pub const FILLER_MAGIC: u32 = 0x534C_55FF;
pub const HEADER_LEN: usize = 88;
pub const FILLER_LEN: usize = 12;

pub const OFF_TOTAL: usize = 0;
pub const OFF_MAGIC: usize = 4;
pub const OFF_CRC: usize = 8;
pub const OFF_BODY_CRC: usize = 12;
pub const OFF_QUEUE_ID: usize = 16;
pub const OFF_QUEUE_OFFSET: usize = 32;
pub const OFF_PHYSICAL: usize = 40;
pub const OFF_STORE_TS: usize = 56;
pub const OFF_TERM: usize = 72;
pub const OFF_ENTRY_INDEX: usize = 80;
pub const OFF_FLAG: usize = 20;
pub const OFF_SYS_FLAG: usize = 24;

/// Sys-flag bits the store reserves (producers may not set them). A META record carries a
/// replicated metadata operation (topic [`META_TOPIC`], body = the encoded op).
pub const SYS_FLAG_META: u32 = 1 << 30;
/// Raft mode: the record stands for an entry without data (a new leader's no-op); its `flag`
/// holds the entry type.
pub const SYS_FLAG_NOOP: u32 = 1 << 29;
/// Raft mode: the record wraps entry data that is not a run of records (a membership
/// change); body = the data, `flag` = the entry type.
pub const SYS_FLAG_RAW: u32 = 1 << 28;
/// Raft mode: set by the writer on the last record of every entry, so recovery can tell a
/// complete entry from a torn one. Never shown to readers.
pub const SYS_FLAG_ENTRY_END: u32 = 1 << 27;
/// Records with one of these bits are not messages: the dispatcher skips them.
pub const SYS_FLAGS_SYSTEM: u32 = SYS_FLAG_META | SYS_FLAG_NOOP | SYS_FLAG_RAW;
/// Every reserved bit.
pub const SYS_FLAGS_RESERVED: u32 = SYS_FLAGS_SYSTEM | SYS_FLAG_ENTRY_END;
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
        h[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC_V1.to_le_bytes());
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

fn record_crc(rec: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&rec[..OFF_CRC]), &rec[OFF_CRC + 4..])
}

/// A filler that marks the rest of a segment (`len` bytes, at least [`FILLER_LEN`]) as unused.
pub fn filler(len: u32) -> [u8; FILLER_LEN] {
    let mut f = [0u8; FILLER_LEN];
    f[0..4].copy_from_slice(&len.to_le_bytes());
    f[4..8].copy_from_slice(&FILLER_MAGIC.to_le_bytes());
    let crc = crc32c::crc32c(&f[..8]);
    f[8..12].copy_from_slice(&crc.to_le_bytes());
    f
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

/// What the bytes at a position hold, judged from the first 12 bytes and the CRC.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// A complete, CRC-valid record of this many bytes.
    Record(u32),
    /// A valid segment filler: skip to the next segment.
    Filler,
    /// Fewer bytes than the header says: a torn tail (or the end of the data).
    Incomplete,
    /// Bad magic, bad size or bad CRC.
    Corrupt(&'static str),
}

/// Validates the record starting at `buf[0]` (`buf` may hold more data after it).
pub fn probe(buf: &[u8]) -> Probe {
    probe_with(buf, true)
}

/// [`probe`] without the record CRC (magic, size and filler still checked), for bytes this
/// process validated already: the commit log behind the writer holds only records that passed
/// their CRC on the way in (a proposal's encoder, a follower's entry check, recovery), and
/// reading them back to dispatch them or to answer a send would otherwise checksum every
/// message once more.
pub fn probe_written(buf: &[u8]) -> Probe {
    probe_with(buf, false)
}

fn probe_with(buf: &[u8], check_crc: bool) -> Probe {
    if buf.len() < FILLER_LEN {
        return Probe::Incomplete;
    }
    let total = u32_at(buf, OFF_TOTAL);
    let magic = u32_at(buf, OFF_MAGIC);
    if magic == FILLER_MAGIC {
        let crc = crc32c::crc32c(&buf[..8]);
        return if crc == u32_at(buf, OFF_CRC) && total as usize >= FILLER_LEN {
            Probe::Filler
        } else {
            Probe::Corrupt("bad filler")
        };
    }
    if magic != MAGIC_V1 {
        return Probe::Corrupt("bad magic");
    }
    let min = HEADER_LEN + 5 * 2 + 2 + 2 + 4;
    if (total as usize) < min {
        return Probe::Corrupt("bad size");
    }
    if buf.len() < total as usize {
        return Probe::Incomplete;
    }
    let rec = &buf[..total as usize];
    if check_crc && record_crc(rec) != u32_at(rec, OFF_CRC) {
        return Probe::Corrupt("record CRC mismatch");
    }
    Probe::Record(total)
}

/// Borrowed view of a CRC-checked record (see [`parse`]).
#[derive(Debug)]
pub struct RecordView<'a> {
    pub raw: &'a [u8],
    pub topic: &'a str,
    pub born_host: &'a str,
    pub store_host: &'a str,
    pub message_id: &'a str,
    pub tag: &'a str,
    keys: &'a [u8],
    nkeys: u16,
    props: &'a [u8],
    nprops: u16,
    /// Range of the body within `raw`.
    pub body: std::ops::Range<usize>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        if end > self.b.len() {
            return Err("field runs past the record");
        }
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16_at(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn bytes16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn str16(&mut self) -> Result<&'a str, &'static str> {
        text(self.bytes16()?)
    }
}

/// The fixed header's fields, for any view of one whole record.
pub trait Fixed<'a> {
    /// The record's bytes, exactly `total_size` of them.
    fn raw(&self) -> &'a [u8];
    fn total_size(&self) -> u32 {
        self.raw().len() as u32
    }
    fn queue_id(&self) -> u32 {
        u32_at(self.raw(), OFF_QUEUE_ID)
    }
    fn queue_offset(&self) -> u64 {
        u64_at(self.raw(), OFF_QUEUE_OFFSET)
    }
    fn physical_offset(&self) -> u64 {
        u64_at(self.raw(), OFF_PHYSICAL)
    }
    fn store_timestamp(&self) -> i64 {
        i64_at(self.raw(), OFF_STORE_TS)
    }
    fn flag(&self) -> u32 {
        u32_at(self.raw(), OFF_FLAG)
    }
    fn sys_flag(&self) -> u32 {
        u32_at(self.raw(), OFF_SYS_FLAG)
    }
    /// Not a message: a META, NOOP or RAW record (never dispatched).
    fn is_system(&self) -> bool {
        self.sys_flag() & SYS_FLAGS_SYSTEM != 0
    }
    fn term(&self) -> u64 {
        u64_at(self.raw(), OFF_TERM)
    }
    fn entry_index(&self) -> u64 {
        u64_at(self.raw(), OFF_ENTRY_INDEX)
    }
    fn ends_entry(&self) -> bool {
        self.sys_flag() & SYS_FLAG_ENTRY_END != 0
    }
}

impl<'a> Fixed<'a> for RecordView<'a> {
    fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl<'a> Fixed<'a> for DispatchView<'a> {
    fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl<'a> RecordView<'a> {
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut c = Cursor {
            b: self.keys,
            at: 0,
        };
        // Structure was validated by `parse`, so the iteration cannot fail.
        (0..self.nkeys).filter_map(move |_| c.str16().ok())
    }

    fn properties(&self) -> Vec<(String, String)> {
        let mut c = Cursor {
            b: self.props,
            at: 0,
        };
        let mut out = Vec::with_capacity(self.nprops as usize);
        for _ in 0..self.nprops {
            let (Ok(k), Ok(n)) = (c.str16(), c.u32()) else {
                break;
            };
            let Ok(v) = c.take(n as usize) else { break };
            out.push((k.to_owned(), String::from_utf8_lossy(v).into_owned()));
        }
        out
    }

    /// Builds the owned record; `body` becomes a slice of `owner` (which must be the buffer
    /// `raw` lives in, starting at `raw_at`).
    pub fn to_stored(&self, owner: &Bytes, raw_at: usize) -> StoredRecord {
        StoredRecord {
            topic: self.topic.to_owned(),
            queue_id: self.queue_id(),
            queue_offset: self.queue_offset(),
            commit_log_offset: self.physical_offset(),
            store_size: self.total_size(),
            body_crc: u32_at(self.raw, OFF_BODY_CRC),
            message_id: self.message_id.to_owned(),
            body: owner.slice(raw_at + self.body.start..raw_at + self.body.end),
            tag: self.tag.to_owned(),
            keys: self.keys().map(str::to_owned).collect(),
            properties: self.properties(),
            flag: self.flag(),
            // The entry-end mark is the store's bookkeeping, not part of the message.
            sys_flag: self.sys_flag() & !SYS_FLAG_ENTRY_END,
            born_timestamp_ms: i64_at(self.raw, 48),
            born_host: self.born_host.to_owned(),
            store_timestamp_ms: self.store_timestamp(),
            store_host: self.store_host.to_owned(),
            reconsume_times: u32_at(self.raw, 28),
            prepared_transaction_offset: u64_at(self.raw, 64),
        }
    }
}

/// The topic of a record, without parsing (and checking) the rest: for bytes a full [`parse`]
/// accepted already.
pub fn topic(raw: &[u8]) -> Result<&str, &'static str> {
    if raw.len() < HEADER_LEN {
        return Err("record shorter than its header");
    }
    Cursor {
        b: raw,
        at: HEADER_LEN,
    }
    .str16()
}

/// Every variable field of a record as bytes: the structure is checked (lengths, nothing
/// past the end, nothing after the body), the text is not.
struct Layout<'a> {
    topic: &'a [u8],
    born_host: &'a [u8],
    store_host: &'a [u8],
    message_id: &'a [u8],
    tag: &'a [u8],
    keys: &'a [u8],
    nkeys: u16,
    props: &'a [u8],
    nprops: u16,
    body: std::ops::Range<usize>,
}

fn layout(raw: &[u8]) -> Result<Layout<'_>, &'static str> {
    if raw.len() < HEADER_LEN {
        return Err("record shorter than its header");
    }
    let mut c = Cursor {
        b: raw,
        at: HEADER_LEN,
    };
    let topic = c.bytes16()?;
    let born_host = c.bytes16()?;
    let store_host = c.bytes16()?;
    let message_id = c.bytes16()?;
    let tag = c.bytes16()?;
    let nkeys = c.u16()?;
    let kstart = c.at;
    for _ in 0..nkeys {
        c.bytes16()?;
    }
    let keys = &raw[kstart..c.at];
    let nprops = c.u16()?;
    let pstart = c.at;
    for _ in 0..nprops {
        c.bytes16()?;
        let n = c.u32()? as usize;
        c.take(n)?;
    }
    let props = &raw[pstart..c.at];
    let blen = c.u32()? as usize;
    let bstart = c.at;
    c.take(blen)?;
    if c.at != raw.len() {
        return Err("trailing bytes after the body");
    }
    Ok(Layout {
        topic,
        born_host,
        store_host,
        message_id,
        tag,
        keys,
        nkeys,
        props,
        nprops,
        body: bstart..c.at,
    })
}

fn text(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "invalid UTF-8")
}

/// Parses a record whose bytes (exactly `total_size` of them) passed [`probe`], text checked.
/// The body CRC is not checked again: the record CRC already covers the body.
pub fn parse(raw: &[u8]) -> Result<RecordView<'_>, &'static str> {
    let l = layout(raw)?;
    // Keys and property names are text too.
    let mut c = Cursor { b: l.keys, at: 0 };
    for _ in 0..l.nkeys {
        c.str16()?;
    }
    let mut c = Cursor { b: l.props, at: 0 };
    for _ in 0..l.nprops {
        c.str16()?;
        let n = c.u32()? as usize;
        c.take(n)?;
    }
    Ok(RecordView {
        raw,
        topic: text(l.topic)?,
        born_host: text(l.born_host)?,
        store_host: text(l.store_host)?,
        message_id: text(l.message_id)?,
        tag: text(l.tag)?,
        keys: l.keys,
        nkeys: l.nkeys,
        props: l.props,
        nprops: l.nprops,
        body: l.body,
    })
}

/// What the dispatcher needs of a record: queue position and the bytes it indexes.
#[derive(Debug)]
pub struct DispatchView<'a> {
    raw: &'a [u8],
    pub topic: &'a str,
    pub message_id: &'a [u8],
    pub tag: &'a [u8],
    keys: &'a [u8],
    nkeys: u16,
}

/// [`parse`] for the dispatcher, which reads back records this process wrote (they passed a
/// full parse on the way in, see [`probe_written`]): only the topic, a map key, is checked as
/// text. Checking every string of every message again was 2 % of a replica's CPU.
pub fn parse_for_dispatch(raw: &[u8]) -> Result<DispatchView<'_>, &'static str> {
    let l = layout(raw)?;
    Ok(DispatchView {
        raw,
        topic: text(l.topic)?,
        message_id: l.message_id,
        tag: l.tag,
        keys: l.keys,
        nkeys: l.nkeys,
    })
}

impl<'a> DispatchView<'a> {
    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut c = Cursor {
            b: self.keys,
            at: 0,
        };
        // Structure was checked by `layout`, so the iteration cannot fail.
        (0..self.nkeys).filter_map(move |_| c.bytes16().ok())
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
        let r = view.to_stored(&bytes, 0);
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
        assert_eq!(probe(&buf), Probe::Corrupt("record CRC mismatch"));
        assert_eq!(probe_written(&buf), Probe::Record(buf.len() as u32));
        // Structure is still checked.
        assert_eq!(probe_written(&buf[..buf.len() - 1]), Probe::Incomplete);
        let mut bad_magic = buf.clone();
        bad_magic[OFF_MAGIC] ^= 1;
        assert_eq!(probe_written(&bad_magic), Probe::Corrupt("bad magic"));
        assert_eq!(probe_written(&filler(100)), Probe::Filler);
    }

    #[test]
    fn filler_probe() {
        let f = filler(100);
        assert_eq!(probe(&f), Probe::Filler);
        assert_eq!(probe(&[0u8; 64]), Probe::Corrupt("bad magic"));
    }
}
