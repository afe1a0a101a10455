//! Subscription filters on pulls: a consumer's tag expression or SQL92 selector (the
//! `sluice-filter` crate), compiled once per expression and applied by the store's filtered
//! read, so messages the subscription does not take never leave the broker.
//!
//! The filter travels with every pull (any replica can answer one, and a follower never sees
//! the group's heartbeats). A group's retry topic holds messages of all its topics: each
//! message is judged by the filter of the topic it first went to (`__ORIGIN_TOPIC`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_filter::{Filter, Kind, Limits, Properties};
use sluice_proto::names::is_retry_topic;
use sluice_proto::props;
use sluice_proto::record::DispatchView;
use sluice_proto::{ApiError, ErrorCode};

use crate::store::tag_hash;

/// Compiled filters kept; past it the cache starts over (compiling is cheap, a cache this
/// size is a bound on memory, not a working set anyone reaches).
const CACHE_MAX: usize = 4096;

/// One topic's filter as a subscription states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub topic: String,
    pub kind: Kind,
    pub expression: String,
}

/// What one pull keeps.
#[derive(Debug)]
pub struct PullFilter {
    pulled: String,
    /// Pulling a group's retry topic: each message's original topic picks its filter.
    retry: bool,
    by_topic: HashMap<String, Arc<Filter>>,
    /// The tag hashes a kept message can have (a tag filter on an ordinary topic).
    tag_hashes: Option<Vec<u64>>,
}

/// A record's properties as the filter reads them.
struct RecordProps<'v, 'a>(&'v DispatchView<'a>);

impl Properties for RecordProps<'_, '_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .property(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl PullFilter {
    /// Whether the message `view` is taken.
    pub fn keep(&self, view: &DispatchView<'_>) -> bool {
        let topic = match self.retry {
            true => view
                .property(props::ORIGIN_TOPIC)
                .and_then(|t| std::str::from_utf8(t).ok()),
            false => Some(self.pulled.as_str()),
        };
        let Some(f) = topic.and_then(|t| self.by_topic.get(t)) else {
            return true;
        };
        let tag = std::str::from_utf8(view.tag).ok().filter(|t| !t.is_empty());
        f.matches(tag, &RecordProps(view))
    }

    pub fn tag_hashes(&self) -> Option<&[u64]> {
        self.tag_hashes.as_deref()
    }
}

/// Compiles and caches the filters of pulls.
pub struct Filters {
    limits: Limits,
    cache: Mutex<HashMap<(Kind, String), Arc<Filter>>>,
}

impl Default for Filters {
    fn default() -> Self {
        Filters::new(Limits::default())
    }
}

impl Filters {
    pub fn new(limits: Limits) -> Filters {
        Filters {
            limits,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled filter of `kind`/`expression`, or INVALID_FILTER naming `topic`, the
    /// position and what was expected.
    pub fn compile(
        &self,
        topic: &str,
        kind: Kind,
        expression: &str,
    ) -> Result<Arc<Filter>, ApiError> {
        let key = (kind, expression.to_string());
        if let Some(f) = self.cache.lock().get(&key) {
            return Ok(f.clone());
        }
        let f = Filter::compile(kind, expression, &self.limits).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidFilter,
                format!("the {kind:?} filter of topic {topic} ({expression:?}) {e}"),
            )
        })?;
        let f = Arc::new(f);
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, f.clone());
        Ok(f)
    }

    /// What a pull of `topic` keeps under `specs` (None: everything).
    pub fn for_pull(
        &self,
        topic: &str,
        specs: &[FilterSpec],
    ) -> Result<Option<Arc<PullFilter>>, ApiError> {
        let retry = is_retry_topic(topic);
        let mut by_topic = HashMap::new();
        for s in specs {
            if !retry && s.topic != topic {
                continue;
            }
            let f = self.compile(&s.topic, s.kind, &s.expression)?;
            // `*` takes everything: no filter for that topic.
            if f.kind() == Kind::Tag && f.tags().is_none() {
                continue;
            }
            by_topic.insert(s.topic.clone(), f);
        }
        if by_topic.is_empty() {
            return Ok(None);
        }
        let tag_hashes = match retry {
            true => None,
            false => by_topic
                .get(topic)
                .and_then(|f| f.tags())
                .map(|tags| tags.iter().map(|t| tag_hash(t.as_bytes())).collect()),
        };
        Ok(Some(Arc::new(PullFilter {
            pulled: topic.to_string(),
            retry,
            by_topic,
            tag_hashes,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topic: &str, kind: Kind, e: &str) -> FilterSpec {
        FilterSpec {
            topic: topic.into(),
            kind,
            expression: e.into(),
        }
    }

    #[test]
    fn a_pull_takes_its_topics_filter_and_star_means_none() {
        let f = Filters::default();
        let specs = [
            spec("orders", Kind::Tag, "paid || shipped"),
            spec("audit", Kind::Sql, "a > 1"),
        ];
        let p = f.for_pull("orders", &specs).unwrap().unwrap();
        assert_eq!(
            p.tag_hashes(),
            Some(&[tag_hash(b"paid"), tag_hash(b"shipped")][..])
        );
        assert!(f.for_pull("other", &specs).unwrap().is_none());
        let star = [spec("orders", Kind::Tag, "*")];
        assert!(f.for_pull("orders", &star).unwrap().is_none());
        // A retry topic takes every topic's filter and pre-filters nothing by hash.
        let r = f.for_pull("%RETRY%g", &specs).unwrap().unwrap();
        assert!(r.tag_hashes().is_none());
        assert_eq!(r.by_topic.len(), 2);
    }

    #[test]
    fn a_bad_expression_is_invalid_filter_with_its_position() {
        let f = Filters::default();
        let e = f
            .for_pull("t", &[spec("t", Kind::Sql, "a = 1 AND (b > 2")])
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::InvalidFilter);
        assert!(e.message.contains("column"), "{}", e.message);
        assert!(e.message.contains("topic t"), "{}", e.message);
    }
}
