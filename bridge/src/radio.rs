//! How the bridge reaches the satellite: the [`SatelliteLink`] a start is given, and
//! [`start`], which builds it from `[satellite]` (several ground stations, a KISS TNC over
//! TCP, or UDP) once the bridge holds its store, so a standby binds no radio.

use std::net::SocketAddr;

use crate::config::Config;
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

/// Starts the bridge described by `config` (its link from `[satellite]`) and returns once
/// every listener is bound.
pub async fn start(config: &Config) -> Result<RunningBridge, StartError> {
    use satcosign_link::transport::{kiss, udp::UdpTransport};
    config.check()?;
    // A standby waits here, before it binds the radio's transport, until it holds the
    // database.
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
    let identity = key_files::link_identity(config)?;
    if let Some(stations) = ground_stations::connect(config).await? {
        let view = stations.view();
        let mut link = SatelliteLink::new(stations, identity, peer);
        link.stations = Some(view);
        return start_on(config, Some(link), opened).await;
    }
    match config.satellite.transport.as_str() {
        "kiss-tcp" => {
            let me = kiss::Callsign::new("GROUND", 0)
                .ok_or_else(|| StartError::Link("callsign".into()))?;
            let sat =
                kiss::Callsign::new("SAT", 0).ok_or_else(|| StartError::Link("callsign".into()))?;
            let t = kiss::KissTransport::connect_tcp(&config.satellite.kiss_tcp, me, sat)
                .await
                .map_err(|e| {
                    StartError::Link(format!(
                        "cannot reach the TNC at {}: {e}",
                        config.satellite.kiss_tcp
                    ))
                })?;
            start_on(config, Some(SatelliteLink::new(t, identity, peer)), opened).await
        }
        _ => {
            let parse = |key: &str, v: &str| {
                v.parse::<SocketAddr>()
                    .map_err(|e| StartError::Link(format!("{key} `{v}`: {e}")))
            };
            let t = UdpTransport::connect(
                parse("satellite.udp_bind", &config.satellite.udp_bind)?,
                parse("satellite.udp_peer", &config.satellite.udp_peer)?,
            )
            .await
            .map_err(|e| StartError::Link(format!("udp: {e}")))?;
            start_on(config, Some(SatelliteLink::new(t, identity, peer)), opened).await
        }
    }
}
