//! The upstream Electrum server (electrs, Fulcrum, ElectrumX), reached with the
//! `electrum-client` crate: previous transactions for PSBTs that lack them, whether the
//! inputs are still unspent (and what spent them), the broadcast of final transactions, and
//! where a broadcast transaction stands on the chain (see [`crate::watch`]).
//!
//! The client is blocking; callers run it on tokio's blocking pool. One connection is kept
//! and shared (the watch asks about every broadcast transaction each round); a call that
//! fails drops it, and the next call connects afresh, so a restarted server never leaves
//! the bridge holding a dead socket.
//!
//! `ssl://` servers are reached with the bridge's own rustls (the ring provider, the web's
//! root certificates), and `electrum-client` is built without TLS of its own: its
//! `use-rustls-ring` feature turns on rustls's default provider too (aws-lc-rs; upstream's
//! rust-electrum-client#219), which the ground bridge must not carry.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{OutPoint, Script, Transaction, Txid};
use electrum_client::raw_client::RawClient;
use electrum_client::ElectrumApi as _;

/// How long a connection attempt, a read or a write may take.
const TIMEOUT: Duration = Duration::from_secs(20);

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

/// How the last calls to the upstream server went, for `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamState {
    /// When a call last succeeded (or the server answered with its own error), unix seconds.
    pub last_ok_at: Option<u64>,
    /// Why the last call failed to reach the server, if it did.
    pub last_error: Option<String>,
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
    /// How the last calls went (`/health`); a server that keeps no record says nothing.
    fn state(&self) -> UpstreamState {
        UpstreamState::default()
    }
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
    connection: std::sync::Mutex<Option<Arc<Connection>>>,
    state: std::sync::Mutex<UpstreamState>,
}

impl ElectrumUpstream {
    /// A server at `url` (`tcp://host:port` or `ssl://host:port`).
    pub fn new(url: &str) -> ElectrumUpstream {
        ElectrumUpstream {
            url: url.to_owned(),
            connection: std::sync::Mutex::new(None),
            state: std::sync::Mutex::new(UpstreamState::default()),
        }
    }

    fn client(&self) -> Result<Arc<Connection>, UpstreamError> {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(connect(&self.url).map_err(|reason| UpstreamError::Connect {
            url: self.url.clone(),
            reason,
        })?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` on the shared connection. The server's own error answers (an unknown
    /// transaction, a refused broadcast) keep it; any other failure drops it for the next
    /// call.
    fn with<T>(
        &self,
        call: impl FnOnce(&Connection) -> Result<T, electrum_client::Error>,
    ) -> Result<Result<T, String>, UpstreamError> {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                self.note(Err(e.to_string()));
                return Err(e);
            }
        };
        let result = call(&client);
        match &result {
            Err(e) if !matches!(e, electrum_client::Error::Protocol(_)) => {
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.note(Err(e.to_string()));
            }
            _ => self.note(Ok(())),
        }
        Ok(result.map_err(|e| e.to_string()))
    }

    fn note(&self, reached: Result<(), String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match reached {
            Ok(()) => {
                state.last_ok_at = Some(crate::service::unix_now());
                state.last_error = None;
            }
            Err(e) => state.last_error = Some(e),
        }
    }
}

impl Upstream for ElectrumUpstream {
    fn state(&self) -> UpstreamState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn transaction(&self, txid: &Txid) -> Result<Transaction, UpstreamError> {
        self.with(|c| c.transaction_get(txid))?
            .map_err(|reason| UpstreamError::Missing {
                txid: *txid,
                reason,
            })
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, UpstreamError> {
        self.with(|c| c.transaction_broadcast(tx))?
            .map_err(UpstreamError::Broadcast)
    }

    fn unspent(&self, script: &Script) -> Result<Vec<OutPoint>, UpstreamError> {
        let list = self
            .with(|c| c.script_list_unspent(script))?
            .map_err(|reason| UpstreamError::Query {
                query: "blockchain.scripthash.listunspent",
                reason,
            })?;
        Ok(list
            .into_iter()
            .filter_map(|u| Some(OutPoint::new(u.tx_hash, u32::try_from(u.tx_pos).ok()?)))
            .collect())
    }

    fn history(&self, script: &Script) -> Result<Vec<HistoryEntry>, UpstreamError> {
        let list = self
            .with(|c| c.script_get_history(script))?
            .map_err(|reason| UpstreamError::Query {
                query: "blockchain.scripthash.get_history",
                reason,
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
            .with(|c| {
                let tip = c.block_headers_subscribe()?;
                // The subscription queues a notification per block on this long-lived
                // connection: drop them, the next round asks again.
                while let Ok(Some(_)) = c.block_headers_pop() {}
                Ok(tip)
            })?
            .map_err(|reason| UpstreamError::Query {
                query: "blockchain.headers.subscribe",
                reason,
            })?;
        u32::try_from(tip.height).map_err(|e| UpstreamError::Query {
            query: "blockchain.headers.subscribe",
            reason: e.to_string(),
        })
    }
}

/// A connection to the upstream server.
type Connection = RawClient<UpstreamStream>;

/// The socket under a [`Connection`]: plain, or TLS by the bridge's rustls.
enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for UpstreamStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf),
            UpstreamStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for UpstreamStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf),
            UpstreamStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush(),
            UpstreamStream::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `url` (`tcp://host:port` or `ssl://host:port`, checked at config load);
/// the error says why not.
fn connect(url: &str) -> Result<Connection, String> {
    let (tls, host_port) = match (url.strip_prefix("tcp://"), url.strip_prefix("ssl://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err("the address must start with tcp:// or ssl://".into()),
    };
    let addrs: Vec<_> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
        .collect();
    let mut last = format!("{host_port} resolves to no address");
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| tcp.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    if !tls {
        return Ok(RawClient::from(UpstreamStream::Plain(tcp)));
    }
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a server name: {e}"))?;
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let session =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| format!("TLS: {e}"))?;
    Ok(RawClient::from(UpstreamStream::Tls(Box::new(
        rustls::StreamOwned::new(session, tcp),
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `ssl://` server whose certificate no public authority signed is refused during
    /// the handshake, with the reason, and nothing is asked of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ssl_server_with_an_untrusted_certificate_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("cert file");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key file");
        let acceptor = crate::tls::acceptor(&cert_path, &key_path).expect("acceptor");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            // The client gives up in the handshake: nothing is ever read past it.
            acceptor.accept(tcp).await.is_ok()
        });
        let upstream = ElectrumUpstream::new(&format!("ssl://localhost:{port}"));
        let err = tokio::task::spawn_blocking(move || {
            let e = upstream.tip_height().expect_err("untrusted");
            (e, upstream.state())
        })
        .await
        .expect("join");
        let (e, state) = err;
        assert!(e.to_string().contains("certificate"), "{e}");
        assert!(
            state.last_error.is_some_and(|r| r.contains("certificate")),
            "/health says why"
        );
        assert!(!served.await.expect("join"), "no TLS session was made");
    }
}
