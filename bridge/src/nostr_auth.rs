//! NIP-42 authentication on the relay: each connection gets a challenge when it opens; a
//! client that signs it (a kind-22242 event naming the challenge) proves it holds a key.
//! Electrum's Nostr library answers the challenge with the wallet's own key by itself.
//!
//! The relay needs no login to serve anyone; what a proof buys is narrower: an answer kept
//! for a wallet ([`crate::nostr_keep`]) counts as fetched only when it went to a connection
//! that proved the wallet's key, so a stranger who asks for a wallet's messages cannot stop
//! the bridge from keeping its answer.

use nostr::{Event, Kind, PublicKey, TagKind};

/// The kind of an authentication event.
pub const AUTH_KIND: u16 = 22242;
/// How far an authentication event's time may be from the relay's.
pub const MAX_SKEW_SECS: u64 = 600;

/// A fresh challenge: 16 random bytes, hex.
pub fn challenge() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Checks an `AUTH` event against the connection's `challenge` at `now` (unix seconds);
/// returns the key it proves, or why not (NIP-01's `invalid:` text).
pub fn verify(event: &Event, challenge: &str, now: u64) -> Result<PublicKey, String> {
    if event.kind != Kind::from(AUTH_KIND) {
        return Err(format!(
            "invalid: an AUTH event is of kind {AUTH_KIND}, not {}",
            event.kind.as_u16()
        ));
    }
    event
        .verify()
        .map_err(|e| format!("invalid: the AUTH event's id or signature is wrong: {e}"))?;
    let answered = event
        .tags
        .iter()
        .find(|t| t.kind() == TagKind::Challenge)
        .and_then(|t| t.content());
    if answered != Some(challenge) {
        return Err("invalid: the AUTH event does not answer this connection's challenge".into());
    }
    let at = event.created_at.as_secs();
    if at.abs_diff(now) > MAX_SKEW_SECS {
        return Err(format!(
            "invalid: the AUTH event's time is more than {MAX_SKEW_SECS} s from the relay's"
        ));
    }
    Ok(event.pubkey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Tag, Timestamp};

    fn auth(keys: &Keys, challenge: &str, at: u64, kind: u16) -> Event {
        EventBuilder::new(Kind::from(kind), "")
            .tags([
                Tag::custom(TagKind::Challenge, [challenge]),
                Tag::custom(TagKind::Relay, ["ws://127.0.0.1"]),
            ])
            .custom_created_at(Timestamp::from(at))
            .sign_with_keys(keys)
            .expect("sign")
    }

    #[test]
    fn only_a_fresh_signed_answer_to_this_challenge_proves_a_key() {
        let keys = Keys::generate();
        let c = challenge();
        assert_eq!(c.len(), 32);
        assert_ne!(c, challenge());
        let now = 1_800_000_000;
        assert_eq!(
            verify(&auth(&keys, &c, now, AUTH_KIND), &c, now),
            Ok(keys.public_key())
        );
        for (e, says) in [
            (auth(&keys, "another", now, AUTH_KIND), "challenge"),
            (auth(&keys, &c, now - 3600, AUTH_KIND), "time"),
            (auth(&keys, &c, now, 4), "kind"),
        ] {
            let err = verify(&e, &c, now).expect_err(says);
            assert!(err.contains(says), "{err}");
        }
        // Another key's signature under this key's name.
        let mut forged = auth(&keys, &c, now, AUTH_KIND);
        forged.pubkey = Keys::generate().public_key();
        assert!(verify(&forged, &c, now)
            .expect_err("forged")
            .contains("signature"));
    }
}
