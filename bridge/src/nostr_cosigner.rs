//! The satellite's Nostr identities: stock Electrum 4.6+ co-signing with no plugin.
//!
//! Electrum's `psbt_nostr` gives every keystore a Nostr key derived from its xpub string
//! alone, `sha256("nostr_psbt:" + xpub)` with the xpub as Electrum shows it (`Vpub...`,
//! `Zpub...`), and sends a PSBT to each cosigner as a NIP-04 direct message (kind 4, content
//! `{"tx": <PSBT hex>}`, tagged `p` and NIP-40 `expiration`). Each wallet has its own
//! satellite key ([`crate::wallet_keys`]), known only to its members and the bridge, so the
//! satellite has one private identity per wallet: a direct message to it, from another key
//! of that wallet, enters the same email-gated flow as a `cosigner.put`, and the outcome
//! goes back from that identity: the PSBT with the satellite's signature, or a refusal in
//! words.
//!
//! The relay takes from clients no event signed by a satellite identity (only the bridge
//! speaks for the satellite: `restricted:`), and nothing but direct messages from a
//! registered wallet's member to a satellite identity or another member (`blocked:`): a
//! stranger can store nothing on it.
//!
//! Where a request came from is recorded in the transaction that opens it, and each
//! message is marked handled in the transaction that records its answer, so a crash
//! neither loses a message nor answers one twice. Messages from authors that are not a
//! registered wallet's other keys are ignored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};

use crate::store::tables::{ReadableTable, TableDefinition};
use nostr::nips::nip04;
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, PublicKey, Tag, Timestamp};
use tokio::sync::mpsc;

use crate::mailbox::Keyhash;
use crate::nostr_relay::{EventHook, NostrRelay, Rejection};
use crate::service::{Service, ServiceError};
use crate::state::{Action, Outcome, RequestRecord, State};
use crate::store::StoreError;
use crate::wallet_keys::nostr_identities;
use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::wallet::WalletId;

/// Requests that came by Nostr: request id -> event id (32 bytes), author (32 bytes) and
/// the satellite identity it was sent to (32 bytes).
pub const NOSTR_ORIGINS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("nostr_origins");
/// Direct messages answered or turned into a request: event id -> request id (zeros when
/// answered without one).
pub const NOSTR_HANDLED: TableDefinition<&[u8; 32], &[u8; 16]> =
    TableDefinition::new("nostr_handled");

/// How long answers stay on the relay (Electrum's `KEEP_DELAY`).
const KEEP_SECS: u64 = 24 * 3600;

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

pub use crate::wallet_keys::keys_for;

/// The satellite's identities on the bridge's relay.
pub struct NostrCosigner {
    service: Weak<Service>,
    // Weak: the relay holds this as its hook.
    relay: Weak<NostrRelay>,
    /// Every issued key's identities, to the key's keyhash.
    satellites: RwLock<HashMap<PublicKey, Keyhash>>,
    /// The identities of registered wallets' members (their keys other than the satellite's).
    members: RwLock<HashSet<PublicKey>>,
    queue: mpsc::UnboundedSender<Arc<Event>>,
    /// The copies of answers kept for wallets that have not fetched them
    /// ([`crate::nostr_keep`]): event id -> request.
    kept: RwLock<HashMap<[u8; 32], RequestId>>,
    /// Copies sent to a subscription, to record.
    fetched: mpsc::UnboundedSender<(RequestId, [u8; 32])>,
    /// `SATCOSIGN_TEST_HOLD_AT=nostr_event`: freeze after a message is stored and before it
    /// becomes a request, so the crash test can kill the bridge there.
    hold: bool,
}

impl EventHook for NostrCosigner {
    /// The relay keeps only what the service needs: direct messages (kind 4) from a
    /// registered wallet's member to a satellite identity or another member. The bridge
    /// publishes the satellite's answers itself.
    fn admit(&self, e: &Event) -> Result<(), Rejection> {
        let satellites = self.satellites.read().unwrap_or_else(|p| p.into_inner());
        if satellites.contains_key(&e.pubkey) {
            return Err(Rejection::Restricted(
                "this key is a satellite identity; only the bridge publishes for it".into(),
            ));
        }
        if e.kind != Kind::EncryptedDirectMessage {
            return Err(Rejection::Blocked(format!(
                "this relay carries only direct messages (kind 4) of satcosign wallets, not kind {}",
                e.kind.as_u16()
            )));
        }
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        if !members.contains(&e.pubkey) {
            return Err(Rejection::Blocked(
                "the author is no key of a wallet registered with this bridge; register the \
                 wallet first"
                    .into(),
            ));
        }
        if !e
            .tags
            .public_keys()
            .any(|p| satellites.contains_key(p) || members.contains(p))
        {
            return Err(Rejection::Blocked(
                "the message is to no key of a wallet this bridge serves".into(),
            ));
        }
        Ok(())
    }

    fn on_event(&self, e: Arc<Event>) {
        if self.addressed_to_us(&e) {
            let _ = self.queue.send(e);
        }
    }

    /// Kept answers are the events whose receipt counts ([`crate::nostr_keep`]).
    fn wants_receipt(&self, e: &Event) -> bool {
        self.kept
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&e.id.to_bytes())
    }

    /// A kept answer reached a connection that proved its wallet's key: the wallet has it,
    /// and no fresh copy is made.
    fn received(&self, e: &Event) {
        let id = e.id.to_bytes();
        let request = self
            .kept
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(request) = request {
            let _ = self.fetched.send((request, id));
        }
    }
}

impl NostrCosigner {
    /// Starts the identity: hooks it to the relay and to delivery, and handles stored
    /// messages that were not handled before a restart.
    pub async fn start(
        service: &Arc<Service>,
        relay: Arc<NostrRelay>,
    ) -> Result<Arc<NostrCosigner>, StoreError> {
        service
            .store
            .write(|txn| {
                txn.open_table(NOSTR_ORIGINS).map_err(db_err)?;
                txn.open_table(NOSTR_HANDLED).map_err(db_err)?;
                Ok(())
            })
            .await?;
        let (queue, mut rx) = mpsc::unbounded_channel();
        let satellites = crate::wallet_keys::satellite_identities(&service.store).await?;
        service
            .store
            .write(|txn| {
                txn.open_table(crate::nostr_keep::NOSTR_KEPT)
                    .map_err(db_err)?;
                Ok(())
            })
            .await?;
        let kept = crate::nostr_keep::all(service)
            .await?
            .into_iter()
            .filter(|(_, k)| !k.delivered)
            .map(|(id, k)| (k.event, id))
            .collect();
        let (fetched, mut fetched_rx) = mpsc::unbounded_channel();
        let me = Arc::new(NostrCosigner {
            service: Arc::downgrade(service),
            relay: Arc::downgrade(&relay),
            satellites: RwLock::new(satellites),
            members: RwLock::new(HashSet::new()),
            queue,
            kept: RwLock::new(kept),
            fetched,
            hold: std::env::var("SATCOSIGN_TEST_HOLD_AT").is_ok_and(|v| v == "nostr_event"),
        });
        let wallets = service
            .wallets()
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        for (_, wallet) in &wallets {
            me.serve_members(wallet);
        }
        tracing::info!(
            identities = me.satellites.read().map(|s| s.len()).unwrap_or(0),
            "the satellite's Nostr identities"
        );
        relay.set_hook(me.clone());
        let _ = service.nostr.set(me.clone());
        let worker = Arc::downgrade(&me);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(me) = worker.upgrade() else { return };
                if let Err(err) = me.handle(&e).await {
                    tracing::error!(event = %e.id, error = %err, "a direct message to the satellite failed; it is retried at the next start");
                }
            }
        });
        // Kept answers: record fetches, renew the copies about to leave Electrum's window.
        let recorder = Arc::downgrade(service);
        tokio::spawn(async move {
            while let Some((request, event)) = fetched_rx.recv().await {
                let Some(service) = recorder.upgrade() else {
                    return;
                };
                if let Err(e) = crate::nostr_keep::mark_delivered(&service, request, event).await {
                    tracing::warn!(%request, error = %e, "could not record that an answer was fetched; it may be renewed once more");
                }
            }
        });
        let keeper = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::nostr_keep::SWEEP_EVERY);
            loop {
                every.tick().await;
                let Some(me) = keeper.upgrade() else { return };
                if let Err(e) = me.keep_answers().await {
                    tracing::warn!(error = %e, "renewing kept answers failed; tried again later");
                }
            }
        });
        // Messages stored but not handled before a restart.
        let mut pending: Vec<Arc<Event>> = relay
            .query(&[nostr::Filter::new().kind(Kind::EncryptedDirectMessage)])
            .into_iter()
            .filter(|e| me.addressed_to_us(e))
            .collect();
        pending.reverse();
        for e in pending {
            let _ = me.queue.send(e);
        }
        Ok(me)
    }

    /// Serves a newly issued key's identities.
    pub fn serve_key(&self, key: &satcosign_cosigner::keys::AccountKey) {
        let keyhash = crate::mailbox::keyhash_of(&key.xpub.public_key);
        let mut satellites = self.satellites.write().unwrap_or_else(|p| p.into_inner());
        for k in nostr_identities(&key.xpub) {
            satellites.insert(k.public_key(), keyhash);
        }
    }

    /// Serves the keys and wallets another replica issued and registered since this one
    /// started (it was told by [`crate::peers`]).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let Some(service) = self.service.upgrade() else {
            return Ok(());
        };
        let satellites = crate::wallet_keys::satellite_identities(&service.store).await?;
        self.satellites
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(satellites);
        let wallets = service
            .wallets()
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        for (_, wallet) in &wallets {
            self.serve_members(wallet);
        }
        Ok(())
    }

    /// Serves a registered wallet's members (its keys other than the satellite's).
    pub fn serve_members(&self, wallet: &satcosign_cosigner::wallet::Wallet) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        for x in wallet.xpubs.iter().filter(|x| *x != wallet.our_xpub()) {
            for k in nostr_identities(x) {
                members.insert(k.public_key());
            }
        }
    }

    /// Whether `author` is a member of a registered wallet (its messages are taken).
    pub fn serves_member(&self, author: &PublicKey) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(author)
    }

    /// How many satellite identities are served.
    pub fn identities(&self) -> usize {
        self.satellites.read().map(|s| s.len()).unwrap_or(0)
    }

    fn addressed_to_us(&self, e: &Event) -> bool {
        e.kind == Kind::EncryptedDirectMessage && self.recipient(e).is_some()
    }

    /// The satellite identity a message is addressed to, with its key's keyhash.
    fn recipient(&self, e: &Event) -> Option<(PublicKey, Keyhash)> {
        let satellites = self.satellites.read().unwrap_or_else(|p| p.into_inner());
        e.tags
            .public_keys()
            .find_map(|p| satellites.get(p).map(|k| (*p, *k)))
    }

    /// The wallet registered with the key behind `identity`, and the identity's secret.
    async fn identity(
        &self,
        service: &Service,
        identity: PublicKey,
    ) -> Result<Option<(WalletId, Keys)>, ServiceError> {
        let Some(keyhash) = self
            .satellites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&identity)
            .copied()
        else {
            return Ok(None);
        };
        let issued = service
            .store
            .read(move |txn| {
                let t = txn
                    .open_table(crate::wallet_keys::ISSUED_KEYS)
                    .map_err(db_err)?;
                crate::wallet_keys::lookup(&t, &keyhash)
            })
            .await?;
        let Some(wallet_id) = issued.and_then(|i| i.wallet) else {
            return Ok(None);
        };
        let record = service.wallet_record(wallet_id).await?;
        let key = service.satellite_key(&record)?;
        Ok(nostr_identities(&key.xpub)
            .into_iter()
            .find(|k| k.public_key() == identity)
            .map(|k| (wallet_id, k)))
    }

    /// Whether `author` is a member of wallet `wallet_id` (another key than the satellite's).
    async fn is_member(
        &self,
        service: &Service,
        wallet_id: WalletId,
        author: &PublicKey,
    ) -> Result<bool, ServiceError> {
        let record = service.wallet_record(wallet_id).await?;
        let wallet = service.wallet(&record)?;
        Ok(wallet
            .xpubs
            .iter()
            .filter(|x| *x != wallet.our_xpub())
            .flat_map(nostr_identities)
            .any(|k| k.public_key() == *author))
    }

    async fn handled(&self, service: &Service, id: [u8; 32]) -> Result<bool, StoreError> {
        service
            .store
            .read(move |txn| {
                let t = txn.open_table(NOSTR_HANDLED).map_err(db_err)?;
                Ok(t.get(&id).map_err(db_err)?.is_some())
            })
            .await
    }

    async fn handle(&self, e: &Event) -> Result<(), ServiceError> {
        let Some(service) = self.service.upgrade() else {
            return Ok(());
        };
        let event_id = e.id.to_bytes();
        if self.handled(&service, event_id).await? {
            return Ok(());
        }
        let Some((to, _)) = self.recipient(e) else {
            return Ok(());
        };
        let Some((wallet_id, keys)) = self.identity(&service, to).await? else {
            tracing::info!(event = %e.id, "ignored a direct message to a satellite key no registered wallet holds");
            return Ok(());
        };
        if !self.is_member(&service, wallet_id, &e.pubkey).await? {
            tracing::info!(event = %e.id, author = %e.pubkey.to_hex(), "ignored a direct message from a key that is not the wallet's");
            return Ok(());
        }
        let psbt = match read_psbt(&keys, e) {
            Ok(p) => p,
            Err(why) => {
                // No transaction to give back: Electrum's psbt_nostr ignores a message
                // without one, so this reaches only other Nostr clients.
                let text = format!("satcosign: this message was not read: {why}.");
                return self.answer(&service, &keys, e, &text).await;
            }
        };
        if self.hold {
            eprintln!("test-hold: nostr_event {}", e.id.to_hex());
            std::future::pending::<()>().await;
        }
        let author = e.pubkey.to_bytes();
        let to_bytes = to.to_bytes();
        let on_open: crate::service::OnOpen = Box::new(move |txn, request| {
            let mut origin = Vec::with_capacity(96);
            origin.extend_from_slice(&event_id);
            origin.extend_from_slice(&author);
            origin.extend_from_slice(&to_bytes);
            txn.open_table(NOSTR_ORIGINS)
                .map_err(db_err)?
                .insert(&request.0, origin.as_slice())
                .map_err(db_err)?;
            let earlier = txn
                .open_table(NOSTR_HANDLED)
                .map_err(db_err)?
                .insert(&event_id, &request.0)
                .map_err(db_err)?;
            // Another replica (or an earlier start) took this message meanwhile: one request.
            match earlier {
                Some(_) => Err(StoreError::Database(
                    "this Nostr message already became a request".into(),
                )),
                None => Ok(()),
            }
        });
        match service
            .submit_psbt_with(Some(wallet_id), &psbt, None, Some(on_open))
            .await
        {
            Ok(request) => {
                tracing::info!(event = %e.id, %request, "a PSBT by Nostr became a signing request");
                Ok(())
            }
            Err(
                err @ (ServiceError::Upstream(_) | ServiceError::Mail(_) | ServiceError::Store(_)),
            ) => Err(err),
            Err(err) => {
                let label = format!("NOT co-signed by the satellite: {err}. Nothing was signed.");
                self.answer(&service, &keys, e, &not_cosigned(&psbt, &label))
                    .await
            }
        }
    }
}

fn read_psbt(keys: &Keys, e: &Event) -> Result<Vec<u8>, String> {
    {
        let plain = nip04::decrypt(keys.secret_key(), &e.pubkey, &e.content)
            .map_err(|err| format!("it does not decrypt (NIP-04): {err}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&plain).map_err(|err| format!("it is not JSON: {err}"))?;
        let tx = v
            .get("tx")
            .and_then(serde_json::Value::as_str)
            .ok_or("it has no \"tx\" field")?;
        hex::decode(tx).map_err(|err| format!("its \"tx\" is not hex: {err}"))
    }
}

fn message_to(keys: &Keys, to: &PublicKey, content: &str) -> Result<Event, ServiceError> {
    {
        let encrypted =
            nip04::encrypt(keys.secret_key(), to, content).map_err(|e| ServiceError::Invalid {
                field: "nostr",
                reason: format!("NIP-04 encryption failed: {e}"),
            })?;
        let now = crate::service::unix_now();
        EventBuilder::new(Kind::EncryptedDirectMessage, encrypted)
            .tags([
                Tag::public_key(*to),
                Tag::expiration(Timestamp::from(now + KEEP_SECS)),
            ])
            .custom_created_at(Timestamp::from(now))
            .sign_with_keys(keys)
            .map_err(|e| ServiceError::Invalid {
                field: "nostr",
                reason: format!("signing the event failed: {e}"),
            })
    }
}

impl NostrCosigner {
    /// Answers a message without a request (unreadable, refused at once), and marks it
    /// handled in the same transaction that stores the answer.
    async fn answer(
        &self,
        service: &Service,
        keys: &Keys,
        e: &Event,
        text: &str,
    ) -> Result<(), ServiceError> {
        tracing::info!(event = %e.id, answer = text, "answering a direct message");
        let reply = message_to(keys, &e.pubkey, text)?;
        let stored = reply.clone();
        let event_id = e.id.to_bytes();
        service
            .store
            .write(move |txn| {
                NostrRelay::store_in(txn, &stored)?;
                txn.open_table(NOSTR_HANDLED)
                    .map_err(db_err)?
                    .insert(&event_id, &[0u8; 16])
                    .map_err(db_err)?;
                Ok(())
            })
            .await?;
        if let Some(relay) = self.relay.upgrade() {
            relay.published(reply);
        }
        Ok(())
    }

    /// The answer to a request that came by Nostr, as it is delivered: the PSBT with the
    /// satellite's signature, or the outcome in words. None for other requests.
    pub async fn reply_for(&self, r: &RequestRecord) -> Result<Option<Event>, ServiceError> {
        let Some(service) = self.service.upgrade() else {
            return Ok(None);
        };
        let id = r.id.0;
        let origin = service
            .store
            .read(move |txn| {
                let t = txn.open_table(NOSTR_ORIGINS).map_err(db_err)?;
                Ok(t.get(&id).map_err(db_err)?.map(|v| v.value().to_vec()))
            })
            .await?;
        let Some(origin) = origin.filter(|o| o.len() == 96) else {
            return Ok(None);
        };
        let (Ok(author), Ok(to)) = (
            PublicKey::from_slice(&origin[32..64]),
            PublicKey::from_slice(&origin[64..]),
        ) else {
            return Ok(None);
        };
        let Some((_, keys)) = self.identity(&service, to).await? else {
            return Ok(None);
        };
        let why = match (&r.outcome, r.state) {
            (Some(Outcome::Refused { code, reason }), _) => {
                format!("refused by the satellite's policy ({code}): {reason}")
            }
            (_, State::Expired) => "expired: it was not confirmed in time".to_owned(),
            (_, State::Cancelled) => "cancelled".to_owned(),
            (_, other) => format!("ended {}", other.as_str()),
        };
        let content = match (&r.action, &r.outcome) {
            (Action::Sign { .. }, Some(Outcome::Signed { psbt, .. })) => {
                serde_json::json!({"tx": hex::encode(psbt), "label": format!("satcosign {}", r.id)})
                    .to_string()
            }
            // The PSBT as the user sent it, so Electrum shows it, still not co-signed,
            // with the reason as its label.
            (Action::Sign { psbt, .. }, _) => not_cosigned(
                psbt,
                &format!(
                    "NOT co-signed by the satellite: request {} {why}. Nothing was signed.",
                    r.id
                ),
            ),
            (_, _) => format!("satcosign: request {} {why}: nothing was signed.", r.id),
        };
        message_to(&keys, &author, &content).map(Some)
    }

    /// After the delivery's commit: keeps request `id`'s answer for its wallet and passes it
    /// to live subscriptions.
    pub fn published(&self, id: RequestId, reply: Event) {
        tracing::info!(event = %reply.id, to = ?reply.tags.public_keys().next().map(|p| p.to_hex()), json_bytes = reply.as_json().len(), "answered by Nostr");
        self.kept
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reply.id.to_bytes(), id);
        if let Some(relay) = self.relay.upgrade() {
            relay.published(reply);
        }
    }

    /// Renews the kept answers about to leave Electrum's window and releases those no longer
    /// needed ([`crate::nostr_keep::sweep`]); runs every ten minutes, and when called.
    pub async fn keep_answers(&self) -> Result<crate::nostr_keep::Sweep, ServiceError> {
        let Some(service) = self.service.upgrade() else {
            return Ok(crate::nostr_keep::Sweep::default());
        };
        crate::nostr_keep::sweep(self, &service).await
    }

    /// A kept answer is no longer kept.
    pub(crate) fn forget_kept(&self, event: &[u8; 32]) {
        self.kept
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(event);
    }

    /// After the commit that replaced copy `old` of request `id`'s answer by `fresh`.
    pub(crate) fn replaced(&self, old: [u8; 32], id: RequestId, fresh: Event) {
        self.forget_kept(&old);
        if let Some(relay) = self.relay.upgrade() {
            relay.forget(&old);
        }
        self.published(id, fresh);
    }
}

/// An answer that gives back the user's own PSBT, unchanged, with `label` saying why it was
/// not co-signed: Electrum's psbt_nostr accepts only `{"tx": …}` messages (and drops
/// anything else unseen), shows the label, and shows the transaction as still needing a
/// signature, so a refusal can never pass for a signature.
fn not_cosigned(psbt: &[u8], label: &str) -> String {
    serde_json::json!({"tx": hex::encode(psbt), "label": format!("satcosign: {label}")}).to_string()
}

impl std::fmt::Debug for NostrCosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NostrCosigner")
            .field("identities", &self.identities())
            .finish()
    }
}
