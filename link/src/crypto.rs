//! End-to-end security between the two peers (the ground station between them holds no
//! keys). Each side has a static X25519 identity provisioned at setup; the pair derives two
//! ChaCha20-Poly1305 keys with HKDF-SHA256, one per direction, so a frame can never be
//! reflected back to its sender. Every frame is sealed with a fresh 48-bit counter as its
//! nonce; counters are reserved durably in blocks before use so a restart never reuses one.
//! The receiver keeps a sliding window of counters seen to reject replays, and everything at
//! or below its persisted high-water mark is rejected as stale after a restart.

use std::io::Write as _;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore as _};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::frame::{crc32c, FrameError, CRC_LEN, HEADER_LEN, MAX_COUNTER, TAG_LEN, VERSION};

/// Why an identity key could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file already exists.
    #[error("identity file {0} already exists; refusing to overwrite it")]
    Exists(String),
    /// Not 64 hex characters.
    #[error("identity file {0} does not hold a 32-byte hex key")]
    Malformed(String),
    /// A peer public key that is not 64 hex characters.
    #[error("peer public key must be 64 hex characters")]
    BadPeerKey,
}

/// This side's static identity.
pub struct Identity {
    secret: StaticSecret,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(public {})", hex::encode(self.public()))
    }
}

impl Identity {
    /// A new identity from the OS's CSPRNG.
    pub fn generate() -> Identity {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Identity {
            secret: StaticSecret::from(bytes),
        }
    }

    /// An identity from fixed bytes (tests only: real identities come from [`Self::generate`]).
    pub fn from_bytes(bytes: [u8; 32]) -> Identity {
        Identity {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The public key to give to the other side.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Writes a new identity to `path` (mode 0600), refusing to overwrite.
    pub fn create_file(path: &Path) -> Result<Identity, KeyError> {
        let id = Identity::generate();
        write_secret_file(path, &format!("{}\n", hex::encode(id.secret.to_bytes()))).map_err(
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
        Ok(id)
    }

    /// Reads an identity file.
    pub fn load_file(path: &Path) -> Result<Identity, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| KeyError::Malformed(path.display().to_string()))?;
        Ok(Identity::from_bytes(bytes))
    }
}

/// Creates `path` readable by its owner only (mode 0600 on Unix) holding `contents`, and
/// syncs it. Fails with `AlreadyExists` rather than replace a file: secrets are never
/// overwritten. Shared by every satcosign key file.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Parses a peer's public key from hex.
pub fn parse_public(hex_key: &str) -> Result<[u8; 32], KeyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut out).map_err(|_| KeyError::BadPeerKey)?;
    Ok(out)
}

/// The keys of one peer pair, with this side's direction.
pub struct Cipher {
    seal_key: ChaCha20Poly1305,
    open_key: ChaCha20Poly1305,
    my_direction: u8,
}

impl Cipher {
    /// Derives the pair's keys from this side's identity and the peer's public key.
    pub fn new(me: &Identity, peer_public: &[u8; 32]) -> Cipher {
        let mine = me.public();
        let shared = me.secret.diffie_hellman(&PublicKey::from(*peer_public));
        let (low, high) = if mine <= *peer_public {
            (mine, *peer_public)
        } else {
            (*peer_public, mine)
        };
        let mut info = b"satcosign-link v1 keys".to_vec();
        info.extend_from_slice(&low);
        info.extend_from_slice(&high);
        let hk = Hkdf::<Sha256>::new(Some(b"satcosign-link"), shared.as_bytes());
        let mut okm = [0u8; 64];
        // 64 bytes is far below HKDF-SHA256's limit.
        let _ = hk.expand(&info, &mut okm);
        let low_to_high = ChaCha20Poly1305::new(Key::from_slice(&okm[..32]));
        let high_to_low = ChaCha20Poly1305::new(Key::from_slice(&okm[32..]));
        let i_am_low = mine <= *peer_public;
        let (seal_key, open_key) = if i_am_low {
            (low_to_high, high_to_low)
        } else {
            (high_to_low, low_to_high)
        };
        Cipher {
            seal_key,
            open_key,
            my_direction: u8::from(!i_am_low),
        }
    }

    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[6..].copy_from_slice(&counter.to_be_bytes()[2..]);
        *Nonce::from_slice(&n)
    }

    /// Seals `record` as a whole frame with `counter`.
    pub fn seal(&self, counter: u64, record: &[u8]) -> Vec<u8> {
        debug_assert!(counter <= MAX_COUNTER);
        let mut frame = Vec::with_capacity(HEADER_LEN + record.len() + TAG_LEN + CRC_LEN);
        frame.push((VERSION << 4) | self.my_direction);
        frame.extend_from_slice(&counter.to_be_bytes()[2..]);
        let sealed = self
            .seal_key
            .encrypt(
                &Self::nonce(counter),
                Payload {
                    msg: record,
                    aad: &frame,
                },
            )
            .unwrap_or_default();
        frame.extend_from_slice(&sealed);
        let crc = crc32c(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        frame
    }

    /// Checks and opens a frame; returns its counter and record bytes.
    pub fn open(&self, frame: &[u8]) -> Result<(u64, Vec<u8>), FrameError> {
        if frame.len() < HEADER_LEN + TAG_LEN + CRC_LEN + 1 {
            return Err(FrameError::TooShort);
        }
        let (body, crc) = frame.split_at(frame.len() - CRC_LEN);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32c(body) != u32::from_be_bytes(c) {
            return Err(FrameError::BadCrc);
        }
        let header = &body[..HEADER_LEN];
        if header[0] != ((VERSION << 4) | (1 - self.my_direction)) {
            return Err(FrameError::WrongHeader);
        }
        let mut ctr = [0u8; 8];
        ctr[2..].copy_from_slice(&header[1..HEADER_LEN]);
        let counter = u64::from_be_bytes(ctr);
        let plain = self
            .open_key
            .decrypt(
                &Self::nonce(counter),
                Payload {
                    msg: &body[HEADER_LEN..],
                    aad: header,
                },
            )
            .map_err(|_| FrameError::Forged)?;
        Ok((counter, plain))
    }
}

/// Counters seen recently, to reject replays.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: u64,
    seen: u128,
}

/// How far behind the highest counter a frame may still arrive (reordering).
pub const WINDOW: u64 = 128;

impl ReplayWindow {
    /// A window that treats every counter up to `high_water` as seen.
    pub fn new(high_water: u64) -> ReplayWindow {
        ReplayWindow {
            highest: high_water,
            seen: u128::MAX,
        }
    }

    /// The highest counter accepted.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether `counter` would be accepted (call [`Self::accept`] once it authenticated).
    pub fn check(&self, counter: u64) -> Result<(), FrameError> {
        if counter > self.highest {
            return Ok(());
        }
        let age = self.highest - counter;
        if age >= WINDOW {
            return Err(FrameError::Stale);
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(FrameError::Replayed);
        }
        Ok(())
    }

    /// Records an authenticated counter.
    pub fn accept(&mut self, counter: u64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
        } else {
            self.seen |= 1u128 << (self.highest - counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Cipher, Cipher) {
        let a = Identity::from_bytes([1; 32]);
        let b = Identity::from_bytes([2; 32]);
        (Cipher::new(&a, &b.public()), Cipher::new(&b, &a.public()))
    }

    #[test]
    fn seal_open_and_every_rejection() {
        let (a, b) = pair();
        let f = a.seal(5, b"hello");
        assert_eq!(b.open(&f), Ok((5, b"hello".to_vec())));
        // Reflected back to its sender: wrong direction.
        assert_eq!(a.open(&f), Err(FrameError::WrongHeader));
        // A flipped bit anywhere: the CRC catches it.
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert_eq!(b.open(&g), Err(FrameError::BadCrc), "bit at byte {i}");
        }
        // A forgery with a valid CRC: authentication catches it.
        let mut g = f.clone();
        g[HEADER_LEN] ^= 1;
        let n = g.len() - CRC_LEN;
        let crc = crc32c(&g[..n]).to_be_bytes();
        g[n..].copy_from_slice(&crc);
        assert_eq!(b.open(&g), Err(FrameError::Forged));
        // Another key pair entirely.
        let c = Identity::from_bytes([3; 32]);
        let stranger = Cipher::new(&c, &Identity::from_bytes([2; 32]).public());
        assert!(matches!(
            b.open(&stranger.seal(5, b"hello")),
            Err(FrameError::Forged | FrameError::WrongHeader)
        ));
        // Truncated.
        assert_eq!(b.open(&f[..10]), Err(FrameError::TooShort));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new(0);
        assert_eq!(w.check(0), Err(FrameError::Replayed));
        for c in [3, 1, 2, 200] {
            assert!(w.check(c).is_ok());
            w.accept(c);
        }
        assert_eq!(w.check(3), Err(FrameError::Stale));
        assert_eq!(w.check(200), Err(FrameError::Replayed));
        assert!(w.check(150).is_ok());
        w.accept(150);
        assert_eq!(w.check(150), Err(FrameError::Replayed));
        // After a restart, everything up to the persisted mark is refused.
        let w = ReplayWindow::new(200);
        assert!(w.check(190).is_err());
        assert!(w.check(201).is_ok());
    }
}
