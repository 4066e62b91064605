//! How the bridge reaches the satellite: the [`SatelliteLink`] a start is given, the
//! [`Linked`] factory that builds it each time the bridge takes the ground (see
//! [`crate::ground`]), and [`start`], which builds it from `[satellite]` (several ground
//! stations, a KISS TNC over TCP, or UDP), so a standby binds no radio.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::ground::{self, LinkFactory};
use crate::ground_stations;
use crate::{key_files, mail, open_store, start_on, RunningBridge, StartError};

/// The radio link to the satellite, as [`crate::start_with`] takes it.
pub struct SatelliteLink<T> {
    /// The transport (UDP, KISS, simulated).
    pub transport: T,
    /// The bridge's link identity.
    pub identity: satcosign_link::crypto::Identity,
    /// The cosigner's link public key.
    pub peer: [u8; 32],
    /// When the satellite is in view ([`Schedule::Always`] where nothing is predicted): the
    /// link transmits only in passes, and `satellite.info` shows them.
    ///
    /// [`Schedule::Always`]: satcosign_link::schedule::Schedule::Always
    pub schedule: satcosign_link::schedule::Schedule,
    /// A mailer to use instead of the configured one (benchmarks).
    pub mailer: Option<Box<dyn mail::Mailer>>,
    /// When `transport` is several ground stations with their own radios: their view, so
    /// that each is told its own passes (in the order of `[[satellite.orbit.stations]]`).
    pub stations: Option<satcosign_link::transport::stations::StationsView>,
}

impl<T> SatelliteLink<T> {
    /// A link over `transport` to the cosigner with link key `peer`, no pass predictions,
    /// the configured mailer.
    pub fn new(transport: T, identity: satcosign_link::crypto::Identity, peer: [u8; 32]) -> Self {
        SatelliteLink {
            transport,
            identity,
            peer,
            schedule: satcosign_link::schedule::Schedule::Always,
            mailer: None,
            stations: None,
        }
    }
}

/// The link as a start takes it: built when the bridge takes the ground, again after a
/// lost lease is taken back.
pub struct Linked<T> {
    /// Builds the link.
    pub build: LinkFactory<T>,
    /// A mailer to use instead of the configured one.
    pub mailer: Option<Box<dyn mail::Mailer>>,
    /// Whether the links built bring their own schedule (then no passes are predicted
    /// from the orbit).
    pub own_schedule: bool,
}

impl<T: Send + 'static> Linked<T> {
    /// A link built once, by the caller (an in-process transport).
    pub fn once(mut link: SatelliteLink<T>) -> Linked<T> {
        Linked {
            mailer: link.mailer.take(),
            own_schedule: link.schedule != satcosign_link::schedule::Schedule::Always,
            build: ground::once(link),
        }
    }

    /// A link that `build` makes, with the configured mailer and the orbit's passes.
    pub fn built_by(build: LinkFactory<T>) -> Linked<T> {
        Linked {
            build,
            mailer: None,
            own_schedule: false,
        }
    }
}

/// Starts the bridge described by `config` (its link from `[satellite]`) and returns once
/// every listener is bound; the radio's transport is bound when the bridge takes the ground.
pub async fn start(config: &Config) -> Result<RunningBridge, StartError> {
    use satcosign_link::transport::{kiss, udp::UdpTransport};
    config.check()?;
    let opened = Some(open_store(config).await?);
    if config.satellite.account_key.is_empty() {
        return start_on::<UdpTransport>(config, None, opened).await;
    }
    let peer =
        satcosign_link::crypto::parse_public(&config.satellite.link_public_key).map_err(|_| {
            StartError::Link(
                "satellite.link_public_key is needed (printed by `satcosign-cosigner init`)".into(),
            )
        })?;
    // The identity is read now, so a bad key file stops the start.
    key_files::link_identity(config)?;
    let shared = Arc::new(config.clone());
    let identity = {
        let config = shared.clone();
        move || key_files::link_identity(&config)
    };
    if ground_stations::own_radios(config)? {
        let settings = shared.clone();
        let build: LinkFactory<_> = Arc::new(move || {
            let (config, identity) = (settings.clone(), identity.clone());
            Box::pin(async move {
                let stations = ground_stations::connect(&config)
                    .await?
                    .ok_or_else(|| StartError::Link("no ground station has a radio".into()))?;
                let view = stations.view();
                let mut link = SatelliteLink::new(stations, identity()?, peer);
                link.stations = Some(view);
                Ok(link)
            })
        });
        return start_on(config, Some(Linked::built_by(build)), opened).await;
    }
    match config.satellite.transport.as_str() {
        "kiss-tcp" => {
            let me = kiss::Callsign::new("GROUND", 0)
                .ok_or_else(|| StartError::Link("callsign".into()))?;
            let sat =
                kiss::Callsign::new("SAT", 0).ok_or_else(|| StartError::Link("callsign".into()))?;
            let settings = shared.clone();
            let build: LinkFactory<_> = Arc::new(move || {
                let (config, identity) = (settings.clone(), identity.clone());
                let (me, sat) = (me.clone(), sat.clone());
                Box::pin(async move {
                    let tnc = &config.satellite.kiss_tcp;
                    let t = kiss::KissTransport::connect_tcp(tnc, me, sat)
                        .await
                        .map_err(|e| {
                            StartError::Link(format!("cannot reach the TNC at {tnc}: {e}"))
                        })?;
                    Ok(SatelliteLink::new(t, identity()?, peer))
                })
            });
            start_on(config, Some(Linked::built_by(build)), opened).await
        }
        _ => {
            let parse = |key: &str, v: &str| {
                v.parse::<SocketAddr>()
                    .map_err(|e| StartError::Link(format!("{key} `{v}`: {e}")))
            };
            let bind = parse("satellite.udp_bind", &config.satellite.udp_bind)?;
            let to = parse("satellite.udp_peer", &config.satellite.udp_peer)?;
            let build: LinkFactory<_> = Arc::new(move || {
                let identity = identity.clone();
                Box::pin(async move {
                    let t = UdpTransport::connect(bind, to)
                        .await
                        .map_err(|e| StartError::Link(format!("udp {bind}: {e}")))?;
                    Ok(SatelliteLink::new(t, identity()?, peer))
                })
            });
            start_on(config, Some(Linked::built_by(build)), opened).await
        }
    }
}
