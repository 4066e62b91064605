//! satcosign's radio link: moves opaque messages (up to 1 MiB) between the bridge and the
//! satellite cosigner over frames of a small MTU, reliably (selective-repeat ARQ built for
//! long, lossy, half-duplex links), exactly once (persisted ids, outbox and inbox), and
//! authenticated end to end (X25519 identities, ChaCha20-Poly1305 per frame). It knows
//! nothing of Bitcoin.
//!
//! - [`frame`]: the bytes of a frame and of the record inside it;
//! - [`crypto`]: identities, frame sealing, replay protection;
//! - [`schedule`]: when the peer is in view (the pass schedule);
//! - [`orbit`]: passes predicted from the satellite's elements for each ground station;
//! - [`store`]: what survives restarts (redb, or memory for simulations);
//! - [`engine`]: the protocol, with no I/O;
//! - [`transport`]: the radio (KISS over TCP, UDP, a simulated channel);
//! - [`link`]: runs an engine over a transport for an application.

pub mod crypto;
pub mod engine;
pub mod frame;
pub mod link;
pub mod orbit;
pub mod schedule;
pub mod store;
pub mod transport;
