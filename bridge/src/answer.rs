//! The satellite's answer to a signing request, checked before anything of it is kept.
//!
//! The bridge computed every input's sighash itself when it took the request. Each
//! signature the satellite sends must verify against that sighash and the wallet's
//! satellite key (low-S, `SIGHASH_ALL`) before it is merged: an answer corrupted on the
//! way, forged, or made for another transaction is refused as `bad_answer`, never
//! delivered as signed. A transaction that has its threshold of signatures must finalize;
//! a failure then is an error too.

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use miniscript::psbt::PsbtExt as _;
use satcosign_cosigner::spend::{analyze, InputPlan, Spend};
use satcosign_cosigner::wallet::Wallet;

use crate::state::Outcome;

/// Merges the satellite's signatures from its full-PSBT answer into the request's PSBT:
/// only its own key's, each checked first (see `insert_checked`).
pub fn merge_psbt(
    secp: &Secp256k1<All>,
    wallet: &Wallet,
    ours: &[u8],
    signed: &[u8],
) -> Result<Outcome, String> {
    let mut merged = Psbt::deserialize(ours).map_err(|e| format!("stored PSBT: {e}"))?;
    let theirs = Psbt::deserialize(signed).map_err(|e| format!("the satellite's PSBT: {e}"))?;
    if theirs.unsigned_tx != merged.unsigned_tx {
        return Err("the satellite answered with another transaction".into());
    }
    let spend = analyze(secp, wallet, &merged).map_err(|e| e.to_string())?;
    for (index, (plan, other)) in spend.inputs.iter().zip(&theirs.inputs).enumerate() {
        let Some(sig) = other.partial_sigs.get(&plan.derived.our_pubkey) else {
            return Err(format!(
                "the satellite sent no signature for input {index} ({})",
                plan.outpoint
            ));
        };
        if sig.sighash_type != bitcoin::sighash::EcdsaSighashType::All {
            return Err(format!(
                "the satellite signed input {index} ({}) with {}, not SIGHASH_ALL",
                plan.outpoint, sig.sighash_type
            ));
        }
        insert_checked(secp, &mut merged, plan, index, sig.signature)?;
    }
    finish(secp, wallet, &spend, merged)
}

/// Merges the satellite's compact signatures (one per input) into the request's PSBT,
/// each checked first (see `insert_checked`).
pub fn merge_compact(
    secp: &Secp256k1<All>,
    wallet: &Wallet,
    ours: &[u8],
    signatures: &[Vec<u8>],
) -> Result<Outcome, String> {
    let mut merged = Psbt::deserialize(ours).map_err(|e| format!("stored PSBT: {e}"))?;
    let spend = analyze(secp, wallet, &merged).map_err(|e| e.to_string())?;
    if signatures.len() != merged.inputs.len() {
        return Err(format!(
            "the satellite sent {} signatures for {} inputs",
            signatures.len(),
            merged.inputs.len()
        ));
    }
    for (index, (plan, sig)) in spend.inputs.iter().zip(signatures).enumerate() {
        let signature = bitcoin::secp256k1::ecdsa::Signature::from_compact(sig).map_err(|e| {
            format!(
                "the satellite's signature for input {index} ({}): {e}",
                plan.outpoint
            )
        })?;
        insert_checked(secp, &mut merged, plan, index, signature)?;
    }
    finish(secp, wallet, &spend, merged)
}

/// Inserts the satellite's signature for input `index` once it verifies against the
/// sighash the bridge computed itself and the wallet's satellite key: an answer that was
/// corrupted, forged or made for another transaction is never merged.
fn insert_checked(
    secp: &Secp256k1<All>,
    merged: &mut Psbt,
    plan: &InputPlan,
    index: usize,
    signature: bitcoin::secp256k1::ecdsa::Signature,
) -> Result<(), String> {
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature
        || secp
            .verify_ecdsa(&plan.sighash, &signature, &plan.derived.our_pubkey.inner)
            .is_err()
    {
        return Err(format!(
            "the satellite's signature for input {index} ({}) does not verify",
            plan.outpoint
        ));
    }
    let input = merged
        .inputs
        .get_mut(index)
        .ok_or_else(|| format!("no input {index} in the stored PSBT"))?;
    input.partial_sigs.insert(
        plan.derived.our_pubkey,
        bitcoin::ecdsa::Signature {
            signature,
            sighash_type: bitcoin::sighash::EcdsaSighashType::All,
        },
    );
    Ok(())
}

/// Finalizes `merged` when it holds enough signatures. With the satellite's (checked) and
/// the valid ones found at intake, an input that has the wallet's threshold must finalize:
/// a failure then is an error, never "signed". With fewer, the PSBT goes back unfinalized
/// for the wallet to add its own.
fn finish(
    secp: &Secp256k1<All>,
    wallet: &Wallet,
    spend: &Spend,
    merged: Psbt,
) -> Result<Outcome, String> {
    let complete = spend
        .inputs
        .iter()
        .all(|plan| plan.other_signatures + 1 >= wallet.threshold);
    let mut finalized = merged.clone();
    match finalized.finalize_mut(secp) {
        Ok(()) => {
            let tx = finalized
                .extract_tx()
                .map_err(|e| format!("cannot extract the transaction: {e}"))?;
            // The PSBT keeps every partial signature (any wallet can finalize it); the final
            // transaction goes beside it.
            Ok(Outcome::Signed {
                psbt: merged.serialize(),
                tx: Some(bitcoin::consensus::serialize(&tx)),
                broadcast: None,
            })
        }
        Err(errors) if complete => Err(format!(
            "the signatures are enough but the transaction does not finalize: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Err(_) => Ok(Outcome::Signed {
            psbt: merged.serialize(),
            tx: None,
            broadcast: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use satcosign_cosigner::testkit::{satellite_wallet_key, TestWallet};

    /// The user's PSBT (one signature) and the satellite's signatures of it, in its compact
    /// and full-PSBT forms.
    fn signed_by_both(w: &TestWallet) -> (Psbt, Vec<Vec<u8>>, Psbt) {
        let ours = w.typical_signed_psbt(3, 1);
        let mut theirs = ours.clone();
        theirs
            .inputs
            .iter_mut()
            .for_each(|i| i.partial_sigs.clear());
        w.sign_with(&satellite_wallet_key(), &mut theirs);
        let compact = theirs
            .inputs
            .iter()
            .map(|i| {
                let (_, sig) = i
                    .partial_sigs
                    .iter()
                    .next()
                    .expect("the satellite's signature");
                sig.signature.serialize_compact().to_vec()
            })
            .collect();
        (ours, compact, theirs)
    }

    fn is_final(outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Signed { tx: Some(_), .. })
    }

    #[test]
    fn good_signatures_merge_and_finalize() {
        let secp = Secp256k1::new();
        let w = TestWallet::new();
        let (ours, compact, theirs) = signed_by_both(&w);
        let merged = merge_compact(&secp, &w.wallet, &ours.serialize(), &compact).expect("good");
        assert!(is_final(merged));
        let merged =
            merge_psbt(&secp, &w.wallet, &ours.serialize(), &theirs.serialize()).expect("good");
        assert!(is_final(merged));
    }

    #[test]
    fn a_corrupted_or_misplaced_signature_is_refused_naming_its_input() {
        let secp = Secp256k1::new();
        let w = TestWallet::new();
        let (ours, compact, theirs) = signed_by_both(&w);
        // One bit of input 1's signature flipped (r stays a valid scalar).
        let mut flipped = compact.clone();
        flipped[1][40] ^= 1;
        let err = merge_compact(&secp, &w.wallet, &ours.serialize(), &flipped)
            .expect_err("a corrupted signature");
        assert!(
            err.contains("input 1") && err.contains("does not verify"),
            "{err}"
        );
        // Each signature valid, but for another input.
        let mut swapped = compact.clone();
        swapped.swap(0, 2);
        let err = merge_compact(&secp, &w.wallet, &ours.serialize(), &swapped)
            .expect_err("signatures of other inputs");
        assert!(err.contains("input 0"), "{err}");
        // High-S form of a valid signature: malleated, refused.
        let sig = bitcoin::secp256k1::ecdsa::Signature::from_compact(&compact[0]).expect("sig");
        let mut high = sig.serialize_compact();
        let n = bitcoin::secp256k1::constants::CURVE_ORDER;
        let mut s = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(high[32 + i]) - borrow;
            s[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        high[32..].copy_from_slice(&s);
        let mut malleated = compact.clone();
        malleated[0] = high.to_vec();
        let err =
            merge_compact(&secp, &w.wallet, &ours.serialize(), &malleated).expect_err("high S");
        assert!(err.contains("input 0"), "{err}");
        // The full-PSBT form: a corrupted signature, or none for our key.
        let mut bad = theirs.clone();
        for sig in bad.inputs[2].partial_sigs.values_mut() {
            let mut bytes = sig.signature.serialize_compact();
            bytes[40] ^= 1;
            sig.signature =
                bitcoin::secp256k1::ecdsa::Signature::from_compact(&bytes).expect("still parses");
        }
        let err = merge_psbt(&secp, &w.wallet, &ours.serialize(), &bad.serialize())
            .expect_err("corrupted");
        assert!(
            err.contains("input 2") && err.contains("does not verify"),
            "{err}"
        );
        let mut none = theirs.clone();
        none.inputs[0].partial_sigs.clear();
        let err = merge_psbt(&secp, &w.wallet, &ours.serialize(), &none.serialize())
            .expect_err("missing");
        assert!(err.contains("no signature for input 0"), "{err}");
    }
}
