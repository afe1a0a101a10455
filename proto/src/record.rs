//! The record format: how the commit log stores a message, and how a pull that asks for
//! `raw_records` receives it (the broker sends records as stored; see docs/protocol.md).
//!
//! Every record is self-describing: a fixed 88-byte header followed by length-prefixed
//! variable fields. All integers are little-endian. Two CRC32Cs cover every byte, so any torn
//! or flipped byte is detected: in format v2 (magic [`MAGIC_V2`], what this build writes) the
//! body CRC covers the body and the record CRC everything else but itself (the body CRC field
//! included). Like Kafka's batch CRC leaving out the offsets the broker assigns, this lets the
//! store fill in positions and re-seal a record by checksumming its header and fields, not its
//! body again. Format v1 (magic [`MAGIC_V1`]; the record CRC covers the body too) is still read.
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

use crate::v1::StoredMessage;

/// Record format v1: the record CRC covers the whole record but its own field.
pub const MAGIC_V1: u32 = 0x534C_5501;
/// Record format v2: the record CRC covers the record but its own field and the body.
pub const MAGIC_V2: u32 = 0x534C_5502;
/// The newest record format this crate parses, and the one the broker writes: what a client
/// puts in `PullRequest.record_format` to receive raw records.
pub const RECORD_FORMAT: u32 = 2;
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
pub const OFF_RECONSUME_TIMES: usize = 28;
pub const OFF_BORN_TS: usize = 48;
pub const OFF_PREPARED_TX: usize = 64;

/// Sys-flag bits the store reserves (producers may not set them). A META record carries a
/// replicated metadata operation (topic `%SYS%META`, body = the encoded op).
pub const SYS_FLAG_META: u32 = 1 << 30;
/// Raft mode: the record stands for an entry without data (a new leader's no-op); its `flag`
/// holds the entry type.
pub const SYS_FLAG_NOOP: u32 = 1 << 29;
/// Raft mode: the record wraps entry data that is not a run of records (a membership
/// change); body = the data, `flag` = the entry type.
pub const SYS_FLAG_RAW: u32 = 1 << 28;
/// Raft mode: set by the writer on the last record of every entry, so recovery can tell a
/// complete entry from a torn one. Not part of the message: [`RecordView::to_message`]
/// clears it.
pub const SYS_FLAG_ENTRY_END: u32 = 1 << 27;
/// Records with one of these bits are not messages: the dispatcher skips them.
pub const SYS_FLAGS_SYSTEM: u32 = SYS_FLAG_META | SYS_FLAG_NOOP | SYS_FLAG_RAW;
/// A delayed message as scheduled: topic `%TIMER%` queue 0, due time and real topic and
/// queue in properties (`crate::props`). Indexed by the timer index, not delivered.
pub const SYS_FLAG_SCHEDULED: u32 = 1 << 26;
/// A delayed message delivered to its real queue; property `__TIMER_OF` names the scheduled
/// record's offset. The record itself marks the timer fired (one record decides).
pub const SYS_FLAG_TIMER_FIRED: u32 = 1 << 25;
/// A delayed message cancelled before it was due (topic `%TIMER%` queue 1, `__TIMER_OF`).
pub const SYS_FLAG_TIMER_CANCEL: u32 = 1 << 24;
/// Bits the timer index reads.
pub const SYS_FLAGS_TIMER: u32 = SYS_FLAG_SCHEDULED | SYS_FLAG_TIMER_FIRED | SYS_FLAG_TIMER_CANCEL;
/// Bits the store alone sets (the timer bits are the broker's: its messaging layer writes
/// them; producers cannot, their sys flag is always 0).
pub const SYS_FLAGS_RESERVED: u32 = SYS_FLAGS_SYSTEM | SYS_FLAG_ENTRY_END;

/// True for the magic of a record format this build reads.
pub fn is_record_magic(magic: u32) -> bool {
    magic == MAGIC_V1 || magic == MAGIC_V2
}

/// The record CRC of a whole record (at least [`FILLER_LEN`] bytes): CRC32C of bytes 0-7,
/// then 12 up to the body (v2) or to the end (v1). A v2 record whose fields do not parse is
/// checksummed to its end; [`probe`] refuses it for its structure anyway.
pub fn record_crc(rec: &[u8]) -> u32 {
    let end = if u32_at(rec, OFF_MAGIC) == MAGIC_V2 {
        layout(rec).map_or(rec.len(), |l| l.body.start)
    } else {
        rec.len()
    };
    crc_up_to(rec, end)
}

/// CRC32C of `rec[..end]` without the record CRC field.
fn crc_up_to(rec: &[u8], end: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&rec[..OFF_CRC]), &rec[OFF_CRC + 4..end])
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
    if !is_record_magic(magic) {
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
    if !check_crc {
        return Probe::Record(total);
    }
    let body = if magic == MAGIC_V1 {
        None
    } else {
        match layout(rec) {
            Ok(l) => Some(l.body),
            Err(why) => return Probe::Corrupt(why),
        }
    };
    let crc_end = body.as_ref().map_or(rec.len(), |b| b.start);
    if crc_up_to(rec, crc_end) != u32_at(rec, OFF_CRC) {
        return Probe::Corrupt("record CRC mismatch");
    }
    if let Some(body) = body {
        if crc32c::crc32c(&rec[body]) != u32_at(rec, OFF_BODY_CRC) {
            return Probe::Corrupt("body CRC mismatch");
        }
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
    fn body_crc(&self) -> u32 {
        u32_at(self.raw(), OFF_BODY_CRC)
    }
    fn reconsume_times(&self) -> u32 {
        u32_at(self.raw(), OFF_RECONSUME_TIMES)
    }
    fn born_timestamp(&self) -> i64 {
        i64_at(self.raw(), OFF_BORN_TS)
    }
    fn prepared_transaction_offset(&self) -> u64 {
        u64_at(self.raw(), OFF_PREPARED_TX)
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

    /// The properties, name and value; a value that is not UTF-8 is replaced lossily (names
    /// are checked by [`parse`]).
    pub fn properties(&self) -> impl Iterator<Item = (String, String)> + 'a {
        let mut c = Cursor {
            b: self.props,
            at: 0,
        };
        // Structure was validated by `parse`, so the iteration cannot fail.
        (0..self.nprops).map_while(move |_| {
            let (Ok(k), Ok(n)) = (c.str16(), c.u32()) else {
                return None;
            };
            let v = c.take(n as usize).ok()?;
            Some((k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        })
    }

    /// The message a consumer sees: owned text, `body` a slice of `owner` (the buffer `raw`
    /// lives in, starting at `raw_at`), the store's entry-end mark cleared from the sys flag.
    pub fn to_message(&self, owner: &Bytes, raw_at: usize) -> StoredMessage {
        StoredMessage {
            topic: self.topic.to_owned(),
            queue_id: self.queue_id(),
            queue_offset: self.queue_offset(),
            commit_log_offset: self.physical_offset(),
            message_id: self.message_id.to_owned(),
            body: owner.slice(raw_at + self.body.start..raw_at + self.body.end),
            tag: self.tag.to_owned(),
            keys: self.keys().map(str::to_owned).collect(),
            properties: self.properties().collect(),
            flag: self.flag(),
            born_timestamp_ms: self.born_timestamp(),
            born_host: self.born_host.to_owned(),
            store_timestamp_ms: self.store_timestamp(),
            store_host: self.store_host.to_owned(),
            reconsume_times: self.reconsume_times(),
            sys_flag: self.sys_flag() & !SYS_FLAG_ENTRY_END,
            prepared_transaction_offset: self.prepared_transaction_offset(),
            body_crc: self.body_crc(),
            store_size: self.total_size(),
            timer: None,
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
/// The CRCs are not checked again.
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
    props: &'a [u8],
    nprops: u16,
}

/// [`parse`] for the dispatcher, which reads back records this process wrote (they passed a
/// full parse on the way in, see [`probe_written`]): only the topic, a map key, is checked as
/// text. Checking every string of every message again was 2 % of a replica's CPU. A raw
/// pull uses it too: the consumer parses (and checks) the text of what it receives.
pub fn parse_for_dispatch(raw: &[u8]) -> Result<DispatchView<'_>, &'static str> {
    let l = layout(raw)?;
    Ok(DispatchView {
        raw,
        topic: text(l.topic)?,
        message_id: l.message_id,
        tag: l.tag,
        keys: l.keys,
        nkeys: l.nkeys,
        props: l.props,
        nprops: l.nprops,
    })
}

impl<'a> DispatchView<'a> {
    /// The raw value of property `name`, without allocating (the dispatcher reads the
    /// broker's own properties of timer records this way).
    pub fn property(&self, name: &str) -> Option<&'a [u8]> {
        let mut c = Cursor {
            b: self.props,
            at: 0,
        };
        for _ in 0..self.nprops {
            let k = c.bytes16().ok()?;
            let n = c.u32().ok()? as usize;
            let v = c.take(n).ok()?;
            if k == name.as_bytes() {
                return Some(v);
            }
        }
        None
    }

    /// A property's value as a decimal number.
    pub fn property_i64(&self, name: &str) -> Option<i64> {
        std::str::from_utf8(self.property(name)?).ok()?.parse().ok()
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut c = Cursor {
            b: self.keys,
            at: 0,
        };
        // Structure was checked by `layout`, so the iteration cannot fail.
        (0..self.nkeys).filter_map(move |_| c.bytes16().ok())
    }
}

/// The message in one record of a pull answer that asked for `raw_records`: the record must be
/// exactly one whole record with a valid CRC and well-formed text. The body is a slice of
/// `record` (no copy).
pub fn message_of(record: &Bytes) -> Result<StoredMessage, &'static str> {
    match probe(record) {
        Probe::Record(n) if n as usize == record.len() => {}
        Probe::Record(_) => return Err("bytes after the record"),
        Probe::Filler => return Err("a segment filler, not a record"),
        Probe::Incomplete => return Err("incomplete record"),
        Probe::Corrupt(why) => return Err(why),
    }
    Ok(parse(record)?.to_message(record, 0))
}
