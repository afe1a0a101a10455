//! The raft control file (hard state, membership, compaction point) and the snapshot data
//! format.
//!
//! The control file is replaced atomically: written to a temp file, fsynced, renamed over the
//! old one, directory fsynced. A control file that fails its checks is an error, never
//! ignored: forgetting a vote or the membership would break Raft's safety.
//!
//! Layout (little-endian): magic u32, version u32, segment_size u64, installing u8,
//! compaction point (index u64, term u64, phy u64), hard state (term, vote, commit: u64),
//! conf state (u32 len + protobuf bytes), queue table (u32 count, then per queue: topic u16
//! len + bytes, queue id u32, next offset u64), CRC32C of everything before it (u32).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};

use crate::store::commitlog::sync_dir;
use crate::store::record::{u16_at, u32_at, u64_at};
use crate::store::StoreError;

const MAGIC: u32 = 0x534C_5243;
const VERSION: u32 = 1;
pub const FILE: &str = "control";
const TMP: &str = "control.tmp";

/// Per-(topic, queue) next queue offsets at a point of the log, sorted.
pub type QueueTable = Vec<(String, u32, u64)>;

/// Where the raft log starts: entries up to `index` are discarded (`index` has `term`); the
/// commit log's bytes for entry `index + 1` start at `phy`, where queue offsets are `table`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionPoint {
    pub index: u64,
    pub term: u64,
    pub phy: u64,
    pub table: QueueTable,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Control {
    /// All replicas must lay segments out alike; a store keeps the size it was created with.
    pub segment_size: u64,
    /// A snapshot install was under way: recovery finishes it.
    pub installing: bool,
    pub cp: CompactionPoint,
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        offset: 0,
        reason: format!("raft control file: {}", reason.into()),
    }
}

fn encode(c: &Control) -> Result<Vec<u8>, StoreError> {
    let cs = c
        .conf_state
        .write_to_bytes()
        .map_err(|e| StoreError::Invalid(format!("conf state does not encode: {e}")))?;
    let mut b = Vec::with_capacity(128 + cs.len() + c.cp.table.len() * 32);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&c.segment_size.to_le_bytes());
    b.push(u8::from(c.installing));
    for v in [c.cp.index, c.cp.term, c.cp.phy] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let hs = &c.hard_state;
    for v in [hs.term, hs.vote, hs.commit] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(cs.len() as u32).to_le_bytes());
    b.extend_from_slice(&cs);
    put_table(&mut b, &c.cp.table)?;
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    Ok(b)
}

fn put_table(b: &mut Vec<u8>, table: &QueueTable) -> Result<(), StoreError> {
    let n =
        u32::try_from(table.len()).map_err(|_| StoreError::Invalid("too many queues".into()))?;
    b.extend_from_slice(&n.to_le_bytes());
    for (topic, qid, next) in table {
        let len = u16::try_from(topic.len())
            .map_err(|_| StoreError::Invalid(format!("topic name of {} bytes", topic.len())))?;
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&qid.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
    }
    Ok(())
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16_at(s, 0))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| u32_at(s, 0))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|s| u64_at(s, 0))
    }
    fn table(&mut self) -> Option<QueueTable> {
        let n = self.u32()? as usize;
        let mut t = Vec::with_capacity(n.min(self.b.len() / 14));
        for _ in 0..n {
            let len = usize::from(self.u16()?);
            let topic = std::str::from_utf8(self.take(len)?).ok()?.to_owned();
            t.push((topic, self.u32()?, self.u64()?));
        }
        Some(t)
    }
}

fn decode(b: &[u8]) -> Result<Control, StoreError> {
    if b.len() < 12 {
        return Err(corrupt("too short"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if u32_at(body, 0) != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if u32_at(body, 4) != VERSION {
        return Err(corrupt(format!("unknown version {}", u32_at(body, 4))));
    }
    if crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err(corrupt("CRC mismatch"));
    }
    let mut r = Reader { b: body, at: 8 };
    let parsed = (|| {
        let segment_size = r.u64()?;
        let installing = r.u8()? != 0;
        let (index, term, phy) = (r.u64()?, r.u64()?, r.u64()?);
        let hard_state = HardState {
            term: r.u64()?,
            vote: r.u64()?,
            commit: r.u64()?,
            ..Default::default()
        };
        let cs_len = r.u32()? as usize;
        let conf_state = ConfState::parse_from_bytes(r.take(cs_len)?).ok()?;
        let table = r.table()?;
        Some(Control {
            segment_size,
            installing,
            cp: CompactionPoint {
                index,
                term,
                phy,
                table,
            },
            hard_state,
            conf_state,
        })
    })();
    match parsed {
        Some(c) if r.at == body.len() => Ok(c),
        _ => Err(corrupt("fields do not parse")),
    }
}

/// Reads the control file; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Control>, StoreError> {
    match fs::read(dir.join(FILE)) {
        Ok(b) => decode(&b).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn exists(dir: &Path) -> bool {
    dir.join(FILE).exists()
}

/// Atomically replaces the control file.
pub fn store(dir: &Path, c: &Control) -> Result<(), StoreError> {
    let bytes = encode(c)?;
    let tmp = dir.join(TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)?;
    Ok(())
}

const SNAP_MAGIC: u32 = 0x534C_534E;

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn varint(r: &mut Reader<'_>) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = r.u8()?;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Snapshot data: where the follower's commit log restarts and the next queue offsets there.
/// Layout: magic u32, then varints: phy, queue count, per queue (topic length, topic bytes,
/// queue id, next offset); CRC32C u32.
pub fn encode_snapshot(phy: u64, table: &QueueTable) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + table.len() * 24);
    b.extend_from_slice(&SNAP_MAGIC.to_le_bytes());
    put_varint(&mut b, phy);
    put_varint(&mut b, table.len() as u64);
    for (topic, qid, next) in table {
        put_varint(&mut b, topic.len() as u64);
        b.extend_from_slice(topic.as_bytes());
        put_varint(&mut b, u64::from(*qid));
        put_varint(&mut b, *next);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes [`encode_snapshot`]'s output; topic names must be valid.
pub fn decode_snapshot(b: &[u8]) -> Result<(u64, QueueTable), String> {
    if b.len() < 8 {
        return Err("snapshot data too short".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if u32_at(body, 0) != SNAP_MAGIC || crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err("snapshot data fails its magic or CRC check".into());
    }
    let mut r = Reader { b: body, at: 4 };
    let bad = || "snapshot data does not parse".to_string();
    let phy = varint(&mut r).ok_or_else(bad)?;
    let n = varint(&mut r).ok_or_else(bad)?;
    let mut table = Vec::new();
    for _ in 0..n {
        let len = usize::try_from(varint(&mut r).ok_or_else(bad)?).map_err(|_| bad())?;
        let topic = std::str::from_utf8(r.take(len).ok_or_else(bad)?)
            .map_err(|_| bad())?
            .to_owned();
        sluice_proto::names::validate_topic_name(&topic)
            .map_err(|e| format!("snapshot data: {}", e.message))?;
        let qid = u32::try_from(varint(&mut r).ok_or_else(bad)?).map_err(|_| bad())?;
        let next = varint(&mut r).ok_or_else(bad)?;
        table.push((topic, qid, next));
    }
    if r.at != body.len() {
        return Err(bad());
    }
    table.sort();
    Ok((phy, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().is_none());
        let c = Control {
            segment_size: 65536,
            installing: true,
            cp: CompactionPoint {
                index: 7,
                term: 2,
                phy: 4096,
                table: vec![("a".into(), 0, 5), ("b".into(), 3, 9)],
            },
            hard_state: HardState {
                term: 3,
                vote: 2,
                commit: 7,
                ..Default::default()
            },
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                ..Default::default()
            },
        };
        store(d.path(), &c).unwrap();
        assert_eq!(load(d.path()).unwrap(), Some(c));
        let mut b = fs::read(d.path().join(FILE)).unwrap();
        b[20] ^= 1;
        fs::write(d.path().join(FILE), &b).unwrap();
        assert!(matches!(load(d.path()), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn snapshot_data_round_trip() {
        let t = vec![("a".into(), 0, 300), ("topic-b".into(), 7, u64::MAX)];
        let b = encode_snapshot(1 << 40, &t);
        assert_eq!(decode_snapshot(&b).unwrap(), (1 << 40, t));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(decode_snapshot(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(decode_snapshot(&b[..b.len() - 1]).is_err());
    }
}
