//! satcosign's satellite cosigner.
//!
//! The daemon holds one key of each user's multisig wallet and signs only what its rules
//! allow. Modules, one concept each:
//! - [`keys`]: the seed file, the BIP-48 account key, xpub forms;
//! - [`wallet`]: descriptor registration and derivation;
//! - [`policy`]: per-wallet limits; tightening now, loosening after a delay;
//! - [`spend`]: what a PSBT spends, checked against a wallet (shared with the bridge);
//! - [`refusal`]: every reason to refuse, with stable codes;
//! - [`decision`]: the pure signing decision;
//! - [`protocol`]: messages between bridge and cosigner (shared with the bridge);
//! - [`air`]: the compact form of signing requests and answers for the radio;
//! - [`state`]: redb tables; [`daemon`]: the request handler that makes decisions durable;
//! - [`cancel`]: a user's cancel of a request, recorded so it is never signed;
//! - [`records`]: the ledger, policy state and audit log, read back;
//! - [`link_service`]: answers requests arriving over the radio link;
//! - [`config`]: the daemon's TOML configuration.
//!
//! The daemon itself (`state`, `daemon`, `link_service` and the binary) is the `daemon`
//! feature, on by default. The ground bridge builds without it: it needs only the protocol
//! and the checks it repeats on the ground, and carries nothing that signs.

pub mod air;
#[cfg(feature = "daemon")]
pub mod cancel;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod decision;
pub mod keys;
#[cfg(feature = "daemon")]
pub mod link_service;
pub mod policy;
pub mod protocol;
#[cfg(feature = "daemon")]
pub mod records;
pub mod refusal;
pub mod spend;
#[cfg(feature = "daemon")]
pub mod state;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wallet;
