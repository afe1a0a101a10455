//! Splitting a topic's queues among the members of a consumer group.

/// RocketMQ's "averagely" strategy: queues and members are sorted, each member gets a contiguous
/// range, and the first `queues % members` members get one queue more. A client that is not in
/// `members` gets nothing; with more members than queues the last members get nothing.
pub fn allocate_averagely<Q: Ord + Clone>(queues: &[Q], members: &[String], me: &str) -> Vec<Q> {
    let mut queues = queues.to_vec();
    queues.sort();
    queues.dedup();
    let mut members = members.to_vec();
    members.sort();
    members.dedup();
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let (n, m) = (queues.len(), members.len());
    let base = n / m;
    let extra = n % m;
    let count = base + usize::from(index < extra);
    let start = index * base + index.min(extra);
    queues.into_iter().skip(start).take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn all_shares(queues: &[u32], members: &[String]) -> Vec<Vec<u32>> {
        members
            .iter()
            .map(|m| allocate_averagely(queues, members, m))
            .collect()
    }

    #[test]
    fn even_split() {
        let q: Vec<u32> = (0..8).collect();
        assert_eq!(
            all_shares(&q, &members(4)),
            [vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
    }

    #[test]
    fn first_members_get_the_remainder() {
        let q: Vec<u32> = (0..8).collect();
        assert_eq!(
            all_shares(&q, &members(3)),
            [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        let q: Vec<u32> = (0..10).collect();
        assert_eq!(
            all_shares(&q, &members(4)),
            [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7], vec![8, 9]]
        );
    }

    #[test]
    fn more_members_than_queues() {
        let q: Vec<u32> = (0..3).collect();
        assert_eq!(
            all_shares(&q, &members(5)),
            [vec![0], vec![1], vec![2], vec![], vec![]]
        );
    }

    #[test]
    fn unknown_member_and_empty_inputs() {
        let q: Vec<u32> = (0..4).collect();
        assert!(allocate_averagely(&q, &members(2), "stranger").is_empty());
        assert!(allocate_averagely::<u32>(&[], &members(2), "c0").is_empty());
        assert!(allocate_averagely(&q, &[], "c0").is_empty());
    }

    #[test]
    fn input_order_does_not_matter_and_every_queue_is_owned_once() {
        let q: Vec<u32> = vec![7, 3, 5, 1, 0, 2, 6, 4, 8];
        let mut ms = members(4);
        ms.reverse();
        let mut owned: Vec<u32> = all_shares(&q, &ms).into_iter().flatten().collect();
        owned.sort();
        assert_eq!(owned, (0..9).collect::<Vec<_>>());
        assert_eq!(allocate_averagely(&q, &ms, "c0"), [0, 1, 2]);
    }

    #[test]
    fn single_member_gets_everything() {
        let q: Vec<u32> = (0..5).collect();
        assert_eq!(allocate_averagely(&q, &members(1), "c0"), q);
    }
}
