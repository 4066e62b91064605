//! The signing request and its answer in compact form, for the air.
//!
//! A PSBT repeats what the cosigner already knows from the registered wallet: every witness
//! script, every key and derivation path, the spent output beside the transaction that holds
//! it. Over a 9600 bit/s pass those bytes cost time, so the bridge sends only what the
//! cosigner cannot derive: the unsigned transaction, each input's full previous transaction
//! (without its witnesses, which the txid does not cover), the branch and index each input
//! and change output derives from, and the other keys' signatures (64-byte compact, all
//! SIGHASH_ALL). The cosigner rebuilds the full PSBT ([`expand`]) and judges it with the same
//! code as any PSBT; nothing it checks is taken on trust. The answer carries only the
//! satellite's signatures.

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::ecdsa::Signature as EcdsaSignature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa::Signature, Secp256k1, Verification};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use serde::{Deserialize, Serialize};

use crate::decision::RequestId;
use crate::refusal::Refusal;
use crate::spend::Spend;
use crate::wallet::{Wallet, WalletId};

/// One input, compact. Its outpoint's txid is the previous transaction's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactInput {
    /// The previous transaction, consensus-encoded without witnesses.
    pub prev_tx: Vec<u8>,
    /// The output of `prev_tx` spent.
    pub vout: u32,
    /// The input's sequence number.
    pub sequence: u32,
    /// Branch (0 receive, 1 change) of the wallet address spent.
    pub branch: u32,
    /// Index on the branch.
    pub index: u32,
    /// Other keys' SIGHASH_ALL signatures: (position of the key in the script, 64-byte compact).
    pub signatures: Vec<(u8, Vec<u8>)>,
}

/// A signing request, compact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSign {
    /// The request.
    pub request_id: RequestId,
    /// The wallet.
    pub wallet_id: WalletId,
    /// When the user approved, unix seconds.
    pub approved_at: u64,
    /// An earlier request this one replaces.
    pub replaces: Option<RequestId>,
    /// The transaction's version.
    pub version: i32,
    /// The transaction's lock time (consensus value).
    pub lock_time: u32,
    /// Inputs, in order.
    pub inputs: Vec<CompactInput>,
    /// Outputs, in order.
    pub outputs: Vec<CompactOutput>,
}

/// One output, compact: a change output is named by its index, its script derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompactOutput {
    /// Pays `script`.
    Pay {
        /// Amount, sat.
        value_sat: u64,
        /// The output script.
        script: Vec<u8>,
    },
    /// Back to the wallet at this index of its change branch.
    Change {
        /// Amount, sat.
        value_sat: u64,
        /// Index on the change branch.
        index: u32,
    },
    /// To the wallet's own receive address at this index (a payment to oneself).
    Receive {
        /// Amount, sat.
        value_sat: u64,
        /// Index on the receive branch.
        index: u32,
    },
}

/// The satellite's signatures, one per input in order (64-byte compact, SIGHASH_ALL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSignatures(pub Vec<Vec<u8>>);

fn path(branch: u32, index: u32) -> Option<DerivationPath> {
    Some(DerivationPath::from(vec![
        ChildNumber::from_normal_idx(branch).ok()?,
        ChildNumber::from_normal_idx(index).ok()?,
    ]))
}

/// The compact form of `psbt` (already checked: `spend` is its analysis against `wallet`),
/// or `None` when it carries something the compact form cannot (a signature with another
/// sighash type, a key outside the script); the full PSBT goes then.
pub fn compact(
    wallet: &Wallet,
    psbt: &Psbt,
    spend: &Spend,
    request_id: RequestId,
    approved_at: u64,
    replaces: Option<RequestId>,
) -> Option<CompactSign> {
    let tx = &psbt.unsigned_tx;
    let mut inputs = Vec::with_capacity(psbt.inputs.len());
    for ((input, plan), txin) in psbt.inputs.iter().zip(&spend.inputs).zip(&tx.input) {
        let mut prev = input.non_witness_utxo.clone()?;
        if prev.compute_txid() != txin.previous_output.txid {
            return None;
        }
        for i in &mut prev.input {
            i.witness.clear();
        }
        let mut signatures = Vec::new();
        for (pk, sig) in &input.partial_sigs {
            if sig.sighash_type != EcdsaSighashType::All {
                return None;
            }
            let pos = plan.derived.pubkeys.iter().position(|k| k == pk)?;
            signatures.push((
                u8::try_from(pos).ok()?,
                sig.signature.serialize_compact().to_vec(),
            ));
        }
        inputs.push(CompactInput {
            prev_tx: bitcoin::consensus::serialize(&prev),
            vout: txin.previous_output.vout,
            sequence: txin.sequence.0,
            branch: plan.branch,
            index: plan.index,
            signatures,
        });
    }
    let mut outputs = Vec::with_capacity(tx.output.len());
    for ((out, plan), txout) in psbt.outputs.iter().zip(&spend.outputs).zip(&tx.output) {
        let value_sat = txout.value.to_sat();
        if plan.own {
            let (_, branch, index) = wallet.locate_ours(&out.bip32_derivation)?;
            outputs.push(match branch {
                0 => CompactOutput::Receive { value_sat, index },
                1 => CompactOutput::Change { value_sat, index },
                _ => return None,
            });
        } else {
            outputs.push(CompactOutput::Pay {
                value_sat,
                script: txout.script_pubkey.to_bytes(),
            });
        }
    }
    Some(CompactSign {
        request_id,
        wallet_id: wallet.id,
        approved_at,
        replaces,
        version: tx.version.0,
        lock_time: tx.lock_time.to_consensus_u32(),
        inputs,
        outputs,
    })
}

fn malformed(reason: String) -> Refusal {
    Refusal::MalformedPsbt { reason }
}

/// Rebuilds the full PSBT from its compact form and the registered wallet.
pub fn expand<C: Verification>(
    secp: &Secp256k1<C>,
    wallet: &Wallet,
    c: &CompactSign,
) -> Result<Psbt, Refusal> {
    let mut prevs = Vec::with_capacity(c.inputs.len());
    let mut input = Vec::with_capacity(c.inputs.len());
    for (i, ci) in c.inputs.iter().enumerate() {
        let prev: Transaction = bitcoin::consensus::deserialize(&ci.prev_tx)
            .map_err(|e| malformed(format!("input {i}: previous transaction: {e}")))?;
        input.push(TxIn {
            previous_output: OutPoint::new(prev.compute_txid(), ci.vout),
            script_sig: ScriptBuf::new(),
            sequence: Sequence(ci.sequence),
            witness: Witness::new(),
        });
        prevs.push(prev);
    }
    let mut output = Vec::with_capacity(c.outputs.len());
    let mut change = Vec::new();
    for (j, o) in c.outputs.iter().enumerate() {
        let (value_sat, script_pubkey) = match o {
            CompactOutput::Pay { value_sat, script } => {
                (*value_sat, ScriptBuf::from_bytes(script.clone()))
            }
            CompactOutput::Change { value_sat, index }
            | CompactOutput::Receive { value_sat, index } => {
                let branch = u32::from(matches!(o, CompactOutput::Change { .. }));
                let derived = wallet.derive(secp, branch, *index).ok_or_else(|| {
                    malformed(format!("own output {j}: branch {branch} index {index}"))
                })?;
                change.push((j, branch, *index, derived.clone()));
                (*value_sat, derived.script_pubkey)
            }
        };
        output.push(TxOut {
            value: Amount::from_sat(value_sat),
            script_pubkey,
        });
    }
    let tx = Transaction {
        version: Version(c.version),
        lock_time: LockTime::from_consensus(c.lock_time),
        input,
        output,
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(|e| malformed(e.to_string()))?;
    for ((i, ci), prev) in c.inputs.iter().enumerate().zip(prevs) {
        let derived =
            wallet
                .derive(secp, ci.branch, ci.index)
                .ok_or_else(|| Refusal::InputNotInWallet {
                    input: i,
                    reason: format!("branch {} index {} does not derive", ci.branch, ci.index),
                })?;
        let vout = psbt.unsigned_tx.input[i].previous_output.vout as usize;
        let input = &mut psbt.inputs[i];
        input.witness_utxo = prev.output.get(vout).cloned();
        input.non_witness_utxo = Some(prev);
        input.witness_script = Some(derived.witness_script.clone());
        let source = path(ci.branch, ci.index).ok_or_else(|| Refusal::InputNotInWallet {
            input: i,
            reason: format!("branch {} index {} does not derive", ci.branch, ci.index),
        })?;
        input.bip32_derivation.insert(
            derived.our_pubkey.inner,
            (wallet.our_own_fingerprint(), source),
        );
        for (pos, sig) in &ci.signatures {
            let pk = derived
                .pubkeys
                .get(usize::from(*pos))
                .ok_or_else(|| malformed(format!("input {i}: no key at position {pos}")))?;
            let signature = Signature::from_compact(sig)
                .map_err(|e| malformed(format!("input {i}: signature: {e}")))?;
            input.partial_sigs.insert(
                *pk,
                EcdsaSignature {
                    signature,
                    sighash_type: EcdsaSighashType::All,
                },
            );
        }
    }
    for (j, branch, index, derived) in change {
        let out = &mut psbt.outputs[j];
        out.witness_script = Some(derived.witness_script);
        let source = path(branch, index)
            .ok_or_else(|| malformed(format!("own output branch {branch} index {index}")))?;
        out.bip32_derivation.insert(
            derived.our_pubkey.inner,
            (wallet.our_own_fingerprint(), source),
        );
    }
    Ok(psbt)
}

/// The satellite's signatures in a signed PSBT, compact, one per input.
pub fn our_signatures(psbt: &Psbt, ours: &[bitcoin::PublicKey]) -> Option<CompactSignatures> {
    psbt.inputs
        .iter()
        .zip(ours)
        .map(|(input, pk)| {
            input
                .partial_sigs
                .get(pk)
                .map(|s| s.signature.serialize_compact().to_vec())
        })
        .collect::<Option<Vec<_>>>()
        .map(CompactSignatures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::RequestId;
    use crate::spend::analyze;
    use crate::testkit::TestWallet;

    #[test]
    fn expands_to_a_psbt_judged_the_same_and_is_far_smaller() {
        let w = TestWallet::new();
        let secp = Secp256k1::new();
        let psbt = w.typical_signed_psbt(2, 5);
        let spend = analyze(&secp, &w.wallet, &psbt).expect("valid");
        let c = compact(&w.wallet, &psbt, &spend, RequestId([1; 16]), 100, None).expect("compacts");
        let expanded = expand(&secp, &w.wallet, &c).expect("expands");
        let again = analyze(&secp, &w.wallet, &expanded).expect("still valid");
        assert_eq!(again.txid, spend.txid);
        assert_eq!(again.fee_sat, spend.fee_sat);
        assert_eq!(again.change_sat, spend.change_sat);
        assert_eq!(again.outputs, spend.outputs);
        for (a, b) in again.inputs.iter().zip(&spend.inputs) {
            assert_eq!(a.sighash, b.sighash, "the satellite signs the same message");
            assert_eq!(a.other_signatures, b.other_signatures);
        }
        let size = postcard::to_stdvec(&c).expect("encodes").len();
        assert!(
            size * 2 < psbt.serialize().len(),
            "{size} vs {}",
            psbt.serialize().len()
        );
    }

    #[test]
    fn a_payment_to_the_wallets_own_receive_address_crosses_as_its_own() {
        let w = TestWallet::new();
        let secp = Secp256k1::new();
        let spec = crate::testkit::SpendSpec {
            inputs: vec![(0, 0, 1_000_000)],
            payments: vec![(w.script(0, 7), 600_000)],
            change: Some((2, 399_000)),
        };
        let mut psbt = w.psbt(&spec);
        w.mark_own(&mut psbt, 0, 0, 7);
        w.sign_with(&w.user, &mut psbt);
        let spend = analyze(&secp, &w.wallet, &psbt).expect("valid");
        assert!(spend.outputs.iter().all(|o| o.own), "{:?}", spend.outputs);
        assert_eq!(spend.leaving_sat(), 1_000, "only the fee leaves");
        let c = compact(&w.wallet, &psbt, &spend, RequestId([2; 16]), 100, None).expect("compacts");
        assert!(matches!(
            c.outputs[0],
            CompactOutput::Receive { index: 7, .. }
        ));
        let again = analyze(
            &secp,
            &w.wallet,
            &expand(&secp, &w.wallet, &c).expect("expands"),
        )
        .expect("still valid");
        assert_eq!(again.outputs, spend.outputs);
        assert_eq!(again.leaving_sat(), 1_000);
    }

    #[test]
    fn a_tampered_previous_transaction_or_signature_is_caught_after_expansion() {
        let w = TestWallet::new();
        let secp = Secp256k1::new();
        let psbt = w.typical_signed_psbt(1, 6);
        let spend = analyze(&secp, &w.wallet, &psbt).expect("valid");
        let c = compact(&w.wallet, &psbt, &spend, RequestId([1; 16]), 100, None).expect("compacts");

        let mut lying = c.clone();
        let mut prev: Transaction =
            bitcoin::consensus::deserialize(&lying.inputs[0].prev_tx).expect("tx");
        prev.output[0].value = bitcoin::Amount::from_sat(prev.output[0].value.to_sat() * 10);
        lying.inputs[0].prev_tx = bitcoin::consensus::serialize(&prev);
        let expanded = expand(&secp, &w.wallet, &lying).expect("expands");
        // The outpoint is the previous transaction's id: a lie about it describes another
        // transaction, which the user never signed.
        assert_ne!(expanded.unsigned_tx.compute_txid(), spend.txid);
        assert!(matches!(
            analyze(&secp, &w.wallet, &expanded),
            Err(Refusal::NoOtherSignature { .. } | Refusal::InvalidSignature { .. })
        ));

        let mut forged = c;
        forged.inputs[0].signatures[0].1[10] ^= 1;
        let outcome = expand(&secp, &w.wallet, &forged).and_then(|p| analyze(&secp, &w.wallet, &p));
        assert!(
            outcome.is_err(),
            "a forged signature is not another key's signature"
        );
    }
}
