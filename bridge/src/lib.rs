//! satcosign's ground bridge.
//!
//! Stock Electrum (with the satcosign plugin) and scripts talk JSON-RPC to the bridge, over
//! Electrum's own line protocol on TCP/TLS or over HTTP and WebSocket. The bridge keeps the
//! cosigner-pool mailboxes in redb, gates every signing request and wallet change by email,
//! and relays confirmed ones over the radio link to the satellite cosigner.
//!
//! Modules, one concept each:
//! - [`config`]: the TOML configuration, checked at load; [`cli`]: the command line the two
//!   binaries share (`satcosign-bridge`, and `satcosign-dev` with the `dev` feature);
//! - [`rpc`]: the JSON-RPC methods (one `RpcModule` for every transport), with
//!   [`rpc_signing`] for `satellite.*`, `wallet.*` and `request.*`;
//! - [`rpc_error`]: every JSON-RPC error code the bridge sends;
//! - [`dispatch`]: JSON-RPC over Electrum protocol lines (batches, notifications);
//! - [`electrum_tcp`]: the Electrum TCP/TLS listener; [`tls`]: its certificates;
//! - [`http`]: the HTTP + WebSocket listener and the confirmation pages; [`health`]:
//!   `/health` part by part; [`metrics`]: `/metrics`; [`status_page`]: the operator's
//!   `/status` page;
//! - [`push`]: Electrum-style server pushes; [`follow`]: what a request's subscribers are
//!   sent; [`views`]: wallets and requests as clients see them;
//! - [`admission`]: connection caps with a share per peer; [`read_rate`]: a read rate per
//!   peer across every listener;
//! - [`mailbox`]: cosigner-pool semantics, over [`mailbox_rows`]: its backends, [`store`]
//!   (redb with group commit, the default) and [`postgres`];
//! - [`ecies`]: Electrum's BIE1 encryption of mailbox messages; [`key_files`]: the
//!   bridge's own secret files (mailbox key, link identity);
//! - [`state`]: wallet and request records; [`lifecycle`]: the one table of request
//!   transitions; [`service`]: what the operations share, with
//!   the operations in [`wallets`], [`intake`] (with [`dry_run`], `request.check`) and
//!   [`approval`]; [`allowance`]: rolling
//!   limits kept in the database;
//! - [`last_violation`]: each wallet's last refused spend, read back;
//! - [`gate`]: confirmation codes; [`notice`]: what emails and pages say; [`mail`]: sending;
//! - [`relay`]: drives requests over the link and delivers outcomes; [`answer`]: checks
//!   the satellite's signatures before they are merged; [`ground`]: the link and the
//!   relay, driven by one replica at a time under a lease; [`peers`]: what replicas on one
//!   PostgreSQL tell each other;
//! - [`wallet_keys`]: the satellite key each wallet gets; [`key_page`]: the `/key` page;
//!   [`cancel_page`]: the `/cancel/<id>` page a hold email links to;
//! - [`nostr_relay`]: the Nostr relay, with [`nostr_message`] for what clients send;
//!   [`nostr_cosigner`]: the satellite's Nostr identities (Electrum 4.6+ with no plugin);
//!   [`nostr_keep`]: answers kept past Electrum's 24-hour window; [`nostr_auth`]: NIP-42;
//! - [`passes`]: the link's passes predicted from the orbit over the ground stations;
//!   [`ground_stations`]: each station's position and radio, as configured;
//!   [`expected`]: when a request should reach the satellite;
//! - [`upstream`]: the upstream Electrum server; [`watch`]: broadcast transactions on the
//!   chain; `dev` and `demo` (the `dev` feature): the embedded system of `satcosign-dev`.

pub mod admission;
pub mod allowance;
pub mod answer;
pub mod approval;
pub mod cancel_page;
pub mod cli;
pub mod config;
#[cfg(feature = "dev")]
pub mod demo;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
pub mod dev_postgres;
pub mod dispatch;
pub mod dry_run;
pub mod ecies;
pub mod electrum_tcp;
pub mod expected;
pub mod follow;
pub mod gate;
pub mod ground;
pub mod ground_stations;
pub mod health;
pub mod http;
pub mod intake;
pub mod key_files;
pub mod key_page;
pub mod last_violation;
pub use key_files::link_identity;
pub mod lifecycle;
pub mod mail;
pub mod mailbox;
pub mod mailbox_rows;
pub mod metrics;
pub mod nostr_auth;
pub mod nostr_cosigner;
pub mod nostr_keep;
pub mod nostr_message;
pub mod nostr_relay;
pub mod notice;
pub mod passes;
pub mod peers;
pub mod postgres;
pub mod push;
pub mod radio;
pub use radio::{start, Linked, SatelliteLink};
pub mod read_rate;
pub mod relay;
pub mod rpc;
pub mod rpc_error;
pub mod rpc_signing;
pub mod service;
pub mod signed_history;
pub mod state;
pub mod status_page;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod views;
pub mod wallet_keys;
pub mod wallets;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::mailbox::Mailbox;
use crate::service::Service;
use crate::store::{Store, StoreError};
use satcosign_cosigner::keys::AccountKey;

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
    /// A key file could not be created or read.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The radio link could not be set up.
    #[error("satellite link: {0}")]
    Link(String),
    /// The data folder would be committed with the keys in it.
    #[error(
        "the data folder {data_dir} is inside the git work tree {work_tree} and not ignored: \
         it will hold the satellite's seed and the link keys. Add it to .gitignore, or choose \
         --data-dir outside the work tree"
    )]
    DataDirInGit {
        /// The data folder.
        data_dir: String,
        /// The work tree it is in.
        work_tree: String,
    },
    /// The mailer could not be set up.
    #[error(transparent)]
    Mail(#[from] mail::MailError),
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
    /// The Nostr relay's address, if enabled.
    pub nostr: Option<SocketAddr>,
    /// The signing service, when a satellite is configured.
    pub service: Option<Arc<Service>>,
    /// The radio link's status, when a satellite is configured.
    pub link_status: Option<rpc::LinkStatusFn>,
    /// Whether this bridge drives the ground (on PostgreSQL, while it holds the lease).
    pub ground: Option<Arc<ground::Ground>>,
    tasks: Vec<JoinHandle<()>>,
    http_handle: Option<jsonrpsee::server::ServerHandle>,
    /// The databases, released once every task holding them has ended.
    databases: Vec<(&'static str, store::Released)>,
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
        // Wait until each task is gone (its state dropped), then until the tasks they
        // started have let go of the databases, so the files can be opened again.
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.service);
        drop(self.link_status);
        drop(self.ground);
        for (what, db) in self.databases {
            if !db.wait(Duration::from_secs(10)).await {
                tracing::warn!(database = what, "still held 10 s after stop");
            }
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// The bridge's store, and what shutdown waits on to release it.
pub(crate) type Opened = (Store, Vec<(&'static str, store::Released)>);

/// Opens the engine `[store]` names (creating the data folder).
pub(crate) async fn open_store(config: &Config) -> Result<Opened, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    match (&config.store.backend, &config.store.url) {
        (config::Backend::Postgres, Some(url)) => {
            let store = Store::connect_postgres(url, config.store.pool_size).await?;
            let released = store.released();
            Ok((store, vec![("postgres", released)]))
        }
        _ => {
            let db_path = config.database_path();
            let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
                .await
                .map_err(|e| StoreError::Database(e.to_string()))??;
            let released = store.released().file(config.database_path());
            Ok((store, vec![("bridge.redb", released)]))
        }
    }
}

/// Starts the bridge with the given link (`None`: mailbox only, no signing service).
pub async fn start_with<T: satcosign_link::transport::Transport>(
    config: &Config,
    link: Option<SatelliteLink<T>>,
) -> Result<RunningBridge, StartError> {
    start_on(config, link.map(Linked::once), None).await
}

/// As [`start_with`], on the store already `opened` (else opens it).
pub(crate) async fn start_on<T: satcosign_link::transport::Transport>(
    config: &Config,
    link: Option<Linked<T>>,
    opened: Option<Opened>,
) -> Result<RunningBridge, StartError> {
    config.check()?;
    let listeners = config.listeners()?;
    let (store, mut databases) = match opened {
        Some(opened) => opened,
        None => open_store(config).await?,
    };
    let mailbox = Mailbox::new(store.clone(), &config.mailbox);
    let mut tasks = vec![mailbox.spawn_sweeper()];
    let caps = admission::ListenerCaps::fit(config);
    let nostr = match listeners.nostr {
        Some(_) => {
            let mut relay_config = config.nostr.clone();
            relay_config.max_connections = caps.nostr;
            relay_config.max_connections_per_peer =
                relay_config.max_connections_per_peer.min(caps.nostr);
            Some(nostr_relay::NostrRelay::open(relay_config, store.clone()).await?)
        }
        None => None,
    };

    let mut service = None;
    let mut ground = None;
    let mut pass_plan = config
        .satellite
        .orbit
        .plan()
        .map_err(|e| StartError::Link(e.to_string()))?
        .map(|p| Arc::new(p.with_saved_elements(config.data_dir.join("elements.tle"))));
    if let (Some(link), false) = (link, config.satellite.account_key.is_empty()) {
        let issuer: AccountKey = config
            .satellite
            .account_key
            .parse()
            .map_err(|e: satcosign_cosigner::keys::KeyError| StartError::Link(e.to_string()))?;
        let public_url = config.email.public_url.clone().unwrap_or_else(|| {
            let listen = config.listeners().ok().and_then(|l| l.http);
            format!(
                "http://{}",
                listen
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "127.0.0.1:8780".into())
            )
        });
        let upstream: Option<Arc<dyn upstream::Upstream>> = (!config.upstream.url.is_empty())
            .then(|| Arc::new(upstream::ElectrumUpstream::new(&config.upstream.url)) as _);
        let svc = Arc::new(Service::new(service::ServiceParts {
            store: store.clone(),
            mailbox: mailbox.clone(),
            mailer: match link.mailer {
                Some(m) => m,
                None => mail::from_config(&config.email, &config.data_dir)?,
            },
            issuer,
            network: config.network.to_bitcoin(),
            mailbox_key: key_files::mailbox_key_of(config)?,
            gate: config.gate.clone(),
            public_url,
            default_policy: config.default_policy.clone(),
            upstream,
        }));
        // Passes from the orbit, unless the caller gave the schedule (dev's simulated sky).
        if link.own_schedule {
            pass_plan = None;
        }
        let held = Arc::new(ground::Ground::default());
        let _ = svc.sky.set(expected::Sky {
            link: held.status_fn(),
            passes: pass_plan.clone(),
            bitrate: config.satellite.bitrate,
            expected_loss: config.satellite.expected_loss,
        });
        // The satellite's Nostr identity takes requests on every replica, and answers
        // deliveries: hook it before the ground resumes any.
        if let Some(nostr) = &nostr {
            nostr_cosigner::NostrCosigner::start(&svc, nostr.clone()).await?;
        }
        let duties = ground::Duties {
            config: config.clone(),
            service: svc.clone(),
            link: link.build,
            passes: pass_plan.clone(),
            ground: held.clone(),
        };
        match store.postgres() {
            Some(pg) => tasks.push(tokio::spawn(
                duties.drive(pg.clone(), Duration::from_secs(config.store.lease_secs)),
            )),
            None => {
                let mut driving = duties.start(None).await?;
                if let Some(file) = driving.released.take() {
                    databases.push(("link.redb", file));
                }
                tasks.extend(driving.into_tasks());
            }
        }
        ground = Some(held);
        service = Some(svc);
    }
    let link_status = ground.as_ref().map(ground::Ground::status_fn);
    // Replicas on one PostgreSQL hear each other's changes.
    if let Some(pg) = store.postgres() {
        let (told, listening) = peers::Peers::start(pg, {
            let (service, nostr) = (service.clone(), nostr.clone());
            move |heard| peers::apply(heard, service.as_ref(), nostr.as_ref())
        });
        tasks.extend(listening);
        if let Some(svc) = &service {
            let _ = svc.peers.set(told.clone());
        }
        if let Some(relay) = &nostr {
            relay.tell_peers(told);
        }
    }

    let module = rpc::build_module(rpc::ApiContext {
        network: config.network,
        banner: config.banner.clone(),
        donation_address: config.donation_address.clone(),
        mailbox,
        service: service.clone(),
        link_status: link_status.clone(),
        passes: pass_plan.clone(),
    });
    let methods: jsonrpsee::Methods = module.into();
    let dispatcher = Dispatcher::new(
        methods.clone(),
        config.electrum.max_batch,
        config.electrum.max_response_bytes,
    );
    let limits = electrum_tcp::Limits {
        max_line_bytes: config.electrum.max_line_bytes,
        idle_timeout: Duration::from_secs(config.electrum.idle_timeout_secs),
        max_unsent_bytes: config.electrum.max_unsent_bytes,
        max_subscriptions: config.electrum.max_subscriptions,
    };
    let read_rates = read_rate::ReadRates::new(
        config.limits.read_bytes_per_second_per_peer,
        config.limits.read_burst_bytes_per_peer,
    );
    let connections = admission::Admission::new(
        caps.electrum,
        config.electrum.max_connections_per_peer.min(caps.electrum),
        ("electrum_connections", "electrum_connections_per_peer"),
    );

    let mut running = RunningBridge {
        electrum_tcp: None,
        electrum_tls: None,
        http: None,
        nostr: None,
        service: service.clone(),
        link_status: link_status.clone(),
        ground: ground.clone(),
        tasks: Vec::new(),
        http_handle: None,
        databases: Vec::new(),
    };
    if let (Some(addr), Some(relay)) = (listeners.nostr, nostr) {
        let listener = bind("nostr", addr).await?;
        running.nostr = listener.local_addr().ok();
        tasks.push(tokio::spawn(relay.serve(listener, read_rates.clone())));
    }
    if let Some(addr) = listeners.electrum_tcp {
        let listener = bind("electrum tcp", addr).await?;
        running.electrum_tcp = listener.local_addr().ok();
        tasks.push(tokio::spawn(electrum_tcp::serve(
            listener,
            None,
            dispatcher.clone(),
            limits,
            connections.clone(),
            read_rates.clone(),
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
            read_rates.clone(),
        )));
    }
    if let Some(addr) = listeners.http {
        let listener = bind("http", addr).await?;
        let server = http::start(
            listener,
            &config::HttpConfig {
                max_connections: u32::try_from(caps.http).unwrap_or(u32::MAX),
                max_connections_per_peer: config
                    .http
                    .max_connections_per_peer
                    .min(u32::try_from(caps.http).unwrap_or(u32::MAX)),
                ..config.http.clone()
            },
            http::RpcLimits {
                max_batch: config.electrum.max_batch,
                max_response_bytes: config.electrum.max_response_bytes,
                max_subscriptions: config.electrum.max_subscriptions,
            },
            methods.clone(),
            service.clone(),
            health::HealthSources {
                store: store.clone(),
                link: link_status,
                ground: ground.clone(),
                upstream: service.as_ref().and_then(|s| s.upstream.clone()),
                passes: pass_plan.clone(),
            },
            running.nostr.map(|a| format!("ws://{a}")),
            read_rates.clone(),
        )
        .map_err(|source| StartError::Bind {
            what: "http",
            addr,
            source,
        })?;
        let (handle, local) = (server.handle, server.local);
        tasks.push(server.accept);
        running.http = Some(local);
        if let (Some(svc), None) = (&service, &config.email.public_url) {
            svc.set_public_url(format!("http://{local}"));
        }
        running.http_handle = Some(handle);
    }
    running.tasks = tasks;
    running.databases = databases;
    tracing::info!(
        electrum_tcp = ?running.electrum_tcp,
        electrum_tls = ?running.electrum_tls,
        http = ?running.http,
        nostr = ?running.nostr,
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

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
