//! Wallet registration: which multisig wallets this cosigner belongs to.
//!
//! A wallet is a `wsh(sortedmulti(k, ...))` or `wsh(multi(k, ...))` descriptor over BIP-32
//! xpubs with receive and change branches, given either as one multipath descriptor
//! (`.../<0;1>/*`) or as the pair of `/0/*` and `/1/*` descriptors. It must contain this
//! cosigner's account key exactly once, need at least two signatures (so the satellite can
//! never spend alone), and be on this cosigner's network. Both forms normalize to the same
//! multipath text, whose hash is the wallet's id.
//!
//! Scripts are derived the way the wallet's own software derives them, but with each
//! cosigner's receive and change branch keys computed once per wallet and the scripts of
//! recently used indexes kept (bounded), so a request of many inputs costs one derivation per
//! key and new index, not two per key and input (a test checks every script against
//! miniscript's own derivation of the descriptor).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, KeySource, Xpub};
use bitcoin::opcodes::all::OP_CHECKMULTISIG;
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::{PublicKey, ScriptBuf};
use miniscript::descriptor::{DescriptorPublicKey, Wildcard, WshInner};
use miniscript::{Descriptor, ForEachKey, Terminal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::AccountKey;

/// A wallet's id: the first 16 bytes of sha256 of its normalized multipath descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WalletId(pub [u8; 16]);

impl std::fmt::Display for WalletId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for WalletId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id)?;
        Ok(WalletId(id))
    }
}

/// Why a descriptor cannot be registered. Each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// Neither one multipath descriptor nor a receive/change pair was given.
    #[error("give one multipath descriptor (<0;1>/*) or two (/0/* and /1/*); got {0}")]
    WrongCount(usize),
    /// The descriptor does not parse.
    #[error("descriptor does not parse: {0}")]
    Parse(String),
    /// Not a P2WSH multisig.
    #[error("only wsh(sortedmulti(...)) and wsh(multi(...)) wallets are supported")]
    NotWshMulti,
    /// Fewer than two signatures would spend.
    #[error("threshold {k} of {n}: at least 2 signatures must be required")]
    ThresholdTooLow {
        /// Signatures required.
        k: usize,
        /// Keys.
        n: usize,
    },
    /// A key is not an xpub with a receive/change wildcard derivation.
    #[error("key {index}: {reason}")]
    BadKey {
        /// Position of the key in the descriptor.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// This cosigner's key is not in the descriptor.
    #[error("the satellite's key {xpub} is not in the descriptor")]
    OurKeyMissing {
        /// The satellite's account xpub.
        xpub: String,
    },
    /// This cosigner's key appears more than once.
    #[error("the satellite's key appears {count} times; it must appear exactly once")]
    OurKeyRepeated {
        /// How many times.
        count: usize,
    },
    /// The same key appears twice.
    #[error("key {index} repeats an earlier key")]
    DuplicateKey {
        /// Position of the repeated key.
        index: usize,
    },
    /// The two descriptors of a pair are not the receive and change branches of one wallet.
    #[error("the two descriptors are not the /0/* and /1/* branches of one wallet")]
    NotAPair,
}

/// A key's place in one derived script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// The witness script at this branch and index.
    pub witness_script: ScriptBuf,
    /// Its P2WSH output script.
    pub script_pubkey: ScriptBuf,
    /// This cosigner's public key at this branch and index.
    pub our_pubkey: PublicKey,
    /// Every key of the script.
    pub pubkeys: Vec<PublicKey>,
}

/// A registered wallet.
#[derive(Debug, Clone)]
pub struct Wallet {
    /// Its id.
    pub id: WalletId,
    /// The normalized multipath descriptor (no checksum).
    pub descriptor: String,
    /// Signatures required.
    pub threshold: usize,
    /// Account xpubs of every cosigner, in descriptor order.
    pub xpubs: Vec<Xpub>,
    receive: Descriptor<DescriptorPublicKey>,
    change: Descriptor<DescriptorPublicKey>,
    our_xpub: Xpub,
    our_fingerprint: Fingerprint,
    our_own_fingerprint: Fingerprint,
    our_account_path: DerivationPath,
    /// Whether the script sorts its keys (`sortedmulti`) or keeps their order (`multi`).
    sorted: bool,
    /// Each cosigner's key at the receive (0) and change (1) branch, in descriptor order,
    /// derived once.
    branch_keys: [Vec<Xpub>; 2],
    /// Where this cosigner's key stands among `xpubs`.
    our_position: usize,
    /// Scripts already derived, by (branch, index).
    derived: Arc<Mutex<HashMap<(u32, u32), Derived>>>,
}

/// Scripts kept per wallet (about 300 bytes each): a large request's inputs, and the
/// addresses a wallet keeps using, without the cosigner's memory growing with its history.
const DERIVED_KEPT: usize = 512;

fn strip_checksum(s: &str) -> &str {
    s.split('#').next().unwrap_or(s)
}

fn parse(s: &str) -> Result<Descriptor<DescriptorPublicKey>, RegistrationError> {
    Descriptor::<DescriptorPublicKey>::from_str(s.trim())
        .map_err(|e| RegistrationError::Parse(e.to_string()))
}

/// The threshold and keys of a wsh multisig descriptor.
fn multisig_parts(
    desc: &Descriptor<DescriptorPublicKey>,
) -> Result<(usize, Vec<DescriptorPublicKey>), RegistrationError> {
    let Descriptor::Wsh(wsh) = desc else {
        return Err(RegistrationError::NotWshMulti);
    };
    match wsh.as_inner() {
        WshInner::SortedMulti(smv) => Ok((smv.k(), smv.pks().to_vec())),
        WshInner::Ms(ms) => match &ms.node {
            Terminal::Multi(thresh) => Ok((thresh.k(), thresh.data().to_vec())),
            _ => Err(RegistrationError::NotWshMulti),
        },
    }
}

impl Wallet {
    /// Checks and normalizes a wallet for registration with the cosigner holding `key`.
    pub fn from_descriptors(
        descriptors: &[String],
        key: &impl AsRef<AccountKey>,
    ) -> Result<Wallet, RegistrationError> {
        let key = key.as_ref();
        let multipath_text = match descriptors {
            [one] => strip_checksum(one).trim().to_owned(),
            [receive, change] => {
                let r = strip_checksum(receive).trim();
                let c = strip_checksum(change).trim();
                let as_multipath = r.replace("/0/*", "/<0;1>/*");
                if as_multipath == r || c.replace("/1/*", "/<0;1>/*") != as_multipath {
                    return Err(RegistrationError::NotAPair);
                }
                as_multipath
            }
            other => return Err(RegistrationError::WrongCount(other.len())),
        };
        let desc = parse(&multipath_text)?;
        let (k, pks) = multisig_parts(&desc)?;
        if k < 2 {
            return Err(RegistrationError::ThresholdTooLow { k, n: pks.len() });
        }
        let ours = &key.xpub;
        let network = ours.network;
        let mut xpubs = Vec::with_capacity(pks.len());
        let mut ours_count = 0;
        for (index, pk) in pks.iter().enumerate() {
            let bad = |reason: &str| RegistrationError::BadKey {
                index,
                reason: reason.into(),
            };
            let DescriptorPublicKey::MultiXPub(x) = pk else {
                return Err(bad(
                    "must be an xpub with /<0;1>/* (receive and change) derivation",
                ));
            };
            let paths = x.derivation_paths.paths();
            let receive_change = paths.len() == 2
                && paths[0].as_ref() == [ChildNumber::Normal { index: 0 }]
                && paths[1].as_ref() == [ChildNumber::Normal { index: 1 }];
            if !receive_change || x.wildcard != Wildcard::Unhardened {
                return Err(bad(
                    "derivation must be /<0;1>/* (or the /0/* and /1/* pair)",
                ));
            }
            if x.xkey.network != network {
                return Err(bad(&format!(
                    "{} is for {:?}, the satellite is on {:?}",
                    x.xkey, x.xkey.network, network
                )));
            }
            if xpubs.contains(&x.xkey) {
                if x.xkey == *ours {
                    ours_count += 1;
                    continue;
                }
                return Err(RegistrationError::DuplicateKey { index });
            }
            if x.xkey == *ours {
                ours_count += 1;
                if let Some((fp, path)) = &x.origin {
                    if *fp != key.master_fingerprint || path != &key.path {
                        return Err(bad(&format!(
                            "the satellite's key has origin [{fp}/{path}], expected [{}/{}]",
                            key.master_fingerprint, &key.path
                        )));
                    }
                }
            }
            xpubs.push(x.xkey);
        }
        match ours_count {
            0 => {
                return Err(RegistrationError::OurKeyMissing {
                    xpub: ours.to_string(),
                })
            }
            1 => {}
            count => return Err(RegistrationError::OurKeyRepeated { count }),
        }
        let mut branches = desc
            .clone()
            .into_single_descriptors()
            .map_err(|e| RegistrationError::Parse(e.to_string()))?
            .into_iter();
        let (Some(receive), Some(change), None) =
            (branches.next(), branches.next(), branches.next())
        else {
            return Err(RegistrationError::NotAPair);
        };
        let canonical = strip_checksum(&desc.to_string()).to_owned();
        // The id depends only on what decides the scripts (kind, threshold, xpubs; their
        // order only for `multi`), never on key-origin text: the same wallet written with
        // or without origins must not register twice and so get two sets of limits.
        let sorted =
            matches!(&desc, Descriptor::Wsh(w) if matches!(w.as_inner(), WshInner::SortedMulti(_)));
        let mut id_keys: Vec<String> = xpubs.iter().map(ToString::to_string).collect();
        if sorted {
            id_keys.sort();
        }
        let id_text = format!(
            "wsh({}({k},{}))",
            if sorted { "sortedmulti" } else { "multi" },
            id_keys.join(",")
        );
        let digest = Sha256::digest(id_text.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let secp = Secp256k1::verification_only();
        let branch = |b: u32| -> Result<Vec<Xpub>, RegistrationError> {
            xpubs
                .iter()
                .map(|x| {
                    x.ckd_pub(&secp, ChildNumber::Normal { index: b })
                        .map_err(|e| RegistrationError::Parse(e.to_string()))
                })
                .collect()
        };
        let branch_keys = [branch(0)?, branch(1)?];
        let our_position = xpubs.iter().position(|x| x == ours).ok_or_else(|| {
            RegistrationError::OurKeyMissing {
                xpub: ours.to_string(),
            }
        })?;
        Ok(Wallet {
            id: WalletId(id),
            descriptor: canonical,
            threshold: k,
            xpubs,
            receive,
            change,
            our_xpub: *ours,
            our_fingerprint: key.master_fingerprint,
            our_own_fingerprint: ours.fingerprint(),
            our_account_path: key.path.clone(),
            sorted,
            branch_keys,
            our_position,
            derived: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The satellite's key in this wallet.
    pub fn our_xpub(&self) -> &Xpub {
        &self.our_xpub
    }

    /// The fingerprint Electrum writes for the satellite's bare xpub (its own).
    pub fn our_own_fingerprint(&self) -> Fingerprint {
        self.our_own_fingerprint
    }

    /// The script at `branch` (0 receive, 1 change) and `index`.
    pub fn derive<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: u32,
        index: u32,
    ) -> Option<Derived> {
        let keys = self.branch_keys.get(usize::try_from(branch).ok()?)?;
        let cache = || self.derived.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = cache().get(&(branch, index)) {
            return Some(d.clone());
        }
        let child = ChildNumber::from_normal_idx(index).ok()?;
        let pubkeys: Vec<PublicKey> = keys
            .iter()
            .map(|x| x.ckd_pub(secp, child).map(|c| PublicKey::new(c.public_key)))
            .collect::<Result<_, _>>()
            .ok()?;
        // `sortedmulti` orders the keys by their serialization (BIP 67); `multi` keeps them.
        let mut in_script = pubkeys.clone();
        if self.sorted {
            in_script.sort_by_key(|k| k.inner.serialize());
        }
        let mut b = Builder::new().push_int(i64::try_from(self.threshold).ok()?);
        for k in &in_script {
            b = b.push_key(k);
        }
        let witness_script = b
            .push_int(i64::try_from(in_script.len()).ok()?)
            .push_opcode(OP_CHECKMULTISIG)
            .into_script();
        let derived = Derived {
            script_pubkey: ScriptBuf::new_p2wsh(&witness_script.wscript_hash()),
            witness_script,
            our_pubkey: *pubkeys.get(self.our_position)?,
            pubkeys,
        };
        let mut kept = cache();
        if kept.len() >= DERIVED_KEPT {
            kept.clear();
        }
        kept.insert((branch, index), derived.clone());
        Some(derived)
    }

    /// The script at `branch` and `index` as miniscript derives the registered descriptor:
    /// what [`Self::derive`] must always agree with.
    pub fn derive_by_descriptor<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: u32,
        index: u32,
    ) -> Option<Derived> {
        let desc = match branch {
            0 => &self.receive,
            1 => &self.change,
            _ => return None,
        };
        let derived = desc.derived_descriptor(secp, index).ok()?;
        let witness_script = derived.explicit_script().ok()?;
        let script_pubkey = derived.script_pubkey();
        let mut pubkeys = Vec::with_capacity(self.xpubs.len());
        derived.for_each_key(|pk| {
            pubkeys.push(*pk);
            true
        });
        let our_pubkey = PublicKey::new(
            self.our_xpub
                .derive_pub(
                    secp,
                    &[
                        ChildNumber::from_normal_idx(branch).ok()?,
                        ChildNumber::from_normal_idx(index).ok()?,
                    ],
                )
                .ok()?
                .public_key,
        );
        Some(Derived {
            witness_script,
            script_pubkey,
            our_pubkey,
            pubkeys,
        })
    }

    /// Finds this cosigner's (branch, index) in a PSBT key map, accepting both forms Electrum
    /// and other wallets write: the full origin `[master fp/48'/c'/0'/2'/b/i]`, and the bare
    /// xpub form `[xpub's own fp]/b/i` Electrum uses for keys it knows only by xpub.
    pub fn locate_ours(
        &self,
        derivations: &BTreeMap<bitcoin::secp256k1::PublicKey, KeySource>,
    ) -> Option<(bitcoin::secp256k1::PublicKey, u32, u32)> {
        for (pk, (fp, path)) in derivations {
            let steps: &[ChildNumber] = path.as_ref();
            let tail = if *fp == self.our_fingerprint
                && steps.len() == self.our_account_path.len() + 2
                && steps.starts_with(self.our_account_path.as_ref())
            {
                &steps[steps.len() - 2..]
            } else if *fp == self.our_own_fingerprint && steps.len() == 2 {
                steps
            } else {
                continue;
            };
            if let [ChildNumber::Normal { index: branch }, ChildNumber::Normal { index }] = tail {
                if *branch <= 1 {
                    return Some((*pk, *branch, *index));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{key, TestWallet};

    /// Every script, key list and our key, cached or not, is what miniscript derives from the
    /// registered descriptor, for `sortedmulti` and for `multi` (whose key order matters).
    #[test]
    fn derived_scripts_are_the_descriptors_own() {
        let tw = TestWallet::new();
        let keys: Vec<String> = ["user", "backup"]
            .iter()
            .map(|t| key(t).descriptor_key())
            .chain([tw.satellite.descriptor_key()])
            .collect();
        let multi = format!(
            "wsh(multi(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))",
            keys[2], keys[0], keys[1]
        );
        let multi = Wallet::from_descriptors(&[multi], &tw.satellite).expect("registers");
        let secp = Secp256k1::new();
        for wallet in [&tw.wallet, &multi] {
            for branch in 0..2 {
                for index in (0..40).chain([1000, (1 << 31) - 1]) {
                    let expected = wallet
                        .derive_by_descriptor(&secp, branch, index)
                        .expect("descriptor derives");
                    for _ in 0..2 {
                        assert_eq!(
                            wallet.derive(&secp, branch, index),
                            Some(expected.clone()),
                            "{} branch {branch} index {index}",
                            wallet.descriptor
                        );
                    }
                }
            }
            assert_eq!(wallet.derive(&secp, 2, 0), None, "no third branch");
            assert_eq!(wallet.derive(&secp, 0, 1 << 31), None, "no hardened index");
        }
        // The cache is bounded: a wallet used at many addresses keeps at most DERIVED_KEPT.
        for index in 0..(DERIVED_KEPT as u32 + 10) {
            tw.wallet.derive(&secp, 0, index).expect("derives");
        }
        assert!(tw.wallet.derived.lock().expect("lock").len() <= DERIVED_KEPT);
    }
}
