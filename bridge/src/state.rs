//! The bridge's records in redb: registered wallets and gated requests.
//!
//! Records are postcard-encoded serde structs, one table per kind, keyed by their 16-byte
//! ids. A request is a persisted state machine ([`State`]); every transition is one write
//! transaction (see [`crate::service`]), so after a crash each request resumes where it
//! stood. Email tokens are stored only as SHA-256 hashes.

use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use satcosign_cosigner::decision::Hold;
use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::wallet::WalletId;

use crate::store::StoreError;

/// Wallets: wallet id -> [`WalletRecord`].
pub const WALLETS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("wallets");
/// Key-fingerprint index: fingerprint (4) ++ wallet id (16) -> ().
pub const WALLET_BY_FINGERPRINT: TableDefinition<&[u8; 20], ()> =
    TableDefinition::new("wallet_by_fingerprint");
/// Requests: request id -> [`RequestRecord`].
pub const REQUESTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("requests");
/// Requests still moving (not in a final state): request id -> ().
pub const ACTIVE: TableDefinition<&[u8; 16], ()> = TableDefinition::new("active_requests");
/// Recent uses of each [`crate::allowance`] (unix seconds, postcard `Vec<u64>`), keyed by
/// a SHA-256: of the inbox ([`crate::wallets::mailbox_of`]), of `registrations from:<ip>`,
/// of `changes:<wallet id>`, and [`ALL_REGISTRATIONS`] for every registration together.
pub const REGISTRATIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("registrations");
/// Loosenings the satellite accepted and holds back: wallet id -> [`PendingPolicy`]. A
/// mirror of the cosigner's `PolicyState::pending`, kept from its answers; redb's own table
/// so wallet records keep their encoding.
pub const PENDING_POLICIES: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("pending_policies");
/// What each satellite signature of a signing request must verify against, computed at
/// intake: request id -> postcard [`crate::answer::IntakeChecks`]. Removed on delivery.
pub const INTAKE_CHECKS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("intake_checks");
/// The database's own facts: `layout` -> [`LAYOUT`] (big-endian u32).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The layout of the records this bridge writes. 1: before the satellite's guards (no
/// record of it); 2: policies carry their layout version and the new rules, requests a
/// satellite hold, violations their `ready_at`.
pub const LAYOUT: u32 = 2;

/// Refuses a database whose records are in another layout, never misreading them; stamps
/// a new one with [`LAYOUT`].
pub fn check_layout(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(db_err)?;
    let found = match meta.get("layout").map_err(db_err)? {
        Some(v) => Some(
            <[u8; 4]>::try_from(v.value())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Database("corrupt record: meta layout".into()))?,
        ),
        None => None,
    };
    match found {
        Some(LAYOUT) => Ok(()),
        Some(found) => Err(StoreError::Layout {
            found,
            expected: LAYOUT,
        }),
        None => {
            // Wallets written without a stamp are layout 1's.
            let wallets = txn.open_table(WALLETS).map_err(db_err)?;
            if wallets.iter().map_err(db_err)?.next().is_some() {
                return Err(StoreError::Layout {
                    found: 1,
                    expected: LAYOUT,
                });
            }
            meta.insert("layout", LAYOUT.to_be_bytes().as_slice())
                .map_err(db_err)?;
            Ok(())
        }
    }
}

/// The [`REGISTRATIONS`] key counting every address.
pub const ALL_REGISTRATIONS: [u8; 32] = [0; 32];

/// Creates every table, so readers never meet a missing one.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), crate::store::tables::TableError> {
    txn.open_table(WALLETS)?;
    txn.open_table(WALLET_BY_FINGERPRINT)?;
    txn.open_table(REQUESTS)?;
    txn.open_table(ACTIVE)?;
    txn.open_table(REGISTRATIONS)?;
    txn.open_table(PENDING_POLICIES)?;
    txn.open_table(INTAKE_CHECKS)?;
    txn.open_table(crate::watch::WATCHES)?;
    txn.open_table(crate::last_violation::LAST_VIOLATIONS)?;
    crate::wallet_keys::create_tables(txn)?;
    crate::signed_history::create_tables(txn)?;
    Ok(())
}

/// Encodes a record.
pub fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain data into a Vec: cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Decodes a record.
pub fn from_bytes<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Database(format!("corrupt record: {e}")))
}

/// Where a wallet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletState {
    /// Waiting for the registration to be confirmed and accepted by the cosigner.
    Pending,
    /// Registered with the cosigner: requests may be made.
    Active,
    /// The cosigner (or the user) refused the registration.
    Refused,
}

/// A wallet as the bridge knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRecord {
    /// The id (the cosigner computes the same one).
    pub id: WalletId,
    /// The descriptors as given.
    pub descriptors: Vec<String>,
    /// The user's name for it.
    pub label: String,
    /// Where confirmations go.
    pub email: String,
    /// Registration state.
    pub state: WalletState,
    /// The policy the user asked for (the cosigner's word is final).
    pub policy: Policy,
    /// Why it was refused, if it was.
    pub refusal: Option<String>,
    /// When registered, unix seconds.
    pub created_at: u64,
    /// Signing requests made recently (unix seconds), for the per-wallet rate limit.
    pub recent_requests: Vec<u64>,
    /// The index of its satellite key under the issuer key (see [`crate::wallet_keys`]).
    pub key_index: u32,
}

/// A looser policy the satellite accepted, and when it takes effect there (its delay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPolicy {
    /// The policy that will apply.
    pub policy: Policy,
    /// When, unix seconds (the satellite's word).
    pub effective_at: u64,
}

impl PendingPolicy {
    /// As `wallet.status` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "policy": serde_json::to_value(&self.policy).unwrap_or_default(),
            "effective_at": self.effective_at,
        })
    }
}

/// Reads wallet `id`'s pending loosening from `table`.
pub fn pending_policy(
    table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
    id: &WalletId,
) -> Result<Option<PendingPolicy>, StoreError> {
    let v = table.get(&id.0).map_err(db_err)?;
    v.map(|v| from_bytes(v.value())).transpose()
}

/// `w` as the satellite sees it at `now`: a pending loosening whose time has come is its
/// policy (as the cosigner's `PolicyState::effective`).
pub fn settle_policy(w: &mut WalletRecord, pending: Option<PendingPolicy>, now: u64) {
    if let Some(p) = pending.filter(|p| p.effective_at <= now) {
        w.policy = p.policy;
    }
}

/// Records what the satellite did with a policy update of `w`, as the cosigner's
/// `PolicyState::update` does: `None` applied it now (and cancels any loosening waiting),
/// `Some(at)` holds it back until `at`.
pub fn mirror_policy_change(
    txn: &WriteTransaction,
    w: &mut WalletRecord,
    policy: Policy,
    deferred_until: Option<u64>,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(PENDING_POLICIES).map_err(db_err)?;
    match deferred_until {
        None => {
            w.policy = policy;
            t.remove(&w.id.0).map_err(db_err)?;
        }
        Some(effective_at) => {
            let pending = PendingPolicy {
                policy,
                effective_at,
            };
            t.insert(&w.id.0, to_bytes(&pending).as_slice())
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// A request's state. Final states: `Delivered`, and `Refused`/`Expired`/`Cancelled` once
/// the user was told (they also end in `Delivered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Received and checked; the email is about to go.
    Received,
    /// Emailed; waiting for the user's confirmation.
    AwaitingEmail,
    /// Confirmed by the user; about to be queued for the link.
    Confirmed,
    /// In the link's outbox.
    Queued,
    /// Received by the cosigner (the link acknowledged it).
    Sent,
    /// Signed (or accepted, for non-signing actions); the result is ready to deliver.
    Signed,
    /// The cosigner refused.
    Refused,
    /// The user never confirmed in time.
    Expired,
    /// Cancelled by the user, rejected on the page, or voided by too many wrong codes.
    Cancelled,
    /// The outcome was delivered (mailbox, broadcast, email, subscribers).
    Delivered,
}

impl State {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::AwaitingEmail => "awaiting_email",
            State::Confirmed => "confirmed",
            State::Queued => "queued",
            State::Sent => "sent",
            State::Signed => "signed",
            State::Refused => "refused",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Delivered => "delivered",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<State> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }

    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, State::Delivered)
    }
}

/// Every state, in order.
pub const ALL_STATES: [State; 10] = [
    State::Received,
    State::AwaitingEmail,
    State::Confirmed,
    State::Queued,
    State::Sent,
    State::Signed,
    State::Refused,
    State::Expired,
    State::Cancelled,
    State::Delivered,
];

/// One destination as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Address, or the script in hex when it has no address form.
    pub address: String,
    /// Amount, sat.
    pub amount_sat: u64,
}

/// What a signing request spends, as shown to the user and bound by the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendSummary {
    /// Transaction id (of the unsigned transaction).
    pub txid: String,
    /// Payments out of the wallet.
    pub destinations: Vec<Destination>,
    /// Back to the wallet (change, and payments to its own receive addresses), sat.
    pub change_sat: u64,
    /// Fee, sat.
    pub fee_sat: u64,
    /// Fee rate, sat/vB.
    pub fee_rate_sat_vb: u64,
    /// Total leaving the wallet (payments plus fee), sat.
    pub leaving_sat: u64,
    /// Inputs spent.
    pub inputs: usize,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Register the wallet with the cosigner.
    Register,
    /// Cosign a PSBT.
    Sign {
        /// The PSBT (BIP-174), as submitted (with previous transactions filled in).
        psbt: Vec<u8>,
        /// What it spends.
        summary: SpendSummary,
        /// Keyhashes (with their xpubs) the result goes back to.
        reply_to: Vec<String>,
        /// An earlier request this one replaces.
        replaces: Option<RequestId>,
    },
    /// Change the wallet's email address (confirmed at the old one).
    UpdateEmail {
        /// The new address.
        new_email: String,
    },
    /// Change the wallet's policy.
    SetPolicy {
        /// The new policy.
        policy: Policy,
    },
}

impl Action {
    /// The kind's name in the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Sign { .. } => "sign",
            Action::UpdateEmail { .. } => "update_email",
            Action::SetPolicy { .. } => "set_policy",
        }
    }
}

/// One emailed token, stored as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// Digest of exactly what it approves (see [`crate::gate::approval_digest`]).
    pub digest: [u8; 32],
    /// When it stops working, unix seconds.
    pub expires_at: u64,
}

/// The outcome delivered to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Signed: the PSBT with the satellite's signatures, and the final transaction when
    /// complete.
    Signed {
        /// The merged PSBT.
        psbt: Vec<u8>,
        /// The final transaction, if every signature needed is present.
        tx: Option<Vec<u8>>,
        /// Whether the upstream server accepted the broadcast.
        broadcast: Option<Result<String, String>>,
    },
    /// Accepted (non-signing actions).
    Done {
        /// What the cosigner said.
        detail: String,
    },
    /// Refused by the cosigner or the bridge, with a reason code and text.
    Refused {
        /// Machine-readable code.
        code: String,
        /// Human-readable reason.
        reason: String,
    },
}

/// A gated request and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The id.
    pub id: RequestId,
    /// The wallet concerned.
    pub wallet_id: WalletId,
    /// What it asks for.
    pub action: Action,
    /// Where it stands.
    pub state: State,
    /// Tokens emailed for it (hashes only).
    pub tokens: Vec<TokenRecord>,
    /// Wrong codes tried.
    pub failed_attempts: u32,
    /// Emails sent for it (the first and every resend).
    pub emails_sent: u32,
    /// When the last email went, unix seconds.
    pub last_email_at: u64,
    /// When the user approved, unix seconds.
    pub approved_at: Option<u64>,
    /// The outcome, once known.
    pub outcome: Option<Outcome>,
    /// Why it was cancelled or expired, if it was.
    pub note: Option<String>,
    /// The state before `Delivered` (what was delivered: signed, refused, expired...).
    pub final_state: Option<State>,
    /// When created, unix seconds.
    pub created_at: u64,
    /// When it last changed, unix seconds.
    pub updated_at: u64,
    /// Changes so far; increases with each transition (for subscribers).
    pub version: u32,
    /// The link message that carries it to the cosigner, once queued.
    pub link_msg: Option<u64>,
    /// The satellite's hold on a large spend: when it began and when it releases (the
    /// satellite's clock); the bridge asks again from then, and a cancel goes up the link.
    pub hold: Option<Hold>,
}

/// Reads a request inside a write transaction.
pub fn load_request(
    txn: &WriteTransaction,
    id: &RequestId,
) -> Result<Option<RequestRecord>, StoreError> {
    let t = txn.open_table(REQUESTS).map_err(db_err)?;
    let v = t.get(&id.0).map_err(db_err)?;
    v.map(|v| from_bytes(v.value())).transpose()
}

/// Writes a request inside a write transaction, keeping the active index in step.
pub fn save_request(txn: &WriteTransaction, r: &RequestRecord) -> Result<(), StoreError> {
    let mut t = txn.open_table(REQUESTS).map_err(db_err)?;
    t.insert(&r.id.0, to_bytes(r).as_slice()).map_err(db_err)?;
    let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
    if r.state.is_final() {
        active.remove(&r.id.0).map_err(db_err)?;
    } else {
        active.insert(&r.id.0, ()).map_err(db_err)?;
    }
    Ok(())
}

/// Keeps request `id`'s intake checks (replacing any: a resubmitted PSBT has its own).
pub fn save_checks(
    txn: &WriteTransaction,
    id: &RequestId,
    checks: &crate::answer::IntakeChecks,
) -> Result<(), StoreError> {
    txn.open_table(INTAKE_CHECKS)
        .map_err(db_err)?
        .insert(&id.0, to_bytes(checks).as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Forgets request `id`'s intake checks (it was delivered).
pub fn forget_checks(txn: &WriteTransaction, id: &RequestId) -> Result<(), StoreError> {
    txn.open_table(INTAKE_CHECKS)
        .map_err(db_err)?
        .remove(&id.0)
        .map_err(db_err)?;
    Ok(())
}

/// Reads request `id`'s intake checks from `table`.
pub fn intake_checks(
    table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
    id: &RequestId,
) -> Result<Option<crate::answer::IntakeChecks>, StoreError> {
    let v = table.get(&id.0).map_err(db_err)?;
    v.map(|v| from_bytes(v.value())).transpose()
}

/// Reads a wallet inside a write transaction, with the policy in force on the satellite now.
pub fn load_wallet(
    txn: &WriteTransaction,
    id: &WalletId,
) -> Result<Option<WalletRecord>, StoreError> {
    let t = txn.open_table(WALLETS).map_err(db_err)?;
    let v = t.get(&id.0).map_err(db_err)?;
    let Some(mut w) = v
        .map(|v| from_bytes::<WalletRecord>(v.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let pending = pending_policy(&txn.open_table(PENDING_POLICIES).map_err(db_err)?, id)?;
    settle_policy(&mut w, pending, crate::service::unix_now());
    Ok(Some(w))
}

/// Writes a wallet inside a write transaction.
pub fn save_wallet(txn: &WriteTransaction, w: &WalletRecord) -> Result<(), StoreError> {
    let mut t = txn.open_table(WALLETS).map_err(db_err)?;
    t.insert(&w.id.0, to_bytes(w).as_slice()).map_err(db_err)?;
    Ok(())
}

/// Maps a redb error into a [`StoreError`].
pub fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}
