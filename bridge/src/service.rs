//! The bridge's service: the state every operation shares (the store, the mailer, the
//! gate's limits, the caches of wallets and claims), its errors, and the announcement of
//! each committed transition. The operations live along a request's life:
//! [`crate::wallets`] (keys, registrations, changes), [`crate::intake`] (a PSBT becomes a
//! request), [`crate::approval`] (codes and emails), and [`crate::relay`] (the link and
//! delivery).
//!
//! Every change of a request is one redb write transaction ([`Store::write`]) that loads
//! the record, checks the transition against the one table ([`crate::lifecycle`]), and
//! saves it; tokens are checked and
//! consumed inside the same transaction that advances the request. Side effects that cannot
//! be part of a transaction (an email, a link message, a broadcast) happen *before* the
//! transition that records them, so a crash in between repeats the effect instead of
//! losing it; each is harmless to repeat (a second email with a fresh code, a duplicate
//! link message the cosigner answers from its records, a broadcast of a transaction the
//! server already has). [`crate::relay`] drives requests forward from each state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::store::tables::{ReadableTable, WriteTransaction};
use bitcoin::bip32::Fingerprint;
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use tokio::sync::broadcast;

use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::keys::AccountKey;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::refusal::Refusal;
use satcosign_cosigner::wallet::{Wallet, WalletId};

use crate::allowance::UsedUp;
use crate::config::GateConfig;
use crate::ecies::EciesError;
use crate::lifecycle::{self, Moved, Step};
use crate::mail::{MailError, Mailer};
use crate::mailbox::Keyhash;
use crate::notice;
use crate::state::{
    self, db_err, from_bytes, Action, RequestRecord, State, WalletRecord, WalletState, ACTIVE,
    REQUESTS, WALLETS,
};
use crate::store::{Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// Why a service call was refused; each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The descriptor cannot be registered.
    #[error("descriptor: {0}")]
    BadDescriptor(String),
    /// A parameter is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The wallet is already registered (or being registered).
    #[error("wallet {wallet_id} is already {state}")]
    WalletExists {
        /// The wallet.
        wallet_id: WalletId,
        /// Where it stands.
        state: &'static str,
    },
    /// No such wallet.
    #[error("no wallet {0} is registered here")]
    UnknownWallet(WalletId),
    /// The wallet cannot take requests yet (or any more).
    #[error("wallet {wallet_id} is {state}, not active")]
    WalletNotActive {
        /// The wallet.
        wallet_id: WalletId,
        /// Where it stands.
        state: &'static str,
    },
    /// The PSBT does not parse.
    #[error("psbt: {0}")]
    BadPsbt(String),
    /// The PSBT spends from no registered wallet.
    #[error("the PSBT spends from no wallet registered here (register it first)")]
    NoWalletForPsbt,
    /// The PSBT would be refused by the cosigner.
    #[error("refused ({code}): {0}", code = .0.code())]
    Refused(Refusal),
    /// The upstream server shows an input already spent by another transaction.
    #[error("input {index} ({outpoint}) is already spent by {spent_by} ({where_}); the satellite will not be asked to sign it", where_ = match .height { Some(h) => format!("in block {h}"), None => "in the mempool".to_owned() })]
    InputSpent {
        /// The input's index.
        index: usize,
        /// The output it spends.
        outpoint: bitcoin::OutPoint,
        /// The transaction that spent it.
        spent_by: bitcoin::Txid,
        /// Where that transaction is: a block height, or `None` for the mempool.
        height: Option<u32>,
    },
    /// A rate limit was hit.
    #[error("too many {what}; try again after {retry_after}")]
    RateLimited {
        /// What was limited.
        what: &'static str,
        /// When to try again (UTC).
        retry_after: String,
    },
    /// No such request.
    #[error("no request {0}")]
    UnknownRequest(RequestId),
    /// The request is not in a state that allows this.
    #[error("request {id} is {state}; {action} needs it {allowed}")]
    WrongState {
        /// The request.
        id: RequestId,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
        /// In which states that is allowed.
        allowed: String,
    },
    /// The code is wrong.
    #[error("wrong code for request {id}; {attempts_left} attempts left")]
    WrongCode {
        /// The request.
        id: RequestId,
        /// Attempts left before it is voided.
        attempts_left: u32,
    },
    /// Too many wrong codes: the request was voided.
    #[error("request {0} was voided after too many wrong codes")]
    Voided(RequestId),
    /// The code expired.
    #[error("the code for request {0} has expired; ask for a new email")]
    CodeExpired(RequestId),
    /// The code approves other content (the request changed after it was sent).
    #[error(
        "the code approves an earlier version of request {0}; use the code of the latest email"
    )]
    ContentChanged(RequestId),
    /// A mailbox message could not be decrypted.
    #[error("message: {0}")]
    Decrypt(#[from] EciesError),
    /// The upstream server failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Email could not be sent.
    #[error(transparent)]
    Mail(#[from] MailError),
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<UsedUp> for ServiceError {
    fn from(u: UsedUp) -> Self {
        ServiceError::RateLimited {
            what: u.what,
            retry_after: notice::format_utc(u.frees_at),
        }
    }
}

impl From<crate::wallet_keys::WalletKeyError> for ServiceError {
    fn from(e: crate::wallet_keys::WalletKeyError) -> ServiceError {
        match e {
            crate::wallet_keys::WalletKeyError::RateLimited { what, retry_after } => {
                ServiceError::RateLimited { what, retry_after }
            }
            other => ServiceError::BadDescriptor(other.to_string()),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    crate::mailbox::now_ms() / 1000
}

pub use crate::mailbox::keyhash_of;

/// A state change, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The request.
    pub id: RequestId,
    /// Its new state.
    pub state: State,
}

/// What the service is built from.
pub struct ServiceParts {
    /// The database.
    pub store: Store,
    /// The mailbox (results go back through it).
    pub mailbox: crate::mailbox::Mailbox,
    /// Outgoing email.
    pub mailer: Box<dyn Mailer>,
    /// The satellite's issuer key: every wallet's satellite key derives from it; never
    /// published (see [`crate::wallet_keys`]).
    pub issuer: AccountKey,
    /// The network.
    pub network: bitcoin::Network,
    /// The bridge's mailbox key (requests are encrypted to it).
    pub mailbox_key: SecretKey,
    /// Gate limits.
    pub gate: GateConfig,
    /// Base URL of the confirmation pages.
    pub public_url: String,
    /// Policy for wallets registered without one.
    pub default_policy: Policy,
    /// The upstream server, if any.
    pub upstream: Option<Arc<dyn Upstream>>,
}

/// The service.
pub struct Service {
    /// The database.
    pub store: Store,
    /// The mailbox.
    pub mailbox: crate::mailbox::Mailbox,
    pub(crate) mailer: Box<dyn Mailer>,
    /// The satellite's issuer key (never published; see [`crate::wallet_keys`]).
    pub(crate) issuer: AccountKey,
    /// The network.
    pub network: bitcoin::Network,
    pub(crate) mailbox_key: SecretKey,
    /// The bridge's mailbox public key.
    pub mailbox_public: PublicKey,
    pub(crate) gate: GateConfig,
    pub(crate) public_url: std::sync::RwLock<String>,
    pub(crate) default_policy: Policy,
    pub(crate) upstream: Option<Arc<dyn Upstream>>,
    pub(crate) secp: Secp256k1<All>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) wallets: Mutex<HashMap<WalletId, Arc<Wallet>>>,
    pub(crate) busy: Mutex<HashSet<RequestId>>,
    pub(crate) hold_at: Option<State>,
    /// Test hook: `SATCOSIGN_TEST_WRITER_PANIC_AT=<state>` makes a database job panic once
    /// a request enters that state (the writer then stops the process).
    pub(crate) writer_panic_at: Option<State>,
    /// The satellite's Nostr identity, when the relay runs: delivery answers by Nostr.
    pub nostr: std::sync::OnceLock<Arc<crate::nostr_cosigner::NostrCosigner>>,
    /// The link's schedule and the orbit's passes, for the expected signing time.
    pub sky: std::sync::OnceLock<crate::expected::Sky>,
    /// Events counted for `/metrics`.
    pub counters: crate::metrics::Counters,
    /// The other replicas on the database (PostgreSQL), told of every change.
    pub peers: std::sync::OnceLock<Arc<crate::peers::Peers>>,
}

/// Runs inside the write transaction that opens a request (e.g. to record where it came
/// from), with the request's id.
pub type OnOpen =
    Box<dyn FnOnce(&crate::store::WriteTransaction, RequestId) -> Result<(), StoreError> + Send>;

/// A claim on one request: while held, no other task advances it.
pub struct Claim<'a> {
    service: &'a Service,
    id: RequestId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.service
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

pub(crate) fn random_id() -> [u8; 16] {
    use rand_core::RngCore as _;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    id
}

pub(crate) fn index_key(fp: &Fingerprint, id: &WalletId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(fp.as_bytes());
    k[4..].copy_from_slice(&id.0);
    k
}

pub(crate) fn wallet_state_name(s: WalletState) -> &'static str {
    match s {
        WalletState::Pending => "pending registration",
        WalletState::Active => "active",
        WalletState::Refused => "refused",
    }
}

impl Service {
    /// Builds the service.
    pub fn new(parts: ServiceParts) -> Service {
        let secp = Secp256k1::new();
        let hold_at = std::env::var("SATCOSIGN_TEST_HOLD_AT")
            .ok()
            .and_then(|s| State::parse(&s));
        Service {
            mailbox_public: parts.mailbox_key.public_key(&secp),
            store: parts.store,
            mailbox: parts.mailbox,
            mailer: parts.mailer,
            issuer: parts.issuer,
            network: parts.network,
            mailbox_key: parts.mailbox_key,
            gate: parts.gate,
            public_url: std::sync::RwLock::new(parts.public_url),
            default_policy: parts.default_policy,
            upstream: parts.upstream,
            secp,
            events: broadcast::channel(1024).0,
            wallets: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            hold_at,
            writer_panic_at: std::env::var("SATCOSIGN_TEST_WRITER_PANIC_AT")
                .ok()
                .and_then(|s| State::parse(&s)),
            nostr: std::sync::OnceLock::new(),
            sky: std::sync::OnceLock::new(),
            counters: crate::metrics::Counters::default(),
            peers: std::sync::OnceLock::new(),
        }
    }

    /// Whether `keyhash` is an issued satellite key's (a put to it is a signing request).
    pub async fn is_satellite_keyhash(&self, keyhash: Keyhash) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .read(move |txn| {
                let t = txn
                    .open_table(crate::wallet_keys::ISSUED_KEYS)
                    .map_err(db_err)?;
                Ok(crate::wallet_keys::lookup(&t, &keyhash)?.is_some())
            })
            .await?)
    }

    /// Sets the base URL of the confirmation pages (once the HTTP port is known).
    pub fn set_public_url(&self, url: String) {
        *self.public_url.write().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// The base URL of the confirmation pages.
    pub fn public_url(&self) -> String {
        self.public_url
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where mail goes.
    pub fn mail_destination(&self) -> String {
        self.mailer.describe()
    }

    /// Subscribes to state changes of every request.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Claims a request for one task; `None` if another task holds it.
    pub fn claim(&self, id: RequestId) -> Option<Claim<'_>> {
        let inserted = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        // Built only after the lock is released: a Claim's drop takes the same lock.
        inserted.then(|| Claim { service: self, id })
    }

    /// Tells subscribers that request `id` changed without changing state (its
    /// transaction's place on the chain).
    pub(crate) fn changed(&self, id: RequestId) {
        self.announce(Event {
            id,
            state: State::Delivered,
        });
    }

    /// Tells this replica's subscribers (the relay is one) and the other replicas'.
    fn announce(&self, event: Event) {
        self.tell_peers(crate::peers::Heard::Request(event.id, event.state));
        let _ = self.events.send(event);
    }

    /// Tells the other replicas on the database (PostgreSQL) of a change, after its commit.
    pub(crate) fn tell_peers(&self, heard: crate::peers::Heard) {
        if let Some(peers) = self.peers.get() {
            peers.tell(heard);
        }
    }

    /// Tells this replica's subscribers of a change another replica made.
    pub(crate) fn heard(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Called after every committed transition: tells subscribers (the relay is one), and
    /// honours the test hook that freezes the bridge in a state (so a test can kill it there).
    pub(crate) async fn transitioned(&self, id: RequestId, state: State) {
        tracing::info!(request = %id, state = state.as_str(), "request state");
        self.counters.transition(state);
        self.announce(Event { id, state });
        if self.hold_at == Some(state) {
            eprintln!("test-hold: {} {id}", state.as_str());
            std::future::pending::<()>().await;
        }
        if self.writer_panic_at == Some(state) {
            let _ = self
                .store
                .write(|_| -> Result<(), StoreError> {
                    panic!("test hook: a database job panicked")
                })
                .await;
            std::future::pending::<()>().await;
        }
    }

    /// Commits one transition of request `id` (see [`lifecycle::advance`]) and announces
    /// it. Returns what moved, or `None` when `decide` found nothing to do.
    pub(crate) async fn advance(
        &self,
        id: RequestId,
        decide: impl lifecycle::Decide,
        change: impl lifecycle::Change,
    ) -> Result<Option<Moved>, ServiceError> {
        let moved = lifecycle::advance(&self.store, id, decide, change).await?;
        if let Some(state) = moved.as_ref().and_then(Moved::announce) {
            self.transitioned(id, state).await;
        }
        Ok(moved)
    }

    /// For the relay: takes request `id` through `step` and announces it; a request that
    /// another task moved on meanwhile (the table refuses the step now) is left alone
    /// (`None`).
    pub(crate) async fn take(
        &self,
        id: RequestId,
        step: Step,
        change: impl FnOnce(&WriteTransaction, &mut RequestRecord) -> Result<(), StoreError>
            + Send
            + 'static,
    ) -> Result<Option<RequestRecord>, ServiceError> {
        match self
            .advance(id, move |_| Ok(Some(step)), move |txn, r, _| change(txn, r))
            .await
        {
            Ok(moved) => Ok(moved.map(|m| m.record)),
            Err(ServiceError::WrongState { state, .. }) => {
                tracing::debug!(request = %id, state, step = ?step, "moved on meanwhile; left alone");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// When request `r` is expected to reach the satellite, as if it were in `state` (see
    /// [`crate::expected`]).
    pub fn expected(&self, r: &RequestRecord, state: State) -> Option<crate::expected::Expected> {
        let sky = self.sky.get()?;
        crate::expected::expected(sky, r, state, std::time::SystemTime::now())
    }

    /// The checked wallet for a record (cached).
    pub fn wallet(&self, record: &WalletRecord) -> Result<Arc<Wallet>, ServiceError> {
        if let Some(w) = self
            .wallets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.id)
        {
            return Ok(w.clone());
        }
        let w = Arc::new(
            Wallet::from_descriptors(&record.descriptors, &self.satellite_key(record)?)
                .map_err(|e| ServiceError::BadDescriptor(e.to_string()))?,
        );
        self.wallets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id, w.clone());
        Ok(w)
    }

    /// Loads a wallet record, with the policy in force on the satellite now.
    pub async fn wallet_record(&self, id: WalletId) -> Result<WalletRecord, ServiceError> {
        Ok(self.wallet_and_pending(id).await?.0)
    }

    /// Loads a wallet record (with the policy in force now) and the loosening the
    /// satellite still holds back, if any.
    pub async fn wallet_and_pending(
        &self,
        id: WalletId,
    ) -> Result<(WalletRecord, Option<state::PendingPolicy>), ServiceError> {
        let now = unix_now();
        self.store
            .read(move |txn| {
                let t = txn.open_table(WALLETS).map_err(db_err)?;
                let v = t.get(&id.0).map_err(db_err)?;
                let Some(mut w) = v
                    .map(|v| from_bytes::<WalletRecord>(v.value()))
                    .transpose()?
                else {
                    return Ok(None);
                };
                let t = txn.open_table(state::PENDING_POLICIES).map_err(db_err)?;
                let pending = state::pending_policy(&t, &id)?;
                state::settle_policy(&mut w, pending.clone(), now);
                Ok(Some((w, pending.filter(|p| p.effective_at > now))))
            })
            .await?
            .ok_or(ServiceError::UnknownWallet(id))
    }

    /// Loads a request record.
    pub async fn request(&self, id: RequestId) -> Result<RequestRecord, ServiceError> {
        self.store
            .read(move |txn| {
                let t = txn.open_table(REQUESTS).map_err(db_err)?;
                let v = t.get(&id.0).map_err(db_err)?;
                v.map(|v| from_bytes::<RequestRecord>(v.value()))
                    .transpose()
            })
            .await?
            .ok_or(ServiceError::UnknownRequest(id))
    }

    /// Ids of every request not yet delivered.
    pub async fn active_requests(&self) -> Result<Vec<RequestId>, ServiceError> {
        Ok(self
            .store
            .read(|txn| {
                let t = txn.open_table(ACTIVE).map_err(db_err)?;
                let mut out = Vec::new();
                for row in t.iter().map_err(db_err)? {
                    let (k, _) = row.map_err(db_err)?;
                    out.push(RequestId(*k.value()));
                }
                Ok(out)
            })
            .await?)
    }

    /// Every registered wallet (any state), with its parsed descriptors.
    pub async fn wallets(&self) -> Result<Vec<(WalletRecord, Arc<Wallet>)>, ServiceError> {
        let records = self
            .store
            .read(|txn| {
                let t = txn.open_table(WALLETS).map_err(db_err)?;
                let mut out = Vec::new();
                for row in t.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    out.push(from_bytes::<WalletRecord>(v.value())?);
                }
                Ok(out)
            })
            .await?;
        records
            .into_iter()
            .map(|r| self.wallet(&r).map(|w| (r, w)))
            .collect()
    }

    /// Sends `email`, counted for `/metrics`.
    pub(crate) async fn send_mail(&self, email: crate::mail::Email) -> Result<(), MailError> {
        let result = self.mailer.send(email).await;
        self.counters.email(result.is_ok());
        result
    }

    /// The keyhash and public key of each xpub a result goes back to.
    pub fn reply_keys(reply_to: &[String]) -> Vec<(Keyhash, PublicKey)> {
        reply_to
            .iter()
            .filter_map(|x| satcosign_cosigner::keys::parse_any_xpub(x))
            .map(|x| (keyhash_of(&x.public_key), x.public_key))
            .collect()
    }
}

pub(crate) fn new_request(
    id: RequestId,
    wallet_id: WalletId,
    action: Action,
    state: State,
    now: u64,
) -> RequestRecord {
    RequestRecord {
        id,
        wallet_id,
        action,
        state,
        tokens: Vec::new(),
        failed_attempts: 0,
        emails_sent: 0,
        last_email_at: 0,
        approved_at: None,
        outcome: None,
        note: None,
        final_state: None,
        created_at: now,
        updated_at: now,
        version: 0,
        link_msg: None,
        hold: None,
    }
}
