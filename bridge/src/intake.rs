//! Intake: a PSBT becomes a signing request.
//!
//! Decides, cheap checks first, whether a PSBT may become a request: the named wallet's
//! state and hourly limit, the PSBT's size, its wallet among the registered ones, the
//! previous transactions and unspent inputs from the upstream server, and the policy the
//! satellite will check again. The same transaction submitted again updates its request,
//! within the request's email allowance.

use std::collections::HashMap;

use crate::store::tables::{ReadableTable, WriteTransaction};
use bitcoin::bip32::Fingerprint;
use bitcoin::psbt::Psbt;

use satcosign_cosigner::decision::{check_policy, History, RequestId};
use satcosign_cosigner::refusal::Refusal;
use satcosign_cosigner::spend::{analyze, Spend};
use satcosign_cosigner::wallet::WalletId;

use crate::answer::IntakeChecks;
use crate::approval::may_email_again;
use crate::config::GateConfig;
use crate::ecies;
use crate::lifecycle::{apply_in, next, open_in, refusal, Step};
use crate::notice;
use crate::service::*;
use crate::state::{
    self, db_err, from_bytes, load_request, load_wallet, save_wallet, Action, Destination, Outcome,
    RequestRecord, SpendSummary, State, WalletRecord, WalletState, ACTIVE, WALLETS,
    WALLET_BY_FINGERPRINT,
};
use crate::store::StoreError;
use crate::upstream::{find_spender, UpstreamError};

impl Service {
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

    pub(crate) async fn candidate_wallets(
        &self,
        psbt: &Psbt,
    ) -> Result<Vec<WalletRecord>, ServiceError> {
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
    pub(crate) async fn fill_previous(&self, psbt: &mut Psbt) -> Result<(), ServiceError> {
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

    /// Refuses a transaction with no inputs or outputs, or more than the gate co-signs.
    pub(crate) fn check_shape(&self, psbt: &Psbt) -> Result<(), ServiceError> {
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
        Ok(())
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
        self.check_shape(&psbt)?;
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
        // Judged on the spend alone: what the wallet's history forbids now (velocity, the
        // rolling limits, a destination's delay) may be allowed by the pass that carries it,
        // so only the satellite refuses for it. `request.check` reports it beforehand.
        let refused = check_policy(&spend, &record.policy, History::none(), now, replaces).err();
        if let Some(refusal) = &refused {
            self.note_refused_spend(record.id, refusal).await;
        }
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
        // Kept with the request: the answer's signatures are checked against these.
        let checks = IntakeChecks::of(&spend, wallet.threshold);
        let gate = self.gate.clone();
        let new_id = RequestId(random_id());
        let (id, state) = self
            .store
            .write(move |txn| {
                let opened =
                    open_or_update_sign(txn, wallet_id, new_id, action, &txid, now, &gate)?;
                if let Ok((id, _)) = &opened {
                    state::save_checks(txn, id, &checks)?;
                }
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
    pub(crate) async fn record_refusal(
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
                open_in(txn, &r)?;
                on_open(txn, id)
            })
            .await?;
        self.transitioned(id, State::Refused).await;
        Ok(id)
    }
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
pub(crate) fn may_request(
    wallet: &WalletRecord,
    gate: &GateConfig,
    now: u64,
) -> Result<(), ServiceError> {
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

/// Opens a signing request, or updates the one still waiting for the user that spends the
/// same transaction (its old codes then approve nothing: they were bound to the old PSBT).
pub(crate) fn open_or_update_sign(
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
        if next(r.state, Step::Resubmitted).is_none() {
            return Ok(Err(refusal(r.id, r.state, Step::Resubmitted)));
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
        return Ok(apply_in(txn, &mut r, Step::Resubmitted, now)?.map(|state| (r.id, state)));
    }
    let hour_ago = now.saturating_sub(3600);
    wallet.recent_requests.retain(|t| *t > hour_ago);
    if let Err(e) = may_request(&wallet, gate, now) {
        return Ok(Err(e));
    }
    wallet.recent_requests.push(now);
    save_wallet(txn, &wallet)?;
    open_in(
        txn,
        &new_request(new_id, wallet_id, action, State::Received, now),
    )?;
    Ok(Ok((new_id, State::Received)))
}

impl Service {
    /// The checks request `r` was given at intake (computed now from its stored PSBT for a
    /// request taken before checks were kept); `None` for a request that signs nothing.
    pub(crate) async fn intake_checks(
        &self,
        r: &RequestRecord,
        wallet: &satcosign_cosigner::wallet::Wallet,
    ) -> Result<Option<IntakeChecks>, ServiceError> {
        let Action::Sign { psbt, .. } = &r.action else {
            return Ok(None);
        };
        let id = r.id;
        let kept = self
            .store
            .read(move |txn| {
                let t = txn.open_table(state::INTAKE_CHECKS).map_err(db_err)?;
                state::intake_checks(&t, &id)
            })
            .await?;
        if kept.is_some() {
            return Ok(kept);
        }
        let parsed = Psbt::deserialize(psbt).map_err(|e| ServiceError::BadPsbt(e.to_string()))?;
        let spend = analyze(&self.secp, wallet, &parsed).map_err(ServiceError::Refused)?;
        Ok(Some(IntakeChecks::of(&spend, wallet.threshold)))
    }
}
