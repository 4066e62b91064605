//! What a PSBT spends, checked against a registered wallet.
//!
//! Shared by the cosigner (before it signs) and the bridge (to refuse early and to show the
//! user exactly what will be signed), so both sides judge a PSBT by the same code. Every
//! input must come from the wallet (its script derives from the descriptor at the branch and
//! index the PSBT claims for the satellite's key), carry its full previous transaction, ask
//! for SIGHASH_ALL only, and already hold a valid signature from another key of the wallet.
//! Outputs the PSBT claims as the wallet's own must derive from it (the claim is checked,
//! never taken on its word); those, on its change branch or its receive branch (a payment
//! to oneself), stay in the wallet. Everything else counts as leaving it.

use bitcoin::hashes::Hash as _;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, Verification};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{OutPoint, ScriptBuf, TxOut, Txid};

use crate::refusal::Refusal;
use crate::wallet::{Derived, Wallet};

/// Bytes a DER signature with its sighash byte takes at most (low-R signatures take 72 or less).
const SIGNATURE_BYTES: usize = 72;

/// One input, as the satellite will sign it.
#[derive(Debug, Clone)]
pub struct InputPlan {
    /// The outpoint spent.
    pub outpoint: OutPoint,
    /// Its value, from the full previous transaction.
    pub value_sat: u64,
    /// Branch (0 receive, 1 change) and index of the wallet address spent.
    pub branch: u32,
    /// Index on the branch.
    pub index: u32,
    /// Scripts and keys at that branch and index.
    pub derived: Derived,
    /// The BIP-143 message the satellite signs for this input.
    pub sighash: Message,
    /// Valid signatures already present from other keys of the wallet.
    pub other_signatures: usize,
}

/// One output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// Where it pays.
    pub script_pubkey: ScriptBuf,
    /// How much.
    pub value_sat: u64,
    /// Whether it is proven to pay the wallet itself: its script derives from the registered
    /// descriptor, on the change branch (change) or the receive branch (a self-payment).
    pub own: bool,
}

/// The spend a PSBT describes.
#[derive(Debug, Clone)]
pub struct Spend {
    /// The transaction's id (of the unsigned transaction, which signatures do not change).
    pub txid: Txid,
    /// Inputs, in order.
    pub inputs: Vec<InputPlan>,
    /// Outputs, in order.
    pub outputs: Vec<OutputPlan>,
    /// Sum of inputs.
    pub total_in_sat: u64,
    /// Sum of the outputs back to the wallet (change and payments to its own addresses).
    pub change_sat: u64,
    /// Fee.
    pub fee_sat: u64,
    /// Estimated virtual size once fully signed.
    pub vsize: u64,
}

impl Spend {
    /// What leaves the wallet: every output not proven the wallet's own, plus the fee.
    pub fn leaving_sat(&self) -> u64 {
        self.total_in_sat - self.change_sat
    }

    /// Fee rate in sat/vB, rounded up.
    pub fn fee_rate_sat_vb(&self) -> u64 {
        self.fee_sat.div_ceil(self.vsize.max(1))
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        _ => 5,
    }
}

/// Checks `psbt` against `wallet` and describes what it spends.
pub fn analyze<C: Verification>(
    secp: &Secp256k1<C>,
    wallet: &Wallet,
    psbt: &Psbt,
) -> Result<Spend, Refusal> {
    let tx = &psbt.unsigned_tx;
    if tx.input.is_empty() || tx.output.is_empty() {
        return Err(Refusal::MalformedPsbt {
            reason: "a transaction needs at least one input and one output".into(),
        });
    }
    if psbt.inputs.len() != tx.input.len() || psbt.outputs.len() != tx.output.len() {
        return Err(Refusal::MalformedPsbt {
            reason: "PSBT maps do not match the transaction's inputs and outputs".into(),
        });
    }
    let mut cache = SighashCache::new(tx);
    let mut inputs = Vec::with_capacity(tx.input.len());
    let mut total_in: u64 = 0;
    let mut witness_weight = 0usize;
    for (i, (txin, pin)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
        let prev = pin
            .non_witness_utxo
            .as_ref()
            .ok_or(Refusal::MissingPrevTx { input: i })?;
        if prev.compute_txid() != txin.previous_output.txid {
            return Err(Refusal::PrevTxMismatch {
                input: i,
                reason: format!(
                    "it has txid {}, the input spends {}",
                    prev.compute_txid(),
                    txin.previous_output.txid
                ),
            });
        }
        let prevout: &TxOut = prev
            .output
            .get(txin.previous_output.vout as usize)
            .ok_or_else(|| Refusal::PrevTxMismatch {
                input: i,
                reason: format!("it has no output {}", txin.previous_output.vout),
            })?;
        if let Some(wu) = &pin.witness_utxo {
            if wu != prevout {
                return Err(Refusal::WitnessUtxoMismatch {
                    input: i,
                    claimed_sat: wu.value.to_sat(),
                    actual_sat: prevout.value.to_sat(),
                });
            }
        }
        if let Some(t) = pin.sighash_type {
            if t.ecdsa_hash_ty() != Ok(EcdsaSighashType::All) {
                return Err(Refusal::SighashNotAll { input: i });
            }
        }
        let (psbt_pk, branch, index) =
            wallet
                .locate_ours(&pin.bip32_derivation)
                .ok_or_else(|| Refusal::InputNotInWallet {
                    input: i,
                    reason: "no derivation for the satellite's key".into(),
                })?;
        let derived =
            wallet
                .derive(secp, branch, index)
                .ok_or_else(|| Refusal::InputNotInWallet {
                    input: i,
                    reason: format!("cannot derive branch {branch} index {index}"),
                })?;
        if derived.our_pubkey.inner != psbt_pk {
            return Err(Refusal::InputNotInWallet {
                input: i,
                reason: "the satellite's key in the PSBT is not the one its path derives".into(),
            });
        }
        if prevout.script_pubkey != derived.script_pubkey {
            return Err(Refusal::InputNotInWallet {
                input: i,
                reason: "the output spent is not the wallet's script at that path (wrong keys or threshold)".into(),
            });
        }
        if let Some(ws) = &pin.witness_script {
            if *ws != derived.witness_script {
                return Err(Refusal::InputNotInWallet {
                    input: i,
                    reason: "witness_script is not the wallet's script at that path".into(),
                });
            }
        }
        let sighash = cache
            .p2wsh_signature_hash(
                i,
                &derived.witness_script,
                prevout.value,
                EcdsaSighashType::All,
            )
            .map_err(|e| Refusal::MalformedPsbt {
                reason: format!("input {i}: {e}"),
            })?;
        let sighash = Message::from_digest(sighash.to_byte_array());
        let mut other_signatures = 0;
        for (pk, sig) in &pin.partial_sigs {
            if sig.sighash_type != EcdsaSighashType::All {
                return Err(Refusal::SighashNotAll { input: i });
            }
            if *pk == derived.our_pubkey {
                continue;
            }
            if !derived.pubkeys.contains(pk) {
                return Err(Refusal::InvalidSignature {
                    input: i,
                    reason: format!("signature by {pk}, which is not a key of this wallet"),
                });
            }
            secp.verify_ecdsa(&sighash, &sig.signature, &pk.inner)
                .map_err(|_| Refusal::InvalidSignature {
                    input: i,
                    reason: format!("the signature by {pk} does not verify"),
                })?;
            other_signatures += 1;
        }
        if other_signatures == 0 {
            return Err(Refusal::NoOtherSignature { input: i });
        }
        let ws_len = derived.witness_script.len();
        witness_weight += varint_len(wallet.threshold + 2)
            + 1
            + wallet.threshold * (1 + SIGNATURE_BYTES)
            + varint_len(ws_len)
            + ws_len;
        total_in = total_in
            .checked_add(prevout.value.to_sat())
            .ok_or_else(|| Refusal::MalformedPsbt {
                reason: "input amounts overflow".into(),
            })?;
        inputs.push(InputPlan {
            outpoint: txin.previous_output,
            value_sat: prevout.value.to_sat(),
            branch,
            index,
            derived,
            sighash,
            other_signatures,
        });
    }

    let mut outputs = Vec::with_capacity(tx.output.len());
    let mut total_out: u64 = 0;
    let mut change: u64 = 0;
    for (j, (txout, pout)) in tx.output.iter().zip(&psbt.outputs).enumerate() {
        let mut own = false;
        if let Some((_, branch, index)) = wallet.locate_ours(&pout.bip32_derivation) {
            // Proven, not claimed: the script at that branch and index must be this output's.
            let derived = wallet
                .derive(secp, branch, index)
                .ok_or(Refusal::ChangeMismatch { output: j })?;
            if derived.script_pubkey != txout.script_pubkey {
                return Err(Refusal::ChangeMismatch { output: j });
            }
            own = true;
        }
        let value = txout.value.to_sat();
        total_out = total_out
            .checked_add(value)
            .ok_or_else(|| Refusal::MalformedPsbt {
                reason: "output amounts overflow".into(),
            })?;
        if own {
            change += value;
        }
        outputs.push(OutputPlan {
            script_pubkey: txout.script_pubkey.clone(),
            value_sat: value,
            own,
        });
    }
    if total_out > total_in {
        return Err(Refusal::OutputsExceedInputs {
            inputs_sat: total_in,
            outputs_sat: total_out,
        });
    }
    let base = bitcoin::consensus::serialize(tx).len();
    let weight = base * 4 + 2 + witness_weight;
    Ok(Spend {
        txid: tx.compute_txid(),
        inputs,
        outputs,
        total_in_sat: total_in,
        change_sat: change,
        fee_sat: total_in - total_out,
        vsize: weight.div_ceil(4) as u64,
    })
}
