//! The email gate's secrets: confirmation tokens and what they are bound to.
//!
//! A token is 160 bits from the OS's CSPRNG, shown to the user as 32 base32 characters in
//! groups of four (the code they can type into the plugin, and the secret in the emailed
//! link). Only its SHA-256 is stored: 160 random bits need no slow hash, and a stolen
//! database confirms nothing. Each token is bound to a digest of exactly what it approves
//! (request id, action and its content), so a token for one request or for an earlier
//! version of a PSBT confirms nothing else.

use sha2::{Digest, Sha256};

use satcosign_cosigner::decision::RequestId;

use crate::state::Action;

/// Bytes of randomness in a token.
pub const TOKEN_BYTES: usize = 20;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A fresh token: its text for the email, and its hash for the database.
pub struct Token {
    /// What the user sees: `XXXX-XXXX-...` (never stored).
    pub text: String,
    /// SHA-256 of the normalized text (stored).
    pub hash: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("hash", &hex::encode(self.hash))
            .finish_non_exhaustive()
    }
}

/// Makes a new token.
pub fn new_token() -> Token {
    use rand_core::RngCore as _;
    let mut raw = [0u8; TOKEN_BYTES];
    rand_core::OsRng.fill_bytes(&mut raw);
    let plain = base32(&raw);
    let text = plain
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    Token {
        hash: hash_code(&plain).unwrap_or_default(),
        text,
    }
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Hashes a code as the user typed it (case, spaces and dashes do not matter); `None` if it
/// cannot be a token at all.
pub fn hash_code(code: &str) -> Option<[u8; 32]> {
    let normalized: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let expected_len = TOKEN_BYTES * 8 / 5;
    if normalized.len() != expected_len || !normalized.bytes().all(|b| BASE32.contains(&b)) {
        return None;
    }
    Some(Sha256::digest(normalized.as_bytes()).into())
}

/// The digest a token is bound to: the request, the kind of action and its exact content.
pub fn approval_digest(id: &RequestId, action: &Action) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"satcosign approval v1");
    h.update(id.0);
    h.update(action.kind().as_bytes());
    match action {
        Action::Register => {}
        Action::Sign { psbt, replaces, .. } => {
            h.update(Sha256::digest(psbt));
            if let Some(r) = replaces {
                h.update(r.0);
            }
        }
        Action::UpdateEmail { new_email } => h.update(new_email.as_bytes()),
        Action::SetPolicy { policy } => h.update(crate::state::to_bytes(policy)),
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_typed_loosely() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a.text, b.text);
        assert_eq!(a.text.replace('-', "").len(), 32, "160 bits in base32");
        assert_eq!(hash_code(&a.text), Some(a.hash));
        assert_eq!(
            hash_code(&a.text.to_lowercase().replace('-', " ")),
            Some(a.hash)
        );
        assert_eq!(hash_code("ABCD"), None);
        assert_eq!(hash_code(&"1".repeat(32)), None, "1 is not base32");
        assert_ne!(hash_code(&b.text), Some(a.hash));
    }

    #[test]
    fn digest_binds_request_and_content() {
        let id = RequestId([1; 16]);
        let reg = approval_digest(&id, &Action::Register);
        assert_ne!(reg, approval_digest(&RequestId([2; 16]), &Action::Register));
        let e1 = Action::UpdateEmail {
            new_email: "a@x".into(),
        };
        let e2 = Action::UpdateEmail {
            new_email: "b@x".into(),
        };
        assert_ne!(approval_digest(&id, &e1), approval_digest(&id, &e2));
        assert_ne!(approval_digest(&id, &e1), reg);
    }
}
