//! The satellite's answer to a signing request, checked before anything of it is kept.
//!
//! The bridge computed every input's sighash itself when it took the request, and kept
//! them with it ([`IntakeChecks`], stored at intake): the answer is checked against those,
//! not against a second analysis of the PSBT. Each
//! signature the satellite sends must verify against that sighash and the wallet's
//! satellite key (low-S, `SIGHASH_ALL`) before it is merged: an answer corrupted on the
//! way, forged, or made for another transaction is refused as `bad_answer`, never
//! delivered as signed. A transaction that has its threshold of signatures must finalize;
//! a failure then is an error too.

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Message, Secp256k1};
use miniscript::psbt::PsbtExt as _;
use serde::{Deserialize, Serialize};

use satcosign_cosigner::spend::Spend;

use crate::state::Outcome;

/// What the satellite's signature of one input must verify against, computed at intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputCheck {
    /// The outpoint spent (for messages).
    pub outpoint: String,
    /// The BIP-143 sighash of the input.
    pub sighash: [u8; 32],
    /// The satellite's public key for the input (compressed).
    pub satellite_key: Vec<u8>,
    /// Valid signatures of other keys already in the PSBT at intake.
    pub other_signatures: u32,
}

/// Every input's check, and the wallet's threshold: kept with a signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeChecks {
    /// Signatures an input needs.
    pub threshold: u32,
    /// One per input, in order.
    pub inputs: Vec<InputCheck>,
}

impl IntakeChecks {
    /// The checks of an analyzed spend from a wallet of `threshold`.
    pub fn of(spend: &Spend, threshold: usize) -> IntakeChecks {
        IntakeChecks {
            threshold: u32::try_from(threshold).unwrap_or(u32::MAX),
            inputs: spend
                .inputs
                .iter()
                .map(|plan| InputCheck {
                    outpoint: plan.outpoint.to_string(),
                    sighash: *plan.sighash.as_ref(),
                    satellite_key: plan.derived.our_pubkey.to_bytes(),
                    other_signatures: u32::try_from(plan.other_signatures).unwrap_or(u32::MAX),
                })
                .collect(),
        }
    }
}

impl InputCheck {
    fn key(&self, index: usize) -> Result<bitcoin::PublicKey, String> {
        bitcoin::PublicKey::from_slice(&self.satellite_key)
            .map_err(|e| format!("the key kept for input {index}: {e}"))
    }
}

/// Merges the satellite's signatures from its full-PSBT answer into the request's PSBT:
/// only its own key's, each checked first (see `insert_checked`).
pub fn merge_psbt(
    secp: &Secp256k1<All>,
    checks: &IntakeChecks,
    ours: &[u8],
    signed: &[u8],
) -> Result<Outcome, String> {
    let mut merged = Psbt::deserialize(ours).map_err(|e| format!("stored PSBT: {e}"))?;
    let theirs = Psbt::deserialize(signed).map_err(|e| format!("the satellite's PSBT: {e}"))?;
    if theirs.unsigned_tx != merged.unsigned_tx {
        return Err("the satellite answered with another transaction".into());
    }
    if checks.inputs.len() != merged.inputs.len() || theirs.inputs.len() != merged.inputs.len() {
        return Err("the satellite's PSBT has another number of inputs".into());
    }
    for (index, (check, other)) in checks.inputs.iter().zip(&theirs.inputs).enumerate() {
        let Some(sig) = other.partial_sigs.get(&check.key(index)?) else {
            return Err(format!(
                "the satellite sent no signature for input {index} ({})",
                check.outpoint
            ));
        };
        if sig.sighash_type != bitcoin::sighash::EcdsaSighashType::All {
            return Err(format!(
                "the satellite signed input {index} ({}) with {}, not SIGHASH_ALL",
                check.outpoint, sig.sighash_type
            ));
        }
        insert_checked(secp, &mut merged, check, index, sig.signature)?;
    }
    finish(secp, checks, merged)
}

/// Merges the satellite's compact signatures (one per input) into the request's PSBT,
/// each checked first (see `insert_checked`).
pub fn merge_compact(
    secp: &Secp256k1<All>,
    checks: &IntakeChecks,
    ours: &[u8],
    signatures: &[Vec<u8>],
) -> Result<Outcome, String> {
    let mut merged = Psbt::deserialize(ours).map_err(|e| format!("stored PSBT: {e}"))?;
    if signatures.len() != merged.inputs.len() || checks.inputs.len() != merged.inputs.len() {
        return Err(format!(
            "the satellite sent {} signatures for {} inputs",
            signatures.len(),
            merged.inputs.len()
        ));
    }
    for (index, (check, sig)) in checks.inputs.iter().zip(signatures).enumerate() {
        let signature = bitcoin::secp256k1::ecdsa::Signature::from_compact(sig).map_err(|e| {
            format!(
                "the satellite's signature for input {index} ({}): {e}",
                check.outpoint
            )
        })?;
        insert_checked(secp, &mut merged, check, index, signature)?;
    }
    finish(secp, checks, merged)
}

/// Inserts the satellite's signature for input `index` once it verifies against the
/// sighash the bridge computed itself and the wallet's satellite key: an answer that was
/// corrupted, forged or made for another transaction is never merged.
fn insert_checked(
    secp: &Secp256k1<All>,
    merged: &mut Psbt,
    check: &InputCheck,
    index: usize,
    signature: bitcoin::secp256k1::ecdsa::Signature,
) -> Result<(), String> {
    let key = check.key(index)?;
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature
        || secp
            .verify_ecdsa(&Message::from_digest(check.sighash), &signature, &key.inner)
            .is_err()
    {
        return Err(format!(
            "the satellite's signature for input {index} ({}) does not verify",
            check.outpoint
        ));
    }
    let input = merged
        .inputs
        .get_mut(index)
        .ok_or_else(|| format!("no input {index} in the stored PSBT"))?;
    input.partial_sigs.insert(
        key,
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
fn finish(secp: &Secp256k1<All>, checks: &IntakeChecks, merged: Psbt) -> Result<Outcome, String> {
    let complete = checks
        .inputs
        .iter()
        .all(|c| c.other_signatures.saturating_add(1) >= checks.threshold);
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

    fn checks(w: &TestWallet, ours: &Psbt) -> IntakeChecks {
        let spend = satcosign_cosigner::spend::analyze(&Secp256k1::new(), &w.wallet, ours)
            .expect("analyzed");
        IntakeChecks::of(&spend, w.wallet.threshold)
    }

    fn is_final(outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Signed { tx: Some(_), .. })
    }

    #[test]
    fn good_signatures_merge_and_finalize() {
        let secp = Secp256k1::new();
        let w = TestWallet::new();
        let (ours, compact, theirs) = signed_by_both(&w);
        let merged =
            merge_compact(&secp, &checks(&w, &ours), &ours.serialize(), &compact).expect("good");
        assert!(is_final(merged));
        let merged = merge_psbt(
            &secp,
            &checks(&w, &ours),
            &ours.serialize(),
            &theirs.serialize(),
        )
        .expect("good");
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
        let err = merge_compact(&secp, &checks(&w, &ours), &ours.serialize(), &flipped)
            .expect_err("a corrupted signature");
        assert!(
            err.contains("input 1") && err.contains("does not verify"),
            "{err}"
        );
        // Each signature valid, but for another input.
        let mut swapped = compact.clone();
        swapped.swap(0, 2);
        let err = merge_compact(&secp, &checks(&w, &ours), &ours.serialize(), &swapped)
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
        let err = merge_compact(&secp, &checks(&w, &ours), &ours.serialize(), &malleated)
            .expect_err("high S");
        assert!(err.contains("input 0"), "{err}");
        // The full-PSBT form: a corrupted signature, or none for our key.
        let mut bad = theirs.clone();
        for sig in bad.inputs[2].partial_sigs.values_mut() {
            let mut bytes = sig.signature.serialize_compact();
            bytes[40] ^= 1;
            sig.signature =
                bitcoin::secp256k1::ecdsa::Signature::from_compact(&bytes).expect("still parses");
        }
        let err = merge_psbt(
            &secp,
            &checks(&w, &ours),
            &ours.serialize(),
            &bad.serialize(),
        )
        .expect_err("corrupted");
        assert!(
            err.contains("input 2") && err.contains("does not verify"),
            "{err}"
        );
        let mut none = theirs.clone();
        none.inputs[0].partial_sigs.clear();
        let err = merge_psbt(
            &secp,
            &checks(&w, &ours),
            &ours.serialize(),
            &none.serialize(),
        )
        .expect_err("missing");
        assert!(err.contains("no signature for input 0"), "{err}");
    }
}
