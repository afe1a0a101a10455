//! Comparing one queue as two replicas hold it.

use crate::probe::Stored;

#[derive(Debug, PartialEq, Eq)]
pub enum Compared {
    Same,
    /// One holds a prefix of the other: one of them is behind, or the queue grew between reads.
    Prefix,
    Diverged,
}

pub fn replicas(reference: &[Stored], copy: &[Stored]) -> Compared {
    if reference == copy {
        Compared::Same
    } else if reference.starts_with(copy) || copy.starts_with(reference) {
        Compared::Prefix
    } else {
        Compared::Diverged
    }
}

pub fn describe_mismatch(
    group: &str,
    queue: u32,
    master: u64,
    replica: u64,
    a: &[Stored],
    b: &[Stored],
) -> String {
    let first_diff = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "{group} queue {queue}: replica {replica} holds {} messages, master {master} {}; first difference at index {first_diff}",
        b.len(),
        a.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ids: &[&str]) -> Vec<Stored> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| Stored {
                offset: i as u64,
                message_id: id.to_string(),
                body: bytes::Bytes::from(id.to_string()),
            })
            .collect()
    }

    #[test]
    fn a_queue_behind_or_ahead_settles_and_a_different_one_diverges() {
        assert_eq!(replicas(&q(&["a", "b"]), &q(&["a", "b"])), Compared::Same);
        // A follower catching up, or the master read before a late append.
        assert_eq!(replicas(&q(&["a", "b"]), &q(&["a"])), Compared::Prefix);
        assert_eq!(replicas(&q(&["a"]), &q(&["a", "b"])), Compared::Prefix);
        assert_eq!(
            replicas(&q(&["a", "b"]), &q(&["a", "c"])),
            Compared::Diverged
        );
        assert_eq!(replicas(&q(&["b"]), &q(&["a", "b"])), Compared::Diverged);
        assert_eq!(
            describe_mismatch("g", 1, 3, 1, &q(&["a"]), &q(&["a", "b"])),
            "g queue 1: replica 1 holds 2 messages, master 3 1; first difference at index 1"
        );
    }
}
