//! The cosigner's request handler: loads state, asks the pure [`crate::decision`] for a
//! verdict, and makes it durable in the same write transaction before answering.
//!
//! One write transaction per request serializes decisions: two requests can never both
//! read the ledger before either debits it. A signature is returned only after the commit
//! that records it, so a crash at any point either loses the request (the bridge retries,
//! and the retry is judged afresh) or finds it recorded (the retry gets the same signatures
//! and the ledger is not debited again).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::Network;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::air::{self, CompactSign};
use crate::decision::{self, Decision, DecisionInput, History, OutpointRecord, Rules};
use crate::keys::CosignerKey;
use crate::policy::PolicyChange;
use crate::protocol::{
    CompactOutcome, CompactSignResponse, Info, PolicyOutcome, RegisterOutcome, RegisterWallet,
    Request, Response, SignOutcome, SignResponse, UpdatePolicy, PROTOCOL_VERSION,
};
use crate::refusal::Refusal;
use crate::state::{
    self, db_err, from_bytes, to_bytes, AuditEntry, SignedRecord, StateError, WalletRecord,
    KEY_INDEXES, OUTPOINTS, SIGNED, WALLETS, WALLET_KEYS,
};
use crate::wallet::{Wallet, WalletId};

/// Operator settings of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Network served.
    pub network: Network,
    /// Approval age and clock skew limits.
    pub rules: Rules,
    /// Seconds a loosening policy change waits.
    pub policy_loosen_delay_secs: u64,
}

/// The cosigner: its key, its database, its settings.
pub struct Cosigner {
    key: CosignerKey,
    db: Database,
    settings: Settings,
    secp: Secp256k1<All>,
    /// Registered wallets with their own keys, checked once.
    wallets: Mutex<HashMap<WalletId, WalletAndKey>>,
}

/// A registered wallet, checked, with the satellite's key for it.
type WalletAndKey = (Arc<Wallet>, Arc<CosignerKey>);

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("key", &self.key)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Records a signing decision in the audit log.
fn audit_sign(
    txn: &WriteTransaction,
    req: &decision::SignRequest,
    now: u64,
    outcome: &str,
    detail: String,
) -> Result<(), StateError> {
    state::audit(
        txn,
        &AuditEntry {
            at: now,
            action: "sign".into(),
            wallet_id: Some(req.wallet_id),
            request_id: Some(req.request_id),
            outcome: outcome.into(),
            detail,
        },
    )
}

fn internal(e: StateError) -> Refusal {
    Refusal::Internal {
        reason: e.to_string(),
    }
}

impl Cosigner {
    /// Opens (creating if needed) the database at `db_path`.
    pub fn open(
        key: CosignerKey,
        db_path: &Path,
        settings: Settings,
    ) -> Result<Cosigner, StateError> {
        let db = Database::create(db_path).map_err(db_err)?;
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_two_phase_commit(true);
        state::create_tables(&txn)?;
        txn.commit().map_err(db_err)?;
        Ok(Cosigner {
            key,
            db,
            settings,
            secp: Secp256k1::new(),
            wallets: Mutex::new(HashMap::new()),
        })
    }

    /// The cosigner's identity.
    pub fn info(&self) -> Info {
        Info {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            network: self.settings.network.to_string(),
            issuer_key: self.key.descriptor_key(),
        }
    }

    /// Decodes and handles one encoded request; returns the encoded response.
    pub fn handle_bytes(&self, bytes: &[u8], now: u64) -> Vec<u8> {
        match Request::decode(bytes) {
            Ok(req) => self.handle(&req, now),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable request");
                Response::Error {
                    reason: e.to_string(),
                }
            }
        }
        .encode()
    }

    /// Handles one request at time `now` (unix seconds).
    pub fn handle(&self, req: &Request, now: u64) -> Response {
        let result = match req {
            Request::Hello => Ok(Response::Info(self.info())),
            Request::RegisterWallet(r) => self.register(r, now).map(Response::WalletRegistered),
            Request::UpdatePolicy(u) => self.update_policy(u, now).map(Response::PolicyUpdated),
            Request::Sign(s) => Ok(Response::Sign(SignResponse {
                request_id: s.request_id,
                outcome: self.sign(s, now),
            })),
            Request::SignCompact(c) => Ok(Response::SignCompact(self.sign_compact(c, now))),
            Request::Cancel(c) => self.cancel(c, now).map(Response::Cancel),
        };
        result.unwrap_or_else(|e| {
            tracing::error!(error = %e, "request failed");
            Response::Error {
                reason: e.to_string(),
            }
        })
    }

    /// A read transaction on the satellite's database.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, StateError> {
        self.db.begin_read().map_err(db_err)
    }

    pub(crate) fn begin(&self) -> Result<WriteTransaction, StateError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    /// Checks a registration against the keys this satellite issued: the descriptor holds
    /// the wallet key at `key_index` exactly once, that index serves no other wallet, and no
    /// other member key is a satellite key of another wallet (nor the issuing account
    /// itself). Returns the checked wallet or why not.
    fn check_registration(
        &self,
        txn: &WriteTransaction,
        r: &RegisterWallet,
    ) -> Result<Result<Wallet, String>, StateError> {
        let key = match self.key.wallet_key(r.key_index) {
            Ok(k) => k,
            Err(e) => return Ok(Err(format!("key index: {e}"))),
        };
        let wallet = match Wallet::from_descriptors(&r.descriptors, &key) {
            Ok(w) => w,
            Err(crate::wallet::RegistrationError::OurKeyMissing { .. }) => {
                return Ok(Err(format!(
                    "not_issued: the descriptor's satellite key is not the one this satellite issued at index {}",
                    r.key_index
                )))
            }
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = r.policy.check() {
            return Ok(Err(e.to_string()));
        }
        let owner = txn
            .open_table(KEY_INDEXES)
            .map_err(db_err)?
            .get(r.key_index)
            .map_err(db_err)?
            .map(|v| WalletId(*v.value()));
        if let Some(owner) = owner.filter(|o| *o != wallet.id) {
            return Ok(Err(format!(
                "issued_for_another_wallet: this satellite key serves wallet {owner}; ask for a new key"
            )));
        }
        let keys = txn.open_table(WALLET_KEYS).map_err(db_err)?;
        for (position, x) in wallet.xpubs.iter().enumerate() {
            if x == key.account_xpub() {
                continue;
            }
            let reused = x.public_key == self.key.account_xpub().public_key
                || keys
                    .get(&x.public_key.serialize())
                    .map_err(db_err)?
                    .is_some();
            if reused {
                return Ok(Err(format!(
                    "reused_key: key {position} is a satellite key of another wallet; each wallet has its own"
                )));
            }
        }
        Ok(Ok(wallet))
    }

    fn register(&self, r: &RegisterWallet, now: u64) -> Result<RegisterOutcome, StateError> {
        let txn = self.begin()?;
        let outcome = match self.check_registration(&txn, r)? {
            Ok(wallet) => {
                let mut table = txn.open_table(WALLETS).map_err(db_err)?;
                let existing = table
                    .get(&wallet.id.0)
                    .map_err(db_err)?
                    .map(|v| v.value().to_vec());
                if existing.is_none() {
                    let record = WalletRecord {
                        descriptor: wallet.descriptor.clone(),
                        policy: crate::policy::PolicyState::new(r.policy.clone()),
                        registered_at: now,
                        key_index: r.key_index,
                    };
                    table
                        .insert(&wallet.id.0, to_bytes(&record).as_slice())
                        .map_err(db_err)?;
                    txn.open_table(KEY_INDEXES)
                        .map_err(db_err)?
                        .insert(r.key_index, &wallet.id.0)
                        .map_err(db_err)?;
                    txn.open_table(WALLET_KEYS)
                        .map_err(db_err)?
                        .insert(&wallet.our_xpub().public_key.serialize(), r.key_index)
                        .map_err(db_err)?;
                }
                // Registering again is idempotent and never replaces the policy: policy
                // changes go through UpdatePolicy and its loosening delay.
                RegisterOutcome::Registered {
                    wallet_id: wallet.id,
                }
            }
            Err(reason) => RegisterOutcome::Refused { reason },
        };
        let (wallet_id, result, detail) = match &outcome {
            RegisterOutcome::Registered { wallet_id } => {
                (Some(*wallet_id), "registered", String::new())
            }
            RegisterOutcome::Refused { reason } => (None, "refused", reason.clone()),
        };
        state::audit(
            &txn,
            &AuditEntry {
                at: now,
                action: "register".into(),
                wallet_id,
                request_id: None,
                outcome: result.into(),
                detail,
            },
        )?;
        txn.commit().map_err(db_err)?;
        tracing::info!(outcome = result, wallet = ?wallet_id.map(|w| w.to_string()), "wallet registration");
        Ok(outcome)
    }

    fn update_policy(&self, u: &UpdatePolicy, now: u64) -> Result<PolicyOutcome, StateError> {
        let txn = self.begin()?;
        let outcome = {
            let mut table = txn.open_table(WALLETS).map_err(db_err)?;
            let record = table
                .get(&u.wallet_id.0)
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            match record {
                None => PolicyOutcome::Refused {
                    reason: format!("wallet {} is not registered", u.wallet_id),
                },
                Some(bytes) => match u.policy.check() {
                    Err(e) => PolicyOutcome::Refused {
                        reason: e.to_string(),
                    },
                    Ok(()) => {
                        let mut record: WalletRecord = from_bytes("wallets", &bytes)?;
                        let change = record.policy.update(
                            u.policy.clone(),
                            now,
                            self.settings.policy_loosen_delay_secs,
                        );
                        table
                            .insert(&u.wallet_id.0, to_bytes(&record).as_slice())
                            .map_err(db_err)?;
                        PolicyOutcome::Changed(change)
                    }
                },
            }
        };
        let (result, detail) = match &outcome {
            PolicyOutcome::Changed(PolicyChange::Applied) => ("applied", String::new()),
            PolicyOutcome::Changed(PolicyChange::Deferred { effective_at }) => {
                ("deferred", format!("effective at {effective_at}"))
            }
            PolicyOutcome::Refused { reason } => ("refused", reason.clone()),
        };
        state::audit(
            &txn,
            &AuditEntry {
                at: now,
                action: "policy".into(),
                wallet_id: Some(u.wallet_id),
                request_id: None,
                outcome: result.into(),
                detail,
            },
        )?;
        txn.commit().map_err(db_err)?;
        Ok(outcome)
    }

    /// A registered wallet with its own key (cached).
    fn wallet(&self, id: &WalletId, record: &WalletRecord) -> Result<WalletAndKey, Refusal> {
        let mut cache = self.wallets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = cache.get(id) {
            return Ok(w.clone());
        }
        let broken = |e: &dyn std::fmt::Display| Refusal::Internal {
            reason: format!("stored wallet no longer parses: {e}"),
        };
        let key = self
            .key
            .wallet_key(record.key_index)
            .map_err(|e| broken(&e))?;
        let w = Wallet::from_descriptors(std::slice::from_ref(&record.descriptor), &key)
            .map_err(|e| broken(&e))?;
        let entry = (Arc::new(w), Arc::new(key));
        cache.insert(*id, entry.clone());
        Ok(entry)
    }

    /// The registered wallet `id`, if any.
    fn registered_wallet(&self, id: &WalletId) -> Result<Option<Arc<Wallet>>, Refusal> {
        let record: Option<WalletRecord> = (|| {
            let txn = self.db.begin_read().map_err(db_err)?;
            let table = txn.open_table(WALLETS).map_err(db_err)?;
            let v = table.get(&id.0).map_err(db_err)?;
            v.map(|v| from_bytes("wallets", v.value())).transpose()
        })()
        .map_err(internal)?;
        record
            .map(|r| self.wallet(id, &r).map(|(w, _)| w))
            .transpose()
    }

    /// A compact request: rebuilt into the full PSBT from the registered wallet, judged as
    /// any other, answered with the satellite's signatures only.
    fn sign_compact(&self, c: &CompactSign, now: u64) -> CompactSignResponse {
        let answer = |outcome| CompactSignResponse {
            request_id: c.request_id,
            outcome,
        };
        let refused = |r| answer(CompactOutcome::Refused(r));
        let wallet = match self.registered_wallet(&c.wallet_id) {
            Ok(Some(w)) => w,
            Ok(None) => {
                return refused(Refusal::UnknownWallet {
                    wallet_id: c.wallet_id,
                })
            }
            Err(r) => return refused(r),
        };
        let psbt = match air::expand(&self.secp, &wallet, c) {
            Ok(p) => p,
            Err(r) => return refused(r),
        };
        let ours: Option<Vec<_>> = c
            .inputs
            .iter()
            .map(|i| {
                wallet
                    .derive(&self.secp, i.branch, i.index)
                    .map(|d| d.our_pubkey)
            })
            .collect();
        let Some(ours) = ours else {
            return refused(Refusal::InputNotInWallet {
                input: 0,
                reason: "a branch or index does not derive".into(),
            });
        };
        let req = decision::SignRequest {
            request_id: c.request_id,
            wallet_id: c.wallet_id,
            psbt: psbt.serialize(),
            approval: decision::Approval {
                request_id: c.request_id,
                txid: psbt.unsigned_tx.compute_txid(),
                approved_at: c.approved_at,
            },
            replaces: c.replaces,
        };
        match self.sign(&req, now) {
            SignOutcome::Signed { psbt } => match bitcoin::psbt::Psbt::deserialize(&psbt)
                .ok()
                .and_then(|p| air::our_signatures(&p, &ours))
            {
                Some(sigs) => answer(CompactOutcome::Signed(sigs)),
                None => refused(Refusal::Internal {
                    reason: "signed PSBT lacks a signature of ours".into(),
                }),
            },
            SignOutcome::Refused(r) => refused(r),
        }
    }

    fn sign(&self, req: &decision::SignRequest, now: u64) -> SignOutcome {
        match self.sign_inner(req, now) {
            Ok(outcome) => outcome,
            Err(e) => SignOutcome::Refused(internal(e)),
        }
    }

    fn sign_inner(&self, req: &decision::SignRequest, now: u64) -> Result<SignOutcome, StateError> {
        let txn = self.begin()?;
        let record: Option<WalletRecord> = {
            let table = txn.open_table(WALLETS).map_err(db_err)?;
            let v = table.get(&req.wallet_id.0).map_err(db_err)?;
            match v {
                Some(v) => Some(from_bytes("wallets", v.value())?),
                None => None,
            }
        };
        let wallet = match &record {
            Some(r) => match self.wallet(&req.wallet_id, r) {
                Ok(w) => Some(w),
                Err(refusal) => return self.finish_refusal(txn, req, now, refusal),
            },
            None => None,
        };
        let policy = record.as_ref().map(|r| r.policy.effective(now).clone());
        let ledger = match &policy {
            Some(p) => state::ledger_since(
                &txn,
                &req.wallet_id,
                now.saturating_sub(p.period_secs.max(p.min_secs_between_signatures)),
            )?,
            None => Vec::new(),
        };
        let no_entries = Default::default();
        let allowlist_since = record
            .as_ref()
            .map_or(&no_entries, |r| &r.policy.allowlist_since);
        // Look up the outpoints this PSBT spends (if it decodes; the decision reports otherwise).
        let mut signed_outpoints = BTreeMap::new();
        if let Ok(psbt) = decision::decode_psbt(&req.psbt) {
            let table = txn.open_table(OUTPOINTS).map_err(db_err)?;
            for txin in &psbt.unsigned_tx.input {
                if let Some(v) = table
                    .get(&state::outpoint_key(&txin.previous_output))
                    .map_err(db_err)?
                {
                    let rec: OutpointRecord = from_bytes("outpoints", v.value())?;
                    signed_outpoints.insert(txin.previous_output, rec);
                }
            }
        }
        let input = DecisionInput {
            key: wallet.as_ref().map_or(&self.key, |(_, k)| k),
            wallet: wallet.as_ref().map(|(w, _)| &**w).zip(policy.as_ref()),
            history: History {
                ledger: &ledger,
                allowlist_since,
            },
            hold: state::hold(&txn, &req.request_id)?,
            cancelled: state::cancelled(&txn, &req.request_id)?,
            signed_outpoints: &signed_outpoints,
            request: req,
            now,
            rules: self.settings.rules,
        };
        match decision::decide(&input, &self.secp) {
            Decision::Refuse(refusal) => self.finish_refusal(txn, req, now, refusal),
            Decision::Hold(hold) => {
                txn.open_table(state::HOLDS)
                    .map_err(db_err)?
                    .insert(&req.request_id.0, to_bytes(&hold).as_slice())
                    .map_err(db_err)?;
                let refusal = Refusal::Held {
                    started_at: hold.started_at,
                    releases_at: hold.releases_at,
                };
                self.finish_refusal(txn, req, now, refusal)
            }
            Decision::AlreadySigned { txid } => {
                use bitcoin::hashes::Hash as _;
                let stored: Option<SignedRecord> = {
                    let table = txn.open_table(SIGNED).map_err(db_err)?;
                    let v = table.get(txid.as_byte_array()).map_err(db_err)?;
                    match v {
                        Some(v) => Some(from_bytes("signed", v.value())?),
                        None => None,
                    }
                };
                let Some(stored) = stored else {
                    return self.finish_refusal(
                        txn,
                        req,
                        now,
                        Refusal::Internal {
                            reason: format!(
                                "outpoints of {txid} are recorded but its signatures are not"
                            ),
                        },
                    );
                };
                audit_sign(
                    &txn,
                    req,
                    now,
                    "retry",
                    format!(
                        "{txid} was signed before by request {}; stored signatures returned",
                        stored.request_id
                    ),
                )?;
                txn.commit().map_err(db_err)?;
                tracing::info!(request = %req.request_id, %txid, "identical retry answered from the record");
                Ok(SignOutcome::Signed { psbt: stored.psbt })
            }
            Decision::Sign(signed) => {
                use bitcoin::hashes::Hash as _;
                let psbt_bytes = signed.psbt.serialize();
                let txid = signed.spend.txid;
                {
                    if let Some(old) = signed.supersedes {
                        // The replaced transaction can no longer confirm alongside this one.
                        for e in ledger.iter().filter(|e| e.request_id == old) {
                            state::undo_debit(&txn, &req.wallet_id, e)?;
                        }
                    }
                    state::debit(&txn, &req.wallet_id, &signed.debit)?;
                    let mut outs = txn.open_table(OUTPOINTS).map_err(db_err)?;
                    let rec = OutpointRecord {
                        txid,
                        request_id: req.request_id,
                        wallet_id: req.wallet_id,
                    };
                    for plan in &signed.spend.inputs {
                        outs.insert(
                            &state::outpoint_key(&plan.outpoint),
                            to_bytes(&rec).as_slice(),
                        )
                        .map_err(db_err)?;
                    }
                    let mut signed_t = txn.open_table(SIGNED).map_err(db_err)?;
                    let record = SignedRecord {
                        request_id: req.request_id,
                        wallet_id: req.wallet_id,
                        psbt: psbt_bytes.clone(),
                    };
                    signed_t
                        .insert(txid.as_byte_array(), to_bytes(&record).as_slice())
                        .map_err(db_err)?;
                }
                audit_sign(
                    &txn,
                    req,
                    now,
                    "signed",
                    format!(
                        "{txid}: {} sat leaving, fee {} sat ({} sat/vB), change {} sat, {} inputs",
                        signed.spend.leaving_sat(),
                        signed.spend.fee_sat,
                        signed.spend.fee_rate_sat_vb(),
                        signed.spend.change_sat,
                        signed.spend.inputs.len()
                    ),
                )?;
                // Durable before the signature leaves this function.
                txn.commit().map_err(db_err)?;
                tracing::info!(request = %req.request_id, %txid, leaving_sat = signed.spend.leaving_sat(), "signed");
                Ok(SignOutcome::Signed { psbt: psbt_bytes })
            }
        }
    }

    fn finish_refusal(
        &self,
        txn: WriteTransaction,
        req: &decision::SignRequest,
        now: u64,
        refusal: Refusal,
    ) -> Result<SignOutcome, StateError> {
        audit_sign(&txn, req, now, refusal.code(), refusal.to_string())?;
        txn.commit().map_err(db_err)?;
        tracing::info!(request = %req.request_id, reason = refusal.code(), "refused");
        Ok(SignOutcome::Refused(refusal))
    }
}
