//! The checkpoint: how far consume queues and the index are durable.
//!
//! Written to a temp file, fsynced, renamed over the old one and the directory fsynced, so a
//! crash at any point leaves either the old or the new checkpoint. A file that fails its CRC
//! is ignored (recovery then rebuilds everything from the start of the log).
//!
//! Layout (little-endian): magic u32, version u32, dispatched u64, written_at_ms i64,
//! queue count u32, then per queue: topic (u16 len + bytes), queue id u32, max offset u64;
//! CRC32C of everything before it (u32). The per-queue maxima let recovery notice a consume
//! queue that lost entries below the checkpoint (a torn or damaged file) and rebuild it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::commitlog::sync_dir;
use super::record::{i64_at, u16_at, u32_at, u64_at};

const MAGIC: u32 = 0x534C_4350;
const VERSION: u32 = 1;
pub const FILE: &str = "checkpoint";
const TMP: &str = "checkpoint.tmp";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Every record below this commit-log offset is in the consume queues and the index, and
    /// those files (and the commit log up to here) are fsynced.
    pub dispatched: u64,
    pub written_at_ms: i64,
    /// `(topic, queue id, max offset)` of every queue at that point.
    pub queues: Vec<(String, u32, u64)>,
}

fn encode(c: &Checkpoint) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + c.queues.len() * 32);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&c.dispatched.to_le_bytes());
    b.extend_from_slice(&c.written_at_ms.to_le_bytes());
    b.extend_from_slice(&(c.queues.len() as u32).to_le_bytes());
    for (topic, qid, max) in &c.queues {
        // Topic names are validated to at most 127 bytes.
        b.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&qid.to_le_bytes());
        b.extend_from_slice(&max.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Checkpoint> {
    if b.len() < 32 {
        return None;
    }
    let body = &b[..b.len() - 4];
    if u32_at(b, 0) != MAGIC
        || u32_at(b, 4) != VERSION
        || crc32c::crc32c(body) != u32_at(b, b.len() - 4)
    {
        return None;
    }
    let n = u32_at(b, 24) as usize;
    let mut queues = Vec::with_capacity(n.min(body.len() / 14));
    let mut at = 28;
    for _ in 0..n {
        let len = u16_at(body.get(at..at + 2)?, 0) as usize;
        let topic = std::str::from_utf8(body.get(at + 2..at + 2 + len)?)
            .ok()?
            .to_owned();
        at += 2 + len;
        let rest = body.get(at..at + 12)?;
        queues.push((topic, u32_at(rest, 0), u64_at(rest, 4)));
        at += 12;
    }
    (at == body.len()).then(|| Checkpoint {
        dispatched: u64_at(b, 8),
        written_at_ms: i64_at(b, 16),
        queues,
    })
}

/// Reads the checkpoint; `Ok(None)` when missing or invalid.
pub fn load(dir: &Path) -> io::Result<Option<Checkpoint>> {
    let b = match fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let c = decode(&b);
    if c.is_none() {
        tracing::warn!("checkpoint fails its magic, version, length or CRC check; ignoring it");
    }
    Ok(c)
}

/// Outcome of [`store`] when a failpoint simulates a crash.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Done,
    /// A failpoint stopped the write half way (tests only).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    Crashed,
}

/// Atomically replaces the checkpoint.
pub fn store(dir: &Path, c: &Checkpoint) -> io::Result<Stored> {
    let tmp = dir.join(TMP);
    let bytes = encode(c);
    let mut f = File::create(&tmp)?;
    fail::fail_point!("store::checkpoint::partial", |_| {
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        Ok(Stored::Crashed)
    });
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fail::fail_point!("store::checkpoint::before_rename", |_| Ok(Stored::Crashed));
    fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)?;
    Ok(Stored::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
        let c = Checkpoint {
            dispatched: 12345,
            written_at_ms: 99,
            queues: vec![("a".into(), 1, 7), ("bb".into(), 0, 0)],
        };
        assert_eq!(store(d.path(), &c).unwrap(), Stored::Done);
        assert_eq!(load(d.path()).unwrap(), Some(c.clone()));
        let mut b = fs::read(d.path().join(FILE)).unwrap();
        b[9] ^= 1;
        fs::write(d.path().join(FILE), &b).unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
    }
}
