//! The embedded system of `satcosign-bridge dev` and `demo`: the bridge with redb in its
//! data directory, mail written as `.eml` files, and a cosigner in the same process behind
//! a simulated radio link with a pass schedule. Nothing outside the process is needed.
//!
//! The cosigner keeps its own key, database and link identity under `<data_dir>/cosigner`,
//! exactly as the satellite would; only the simulated channel joins the two.

use std::sync::Arc;
use std::time::Duration;

use satcosign_cosigner::daemon::{Cosigner, Settings};
use satcosign_cosigner::decision::Rules;
use satcosign_cosigner::keys::{create_key_file, load_key_file, CosignerKey};
use satcosign_link::crypto::Identity;
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::link::LinkHandle;
use satcosign_link::store::RedbStore;
use satcosign_link::transport::sim::{Loss, Passes, SimChannel, SimConfig, SimTransport};

use crate::config::Config;
use crate::ground::LinkFactory;
use crate::{start_on, Linked, RunningBridge, SatelliteLink, StartError};

/// The simulated sky.
#[derive(Debug, Clone, Copy)]
pub struct Sky {
    /// Time in view per period.
    pub pass_up: Duration,
    /// Pass period.
    pub pass_period: Duration,
    /// Frame loss on the channel (0..1).
    pub loss: f64,
    /// Bit rate.
    pub bitrate: u64,
    /// How long after start the first pass begins (zero: in view at once).
    pub first_pass_in: Duration,
}

impl Default for Sky {
    fn default() -> Self {
        Sky {
            pass_up: Duration::from_secs(60),
            pass_period: Duration::from_secs(120),
            loss: 0.0,
            bitrate: 9600,
            first_pass_in: Duration::ZERO,
        }
    }
}

/// A running embedded system.
pub struct DevSystem {
    /// The bridge.
    pub bridge: RunningBridge,
    /// The in-process cosigner.
    pub cosigner: Arc<Cosigner>,
    /// The cosigner's key (the demo builds its wallet with it).
    pub cosigner_key_seed: [u8; 32],
    /// Where mail goes.
    pub mail_dir: std::path::PathBuf,
    /// The simulated channel (its air statistics).
    pub channel: SimChannel,
    /// Builds the ground's side of the link.
    link: LinkFactory<SimTransport>,
    /// The bridge's configuration, as started.
    config: Config,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The satellite side's link store, released at stop.
    sat_store: crate::store::Released,
    cosigner_dir: std::path::PathBuf,
}

impl DevSystem {
    /// Starts another replica of the bridge on the same PostgreSQL database, keys and
    /// satellite, with `edit` applied to the configuration (its listeners are on free
    /// ports). It serves at once, and drives the link when it takes the ground lease.
    pub async fn replica(
        &self,
        edit: impl FnOnce(&mut Config),
    ) -> Result<RunningBridge, StartError> {
        let mut config = self.config.clone();
        config.electrum.tcp = "127.0.0.1:0".into();
        config.http.listen = "127.0.0.1:0".into();
        if !config.nostr.listen.is_empty() {
            config.nostr.listen = "127.0.0.1:0".into();
        }
        edit(&mut config);
        start_on(
            &config,
            Some(Linked {
                build: self.link.clone(),
                mailer: None,
                own_schedule: true,
            }),
            None,
        )
        .await
    }

    /// Stops the bridge and the cosigner.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.bridge.stop().await;
        for t in self.tasks {
            let _ = t.await;
        }
        // The cosigner's databases, once its link service (and link) have let go of them.
        let cosigner = crate::store::Released::of(Arc::downgrade(&self.cosigner))
            .file(self.cosigner_dir.join("cosigner.redb"));
        drop(self.cosigner);
        for (what, db) in [
            ("cosigner.redb", cosigner),
            ("cosigner/link.redb", self.sat_store),
        ] {
            if !db.wait(std::time::Duration::from_secs(10)).await {
                tracing::warn!(database = what, "still held 10 s after stop");
            }
        }
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> StartError {
    StartError::Link(format!("{what}: {e}"))
}

fn network_kind(n: bitcoin::Network) -> bitcoin::NetworkKind {
    bitcoin::NetworkKind::from(n)
}

/// Refuses a data folder inside a git work tree that does not ignore it: it holds the
/// cosigner's seed, the link keys and the mailbox key, and one `git add .` would publish them.
pub fn check_data_dir_not_in_git(data_dir: &std::path::Path) -> Result<(), StartError> {
    let abs = std::path::absolute(data_dir).map_err(|e| err("data directory", e))?;
    let Some(top) = abs.ancestors().find(|a| a.join(".git").exists()) else {
        return Ok(());
    };
    let ignored = std::process::Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["check-ignore", "-q", "--no-index"])
        // A file inside it: a `dir/` rule matches that whether or not the folder exists yet.
        .arg(abs.join("cosigner"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match ignored {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(StartError::DataDirInGit {
            data_dir: abs.display().to_string(),
            work_tree: top.display().to_string(),
        }),
        Err(e) => {
            tracing::warn!(data_dir = %abs.display(), work_tree = %top.display(), error = %e,
                "the data folder is inside a git work tree and git could not be asked whether \
                 it is ignored: make sure it is, since it holds keys");
            Ok(())
        }
    }
}

/// Starts the bridge and an in-process cosigner over the simulated link.
pub async fn start_dev(config: Config, sky: Sky) -> Result<DevSystem, StartError> {
    start_dev_with(config, sky, None).await
}

/// As [`start_dev`], with a mailer in place of the configured one.
pub async fn start_dev_with(
    config: Config,
    sky: Sky,
    mailer: Option<Box<dyn crate::mail::Mailer>>,
) -> Result<DevSystem, StartError> {
    start_dev_full(config, sky, mailer, None).await
}

/// Alters each of the in-process satellite's answers before it goes down the link.
pub type AnswerFilter = Arc<dyn Fn(Vec<u8>) -> Vec<u8> + Send + Sync>;

/// As [`start_dev`], with a satellite that passes each answer through `alter` (tests of a
/// satellite that misbehaves: the ground must refuse what it cannot verify).
pub async fn start_dev_misbehaving(
    config: Config,
    sky: Sky,
    alter: AnswerFilter,
) -> Result<DevSystem, StartError> {
    start_dev_full(config, sky, None, Some(alter)).await
}

async fn start_dev_full(
    mut config: Config,
    sky: Sky,
    mailer: Option<Box<dyn crate::mail::Mailer>>,
    alter: Option<AnswerFilter>,
) -> Result<DevSystem, StartError> {
    check_data_dir_not_in_git(&config.data_dir)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| err("data directory", e))?;
    let cdir = config.data_dir.join("cosigner");
    std::fs::create_dir_all(&cdir).map_err(|e| err("cosigner directory", e))?;
    let key_path = cdir.join("cosigner.key");
    let seed = if key_path.exists() {
        load_key_file(&key_path)
    } else {
        create_key_file(&key_path)
    }
    .map_err(|e| err("cosigner key", e))?;
    let network = config.network.to_bitcoin();
    let key =
        CosignerKey::from_seed(&seed, network_kind(network)).map_err(|e| err("cosigner key", e))?;
    let cosigner_link_path = cdir.join("link.key");
    let cosigner_identity = if cosigner_link_path.exists() {
        Identity::load_file(&cosigner_link_path)
    } else {
        Identity::create_file(&cosigner_link_path)
    }
    .map_err(|e| err("cosigner link key", e))?;
    let bridge_identity = crate::link_identity(&config)?;
    config.satellite.account_key = key.descriptor_key();
    config.satellite.link_public_key = hex::encode(cosigner_identity.public());
    config.satellite.bitrate = sky.bitrate;
    config.satellite.expected_loss = sky.loss.min(0.45);

    let cosigner = Arc::new(
        Cosigner::open(
            key,
            &cdir.join("cosigner.redb"),
            Settings {
                network,
                rules: Rules {
                    approval_max_age_secs: 7 * 24 * 3600,
                    clock_skew_secs: 300,
                },
                policy_loosen_delay_secs: 24 * 3600,
            },
        )
        .map_err(|e| err("cosigner database", e))?,
    );

    let channel = SimChannel::new(SimConfig {
        bitrate: sky.bitrate,
        loss: Loss::Bernoulli(sky.loss),
        passes: Some(Passes {
            up: sky.pass_up,
            period: sky.pass_period,
        }),
        first_pass_in: sky.first_pass_in,
        seed: u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()) ^ 0x5a71,
        ..SimConfig::default()
    });
    // Both ends know the passes: the ground from orbit predictions, the satellite from its
    // own (here, the channel's schedule itself).
    let schedule = channel.schedule();

    // The satellite's side of the link.
    let sat_store = Arc::new(
        RedbStore::open(&cdir.join("link.redb")).map_err(|e| err("cosigner link store", e))?,
    );
    let sat_store_released =
        crate::store::Released::of(Arc::downgrade(&sat_store)).file(cdir.join("link.redb"));
    let sat_cipher =
        satcosign_link::crypto::Cipher::new(&cosigner_identity, &bridge_identity.public());
    let mut sat_engine = Engine::new(
        EngineConfig {
            mtu: config.satellite.mtu,
            bitrate: sky.bitrate,
            expected_loss: config.satellite.expected_loss,
            ..EngineConfig::default()
        },
        sat_cipher,
        sat_store,
        // Unlike the bridge's 1.0: the two sides' timers must not run in step, or on a
        // half-duplex channel they would keep transmitting over each other.
        1.37,
    )
    .map_err(|e| err("cosigner link", e))?;
    sat_engine.set_schedule(schedule.clone());
    let sat_link = Arc::new(LinkHandle::spawn(sat_engine, channel.attach(1)));
    let serve = tokio::spawn({
        let cosigner = cosigner.clone();
        async move {
            let alter = move |answer: Vec<u8>| match &alter {
                Some(f) => f(answer),
                None => answer,
            };
            if let Err(e) = satcosign_cosigner::link_service::serve_on_clock(
                cosigner,
                sat_link,
                alter,
                crate::service::unix_now,
            )
            .await
            {
                tracing::warn!(error = %e, "cosigner link service stopped");
            }
        }
    });

    let mail_dir = config
        .email
        .dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("mail"));
    // The ground's side: attached each time the bridge takes the ground (a restart of its
    // radio), by whichever replica holds it.
    let link: LinkFactory<SimTransport> = {
        let (channel, peer, config) = (channel.clone(), cosigner_identity.public(), config.clone());
        Arc::new(move || {
            let link = crate::link_identity(&config).map(|identity| SatelliteLink {
                transport: channel.attach(0),
                identity,
                peer,
                schedule: schedule.clone(),
                mailer: None,
                stations: None,
            });
            Box::pin(async move { link })
        })
    };
    drop(bridge_identity);
    let bridge = start_on(
        &config,
        Some(Linked {
            build: link.clone(),
            mailer,
            own_schedule: true,
        }),
        None,
    )
    .await?;
    Ok(DevSystem {
        bridge,
        cosigner,
        cosigner_key_seed: seed,
        mail_dir,
        channel,
        link,
        config,
        tasks: vec![serve],
        sat_store: sat_store_released,
        cosigner_dir: cdir,
    })
}

/// Moves the bridge's clock (requests, codes, mailbox messages, Nostr events) ahead by `by`,
/// for tests of what happens over days. It is one clock per process: a test that uses it
/// runs alone in its own test binary.
pub fn advance_clock(by: std::time::Duration) {
    let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    crate::mailbox::CLOCK_AHEAD_MS.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_folder_in_git_must_be_ignored() {
        let repo = tempfile::tempdir().expect("tempdir");
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(repo.path())
                .args(args)
                .output()
                .expect("git")
        };
        assert!(git(&["init", "-q"]).status.success());
        let data = repo.path().join("satcosign-data");
        let e = check_data_dir_not_in_git(&data).expect_err("not ignored");
        assert!(e.to_string().contains(".gitignore"), "{e}");
        std::fs::write(repo.path().join(".gitignore"), "satcosign-data/\n").expect("write");
        check_data_dir_not_in_git(&data).expect("ignored now");
        let outside = tempfile::tempdir().expect("tempdir");
        check_data_dir_not_in_git(outside.path()).expect("not in a work tree");
    }
}
