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
//!   change never counted as spent;
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
    /// The wallet's ledger entries (at least those within the policy's period).
    pub ledger: &'a [LedgerEntry],
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
    if approval.approved_at > input.now.saturating_add(input.rules.clock_skew_secs)
        || input.now.saturating_sub(approval.approved_at) > max_age
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
    check_policy(&spend, policy, input.ledger, input.now, supersedes)?;

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
    };
    Ok(Decision::Sign(Box::new(Signed {
        psbt,
        spend,
        debit,
        supersedes,
    })))
}

/// Checks a spend against a policy: fees, per-transaction and rolling-period limits (over
/// `ledger`, leaving out the request `supersedes` replaces) and the allowlist. The bridge
/// calls it too, with the ledger it knows (none), to refuse early what the cosigner would.
/// A spend that breaks one rule is refused with that rule's refusal; one that breaks
/// several, with [`Refusal::PolicyViolations`] listing every one.
pub fn check_policy(
    spend: &Spend,
    policy: &Policy,
    ledger: &[LedgerEntry],
    now: u64,
    supersedes: Option<RequestId>,
) -> Result<(), Refusal> {
    let mut broken = policy_violations(spend, policy, ledger, now, supersedes);
    match broken.len() {
        0 => Ok(()),
        1 => Err(broken.remove(0)),
        _ => Err(Refusal::PolicyViolations { violations: broken }),
    }
}

/// Every rule of `policy` the spend breaks, each as its own refusal with its figures, in
/// the policy's order: fee, fee rate, per transaction, per period, then each output the
/// allowlist does not name.
pub fn policy_violations(
    spend: &Spend,
    policy: &Policy,
    ledger: &[LedgerEntry],
    now: u64,
    supersedes: Option<RequestId>,
) -> Vec<Refusal> {
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
    let already: u64 = ledger
        .iter()
        .filter(|e| e.at > window_start && Some(e.request_id) != supersedes)
        .map(|e| e.amount_sat)
        .sum();
    if already.saturating_add(amount) > policy.max_per_period_sat {
        broken.push(Refusal::OverPeriodLimit {
            already_sat: already,
            amount_sat: amount,
            max_sat: policy.max_per_period_sat,
        });
    }
    if let Some(allow) = &policy.allowlist {
        for (j, out) in spend.outputs.iter().enumerate() {
            if !out.own
                && !allow
                    .iter()
                    .any(|a| a.as_slice() == out.script_pubkey.as_bytes())
            {
                broken.push(Refusal::DestinationNotAllowed { output: j });
            }
        }
    }
    broken
}
