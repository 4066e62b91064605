//! The cosigner's key: a 32-byte seed in a file only its owner can read, the BIP-32 master
//! derived from it, the BIP-48 P2WSH account (`m/48'/coin'/0'/2'`), and one key per wallet.
//!
//! **One key per wallet.** Each wallet's satellite key is the account's unhardened child at
//! an index the bridge picks at random when a user asks for a key ([`AccountKey::wallet_key`]),
//! re-serialized as a root (depth 0, no parent fingerprint, child number 0) so that the xpub
//! a customer sees says nothing of the account or the index. Unhardened, so the ground
//! hands a key out at once from the account xpub, with no pass; the account xpub is the
//! bridge's secret and is never published, so no customer can derive or recognize another
//! customer's key (BIP-32 children of an xpub are unlinkable without its chain code). The
//! satellite's secret state stays its seed: a wallet's private key is re-derived from the
//! index it was registered with. The known cost of unhardened children (one child private
//! key and the parent xpub give the parent private key) does not apply: private keys never
//! leave the satellite.
//!
//! The seed never leaves this module except to derive child keys for signing; `Debug` on
//! every type here is redacted so a key cannot reach a log by accident.

use std::path::Path;
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{base58, NetworkKind};

/// SLIP-132 version bytes of Electrum's P2WSH multisig xpubs.
const ZPUB: [u8; 4] = [0x02, 0xaa, 0x7e, 0xd3];
const VPUB: [u8; 4] = [0x02, 0x57, 0x54, 0x83];

/// Why a key could not be created or loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `init` refuses to replace an existing key.
    #[error("key file {0} already exists; refusing to overwrite it")]
    Exists(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The key file's contents are not a 64-hex-character seed.
    #[error("key file {0} does not hold a 32-byte hex seed")]
    Malformed(String),
    /// The key file can be read by others than its owner.
    #[error("key file {path} has mode {mode:o}; it must be readable by its owner only (0600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The OS's random generator failed.
    #[error("the OS random generator failed: {0}")]
    Random(String),
    /// BIP-32 derivation failed (practically unreachable).
    #[error("key derivation failed: {0}")]
    Derivation(String),
}

/// The BIP-48 account path for P2WSH multisig on a network kind.
pub fn account_path(network: NetworkKind) -> DerivationPath {
    let coin = match network {
        NetworkKind::Main => 0,
        NetworkKind::Test => 1,
    };
    DerivationPath::from(vec![
        ChildNumber::Hardened { index: 48 },
        ChildNumber::Hardened { index: coin },
        ChildNumber::Hardened { index: 0 },
        ChildNumber::Hardened { index: 2 },
    ])
}

/// The public half of the satellite's account key, with its origin: all the ground needs
/// to check descriptors and PSBTs against the satellite (the bridge holds only this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    /// The account xpub (`tpub`/`xpub` form).
    pub xpub: Xpub,
    /// The master key's fingerprint.
    pub master_fingerprint: Fingerprint,
    /// The account's derivation path from the master.
    pub path: DerivationPath,
}

/// Largest index of a wallet key (BIP-32's unhardened range).
pub const MAX_WALLET_INDEX: u32 = (1 << 31) - 1;

/// An xpub with its key and chain code only: depth 0, no parent, child number 0.
fn as_root(xpub: &Xpub) -> Xpub {
    Xpub {
        network: xpub.network,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: xpub.public_key,
        chain_code: xpub.chain_code,
    }
}

impl AccountKey {
    /// The descriptor form: `[fingerprint/48h/1h/0h/2h]tpub...` (`[fingerprint]tpub...` for
    /// a wallet key, which is its own root).
    pub fn descriptor_key(&self) -> String {
        let path = self.path.to_string().replace('\'', "h");
        let path = path.trim_start_matches('m').trim_start_matches('/');
        if path.is_empty() {
            format!("[{}]{}", self.master_fingerprint, self.xpub)
        } else {
            format!("[{}/{}]{}", self.master_fingerprint, path, self.xpub)
        }
    }

    /// The public key of the wallet key at `index` (see the module doc): what the ground
    /// hands a user, derived with no private key.
    pub fn wallet_key(&self, index: u32) -> Result<AccountKey, KeyError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|_| {
            KeyError::Derivation(format!("wallet key index {index} is out of range"))
        })?;
        let xpub = self
            .xpub
            .ckd_pub(&Secp256k1::verification_only(), child)
            .map_err(|e| KeyError::Derivation(e.to_string()))?;
        Ok(AccountKey::root(as_root(&xpub)))
    }

    /// A key that is its own origin (`[own fingerprint]xpub`).
    fn root(xpub: Xpub) -> AccountKey {
        AccountKey {
            master_fingerprint: xpub.fingerprint(),
            path: DerivationPath::master(),
            xpub,
        }
    }

    /// Electrum's SLIP-132 form of the account xpub: `Vpub...` on test networks, `Zpub...` on mainnet.
    pub fn electrum_xpub(&self) -> String {
        slip132(&self.xpub)
    }
}

impl AsRef<AccountKey> for AccountKey {
    fn as_ref(&self) -> &AccountKey {
        self
    }
}

impl std::str::FromStr for AccountKey {
    type Err = KeyError;

    /// Parses `[fingerprint/path]xpub` (the xpub in either form).
    fn from_str(s: &str) -> Result<AccountKey, KeyError> {
        let bad = |reason: &str| KeyError::Derivation(format!("account key {s:?}: {reason}"));
        let rest = s
            .trim()
            .strip_prefix('[')
            .ok_or_else(|| bad("expected [fingerprint/path]xpub"))?;
        let (origin, xpub) = rest
            .split_once(']')
            .ok_or_else(|| bad("missing ] after the key origin"))?;
        let (fp, path) = origin.split_once('/').unwrap_or((origin, ""));
        let master_fingerprint =
            Fingerprint::from_str(fp).map_err(|e| bad(&format!("fingerprint: {e}")))?;
        let path = if path.is_empty() {
            DerivationPath::master()
        } else {
            DerivationPath::from_str(&format!("m/{}", path.replace('h', "'")))
                .map_err(|e| bad(&format!("path: {e}")))?
        };
        let xpub = parse_any_xpub(xpub).ok_or_else(|| bad("not an xpub"))?;
        Ok(AccountKey {
            xpub,
            master_fingerprint,
            path,
        })
    }
}

/// The cosigner's signing key for one network kind.
pub struct CosignerKey {
    public: AccountKey,
    /// The account's receive and change branch keys (`account/0`, `account/1`) with their
    /// public keys: a child key for signing then costs one HMAC and a scalar addition
    /// (BIP-32's normal derivation), not two elliptic-curve multiplications per input.
    branches: [(Xpriv, bitcoin::secp256k1::PublicKey); 2],
    /// The account's private key, to derive wallet keys from.
    account: Xpriv,
}

impl AsRef<AccountKey> for CosignerKey {
    fn as_ref(&self) -> &AccountKey {
        &self.public
    }
}

impl std::fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignerKey")
            .field("master_fingerprint", &self.public.master_fingerprint)
            .field("account_xpub", &self.public.xpub.to_string())
            .finish_non_exhaustive()
    }
}

impl CosignerKey {
    /// Derives the account key from a seed (BIP-32 master from seed bytes, as Electrum's
    /// `from_bip43_rootseed` does).
    pub fn from_seed(seed: &[u8; 32], network: NetworkKind) -> Result<CosignerKey, KeyError> {
        let secp = Secp256k1::new();
        let master =
            Xpriv::new_master(network, seed).map_err(|e| KeyError::Derivation(e.to_string()))?;
        let path = account_path(network);
        let account = master
            .derive_priv(&secp, &path)
            .map_err(|e| KeyError::Derivation(e.to_string()))?;
        CosignerKey::from_account(
            account,
            AccountKey {
                xpub: Xpub::from_priv(&secp, &account),
                master_fingerprint: master.fingerprint(&secp),
                path,
            },
        )
    }

    /// The private key of the wallet key at `index` (see the module doc), for signing for
    /// the wallet registered with it. Its public half equals [`AccountKey::wallet_key`]'s.
    pub fn wallet_key(&self, index: u32) -> Result<CosignerKey, KeyError> {
        let secp = Secp256k1::new();
        let child = ChildNumber::from_normal_idx(index).map_err(|_| {
            KeyError::Derivation(format!("wallet key index {index} is out of range"))
        })?;
        let derived = self
            .account
            .derive_priv(&secp, &[child])
            .map_err(|e| KeyError::Derivation(e.to_string()))?;
        let public = AccountKey::root(as_root(&Xpub::from_priv(&secp, &derived)));
        let account = Xpriv {
            network: derived.network,
            depth: 0,
            parent_fingerprint: Fingerprint::default(),
            child_number: ChildNumber::Normal { index: 0 },
            private_key: derived.private_key,
            chain_code: derived.chain_code,
        };
        CosignerKey::from_account(account, public)
    }

    fn from_account(account: Xpriv, public: AccountKey) -> Result<CosignerKey, KeyError> {
        let secp = Secp256k1::new();
        let branch = |b: u32| -> Result<(Xpriv, bitcoin::secp256k1::PublicKey), KeyError> {
            let x = account
                .derive_priv(&secp, &[ChildNumber::Normal { index: b }])
                .map_err(|e| KeyError::Derivation(e.to_string()))?;
            Ok((
                x,
                bitcoin::secp256k1::PublicKey::from_secret_key(&secp, &x.private_key),
            ))
        };
        Ok(CosignerKey {
            public,
            branches: [branch(0)?, branch(1)?],
            account,
        })
    }

    /// The account xpub (`tpub`/`xpub` form).
    pub fn account_xpub(&self) -> &Xpub {
        &self.public.xpub
    }

    /// The master key's fingerprint.
    pub fn master_fingerprint(&self) -> Fingerprint {
        self.public.master_fingerprint
    }

    /// The account's derivation path from the master.
    pub fn account_path(&self) -> &DerivationPath {
        &self.public.path
    }

    /// The descriptor form: `[fingerprint/48h/1h/0h/2h]tpub...`.
    pub fn descriptor_key(&self) -> String {
        self.public.descriptor_key()
    }

    /// Electrum's SLIP-132 form of the account xpub: `Vpub...` on test networks, `Zpub...` on mainnet.
    pub fn electrum_xpub(&self) -> String {
        self.public.electrum_xpub()
    }

    /// The public half, with its origin.
    pub fn public(&self) -> &AccountKey {
        &self.public
    }

    /// The private key at `account/branch/index`, for signing inside the decision only.
    pub(crate) fn child_private(
        &self,
        branch: u32,
        index: u32,
    ) -> Result<bitcoin::secp256k1::SecretKey, KeyError> {
        use bitcoin::hashes::{hmac, sha512, Hash as _, HashEngine as _};
        let bad = |e: &dyn std::fmt::Display| KeyError::Derivation(e.to_string());
        let (parent, parent_pub) = usize::try_from(branch)
            .ok()
            .and_then(|b| self.branches.get(b))
            .ok_or_else(|| bad(&format!("no branch {branch}")))?;
        let child = ChildNumber::from_normal_idx(index).map_err(|e| bad(&e))?;
        // BIP-32 CKDpriv for a normal child: I = HMAC-SHA512(chain code, parent pubkey || i),
        // child = parent + I_L (mod n).
        let mut engine = hmac::HmacEngine::<sha512::Hash>::new(&parent.chain_code[..]);
        engine.input(&parent_pub.serialize());
        engine.input(&u32::from(child).to_be_bytes());
        let i = hmac::Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
        let mut left = [0u8; 32];
        left.copy_from_slice(&i[..32]);
        let tweak = bitcoin::secp256k1::Scalar::from_be_bytes(left).map_err(|e| bad(&e))?;
        parent.private_key.add_tweak(&tweak).map_err(|e| bad(&e))
    }
}

/// Encodes an xpub with Electrum's P2WSH-multisig SLIP-132 version bytes.
pub fn slip132(xpub: &Xpub) -> String {
    let mut raw = xpub.encode();
    raw[..4].copy_from_slice(match xpub.network {
        NetworkKind::Main => &ZPUB,
        NetworkKind::Test => &VPUB,
    });
    base58::encode_check(&raw)
}

/// Parses an xpub in either form (`xpub`/`tpub`, or Electrum's `Zpub`/`Vpub`).
pub fn parse_any_xpub(s: &str) -> Option<Xpub> {
    if let Ok(x) = Xpub::from_str(s) {
        return Some(x);
    }
    let mut raw = base58::decode_check(s).ok()?;
    if raw.len() != 78 {
        return None;
    }
    let version: [u8; 4] = match &raw[..4] {
        v if v == ZPUB => [0x04, 0x88, 0xb2, 0x1e],
        v if v == VPUB => [0x04, 0x35, 0x87, 0xcf],
        _ => return None,
    };
    raw[..4].copy_from_slice(&version);
    Xpub::decode(&raw).ok()
}

/// Creates a new key file with a seed from the OS's CSPRNG, readable by its owner only.
/// Refuses to overwrite an existing file.
pub fn create_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let mut seed = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    satcosign_link::crypto::write_secret_file(path, &format!("{}\n", hex::encode(seed))).map_err(
        |source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.display().to_string())
            } else {
                KeyError::Io {
                    path: path.display().to_string(),
                    source,
                }
            }
        },
    )?;
    Ok(seed)
}

/// Reads a key file, refusing one that others can read.
pub fn load_key_file(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| KeyError::Malformed(path.display().to_string()))?;
    Ok(seed)
}

use rand_core::RngCore as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slip132_round_trips_and_matches_electrum() {
        // Electrum 4.3.4's Vpub for seed sha256("satellite-C") (see tests/fixtures).
        let seed: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(b"satellite-C"),
        )
        .into();
        let key = CosignerKey::from_seed(&seed, NetworkKind::Test).expect("derive");
        assert_eq!(
            key.electrum_xpub(),
            "Vpub5mh7jnyvCBwUxSu7epSHxsnp4uU6cRYAF9iBHN1x2jdScvqXKNvvYJpkwpXsTCjrySMeqtPzLU9xsP3LYsh85V3TEhBTY3okBoF5XhRdQGy"
        );
        assert_eq!(
            parse_any_xpub(&key.electrum_xpub()),
            Some(*key.account_xpub())
        );
        assert!(key.descriptor_key().contains("/48h/1h/0h/2h]tpub"));
        assert!(
            !format!("{key:?}").contains("prv"),
            "Debug never shows a private key"
        );
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cosigner.key");
        let seed = create_key_file(&path).expect("create");
        assert_eq!(load_key_file(&path).expect("load"), seed);
        assert!(matches!(create_key_file(&path), Err(KeyError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                load_key_file(&path),
                Err(KeyError::Permissions { .. })
            ));
        }
    }
}

#[cfg(test)]
mod child_tests {
    use super::*;

    #[test]
    fn wallet_keys_are_roots_the_ground_derives_without_a_secret() {
        let issuer = CosignerKey::from_seed(&[9u8; 32], NetworkKind::Test).expect("key");
        let mut seen = std::collections::HashSet::new();
        for index in [0, 1, 2, 77, MAX_WALLET_INDEX] {
            let private = issuer.wallet_key(index).expect("private");
            let public = issuer.public().wallet_key(index).expect("public");
            assert_eq!(private.public(), &public, "both halves agree at {index}");
            assert_eq!(public.xpub.depth, 0);
            assert_eq!(public.xpub.parent_fingerprint, Fingerprint::default());
            assert_eq!(public.master_fingerprint, public.xpub.fingerprint());
            assert!(seen.insert(public.xpub), "distinct keys");
            let text = public.descriptor_key();
            assert_eq!(
                text,
                format!("[{}]{}", public.xpub.fingerprint(), public.xpub)
            );
            assert_eq!(text.parse::<AccountKey>().expect("parses"), public);
            // Signing keys are the wallet key's own children.
            let secp = Secp256k1::new();
            let child = private.child_private(1, 5).expect("child");
            let pk = public
                .xpub
                .derive_pub(
                    &secp,
                    &[
                        ChildNumber::Normal { index: 1 },
                        ChildNumber::Normal { index: 5 },
                    ],
                )
                .expect("derive")
                .public_key;
            assert_eq!(
                bitcoin::secp256k1::PublicKey::from_secret_key(&secp, &child),
                pk
            );
        }
        assert!(issuer.wallet_key(MAX_WALLET_INDEX + 1).is_err());
        assert!(!format!("{:?}", issuer.wallet_key(3).expect("k")).contains("prv"));
    }

    #[test]
    fn child_keys_are_bip32s() {
        let key = CosignerKey::from_seed(&[7u8; 32], NetworkKind::Test).expect("key");
        let secp = Secp256k1::new();
        let account = Xpriv::new_master(NetworkKind::Test, &[7u8; 32])
            .expect("master")
            .derive_priv(&secp, &account_path(NetworkKind::Test))
            .expect("account");
        for branch in 0..2 {
            for index in (0..30).chain([1000, (1 << 31) - 1]) {
                let expected = account
                    .derive_priv(
                        &secp,
                        &[
                            ChildNumber::Normal { index: branch },
                            ChildNumber::Normal { index },
                        ],
                    )
                    .expect("derive")
                    .private_key;
                assert_eq!(
                    key.child_private(branch, index).expect("child"),
                    expected,
                    "{branch}/{index}"
                );
            }
        }
        assert!(key.child_private(2, 0).is_err(), "no third branch");
        assert!(key.child_private(0, 1 << 31).is_err(), "no hardened child");
    }
}
