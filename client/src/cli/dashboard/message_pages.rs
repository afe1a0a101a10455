//! Message search, a message with its trace, dead letters with redrive, transactions.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use sluice_client::time::{format_time, parse_time};
use sluice_client::ReceivedMessage;

use super::{encode, error_box, page, App};
use crate::cli::trace_cmd::describe;

/// Most messages a search shows.
const SEARCH_MAX: u32 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SearchParams {
    #[serde(default)]
    id: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

fn search_form(p: &SearchParams) -> Markup {
    html! {
        form.search #search method="get" action="/messages" {
            label { "Id " input name="id" value=(p.id) size="34"; }
            " or "
            label { "Topic " input name="topic" value=(p.topic); }
            label { "Key " input name="key" value=(p.key); }
            label { "From " input name="from" value=(p.from) placeholder="RFC 3339 or ms"; }
            label { "To " input name="to" value=(p.to); }
            button type="submit" { "Search" }
        }
    }
}

fn results(found: &[ReceivedMessage]) -> Markup {
    html! {
        p { (found.len()) " message(s)" }
        table #results {
            tr { th { "Id" } th { "Topic" } th { "Position" } th { "Tag" } th { "Keys" } th { "Stored" } }
            @for r in found {
                @let m = &r.message;
                tr {
                    td { a href={"/messages/" (encode(&m.message_id))} { (m.message_id) } }
                    td { (m.topic) }
                    td { (r.broker_name) ":" (m.queue_id) "@" (m.queue_offset) }
                    td { (m.tag) }
                    td { (m.keys.join(", ")) }
                    td { (format_time(m.store_timestamp_ms)) }
                }
            }
        }
    }
}

pub(crate) async fn search(State(app): State<App>, Query(p): Query<SearchParams>) -> Response {
    if !p.id.trim().is_empty() {
        return Redirect::to(&format!("/messages/{}", encode(p.id.trim()))).into_response();
    }
    let found = match (p.topic.trim(), p.key.trim(), p.from.trim(), p.to.trim()) {
        ("", ..) => None,
        (topic, key, "", "") if !key.is_empty() => {
            Some(app.admin.find_by_key(topic, key, SEARCH_MAX).await)
        }
        (topic, _, from, to) => {
            let range = parse_time(if from.is_empty() { "0" } else { from }).and_then(|f| {
                let t = if to.is_empty() {
                    Ok(sluice_client::time::now_ms())
                } else {
                    parse_time(to)
                };
                t.map(|t| (f, t))
            });
            Some(match range {
                Ok((f, t)) => app.admin.find_by_time(topic, f, t, SEARCH_MAX).await,
                Err(e) => Err(sluice_client::Error::InvalidArgument(e)),
            })
        }
    };
    let body = html! {
        (search_form(&p))
        @match &found {
            None => p.muted { "Give a message id, or a topic with a key or a time range." },
            Some(Err(e)) => (error_box("search", e)),
            Some(Ok(found)) => (results(found)),
        }
    };
    page("Messages", "/messages", None, body).into_response()
}

pub(crate) async fn message(State(app): State<App>, Path(id): Path<String>) -> Markup {
    let stored = app.admin.get_message(&id).await;
    let trace = app.admin.message_trace(&id).await;
    let body = html! {
        (search_form(&SearchParams::default()))
        h2 { "Where it is now" }
        @match &stored {
            Err(e) => (error_box("not stored", e)),
            Ok(r) => {
                @let m = &r.message;
                table #message {
                    tr { th { "Topic" } td.topic { (m.topic) } }
                    tr { th { "Position" } td { (r.broker_name) ":" (m.queue_id) "@" (m.queue_offset) } }
                    tr { th { "Tag" } td { (m.tag) } }
                    tr { th { "Keys" } td { (m.keys.join(", ")) } }
                    tr { th { "Born" } td { (format_time(m.born_timestamp_ms)) " on " (m.born_host) } }
                    tr { th { "Stored" } td { (format_time(m.store_timestamp_ms)) " by " (m.store_host) } }
                    tr { th { "Attempts" } td { (m.reconsume_times) } }
                    @for (k, v) in &m.properties { tr { th { (k) } td { (v) } } }
                    tr { th { "Body" } td { (String::from_utf8_lossy(&m.body[..m.body.len().min(512)])) } }
                }
            }
        }
        h2 { "Trace" }
        @match &trace {
            Err(e) => (error_box("trace", e)),
            Ok(t) if t.events.is_empty() => p.muted { "No trace events: were its producer and consumers built with trace on?" },
            Ok(t) => {
                @if let Some(tid) = t.events.iter().map(|e| e.trace_id.as_str()).find(|s| !s.is_empty()) {
                    p { "Trace id " code #trace-id { (tid) } }
                }
                table #events {
                    tr { th { "Time" } th { "Event" } th { "Where" } th { "Details" } }
                    @for e in &t.events {
                        @let (place, details) = describe(e);
                        tr data-kind=(e.what.kind()) {
                            td { (format_time(e.time_ms)) }
                            td.kind { (e.what.kind()) }
                            td { (place) }
                            td { (details) }
                        }
                    }
                }
            }
        }
    };
    page(&format!("Message {id}"), "/messages", None, body)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DlqParams {
    #[serde(default)]
    group: String,
    #[serde(default)]
    redriven: Option<u32>,
}

pub(crate) async fn dead_letters(State(app): State<App>, Query(p): Query<DlqParams>) -> Markup {
    let groups = app.admin.list_groups().await.unwrap_or_default();
    let listed = match p.group.as_str() {
        "" => None,
        g => Some(app.admin.dead_letters(g, 1000).await),
    };
    let body = html! {
        form.search method="get" action="/dlq" {
            label { "Group " select name="group" {
                @for g in &groups { option value=(g.group) selected[g.group == p.group] { (g.group) } }
            } }
            button type="submit" { "Show" }
        }
        @if let Some(n) = p.redriven { p.ok #redriven { (n) " message(s) sent back to their topics." } }
        @match &listed {
            None => p.muted { "Pick a group." },
            Some(Err(e)) => (error_box("dead letters", e)),
            Some(Ok(list)) => {
                p { (list.len()) " dead letter(s)" }
                table #dead-letters {
                    tr { th { "Id" } th { "Topic" } th { "Attempts" } th { "Last failure" } th { "Stored" } th { "" } }
                    @for d in list {
                        tr data-id=(d.message_id) {
                            td { a href={"/messages/" (encode(&d.message_id))} { (d.message_id) } }
                            td { (d.topic) }
                            td.num { (d.attempts) }
                            td { (d.failure) }
                            td { (d.stored_at) }
                            td {
                                @if d.redriven { span.muted { "redriven" } }
                                @else {
                                    form method="post" action="/dlq/redrive" {
                                        input type="hidden" name="group" value=(p.group);
                                        input type="hidden" name="id" value=(d.message_id);
                                        button.redrive type="submit" { "Redrive" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Dead letters", "/dlq", None, body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct RedriveForm {
    group: String,
    id: String,
}

/// Whether a form post came from the dashboard's own pages: browsers say where a request
/// came from (`Sec-Fetch-Site`, `Origin`); a post another site made them send is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        // Not a browser's cross-site post (tools send neither header).
        (None, _) => true,
        (Some(_), None) => false,
    }
}

pub(crate) async fn redrive(
    State(app): State<App>,
    headers: HeaderMap,
    Form(f): Form<RedriveForm>,
) -> Response {
    if !same_origin(&headers) {
        let e = "the request came from another site";
        return (
            axum::http::StatusCode::FORBIDDEN,
            page(
                "Dead letters",
                "/dlq",
                None,
                error_box("redrive refused", &e),
            ),
        )
            .into_response();
    }
    match app
        .admin
        .redrive(&f.group, std::slice::from_ref(&f.id), false)
        .await
    {
        Ok(done) => {
            let n: u32 = done.iter().map(|r| r.redriven).sum();
            Redirect::to(&format!("/dlq?group={}&redriven={n}", encode(&f.group))).into_response()
        }
        Err(e) => page("Dead letters", "/dlq", None, error_box("redrive", &e)).into_response(),
    }
}

pub(crate) async fn transactions(State(app): State<App>) -> Markup {
    let body = match app.admin.open_transactions().await {
        Err(e) => error_box("transactions", &e),
        Ok(list) if list.is_empty() => html! { p.muted { "No open or parked transaction." } },
        Ok(list) => html! {
            table #transactions {
                tr { th { "Id" } th { "Broker group" } th { "Producer group" } th { "Topics" } th { "Messages" } th { "State" } th { "Created" } th { "Checks" } }
                @for t in &list {
                    tr data-id=(t.transaction_id) {
                        td { (t.transaction_id) } td { (t.broker_name) } td { (t.producer_group) }
                        td { (t.topics.join(", ")) } td.num { (t.messages) } td { (t.state) }
                        td { (t.created_at) } td.num { (t.checks) }
                    }
                }
            }
        },
    };
    page("Transactions", "/transactions", Some(app.refresh), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
    }
}
