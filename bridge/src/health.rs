//! `GET /health`: what a supervisor or an operator needs to know, part by part.
//!
//! Three parts can fail on their own while the HTTP port still answers: the database
//! writer (a commit that fails, or a PostgreSQL server that does not answer: it is asked at
//! every `/health`), the link task (its store or transport gave up), and the
//! upstream Electrum server (unreachable); and the satellite's elements can grow stale.
//! Each is reported with its state. The answer is `503` when the bridge cannot do its work
//! (the writer or the link is down: a restart is what helps), and `200` with
//! `"status": "degraded"` when only the upstream server is unreachable or the elements are
//! stale (a restart would not help: requests wait, or passes come from an old orbit).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::rpc::LinkStatusFn;
use crate::store::Store;
use crate::upstream::Upstream;

/// What `/health` looks at.
#[derive(Clone)]
pub struct HealthSources {
    /// The bridge's database.
    pub store: Store,
    /// The satellite link's status, when the bridge has one.
    pub link: Option<LinkStatusFn>,
    /// Whether this bridge drives the ground (a standby replica's link is not running, and
    /// that is no failure).
    pub ground: Option<std::sync::Arc<crate::ground::Ground>>,
    /// The upstream Electrum server, when configured.
    pub upstream: Option<Arc<dyn Upstream>>,
    /// The passes predicted from the orbit, when configured.
    pub passes: Option<Arc<crate::passes::PassPlan>>,
}

/// Overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything works.
    Ok,
    /// Works, but something outside the bridge is missing (the upstream server).
    Degraded,
    /// Cannot do its work: restart it.
    Failing,
}

impl Verdict {
    /// The name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Degraded => "degraded",
            Verdict::Failing => "failing",
        }
    }
}

/// The report: the verdict and the JSON body (`status`, `server_version`, `writer`,
/// `link`, `upstream`).
pub fn report(sources: &HealthSources, now: u64) -> (Verdict, Value) {
    let mut verdict = Verdict::Ok;
    let writer = sources.store.writer_health();
    let engine = sources.store.engine_name();
    let writer_state = match (engine, writer.running, &writer.last_error) {
        // PostgreSQL down: every request waits (its steps retry) until it is back.
        ("postgres", false, _) => "unreachable",
        (_, false, _) => "stopped",
        (_, true, Some(_)) => "failing",
        (_, true, None) => "ok",
    };
    if writer_state != "ok" {
        verdict = Verdict::Failing;
    }
    let standby = sources.ground.as_ref().is_some_and(|g| !g.holds());
    let link = match &sources.link {
        None => json!({"state": "absent"}),
        // Another replica drives the link; this one serves clients.
        Some(_) if standby => json!({"state": "standby"}),
        Some(status) => {
            let s = status();
            if !s.running {
                verdict = Verdict::Failing;
            }
            let secs_ago = |t: std::time::SystemTime| {
                std::time::SystemTime::now()
                    .duration_since(t)
                    .map_or(0, |d| d.as_secs())
            };
            json!({
                "state": if s.running { "running" } else { "stopped" },
                "in_view": s.in_view,
                "queue_depth": s.queue_depth,
                "peer_heard_secs_ago": s.peer_heard_at.map(secs_ago),
            })
        }
    };
    let upstream = match &sources.upstream {
        None => json!({"state": "absent"}),
        Some(up) => {
            let s = up.state();
            let state = match (&s.last_error, s.last_ok_at) {
                (Some(_), _) => "unreachable",
                (None, Some(_)) => "connected",
                (None, None) => "unknown",
            };
            if state == "unreachable" && verdict == Verdict::Ok {
                verdict = Verdict::Degraded;
            }
            json!({
                "state": state,
                "last_ok_secs_ago": s.last_ok_at.map(|t| now.saturating_sub(t)),
                "last_error": s.last_error,
            })
        }
    };
    let orbit = match &sources.passes {
        None => json!({"state": "absent"}),
        Some(plan) => {
            let now = std::time::SystemTime::now();
            let stale = plan.stale(now);
            if stale && verdict == Verdict::Ok {
                verdict = Verdict::Degraded;
            }
            // Stations with their own radio whose transport is down (a TNC not connected):
            // the link still works through the others, so the bridge is degraded, not down.
            let down: Vec<String> = plan
                .radios()
                .map(|r| r.stats())
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.up)
                .map(|s| s.name)
                .collect();
            if !down.is_empty() && verdict == Verdict::Ok {
                verdict = Verdict::Degraded;
            }
            json!({
                "state": if stale { "stale" } else { "fresh" },
                "elements_age_secs": plan.age(now).as_secs(),
                "stations_down": down,
            })
        }
    };
    let body = json!({
        "status": verdict.as_str(),
        "server_version": crate::rpc::SERVER_VERSION,
        "writer": {
            "engine": engine,
            "state": writer_state,
            "failed_batches": writer.failed_batches,
            "last_error": writer.last_error,
        },
        "link": link,
        "upstream": upstream,
        "orbit": orbit,
    });
    (verdict, body)
}
