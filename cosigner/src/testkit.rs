//! Deterministic test wallets and PSBTs shaped as stock Electrum makes them (the satellite's
//! and the backup's derivations in Electrum's bare-xpub form, the user's with its full key
//! origin). The keys derive from public tags: they are for tests and benchmarks only and
//! must never hold real funds. Compiled only for tests or with the `testkit` feature.

use std::collections::BTreeMap;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::ecdsa::Signature as EcdsaSignature;
use bitcoin::hashes::Hash as _;
use bitcoin::psbt::{Input, Output, Psbt};
use bitcoin::secp256k1::{All, Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, NetworkKind, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use sha2::{Digest, Sha256};

use crate::decision::{Approval, RequestId, SignRequest};
use crate::keys::{AccountKey, CosignerKey};
use crate::policy::Policy;
use crate::wallet::Wallet;

/// The seed tags of the fixtures (`tests/fixtures/generate.py` uses the same).
pub const USER_TAG: &str = "user-A";
/// The backup key's tag.
pub const BACKUP_TAG: &str = "backup-B";
/// The satellite's tag.
pub const SATELLITE_TAG: &str = "satellite-C";

/// The index of the test wallets' satellite key under the satellite's account.
pub const WALLET_KEY_INDEX: u32 = 1;

/// The satellite test key's wallet key at [`WALLET_KEY_INDEX`]: what the test wallets hold.
pub fn satellite_wallet_key() -> CosignerKey {
    key(SATELLITE_TAG)
        .wallet_key(WALLET_KEY_INDEX)
        .expect("test wallet key derives")
}

/// sha256(tag): the seeds of the test keys.
pub fn seed(tag: &str) -> [u8; 32] {
    Sha256::digest(tag.as_bytes()).into()
}

/// A test key for `tag` on test networks.
pub fn key(tag: &str) -> CosignerKey {
    CosignerKey::from_seed(&seed(tag), NetworkKind::Test).expect("test key derives")
}

/// A policy that lets any reasonable test spend through.
pub fn generous_policy() -> Policy {
    Policy::of_limits(10_000_000_000, 10_000_000_000, 86_400, 10_000_000, 10_000)
}

/// What a test spend looks like.
#[derive(Debug, Clone)]
pub struct SpendSpec {
    /// Coins spent: (branch, index, value in sat).
    pub inputs: Vec<(u32, u32, u64)>,
    /// Payments: (script_pubkey, value in sat).
    pub payments: Vec<(ScriptBuf, u64)>,
    /// Change back to the wallet: (index on the change branch, value in sat).
    pub change: Option<(u32, u64)>,
}

/// A 2-of-3 wallet of the user (A), backup (B) and satellite (C) test keys.
pub struct TestWallet {
    /// The user's hot key.
    pub user: CosignerKey,
    /// The backup key.
    pub backup: CosignerKey,
    /// The satellite's key for this wallet (public: the satellite alone holds its secret).
    pub satellite: AccountKey,
    /// The wallet as the satellite registers it.
    pub wallet: Wallet,
    /// Its descriptor.
    pub descriptor: String,
    secp: Secp256k1<All>,
}

impl Default for TestWallet {
    fn default() -> Self {
        TestWallet::new()
    }
}

/// A stranger's P2WPKH output script, for payments.
pub fn foreign_script(n: u8) -> ScriptBuf {
    let hash = bitcoin::WPubkeyHash::from_byte_array([n; 20]);
    ScriptBuf::new_p2wpkh(&hash)
}

/// A stranger's P2WPKH output script for any index, for spends with thousands of payments.
pub fn stranger_script(n: u32) -> ScriptBuf {
    let mut hash = [0xa5u8; 20];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array(hash))
}

impl TestWallet {
    /// The 2-of-3 sortedmulti wallet with every key origin written out.
    pub fn new() -> TestWallet {
        TestWallet::with_satellite(satellite_wallet_key().public().clone())
    }

    /// The same wallet with another satellite wallet key (a demo against a real daemon's key).
    pub fn with_satellite(satellite: AccountKey) -> TestWallet {
        TestWallet::of(key(USER_TAG), key(BACKUP_TAG), satellite)
    }

    /// A wallet of other members: the user's and backup keys made from `user_tag` and
    /// `backup_tag`, for tests that need several customers.
    pub fn with_members(user_tag: &str, backup_tag: &str, satellite: AccountKey) -> TestWallet {
        TestWallet::of(key(user_tag), key(backup_tag), satellite)
    }

    fn of(user: CosignerKey, backup: CosignerKey, satellite: AccountKey) -> TestWallet {
        let descriptor = format!(
            "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))",
            user.descriptor_key(),
            backup.descriptor_key(),
            satellite.descriptor_key()
        );
        let wallet = Wallet::from_descriptors(std::slice::from_ref(&descriptor), &satellite)
            .expect("the test descriptor registers");
        TestWallet {
            user,
            backup,
            satellite,
            wallet,
            descriptor,
            secp: Secp256k1::new(),
        }
    }

    /// The wallet's output script at (branch, index).
    pub fn script(&self, branch: u32, index: u32) -> ScriptBuf {
        self.wallet
            .derive(&self.secp, branch, index)
            .expect("derives")
            .script_pubkey
    }

    /// A made-up transaction paying `value` to the wallet at (branch, index).
    pub fn funding_tx(&self, branch: u32, index: u32, value: u64, salt: u64) -> Transaction {
        let mut seed_txid = [0u8; 32];
        seed_txid[..8].copy_from_slice(&salt.to_le_bytes());
        seed_txid[8..12].copy_from_slice(&branch.to_le_bytes());
        seed_txid[12..16].copy_from_slice(&index.to_le_bytes());
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array(seed_txid), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(value),
                script_pubkey: self.script(branch, index),
            }],
        }
    }

    fn key_map(
        &self,
        branch: u32,
        index: u32,
    ) -> BTreeMap<bitcoin::secp256k1::PublicKey, (bitcoin::bip32::Fingerprint, DerivationPath)>
    {
        let tail = [
            ChildNumber::from_normal_idx(branch).expect("normal"),
            ChildNumber::from_normal_idx(index).expect("normal"),
        ];
        let mut map = BTreeMap::new();
        // The user's key with its full origin, as Electrum writes its own keystore.
        let user_pk = self
            .user
            .account_xpub()
            .derive_pub(&self.secp, &tail)
            .expect("derive")
            .public_key;
        map.insert(
            user_pk,
            (
                self.user.master_fingerprint(),
                self.user.account_path().extend(tail),
            ),
        );
        // Backup and satellite as bare xpubs: (the xpub's own fingerprint, m/branch/index).
        for k in [self.backup.account_xpub(), &self.satellite.xpub] {
            let pk = k.derive_pub(&self.secp, &tail).expect("derive").public_key;
            map.insert(pk, (k.fingerprint(), DerivationPath::from(tail.to_vec())));
        }
        map
    }

    /// Builds the unsigned PSBT for `spec`, with every field Electrum fills.
    pub fn psbt(&self, spec: &SpendSpec) -> Psbt {
        let mut inputs = Vec::new();
        let mut txins = Vec::new();
        for (n, &(branch, index, value)) in spec.inputs.iter().enumerate() {
            let prev = self.funding_tx(branch, index, value, n as u64);
            txins.push(TxIn {
                previous_output: OutPoint::new(prev.compute_txid(), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            });
            let derived = self
                .wallet
                .derive(&self.secp, branch, index)
                .expect("derive");
            inputs.push(Input {
                witness_utxo: Some(prev.output[0].clone()),
                non_witness_utxo: Some(prev),
                witness_script: Some(derived.witness_script),
                bip32_derivation: self.key_map(branch, index),
                ..Default::default()
            });
        }
        let mut txouts = Vec::new();
        let mut outputs = Vec::new();
        for (spk, value) in &spec.payments {
            txouts.push(TxOut {
                value: Amount::from_sat(*value),
                script_pubkey: spk.clone(),
            });
            outputs.push(Output::default());
        }
        if let Some((index, value)) = spec.change {
            let derived = self.wallet.derive(&self.secp, 1, index).expect("derive");
            txouts.push(TxOut {
                value: Amount::from_sat(value),
                script_pubkey: derived.script_pubkey,
            });
            outputs.push(Output {
                witness_script: Some(derived.witness_script),
                bip32_derivation: self.key_map(1, index),
                ..Default::default()
            });
        }
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: txins,
            output: txouts,
        };
        Psbt {
            unsigned_tx: tx,
            version: 0,
            xpub: Default::default(),
            proprietary: Default::default(),
            unknown: Default::default(),
            inputs,
            outputs,
        }
    }

    /// Marks output `output` of an unsigned `psbt` as the wallet's own at `branch` and
    /// `index` (its key paths and witness script), as Electrum writes an output to one of
    /// its own addresses. The claim is only metadata: the cosigner checks it.
    pub fn mark_own(&self, psbt: &mut Psbt, output: usize, branch: u32, index: u32) {
        let derived = self
            .wallet
            .derive(&self.secp, branch, index)
            .expect("derive");
        let out = &mut psbt.outputs[output];
        out.witness_script = Some(derived.witness_script);
        out.bip32_derivation = self.key_map(branch, index);
    }

    /// Signs every input with `who` (a key of this wallet), as Electrum's first signature.
    pub fn sign_with(&self, who: &CosignerKey, psbt: &mut Psbt) {
        let tx = psbt.unsigned_tx.clone();
        let mut cache = SighashCache::new(&tx);
        for i in 0..psbt.inputs.len() {
            let input = &psbt.inputs[i];
            let ws = input.witness_script.clone().expect("witness script");
            let value = input.witness_utxo.as_ref().expect("witness utxo").value;
            let (branch, index) = input
                .bip32_derivation
                .values()
                .find_map(|(_, path)| {
                    let p: &[ChildNumber] = path.as_ref();
                    match p[p.len() - 2..] {
                        [ChildNumber::Normal { index: b }, ChildNumber::Normal { index: i }] => {
                            Some((b, i))
                        }
                        _ => None,
                    }
                })
                .expect("derivation");
            let sk = who.child_private(branch, index).expect("child key");
            let sighash = cache
                .p2wsh_signature_hash(i, &ws, value, EcdsaSighashType::All)
                .expect("sighash");
            let msg = Message::from_digest(sighash.to_byte_array());
            let sig = self.secp.sign_ecdsa_low_r(&msg, &sk);
            let pk = bitcoin::PublicKey::new(sk.public_key(&self.secp));
            psbt.inputs[i].partial_sigs.insert(
                pk,
                EcdsaSignature {
                    signature: sig,
                    sighash_type: EcdsaSighashType::All,
                },
            );
        }
    }

    /// A signing request for `psbt` approved at `approved_at`.
    pub fn request(&self, psbt: &Psbt, id: u8, approved_at: u64) -> SignRequest {
        let request_id = RequestId([id; 16]);
        SignRequest {
            request_id,
            wallet_id: self.wallet.id,
            psbt: psbt.serialize(),
            approval: Approval {
                request_id,
                txid: psbt.unsigned_tx.compute_txid(),
                approved_at,
            },
            replaces: None,
        }
    }

    /// A typical spend: `n` inputs of 100,000 sat, one payment, change, signed by the user.
    pub fn typical_signed_psbt(&self, n: u32, salt: u32) -> Psbt {
        let total = u64::from(n) * 100_000;
        let fee = 500 + u64::from(n) * 200;
        let pay = total / 2;
        let spec = SpendSpec {
            inputs: (0..n).map(|i| (0, salt * 1000 + i, 100_000)).collect(),
            payments: vec![(foreign_script(7), pay)],
            change: Some((salt, total - pay - fee)),
        };
        let mut psbt = self.psbt(&spec);
        self.sign_with(&self.user, &mut psbt);
        psbt
    }

    /// A spend at Coldcard's tested capacity: `inputs` coins of 1,000,000 sat each,
    /// `outputs - 1` payments of 10,000 sat to distinct strangers and the change, at about
    /// 1 sat/vB, signed by the user.
    pub fn large_signed_psbt(&self, inputs: u32, outputs: u32, salt: u32) -> Psbt {
        let total = u64::from(inputs) * 1_000_000;
        let payments: Vec<(ScriptBuf, u64)> = (1..outputs)
            .map(|i| {
                (
                    stranger_script(salt.wrapping_mul(100_000).wrapping_add(i)),
                    10_000,
                )
            })
            .collect();
        // 2-of-3 P2WSH inputs weigh about 105 vB each once signed; P2WPKH outputs 31 vB.
        let fee = u64::from(inputs) * 105 + u64::from(outputs) * 43 + 100;
        let paid: u64 = payments.iter().map(|(_, v)| v).sum();
        let spec = SpendSpec {
            inputs: (0..inputs)
                .map(|i| (0, salt * 10_000 + i, 1_000_000))
                .collect(),
            payments,
            change: Some((salt, total - paid - fee)),
        };
        let mut psbt = self.psbt(&spec);
        self.sign_with(&self.user, &mut psbt);
        psbt
    }
}
