//! Filtered queue reads: what they return equals the filter applied to everything (random
//! messages and filters, read in pulls of random sizes until the queue's end), records with
//! another tag are skipped on their consume-queue entry, a read looks at no more entries than
//! its limit and says where it stopped, and a retry topic's messages are judged by the filter
//! of their original topic.

#[path = "store_util.rs"]
mod util;

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use sluice_broker::messaging::filter::{FilterSpec, Filters};
use sluice_broker::store::{tag_hash, MessageStore, QueueFilter};
use sluice_filter::{Filter, Kind, Limits};
use util::*;

fn tagged(id: &str, tag: &str, region: &str, amount: u32) -> sluice_broker::store::AppendMessage {
    let mut m = msg(id, id.as_bytes());
    m.tag = tag.into();
    m.properties = vec![
        ("region".into(), region.into()),
        ("amount".into(), amount.to_string()),
    ];
    m
}

async fn store_with(
    dir: &std::path::Path,
    topic: &str,
    msgs: Vec<sluice_broker::store::AppendMessage>,
) -> MessageStore {
    let store = MessageStore::open(config(dir)).await.unwrap();
    let n = msgs.len() as u64;
    for chunk in msgs.chunks(50) {
        store.append(batch(topic, 0, chunk.to_vec())).await.unwrap();
    }
    wait_visible(&store, topic, 0, n).await;
    store
}

/// Reads the whole queue through `filter` in pulls of `per_pull` messages; the ids returned.
fn read_filtered(
    store: &MessageStore,
    topic: &str,
    per_pull: usize,
    f: &Filter,
    scan: usize,
) -> Vec<String> {
    let hashes: Option<Vec<u64>> = f
        .tags()
        .map(|t| t.iter().map(|t| tag_hash(t.as_bytes())).collect());
    let keep = |v: &sluice_proto::record::DispatchView<'_>| {
        let tag = std::str::from_utf8(v.tag).ok().filter(|t| !t.is_empty());
        let props: Vec<(String, String)> = ["region", "amount"]
            .iter()
            .filter_map(|k| {
                let v = std::str::from_utf8(v.property(k)?).ok()?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        f.matches(tag, &props)
    };
    let qf = QueueFilter {
        tag_hashes: hashes.as_deref(),
        keep: &keep,
        scan_limit: scan,
    };
    let (_, max) = store.queue_offsets(topic, 0);
    let mut offset = 0;
    let mut ids = Vec::new();
    while offset < max {
        let r = store
            .read_queue_where(topic, 0, offset, per_pull, 1 << 20, Some(&qf))
            .unwrap();
        assert!(r.next_offset > offset, "a read moves on: {offset}");
        assert!(
            r.next_offset - offset <= scan as u64,
            "at most the scan limit looked at"
        );
        for rec in &r.records {
            assert!(rec.queue_offset >= offset && rec.queue_offset < r.next_offset);
        }
        ids.extend(r.records.into_iter().map(|r| r.message_id));
        offset = r.next_offset;
    }
    ids
}

const TAGS: [&str; 4] = ["paid", "shipped", "cancelled", ""];

fn expression() -> impl Strategy<Value = (Kind, String)> {
    prop_oneof![
        Just((Kind::Tag, "paid".to_string())),
        Just((Kind::Tag, "paid || cancelled".to_string())),
        Just((Kind::Tag, "nothing".to_string())),
        Just((Kind::Sql, "region = 'eu' AND amount > 50".to_string())),
        Just((
            Kind::Sql,
            "TAGS IN ('shipped', 'paid') OR amount BETWEEN 10 AND 20".to_string()
        )),
        Just((Kind::Sql, "region IS NULL".to_string())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn filtered_reads_return_what_the_filter_takes_in_queue_order(
        picks in prop::collection::vec((0usize..4, 0usize..3, 0u32..100), 1..300),
        (kind, expr) in expression(),
        per_pull in 1usize..40,
        scan in 1usize..64,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let msgs: Vec<_> = picks
                .iter()
                .enumerate()
                .map(|(i, (t, r, a))| tagged(&format!("m{i}"), TAGS[*t], ["eu", "us", ""][*r], *a))
                .collect();
            let f = Filter::compile(kind, &expr, &Limits::default()).unwrap();
            let expected: Vec<String> = msgs
                .iter()
                .filter(|m| {
                    let props: Vec<(String, String)> = m
                        .properties
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .cloned()
                        .collect();
                    f.matches(Some(m.tag.as_str()).filter(|t| !t.is_empty()), &props)
                })
                .map(|m| m.message_id.clone())
                .collect();
            let store = store_with(dir.path(), "orders", msgs.iter().map(|m| {
                let mut m = m.clone();
                m.properties.retain(|(_, v)| !v.is_empty());
                m
            }).collect()).await;
            let got = read_filtered(&store, "orders", per_pull, &f, scan);
            prop_assert_eq!(got, expected);
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tags_are_skipped_on_their_entry_and_a_read_stops_at_its_scan_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut msgs: Vec<_> = (0..1000)
        .map(|i| tagged(&format!("n{i}"), "other", "eu", 1))
        .collect();
    msgs.push(tagged("hit", "paid", "eu", 1));
    let store = store_with(dir.path(), "orders", msgs).await;
    let looked = AtomicUsize::new(0);
    let keep = |v: &sluice_proto::record::DispatchView<'_>| {
        looked.fetch_add(1, Ordering::Relaxed);
        v.tag == b"paid"
    };
    let hashes = [tag_hash(b"paid")];
    let qf = QueueFilter {
        tag_hashes: Some(&hashes),
        keep: &keep,
        scan_limit: 300,
    };
    let r = store
        .read_queue_where("orders", 0, 0, 32, 1 << 20, Some(&qf))
        .unwrap();
    assert!(r.records.is_empty());
    assert_eq!(
        r.next_offset, 300,
        "stopped at the scan limit, past what it skipped"
    );
    // Where in the log the scan got to (read hints judge a consumer's lag by it): past the
    // 300th record, short of the 301st.
    let at = r.scanned_to.expect("a filtered read says where it got to");
    let two = store.read_queue("orders", 0, 299, 2, 1 << 20).unwrap();
    let (r299, r300) = (&two.records[0], &two.records[1]);
    assert!(
        at > r299.commit_log_offset && at <= r300.commit_log_offset,
        "{at}"
    );
    assert_eq!(two.scanned_to, None);
    let mut offset = r.next_offset;
    let mut found = Vec::new();
    while offset < 1001 {
        let r = store
            .read_queue_where("orders", 0, offset, 32, 1 << 20, Some(&qf))
            .unwrap();
        found.extend(
            r.records
                .into_iter()
                .map(|r| (r.message_id, r.queue_offset)),
        );
        offset = r.next_offset;
    }
    assert_eq!(found, vec![("hit".to_string(), 1000)]);
    assert_eq!(
        looked.load(Ordering::Relaxed),
        1,
        "only the entry with the tag's hash had its record read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_topic_is_filtered_by_each_message_s_original_topic() {
    let dir = tempfile::tempdir().unwrap();
    let retry = "%RETRY%g";
    let from = |id: &str, topic: &str, tag: &str| {
        let mut m = tagged(id, tag, "eu", 1);
        m.properties
            .push((sluice_proto::props::ORIGIN_TOPIC.into(), topic.into()));
        m
    };
    let msgs = vec![
        from("a1", "orders", "paid"),
        from("a2", "orders", "other"),
        from("b1", "audit", "x"),
        from("b2", "audit", "y"),
        from("c1", "unsubscribed", "z"),
    ];
    let store = store_with(dir.path(), retry, msgs).await;
    let specs = [
        FilterSpec {
            topic: "orders".into(),
            kind: Kind::Tag,
            expression: "paid".into(),
        },
        FilterSpec {
            topic: "audit".into(),
            kind: Kind::Sql,
            expression: "TAGS = 'y'".into(),
        },
    ];
    let pf = Filters::default().for_pull(retry, &specs).unwrap().unwrap();
    let keep = |v: &sluice_proto::record::DispatchView<'_>| pf.keep(v);
    let qf = QueueFilter {
        tag_hashes: pf.tag_hashes(),
        keep: &keep,
        scan_limit: 100,
    };
    let r = store
        .read_queue_where(retry, 0, 0, 32, 1 << 20, Some(&qf))
        .unwrap();
    let ids: Vec<String> = r.records.into_iter().map(|r| r.message_id).collect();
    assert_eq!(ids, ["a1", "b2", "c1"]);
    assert_eq!(r.next_offset, 5);
}

/// A tag hash is not the tag: entries whose hash passes (as a colliding tag's would) are still
/// judged on their record's exact tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_that_passes_is_not_a_match_without_the_tag() {
    let dir = tempfile::tempdir().unwrap();
    let msgs = vec![
        tagged("x1", "paid", "eu", 1),
        tagged("x2", "collides", "eu", 1),
        tagged("x3", "paid", "eu", 1),
    ];
    let store = store_with(dir.path(), "orders", msgs).await;
    let f = Filter::compile(Kind::Tag, "paid", &Limits::default()).unwrap();
    // As if "collides" hashed like "paid": both hashes pass the consume-queue check.
    let hashes = [tag_hash(b"paid"), tag_hash(b"collides")];
    let keep = |v: &sluice_proto::record::DispatchView<'_>| {
        f.matches_tag(std::str::from_utf8(v.tag).ok().filter(|t| !t.is_empty()))
    };
    let qf = QueueFilter {
        tag_hashes: Some(&hashes),
        keep: &keep,
        scan_limit: 100,
    };
    let r = store
        .read_queue_where("orders", 0, 0, 32, 1 << 20, Some(&qf))
        .unwrap();
    let ids: Vec<String> = r.records.into_iter().map(|r| r.message_id).collect();
    assert_eq!(ids, ["x1", "x3"]);
    assert_eq!(r.next_offset, 3);
}
