//! The upstream Electrum server (electrs, Fulcrum, ElectrumX), reached with the
//! `electrum-client` crate: previous transactions for PSBTs that lack them, whether the
//! inputs are still unspent (and what spent them), the broadcast of final transactions, and
//! where a broadcast transaction stands on the chain (see [`crate::watch`]).
//!
//! The client is blocking; callers run it on tokio's blocking pool. A fresh connection is
//! made per call (calls are rare: a few per signing request), so a restarted server never
//! leaves the bridge holding a dead socket.

use bitcoin::{OutPoint, Script, Transaction, Txid};
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
    /// The server failed a query about a script or the chain's tip.
    #[error("the upstream server failed {query}: {reason}")]
    Query {
        /// What was asked.
        query: &'static str,
        /// The server's words.
        reason: String,
    },
}

/// One transaction in a script's history, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The transaction.
    pub txid: Txid,
    /// The block height it confirmed in; `None` while it is in the mempool.
    pub height: Option<u32>,
}

/// What the bridge needs of a Bitcoin backend.
pub trait Upstream: Send + Sync {
    /// The transaction with id `txid`.
    fn transaction(&self, txid: &Txid) -> Result<Transaction, UpstreamError>;
    /// Broadcasts `tx`; returns its id as the server reports it.
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, UpstreamError>;
    /// The unspent outputs paying `script` (confirmed or in the mempool, and not spent by
    /// the mempool).
    fn unspent(&self, script: &Script) -> Result<Vec<OutPoint>, UpstreamError>;
    /// Every transaction paying or spending `script`.
    fn history(&self, script: &Script) -> Result<Vec<HistoryEntry>, UpstreamError>;
    /// The height of the best block.
    fn tip_height(&self) -> Result<u32, UpstreamError>;
}

/// What became of an input the server no longer lists as unspent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spender {
    /// The transaction that spent it.
    pub txid: Txid,
    /// Its block height; `None` in the mempool.
    pub height: Option<u32>,
}

/// Finds the transaction in `script`'s history that spends `outpoint`.
pub fn find_spender(
    upstream: &dyn Upstream,
    outpoint: &OutPoint,
    script: &Script,
) -> Result<Option<Spender>, UpstreamError> {
    for entry in upstream.history(script)? {
        if entry.txid == outpoint.txid {
            continue;
        }
        let tx = upstream.transaction(&entry.txid)?;
        if tx.input.iter().any(|i| i.previous_output == *outpoint) {
            return Ok(Some(Spender {
                txid: entry.txid,
                height: entry.height,
            }));
        }
    }
    Ok(None)
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

    fn unspent(&self, script: &Script) -> Result<Vec<OutPoint>, UpstreamError> {
        let list =
            self.client()?
                .script_list_unspent(script)
                .map_err(|e| UpstreamError::Query {
                    query: "blockchain.scripthash.listunspent",
                    reason: e.to_string(),
                })?;
        Ok(list
            .into_iter()
            .filter_map(|u| Some(OutPoint::new(u.tx_hash, u32::try_from(u.tx_pos).ok()?)))
            .collect())
    }

    fn history(&self, script: &Script) -> Result<Vec<HistoryEntry>, UpstreamError> {
        let list = self
            .client()?
            .script_get_history(script)
            .map_err(|e| UpstreamError::Query {
                query: "blockchain.scripthash.get_history",
                reason: e.to_string(),
            })?;
        Ok(list
            .into_iter()
            .map(|h| HistoryEntry {
                txid: h.tx_hash,
                // Electrum's protocol: 0 in the mempool, -1 in the mempool with an
                // unconfirmed parent, the block height otherwise.
                height: u32::try_from(h.height).ok().filter(|h| *h > 0),
            })
            .collect())
    }

    fn tip_height(&self) -> Result<u32, UpstreamError> {
        let tip = self
            .client()?
            .block_headers_subscribe()
            .map_err(|e| UpstreamError::Query {
                query: "blockchain.headers.subscribe",
                reason: e.to_string(),
            })?;
        u32::try_from(tip.height).map_err(|e| UpstreamError::Query {
            query: "blockchain.headers.subscribe",
            reason: e.to_string(),
        })
    }
}
