//! satcosign's ground bridge.
//!
//! Stock Electrum (with the satcosign plugin) and scripts talk JSON-RPC to the bridge, over
//! Electrum's own line protocol on TCP/TLS or over HTTP and WebSocket. The bridge keeps the
//! cosigner-pool mailboxes in redb, and (as later parts land) gates signing requests by
//! email and relays them over the radio link to the satellite cosigner.
//!
//! Modules, one concept each:
//! - [`config`]: the TOML configuration, checked at load;
//! - [`rpc`]: the JSON-RPC methods (one `RpcModule` for every transport);
//! - [`rpc_error`]: every JSON-RPC error code the bridge sends;
//! - [`dispatch`]: JSON-RPC over Electrum protocol lines (batches, notifications);
//! - [`electrum_tcp`]: the Electrum TCP/TLS listener; [`tls`]: its certificates;
//! - [`http`]: the HTTP + WebSocket listener and plain HTTP routes;
//! - [`push`]: Electrum-style server pushes;
//! - [`mailbox`]: cosigner-pool semantics; [`store`]: redb with group commit.

pub mod config;
pub mod dispatch;
pub mod electrum_tcp;
pub mod http;
pub mod mailbox;
pub mod push;
pub mod rpc;
pub mod rpc_error;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::mailbox::Mailbox;
use crate::store::{Store, StoreError};

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// Directory asked for.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A started bridge: where it listens, and the handles that keep it running.
pub struct RunningBridge {
    /// Electrum plain TCP address, if enabled.
    pub electrum_tcp: Option<SocketAddr>,
    /// Electrum TLS address, if enabled.
    pub electrum_tls: Option<SocketAddr>,
    /// HTTP + WebSocket address, if enabled.
    pub http: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    http_handle: Option<jsonrpsee::server::ServerHandle>,
}

impl RunningBridge {
    /// Stops every listener and background task.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(h) = self.http_handle {
            let _ = h.stop();
            h.stopped().await;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts the bridge described by `config` and returns once every listener is bound.
pub async fn start(config: &Config) -> Result<RunningBridge, StartError> {
    config.check()?;
    let listeners = config.listeners()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let db_path = config.database_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
        .await
        .map_err(|e| StoreError::Database(e.to_string()))??;
    let mailbox = Mailbox::new(
        store,
        Duration::from_secs(config.mailbox.ttl_secs),
        config.mailbox.max_message_bytes,
    );
    let mut tasks = vec![mailbox.spawn_sweeper()];

    let module = rpc::build_module(rpc::ApiContext {
        network: config.network,
        banner: config.banner.clone(),
        donation_address: config.donation_address.clone(),
        mailbox,
    });
    let methods: jsonrpsee::Methods = module.into();
    let dispatcher = Dispatcher::new(methods.clone(), config.electrum.max_batch);
    let limits = electrum_tcp::Limits {
        max_line_bytes: config.electrum.max_line_bytes,
        idle_timeout: Duration::from_secs(config.electrum.idle_timeout_secs),
    };
    let connections = Arc::new(tokio::sync::Semaphore::new(config.electrum.max_connections));

    let mut running = RunningBridge {
        electrum_tcp: None,
        electrum_tls: None,
        http: None,
        tasks: Vec::new(),
        http_handle: None,
    };
    if let Some(addr) = listeners.electrum_tcp {
        let listener = bind("electrum tcp", addr).await?;
        running.electrum_tcp = listener.local_addr().ok();
        tasks.push(tokio::spawn(electrum_tcp::serve(
            listener,
            None,
            dispatcher.clone(),
            limits,
            connections.clone(),
        )));
    }
    if let Some(addr) = listeners.electrum_tls {
        let (Some(cert), Some(key)) = (&config.electrum.tls_cert, &config.electrum.tls_key) else {
            unreachable!("Config::check requires tls_cert and tls_key with a TLS listener");
        };
        let acceptor = tls::acceptor(cert, key)?;
        let listener = bind("electrum tls", addr).await?;
        running.electrum_tls = listener.local_addr().ok();
        tasks.push(tokio::spawn(electrum_tcp::serve(
            listener,
            Some(acceptor),
            dispatcher.clone(),
            limits,
            connections.clone(),
        )));
    }
    if let Some(addr) = listeners.http {
        let (handle, local) = http::start(addr, &config.http, methods.clone())
            .await
            .map_err(|source| StartError::Bind {
                what: "http",
                addr,
                source,
            })?;
        running.http = Some(local);
        running.http_handle = Some(handle);
    }
    running.tasks = tasks;
    tracing::info!(
        electrum_tcp = ?running.electrum_tcp,
        electrum_tls = ?running.electrum_tls,
        http = ?running.http,
        data_dir = %config.data_dir.display(),
        network = ?config.network,
        "bridge started"
    );
    Ok(running)
}

/// Runs the bridge until SIGINT or SIGTERM. `on_ready` is told where it listens.
pub async fn run(config: Config, on_ready: impl FnOnce(&RunningBridge)) -> Result<(), StartError> {
    let running = start(&config).await?;
    on_ready(&running);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
