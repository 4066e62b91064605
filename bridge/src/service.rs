//! The bridge's service: wallets, signing requests and the email gate, as the JSON-RPC
//! methods and the confirmation page use them.
//!
//! Every change of a request is one redb write transaction ([`Store::write`]) that loads
//! the record, checks the transition is allowed, and saves it; tokens are checked and
//! consumed inside the same transaction that advances the request. Side effects that cannot
//! be part of a transaction (an email, a link message, a broadcast) happen *before* the
//! transition that records them, so a crash in between repeats the effect instead of
//! losing it; each is harmless to repeat (a second email with a fresh code, a duplicate
//! link message the cosigner answers from its records, a broadcast of a transaction the
//! server already has). [`crate::relay`] drives requests forward from each state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bitcoin::bip32::Fingerprint;
use bitcoin::hashes::Hash as _;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::ForEachKey as _;
use redb::{ReadableTable, WriteTransaction};
use tokio::sync::broadcast;

use satcosign_cosigner::decision::{check_policy, RequestId};
use satcosign_cosigner::keys::AccountKey;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::refusal::Refusal;
use satcosign_cosigner::spend::{analyze, Spend};
use satcosign_cosigner::wallet::{Wallet, WalletId};

use crate::allowance::{self, Allowance, UsedUp};
use crate::config::GateConfig;
use crate::ecies::{self, EciesError};
use crate::gate::{self, approval_digest};
use crate::mail::{MailError, Mailer};
use crate::mailbox::Keyhash;
use crate::notice;
use crate::state::{
    self, db_err, from_bytes, load_request, load_wallet, save_request, save_wallet, Action,
    Destination, Outcome, RequestRecord, SpendSummary, State, TokenRecord, WalletRecord,
    WalletState, ACTIVE, REQUESTS, WALLETS, WALLET_BY_FINGERPRINT,
};
use crate::store::{Store, StoreError};
use crate::upstream::{find_spender, Upstream, UpstreamError};

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
        allowed: &'static str,
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
    issuer: AccountKey,
    /// The network.
    pub network: bitcoin::Network,
    mailbox_key: SecretKey,
    /// The bridge's mailbox public key.
    pub mailbox_public: PublicKey,
    pub(crate) gate: GateConfig,
    public_url: std::sync::RwLock<String>,
    default_policy: Policy,
    pub(crate) upstream: Option<Arc<dyn Upstream>>,
    pub(crate) secp: Secp256k1<All>,
    events: broadcast::Sender<Event>,
    wallets: Mutex<HashMap<WalletId, Arc<Wallet>>>,
    busy: Mutex<HashSet<RequestId>>,
    hold_at: Option<State>,
    /// Test hook: `SATCOSIGN_TEST_WRITER_PANIC_AT=<state>` makes a database job panic once
    /// a request enters that state (the writer then stops the process).
    writer_panic_at: Option<State>,
    /// The satellite's Nostr identity, when the relay runs: delivery answers by Nostr.
    pub nostr: std::sync::OnceLock<Arc<crate::nostr_cosigner::NostrCosigner>>,
    /// Events counted for `/metrics`.
    pub counters: crate::metrics::Counters,
}

/// Runs inside the write transaction that opens a request (e.g. to record where it came
/// from), with the request's id.
pub type OnOpen =
    Box<dyn FnOnce(&redb::WriteTransaction, RequestId) -> Result<(), StoreError> + Send>;

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

fn random_id() -> [u8; 16] {
    use rand_core::RngCore as _;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    id
}

/// Every member xpub of the descriptors (the receive and change forms name the same ones).
fn descriptor_xpubs(descriptors: &[String]) -> Vec<bitcoin::bip32::Xpub> {
    let mut out = Vec::new();
    for d in descriptors {
        let text = d.split('#').next().unwrap_or(d);
        if let Ok(desc) = text.parse::<miniscript::Descriptor<DescriptorPublicKey>>() {
            desc.for_each_key(|k| {
                let x = match k {
                    DescriptorPublicKey::MultiXPub(x) => Some(x.xkey),
                    DescriptorPublicKey::XPub(x) => Some(x.xkey),
                    _ => None,
                };
                if let Some(x) = x.filter(|x| !out.contains(x)) {
                    out.push(x);
                }
                true
            });
        }
    }
    out
}

/// Every key fingerprint a PSBT of the wallet may name: each xpub's own, and each origin's.
fn wallet_fingerprints(descriptors: &[String]) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    for d in descriptors {
        let text = d.split('#').next().unwrap_or(d);
        if let Ok(desc) = text.parse::<miniscript::Descriptor<DescriptorPublicKey>>() {
            desc.for_each_key(|k| {
                out.push(k.master_fingerprint());
                if let DescriptorPublicKey::MultiXPub(x) = k {
                    out.push(x.xkey.fingerprint());
                }
                if let DescriptorPublicKey::XPub(x) = k {
                    out.push(x.xkey.fingerprint());
                }
                true
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

fn index_key(fp: &Fingerprint, id: &WalletId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(fp.as_bytes());
    k[4..].copy_from_slice(&id.0);
    k
}

/// Describes a spend for the user.
pub fn summarize(spend: &Spend, network: bitcoin::Network) -> SpendSummary {
    SpendSummary {
        txid: spend.txid.to_string(),
        destinations: spend
            .outputs
            .iter()
            .filter(|o| !o.own)
            .map(|o| Destination {
                address: bitcoin::Address::from_script(&o.script_pubkey, network)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| format!("script {}", o.script_pubkey.to_hex_string())),
                amount_sat: o.value_sat,
            })
            .collect(),
        change_sat: spend.change_sat,
        fee_sat: spend.fee_sat,
        fee_rate_sat_vb: spend.fee_rate_sat_vb(),
        leaving_sat: spend.leaving_sat(),
        inputs: spend.inputs.len(),
    }
}

/// Whether `wallet` may open a signing request now: active, and under its hourly limit
/// (the one rule, checked before any upstream call and again where the request is opened).
fn may_request(wallet: &WalletRecord, gate: &GateConfig, now: u64) -> Result<(), ServiceError> {
    if wallet.state != WalletState::Active {
        return Err(ServiceError::WalletNotActive {
            wallet_id: wallet.id,
            state: wallet_state_name(wallet.state),
        });
    }
    let hour_ago = now.saturating_sub(3600);
    let recent: Vec<u64> = wallet
        .recent_requests
        .iter()
        .copied()
        .filter(|t| *t > hour_ago)
        .collect();
    if recent.len() >= gate.max_requests_per_hour as usize {
        let oldest = recent.iter().min().copied().unwrap_or(now);
        return Err(ServiceError::RateLimited {
            what: "signing requests for this wallet",
            retry_after: notice::format_utc(oldest + 3600),
        });
    }
    Ok(())
}

/// The mailbox an address reaches, as the per-address limits count it: trimmed, in lower
/// case, without a `+tag` (`Victim+1@Example.org` and `victim@example.org` are one inbox).
pub fn mailbox_of(email: &str) -> String {
    let email = email.trim().to_lowercase();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split_once('+').map_or(local, |(base, _)| base);
            format!("{local}@{domain}")
        }
        None => email,
    }
}

fn check_email(email: &str) -> Result<(), ServiceError> {
    crate::mail::parse_address(email).map_err(|e| ServiceError::Invalid {
        field: "email",
        reason: e.to_string(),
    })?;
    if email.contains('<') {
        return Err(ServiceError::Invalid {
            field: "email",
            reason: "give the bare address, without a display name".into(),
        });
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), ServiceError> {
    if label.trim().is_empty() || label.chars().count() > 64 || label.chars().any(char::is_control)
    {
        return Err(ServiceError::Invalid {
            field: "label",
            reason: "must be 1 to 64 printable characters".into(),
        });
    }
    Ok(())
}

fn wallet_state_name(s: WalletState) -> &'static str {
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
            counters: crate::metrics::Counters::default(),
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

    /// `satellite.new_key`: a fresh satellite key for a wallet about to be created, after
    /// the rate limits (per client when the transport knows it, and in all).
    pub async fn new_key(
        &self,
        client: Option<std::net::IpAddr>,
    ) -> Result<AccountKey, ServiceError> {
        let issuer = self.issuer.clone();
        let mut limits = vec![(
            crate::wallet_keys::ALL_CLIENTS,
            self.gate.max_keys_per_hour,
            "satellite keys issued on this bridge this hour",
        )];
        if let Some(ip) = client {
            use bitcoin::hashes::sha256;
            let key = sha256::Hash::hash(format!("client:{ip}").as_bytes()).to_byte_array();
            limits.push((
                key,
                self.gate.max_keys_per_client_per_hour,
                "satellite keys for this client this hour",
            ));
        }
        let now = unix_now();
        let key = self
            .store
            .write(move |txn| crate::wallet_keys::issue(txn, &issuer, &limits, now))
            .await??;
        tracing::info!(key_id = %hex::encode(keyhash_of(&key.xpub.public_key).0), "satellite key issued");
        if let Some(n) = self.nostr.get() {
            n.serve_key(&key);
        }
        Ok(key)
    }

    /// The satellite key of a registered wallet.
    pub fn satellite_key(&self, record: &WalletRecord) -> Result<AccountKey, ServiceError> {
        self.issuer
            .wallet_key(record.key_index)
            .map_err(|e| ServiceError::BadDescriptor(e.to_string()))
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
        let _ = self.events.send(Event {
            id,
            state: State::Delivered,
        });
    }

    /// Called after every committed transition: tells subscribers (the relay is one), and
    /// honours the test hook that freezes the bridge in a state (so a test can kill it there).
    pub(crate) async fn transitioned(&self, id: RequestId, state: State) {
        tracing::info!(request = %id, state = state.as_str(), "request state");
        self.counters.transition(state);
        let _ = self.events.send(Event { id, state });
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

    /// Commits a transition of request `id` from one of `from` (see [`transition`]) and,
    /// if it happened, announces the state it left the request in. Returns whether it did.
    pub(crate) async fn advance(
        &self,
        id: RequestId,
        from: &[State],
        change: impl FnOnce(&WriteTransaction, &mut RequestRecord) -> Result<(), StoreError>
            + Send
            + 'static,
    ) -> Result<bool, StoreError> {
        match transition(&self.store, id, from, change).await? {
            Some(r) => {
                self.transitioned(id, r.state).await;
                Ok(true)
            }
            None => Ok(false),
        }
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

    /// Loads a wallet record.
    pub async fn wallet_record(&self, id: WalletId) -> Result<WalletRecord, ServiceError> {
        self.store
            .read(move |txn| {
                let t = txn.open_table(WALLETS).map_err(db_err)?;
                let v = t.get(&id.0).map_err(db_err)?;
                v.map(|v| from_bytes::<WalletRecord>(v.value())).transpose()
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

    /// `wallet.register`: checks the descriptor now and emails a confirmation.
    pub async fn register_wallet(
        &self,
        descriptors: Vec<String>,
        email: String,
        label: String,
        policy: Option<Policy>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(WalletId, RequestId), ServiceError> {
        let email = email.trim().to_owned();
        check_email(&email)?;
        check_label(&label)?;
        let descriptors: Vec<String> = descriptors.iter().map(|d| plain_xpubs(d)).collect();
        let policy = policy.unwrap_or_else(|| self.default_policy.clone());
        policy.check().map_err(|e| ServiceError::Invalid {
            field: "policy",
            reason: e.to_string(),
        })?;
        let xpubs = descriptor_xpubs(&descriptors);
        let issuer = self.issuer.clone();
        let found = self
            .store
            .read(move |txn| {
                let t = txn
                    .open_table(crate::wallet_keys::ISSUED_KEYS)
                    .map_err(db_err)?;
                crate::wallet_keys::find_in(&t, &issuer, &xpubs)
            })
            .await??;
        let wallet = Wallet::from_descriptors(&descriptors, &found.key)
            .map_err(|e| ServiceError::BadDescriptor(e.to_string()))?;
        let wallet_id = wallet.id;
        let satellite_key = found.key;
        let fingerprints = wallet_fingerprints(&descriptors);
        let now = unix_now();
        let request_id = RequestId(random_id());
        let email_key: [u8; 32] = {
            use bitcoin::hashes::sha256;
            sha256::Hash::hash(mailbox_of(&email).as_bytes()).to_byte_array()
        };
        let mut limits = vec![
            Allowance {
                key: email_key,
                max: self.gate.max_registrations_per_email_per_day,
                window_secs: 24 * 3600,
                what: "registrations for this email address",
            },
            Allowance {
                key: state::ALL_REGISTRATIONS,
                max: self.gate.max_registrations_per_hour,
                window_secs: 3600,
                what: "registrations on this bridge",
            },
        ];
        if let Some(ip) = client {
            use bitcoin::hashes::sha256;
            let key = sha256::Hash::hash(format!("registrations from:{ip}").as_bytes());
            limits.push(Allowance {
                key: key.to_byte_array(),
                max: self
                    .gate
                    .max_registrations_per_client_per_hour
                    .min(self.gate.max_registrations_per_hour),
                window_secs: 3600,
                what: "registrations from this client",
            });
        }
        let record = WalletRecord {
            id: wallet_id,
            descriptors,
            label,
            email,
            state: WalletState::Pending,
            policy,
            refusal: None,
            created_at: now,
            recent_requests: Vec::new(),
            key_index: found.issued.index,
        };
        self.store
            .write(move |txn| {
                if let Some(existing) = load_wallet(txn, &wallet_id)? {
                    if existing.state != WalletState::Refused {
                        return Ok(Err(ServiceError::WalletExists {
                            wallet_id,
                            state: wallet_state_name(existing.state),
                        }));
                    }
                }
                // Each registration emails the address given: limit them per address and
                // in all, so the bridge cannot be made to flood anyone's inbox.
                let mut recent = txn.open_table(state::REGISTRATIONS).map_err(db_err)?;
                if let Err(used_up) = allowance::take(&mut recent, &limits, now)? {
                    return Ok(Err(used_up.into()));
                }
                drop(recent);
                if let Err(e) = crate::wallet_keys::bind(txn, &satellite_key, wallet_id)? {
                    return Ok(Err(e.into()));
                }
                save_wallet(txn, &record)?;
                let mut index = txn.open_table(WALLET_BY_FINGERPRINT).map_err(db_err)?;
                for fp in &fingerprints {
                    index
                        .insert(&index_key(fp, &wallet_id), ())
                        .map_err(db_err)?;
                }
                drop(index);
                save_request(
                    txn,
                    &new_request(
                        request_id,
                        wallet_id,
                        Action::Register,
                        State::Received,
                        now,
                    ),
                )?;
                Ok(Ok(()))
            })
            .await??;
        if let Some(n) = self.nostr.get() {
            n.serve_members(&wallet);
        }
        self.transitioned(request_id, State::Received).await;
        Ok((wallet_id, request_id))
    }

    /// `wallet.update_email`: confirmed at the old address; both addresses are told.
    pub async fn update_email(
        &self,
        wallet_id: WalletId,
        new_email: String,
    ) -> Result<RequestId, ServiceError> {
        check_email(&new_email)?;
        let wallet = self.wallet_record(wallet_id).await?;
        if wallet.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: wallet_state_name(wallet.state),
            });
        }
        self.new_wallet_request(wallet_id, Action::UpdateEmail { new_email })
            .await
    }

    /// `wallet.set_policy`: a change that only tightens goes to the cosigner at once; one
    /// that loosens anything waits for email confirmation (and the cosigner's own delay).
    pub async fn set_policy(
        &self,
        wallet_id: WalletId,
        policy: Policy,
    ) -> Result<(RequestId, bool), ServiceError> {
        policy.check().map_err(|e| ServiceError::Invalid {
            field: "policy",
            reason: e.to_string(),
        })?;
        let wallet = self.wallet_record(wallet_id).await?;
        if wallet.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: wallet_state_name(wallet.state),
            });
        }
        // Every change is confirmed from the registered email, tightening included: a
        // stranger's "tightening" (a limit of 1,000 sat, an allowlist of their address)
        // would lock the owner out. Once confirmed, a tightening applies at once on the
        // satellite and a loosening after its delay.
        let tightening = policy.is_tightening_of(&wallet.policy);
        let id = self
            .new_wallet_request(wallet_id, Action::SetPolicy { policy })
            .await?;
        Ok((id, tightening))
    }

    /// Opens a change of wallet `wallet_id` (email or policy), within the wallet's daily
    /// allowance of changes: each one emails the owner.
    async fn new_wallet_request(
        &self,
        wallet_id: WalletId,
        action: Action,
    ) -> Result<RequestId, ServiceError> {
        use bitcoin::hashes::sha256;
        let id = RequestId(random_id());
        let now = unix_now();
        let changes = Allowance {
            key: sha256::Hash::hash(format!("changes:{wallet_id}").as_bytes()).to_byte_array(),
            max: self.gate.max_changes_per_wallet_per_day,
            window_secs: 24 * 3600,
            what: "changes to this wallet today",
        };
        self.store
            .write(move |txn| {
                let mut recent = txn.open_table(state::REGISTRATIONS).map_err(db_err)?;
                if let Err(used_up) = allowance::take(&mut recent, &[changes], now)? {
                    return Ok(Err(ServiceError::from(used_up)));
                }
                drop(recent);
                save_request(
                    txn,
                    &new_request(id, wallet_id, action, State::Received, now),
                )?;
                Ok(Ok(()))
            })
            .await??;
        self.transitioned(id, State::Received).await;
        Ok(id)
    }

    /// A `cosigner.put` to the satellite's keyhash: decrypts and submits the PSBT.
    pub async fn submit_mailbox_message(&self, message: &str) -> Result<RequestId, ServiceError> {
        let plain = ecies::decrypt(&self.mailbox_key, message)?;
        self.submit_psbt(None, &plain, None).await
    }

    /// Parses a PSBT given as raw bytes, base64 or hex.
    pub fn parse_psbt(bytes: &[u8]) -> Result<Psbt, ServiceError> {
        if bytes.starts_with(b"psbt\xff") {
            return Psbt::deserialize(bytes).map_err(|e| ServiceError::BadPsbt(e.to_string()));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ServiceError::BadPsbt("neither PSBT bytes nor text".into()))?
            .trim();
        if let Ok(raw) = hex::decode(text) {
            return Psbt::deserialize(&raw).map_err(|e| ServiceError::BadPsbt(e.to_string()));
        }
        text.parse::<Psbt>()
            .map_err(|e| ServiceError::BadPsbt(format!("not a PSBT in base64 or hex: {e}")))
    }

    async fn candidate_wallets(&self, psbt: &Psbt) -> Result<Vec<WalletRecord>, ServiceError> {
        let mut fps: Vec<Fingerprint> = psbt
            .inputs
            .iter()
            .take(1)
            .flat_map(|i| i.bip32_derivation.values().map(|(fp, _)| *fp))
            .chain(psbt.xpub.values().map(|(fp, _)| *fp))
            .collect();
        fps.sort();
        fps.dedup();
        Ok(self
            .store
            .read(move |txn| {
                let index = txn.open_table(WALLET_BY_FINGERPRINT).map_err(db_err)?;
                let wallets = txn.open_table(WALLETS).map_err(db_err)?;
                let mut ids = Vec::new();
                for fp in fps {
                    let lo = index_key(&fp, &WalletId([0; 16]));
                    let hi = index_key(&fp, &WalletId([0xff; 16]));
                    for row in index.range::<&[u8; 20]>(&lo..=&hi).map_err(db_err)? {
                        let (k, _) = row.map_err(db_err)?;
                        let mut id = [0u8; 16];
                        id.copy_from_slice(&k.value()[4..]);
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                let mut out = Vec::new();
                for id in ids {
                    if let Some(v) = wallets.get(&id).map_err(db_err)? {
                        out.push(from_bytes::<WalletRecord>(v.value())?);
                    }
                }
                Ok(out)
            })
            .await?)
    }

    /// Fills every input's missing previous transaction from the upstream server.
    async fn fill_previous(&self, psbt: &mut Psbt) -> Result<(), ServiceError> {
        let Some(upstream) = self.upstream.clone() else {
            return Ok(());
        };
        for i in 0..psbt.inputs.len() {
            if psbt.inputs[i].non_witness_utxo.is_some() {
                continue;
            }
            let txid = psbt.unsigned_tx.input[i].previous_output.txid;
            let up = upstream.clone();
            let tx = tokio::task::spawn_blocking(move || up.transaction(&txid))
                .await
                .map_err(|e| StoreError::Database(e.to_string()))??;
            tracing::info!(input = i, %txid, "filled the previous transaction from upstream");
            psbt.inputs[i].non_witness_utxo = Some(tx);
        }
        Ok(())
    }

    /// Asks the upstream server whether every input is still unspent, and refuses a PSBT
    /// whose input another transaction already spent (naming the input and the spender). An
    /// input spent by the transaction of the request this one replaces is fine. A server
    /// that cannot answer is logged and skipped: the check spares the user an email for a
    /// spend that cannot confirm; the cosigner's own rules are what protect the funds.
    pub(crate) async fn check_unspent(
        &self,
        psbt: &Psbt,
        replaces: Option<RequestId>,
    ) -> Result<(), ServiceError> {
        let Some(upstream) = self.upstream.clone() else {
            return Ok(());
        };
        let replaced = match replaces {
            Some(id) => match self.request(id).await?.action {
                Action::Sign { psbt, .. } => Psbt::deserialize(&psbt)
                    .ok()
                    .map(|p| p.unsigned_tx.compute_txid()),
                _ => None,
            },
            None => None,
        };
        let inputs: Vec<(usize, bitcoin::OutPoint, bitcoin::ScriptBuf)> = psbt
            .unsigned_tx
            .input
            .iter()
            .zip(&psbt.inputs)
            .enumerate()
            .filter_map(|(i, (txin, input))| {
                let prev = input.non_witness_utxo.as_ref()?;
                let out = prev.output.get(txin.previous_output.vout as usize)?;
                Some((i, txin.previous_output, out.script_pubkey.clone()))
            })
            .collect();
        let found = tokio::task::spawn_blocking(move || {
            let mut unspent: HashMap<bitcoin::ScriptBuf, Vec<bitcoin::OutPoint>> = HashMap::new();
            for (index, outpoint, script) in inputs {
                let listed = match unspent.get(&script) {
                    Some(l) => l,
                    None => unspent
                        .entry(script.clone())
                        .or_insert(upstream.unspent(&script)?),
                };
                if listed.contains(&outpoint) {
                    continue;
                }
                // Not listed: spent (find by what), or unknown to the server (left to the
                // broadcast to tell).
                match find_spender(upstream.as_ref(), &outpoint, &script)? {
                    Some(s) if Some(s.txid) == replaced => {}
                    Some(s) => return Ok(Some((index, outpoint, s))),
                    None => {}
                }
            }
            Ok::<_, UpstreamError>(None)
        })
        .await
        .map_err(db_err)?;
        match found {
            Ok(None) => Ok(()),
            Ok(Some((index, outpoint, spender))) => Err(ServiceError::InputSpent {
                index,
                outpoint,
                spent_by: spender.txid,
                height: spender.height,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check that the inputs are unspent; going on");
                Ok(())
            }
        }
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

    /// `request.submit` and mailbox puts: checks the PSBT against the wallet with the
    /// cosigner's own code, refuses early what the policy would refuse, and opens (or
    /// updates) a request.
    pub async fn submit_psbt(
        &self,
        wallet_id: Option<WalletId>,
        bytes: &[u8],
        replaces: Option<RequestId>,
    ) -> Result<RequestId, ServiceError> {
        self.submit_psbt_with(wallet_id, bytes, replaces, None)
            .await
    }

    /// As [`Self::submit_psbt`], running `on_open` in the transaction that opens the request.
    ///
    /// Cheap checks come first: the PSBT's size, the wallet's state and its hourly limit
    /// are checked before the upstream server is asked anything.
    pub async fn submit_psbt_with(
        &self,
        wallet_id: Option<WalletId>,
        bytes: &[u8],
        replaces: Option<RequestId>,
        on_open: Option<OnOpen>,
    ) -> Result<RequestId, ServiceError> {
        let now = unix_now();
        // A named wallet is looked up before the PSBT is decoded: a stranger's submits for
        // wallets that are unknown, unconfirmed or over their limit cost a lookup only.
        let named = match wallet_id {
            Some(id) => {
                let record = self.wallet_record(id).await?;
                may_request(&record, &self.gate, now)?;
                Some(record)
            }
            None => None,
        };
        let mut psbt = Self::parse_psbt(bytes)?;
        if psbt.inputs.is_empty() || psbt.outputs.is_empty() {
            return Err(ServiceError::BadPsbt(
                "the transaction has no inputs or no outputs".into(),
            ));
        }
        let (inputs, outputs) = (psbt.inputs.len(), psbt.outputs.len());
        if inputs > self.gate.max_psbt_inputs || outputs > self.gate.max_psbt_outputs {
            return Err(ServiceError::BadPsbt(format!(
                "{inputs} inputs and {outputs} outputs; at most {} inputs and {} outputs are co-signed",
                self.gate.max_psbt_inputs, self.gate.max_psbt_outputs
            )));
        }
        let candidates = match named {
            Some(record) => vec![record],
            None => {
                let all = self.candidate_wallets(&psbt).await?;
                let first = all.first().cloned();
                let open: Vec<WalletRecord> = all
                    .into_iter()
                    .filter(|r| may_request(r, &self.gate, now).is_ok())
                    .collect();
                match (open.is_empty(), first) {
                    (true, Some(first)) => {
                        return Err(may_request(&first, &self.gate, now)
                            .err()
                            .unwrap_or(ServiceError::NoWalletForPsbt))
                    }
                    _ => open,
                }
            }
        };
        if candidates.is_empty() {
            return Err(ServiceError::NoWalletForPsbt);
        }
        self.fill_previous(&mut psbt).await?;
        self.check_unspent(&psbt, replaces).await?;
        let mut first_refusal = None;
        let mut found = None;
        for record in candidates {
            let wallet = self.wallet(&record)?;
            match analyze(&self.secp, &wallet, &psbt) {
                Ok(spend) => {
                    found = Some((record, wallet, spend));
                    break;
                }
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        let Some((record, wallet, spend)) = found else {
            return Err(match (wallet_id, first_refusal) {
                (Some(_), Some(r)) => ServiceError::Refused(r),
                (None, Some(Refusal::InputNotInWallet { .. })) | (None, None) => {
                    ServiceError::NoWalletForPsbt
                }
                (None, Some(r)) => ServiceError::Refused(r),
                (Some(id), None) => ServiceError::UnknownWallet(id),
            });
        };
        let refused = check_policy(&spend, &record.policy, &[], now, replaces).err();
        if let (Some(refusal), None) = (&refused, &on_open) {
            return Err(ServiceError::Refused(refusal.clone()));
        }
        let summary = summarize(&spend, self.network);
        let reply_to: Vec<String> = wallet
            .xpubs
            .iter()
            .filter(|x| *x != wallet.our_xpub())
            .map(|x| x.to_string())
            .collect();
        let action = Action::Sign {
            psbt: psbt.serialize(),
            summary,
            reply_to,
            replaces,
        };
        let wallet_id = record.id;
        let on_open = match (refused, on_open) {
            (Some(refusal), Some(on_open)) => {
                return self
                    .record_refusal(wallet_id, action, refusal, on_open, now)
                    .await;
            }
            (_, on_open) => on_open,
        };
        let txid = spend.txid.to_string();
        let gate = self.gate.clone();
        let new_id = RequestId(random_id());
        let (id, state) = self
            .store
            .write(move |txn| {
                let opened =
                    open_or_update_sign(txn, wallet_id, new_id, action, &txid, now, &gate)?;
                if let (Ok((id, _)), Some(on_open)) = (&opened, on_open) {
                    on_open(txn, *id)?;
                }
                Ok(opened)
            })
            .await??;
        self.transitioned(id, state).await;
        Ok(id)
    }

    /// A PSBT refused before any email, from a caller that cannot be answered at once (a
    /// Nostr message): the refusal becomes a request of its own, already `refused`, so
    /// `request.status` shows it and delivery answers it (by email and where it came from).
    async fn record_refusal(
        &self,
        wallet_id: WalletId,
        action: Action,
        refusal: Refusal,
        on_open: OnOpen,
        now: u64,
    ) -> Result<RequestId, ServiceError> {
        let id = RequestId(random_id());
        let outcome = Outcome::Refused {
            code: refusal.code().to_owned(),
            reason: refusal.to_string(),
        };
        tracing::info!(request = %id, reason = refusal.code(), "refused before any email");
        self.store
            .write(move |txn| {
                let mut r = new_request(id, wallet_id, action, State::Refused, now);
                r.outcome = Some(outcome);
                save_request(txn, &r)?;
                on_open(txn, id)
            })
            .await?;
        self.transitioned(id, State::Refused).await;
        Ok(id)
    }

    /// `request.confirm`, and Confirm on the page: checks the code and consumes it in the
    /// transaction that advances the request.
    pub async fn confirm(
        &self,
        id: RequestId,
        code: &str,
        approve: bool,
    ) -> Result<State, ServiceError> {
        // The email goes out just before its code is recorded: a user (or script) quick
        // enough to answer in between waits for the record instead of being refused.
        let events = self.events();
        match self.confirm_once(id, code, approve).await {
            Err(ServiceError::WrongState {
                state: "received", ..
            }) => {
                Self::email_recorded(id, events).await;
                self.confirm_once(id, code, approve).await
            }
            other => other,
        }
    }

    /// Waits (up to 10 s) until request `id` leaves `received`, i.e. until the code of the
    /// email that just went out is recorded. `events` is subscribed before the first try.
    async fn email_recorded(id: RequestId, mut events: broadcast::Receiver<Event>) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Ok(e) = events.recv().await {
                if e.id == id && e.state != State::Received {
                    return;
                }
            }
        })
        .await;
    }

    async fn confirm_once(
        &self,
        id: RequestId,
        code: &str,
        approve: bool,
    ) -> Result<State, ServiceError> {
        let hash = gate::hash_code(code);
        let max_attempts = self.gate.max_attempts;
        let now = unix_now();
        let result = self
            .store
            .write(
                move |txn| -> Result<Result<(State, bool), ServiceError>, StoreError> {
                    let Some(mut r) = load_request(txn, &id)? else {
                        return Ok(Err(ServiceError::UnknownRequest(id)));
                    };
                    if r.state != State::AwaitingEmail {
                        return Ok(Err(ServiceError::WrongState {
                            id,
                            state: r.state.as_str(),
                            action: "confirming",
                            allowed: "awaiting_email",
                        }));
                    }
                    let token = hash.and_then(|h| r.tokens.iter().find(|t| t.hash == h).cloned());
                    let Some(token) = token else {
                        r.failed_attempts += 1;
                        r.updated_at = now;
                        if r.failed_attempts >= max_attempts {
                            r.state = State::Cancelled;
                            r.tokens.clear();
                            r.note = Some("voided after too many wrong codes".into());
                            r.version += 1;
                            save_request(txn, &r)?;
                            return Ok(Err(ServiceError::Voided(id)));
                        }
                        let left = max_attempts - r.failed_attempts;
                        save_request(txn, &r)?;
                        return Ok(Err(ServiceError::WrongCode {
                            id,
                            attempts_left: left,
                        }));
                    };
                    if token.expires_at <= now {
                        return Ok(Err(ServiceError::CodeExpired(id)));
                    }
                    if token.digest != approval_digest(&r.id, &r.action) {
                        return Ok(Err(ServiceError::ContentChanged(id)));
                    }
                    r.tokens.clear();
                    r.updated_at = now;
                    r.version += 1;
                    if !approve {
                        r.state = State::Cancelled;
                        r.note = Some("rejected by the user".into());
                    } else {
                        r.approved_at = Some(now);
                        r.state = State::Confirmed;
                        if let Action::UpdateEmail { new_email } = &r.action {
                            // Nothing for the cosigner: applied here, in the same transaction.
                            let Some(mut w) = load_wallet(txn, &r.wallet_id)? else {
                                return Ok(Err(ServiceError::UnknownWallet(r.wallet_id)));
                            };
                            let old = std::mem::replace(&mut w.email, new_email.clone());
                            save_wallet(txn, &w)?;
                            r.state = State::Signed;
                            r.outcome = Some(Outcome::Done {
                                detail: format!(
                                    "confirmations now go to {new_email} instead of {old}"
                                ),
                            });
                            r.note = Some(old);
                        }
                    }
                    save_request(txn, &r)?;
                    Ok(Ok((r.state, true)))
                },
            )
            .await
            .map_err(ServiceError::from)
            .and_then(|r| r);
        let (state, changed) = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::info!(request = %id, error = %e, "confirmation refused");
                if matches!(e, ServiceError::Voided(_)) {
                    // Committed: subscribers (and the relay) hear the request end.
                    self.transitioned(id, State::Cancelled).await;
                }
                return Err(e);
            }
        };
        if changed {
            self.transitioned(id, state).await;
        }
        Ok(state)
    }

    /// What the confirmation page shows for `id` and `code`: read-only (a GET must change
    /// nothing, not even the count of wrong attempts).
    pub async fn page_view(
        &self,
        id: RequestId,
        code: &str,
    ) -> Result<(WalletRecord, RequestRecord, u64), ServiceError> {
        // As for `confirm`: a link opened before its code is recorded waits for the record.
        let events = self.events();
        match self.page_view_once(id, code).await {
            Err(ServiceError::WrongState {
                state: "received", ..
            }) => {
                Self::email_recorded(id, events).await;
                self.page_view_once(id, code).await
            }
            other => other,
        }
    }

    async fn page_view_once(
        &self,
        id: RequestId,
        code: &str,
    ) -> Result<(WalletRecord, RequestRecord, u64), ServiceError> {
        let r = self.request(id).await?;
        if r.state != State::AwaitingEmail {
            return Err(ServiceError::WrongState {
                id,
                state: r.state.as_str(),
                action: "confirming",
                allowed: "awaiting_email",
            });
        }
        let hash = gate::hash_code(code);
        let Some(token) = hash.and_then(|h| r.tokens.iter().find(|t| t.hash == h)) else {
            return Err(ServiceError::WrongCode {
                id,
                attempts_left: self.gate.max_attempts.saturating_sub(r.failed_attempts),
            });
        };
        if token.expires_at <= unix_now() {
            return Err(ServiceError::CodeExpired(id));
        }
        if token.digest != approval_digest(&r.id, &r.action) {
            return Err(ServiceError::ContentChanged(id));
        }
        let expires_at = token.expires_at;
        let wallet = self.wallet_record(r.wallet_id).await?;
        Ok((wallet, r, expires_at))
    }

    /// `request.cancel`: possible until the request is handed to the link.
    pub async fn cancel(&self, id: RequestId) -> Result<State, ServiceError> {
        let now = unix_now();
        let state = self
            .store
            .write(move |txn| {
                let Some(mut r) = load_request(txn, &id)? else {
                    return Ok(Err(ServiceError::UnknownRequest(id)));
                };
                if !matches!(r.state, State::Received | State::AwaitingEmail | State::Confirmed) {
                    return Ok(Err(ServiceError::WrongState {
                        id,
                        state: r.state.as_str(),
                        action: "cancelling",
                        allowed: "received, awaiting_email or confirmed (before it is queued for the satellite)",
                    }));
                }
                r.state = State::Cancelled;
                r.tokens.clear();
                r.note = Some("cancelled by the user".into());
                r.updated_at = now;
                r.version += 1;
                save_request(txn, &r)?;
                Ok(Ok(r.state))
            })
            .await??;
        self.transitioned(id, state).await;
        Ok(state)
    }

    /// `request.resend`: a new email with a new code, within the limits.
    pub async fn resend(&self, id: RequestId) -> Result<(), ServiceError> {
        let r = self.request(id).await?;
        if r.state != State::AwaitingEmail {
            return Err(ServiceError::WrongState {
                id,
                state: r.state.as_str(),
                action: "resending",
                allowed: "awaiting_email",
            });
        }
        may_email_again(&r, &self.gate, unix_now())?;
        // The relay (or another resend) is working on this request now: one email at a time.
        let Some(_claim) = self.claim(id) else {
            return Err(ServiceError::RateLimited {
                what: "emails for this request",
                retry_after: "a moment (an email for it is being sent)".into(),
            });
        };
        self.send_confirmation(&r).await
    }

    /// Sends `email`, counted for `/metrics`.
    pub(crate) async fn send_mail(&self, email: crate::mail::Email) -> Result<(), MailError> {
        let result = self.mailer.send(email).await;
        self.counters.email(result.is_ok());
        result
    }

    /// Emails a fresh code for `r` and records its hash (the email first, so a crash
    /// between the two costs a dead code, never a lost email).
    pub(crate) async fn send_confirmation(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        let wallet = self.wallet_record(r.wallet_id).await?;
        let token = gate::new_token();
        let now = unix_now();
        let expires_at = now + self.gate.token_ttl_secs;
        let email = notice::confirm_email(&self.public_url(), &wallet, r, &token.text, expires_at);
        self.send_mail(email).await?;
        let record = TokenRecord {
            hash: token.hash,
            digest: approval_digest(&r.id, &r.action),
            expires_at,
        };
        let id = r.id;
        let expected_version = r.version;
        let state = self
            .store
            .write(move |txn| {
                let Some(mut cur) = load_request(txn, &id)? else {
                    return Ok(None);
                };
                if !matches!(cur.state, State::Received | State::AwaitingEmail)
                    || cur.version != expected_version
                {
                    return Ok(None);
                }
                cur.tokens.retain(|t| t.expires_at > now);
                cur.tokens.push(record);
                cur.emails_sent += 1;
                cur.last_email_at = now;
                cur.state = State::AwaitingEmail;
                cur.updated_at = now;
                cur.version += 1;
                save_request(txn, &cur)?;
                Ok(Some(cur.state))
            })
            .await?;
        if let Some(s) = state {
            self.transitioned(id, s).await;
        }
        Ok(())
    }

    /// Marks requests whose every code expired as expired.
    pub async fn expire_stale(&self) -> Result<usize, ServiceError> {
        let now = unix_now();
        let ids = self.active_requests().await?;
        let mut expired = Vec::new();
        for id in ids {
            let done = self
                .store
                .write(move |txn| {
                    let Some(mut r) = load_request(txn, &id)? else {
                        return Ok(false);
                    };
                    if r.state != State::AwaitingEmail
                        || r.tokens.iter().any(|t| t.expires_at > now)
                    {
                        return Ok(false);
                    }
                    r.state = State::Expired;
                    r.tokens.clear();
                    r.updated_at = now;
                    r.version += 1;
                    save_request(txn, &r)?;
                    Ok(true)
                })
                .await?;
            if done {
                expired.push(id);
            }
        }
        for id in &expired {
            self.transitioned(*id, State::Expired).await;
        }
        Ok(expired.len())
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

/// Electrum shows multisig keys in SLIP-132 form (`Vpub...`, `Zpub...`); descriptors take
/// them as `tpub`/`xpub`. Rewrites every such key of `descriptor` so users can paste the
/// keys Electrum's Wallet > Information shows.
pub fn plain_xpubs(descriptor: &str) -> String {
    let mut out = String::with_capacity(descriptor.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match satcosign_cosigner::keys::parse_any_xpub(token) {
            Some(x) if token.len() > 100 && !token.starts_with(['x', 't']) => {
                out.push_str(&x.to_string())
            }
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in descriptor.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    if out != descriptor {
        // A checksum over the SLIP-132 text is not one over the rewritten descriptor.
        if let Some(i) = out.find('#') {
            out.truncate(i);
        }
    }
    out
}

fn new_request(
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
    }
}

/// Whether request `r` may be sent another email now: at most `max_emails` in all, and
/// `resend_interval_secs` apart. The one rule for resends and resubmissions.
fn may_email_again(r: &RequestRecord, gate: &GateConfig, now: u64) -> Result<(), ServiceError> {
    if r.emails_sent >= gate.max_emails {
        return Err(ServiceError::RateLimited {
            what: "emails for this request",
            retry_after: "never (cancel it and make a new request)".into(),
        });
    }
    let next = r.last_email_at + gate.resend_interval_secs;
    if r.emails_sent > 0 && now < next {
        return Err(ServiceError::RateLimited {
            what: "emails for this request",
            retry_after: notice::format_utc(next),
        });
    }
    Ok(())
}

/// Opens a signing request, or updates the one still waiting for the user that spends the
/// same transaction (its old codes then approve nothing: they were bound to the old PSBT).
fn open_or_update_sign(
    txn: &WriteTransaction,
    wallet_id: WalletId,
    new_id: RequestId,
    action: Action,
    txid: &str,
    now: u64,
    gate: &GateConfig,
) -> Result<Result<(RequestId, State), ServiceError>, StoreError> {
    let Some(mut wallet) = load_wallet(txn, &wallet_id)? else {
        return Ok(Err(ServiceError::UnknownWallet(wallet_id)));
    };
    let active: Vec<[u8; 16]> = {
        let t = txn.open_table(ACTIVE).map_err(db_err)?;
        let mut ids = Vec::new();
        for row in t.iter().map_err(db_err)? {
            ids.push(*row.map_err(db_err)?.0.value());
        }
        ids
    };
    for raw in active {
        let Some(mut r) = load_request(txn, &RequestId(raw))? else {
            continue;
        };
        let same_tx = matches!(&r.action, Action::Sign { summary, .. } if summary.txid == txid);
        if r.wallet_id != wallet_id || !same_tx {
            continue;
        }
        if !matches!(r.state, State::Received | State::AwaitingEmail) {
            return Ok(Err(ServiceError::WrongState {
                id: r.id,
                state: r.state.as_str(),
                action: "submitting this transaction again",
                allowed: "received or awaiting_email (it is already confirmed)",
            }));
        }
        if r.action == action {
            return Ok(Ok((r.id, r.state)));
        }
        // A changed PSBT for the same transaction needs a new email (the old codes were
        // bound to the old PSBT): it counts against the request's emails like a resend,
        // so nobody can mail the owner without end by resubmitting.
        if let Err(e) = may_email_again(&r, gate, now) {
            return Ok(Err(e));
        }
        r.action = action;
        r.state = State::Received;
        r.updated_at = now;
        r.version += 1;
        save_request(txn, &r)?;
        return Ok(Ok((r.id, r.state)));
    }
    let hour_ago = now.saturating_sub(3600);
    wallet.recent_requests.retain(|t| *t > hour_ago);
    if let Err(e) = may_request(&wallet, gate, now) {
        return Ok(Err(e));
    }
    wallet.recent_requests.push(now);
    save_wallet(txn, &wallet)?;
    save_request(
        txn,
        &new_request(new_id, wallet_id, action, State::Received, now),
    )?;
    Ok(Ok((new_id, State::Received)))
}

/// Used by [`crate::relay`]: loads, changes and saves a request in one transaction if it is
/// still in `from`; returns the saved record.
pub(crate) async fn transition(
    store: &Store,
    id: RequestId,
    from: &[State],
    change: impl FnOnce(&WriteTransaction, &mut RequestRecord) -> Result<(), StoreError>
        + Send
        + 'static,
) -> Result<Option<RequestRecord>, StoreError> {
    let from = from.to_vec();
    store
        .write(move |txn| {
            let Some(mut r) = load_request(txn, &id)? else {
                return Ok(None);
            };
            if !from.contains(&r.state) {
                return Ok(None);
            }
            change(txn, &mut r)?;
            r.updated_at = unix_now();
            r.version += 1;
            state::save_request(txn, &r)?;
            Ok(Some(r))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::plain_xpubs;

    #[test]
    fn electrums_vpub_keys_become_tpubs_and_the_rest_is_unchanged() {
        let tpub = "tpubDFZBNTpvF2ZW2AUpjJ4bHTCsQRXrUxggsQcWr7HsMyBwuEUmtUcp2gNgUi46cMjuKYQaf8QTAr5U7JTUpT1SC7fQuU8Gpgt5qvxSXHwUUZb";
        let x = satcosign_cosigner::keys::parse_any_xpub(tpub).expect("tpub");
        let vpub = satcosign_cosigner::keys::slip132(&x);
        assert!(vpub.starts_with("Vpub"));
        let given = format!(
            "wsh(sortedmulti(2,[eb3191e0/48h/1h/0h/2h]{vpub}/<0;1>/*,{tpub}/<0;1>/*))#abcd"
        );
        let want =
            format!("wsh(sortedmulti(2,[eb3191e0/48h/1h/0h/2h]{tpub}/<0;1>/*,{tpub}/<0;1>/*))");
        assert_eq!(plain_xpubs(&given), want);
        assert_eq!(
            plain_xpubs("wsh(pk(garbage))#abcd"),
            "wsh(pk(garbage))#abcd"
        );
    }
}
