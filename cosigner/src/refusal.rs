//! Why the cosigner refuses to sign: one variant per rule, each with a stable code and the
//! data a user needs (which input, which output, which amounts). Refusals travel back over
//! the link and reach the user's email, Electrum plugin and `request.status`.

use bitcoin::OutPoint;
use serde::{Deserialize, Serialize};

use crate::wallet::WalletId;

/// A refusal. The variant order is part of the wire format (`schemas/cosigner-messages.md`):
/// append new variants, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The wallet is not registered with this cosigner.
    #[error("wallet {wallet_id} is not registered with the satellite")]
    UnknownWallet {
        /// The wallet asked for.
        wallet_id: WalletId,
    },
    /// The PSBT does not decode or lacks required structure.
    #[error("the PSBT is malformed: {reason}")]
    MalformedPsbt {
        /// What is wrong.
        reason: String,
    },
    /// A segwit input lacks its full previous transaction (needed against the 2020 fee attack).
    #[error("input {input} lacks its full previous transaction (non_witness_utxo)")]
    MissingPrevTx {
        /// Input index.
        input: usize,
    },
    /// The previous transaction given does not match the outpoint spent.
    #[error("input {input}: the previous transaction given is not the one spent ({reason})")]
    PrevTxMismatch {
        /// Input index.
        input: usize,
        /// What does not match.
        reason: String,
    },
    /// `witness_utxo` disagrees with the full previous transaction.
    #[error("input {input}: witness_utxo says {claimed_sat} sat but the previous transaction pays {actual_sat} sat to that output, or to another script")]
    WitnessUtxoMismatch {
        /// Input index.
        input: usize,
        /// Amount the witness_utxo claims.
        claimed_sat: u64,
        /// Amount the previous transaction really pays.
        actual_sat: u64,
    },
    /// A sighash type other than ALL is asked for or used.
    #[error("input {input}: only SIGHASH_ALL is signed")]
    SighashNotAll {
        /// Input index.
        input: usize,
    },
    /// An input does not belong to the registered wallet.
    #[error("input {input} is not from the registered wallet: {reason}")]
    InputNotInWallet {
        /// Input index.
        input: usize,
        /// What does not match.
        reason: String,
    },
    /// An output claimed as the wallet's own does not derive from it.
    #[error("output {output} claims to be the wallet's change but pays elsewhere")]
    ChangeMismatch {
        /// Output index.
        output: usize,
    },
    /// Outputs spend more than the inputs hold.
    #[error("outputs total {outputs_sat} sat, more than the inputs' {inputs_sat} sat")]
    OutputsExceedInputs {
        /// Sum of inputs.
        inputs_sat: u64,
        /// Sum of outputs.
        outputs_sat: u64,
    },
    /// The fee is above the policy's maximum.
    #[error("fee {fee_sat} sat is above the policy's maximum of {max_sat} sat")]
    FeeTooHigh {
        /// The fee.
        fee_sat: u64,
        /// The maximum.
        max_sat: u64,
    },
    /// The fee rate is above the policy's maximum.
    #[error("fee rate {rate_sat_vb} sat/vB is above the policy's maximum of {max_sat_vb} sat/vB")]
    FeeRateTooHigh {
        /// The rate (rounded up).
        rate_sat_vb: u64,
        /// The maximum.
        max_sat_vb: u64,
    },
    /// More than the per-transaction limit would leave the wallet.
    #[error("{amount_sat} sat would leave the wallet; the per-transaction limit is {max_sat} sat")]
    OverTxLimit {
        /// Leaving in this transaction (non-change outputs plus fee).
        amount_sat: u64,
        /// The limit.
        max_sat: u64,
    },
    /// The rolling-period limit would be exceeded.
    #[error("{already_sat} sat already left in this period; {amount_sat} more would pass the limit of {max_sat} sat")]
    OverPeriodLimit {
        /// Already spent within the period.
        already_sat: u64,
        /// This transaction.
        amount_sat: u64,
        /// The limit.
        max_sat: u64,
    },
    /// A destination is not on the wallet's allowlist.
    #[error("output {output} pays a destination that is not on the wallet's allowlist")]
    DestinationNotAllowed {
        /// Output index.
        output: usize,
    },
    /// No other cosigner has signed this input yet: the satellite never signs first.
    #[error("input {input} has no valid signature from another key of the wallet; the satellite never signs first")]
    NoOtherSignature {
        /// Input index.
        input: usize,
    },
    /// A partial signature present is invalid or from a key not in the wallet.
    #[error("input {input} carries an invalid signature: {reason}")]
    InvalidSignature {
        /// Input index.
        input: usize,
        /// What is wrong.
        reason: String,
    },
    /// The approval does not belong to this request or transaction.
    #[error("the approval does not match this request: {reason}")]
    ApprovalMismatch {
        /// What does not match.
        reason: String,
    },
    /// The approval is too old (or from the future).
    #[error("the approval from {approved_at} is stale at {now} (maximum age {max_age_secs} s)")]
    StaleApproval {
        /// When the user approved (unix seconds).
        approved_at: u64,
        /// The cosigner's time.
        now: u64,
        /// Longest accepted age.
        max_age_secs: u64,
    },
    /// The wallet's delay between approval and signing has not passed yet.
    #[error("the wallet's policy waits until {ready_at} after approval before signing")]
    ApprovalDelay {
        /// When signing becomes possible (unix seconds).
        ready_at: u64,
    },
    /// An input was already signed in a different transaction.
    #[error("{outpoint} was already signed in a different transaction")]
    OutpointAlreadySigned {
        /// The outpoint.
        outpoint: OutPoint,
    },
    /// The cosigner failed internally; nothing was signed.
    #[error("internal error, nothing was signed: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
    /// The spend breaks several rules of the wallet's policy: every one, each with its
    /// figures (a spend that breaks one rule is refused with that rule's own variant).
    #[error("the spend breaks {} rules of the wallet's policy: {}", .violations.len(), list(.violations))]
    PolicyViolations {
        /// Each rule broken, in the policy's order (fee, fee rate, per transaction, per
        /// period, allowlist).
        violations: Vec<Refusal>,
    },
    /// Velocity: the wallet's last signature is too recent.
    #[error("the last signature for this wallet was {gap_secs} s ago, at {last_signed_at}; the policy waits {min_secs} s between signatures")]
    TooSoon {
        /// When the wallet's last signature was made (unix seconds).
        last_signed_at: u64,
        /// Seconds since then.
        gap_secs: u64,
        /// The seconds the policy wants between two signatures.
        min_secs: u64,
    },
    /// Velocity: the period's number of signatures is used up.
    #[error("{already} signatures in this period already; the policy allows {max}")]
    TooManySignatures {
        /// Signatures already made within the period.
        already: u64,
        /// The most allowed.
        max: u64,
    },
    /// The value classified as change within the period would pass its cap.
    #[error("{already_sat} sat went to change in this period; {change_sat} more would pass the cap of {max_sat} sat")]
    OverChangeLimit {
        /// Change within the period already.
        already_sat: u64,
        /// This transaction's change.
        change_sat: u64,
        /// The cap.
        max_sat: u64,
    },
    /// An output pays a destination added to the allowlist whose delay has not passed.
    #[error("output {output} pays a destination added to the allowlist that may be paid only from {allowed_from}")]
    DestinationNotYetAllowed {
        /// Output index.
        output: usize,
        /// When the destination may first be paid (unix seconds).
        allowed_from: u64,
    },
    /// A large spend is held on the satellite; it is signed when asked again after release,
    /// unless cancelled meanwhile.
    #[error("held on the satellite since {started_at}; it may be signed from {releases_at} unless cancelled")]
    Held {
        /// When the hold began, on the satellite's clock (unix seconds).
        started_at: u64,
        /// When it ends (unix seconds).
        releases_at: u64,
    },
    /// The user cancelled this request; it is never signed.
    #[error("the request was cancelled by the user")]
    Cancelled,
    /// The wallet is locked down: nothing is signed until an unlock takes effect.
    #[error("the wallet is locked down; nothing is signed until it is unlocked")]
    Locked,
}

fn list(violations: &[Refusal]) -> String {
    violations
        .iter()
        .map(|v| format!("{} ({v})", v.code()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One broken rule's figures, for people and scripts: the limit, what was already used of
/// it, and what this spend would make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule (the refusal's code).
    pub rule: &'static str,
    /// The limit (sat, or sat/vB for the fee rate).
    pub limit: Option<u64>,
    /// Already used within the period (the rolling limit).
    pub used: Option<u64>,
    /// What this spend would make it.
    pub would_be: Option<u64>,
    /// The output concerned (the allowlist).
    pub output: Option<usize>,
    /// When the rule would let it through (unix seconds), for rules of time.
    pub ready_at: Option<u64>,
}

impl Refusal {
    /// A stable machine-readable name (snake_case), as shown to users and in the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownWallet { .. } => "unknown_wallet",
            Refusal::MalformedPsbt { .. } => "malformed_psbt",
            Refusal::MissingPrevTx { .. } => "missing_prev_tx",
            Refusal::PrevTxMismatch { .. } => "prev_tx_mismatch",
            Refusal::WitnessUtxoMismatch { .. } => "witness_utxo_mismatch",
            Refusal::SighashNotAll { .. } => "sighash_not_all",
            Refusal::InputNotInWallet { .. } => "input_not_in_wallet",
            Refusal::ChangeMismatch { .. } => "change_mismatch",
            Refusal::OutputsExceedInputs { .. } => "outputs_exceed_inputs",
            Refusal::FeeTooHigh { .. } => "fee_too_high",
            Refusal::FeeRateTooHigh { .. } => "fee_rate_too_high",
            Refusal::OverTxLimit { .. } => "over_tx_limit",
            Refusal::OverPeriodLimit { .. } => "over_period_limit",
            Refusal::DestinationNotAllowed { .. } => "destination_not_allowed",
            Refusal::NoOtherSignature { .. } => "no_other_signature",
            Refusal::InvalidSignature { .. } => "invalid_signature",
            Refusal::ApprovalMismatch { .. } => "approval_mismatch",
            Refusal::StaleApproval { .. } => "stale_approval",
            Refusal::ApprovalDelay { .. } => "approval_delay",
            Refusal::OutpointAlreadySigned { .. } => "outpoint_already_signed",
            Refusal::Internal { .. } => "internal",
            Refusal::PolicyViolations { .. } => "policy_violations",
            Refusal::TooSoon { .. } => "too_soon",
            Refusal::TooManySignatures { .. } => "too_many_signatures",
            Refusal::OverChangeLimit { .. } => "over_change_limit",
            Refusal::DestinationNotYetAllowed { .. } => "destination_not_yet_allowed",
            Refusal::Held { .. } => "held",
            Refusal::Cancelled => "cancelled",
            Refusal::Locked => "locked",
        }
    }

    /// Every policy rule this refusal reports broken, with its figures; empty for a refusal
    /// that is not about the policy's limits.
    pub fn violations(&self) -> Vec<Violation> {
        let rule = self.code();
        let v = |limit, used, would_be, output| Violation {
            rule,
            limit,
            used,
            would_be,
            output,
            ready_at: None,
        };
        match self {
            Refusal::FeeTooHigh { fee_sat, max_sat } => {
                vec![v(Some(*max_sat), None, Some(*fee_sat), None)]
            }
            Refusal::FeeRateTooHigh {
                rate_sat_vb,
                max_sat_vb,
            } => vec![v(Some(*max_sat_vb), None, Some(*rate_sat_vb), None)],
            Refusal::OverTxLimit {
                amount_sat,
                max_sat,
            } => vec![v(Some(*max_sat), None, Some(*amount_sat), None)],
            Refusal::OverPeriodLimit {
                already_sat,
                amount_sat,
                max_sat,
            } => vec![v(
                Some(*max_sat),
                Some(*already_sat),
                Some(already_sat.saturating_add(*amount_sat)),
                None,
            )],
            Refusal::DestinationNotAllowed { output } => vec![v(None, None, None, Some(*output))],
            Refusal::PolicyViolations { violations } => {
                violations.iter().flat_map(Refusal::violations).collect()
            }
            Refusal::TooSoon {
                last_signed_at,
                gap_secs,
                min_secs,
            } => vec![Violation {
                ready_at: Some(last_signed_at.saturating_add(*min_secs)),
                // The gap this signature would leave after the last one.
                ..v(Some(*min_secs), None, Some(*gap_secs), None)
            }],
            Refusal::TooManySignatures { already, max } => vec![v(
                Some(*max),
                Some(*already),
                Some(already.saturating_add(1)),
                None,
            )],
            Refusal::OverChangeLimit {
                already_sat,
                change_sat,
                max_sat,
            } => vec![v(
                Some(*max_sat),
                Some(*already_sat),
                Some(already_sat.saturating_add(*change_sat)),
                None,
            )],
            Refusal::DestinationNotYetAllowed {
                output,
                allowed_from,
            } => vec![Violation {
                ready_at: Some(*allowed_from),
                ..v(None, None, None, Some(*output))
            }],
            Refusal::Locked => vec![v(None, None, None, None)],
            _ => Vec::new(),
        }
    }
}
