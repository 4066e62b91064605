//! Electrum's ECIES ("BIE1"), the encryption of the cosigner-pool mailbox.
//!
//! Electrum's `ecc.ECPubkey.encrypt_message`: a fresh ephemeral key `e`; the shared secret
//! is the compressed point `e·P`; `sha512` of it splits into a 16-byte IV, a 16-byte
//! AES-128-CBC key and a 32-byte HMAC-SHA256 key; the message is
//! `base64("BIE1" || ephemeral pubkey (33) || AES-CBC-PKCS7(ciphertext) || HMAC(all before))`.
//! Requests reach the bridge encrypted to its mailbox key, and results go back encrypted to
//! the requester's xpub key, so the mailbox never carries a plaintext PSBT.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use bitcoin::secp256k1::{PublicKey, Scalar, Secp256k1, SecretKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

const MAGIC: &[u8; 4] = b"BIE1";
/// Magic, ephemeral key, one AES block, MAC: the shortest valid ciphertext.
const MIN_LEN: usize = 4 + 33 + 16 + 32;

/// Why a mailbox message could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EciesError {
    /// Not base64.
    #[error("not base64: {0}")]
    Base64(String),
    /// Too short to be a BIE1 message.
    #[error("ciphertext of {0} bytes is shorter than the {MIN_LEN} of the smallest BIE1 message")]
    TooShort(usize),
    /// Does not start with `BIE1`.
    #[error("not a BIE1 message (magic bytes differ)")]
    Magic,
    /// The ephemeral public key is not a point on the curve.
    #[error("the ephemeral public key is invalid")]
    EphemeralKey,
    /// The MAC does not match: wrong key, or the message was altered.
    #[error("authentication failed: the message is not for this key or was altered")]
    Mac,
    /// The padding is wrong (cannot happen once the MAC matched, unless the sender erred).
    #[error("bad padding")]
    Padding,
}

fn derive_keys(shared_point: &PublicKey) -> ([u8; 16], [u8; 16], [u8; 32]) {
    let key = Sha512::digest(shared_point.serialize());
    let mut iv = [0u8; 16];
    let mut key_e = [0u8; 16];
    let mut key_m = [0u8; 32];
    iv.copy_from_slice(&key[0..16]);
    key_e.copy_from_slice(&key[16..32]);
    key_m.copy_from_slice(&key[32..64]);
    (iv, key_e, key_m)
}

fn mac(key_m: &[u8; 32], data: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key_m).expect("HMAC takes any key length");
    m.update(data);
    m
}

/// A secret key from the OS's CSPRNG.
pub fn random_secret_key() -> SecretKey {
    use rand_core::RngCore as _;
    loop {
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        // Fails only for zero or values above the group order: about 2^-128 of draws.
        if let Ok(k) = SecretKey::from_slice(&bytes) {
            return k;
        }
    }
}

/// Encrypts `message` to `to` as Electrum does; returns the base64 text.
pub fn encrypt(to: &PublicKey, message: &[u8]) -> String {
    let secp = Secp256k1::new();
    let ephemeral = random_secret_key();
    let shared = to
        .mul_tweak(&secp, &Scalar::from(ephemeral))
        .expect("a random secret key is a valid non-zero scalar");
    let (iv, key_e, key_m) = derive_keys(&shared);
    let ciphertext =
        Aes128CbcEnc::new(&key_e.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(message);
    let mut out = Vec::with_capacity(4 + 33 + ciphertext.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ephemeral.public_key(&secp).serialize());
    out.extend_from_slice(&ciphertext);
    let tag = mac(&key_m, &out).finalize().into_bytes();
    out.extend_from_slice(&tag);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Decrypts a base64 BIE1 message with `key`.
pub fn decrypt(key: &SecretKey, text: &str) -> Result<Vec<u8>, EciesError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| EciesError::Base64(e.to_string()))?;
    if raw.len() < MIN_LEN {
        return Err(EciesError::TooShort(raw.len()));
    }
    if &raw[..4] != MAGIC {
        return Err(EciesError::Magic);
    }
    let ephemeral = PublicKey::from_slice(&raw[4..37]).map_err(|_| EciesError::EphemeralKey)?;
    let (body, tag) = raw.split_at(raw.len() - 32);
    let secp = Secp256k1::new();
    let shared = ephemeral
        .mul_tweak(&secp, &Scalar::from(*key))
        .map_err(|_| EciesError::EphemeralKey)?;
    let (iv, key_e, key_m) = derive_keys(&shared);
    mac(&key_m, body)
        .verify_slice(tag)
        .map_err(|_| EciesError::Mac)?;
    Aes128CbcDec::new(&key_e.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&body[37..])
        .map_err(|_| EciesError::Padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[7u8; 32]).expect("valid key");
        let text = encrypt(&key.public_key(&secp), b"psbt bytes");
        assert_eq!(decrypt(&key, &text).as_deref(), Ok(&b"psbt bytes"[..]));

        let other = SecretKey::from_slice(&[8u8; 32]).expect("valid key");
        assert_eq!(decrypt(&other, &text), Err(EciesError::Mac));

        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .expect("base64");
        raw[40] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(decrypt(&key, &altered), Err(EciesError::Mac));
        assert_eq!(decrypt(&key, "AAAA"), Err(EciesError::TooShort(3)));
        assert!(matches!(decrypt(&key, "!!"), Err(EciesError::Base64(_))));
    }
}
