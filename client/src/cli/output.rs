//! Human tables and JSON documents.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use sluice_client::time::format_time;
use sluice_client::ReceivedMessage;

/// Left-aligned columns separated by two spaces.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(self.render().as_bytes())?;
        stdout.flush()
    }
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// A delivered or looked-up message, for JSON output.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_id: String,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub store_timestamp_ms: i64,
    pub store_time: String,
    pub store_host: String,
    pub reconsume_times: u32,
    pub body_size: usize,
    /// The body as text when it is UTF-8.
    pub body: Option<String>,
    /// The body in hex when it is not UTF-8.
    pub body_hex: Option<String>,
    /// A delayed message: where it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed: Option<DelayedView>,
}

#[derive(Debug, Serialize)]
pub struct DelayedView {
    /// scheduled, delivered or cancelled.
    pub state: &'static str,
    pub deliver_at_ms: i64,
    pub deliver_at: String,
    pub handle: String,
    pub topic: String,
    pub queue_id: u32,
}

impl DelayedView {
    fn of(m: &sluice_proto::v1::StoredMessage) -> Option<DelayedView> {
        use sluice_proto::v1::TimerState;
        let t = m.timer.as_ref()?;
        let state = match TimerState::try_from(t.state) {
            Ok(TimerState::Scheduled) => "scheduled",
            Ok(TimerState::Delivered) => "delivered",
            Ok(TimerState::Cancelled) => "cancelled",
            _ => "resolved",
        };
        Some(DelayedView {
            state,
            deliver_at_ms: t.deliver_at_ms,
            deliver_at: format_time(t.deliver_at_ms),
            handle: format!("{}/{}", t.topic, t.handle),
            topic: t.topic.clone(),
            queue_id: t.queue_id,
        })
    }
}

impl From<&ReceivedMessage> for MessageView {
    fn from(r: &ReceivedMessage) -> Self {
        let m = &r.message;
        let (body, body_hex) = match std::str::from_utf8(&m.body) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(m.body.iter().map(|b| format!("{b:02x}")).collect()),
            ),
        };
        MessageView {
            topic: m.topic.clone(),
            broker_name: r.broker_name.clone(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            message_id: m.message_id.clone(),
            tag: m.tag.clone(),
            keys: m.keys.clone(),
            properties: m.properties.clone().into_iter().collect(),
            born_timestamp_ms: m.born_timestamp_ms,
            born_host: m.born_host.clone(),
            store_timestamp_ms: m.store_timestamp_ms,
            store_time: format_time(m.store_timestamp_ms),
            store_host: m.store_host.clone(),
            reconsume_times: m.reconsume_times,
            body_size: m.body.len(),
            body,
            body_hex,
            delayed: DelayedView::of(m),
        }
    }
}

/// One line per message: position, id, tag, keys, store time, body (escaped).
pub fn message_line(r: &ReceivedMessage) -> String {
    let m = &r.message;
    let mut line = format!(
        "{}:{}:{}@{} id={} stored={}",
        m.topic,
        r.broker_name,
        m.queue_id,
        m.queue_offset,
        m.message_id,
        format_time(m.store_timestamp_ms)
    );
    if !m.tag.is_empty() {
        line.push_str(&format!(" tag={}", m.tag));
    }
    if !m.keys.is_empty() {
        line.push_str(&format!(" keys={}", m.keys.join(",")));
    }
    if let Some(d) = DelayedView::of(m) {
        line.push_str(&format!(
            " {} for {} at {} handle={}",
            d.state, d.topic, d.deliver_at, d.handle
        ));
    }
    line.push(' ');
    line.push_str(&String::from_utf8_lossy(&m.body).escape_debug().to_string());
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_proto::v1::StoredMessage;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["a".into(), "1000".into()]);
        t.row(vec!["longer-name".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "NAME         N\na            1000\nlonger-name  2\n"
        );
    }

    fn received(body: &'static [u8]) -> ReceivedMessage {
        ReceivedMessage {
            broker_name: "broker-a".into(),
            message: StoredMessage {
                topic: "t".into(),
                queue_id: 3,
                queue_offset: 7,
                message_id: "00ff".into(),
                body: Bytes::from_static(body),
                tag: "tg".into(),
                keys: vec!["k1".into()],
                store_timestamp_ms: 1_714_564_800_123,
                ..Default::default()
            },
        }
    }

    #[test]
    fn message_json_shape() {
        let v = serde_json::to_value(MessageView::from(&received(b"hi\n"))).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "body",
                "body_hex",
                "body_size",
                "born_host",
                "born_timestamp_ms",
                "broker_name",
                "keys",
                "message_id",
                "properties",
                "queue_id",
                "queue_offset",
                "reconsume_times",
                "store_host",
                "store_time",
                "store_timestamp_ms",
                "tag",
                "topic"
            ]
        );
        assert_eq!(v["body"], "hi\n");
        assert!(v["body_hex"].is_null());
        assert_eq!(v["queue_offset"], 7);
        assert_eq!(v["store_time"], "2024-05-01T12:00:00.123Z");
        assert_eq!(v["keys"][0], "k1");

        let v = serde_json::to_value(MessageView::from(&received(&[0xff, 0x00]))).unwrap();
        assert!(v["body"].is_null());
        assert_eq!(v["body_hex"], "ff00");
    }

    #[test]
    fn message_line_escapes_the_body() {
        let line = message_line(&received(b"a\nb"));
        assert_eq!(
            line,
            "t:broker-a:3@7 id=00ff stored=2024-05-01T12:00:00.123Z tag=tg keys=k1 a\\nb"
        );
    }
}
