//! The ground: the radio link, and what only one bridge may do at a time because it acts on
//! the world (relaying requests, with their emails, broadcasts and deliveries; watching the
//! chain; following the passes).
//!
//! With redb there is one bridge, and it drives the ground from its start. On PostgreSQL
//! every replica serves clients (JSON-RPC, pages, the Nostr relay), and the one holding the
//! ground lease drives the ground: it builds the link when it takes the lease (so a standby
//! binds no radio), and stops it all when it can no longer be sure it holds the lease; a
//! fencing token checked by every write of the link's state ([`crate::store::fence`]) keeps
//! a replica that lost the lease from writing even if it has not noticed yet. When the
//! holder dies, the server frees the lease and another replica takes it, carrying the link
//! on from its state in the database.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use satcosign_link::link::{LinkHandle, LinkStatus};
use satcosign_link::transport::Transport;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::passes::PassPlan;
use crate::postgres::PgStore;
use crate::relay::Relay;
use crate::rpc::LinkStatusFn;
use crate::service::Service;
use crate::store::fence::Fence;
use crate::store::{LinkRows, LinkState, Released};
use crate::{SatelliteLink, StartError};

/// Builds the radio link, each time this bridge takes the ground.
pub type LinkFactory<T> =
    Arc<dyn Fn() -> BoxFuture<'static, Result<SatelliteLink<T>, StartError>> + Send + Sync>;

/// Whether this bridge drives the ground, and its link's status while it does.
pub struct Ground {
    fence: Arc<Fence>,
    link: RwLock<Option<LinkStatusFn>>,
    held: tokio::sync::watch::Sender<bool>,
}

impl Default for Ground {
    fn default() -> Self {
        Ground {
            fence: Arc::default(),
            link: RwLock::new(None),
            held: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Ground {
    /// Whether this bridge drives the ground now.
    pub fn holds(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until this bridge drives the ground.
    pub async fn taken(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|h| *h).await;
    }

    /// The link's status; on a standby, a link that is not running here.
    pub fn link_status(&self) -> LinkStatus {
        match self.link.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(status) => status(),
            None => LinkStatus::default(),
        }
    }

    /// [`Self::link_status`], as the API and pages take it.
    pub fn status_fn(self: &Arc<Self>) -> LinkStatusFn {
        let me = self.clone();
        Arc::new(move || me.link_status())
    }

    fn set(&self, token: Option<u64>, link: Option<LinkStatusFn>) {
        self.fence.set(token);
        let driving = link.is_some();
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = link;
        self.held.send_replace(driving);
    }
}

/// What the ground is made of, kept to start it again after a lease is lost and retaken.
pub(crate) struct Duties<T> {
    pub config: Config,
    pub service: Arc<Service>,
    pub link: LinkFactory<T>,
    pub passes: Option<Arc<PassPlan>>,
    pub ground: Arc<Ground>,
}

/// The ground's tasks while they run; dropping it stops them (and the link with them).
pub(crate) struct Driving {
    tasks: Vec<JoinHandle<()>>,
    /// `link.redb`, on redb: released once the link has let go of it.
    pub released: Option<Released>,
}

impl Driving {
    /// Stops every task of the ground and waits for them to end.
    async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Hands the tasks over (to a bridge on redb, which stops them itself).
    pub fn into_tasks(mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.tasks)
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl<T: Transport> Duties<T> {
    /// Builds the link over the store's link state and starts the ground's tasks;
    /// `token` is the lease's on PostgreSQL.
    pub(crate) async fn start(&self, token: Option<u64>) -> Result<Driving, StartError> {
        // Every write of the link's state checks this token, from the engine's first.
        self.ground.fence.set(token);
        let link = (self.link)().await?;
        let store = &self.service.store;
        let mut released = None;
        let link_store = match store.postgres() {
            Some(_) => LinkState::Shared(LinkRows::new(store.clone(), self.ground.fence.clone())),
            None => {
                let path = self.config.data_dir.join("link.redb");
                let open = path.clone();
                let file = Arc::new(
                    tokio::task::spawn_blocking(move || {
                        satcosign_link::store::RedbStore::open(&open)
                    })
                    .await
                    .map_err(|e| StartError::Link(e.to_string()))?
                    .map_err(|e| StartError::Link(e.to_string()))?,
                );
                released = Some(Released::of(Arc::downgrade(&file)).file(path));
                LinkState::File(file)
            }
        };
        let cipher = satcosign_link::crypto::Cipher::new(&link.identity, &link.peer);
        let satellite = &self.config.satellite;
        let engine_config = satcosign_link::engine::EngineConfig {
            mtu: satellite.mtu,
            bitrate: satellite.bitrate,
            expected_loss: satellite.expected_loss,
            ..Default::default()
        };
        let mut engine =
            satcosign_link::engine::Engine::new(engine_config, cipher, link_store.clone(), 1.0)
                .map_err(|e| StartError::Link(e.to_string()))?;
        engine.set_schedule(link.schedule);
        let handle = Arc::new(LinkHandle::spawn(engine, link.transport));
        let mut tasks = Vec::new();
        if let Some(plan) = &self.passes {
            if let Some(view) = link.stations {
                plan.attach_radios(view);
            }
            tasks.push(tokio::spawn(crate::passes::run(
                plan.clone(),
                handle.clone(),
            )));
        }
        if let Some(upstream) = self.service.upstream.clone() {
            tasks.push(tokio::spawn(crate::watch::run(
                self.service.clone(),
                upstream,
                self.config.upstream.clone(),
            )));
        }
        let status = handle.clone();
        self.ground
            .set(token, Some(Arc::new(move || status.status())));
        let relay = Relay::new(self.service.clone(), handle, link_store);
        tasks.push(tokio::spawn(relay.run()));
        Ok(Driving { tasks, released })
    }

    /// On PostgreSQL: waits for the ground lease, drives the ground while it is held, and
    /// stands by again when it is lost. Runs until aborted.
    pub(crate) async fn drive(self, pg: PgStore, lease: Duration) {
        loop {
            let token = match pg.take_ground(lease).await {
                Ok(token) => token,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the ground lease yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(token, "took the ground lease: this replica drives the link");
            let retry_after = match self.start(Some(token)).await {
                Ok(driving) => {
                    pg.ground_lost(lease).await;
                    tracing::warn!(token, "lost the ground lease: standing by");
                    self.ground.set(None, None);
                    driving.stop().await;
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "cannot drive the link: letting the lease go for another replica");
                    lease
                }
            };
            self.ground.set(None, None);
            pg.release_ground().await;
            tokio::time::sleep(retry_after).await;
        }
    }
}

/// A link given once (an in-process transport) as a [`LinkFactory`]: built again after a
/// lost lease, it says it cannot be.
pub fn once<T: Send + 'static>(link: SatelliteLink<T>) -> LinkFactory<T> {
    let slot = std::sync::Mutex::new(Some(link));
    Arc::new(move || {
        let link = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            link.ok_or_else(|| {
                StartError::Link(
                    "this link was handed over once, at start; restart the bridge to drive it \
                     again"
                        .into(),
                )
            })
        })
    })
}
