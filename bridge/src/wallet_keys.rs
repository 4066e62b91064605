//! Wallet keys: the satellite key each wallet gets, handed out before the wallet exists.
//!
//! Electrum asks for every cosigner's key while a wallet is being created, so a user asks
//! the bridge for a fresh satellite key first (`satellite.new_key`, the `/key` page, the
//! plugin). The bridge derives it at once, with no pass, from the satellite's issuer key at
//! a random unhardened index (see `satcosign_cosigner::keys`), and records the index under
//! the key's mailbox keyhash. Registration later finds the wallet's satellite key by that
//! keyhash, binds it to that one wallet, and tells the satellite the index, which re-checks
//! everything itself.
//!
//! What a stranger could learn is kept out of every answer: keys are roots (no parent
//! fingerprint, depth or index), the issuer key is never published, and a key id is the
//! key's own keyhash, which its holder can compute anyway.

use crate::store::tables::{ReadableTable, TableDefinition, WriteTransaction};
use bitcoin::bip32::Xpub;
use nostr::{Keys, SecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use satcosign_cosigner::keys::{slip132, AccountKey, MAX_WALLET_INDEX};
use satcosign_cosigner::wallet::WalletId;

use crate::mailbox::{keyhash_of, Keyhash};
use crate::state::{self, db_err, from_bytes};
use crate::store::StoreError;

/// Issued keys: keyhash -> [`IssuedKey`].
pub const ISSUED_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("issued_keys");
/// Issued indexes: index -> keyhash (an index is issued once).
pub const ISSUED_INDEXES: TableDefinition<u32, &[u8; 32]> = TableDefinition::new("issued_indexes");
/// The satellite's Nostr identities: x-only public key -> keyhash of the key it is for.
pub const SATELLITE_IDENTITIES: TableDefinition<&[u8; 32], &[u8; 32]> =
    TableDefinition::new("satellite_identities");
/// Recent issues (postcard `Vec<u64>` of unix seconds), by client key and [`ALL_CLIENTS`].
pub const ISSUES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("key_issues");
/// The [`ISSUES`] key counting every client.
pub const ALL_CLIENTS: [u8; 32] = [0; 32];

/// Why a key was not issued, or not accepted for a wallet. The reason codes
/// (`not_issued`, `issued_for_another_wallet`, `reused_key`) are the satellite's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletKeyError {
    /// Too many keys were asked for.
    #[error("too many {what}; try again after {retry_after}")]
    RateLimited {
        /// What was limited.
        what: &'static str,
        /// When to try again (UTC).
        retry_after: String,
    },
    /// The wallet holds no key this bridge issued (or one with the wrong chain code).
    #[error("not_issued: {0}")]
    NotIssued(String),
    /// The key serves another wallet.
    #[error("issued_for_another_wallet: this satellite key serves wallet {0}; ask for a new key")]
    IssuedForAnotherWallet(WalletId),
    /// A second satellite key, or the issuer key, among the wallet's keys.
    #[error("reused_key: {0}")]
    Reused(String),
}

/// One issued key, as the bridge keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// Its index under the issuer key.
    pub index: u32,
    /// When it was issued, unix seconds.
    pub issued_at: u64,
    /// The wallet it was registered for, once it was.
    pub wallet: Option<WalletId>,
}

/// Creates the tables.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), crate::store::tables::TableError> {
    txn.open_table(ISSUED_KEYS)?;
    txn.open_table(ISSUED_INDEXES)?;
    txn.open_table(SATELLITE_IDENTITIES)?;
    txn.open_table(ISSUES)?;
    Ok(())
}

/// Electrum's Nostr key for a keystore: `sha256("nostr_psbt:" + xpub string)`. None only
/// if the hash is not a valid secret key (probability about 2^-128).
pub fn keys_for(xpub: &str) -> Option<Keys> {
    let digest: [u8; 32] = Sha256::digest(format!("nostr_psbt:{xpub}").as_bytes()).into();
    SecretKey::from_slice(&digest).ok().map(Keys::new)
}

/// The Nostr identities Electrum's `psbt_nostr` gives `key`: one per way the xpub may be
/// written (`Vpub`/`Zpub` as the bridge hands it out, `tpub`/`xpub` if pasted so).
pub fn nostr_identities(key: &Xpub) -> Vec<nostr::Keys> {
    [slip132(key), key.to_string()]
        .iter()
        .filter_map(|s| keys_for(s))
        .collect()
}

/// The key as answers show it: Electrum's form, descriptor form, and its id.
pub fn key_json(key: &AccountKey) -> serde_json::Value {
    serde_json::json!({
        "key_id": hex::encode(keyhash_of(&key.xpub.public_key).0),
        "electrum_xpub": key.electrum_xpub(),
        "xpub": key.xpub.to_string(),
        "descriptor_key": key.descriptor_key(),
    })
}

/// Issues a new key at a random unused index, inside `txn`, after the rate limits.
pub fn issue(
    txn: &WriteTransaction,
    issuer: &AccountKey,
    limits: &[crate::allowance::Allowance],
    now: u64,
) -> Result<Result<AccountKey, WalletKeyError>, StoreError> {
    let mut recent = txn.open_table(ISSUES).map_err(db_err)?;
    if let Err(used_up) = crate::allowance::take(&mut recent, limits, now)? {
        return Ok(Err(WalletKeyError::RateLimited {
            what: used_up.what,
            retry_after: crate::notice::format_utc(used_up.frees_at),
        }));
    }
    drop(recent);
    let mut indexes = txn.open_table(ISSUED_INDEXES).map_err(db_err)?;
    let index = loop {
        use rand_core::RngCore as _;
        let candidate = rand_core::OsRng.next_u32() & MAX_WALLET_INDEX;
        if indexes.get(candidate).map_err(db_err)?.is_none() {
            break candidate;
        }
    };
    let key = issuer
        .wallet_key(index)
        .map_err(|e| StoreError::Database(format!("wallet key {index}: {e}")))?;
    let keyhash = keyhash_of(&key.xpub.public_key);
    indexes.insert(index, &keyhash.0).map_err(db_err)?;
    txn.open_table(ISSUED_KEYS)
        .map_err(db_err)?
        .insert(
            &keyhash.0,
            state::to_bytes(&IssuedKey {
                index,
                issued_at: now,
                wallet: None,
            })
            .as_slice(),
        )
        .map_err(db_err)?;
    let mut identities = txn.open_table(SATELLITE_IDENTITIES).map_err(db_err)?;
    for keys in nostr_identities(&key.xpub) {
        identities
            .insert(&keys.public_key().to_bytes(), &keyhash.0)
            .map_err(db_err)?;
    }
    Ok(Ok(key))
}

/// The issued key with this keyhash, if any.
pub fn lookup(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    keyhash: &Keyhash,
) -> Result<Option<IssuedKey>, StoreError> {
    table
        .get(&keyhash.0)
        .map_err(db_err)?
        .map(|v| from_bytes(v.value()))
        .transpose()
}

/// A wallet's satellite key, found among its member keys.
#[derive(Debug, Clone)]
pub struct Found {
    /// The key.
    pub key: AccountKey,
    /// Its record.
    pub issued: IssuedKey,
}

/// Finds the one issued key among a wallet's member `xpubs`: issued here, with no other
/// member key a satellite key. Whether it serves another wallet is [`bind`]'s check.
pub fn find_in(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    issuer: &AccountKey,
    xpubs: &[Xpub],
) -> Result<Result<Found, WalletKeyError>, StoreError> {
    let mut found: Vec<(usize, IssuedKey)> = Vec::new();
    for (position, x) in xpubs.iter().enumerate() {
        if x.public_key == issuer.xpub.public_key {
            return Ok(Err(WalletKeyError::Reused(format!(
                "key {position} is the satellite's issuer key, which signs for no wallet; ask for a satellite key with satellite.new_key"
            ))));
        }
        if let Some(issued) = lookup(table, &keyhash_of(&x.public_key))? {
            found.push((position, issued));
        }
    }
    let (position, issued) = match found.as_slice() {
        [] => {
            return Ok(Err(WalletKeyError::NotIssued(
                "the wallet holds no satellite key issued by this bridge; ask for one with satellite.new_key (or the /key page) and create the wallet with it".into(),
            )))
        }
        [one] => one.clone(),
        [_, (second, _), ..] => {
            return Ok(Err(WalletKeyError::Reused(format!(
                "key {second} is a second satellite key; a wallet holds exactly one"
            ))))
        }
    };
    let key = issuer
        .wallet_key(issued.index)
        .map_err(|e| StoreError::Database(format!("wallet key {}: {e}", issued.index)))?;
    if key.xpub.chain_code != xpubs[position].chain_code {
        return Ok(Err(WalletKeyError::NotIssued(format!(
            "key {position} has the public key of an issued key but not its chain code"
        ))));
    }
    Ok(Ok(Found { key, issued }))
}

/// Binds an issued key to the wallet registered with it, unless it serves another wallet.
pub fn bind(
    txn: &WriteTransaction,
    key: &AccountKey,
    wallet: WalletId,
) -> Result<Result<(), WalletKeyError>, StoreError> {
    let keyhash = keyhash_of(&key.xpub.public_key);
    let mut table = txn.open_table(ISSUED_KEYS).map_err(db_err)?;
    let Some(mut issued) = lookup(&table, &keyhash)? else {
        return Err(StoreError::Database(
            "binding a key that was never issued".into(),
        ));
    };
    if let Some(owner) = issued.wallet.filter(|w| *w != wallet) {
        return Ok(Err(WalletKeyError::IssuedForAnotherWallet(owner)));
    }
    issued.wallet = Some(wallet);
    table
        .insert(&keyhash.0, state::to_bytes(&issued).as_slice())
        .map_err(db_err)?;
    Ok(Ok(()))
}

/// Every issued key's Nostr identities, with its key's keyhash.
pub async fn satellite_identities(
    store: &crate::store::Store,
) -> Result<std::collections::HashMap<nostr::PublicKey, crate::mailbox::Keyhash>, StoreError> {
    store
        .read(|txn| {
            let t = txn.open_table(SATELLITE_IDENTITIES).map_err(db_err)?;
            let mut out = std::collections::HashMap::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if let Ok(p) = nostr::PublicKey::from_slice(k.value()) {
                    out.insert(p, crate::mailbox::Keyhash(*v.value()));
                }
            }
            Ok(out)
        })
        .await
}
