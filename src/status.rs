//! `GET /_mirror/status`: one HTML page for an operator's browser. It runs
//! on private networks, so it is self-contained: inline CSS and SVG, no
//! script, nothing fetched from elsewhere (its Content-Security-Policy says
//! so to the browser). It asks for no credential, so `summary` mode shows
//! aggregate figures only; names appear in `detail` mode alone.
//!
//! Every figure is read from the same sources as `/metrics` at the same
//! moment, and carries its exact value in `data-value` for tests and
//! scrapers of the page.

use std::fmt::Write;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::blob_store::{FillOutcome, FillView};
use crate::body::{self, Body};
use crate::config::StatusPage;
use crate::metrics::{Live, Metrics, Totals, COMMIT};

/// What the page shows, gathered by the caller.
pub struct Figures {
    pub mode: StatusPage,
    pub live: Live,
    pub quota: u64,
    pub totals: Totals,
    /// One sample a minute, oldest first (see `Metrics::history`).
    pub history: Vec<(u64, Totals)>,
    pub lowest_remaining: Option<u64>,
    pub running: Vec<FillView>,
    pub recent: Vec<FillView>,
}

/// Samples the metrics' totals once a minute for the page's chart. Holds
/// them weakly, so a stopped server's do not stay alive for it.
pub(crate) async fn sample_every_minute(metrics: Weak<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the metrics hold the start already.
    every.tick().await;
    loop {
        every.tick().await;
        let Some(metrics) = metrics.upgrade() else {
            return;
        };
        metrics.sample();
    }
}

/// The page as a response: no caching, no script, no outside resource.
pub fn response(figures: &Figures) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from(render(figures))));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}.muted{color:#57606a}\
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;min-width:180px}\
.card .v{font-size:22px;font-weight:600}table{border-collapse:collapse;background:#fff;min-width:600px}\
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}th{background:#f0f3f6}\
.bar{background:#eaeef2;border-radius:3px;height:8px;width:160px}.bar>div{background:#2da44e;height:8px;border-radius:3px}\
svg{background:#fff;border:1px solid #d0d7de;border-radius:6px}.served{fill:#2da44e}.fetched{fill:#cf222e}.ratio{stroke:#0969da;fill:none;stroke-width:2}";

/// The page's HTML.
pub fn render(f: &Figures) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let detail = f.mode == StatusPage::Detail;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>artifact-mirror status</title><style>{STYLE}</style></head><body>\
         <h1>artifact-mirror</h1><div class=\"muted\">version {} (commit {COMMIT}) · {} · {} view</div>",
        env!("CARGO_PKG_VERSION"),
        httpdate::fmt_http_date(crate::clock::now()),
        if detail { "detail" } else { "summary" },
    );

    h.push_str("<div class=\"cards\">");
    let used = percent(f.live.store_bytes, f.quota);
    card(
        &mut h,
        "Store",
        "store-bytes",
        &f.live.store_bytes.to_string(),
        &bytes(f.live.store_bytes),
        &format!(
            "of <span id=\"store-quota\" data-value=\"{q}\">{}</span> ({used:.1}%)<div class=\"bar\"><div style=\"width:{used:.1}%\"></div></div>",
            bytes(f.quota),
            q = f.quota
        ),
    );
    card(
        &mut h,
        "Artifacts stored",
        "store-blobs",
        &f.live.store_blobs.to_string(),
        &f.live.store_blobs.to_string(),
        "",
    );
    let ratio = ratio(f.totals.from_cache, f.totals.cache_answers);
    card(
        &mut h,
        "Hit ratio since start",
        "hit-ratio",
        &ratio.map_or(String::new(), |r| r.to_string()),
        &ratio.map_or("none yet".into(), |r| format!("{:.1}%", r * 100.0)),
        &format!(
            "{} of {} cacheable answers",
            f.totals.from_cache, f.totals.cache_answers
        ),
    );
    card(
        &mut h,
        "Zip bytes served",
        "served-bytes",
        &f.totals.served_bytes.to_string(),
        &bytes(f.totals.served_bytes),
        &format!(
            "fetched from GHES: <span id=\"fetched-bytes\" data-value=\"{}\">{}</span>",
            f.totals.fetched_bytes,
            bytes(f.totals.fetched_bytes)
        ),
    );
    card(
        &mut h,
        "Fills in flight",
        "fills-in-flight",
        &f.live.fills_in_flight.to_string(),
        &f.live.fills_in_flight.to_string(),
        &format!("{} clients streaming from them", f.live.fill_waiters),
    );
    card(
        &mut h,
        "Lowest rate limit remaining",
        "rate-limit-lowest",
        &f.lowest_remaining.map_or(String::new(), |v| v.to_string()),
        &f.lowest_remaining
            .map_or("none seen".into(), |v| v.to_string()),
        "last minute, any credential",
    );
    h.push_str("</div>");

    h.push_str("<h2>Last hour, per minute</h2>");
    chart(&mut h, &f.history, f.totals);

    h.push_str("<h2>Fills in flight</h2>");
    fills(&mut h, &f.running, detail, "running");
    h.push_str("<h2>Last fills</h2>");
    fills(&mut h, &f.recent, detail, "recent");
    h.push_str("</body></html>\n");
    h
}

fn card(h: &mut String, title: &str, id: &str, value: &str, shown: &str, note: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><div class=\"muted\">{title}</div>\
         <div class=\"v\" id=\"{id}\" data-value=\"{value}\">{shown}</div>\
         <div class=\"muted\">{note}</div></div>"
    );
}

/// Bars of zip bytes served (green) and fetched (red) per minute, and the
/// hit ratio (blue line, 0–100 %), right-aligned: the last bar is the
/// current minute so far.
fn chart(h: &mut String, history: &[(u64, Totals)], now: Totals) {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const SLOTS: usize = 60;
    let mut points: Vec<Totals> = history.iter().map(|(_, t)| *t).collect();
    points.push(now);
    let minutes: Vec<(u64, u64, Option<f64>)> = points
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            (
                b.served_bytes.saturating_sub(a.served_bytes),
                b.fetched_bytes.saturating_sub(a.fetched_bytes),
                ratio(
                    b.from_cache.saturating_sub(a.from_cache),
                    b.cache_answers.saturating_sub(a.cache_answers),
                ),
            )
        })
        .collect();
    let minutes = &minutes[minutes.len().saturating_sub(SLOTS)..];
    let peak = minutes
        .iter()
        .map(|(s, f, _)| (*s).max(*f))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = W / SLOTS as f64;
    let _ = write!(
        h,
        "<svg id=\"chart\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\" role=\"img\" \
         aria-label=\"zip bytes served and fetched, and hit ratio, per minute\">",
        H + 20.0,
        H + 20.0
    );
    let mut line = String::new();
    for (i, (served, fetched, r)) in minutes.iter().enumerate() {
        let x = W - slot * (minutes.len() - i) as f64;
        for (class, value, dx) in [("served", served, 1.0), ("fetched", fetched, slot / 2.0)] {
            let height = (*value as f64 / peak) * (H - 10.0);
            let _ = write!(
                h,
                "<rect class=\"{class}\" data-minute=\"{i}\" data-bytes=\"{value}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\"></rect>",
                x + dx,
                H - height,
                slot / 2.0 - 1.0
            );
        }
        if let Some(r) = r {
            let (cx, cy) = (x + slot / 2.0, H - r * (H - 10.0));
            let _ = write!(line, "{cx:.1},{cy:.1} ");
            // A dot too: a line needs two minutes to show.
            let _ = write!(
                h,
                "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.5\" fill=\"#0969da\"></circle>"
            );
        }
    }
    if !line.is_empty() {
        let _ = write!(
            h,
            "<polyline class=\"ratio\" points=\"{}\"></polyline>",
            line.trim_end()
        );
    }
    let _ = write!(
        h,
        "<text x=\"4\" y=\"{}\" font-size=\"11\">60 min ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">now</text>\
         <text x=\"4\" y=\"12\" font-size=\"11\">peak {} a minute · <tspan class=\"served\">■</tspan> served \
         <tspan class=\"fetched\">■</tspan> fetched <tspan fill=\"#0969da\">—</tspan> hit ratio</text></svg>",
        H + 16.0,
        W - 4.0,
        H + 16.0,
        bytes(peak as u64),
    );
}

fn fills(h: &mut String, list: &[FillView], detail: bool, id: &str) {
    if list.is_empty() {
        let _ = write!(
            h,
            "<p class=\"muted\" id=\"{id}\" data-count=\"0\">none</p>"
        );
        return;
    }
    let _ = write!(h, "<table id=\"{id}\" data-count=\"{}\"><tr>", list.len());
    if detail {
        h.push_str("<th>artifact</th><th>repository</th><th>name</th>");
    }
    h.push_str("<th>progress</th><th>size</th><th>started</th><th>time</th><th>outcome</th></tr>");
    for fill in list {
        h.push_str("<tr>");
        if detail {
            let repo = fill.repo.as_deref().map_or(String::new(), |r| {
                match (r.strip_prefix("n:"), r.strip_prefix("i:")) {
                    (Some(name), _) => name.to_owned(),
                    (_, Some(id)) => format!("repository {id}"),
                    _ => r.to_owned(),
                }
            });
            let _ = write!(
                h,
                "<td>{}</td><td>{}</td><td>{}</td>",
                fill.artifact,
                escape(&repo),
                escape(fill.name.as_deref().unwrap_or(""))
            );
        }
        let done = fill.total.map_or(0.0, |t| percent(fill.written, t));
        let started =
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(fill.started));
        let _ = write!(
            h,
            "<td><div class=\"bar\"><div style=\"width:{done:.1}%\"></div></div>{done:.0}%</td>\
             <td data-written=\"{}\">{} of {}</td><td>{started}</td><td>{:.1} s</td><td>{}</td></tr>",
            fill.written,
            bytes(fill.written),
            fill.total.map_or("unknown".into(), bytes),
            fill.elapsed.as_secs_f64(),
            match fill.outcome {
                None => "in flight",
                Some(FillOutcome::Stored) => "stored",
                Some(FillOutcome::NotKept) => "streamed, not kept (over max_blob_bytes)",
                Some(FillOutcome::DiskFull) => "relayed from upstream, not kept (disk full)",
                Some(FillOutcome::Failed) => "failed (see the log)",
            }
        );
    }
    h.push_str("</table>");
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn percent(part: u64, whole: u64) -> f64 {
    ratio(part, whole).map_or(0.0, |r| (r * 100.0).min(100.0))
}

/// A rounded binary unit for the eye.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(name: &str, repo: &str) -> FillView {
        FillView {
            artifact: 42,
            name: Some(name.into()),
            repo: Some(repo.into()),
            written: 512,
            total: Some(1024),
            started: 1_700_000_000,
            elapsed: Duration::from_millis(1500),
            outcome: None,
        }
    }

    fn figures(mode: StatusPage) -> Figures {
        Figures {
            mode,
            live: Live {
                store_bytes: 2048,
                store_blobs: 1,
                fills_in_flight: 1,
                fill_waiters: 2,
            },
            quota: 4096,
            totals: Totals {
                cache_answers: 4,
                from_cache: 3,
                served_bytes: 10,
                fetched_bytes: 5,
            },
            history: vec![(0, Totals::default())],
            lowest_remaining: None,
            running: vec![fill("<secret-name>", "n:octo/private")],
            recent: vec![FillView {
                outcome: Some(FillOutcome::Failed),
                ..fill("other", "i:77")
            }],
        }
    }

    #[test]
    fn summary_shows_no_name_and_detail_escapes_them() {
        let summary = render(&figures(StatusPage::Summary));
        for name in ["secret-name", "octo/private", "other", "repository 77"] {
            assert!(!summary.contains(name), "{name} in the summary");
        }
        assert!(summary.contains("id=\"hit-ratio\" data-value=\"0.75\""));
        assert!(summary.contains("id=\"rate-limit-lowest\" data-value=\"\">none seen"));
        assert!(summary.contains("failed (see the log)"));
        let detail = render(&figures(StatusPage::Detail));
        assert!(detail.contains("&lt;secret-name&gt;") && !detail.contains("<secret-name>"));
        assert!(detail.contains("<td>octo/private</td>"));
        assert!(detail.contains("<td>repository 77</td>"));
    }

    #[test]
    fn chart_has_one_bar_pair_per_minute_and_the_current_one_last() {
        let mut f = figures(StatusPage::Summary);
        let t = |served| Totals {
            served_bytes: served,
            ..Totals::default()
        };
        f.history = (0..70).map(|m| (m * 60, t(m * 100))).collect();
        f.totals = t(69 * 100 + 7);
        let page = render(&f);
        assert_eq!(page.matches("<rect class=\"served\"").count(), 60);
        assert!(page.contains("class=\"served\" data-minute=\"59\" data-bytes=\"7\""));
        assert!(page.contains("class=\"served\" data-minute=\"58\" data-bytes=\"100\""));
    }
}
