//! The bridge's own secret files, created 0600 on first start and read at every start: the
//! mailbox key (the bridge's ECIES identity for cosigner-pool replies) and the link identity
//! (its X25519 key on the radio link). Neither ever leaves the ground machine.

use bitcoin::secp256k1::SecretKey;

use crate::config::Config;
use crate::{ecies, StartError};

/// The bridge's mailbox key: the configured file, or `mailbox.key` in the data directory.
pub fn mailbox_key_of(config: &Config) -> Result<SecretKey, StartError> {
    let path = config
        .mailbox
        .key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("mailbox.key"));
    mailbox_key(&path)
}

/// Reads the secret key in `path`, creating it (0600) on first start.
pub fn mailbox_key(path: &std::path::Path) -> Result<SecretKey, StartError> {
    let bad = |reason: String| StartError::Key {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        let key = ecies::random_secret_key();
        satcosign_link::crypto::write_secret_file(path, &hex::encode(key.secret_bytes()))
            .map_err(|e| bad(e.to_string()))?;
        return Ok(key);
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut raw = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut raw).map_err(|_| bad("not 64 hex characters".into()))?;
    SecretKey::from_slice(&raw).map_err(|e| bad(e.to_string()))
}

/// The bridge's link identity: the configured file, or `link.key` in the data directory.
pub fn link_identity(config: &Config) -> Result<satcosign_link::crypto::Identity, StartError> {
    use satcosign_link::crypto::Identity;
    let path = config
        .satellite
        .link_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("link.key"));
    let result = if path.exists() {
        Identity::load_file(&path)
    } else {
        std::fs::create_dir_all(&config.data_dir).ok();
        Identity::create_file(&path)
    };
    result.map_err(|e| StartError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
