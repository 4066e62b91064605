//! A Nostr relay (NIP-01 over WebSocket, NIP-11 relay information, NIP-40 expiration) on its
//! own port, so stock Electrum 4.6+ can be pointed at the bridge with its `nostr_relays`
//! setting.
//!
//! Events, ids, signatures and filters are the `nostr` crate's; this module is the relay:
//! it checks each `EVENT` (id, BIP-340 signature, size, time, expiration, rate) and answers
//! `OK`, stores what it accepts in redb (one write transaction per event, through the
//! bridge's group commit), answers `REQ` with the stored matches and `EOSE` and then with
//! live matches until `CLOSE`, and says what was wrong in `OK false` or `NOTICE`. Nothing
//! a client sends stops the relay from serving the others.
//!
//! Events are kept in memory too (ordered by time) for queries; redb is what survives a
//! restart. An [`EventHook`] (the satellite's Nostr identity) sees every accepted event.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter, JsonUtil, Timestamp};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::NostrConfig;
use crate::nostr_message::{self, closed, notice, ok, ClientMessage, DecodeLimits, MAX_SUB_ID};
use crate::store::{Store, StoreError};

/// Stored events: event id -> the event's JSON.
pub const NOSTR_EVENTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("nostr_events");

/// Decides what the relay stores and sees every event it accepts (after it is stored).
pub trait EventHook: Send + Sync {
    /// Whether the relay takes this event from a client at all (after its own checks); with
    /// no hook the relay takes nothing. Must not block.
    fn admit(&self, event: &Event) -> Result<(), Rejection>;
    /// Called once per new event, on the relay's runtime; must not block.
    fn on_event(&self, event: Arc<Event>);
    /// Whether the hook wants to hear when `event` reaches its recipient (the key in its
    /// first `p` tag) on a connection that proved that key (NIP-42); must not block.
    fn wants_receipt(&self, _event: &Event) -> bool {
        false
    }
    /// `event`, which the hook wanted a receipt for, reached its recipient; must not block.
    fn received(&self, _event: &Event) {}
}

/// Why an event was not accepted: the `OK false` message, with NIP-01's prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The event is malformed or fails a check.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The connection sent too much too fast.
    #[error("rate-limited: {0}")]
    RateLimited(String),
    /// The author may not publish this (NIP-01's `restricted:`).
    #[error("restricted: {0}")]
    Restricted(String),
    /// The relay does not carry this (NIP-01's `blocked:`).
    #[error("blocked: {0}")]
    Blocked(String),
    /// The relay failed to store it.
    #[error("error: {0}")]
    Error(String),
}

/// What accepting an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored (or, if ephemeral, passed on) for the first time.
    New,
    /// Already held.
    Duplicate,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

fn now() -> u64 {
    crate::service::unix_now()
}

/// Replaceable (kinds 0, 3, 10000-19999) and addressable (30000-39999) events replace the
/// older ones with the same key (NIP-01).
fn replace_key(e: &Event) -> Option<(String, u16, String)> {
    let kind = e.kind.as_u16();
    if e.kind.is_replaceable() {
        Some((e.pubkey.to_hex(), kind, String::new()))
    } else if e.kind.is_addressable() {
        Some((
            e.pubkey.to_hex(),
            kind,
            e.tags.identifier().unwrap_or_default().to_owned(),
        ))
    } else {
        None
    }
}

/// The events held, by time and by id, with the bytes each author holds.
#[derive(Default)]
struct Index {
    by_time: BTreeMap<(u64, [u8; 32]), Arc<Event>>,
    /// Event id -> (created_at, bytes of JSON).
    by_id: HashMap<[u8; 32], (u64, usize)>,
    /// Bytes of JSON held per author.
    by_author: HashMap<nostr::PublicKey, usize>,
    /// Bytes of JSON held in all.
    bytes: usize,
}

impl Index {
    fn insert(&mut self, e: Arc<Event>) {
        let id = e.id.to_bytes();
        if self.by_id.contains_key(&id) {
            return;
        }
        let t = e.created_at.as_secs();
        let size = e.as_json().len();
        self.by_id.insert(id, (t, size));
        *self.by_author.entry(e.pubkey).or_default() += size;
        self.bytes += size;
        self.by_time.insert((t, id), e);
    }
    fn remove(&mut self, id: &[u8; 32]) {
        if let Some((t, size)) = self.by_id.remove(id) {
            if let Some(e) = self.by_time.remove(&(t, *id)) {
                if let Some(held) = self.by_author.get_mut(&e.pubkey) {
                    *held = held.saturating_sub(size);
                    if *held == 0 {
                        self.by_author.remove(&e.pubkey);
                    }
                }
            }
            self.bytes = self.bytes.saturating_sub(size);
        }
    }
    /// Bytes of JSON `author` holds.
    fn held_by(&self, author: &nostr::PublicKey) -> usize {
        self.by_author.get(author).copied().unwrap_or(0)
    }
    fn replaced_by(&self, e: &Event) -> Vec<[u8; 32]> {
        let Some(key) = replace_key(e) else {
            return Vec::new();
        };
        self.by_time
            .values()
            .filter(|o| o.id != e.id && replace_key(o).as_ref() == Some(&key))
            .map(|o| o.id.to_bytes())
            .collect()
    }
}

/// The relay.
pub struct NostrRelay {
    config: NostrConfig,
    store: Store,
    index: RwLock<Index>,
    live: broadcast::Sender<Arc<Event>>,
    hook: OnceLock<Arc<dyn EventHook>>,
    /// Set when the serving task ends: open connections close.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Connections open, in all and per peer.
    admission: Arc<crate::admission::Admission>,
}

/// Tells open connections to close when the serving task is dropped (the bridge stops).
struct StopOnDrop(Arc<NostrRelay>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopped.send_replace(true);
    }
}

impl NostrRelay {
    /// Opens the relay on the bridge's store, loading the events it holds.
    pub async fn open(config: NostrConfig, store: Store) -> Result<Arc<NostrRelay>, StoreError> {
        store
            .write(|txn| {
                txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
                Ok(())
            })
            .await?;
        let events = store
            .read(|txn| {
                let t = txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
                let mut out = Vec::new();
                for row in t.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    match std::str::from_utf8(v.value()).map(Event::from_json) {
                        Ok(Ok(e)) => out.push(e),
                        _ => tracing::warn!("skipping an unreadable stored Nostr event"),
                    }
                }
                Ok(out)
            })
            .await?;
        let mut index = Index::default();
        for e in events {
            index.insert(Arc::new(e));
        }
        let (live, _) = broadcast::channel(1024);
        Ok(Arc::new(NostrRelay {
            store,
            index: RwLock::new(index),
            live,
            hook: OnceLock::new(),
            stopped: tokio::sync::watch::channel(false).0,
            admission: crate::admission::Admission::new(
                config.max_connections,
                config.max_connections_per_peer,
                ("nostr_connections", "nostr_connections_per_peer"),
            ),
            config,
        }))
    }

    /// Sets the hook that sees accepted events (once).
    pub fn set_hook(&self, hook: Arc<dyn EventHook>) {
        let _ = self.hook.set(hook);
    }

    /// Whether the relay holds event `id`.
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.index
            .read()
            .map(|i| i.by_id.contains_key(id))
            .unwrap_or(false)
    }

    /// Checks an event as a relay must, before it is stored.
    pub fn check(&self, e: &Event, json_len: usize) -> Result<(), Rejection> {
        if json_len > self.config.max_event_bytes {
            return Err(Rejection::Invalid(format!(
                "event is {json_len} bytes; the limit is {}",
                self.config.max_event_bytes
            )));
        }
        if !e.verify_id() {
            return Err(Rejection::Invalid(
                "event id does not match its content".into(),
            ));
        }
        if !e.verify_signature() {
            return Err(Rejection::Invalid("bad signature".into()));
        }
        let now = now();
        if e.created_at.as_secs() > now + self.config.max_future_secs {
            return Err(Rejection::Invalid(format!(
                "created_at is more than {} s in the future",
                self.config.max_future_secs
            )));
        }
        if e.is_expired_at(&Timestamp::from(now)) {
            return Err(Rejection::Invalid("event has expired (NIP-40)".into()));
        }
        Ok(())
    }

    /// Accepts an event from a client: checks, stores (one write transaction), passes it
    /// to live subscriptions and to the hook.
    pub async fn accept(&self, e: Event, json_len: usize) -> Result<Accepted, Rejection> {
        self.check(&e, json_len)?;
        match self.hook.get() {
            Some(hook) => hook.admit(&e)?,
            // A bridge with no satellite serves no one on its relay.
            None => {
                return Err(Rejection::Blocked(
                    "this bridge serves no satellite identity; its relay carries nothing".into(),
                ))
            }
        }
        let id = e.id.to_bytes();
        if self.contains(&id) {
            return Ok(Accepted::Duplicate);
        }
        let e = Arc::new(e);
        if !e.kind.is_ephemeral() {
            self.has_room_for(&e)?;
            // A replaceable event older than the one held is not stored.
            let (replaced, newer_held) = self
                .index
                .read()
                .map(|i| {
                    let replaced = i.replaced_by(&e);
                    let newer = replaced.iter().any(|r| {
                        i.by_id
                            .get(r)
                            .is_some_and(|(t, _)| *t > e.created_at.as_secs())
                    });
                    (replaced, newer)
                })
                .unwrap_or_default();
            if newer_held {
                return Ok(Accepted::Duplicate);
            }
            let stored = e.clone();
            let gone = replaced.clone();
            self.store
                .write(move |txn| {
                    let mut t = txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
                    for r in &gone {
                        t.remove(r).map_err(db_err)?;
                    }
                    drop(t);
                    Self::store_in(txn, &stored)
                })
                .await
                .map_err(|err| Rejection::Error(format!("could not store the event: {err}")))?;
            if let Ok(mut i) = self.index.write() {
                for r in &replaced {
                    i.remove(r);
                }
                i.insert(e.clone());
            }
        }
        let _ = self.live.send(e.clone());
        if let Some(hook) = self.hook.get() {
            hook.on_event(e);
        }
        Ok(Accepted::New)
    }

    /// Whether the relay may store `e` under its total and per-author storage caps (the
    /// bridge's own events are not held to them, but count).
    fn has_room_for(&self, e: &Event) -> Result<(), Rejection> {
        let size = e.as_json().len();
        let (total, author) = self
            .index
            .read()
            .map(|i| (i.bytes, i.held_by(&e.pubkey)))
            .unwrap_or_default();
        if author + size > self.config.max_stored_bytes_per_author {
            crate::metrics::limit_hit("nostr_stored_bytes_per_author");
            return Err(Rejection::RateLimited(format!(
                "this author holds {author} bytes of events; the limit is {} \
                 (nostr.max_stored_bytes_per_author): wait for older ones to expire",
                self.config.max_stored_bytes_per_author
            )));
        }
        if total + size > self.config.max_stored_bytes {
            crate::metrics::limit_hit("nostr_stored_bytes");
            return Err(Rejection::Error(format!(
                "the relay holds its limit of {} bytes (nostr.max_stored_bytes); try again later",
                self.config.max_stored_bytes
            )));
        }
        Ok(())
    }

    /// Bytes of events held, in all.
    pub fn stored_bytes(&self) -> usize {
        self.index.read().map(|i| i.bytes).unwrap_or(0)
    }

    /// Stores an event of the bridge's own inside `txn` (call [`Self::published`] after the
    /// commit).
    pub fn store_in(txn: &WriteTransaction, e: &Event) -> Result<(), StoreError> {
        let mut t = txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
        t.insert(&e.id.to_bytes(), e.as_json().as_bytes())
            .map_err(db_err)?;
        Ok(())
    }

    /// After the commit of [`Self::store_in`]: indexes the event and passes it to live
    /// subscriptions.
    pub fn published(&self, e: Event) {
        let e = Arc::new(e);
        if let Ok(mut i) = self.index.write() {
            i.insert(e.clone());
        }
        let _ = self.live.send(e);
    }

    /// Forgets an event of the bridge's own deleted inside a transaction (after its commit).
    pub fn forget(&self, id: &[u8; 32]) {
        if let Ok(mut i) = self.index.write() {
            i.remove(id);
        }
    }

    /// `e` went to `conn`: a receipt for the hook when `conn` proved the recipient's key, or
    /// once it does.
    fn sent(&self, conn: &mut Conn, e: &Arc<Event>) {
        let Some(hook) = self.hook.get() else { return };
        if !hook.wants_receipt(e) {
            return;
        }
        match e.tags.public_keys().next() {
            Some(to) if conn.authed.contains(to) => hook.received(e),
            Some(_) if conn.unconfirmed.len() < MAX_UNCONFIRMED => {
                conn.unconfirmed.push(e.clone());
            }
            _ => {}
        }
    }

    /// NIP-42: `event` answers `conn`'s challenge; receipts for what it was sent before.
    fn authenticate(&self, conn: &mut Conn, event: &Event) -> Value {
        let id = event.id.to_hex();
        match crate::nostr_auth::verify(event, &conn.challenge, now()) {
            Ok(key) => {
                conn.authed.insert(key);
                if let Some(hook) = self.hook.get() {
                    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut conn.unconfirmed)
                        .into_iter()
                        .partition(|e| e.tags.public_keys().next() == Some(&key));
                    conn.unconfirmed = rest;
                    for e in mine {
                        hook.received(&e);
                    }
                }
                json!(["OK", id, true, ""])
            }
            Err(why) => json!(["OK", id, false, why]),
        }
    }

    /// Stored events matching any of `filters`, newest first, each filter's `limit` capped.
    pub fn query(&self, filters: &[Filter]) -> Vec<Arc<Event>> {
        let now = Timestamp::from(now());
        let Ok(index) = self.index.read() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Event>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for f in filters {
            let limit = f
                .limit
                .unwrap_or(self.config.max_limit)
                .min(self.config.max_limit);
            let wanted = |e: &Arc<Event>| {
                !e.is_expired_at(&now) && f.match_event(e, MatchEventOptions::new())
            };
            let found: Vec<&Arc<Event>> = match &f.ids {
                // By id: look each up rather than scan.
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| {
                        let key = id.to_bytes();
                        let (t, _) = index.by_id.get(&key)?;
                        index.by_time.get(&(*t, key))
                    })
                    .filter(|e| wanted(e))
                    .take(limit)
                    .collect(),
                // Newest first, from `until` down to `since`.
                None => {
                    let upper = f.until.map_or(u64::MAX, |t| t.as_secs());
                    let lower = f.since.map_or(0, |t| t.as_secs());
                    index
                        .by_time
                        .range(..=(upper, [0xff; 32]))
                        .rev()
                        .map(|(_, e)| e)
                        .take_while(|e| e.created_at.as_secs() >= lower)
                        .filter(|e| wanted(e))
                        .take(limit)
                        .collect()
                }
            };
            for e in found {
                if seen.insert(e.id) {
                    out.push(e.clone());
                }
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        out
    }

    /// Drops expired events and those past the retention time; returns how many.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = now();
        let oldest = now.saturating_sub(self.config.retention_secs);
        let gone: Vec<[u8; 32]> = self
            .index
            .read()
            .map(|i| {
                i.by_time
                    .values()
                    .filter(|e| {
                        e.is_expired_at(&Timestamp::from(now))
                            || (e.tags.expiration().is_none() && e.created_at.as_secs() < oldest)
                    })
                    .map(|e| e.id.to_bytes())
                    .collect()
            })
            .unwrap_or_default();
        if gone.is_empty() {
            return Ok(0);
        }
        let ids = gone.clone();
        self.store
            .write(move |txn| {
                let mut t = txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
                for id in &ids {
                    t.remove(id).map_err(db_err)?;
                }
                Ok(())
            })
            .await?;
        if let Ok(mut i) = self.index.write() {
            for id in &gone {
                i.remove(id);
            }
        }
        Ok(gone.len())
    }

    /// NIP-11 relay information.
    pub fn info(&self) -> Value {
        json!({
            "name": "satcosign bridge",
            "description": "The satcosign bridge's relay: direct messages to the satellite \
                cosigner's Nostr identity enter its email-gated signing flow.",
            "supported_nips": [1, 4, 11, 40, 42],
            "software": "https://example.invalid/satcosign",
            "version": env!("CARGO_PKG_VERSION"),
            "limitation": {
                "max_message_length": self.config.max_message_bytes,
                "max_content_length": self.config.max_event_bytes,
                "max_subscriptions": self.config.max_subscriptions,
                "max_filters": self.config.max_filters,
                "max_limit": self.config.max_limit,
                "max_subid_length": MAX_SUB_ID,
                "created_at_upper_limit": self.config.max_future_secs,
                "auth_required": false,
                "payment_required": false,
            },
        })
    }

    /// Serves the relay on `listener` until the task is dropped (which closes every open
    /// connection); prunes every minute.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        rates: Arc<crate::read_rate::ReadRates>,
    ) {
        let _stop = StopOnDrop(self.clone());
        let pruner = self.clone();
        let prune = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match pruner.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "pruned expired Nostr events"),
                    Err(e) => tracing::error!(error = %e, "pruning Nostr events failed"),
                }
            }
        };
        tokio::select! {
            _ = prune => {}
            _ = self.clone().accept_loop(listener, rates) => {}
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        rates: Arc<crate::read_rate::ReadRates>,
    ) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "nostr accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match self.admission.admit(peer.ip()) {
                Ok(s) => Arc::new(s),
                // Refused: counted and logged by admission; the socket closes here.
                Err(_) => continue,
            };
            // Answers are small frames after large ones (EOSE after EVENT): no Nagle delay.
            let _ = stream.set_nodelay(true);
            let stream = rates.wrap(peer.ip(), stream);
            let relay = self.clone();
            let header_timeout = Duration::from_secs(self.config.header_timeout_secs);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let relay = relay.clone();
                    let slot = slot.clone();
                    async move { Ok::<_, std::convert::Infallible>(relay.http(req, peer, slot)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, error = %e, "nostr http connection ended");
                }
            });
        }
    }

    fn http(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
        slot: Arc<crate::admission::Admitted>,
    ) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase()
        };
        if header("upgrade") == "websocket" {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
            };
            let relay = self.clone();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        let ws_config = WebSocketConfig {
                            max_message_size: Some(relay.config.max_message_bytes),
                            max_frame_size: Some(relay.config.max_message_bytes),
                            ..Default::default()
                        };
                        let ws = WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            Some(ws_config),
                        )
                        .await;
                        // The connection's slot is held for as long as the WebSocket lives.
                        let _slot = slot;
                        relay.connection(ws, peer).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "websocket upgrade failed"),
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(Full::new(Bytes::new()))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"));
        }
        if header("accept").contains("application/nostr+json") {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/nostr+json")
                .header("access-control-allow-origin", "*")
                .header("access-control-allow-headers", "*")
                .header("access-control-allow-methods", "GET")
                .body(Full::new(Bytes::from(self.info().to_string())))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"));
        }
        plain(
            StatusCode::OK,
            "satcosign Nostr relay: connect with a WebSocket (NIP-01); \
             relay information with Accept: application/nostr+json (NIP-11)\n",
        )
    }

    async fn connection<S>(self: Arc<Self>, mut ws: WebSocketStream<S>, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut live = self.live.subscribe();
        let mut stopped = self.stopped.subscribe();
        if *stopped.borrow() {
            return;
        }
        let mut conn = Conn {
            subs: HashMap::new(),
            allowance: f64::from(self.config.messages_per_minute),
            last: Instant::now(),
            challenge: crate::nostr_auth::challenge(),
            authed: std::collections::HashSet::new(),
            unconfirmed: Vec::new(),
        };
        // NIP-42: the challenge goes first; a client may answer it at any time.
        let auth = json!(["AUTH", conn.challenge]).to_string();
        if ws.send(Message::text(auth)).await.is_err() {
            return;
        }
        let idle_for = Duration::from_secs(self.config.idle_timeout_secs);
        let idle = tokio::time::sleep(idle_for);
        tokio::pin!(idle);
        loop {
            let out: Vec<Value> = tokio::select! {
                () = &mut idle => {
                    crate::metrics::limit_hit("nostr_idle_timeout");
                    tracing::debug!(%peer, "nostr connection idle; closing");
                    break;
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_for);
                        self.on_text(&mut conn, &text).await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        vec![notice("invalid: binary messages are not Nostr; send JSON text")]
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings
                    Some(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "nostr connection failed");
                        let _ = ws
                            .send(Message::text(notice(&format!("error: {e}; closing")).to_string()))
                            .await;
                        break;
                    }
                },
                _ = stopped.changed() => break,
                ev = live.recv() => match ev {
                    Ok(e) => {
                        let out = conn.live_matches(&e);
                        if !out.is_empty() {
                            self.sent(&mut conn, &e);
                        }
                        out
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => vec![notice(&format!(
                        "error: {n} live events were dropped for this slow connection; REQ again"
                    ))],
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            for v in out {
                if ws.send(Message::text(v.to_string())).await.is_err() {
                    return;
                }
            }
        }
        let _ = ws.close(None).await;
    }

    /// Why a message over the per-connection rate was refused, naming the setting.
    fn rate_reason(&self) -> String {
        format!(
            "at most {} messages a minute on one connection (nostr.messages_per_minute)",
            self.config.messages_per_minute
        )
    }

    async fn on_text(&self, conn: &mut Conn, text: &str) -> Vec<Value> {
        let limits = DecodeLimits {
            max_event_bytes: self.config.max_event_bytes,
            max_filters: self.config.max_filters,
        };
        let message = match nostr_message::decode(text, &limits) {
            Ok(m) => m,
            Err(refusal) => return vec![refusal.to_value()],
        };
        match message {
            ClientMessage::Event { event, json_len } => {
                let id = event.id.to_hex();
                if !conn.take(f64::from(self.config.messages_per_minute)) {
                    return vec![ok(&id, Err(Rejection::RateLimited(self.rate_reason())))];
                }
                vec![ok(&id, self.accept(*event, json_len).await)]
            }
            ClientMessage::Req { sub, filters } => {
                if !conn.take(f64::from(self.config.messages_per_minute)) {
                    return vec![closed(
                        &sub,
                        &format!("rate-limited: {}", self.rate_reason()),
                    )];
                }
                if !conn.subs.contains_key(&sub) && conn.subs.len() >= self.config.max_subscriptions
                {
                    return vec![closed(
                        &sub,
                        &format!(
                            "blocked: at most {} subscriptions per connection",
                            self.config.max_subscriptions
                        ),
                    )];
                }
                let found = self.query(&filters);
                for e in &found {
                    self.sent(conn, e);
                }
                let mut out: Vec<Value> = found
                    .iter()
                    .map(|e| json!(["EVENT", sub, e.as_ref()]))
                    .collect();
                out.push(json!(["EOSE", sub]));
                conn.subs.insert(sub, filters);
                out
            }
            ClientMessage::Close { sub } => {
                conn.subs.remove(&sub);
                Vec::new()
            }
            ClientMessage::Auth { event } => {
                if !conn.take(f64::from(self.config.messages_per_minute)) {
                    return vec![ok(
                        &event.id.to_hex(),
                        Err(Rejection::RateLimited(self.rate_reason())),
                    )];
                }
                vec![self.authenticate(conn, &event)]
            }
        }
    }
}

struct Conn {
    subs: HashMap<String, Vec<Filter>>,
    allowance: f64,
    last: Instant,
    /// NIP-42: the challenge sent when the connection opened, and the keys proved since.
    challenge: String,
    authed: std::collections::HashSet<nostr::PublicKey>,
    /// Events sent that the hook wants a receipt for, before their recipient proved its key.
    unconfirmed: Vec<Arc<Event>>,
}

/// Most events a connection holds for receipts until it authenticates.
const MAX_UNCONFIRMED: usize = 256;

impl Conn {
    /// A token bucket of `per_minute` messages.
    fn take(&mut self, per_minute: f64) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.allowance = (self.allowance + elapsed * per_minute / 60.0).min(per_minute);
        if self.allowance < 1.0 {
            return false;
        }
        self.allowance -= 1.0;
        true
    }

    fn live_matches(&self, e: &Event) -> Vec<Value> {
        self.subs
            .iter()
            .filter(|(_, filters)| {
                filters
                    .iter()
                    .any(|f| f.match_event(e, MatchEventOptions::new()))
            })
            .map(|(sub, _)| json!(["EVENT", sub, e]))
            .collect()
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}
