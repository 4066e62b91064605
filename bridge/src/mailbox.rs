//! The cosigner-pool mailbox, with the semantics of Electrum's cosigner pool.
//!
//! One slot per keyhash (`hex(sha256d(pubkey))`, 64 hex characters); `put` overwrites the
//! slot, `get` returns the message or nothing, `delete` empties it. Messages are base64
//! text (ECIES "BIE1" ciphertexts in practice; the bridge does not look inside them here),
//! checked for size after decoding, and expire after a configured time. A put is answered
//! only once it is durable, so a crash right after the answer loses nothing.
//!
//! Strangers can put, so the mailbox is bounded: its messages together stay under a quota
//! (`mailbox.max_total_bytes`), each client address may put only so often
//! (`mailbox.puts_per_minute_per_peer`), and the sweep finds expired entries through an
//! expiry index instead of reading every message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::config::MailboxConfig;
use crate::mailbox_rows::MailboxRows;
use crate::store::{PutOutcome, Store, StoreError};

/// Client addresses whose put rate is remembered at once; past it, those with a full
/// allowance are forgotten (they are indistinguishable from new ones).
const MAX_TRACKED_PEERS: usize = 65_536;

/// Why a mailbox call was refused.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The keyhash is not 64 hex characters.
    #[error("keyhash must be 64 hex characters (sha256d of a public key): {reason}")]
    BadKeyhash {
        /// What is wrong with it.
        reason: String,
    },
    /// The message is not valid base64.
    #[error("message must be standard base64 text: {reason}")]
    BadMessage {
        /// What is wrong with it.
        reason: String,
    },
    /// The decoded message is over the configured limit.
    #[error("message is {size} bytes decoded; the limit is {max}")]
    TooLarge {
        /// Decoded size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// The mailbox holds its quota of messages; nothing changed.
    #[error("the mailbox holds {held} bytes of messages, its limit of {max} (mailbox.max_total_bytes); try again after older messages expire")]
    Full {
        /// Message bytes held.
        held: u64,
        /// The quota.
        max: u64,
    },
    /// This client put too often.
    #[error("at most {per_minute} puts a minute from one client address (mailbox.puts_per_minute_per_peer)")]
    RateLimited {
        /// The limit.
        per_minute: u32,
    },
    /// This client put too many bytes.
    #[error("at most {bytes_per_minute} bytes of puts a minute from one client address (mailbox.put_bytes_per_minute_per_peer)")]
    BytesRateLimited {
        /// The limit.
        bytes_per_minute: u64,
    },
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Electrum cosigner-pool keyhash of an xpub: `sha256d(compressed pubkey)`.
pub fn keyhash_of(pubkey: &bitcoin::secp256k1::PublicKey) -> Keyhash {
    use bitcoin::hashes::{sha256d, Hash as _};
    Keyhash(sha256d::Hash::hash(&pubkey.serialize()).to_byte_array())
}

/// A slot name: the 32 bytes behind a keyhash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keyhash(pub [u8; 32]);

impl std::str::FromStr for Keyhash {
    type Err = MailboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(MailboxError::BadKeyhash {
                reason: format!("got {} characters", s.len()),
            });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| MailboxError::BadKeyhash {
            reason: e.to_string(),
        })?;
        Ok(Keyhash(out))
    }
}

/// How far the bridge's clock runs ahead of the system's, milliseconds: zero, except in
/// tests of days-long behaviour (set through `dev::advance_clock`).
pub(crate) static CLOCK_AHEAD_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Milliseconds since the Unix epoch, now: the bridge's clock for requests, codes, mailbox
/// messages and Nostr events.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .saturating_add(CLOCK_AHEAD_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// The mailbox service over the bridge's store.
#[derive(Clone)]
pub struct Mailbox {
    rows: Arc<dyn MailboxRows>,
    ttl: Duration,
    max_message_bytes: usize,
    max_total_bytes: u64,
    puts_per_minute: u32,
    put_bytes_per_minute: u64,
    /// Per client address: what it may still put, and when that was last counted.
    allowances: Arc<Mutex<HashMap<IpAddr, Allowance>>>,
}

/// One client address's token buckets: puts, and bytes of puts, each refilled over a minute.
#[derive(Clone, Copy, Debug)]
struct Allowance {
    puts: f64,
    bytes: f64,
    at: Instant,
}

impl Mailbox {
    /// A mailbox over the bridge's redb `store` with the limits of `config` (checked at
    /// load).
    pub fn new(store: Store, config: &MailboxConfig) -> Mailbox {
        Mailbox::with_rows(Arc::new(store), config)
    }

    /// A mailbox over any backend ([`MailboxRows`]: redb or PostgreSQL).
    pub fn with_rows(rows: Arc<dyn MailboxRows>, config: &MailboxConfig) -> Mailbox {
        Mailbox {
            rows,
            ttl: Duration::from_secs(config.ttl_secs),
            max_message_bytes: config.max_message_bytes,
            max_total_bytes: config.max_total_bytes,
            puts_per_minute: config.puts_per_minute_per_peer,
            put_bytes_per_minute: config.put_bytes_per_minute_per_peer,
            allowances: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one put of `bytes` (its request's size) by `client` against its allowances:
    /// token buckets of a minute's puts and a minute's bytes. Called before the request is
    /// parsed, so a flood costs the bridge little.
    pub fn take_put(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), MailboxError> {
        let Some(ip) = client else {
            return Ok(());
        };
        let (puts_max, bytes_max) = (
            f64::from(self.puts_per_minute),
            self.put_bytes_per_minute as f64,
        );
        let refill = |a: &Allowance, now: Instant| {
            let minutes = now.duration_since(a.at).as_secs_f64() / 60.0;
            Allowance {
                puts: (a.puts + minutes * puts_max).min(puts_max),
                bytes: (a.bytes + minutes * bytes_max).min(bytes_max),
                at: now,
            }
        };
        let now = Instant::now();
        let mut all = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_TRACKED_PEERS && !all.contains_key(&ip) {
            all.retain(|_, a| {
                let a = refill(a, now);
                a.puts < puts_max || a.bytes < bytes_max
            });
        }
        let entry = all.entry(ip).or_insert(Allowance {
            puts: puts_max,
            bytes: bytes_max,
            at: now,
        });
        *entry = refill(entry, now);
        if entry.puts < 1.0 {
            crate::metrics::limit_hit("mailbox_puts_per_peer");
            return Err(MailboxError::RateLimited {
                per_minute: self.puts_per_minute,
            });
        }
        if entry.bytes < bytes as f64 {
            crate::metrics::limit_hit("mailbox_put_bytes_per_peer");
            return Err(MailboxError::BytesRateLimited {
                bytes_per_minute: self.put_bytes_per_minute,
            });
        }
        entry.puts -= 1.0;
        entry.bytes -= bytes as f64;
        Ok(())
    }

    /// Checks a message: standard base64, decoded size within the limit.
    pub fn check_message(&self, message: &str) -> Result<(), MailboxError> {
        // Refuse by length before decoding anything: padded base64 is 4 characters per
        // 3 bytes, less one byte per trailing `=`.
        let padding = message
            .bytes()
            .rev()
            .take_while(|&b| b == b'=')
            .count()
            .min(2);
        let size = (message.len() / 4 * 3).saturating_sub(padding);
        if size > self.max_message_bytes {
            return Err(MailboxError::TooLarge {
                size,
                max: self.max_message_bytes,
            });
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(message)
            .map_err(|e| MailboxError::BadMessage {
                reason: e.to_string(),
            })?;
        if decoded.is_empty() {
            return Err(MailboxError::BadMessage {
                reason: "message is empty".into(),
            });
        }
        if decoded.len() > self.max_message_bytes {
            return Err(MailboxError::TooLarge {
                size: decoded.len(),
                max: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Puts `message` into the slot, replacing any earlier one; returns once durable.
    pub async fn put(&self, key: Keyhash, message: String) -> Result<(), MailboxError> {
        self.check_message(&message)?;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let expires = now_ms().saturating_add(ttl_ms);
        match self
            .rows
            .put(key.0, expires, message, self.max_total_bytes)
            .await?
        {
            PutOutcome::Stored => {
                tracing::debug!(keyhash = %hex::encode(key.0), "mailbox put");
                Ok(())
            }
            PutOutcome::Full { held } => {
                crate::metrics::limit_hit("mailbox_bytes");
                tracing::info!(
                    held,
                    max = self.max_total_bytes,
                    "mailbox put refused: full"
                );
                Err(MailboxError::Full {
                    held,
                    max: self.max_total_bytes,
                })
            }
        }
    }

    /// The slot's message, or `None` when empty or expired.
    pub async fn get(&self, key: Keyhash) -> Result<Option<String>, MailboxError> {
        let entry = self.rows.get(key.0).await?;
        Ok(entry
            .filter(|e| e.expires_at_ms > now_ms())
            .map(|e| e.message))
    }

    /// Empties the slot; returns whether it held a live message.
    pub async fn delete(&self, key: Keyhash) -> Result<bool, MailboxError> {
        let removed = self.rows.delete(key.0).await?;
        Ok(removed.is_some_and(|expiry| expiry > now_ms()))
    }

    /// Removes expired entries now and then, so the database does not grow without bound.
    /// Expired entries are never served even before they are swept.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let rows = self.rows.clone();
        let every = (self.ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(300));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match rows.purge_expired(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired mailbox entries swept"),
                    Err(StoreError::WriterStopped) => break,
                    Err(e) => tracing::warn!(error = %e, "mailbox sweep failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(dir: &tempfile::TempDir, ttl: Duration, max: usize) -> Mailbox {
        let store = Store::open(&dir.path().join("m.redb")).expect("store");
        let mut mb = Mailbox::new(
            store,
            &MailboxConfig {
                max_message_bytes: max,
                ..MailboxConfig::default()
            },
        );
        mb.ttl = ttl;
        mb
    }

    #[tokio::test]
    async fn expired_entries_are_not_served_even_before_the_sweep() {
        // No sweeper runs here: expiry must hold on the read path alone.
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = mailbox(&dir, Duration::from_millis(200), 100);
        let key = Keyhash([7; 32]);
        mb.put(key, "aGVsbG8=".into()).await.expect("put");
        assert_eq!(mb.get(key).await.expect("get").as_deref(), Some("aGVsbG8="));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(mb.get(key).await.expect("get"), None);
        assert!(
            !mb.delete(key).await.expect("delete"),
            "an expired entry is not live"
        );
    }

    #[tokio::test]
    async fn sweep_removes_only_expired_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store
            .mailbox_put([1; 32], 1_000, "AA==".into(), u64::MAX)
            .await
            .expect("put");
        store
            .mailbox_put([2; 32], 5_000, "AQ==".into(), u64::MAX)
            .await
            .expect("put");
        assert_eq!(store.mailbox_purge_expired(2_000).await.expect("purge"), 1);
        assert_eq!(store.mailbox_get([1; 32]).await.expect("get"), None);
        assert_eq!(
            store
                .mailbox_get([2; 32])
                .await
                .expect("get")
                .map(|e| e.message),
            Some("AQ==".to_owned())
        );
    }

    #[tokio::test]
    async fn the_quota_holds_and_deletes_sweeps_and_replacements_free_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mb = mailbox(&dir, Duration::from_secs(60), 100);
        mb.max_total_bytes = 12;
        let msg = "aGVsbG8=".to_owned(); // 8 bytes of text
        mb.put(Keyhash([1; 32]), msg.clone()).await.expect("first");
        let full = mb.put(Keyhash([2; 32]), msg.clone()).await;
        assert!(
            matches!(full, Err(MailboxError::Full { held: 8, max: 12 })),
            "{full:?}"
        );
        assert_eq!(mb.get(Keyhash([2; 32])).await.expect("get"), None);
        // Replacing a slot's message counts only the difference.
        mb.put(Keyhash([1; 32]), "aGk=".into())
            .await
            .expect("replace");
        assert_eq!(mb.rows.held_bytes().await.expect("bytes"), 4);
        mb.put(Keyhash([2; 32]), msg.clone())
            .await
            .expect("room now");
        assert!(mb.delete(Keyhash([2; 32])).await.expect("delete"));
        assert_eq!(mb.rows.held_bytes().await.expect("bytes"), 4);
        // The sweep frees what expired, found through the index.
        mb.rows
            .put([3; 32], 1, "AA==".into(), u64::MAX)
            .await
            .expect("put");
        assert_eq!(mb.rows.held_bytes().await.expect("bytes"), 8);
        assert_eq!(mb.rows.purge_expired(now_ms()).await.expect("purge"), 1);
        assert_eq!(mb.rows.held_bytes().await.expect("bytes"), 4);
        assert_eq!(
            mb.get(Keyhash([1; 32])).await.expect("get").as_deref(),
            Some("aGk=")
        );
    }

    #[test]
    fn each_client_address_has_its_own_put_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mb = mailbox(&dir, Duration::from_secs(60), 100);
        mb.puts_per_minute = 5;
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..5 {
            mb.take_put(Some(a), 100).expect("within the burst");
        }
        assert!(matches!(
            mb.take_put(Some(a), 100),
            Err(MailboxError::RateLimited { per_minute: 5 })
        ));
        mb.take_put(Some(b), 100)
            .expect("another address is not limited by the first");
    }

    #[test]
    fn each_client_address_has_its_own_byte_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mb = mailbox(&dir, Duration::from_secs(60), 100);
        mb.put_bytes_per_minute = 3_000_000;
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            mb.take_put(Some(a), 1_000_000).expect("within the bytes");
        }
        let refused = mb.take_put(Some(a), 1_000_000);
        assert!(
            matches!(
                refused,
                Err(MailboxError::BytesRateLimited {
                    bytes_per_minute: 3_000_000
                })
            ),
            "{refused:?}"
        );
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        mb.take_put(Some(b), 1_000_000)
            .expect("another address is not limited by the first");
    }

    #[test]
    fn message_checks_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = mailbox(&dir, Duration::from_secs(1), 3);
        assert!(mb.check_message("AAAA").is_ok());
        assert!(matches!(
            mb.check_message("AAAAAA=="),
            Err(MailboxError::TooLarge { size: 4, max: 3 })
        ));
        assert!(matches!(
            mb.check_message("A!AA"),
            Err(MailboxError::BadMessage { .. })
        ));
        assert!(matches!(
            mb.check_message(""),
            Err(MailboxError::BadMessage { .. })
        ));
        // A huge message is refused by length, before any decoding.
        let huge = "A".repeat(4_000_000);
        assert!(matches!(
            mb.check_message(&huge),
            Err(MailboxError::TooLarge { .. })
        ));
    }

    #[test]
    fn keyhash_parsing() {
        assert!("00".repeat(32).parse::<Keyhash>().is_ok());
        assert!("AB".repeat(32).parse::<Keyhash>().is_ok());
        assert!("0".repeat(63).parse::<Keyhash>().is_err());
        assert!("zz".repeat(32).parse::<Keyhash>().is_err());
        // Multi-byte characters must not panic the length check.
        assert!("é".repeat(32).parse::<Keyhash>().is_err());
    }
}
