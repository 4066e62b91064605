//! `GET /metrics` on the HTTP port: the bridge's state in Prometheus' text format (0.0.4),
//! for the operator's monitoring and alerting (a link that stays down, a queue that grows,
//! mail that fails).
//!
//! Counters count events since the process started (Prometheus copes with restarts);
//! gauges are read at scrape time from redb and the link. Only counts and states are
//! shown: no request or wallet ids, keys, addresses or emails.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::store::tables::ReadableTable;

use crate::rpc::LinkStatusFn;
use crate::service::Service;
use crate::state::{
    db_err, from_bytes, RequestRecord, State, WalletRecord, WalletState, ACTIVE, ALL_STATES,
    REQUESTS, WALLETS,
};
use crate::store::StoreError;
use crate::watch::{ChainStatus, Watch, WATCHES};

/// Events counted since start.
#[derive(Default)]
pub struct Counters {
    transitions: [AtomicU64; ALL_STATES.len()],
    emails_sent: AtomicU64,
    email_failures: AtomicU64,
    broadcasts: AtomicU64,
    broadcast_failures: AtomicU64,
    bad_answers: AtomicU64,
}

impl Counters {
    /// A request entered `state`.
    pub fn transition(&self, state: State) {
        if let Some(i) = ALL_STATES.iter().position(|s| *s == state) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An email was sent (`ok`) or could not be.
    pub fn email(&self, ok: bool) {
        let c = if ok {
            &self.emails_sent
        } else {
            &self.email_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction was broadcast (`ok`), or the upstream server refused or failed it.
    pub fn broadcast(&self, ok: bool) {
        let c = if ok {
            &self.broadcasts
        } else {
            &self.broadcast_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The satellite's answer to a request was refused (`bad_answer`): a signature that
    /// does not verify, another transaction, an answer of the wrong kind.
    pub fn bad_answer(&self) {
        self.bad_answers.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every limit that can be hit, by name, as `/metrics` labels it.
pub const LIMITS: [&str; 17] = [
    "electrum_connections",
    "electrum_connections_per_peer",
    "electrum_unsent_bytes",
    "electrum_push_dropped",
    "electrum_response_bytes",
    "electrum_subscriptions",
    "http_connections",
    "http_connections_per_peer",
    "nostr_connections",
    "nostr_connections_per_peer",
    "nostr_idle_timeout",
    "nostr_stored_bytes",
    "nostr_stored_bytes_per_author",
    "mailbox_bytes",
    "mailbox_puts_per_peer",
    "mailbox_put_bytes_per_peer",
    "read_bytes_per_peer",
];

static LIMIT_HITS: [AtomicU64; LIMITS.len()] = [const { AtomicU64::new(0) }; LIMITS.len()];

/// Counts a hit of the limit `name` (one of [`LIMITS`]) for `/metrics`.
pub fn limit_hit(name: &str) {
    if let Some(i) = LIMITS.iter().position(|l| *l == name) {
        LIMIT_HITS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Hits of the limit `name` since start.
pub fn limit_hits(name: &str) -> u64 {
    LIMITS
        .iter()
        .position(|l| *l == name)
        .map_or(0, |i| LIMIT_HITS[i].load(Ordering::Relaxed))
}

/// What a scrape reads.
#[derive(Clone, Default)]
pub struct Source {
    /// The signing service (absent on a mailbox-only bridge).
    pub service: Option<Arc<Service>>,
    /// The satellite link's status.
    pub link_status: Option<LinkStatusFn>,
    /// The passes predicted from the orbit, when configured.
    pub passes: Option<Arc<crate::passes::PassPlan>>,
}

/// Prometheus text, one family at a time.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            // Label values are escaped as the exposition format says (\\, \", \n).
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Counts read from redb at scrape time.
struct Stored {
    active: Vec<(State, u64)>,
    wallets: [u64; 3],
    chain: [u64; 4],
}

fn chain_index(s: ChainStatus) -> usize {
    match s {
        ChainStatus::Broadcast => 0,
        ChainStatus::Mempool => 1,
        ChainStatus::Confirmed { .. } => 2,
        ChainStatus::NotSeen => 3,
    }
}

async fn stored(service: &Service) -> Result<Stored, StoreError> {
    service
        .store
        .read(|txn| {
            let requests = txn.open_table(REQUESTS).map_err(db_err)?;
            let mut by_state = [0u64; ALL_STATES.len()];
            for row in txn
                .open_table(ACTIVE)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, _) = row.map_err(db_err)?;
                if let Some(v) = requests.get(k.value()).map_err(db_err)? {
                    let r: RequestRecord = from_bytes(v.value())?;
                    if let Some(i) = ALL_STATES.iter().position(|s| *s == r.state) {
                        by_state[i] += 1;
                    }
                }
            }
            let mut wallets = [0u64; 3];
            for row in txn
                .open_table(WALLETS)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (_, v) = row.map_err(db_err)?;
                let w: WalletRecord = from_bytes(v.value())?;
                wallets[match w.state {
                    WalletState::Pending => 0,
                    WalletState::Active => 1,
                    WalletState::Refused => 2,
                }] += 1;
            }
            let mut chain = [0u64; 4];
            for row in txn
                .open_table(WATCHES)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (_, v) = row.map_err(db_err)?;
                let w: Watch = from_bytes(v.value())?;
                if !w.done {
                    chain[chain_index(w.status)] += 1;
                }
            }
            Ok(Stored {
                active: ALL_STATES
                    .iter()
                    .zip(by_state)
                    .filter(|(s, _)| !s.is_final())
                    .map(|(s, n)| (*s, n))
                    .collect(),
                wallets,
                chain,
            })
        })
        .await
}

/// The whole page.
pub async fn render(source: &Source) -> Result<String, StoreError> {
    let mut t = Text(String::new());
    t.family(
        "satcosign_build_info",
        "gauge",
        "The bridge's version (always 1).",
    );
    t.sample(
        "satcosign_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    t.family(
        "satcosign_limit_hits_total",
        "counter",
        "Times a resource limit refused or held back a client, by limit.",
    );
    for name in LIMITS {
        t.sample(
            "satcosign_limit_hits_total",
            &[("limit", name)],
            limit_hits(name),
        );
    }
    if let Some(service) = &source.service {
        let c = &service.counters;
        t.family(
            "satcosign_request_transitions_total",
            "counter",
            "Requests that entered each state since start.",
        );
        for (s, n) in ALL_STATES.iter().zip(&c.transitions) {
            t.sample(
                "satcosign_request_transitions_total",
                &[("state", s.as_str())],
                n.load(Ordering::Relaxed),
            );
        }
        let stored = stored(service).await?;
        t.family(
            "satcosign_requests_active",
            "gauge",
            "Requests not yet delivered, by state.",
        );
        for (s, n) in &stored.active {
            t.sample("satcosign_requests_active", &[("state", s.as_str())], n);
        }
        t.family(
            "satcosign_wallets",
            "gauge",
            "Registered wallets, by state.",
        );
        for (name, n) in ["pending", "active", "refused"].iter().zip(stored.wallets) {
            t.sample("satcosign_wallets", &[("state", name)], n);
        }
        t.family(
            "satcosign_transactions_watched",
            "gauge",
            "Broadcast transactions still watched, by where the upstream server last saw them.",
        );
        for (name, n) in ["broadcast", "mempool", "confirmed", "not_seen"]
            .iter()
            .zip(stored.chain)
        {
            t.sample("satcosign_transactions_watched", &[("status", name)], n);
        }
        t.one(
            "satcosign_emails_sent_total",
            "counter",
            "Emails handed to the mail server (or written) since start.",
            c.emails_sent.load(Ordering::Relaxed),
        );
        t.one(
            "satcosign_email_failures_total",
            "counter",
            "Emails that could not be sent since start (each is retried).",
            c.email_failures.load(Ordering::Relaxed),
        );
        t.one(
            "satcosign_broadcasts_total",
            "counter",
            "Final transactions the upstream server accepted since start.",
            c.broadcasts.load(Ordering::Relaxed),
        );
        t.one(
            "satcosign_broadcast_failures_total",
            "counter",
            "Broadcasts the upstream server refused or failed since start.",
            c.broadcast_failures.load(Ordering::Relaxed),
        );
        t.one(
            "satcosign_bad_answers_total",
            "counter",
            "Satellite answers refused as bad_answer since start (a signature that does not \
             verify, another transaction, an answer of the wrong kind).",
            c.bad_answers.load(Ordering::Relaxed),
        );
    }
    if let Some(status) = &source.link_status {
        let l = status();
        t.one(
            "satcosign_link_in_view",
            "gauge",
            "1 while the satellite is in view by the pass schedule (always 1 without one).",
            u8::from(l.in_view),
        );
        if let Some(heard) = l.peer_heard_at {
            t.one(
                "satcosign_link_peer_heard_timestamp_seconds",
                "gauge",
                "When a frame of the satellite was last heard, unix seconds.",
                crate::rpc_signing::unix(heard),
            );
        }
        t.one(
            "satcosign_link_queue_depth",
            "gauge",
            "Messages queued for the satellite and not yet acknowledged.",
            l.queue_depth,
        );
        t.family(
            "satcosign_link_head_state",
            "gauge",
            "1 for what the oldest queued message waits for (all 0: the queue is empty).",
        );
        for state in [
            satcosign_link::engine::HeadState::WaitingForPass,
            satcosign_link::engine::HeadState::Sending,
            satcosign_link::engine::HeadState::AwaitingAck,
        ] {
            t.sample(
                "satcosign_link_head_state",
                &[("state", state.as_str())],
                u8::from(l.head.is_some_and(|h| h.state == state)),
            );
        }
        if let Some(p) = l.current_pass {
            t.one(
                "satcosign_link_current_pass_end_seconds",
                "gauge",
                "Loss of signal of the pass in progress, unix seconds.",
                crate::rpc_signing::unix(p.end),
            );
        }
        if let Some(p) = l.next_pass {
            t.one(
                "satcosign_link_next_pass_start_seconds",
                "gauge",
                "Start of the next pass that has not begun, unix seconds.",
                crate::rpc_signing::unix(p.start),
            );
        }
        let s = &l.stats;
        for (name, help, v) in [
            (
                "satcosign_link_transmissions_total",
                "Transmissions (each costs a preamble).",
                s.transmissions,
            ),
            (
                "satcosign_link_frames_sent_total",
                "Frames sent.",
                s.frames_sent,
            ),
            (
                "satcosign_link_bytes_sent_total",
                "Bytes sent.",
                s.bytes_sent,
            ),
            (
                "satcosign_link_frames_resent_total",
                "Data frames sent again.",
                s.frames_resent,
            ),
            (
                "satcosign_link_frames_received_total",
                "Frames received and accepted.",
                s.frames_received,
            ),
            (
                "satcosign_link_bytes_received_total",
                "Bytes received in accepted frames.",
                s.bytes_received,
            ),
            (
                "satcosign_link_messages_delivered_total",
                "Messages from the satellite delivered to the bridge.",
                s.messages_delivered,
            ),
            (
                "satcosign_link_messages_acknowledged_total",
                "Messages the satellite acknowledged.",
                s.messages_acknowledged,
            ),
        ] {
            t.one(name, "counter", help, v);
        }
        t.family(
            "satcosign_link_frames_rejected_total",
            "counter",
            "Frames rejected, by reason.",
        );
        for (reason, v) in [
            ("damaged", s.rejected_damaged),
            ("forged", s.rejected_forged),
            ("replayed", s.rejected_replayed),
            ("malformed", s.rejected_malformed),
        ] {
            t.sample(
                "satcosign_link_frames_rejected_total",
                &[("reason", reason)],
                v,
            );
        }
    }
    if let Some(plan) = &source.passes {
        let now = std::time::SystemTime::now();
        t.one(
            "satcosign_orbit_elements_age_seconds",
            "gauge",
            "Age of the satellite's element set the passes are predicted from.",
            plan.age(now).as_secs(),
        );
        t.one(
            "satcosign_orbit_elements_stale",
            "gauge",
            "1 when the element set is older than satellite.orbit.max_element_age_days.",
            u8::from(plan.stale(now)),
        );
        if let Some(radios) = plan.radios() {
            let stations = radios.stats();
            type Field = fn(&satcosign_link::transport::stations::StationStats) -> u64;
            let families: [(&str, &str, &str, Field); 7] = [
                (
                    "satcosign_station_transmissions_total",
                    "counter",
                    "Transmissions sent through each ground station.",
                    |s| s.transmissions,
                ),
                (
                    "satcosign_station_frames_sent_total",
                    "counter",
                    "Link frames sent through each ground station.",
                    |s| s.frames_sent,
                ),
                (
                    "satcosign_station_bytes_sent_total",
                    "counter",
                    "Bytes sent through each ground station.",
                    |s| s.bytes_sent,
                ),
                (
                    "satcosign_station_frames_heard_total",
                    "counter",
                    "Frames heard through each ground station, before the link checks them.",
                    |s| s.frames_heard,
                ),
                (
                    "satcosign_station_transmit_errors_total",
                    "counter",
                    "Transmissions each ground station's transport failed to take.",
                    |s| s.transmit_errors,
                ),
                (
                    "satcosign_station_up",
                    "gauge",
                    "1 while the ground station's transport works.",
                    |s| u64::from(s.up),
                ),
                (
                    "satcosign_station_carrying",
                    "gauge",
                    "1 for the ground station the link sends through now.",
                    |s| u64::from(s.carrying),
                ),
            ];
            for (name, kind, help, value) in families {
                t.family(name, kind, help);
                for s in &stations {
                    t.sample(
                        name,
                        &[("station", &s.name), ("transport", &s.transport)],
                        value(s),
                    );
                }
            }
        }
    }
    Ok(t.0)
}
