//! `GET /status`: the operator's page. A timeline of the next 24 hours of passes, one row
//! per ground station (or the link's own next passes when they are not predicted from the
//! orbit), with the requests waiting for the satellite drawn at the pass expected to carry
//! them; the link's state and counters; the requests still moving, by state.
//!
//! The SVG is drawn here, with no script. The page shows counts and times only, never an
//! address, amount or id, but it is still the operator's: `http.status_page` serves it,
//! on by default only when the HTTP listener is on loopback.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::health::HealthSources;
use crate::notice::{format_utc, html_escape};
use crate::rpc_signing::unix;
use crate::service::{Service, ServiceError};
use crate::state::State;

/// The timeline's span.
const SPAN: Duration = Duration::from_secs(24 * 3600);
/// Drawing width of the timeline, px.
const WIDTH: f64 = 960.0;
/// Left margin for the station names, px.
const LABELS: f64 = 120.0;
/// Height of a station's row, px.
const ROW: f64 = 28.0;

/// One row of the timeline: a name and its windows (unix seconds).
struct Row {
    name: String,
    windows: Vec<(u64, u64)>,
}

/// The page, as of `now`.
pub async fn render(
    service: &Service,
    sources: &HealthSources,
    now: SystemTime,
) -> Result<String, ServiceError> {
    let mut by_state: Vec<(State, usize)> = Vec::new();
    for id in service.active_requests().await? {
        let Ok(r) = service.request(id).await else {
            continue;
        };
        match by_state.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => by_state.push((r.state, 1)),
        }
    }
    by_state.sort_by_key(|(s, _)| crate::state::ALL_STATES.iter().position(|a| a == s));
    let waiting: usize = by_state
        .iter()
        .filter(|(s, _)| matches!(s, State::Confirmed | State::Queued | State::Sent))
        .map(|(_, n)| n)
        .sum();
    let link = sources.link.as_ref().map(|f| f());
    let rows: Vec<Row> = match &sources.passes {
        Some(plan) => plan
            .passes_within(now, SPAN)
            .into_iter()
            .map(|(name, passes)| Row {
                name,
                windows: passes
                    .iter()
                    .map(|p| (unix(p.start), unix(p.end)))
                    .collect(),
            })
            .collect(),
        None => vec![Row {
            name: "link".into(),
            windows: link
                .iter()
                .flat_map(|l| [l.current_pass, l.next_pass])
                .flatten()
                .map(|p| (unix(p.start), unix(p.end)))
                .collect(),
        }],
    };
    // Where the queue stands: the pass a request confirmed now would wait for.
    let expected = service
        .sky
        .get()
        .and_then(|sky| crate::expected::for_a_new_request(sky, now));
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: status</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head><body>\
         <h1>satcosign bridge</h1><p>As of {}.</p><h2>Passes, next 24 hours</h2>",
        html_escape(&format_utc(unix(now)))
    );
    page.push_str(&timeline(
        &rows,
        unix(now),
        waiting,
        expected.map(|e| unix(e.at)),
    ));
    page.push_str("<h2>Link</h2><table id=\"link\">");
    match &link {
        None => page.push_str("<tr><td>no link</td></tr>"),
        Some(l) => {
            let rows = [
                ("running", l.running.to_string()),
                ("in view", l.in_view.to_string()),
                ("messages queued", l.queue_depth.to_string()),
                ("transmissions", l.stats.transmissions.to_string()),
                ("frames sent", l.stats.frames_sent.to_string()),
                ("frames resent", l.stats.frames_resent.to_string()),
                ("frames received", l.stats.frames_received.to_string()),
                ("messages delivered", l.stats.messages_delivered.to_string()),
                (
                    "frames rejected",
                    (l.stats.rejected_damaged
                        + l.stats.rejected_forged
                        + l.stats.rejected_replayed
                        + l.stats.rejected_malformed)
                        .to_string(),
                ),
            ];
            for (k, v) in rows {
                let _ = write!(page, "<tr><th>{k}</th><td>{}</td></tr>", html_escape(&v));
            }
        }
    }
    page.push_str("</table><h2>Requests still moving</h2><table id=\"requests\">");
    if by_state.is_empty() {
        page.push_str("<tr><td>none</td></tr>");
    }
    for (state, n) in &by_state {
        let _ = write!(page, "<tr><th>{}</th><td>{n}</td></tr>", state.as_str());
    }
    page.push_str("</table></body></html>\n");
    Ok(page)
}

/// The SVG timeline: hour ticks, one row per station with its windows, and the requests
/// waiting drawn at the pass expected to carry them.
fn timeline(rows: &[Row], now: u64, waiting: usize, expected_at: Option<u64>) -> String {
    let span = SPAN.as_secs() as f64;
    let x = |t: u64| LABELS + (t.saturating_sub(now) as f64 / span).min(1.0) * (WIDTH - LABELS);
    let height = 30.0 + ROW * rows.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">"
    );
    for h in 0..=24u64 {
        let tx = x(now + h * 3600);
        let _ = write!(
            svg,
            "<line x1=\"{tx:.1}\" y1=\"20\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            height - 25.0
        );
        if h % 3 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{tx:.1}\" y=\"14\" font-size=\"10\" text-anchor=\"middle\">+{h} h</text>"
            );
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let y = 24.0 + ROW * i as f64;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"12\" class=\"station\">{}</text>",
            y + ROW / 2.0 + 4.0,
            html_escape(&row.name)
        );
        for (start, end) in &row.windows {
            let (x0, x1) = (x(*start), x(*end));
            let _ = write!(
                svg,
                "<rect class=\"pass\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"#2a7ab0\"><title>{} to {}</title></rect>",
                y + 4.0,
                (x1 - x0).max(2.0),
                ROW - 8.0,
                format_utc(*start),
                format_utc(*end)
            );
        }
    }
    let base = 24.0 + ROW * rows.len() as f64 + 14.0;
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{base:.1}\" font-size=\"12\">waiting</text>"
    );
    if let (Some(at), true) = (expected_at, waiting > 0) {
        let qx = x(at);
        let _ = write!(
            svg,
            "<rect class=\"queue\" x=\"{qx:.1}\" y=\"{:.1}\" width=\"6\" height=\"12\" fill=\"#c0392b\"/>\
             <text x=\"{:.1}\" y=\"{base:.1}\" font-size=\"11\">{waiting} request(s) at the next pass</text>",
            base - 10.0,
            qx + 9.0
        );
    }
    svg.push_str("</svg>");
    svg
}
