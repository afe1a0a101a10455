//! `sluice dashboard`: a web dashboard served by the CLI, pages rendered on the server from
//! the same admin calls as the CLI's commands (so a page and `--json` agree), charts from a
//! sampler's history. No script and no assets to build: plain HTML, inline SVG and CSS.

mod chart;
mod cluster_pages;
mod message_pages;
mod sampler;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sluice_client::{Admin, ClientConfig};
use tokio::sync::watch;

use sampler::History;

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve on; port 0 takes a free one (the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// How often the charts' history is sampled (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = crate::cli::args::parse_duration)]
    pub sample_interval: Duration,
    /// Samples kept (the charts' width in time is this times the interval).
    #[arg(long, default_value_t = 360)]
    pub history: usize,
    /// Seconds between automatic reloads of the overview pages (0: never).
    #[arg(long, default_value_t = 5)]
    pub refresh: u64,
    /// Serve HTTPS with this certificate (chain, PEM; reloaded when it changes), with
    /// --https-key-file.
    #[arg(long, requires = "https_key_file")]
    pub https_cert_file: Option<std::path::PathBuf>,
    /// The key of --https-cert-file (PEM).
    #[arg(long, requires = "https_cert_file")]
    pub https_key_file: Option<std::path::PathBuf>,
}

/// The HTTPS configuration of the arguments, and the task following the files.
fn https(
    args: &DashboardArgs,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, tokio::task::JoinHandle<()>)>> {
    use sluice_proto::tls;
    let (Some(cert), Some(key)) = (&args.https_cert_file, &args.https_key_file) else {
        return Ok(None);
    };
    let certs = tls::Reloading::load(cert, key)?;
    let cfg = tls::server_config(certs.clone(), None, false, &[tls::http::ALPN_HTTP1])?;
    Ok(Some((Arc::new(cfg), certs.watch(Duration::from_secs(1)))))
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct App {
    pub admin: Admin,
    pub history: watch::Receiver<Arc<History>>,
    pub refresh: u64,
}

impl App {
    pub fn history(&self) -> Arc<History> {
        self.history.borrow().clone()
    }
}

pub async fn run(config: ClientConfig, args: DashboardArgs) -> anyhow::Result<()> {
    let admin = Admin::new(config)?;
    let (tx, rx) = watch::channel(Arc::new(History::default()));
    tokio::spawn(sampler::run(
        admin.clone(),
        args.sample_interval.max(Duration::from_millis(100)),
        args.history,
        tx,
    ));
    let app = App {
        admin,
        history: rx,
        refresh: args.refresh,
    };
    let router = Router::new()
        .route("/", get(cluster_pages::cluster))
        .route("/topics", get(cluster_pages::topics))
        .route("/topics/{name}", get(cluster_pages::topic))
        .route("/groups", get(cluster_pages::groups))
        .route("/groups/{name}", get(cluster_pages::group))
        .route("/messages", get(message_pages::search))
        .route("/messages/{id}", get(message_pages::message))
        .route("/dlq", get(message_pages::dead_letters))
        .route("/dlq/redrive", post(message_pages::redrive))
        .route("/transactions", get(message_pages::transactions))
        .with_state(app);
    let https = https(&args)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    if https.is_none() && !addr.ip().is_loopback() {
        eprintln!("warning: serving the dashboard on {addr} without HTTPS: anyone on the way reads it, and anyone who reaches it acts with this command's credentials (see --https-cert-file)");
    }
    let scheme = if https.is_some() { "https" } else { "http" };
    let (tls, _watch) = https.map_or((None, None), |(c, w)| (Some(c), Some(AbortOnDrop(w))));
    let listener = sluice_proto::tls::http::HttpListener::new(listener, tls)?;
    // Tests and scripts read this line to find the port.
    println!("dashboard at {scheme}://{addr}/");
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Stops the certificate watch with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const CSS: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#f8fafc}
nav{background:#0f172a;padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center}
nav a{color:#cbd5e1;text-decoration:none}nav a.on{color:#fff;font-weight:600}
nav .brand{color:#38bdf8;font-weight:700;margin-right:1rem}
main{padding:1rem 1.5rem}h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem}
table{border-collapse:collapse;background:#fff;margin-bottom:1.2rem}
th,td{border-bottom:1px solid #e2e8f0;padding:.35rem .7rem;text-align:left;font-size:.9rem}
th{background:#f1f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#64748b}.error{background:#fee2e2;border:1px solid #fca5a5;padding:.6rem;margin:.6rem 0}
.ok{color:#15803d}.bad{color:#b91c1c}.bar{background:#e2e8f0;width:80px;height:10px;display:inline-block}
.bar span{display:block;height:10px;background:#2563eb}
figure.chart{background:#fff;border:1px solid #e2e8f0;padding:.6rem;margin:0 0 1.2rem;display:inline-block}
figcaption{font-weight:600;margin-bottom:.3rem}line.axis{stroke:#94a3b8}text.tick{font-size:11px;fill:#475569}
ul.legend{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.8rem;font-size:.8rem}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
form.search input{margin-right:.5rem}footer{padding:1rem 1.5rem;font-size:.8rem;color:#64748b}
"#;

const PAGES: [(&str, &str); 6] = [
    ("/", "Cluster"),
    ("/topics", "Topics"),
    ("/groups", "Groups"),
    ("/messages", "Messages"),
    ("/dlq", "Dead letters"),
    ("/transactions", "Transactions"),
];

/// The frame of every page; `refresh` reloads it by itself every that many seconds.
pub(crate) fn page(title: &str, active: &str, refresh: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " - Sluice" }
                @if let Some(s) = refresh.filter(|s| *s > 0) {
                    meta http-equiv="refresh" content=(s);
                }
                style { (PreEscaped(CSS)) }
            }
            body {
                nav {
                    span.brand { "Sluice" }
                    @for (href, name) in PAGES {
                        a href=(href) class=[(href == active).then_some("on")] { (name) }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer { "Rendered " (sluice_client::time::format_time(sluice_client::time::now_ms())) }
            }
        }
    }
}

pub(crate) fn error_box(what: &str, e: &dyn std::fmt::Display) -> Markup {
    html! { div.error { strong { (what) ": " } (e.to_string()) } }
}

/// A topic or group name as a URL path segment or query value: names may hold `%` and `|`.
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_urls() {
        assert_eq!(encode("%RETRY%billing"), "%25RETRY%25billing");
        assert_eq!(encode("caches|host-a"), "caches%7Chost-a");
        assert_eq!(encode("orders_1.x"), "orders_1.x");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let p = page("<t>", "/", Some(5), html! { p { "<b>" } }).into_string();
        assert!(p.contains("&lt;t&gt;") && p.contains("&lt;b&gt;"), "{p}");
        assert!(p.contains("http-equiv=\"refresh\" content=\"5\""), "{p}");
        let p = page("t", "/", Some(0), html! {}).into_string();
        assert!(!p.contains("refresh"), "{p}");
    }
}
