//! The relay's side of its connections: the HTTP listener (NIP-11 information, the
//! WebSocket upgrade, caps per peer), and each WebSocket's life: the NIP-42 challenge first,
//! then every client message answered (`EVENT`, `REQ`, `CLOSE`, `AUTH`), live events passed
//! to matching subscriptions, receipts for the [`EventHook`](super::EventHook) once the
//! recipient proved its key, and the connection closed when idle or when the relay stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{now, NostrRelay, Rejection, StopOnDrop};
use crate::nostr_message::{self, closed, notice, ok, ClientMessage, DecodeLimits};

impl NostrRelay {
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
            Ok(key) if !conn.authed.contains(&key) && conn.authed.len() >= MAX_AUTHED => json!([
                "OK",
                id,
                false,
                format!("blocked: a connection proves at most {MAX_AUTHED} keys")
            ]),
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
/// Most keys one connection may prove (a wallet's client proves one).
const MAX_AUTHED: usize = 16;

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
