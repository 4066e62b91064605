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

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::ecdsa::Signature as EcdsaSignature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa::Signature, Secp256k1, Verification};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::Transaction;
use serde::{Deserialize, Serialize};

use crate::decision::RequestId;
use crate::refusal::Refusal;
use crate::spend::Spend;
use crate::wallet::{Wallet, WalletId};

/// One input, compact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactInput {
    /// The previous transaction, consensus-encoded without witnesses.
    pub prev_tx: Vec<u8>,
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
    /// The unsigned transaction, consensus-encoded.
    pub tx: Vec<u8>,
    /// Inputs, in order.
    pub inputs: Vec<CompactInput>,
    /// Change outputs: (output position, index on the change branch).
    pub change: Vec<(u32, u32)>,
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
    let mut inputs = Vec::with_capacity(psbt.inputs.len());
    for (input, plan) in psbt.inputs.iter().zip(&spend.inputs) {
        let mut prev = input.non_witness_utxo.clone()?;
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
            branch: plan.branch,
            index: plan.index,
            signatures,
        });
    }
    let mut change = Vec::new();
    for (j, (out, plan)) in psbt.outputs.iter().zip(&spend.outputs).enumerate() {
        if plan.change {
            let (_, branch, index) = wallet.locate_ours(&out.bip32_derivation)?;
            if branch != 1 {
                return None;
            }
            change.push((u32::try_from(j).ok()?, index));
        }
    }
    Some(CompactSign {
        request_id,
        wallet_id: wallet.id,
        approved_at,
        replaces,
        tx: bitcoin::consensus::serialize(&psbt.unsigned_tx),
        inputs,
        change,
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
    let tx: Transaction = bitcoin::consensus::deserialize(&c.tx)
        .map_err(|e| malformed(format!("compact transaction: {e}")))?;
    if c.inputs.len() != tx.input.len() {
        return Err(malformed(format!(
            "{} compact inputs for {} transaction inputs",
            c.inputs.len(),
            tx.input.len()
        )));
    }
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(|e| malformed(e.to_string()))?;
    for (i, ci) in c.inputs.iter().enumerate() {
        let prev: Transaction = bitcoin::consensus::deserialize(&ci.prev_tx)
            .map_err(|e| malformed(format!("input {i}: previous transaction: {e}")))?;
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
    for &(j, index) in &c.change {
        let derived = wallet
            .derive(secp, 1, index)
            .ok_or_else(|| malformed(format!("change output {j}: index {index}")))?;
        let out = psbt
            .outputs
            .get_mut(j as usize)
            .ok_or_else(|| malformed(format!("change output {j} does not exist")))?;
        out.witness_script = Some(derived.witness_script);
        let source = path(1, index).ok_or_else(|| malformed(format!("change index {index}")))?;
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
        assert!(matches!(
            analyze(&secp, &w.wallet, &expanded),
            Err(Refusal::PrevTxMismatch { .. })
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
