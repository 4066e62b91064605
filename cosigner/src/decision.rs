//! The signing decision: a pure function of (key, wallet, policy, spend ledger, signed
//! outpoints, request, now). No I/O happens here; the daemon loads the state, calls
//! [`decide`], and makes the outcome durable before any signature leaves.
//!
//! Invariants (each tested):
//! - nothing is signed for an unregistered wallet, or with an input or claimed change
//!   output that does not derive from the registered descriptor;
//! - every segwit input carries a full previous transaction matching its outpoint and
//!   `witness_utxo`; only SIGHASH_ALL;
//! - the satellite never signs first: every input already has another valid signature;
//! - fee, fee rate, per-transaction and per-period limits and the allowlist hold, with
//!   change never counted as spent; an allowlisted destination added under a delay is paid
//!   only once its delay passed;
//! - velocity: no two signatures of a wallet closer than its minimum gap, and no more of
//!   them in a period than its maximum; the change per period stays under its cap;
//! - a locked wallet signs nothing; a cancelled request is never signed;
//! - a spend over the hold threshold is signed only once its hold, started on the
//!   satellite's clock when it first arrived, has run out;
//! - the approval names this request and this transaction, is fresh, and its delay passed;
//! - no outpoint is signed in two different transactions, except an explicit replacement of
//!   the request that signed it; an identical retry returns the stored signatures;
//! - every input the satellite means to sign receives a signature.

use std::collections::BTreeMap;

use bitcoin::ecdsa::Signature as EcdsaSignature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{OutPoint, Txid};
use serde::{Deserialize, Serialize};

use crate::keys::CosignerKey;
use crate::policy::Policy;
use crate::refusal::Refusal;
use crate::spend::{analyze, Spend};
use crate::wallet::{Wallet, WalletId};

/// A signing request's id, chosen by the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub [u8; 16]);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The user's approval, as the bridge relays it after email confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The request approved.
    pub request_id: RequestId,
    /// The transaction approved (id of the unsigned transaction).
    pub txid: Txid,
    /// When the user approved, unix seconds.
    pub approved_at: u64,
}

/// A request to cosign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// The request.
    pub request_id: RequestId,
    /// The wallet it spends from.
    pub wallet_id: WalletId,
    /// The PSBT (BIP-174 bytes), already signed by another key of the wallet.
    pub psbt: Vec<u8>,
    /// The user's approval.
    pub approval: Approval,
    /// An earlier request this one replaces (e.g. a fee bump over the same inputs).
    pub replaces: Option<RequestId>,
}

/// One debit of a wallet's spend ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it was signed, unix seconds.
    pub at: u64,
    /// What left the wallet (non-change outputs plus fee), sat.
    pub amount_sat: u64,
    /// The request that signed it.
    pub request_id: RequestId,
    /// What went back to the wallet as change, sat.
    pub change_sat: u64,
}

/// A large spend's hold, as the satellite recorded it when the request first arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// When it began, on the satellite's clock (unix seconds).
    pub started_at: u64,
    /// When it ends (unix seconds).
    pub releases_at: u64,
}

/// What the satellite recorded of a wallet that the policy's rules of history read.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// The wallet's ledger entries (at least those within the policy's period and its
    /// minimum gap between signatures).
    pub ledger: &'a [LedgerEntry],
    /// When each allowlist destination added under a delay may first be paid.
    pub allowlist_since: &'a BTreeMap<Vec<u8>, u64>,
}

static NO_ENTRIES: BTreeMap<Vec<u8>, u64> = BTreeMap::new();

impl History<'static> {
    /// No history: what the bridge knows when it checks a spend before the satellite does.
    pub fn none() -> History<'static> {
        History {
            ledger: &[],
            allowlist_since: &NO_ENTRIES,
        }
    }
}

/// Which transaction an outpoint was signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutpointRecord {
    /// The transaction.
    pub txid: Txid,
    /// The request that signed it.
    pub request_id: RequestId,
    /// The wallet.
    pub wallet_id: WalletId,
}

/// Operator rules that are not per-wallet policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Longest accepted age of an approval, seconds.
    pub approval_max_age_secs: u64,
    /// How far in the future an approval's time may be (clock skew), seconds.
    pub clock_skew_secs: u64,
}

/// Everything the decision depends on.
pub struct DecisionInput<'a> {
    /// The satellite's key for this wallet (the one it was registered with).
    pub key: &'a CosignerKey,
    /// The wallet named by the request, if registered, with its policy in force now.
    pub wallet: Option<(&'a Wallet, &'a Policy)>,
    /// The wallet's history.
    pub history: History<'a>,
    /// This request's hold, if one began.
    pub hold: Option<Hold>,
    /// Whether the user cancelled this request.
    pub cancelled: bool,
    /// Records of the request's outpoints that were signed before.
    pub signed_outpoints: &'a BTreeMap<OutPoint, OutpointRecord>,
    /// The request.
    pub request: &'a SignRequest,
    /// Now, unix seconds.
    pub now: u64,
    /// Operator rules.
    pub rules: Rules,
}

/// A signature made, and what must be recorded durably before it is released.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The PSBT with the satellite's signatures added.
    pub psbt: Psbt,
    /// What was checked.
    pub spend: Spend,
    /// The ledger debit.
    pub debit: LedgerEntry,
    /// The request whose ledger entry and outpoints this one replaces.
    pub supersedes: Option<RequestId>,
}

/// The outcome.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Sign; record then release.
    Sign(Box<Signed>),
    /// This exact transaction was signed before: return the stored signatures.
    AlreadySigned {
        /// Its id.
        txid: Txid,
    },
    /// Hold: record the hold, then answer [`Refusal::Held`].
    Hold(Hold),
    /// Refuse.
    Refuse(Refusal),
}

/// Decodes a PSBT, refusing what does not decode.
pub fn decode_psbt(bytes: &[u8]) -> Result<Psbt, Refusal> {
    Psbt::deserialize(bytes).map_err(|e| Refusal::MalformedPsbt {
        reason: e.to_string(),
    })
}

/// Decides whether to sign. Pure: the same input always gives the same output.
pub fn decide(input: &DecisionInput<'_>, secp: &Secp256k1<All>) -> Decision {
    match decide_inner(input, secp) {
        Ok(d) => d,
        Err(r) => Decision::Refuse(r),
    }
}

fn decide_inner(input: &DecisionInput<'_>, secp: &Secp256k1<All>) -> Result<Decision, Refusal> {
    let req = input.request;
    let (wallet, policy) =
        input
            .wallet
            .filter(|(w, _)| w.id == req.wallet_id)
            .ok_or(Refusal::UnknownWallet {
                wallet_id: req.wallet_id,
            })?;
    // Invariant: one wallet is never signed for with another wallet's key.
    if wallet.our_xpub() != input.key.account_xpub() {
        return Err(Refusal::Internal {
            reason: format!("the key given is not wallet {}'s", wallet.id),
        });
    }
    if input.cancelled {
        return Err(Refusal::Cancelled);
    }
    let mut psbt = decode_psbt(&req.psbt)?;
    let txid = psbt.unsigned_tx.compute_txid();

    // Outpoints signed before: an identical retry, a permitted replacement, or a refusal.
    let mut supersedes = None;
    let mut all_signed_here = !psbt.unsigned_tx.input.is_empty();
    for txin in &psbt.unsigned_tx.input {
        match input.signed_outpoints.get(&txin.previous_output) {
            Some(rec) if rec.txid == txid && rec.wallet_id == wallet.id => {}
            Some(rec) if req.replaces == Some(rec.request_id) && rec.wallet_id == wallet.id => {
                all_signed_here = false;
                supersedes = Some(rec.request_id);
            }
            Some(_) => {
                return Err(Refusal::OutpointAlreadySigned {
                    outpoint: txin.previous_output,
                })
            }
            None => all_signed_here = false,
        }
    }
    if all_signed_here {
        return Ok(Decision::AlreadySigned { txid });
    }
    if policy.locked {
        return Err(Refusal::Locked);
    }

    let approval = &req.approval;
    if approval.request_id != req.request_id {
        return Err(Refusal::ApprovalMismatch {
            reason: format!("it approves request {}", approval.request_id),
        });
    }
    if approval.txid != txid {
        return Err(Refusal::ApprovalMismatch {
            reason: format!("it approves transaction {}, not {txid}", approval.txid),
        });
    }
    let max_age = input.rules.approval_max_age_secs;
    // A held spend's approval was judged when its hold began; the hold is why it aged.
    let judged_at = input.hold.map_or(input.now, |h| h.started_at);
    if approval.approved_at > judged_at.saturating_add(input.rules.clock_skew_secs)
        || judged_at.saturating_sub(approval.approved_at) > max_age
    {
        return Err(Refusal::StaleApproval {
            approved_at: approval.approved_at,
            now: input.now,
            max_age_secs: max_age,
        });
    }
    let ready_at = approval
        .approved_at
        .saturating_add(policy.min_approval_delay_secs);
    // Without a delay, an approval a little ahead of our clock (within the skew) is ready.
    if policy.min_approval_delay_secs > 0 && input.now < ready_at {
        return Err(Refusal::ApprovalDelay { ready_at });
    }

    let spend = analyze(secp, wallet, &psbt)?;
    check_policy(&spend, policy, input.history, input.now, supersedes)?;
    if policy
        .hold_over_sat
        .is_some_and(|over| spend.leaving_sat() > over)
    {
        match input.hold {
            None => {
                return Ok(Decision::Hold(Hold {
                    started_at: input.now,
                    releases_at: input.now.saturating_add(policy.hold_secs),
                }))
            }
            Some(h) if input.now < h.releases_at => {
                return Err(Refusal::Held {
                    started_at: h.started_at,
                    releases_at: h.releases_at,
                })
            }
            Some(_) => {}
        }
    }

    // Sign every input; the sighashes were computed (and the others' signatures verified)
    // in `analyze`.
    for (i, plan) in spend.inputs.iter().enumerate() {
        let sk = input
            .key
            .child_private(plan.branch, plan.index)
            .map_err(|e| Refusal::Internal {
                reason: e.to_string(),
            })?;
        let signature = secp.sign_ecdsa_low_r(&plan.sighash, &sk);
        psbt.inputs[i].partial_sigs.insert(
            plan.derived.our_pubkey,
            EcdsaSignature {
                signature,
                sighash_type: EcdsaSighashType::All,
            },
        );
    }
    for (i, plan) in spend.inputs.iter().enumerate() {
        let signed = psbt.inputs[i]
            .partial_sigs
            .get(&plan.derived.our_pubkey)
            .is_some_and(|s| {
                secp.verify_ecdsa(&plan.sighash, &s.signature, &plan.derived.our_pubkey.inner)
                    .is_ok()
            });
        if !signed {
            return Err(Refusal::Internal {
                reason: format!("input {i} did not receive a valid signature"),
            });
        }
    }
    let debit = LedgerEntry {
        at: input.now,
        amount_sat: spend.leaving_sat(),
        request_id: req.request_id,
        change_sat: spend.change_sat,
    };
    Ok(Decision::Sign(Box::new(Signed {
        psbt,
        spend,
        debit,
        supersedes,
    })))
}

/// Checks a spend against a policy: lockdown, fees, per-transaction and rolling-period
/// limits, velocity and the change cap (over `history`'s ledger, leaving out the request
/// `supersedes` replaces) and the allowlist. The bridge calls it too: at submit with
/// [`History::none`], to refuse early what no later pass could allow, and in its dry run
/// with its copy of what the satellite signed, to say what the satellite would refuse.
/// A spend that breaks one rule is refused with that rule's refusal; one that breaks
/// several, with [`Refusal::PolicyViolations`] listing every one.
pub fn check_policy(
    spend: &Spend,
    policy: &Policy,
    history: History<'_>,
    now: u64,
    supersedes: Option<RequestId>,
) -> Result<(), Refusal> {
    let mut broken = policy_violations(spend, policy, history, now, supersedes);
    match broken.len() {
        0 => Ok(()),
        1 => Err(broken.remove(0)),
        _ => Err(Refusal::PolicyViolations { violations: broken }),
    }
}

/// Every rule of `policy` the spend breaks, each as its own refusal with its figures, in
/// the policy's order: fee, fee rate, per transaction, per period, time since the last
/// signature, signatures per period, change per period, then each output the allowlist
/// does not name (or names only from a later time). A locked wallet breaks only that.
pub fn policy_violations(
    spend: &Spend,
    policy: &Policy,
    history: History<'_>,
    now: u64,
    supersedes: Option<RequestId>,
) -> Vec<Refusal> {
    if policy.locked {
        return vec![Refusal::Locked];
    }
    let mut broken = Vec::new();
    if spend.fee_sat > policy.max_fee_sat {
        broken.push(Refusal::FeeTooHigh {
            fee_sat: spend.fee_sat,
            max_sat: policy.max_fee_sat,
        });
    }
    let rate = spend.fee_rate_sat_vb();
    if rate > policy.max_fee_rate_sat_vb {
        broken.push(Refusal::FeeRateTooHigh {
            rate_sat_vb: rate,
            max_sat_vb: policy.max_fee_rate_sat_vb,
        });
    }
    let amount = spend.leaving_sat();
    if amount > policy.max_per_tx_sat {
        broken.push(Refusal::OverTxLimit {
            amount_sat: amount,
            max_sat: policy.max_per_tx_sat,
        });
    }
    let window_start = now.saturating_sub(policy.period_secs);
    let others = || {
        history
            .ledger
            .iter()
            .filter(|e| Some(e.request_id) != supersedes)
    };
    let in_period = || others().filter(|e| e.at > window_start);
    let already: u64 = in_period().map(|e| e.amount_sat).sum();
    if already.saturating_add(amount) > policy.max_per_period_sat {
        broken.push(Refusal::OverPeriodLimit {
            already_sat: already,
            amount_sat: amount,
            max_sat: policy.max_per_period_sat,
        });
    }
    if policy.min_secs_between_signatures > 0 {
        if let Some(last) = others().map(|e| e.at).max() {
            let gap_secs = now.saturating_sub(last);
            if gap_secs < policy.min_secs_between_signatures {
                broken.push(Refusal::TooSoon {
                    last_signed_at: last,
                    gap_secs,
                    min_secs: policy.min_secs_between_signatures,
                });
            }
        }
    }
    if let Some(max) = policy.max_signatures_per_period {
        let already = in_period().count() as u64;
        if already >= u64::from(max) {
            broken.push(Refusal::TooManySignatures {
                already,
                max: u64::from(max),
            });
        }
    }
    if let Some(max_sat) = policy.max_change_per_period_sat {
        let already_sat: u64 = in_period().map(|e| e.change_sat).sum();
        if already_sat.saturating_add(spend.change_sat) > max_sat {
            broken.push(Refusal::OverChangeLimit {
                already_sat,
                change_sat: spend.change_sat,
                max_sat,
            });
        }
    }
    if let Some(allow) = &policy.allowlist {
        for (j, out) in spend.outputs.iter().enumerate() {
            if out.own {
                continue;
            }
            let script = out.script_pubkey.as_bytes();
            if !allow.iter().any(|a| a.as_slice() == script) {
                broken.push(Refusal::DestinationNotAllowed { output: j });
                continue;
            }
            let allowed_from = history.allowlist_since.get(script).copied().unwrap_or(0);
            if now < allowed_from {
                broken.push(Refusal::DestinationNotYetAllowed {
                    output: j,
                    allowed_from,
                });
            }
        }
    }
    broken
}
