//! A Nostr relay (NIP-01 over WebSocket, NIP-11 relay information, NIP-40 expiration, NIP-42
//! authentication) on its
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
//! This file is the relay's store and rules; `connection` is its listener and each
//! WebSocket's life (NIP-42 included).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter, JsonUtil, Timestamp};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::config::NostrConfig;
use crate::nostr_message::MAX_SUB_ID;
use crate::store::{Store, StoreError};

mod connection;

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
    /// The other replicas on the database (PostgreSQL), told of every event stored.
    peers: OnceLock<Arc<crate::peers::Peers>>,
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
            peers: OnceLock::new(),
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
            self.tell(crate::peers::Heard::NostrStored(id));
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
        self.tell(crate::peers::Heard::NostrStored(e.id.to_bytes()));
        self.show(Arc::new(e));
    }

    /// Indexes `e` (in place of the events it replaces) and passes it to live subscriptions.
    fn show(&self, e: Arc<Event>) {
        if let Ok(mut i) = self.index.write() {
            for r in i.replaced_by(&e) {
                i.remove(&r);
            }
            i.insert(e.clone());
        }
        let _ = self.live.send(e);
    }

    /// Forgets an event of the bridge's own deleted inside a transaction (after its commit).
    pub fn forget(&self, id: &[u8; 32]) {
        self.tell(crate::peers::Heard::NostrGone(*id));
        self.unindex(id);
    }

    fn unindex(&self, id: &[u8; 32]) {
        if let Ok(mut i) = self.index.write() {
            i.remove(id);
        }
    }

    /// Tells the other replicas on the database of every event this relay stores.
    pub fn tell_peers(&self, peers: Arc<crate::peers::Peers>) {
        let _ = self.peers.set(peers);
    }

    fn tell(&self, heard: crate::peers::Heard) {
        if let Some(peers) = self.peers.get() {
            peers.tell(heard);
        }
    }

    /// Another replica stored event `id`: reads it, then shows it here as if stored here
    /// (the hook does not see it: the replica that took it did).
    pub async fn mirror(&self, id: [u8; 32]) {
        if self.contains(&id) {
            return;
        }
        let read = self
            .store
            .read(move |txn| {
                let t = txn.open_table(NOSTR_EVENTS).map_err(db_err)?;
                Ok(t.get(&id).map_err(db_err)?.map(|v| v.value().to_vec()))
            })
            .await;
        match read {
            Ok(Some(json)) => match std::str::from_utf8(&json).map(Event::from_json) {
                Ok(Ok(e)) => self.show(Arc::new(e)),
                _ => tracing::warn!("skipping an unreadable stored Nostr event"),
            },
            // Deleted again meanwhile.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a Nostr event another replica stored")
            }
        }
    }

    /// Another replica deleted event `id`.
    pub fn mirror_gone(&self, id: &[u8; 32]) {
        self.unindex(id);
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
}
