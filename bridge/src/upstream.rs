//! The upstream Electrum server (electrs, Fulcrum, ElectrumX), reached with the
//! `electrum-client` crate: previous transactions for PSBTs that lack them, and the
//! broadcast of final transactions.
//!
//! The client is blocking; callers run it on tokio's blocking pool. A fresh connection is
//! made per call (calls are rare: a few per signing request), so a restarted server never
//! leaves the bridge holding a dead socket.

use bitcoin::{Transaction, Txid};
use electrum_client::ElectrumApi as _;

/// Why the upstream server could not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Cannot connect.
    #[error("cannot reach the upstream server {url}: {reason}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server does not have the transaction.
    #[error("the upstream server has no transaction {txid}: {reason}")]
    Missing {
        /// The transaction asked for.
        txid: Txid,
        /// The server's words.
        reason: String,
    },
    /// The server refused the broadcast.
    #[error("the upstream server refused the broadcast: {0}")]
    Broadcast(String),
}

/// What the bridge needs of a Bitcoin backend.
pub trait Upstream: Send + Sync {
    /// The transaction with id `txid`.
    fn transaction(&self, txid: &Txid) -> Result<Transaction, UpstreamError>;
    /// Broadcasts `tx`; returns its id as the server reports it.
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, UpstreamError>;
}

/// An Electrum-protocol server.
pub struct ElectrumUpstream {
    url: String,
}

impl ElectrumUpstream {
    /// A server at `url` (`tcp://host:port` or `ssl://host:port`).
    pub fn new(url: &str) -> ElectrumUpstream {
        ElectrumUpstream {
            url: url.to_owned(),
        }
    }

    fn client(&self) -> Result<electrum_client::Client, UpstreamError> {
        let config = electrum_client::ConfigBuilder::new()
            .timeout(Some(std::time::Duration::from_secs(20)))
            .retry(1)
            .build();
        electrum_client::Client::from_config(&self.url, config).map_err(|e| {
            UpstreamError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            }
        })
    }
}

impl Upstream for ElectrumUpstream {
    fn transaction(&self, txid: &Txid) -> Result<Transaction, UpstreamError> {
        self.client()?
            .transaction_get(txid)
            .map_err(|e| UpstreamError::Missing {
                txid: *txid,
                reason: e.to_string(),
            })
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, UpstreamError> {
        self.client()?
            .transaction_broadcast(tx)
            .map_err(|e| UpstreamError::Broadcast(e.to_string()))
    }
}
