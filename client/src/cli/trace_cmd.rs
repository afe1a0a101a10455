//! `sluice message trace ID`: a message's timeline and where it is now.

use serde::Serialize;
use sluice_client::time::format_time;
use sluice_client::trace::{TraceEvent, TraceWhat};
use sluice_client::{Admin, ErrorCode};

use super::output::{message_line, print_json, MessageView, Table};

#[derive(Serialize)]
struct TraceDoc<'a> {
    message_id: &'a str,
    /// The W3C trace id the events carry, if any.
    trace_id: Option<&'a str>,
    events: &'a [TraceEvent],
    unreadable: usize,
    /// The newest stored record with this id (a retry or dead-letter copy once it failed).
    now: Option<MessageView>,
}

pub async fn trace(admin: &Admin, id: &str, json: bool) -> anyhow::Result<()> {
    let trace = admin.message_trace(id).await?;
    let now = match admin.get_message(id).await {
        Ok(m) => Some(m),
        Err(e) if e.code() == Some(ErrorCode::MessageNotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let trace_id = trace
        .events
        .iter()
        .map(|e| e.trace_id.as_str())
        .find(|t| !t.is_empty());
    if json {
        return print_json(&TraceDoc {
            message_id: id,
            trace_id,
            events: &trace.events,
            unreadable: trace.unreadable,
            now: now.as_ref().map(MessageView::from),
        });
    }
    if trace.events.is_empty() {
        println!("no trace events for {id} (were its producer and consumers built with trace on?)");
    } else {
        timeline(&trace.events).print()?;
    }
    if let Some(t) = trace_id {
        println!("trace id: {t}");
    }
    if trace.unreadable > 0 {
        println!(
            "{} record(s) on the trace topic under this id are not trace events",
            trace.unreadable
        );
    }
    match &now {
        Some(m) => println!("now: {}", message_line(m)),
        None => println!("now: not stored (never stored, or removed by retention)"),
    }
    Ok(())
}

/// One row per event: time, kind, position, and what that kind knows.
pub fn timeline(events: &[TraceEvent]) -> Table {
    let mut t = Table::new(&["TIME", "EVENT", "WHERE", "DETAILS"]);
    for e in events {
        let (place, details) = describe(e);
        t.row(vec![
            format_time(e.time_ms),
            e.what.kind().to_string(),
            place,
            details,
        ]);
    }
    t
}

/// Where an event happened (topic, or topic:broker:queue@offset) and what its kind knows.
pub fn describe(e: &TraceEvent) -> (String, String) {
    match &e.what {
        TraceWhat::Sent {
            topic,
            producer_group,
            tag,
            keys,
            latency_ms,
            result,
            transaction,
            ..
        } => {
            let mut d = format!(
                "result={result} latency={latency_ms}ms host={}",
                e.client_host
            );
            if !producer_group.is_empty() {
                d.push_str(&format!(" group={producer_group}"));
            }
            if !tag.is_empty() {
                d.push_str(&format!(" tag={tag}"));
            }
            if !keys.is_empty() {
                d.push_str(&format!(" keys={}", keys.join(",")));
            }
            if *transaction {
                d.push_str(" transaction");
            }
            (topic.clone(), d)
        }
        TraceWhat::Stored {
            topic,
            broker_name,
            address,
            queue_id,
            offset,
            store_ms,
            deliver_at_ms,
        } => {
            let mut d = format!("stored={}", format_time(*store_ms));
            if !address.is_empty() {
                d.push_str(&format!(" master={address}"));
            }
            if let Some(due) = deliver_at_ms {
                d.push_str(&format!(" due={}", format_time(*due)));
            }
            (format!("{topic}:{broker_name}:{queue_id}@{offset}"), d)
        }
        TraceWhat::Delivered {
            group,
            client_id,
            topic,
            broker_name,
            queue_id,
            offset,
            attempt,
        } => (
            format!("{topic}:{broker_name}:{queue_id}@{offset}"),
            format!(
                "group={group} attempt={attempt} client={client_id} host={}",
                e.client_host
            ),
        ),
        TraceWhat::Consumed {
            group,
            attempt,
            result,
            handler_ms,
            error,
            ..
        } => {
            let mut d = format!("result={} group={group} attempt={attempt}", result.as_str());
            if let Some(ms) = handler_ms {
                d.push_str(&format!(" handler={ms}ms"));
            }
            if !error.is_empty() {
                d.push_str(&format!(" error={error:?}"));
            }
            (String::new(), d)
        }
    }
}
