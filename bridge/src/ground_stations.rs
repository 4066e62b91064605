//! The ground stations as configured (`[[satellite.orbit.stations]]`): each one's position,
//! for the orbit's pass predictions ([`crate::passes`]), and, optionally, its own radio (a
//! KISS TNC over TCP or serial, or UDP), checked at load and connected at start into one
//! [`GroundStations`] transport for the link.

use serde::Deserialize;

use satcosign_link::orbit::Station;

use crate::config::{Config, ConfigError};
use crate::StartError;

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `[[satellite.orbit.stations]]`: one ground station.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Its name (shown to users and operators).
    pub name: String,
    /// Geodetic latitude, degrees, north positive.
    pub latitude_deg: f64,
    /// Longitude, degrees, east positive.
    pub longitude_deg: f64,
    /// Height above the WGS-84 ellipsoid, metres. Default 0.
    #[serde(default)]
    pub altitude_m: f64,
    /// Lowest elevation at which it hears the satellite, degrees. Default 10.
    #[serde(default = "default_min_elevation")]
    pub min_elevation_deg: f64,
    /// Its own radio: `udp` (needs `udp_bind`, `udp_peer`), `kiss-tcp` (needs `kiss_tcp`) or
    /// `kiss-serial` (needs `kiss_serial`, and `serial_baud`, default 9600). Either every
    /// station has one, and the link sends through whichever has the satellite in view, or
    /// none has, and `[satellite]`'s one transport serves them all.
    pub transport: Option<String>,
    /// Local UDP address of this station's radio.
    pub udp_bind: Option<String>,
    /// The station's UDP address.
    pub udp_peer: Option<String>,
    /// The station's KISS TNC over TCP, host:port.
    pub kiss_tcp: Option<String>,
    /// The station's KISS TNC on a serial port (e.g. `/dev/ttyUSB0`).
    pub kiss_serial: Option<String>,
    /// The serial port's speed. Default 9600.
    pub serial_baud: Option<u32>,
}

/// A station's own radio, as its configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StationRadio {
    /// UDP datagrams from `bind` to `peer`.
    Udp {
        /// Local address.
        bind: std::net::SocketAddr,
        /// The station's address.
        peer: std::net::SocketAddr,
    },
    /// A KISS TNC over TCP.
    KissTcp(String),
    /// A KISS TNC on a serial port.
    KissSerial {
        /// The port.
        path: String,
        /// Its speed.
        baud: u32,
    },
}

impl StationRadio {
    /// The kind, as operators read it.
    pub fn kind(&self) -> &'static str {
        match self {
            StationRadio::Udp { .. } => "udp",
            StationRadio::KissTcp(_) => "kiss-tcp",
            StationRadio::KissSerial { .. } => "kiss-serial",
        }
    }
}

fn default_min_elevation() -> f64 {
    10.0
}

impl StationConfig {
    /// Its own radio, checked; `None` when it has none.
    pub fn radio(&self) -> Result<Option<StationRadio>, ConfigError> {
        let key = "satellite.orbit.stations";
        let bad = |reason: String| invalid(key, format!("station `{}`: {reason}", self.name));
        let stray = |allowed: &[&str]| -> Result<(), ConfigError> {
            let given = [
                ("udp_bind", self.udp_bind.is_some()),
                ("udp_peer", self.udp_peer.is_some()),
                ("kiss_tcp", self.kiss_tcp.is_some()),
                ("kiss_serial", self.kiss_serial.is_some()),
                ("serial_baud", self.serial_baud.is_some()),
            ];
            match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
                Some((k, _)) => Err(bad(format!(
                    "`{k}` does not belong to transport `{}`",
                    self.transport.as_deref().unwrap_or("(none)")
                ))),
                None => Ok(()),
            }
        };
        let address =
            |field: &str, v: &Option<String>| -> Result<std::net::SocketAddr, ConfigError> {
                let v = v
                    .as_deref()
                    .ok_or_else(|| bad(format!("transport `udp` needs `{field}`")))?;
                v.parse()
                    .map_err(|e| bad(format!("`{field}` = `{v}`: {e}")))
            };
        match self.transport.as_deref() {
            None => stray(&[]).map(|()| None),
            Some("udp") => {
                stray(&["udp_bind", "udp_peer"])?;
                Ok(Some(StationRadio::Udp {
                    bind: address("udp_bind", &self.udp_bind)?,
                    peer: address("udp_peer", &self.udp_peer)?,
                }))
            }
            Some("kiss-tcp") => {
                stray(&["kiss_tcp"])?;
                match self.kiss_tcp.as_deref() {
                    Some(a)
                        if a.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        }) =>
                    {
                        Ok(Some(StationRadio::KissTcp(a.to_owned())))
                    }
                    Some(a) => Err(bad(format!("`kiss_tcp` = `{a}` is not host:port"))),
                    None => Err(bad("transport `kiss-tcp` needs `kiss_tcp`".into())),
                }
            }
            Some("kiss-serial") => {
                stray(&["kiss_serial", "serial_baud"])?;
                let path = match self.kiss_serial.as_deref() {
                    Some(p) if !p.trim().is_empty() => p.to_owned(),
                    _ => return Err(bad("transport `kiss-serial` needs `kiss_serial`".into())),
                };
                let baud = self.serial_baud.unwrap_or(9600);
                if !(300..=4_000_000).contains(&baud) {
                    return Err(bad(format!(
                        "`serial_baud` = {baud} is not within 300..=4000000"
                    )));
                }
                Ok(Some(StationRadio::KissSerial { path, baud }))
            }
            Some(other) => Err(bad(format!(
                "transport `{other}` is not one of udp, kiss-tcp, kiss-serial"
            ))),
        }
    }

    /// Its position, for pass prediction.
    pub fn station(&self) -> Station {
        Station {
            name: self.name.clone(),
            latitude_deg: self.latitude_deg,
            longitude_deg: self.longitude_deg,
            altitude_m: self.altitude_m,
            min_elevation_deg: self.min_elevation_deg,
        }
    }
}

/// Whether each of `[[satellite.orbit.stations]]` has its own radio (else they share
/// `[satellite]`'s one transport).
pub fn own_radios(config: &Config) -> Result<bool, StartError> {
    let radios = config
        .satellite
        .orbit
        .radios()
        .map_err(|e| StartError::Link(e.to_string()))?;
    Ok(!radios.is_empty() && radios.iter().all(Option::is_some))
}

/// Connects every ground station's own radio, when `[[satellite.orbit.stations]]` give them
/// (`None` when the stations share `[satellite]`'s one transport).
pub async fn connect(
    config: &Config,
) -> Result<Option<satcosign_link::transport::stations::GroundStations>, StartError> {
    use satcosign_link::transport::{kiss, stations::GroundStations, udp::UdpTransport};
    let radios = config
        .satellite
        .orbit
        .radios()
        .map_err(|e| StartError::Link(e.to_string()))?;
    if radios.is_empty() || radios.iter().any(Option::is_none) {
        return Ok(None);
    }
    let callsign = |call: &str| {
        kiss::Callsign::new(call, 0).ok_or_else(|| StartError::Link("callsign".into()))
    };
    let mut stations = GroundStations::new();
    for (station, radio) in config
        .satellite
        .orbit
        .stations
        .iter()
        .zip(radios.into_iter().flatten())
    {
        let name = station.name.as_str();
        let failed = |e: std::io::Error| {
            StartError::Link(format!("ground station `{name}` ({}): {e}", radio.kind()))
        };
        match &radio {
            StationRadio::Udp { bind, peer } => {
                let t = UdpTransport::connect(*bind, *peer).await.map_err(failed)?;
                stations.add(name, radio.kind(), t);
            }
            // A TNC over TCP may be down when the bridge starts, or restart later: the
            // station connects, and connects again, by itself.
            StationRadio::KissTcp(addr) => {
                let t = kiss::KissTcpStation::new(addr, callsign("GROUND")?, callsign("SAT")?);
                stations.add(name, radio.kind(), t);
            }
            StationRadio::KissSerial { path, baud } => {
                let t = kiss::KissTransport::open_serial(
                    path,
                    *baud,
                    callsign("GROUND")?,
                    callsign("SAT")?,
                )
                .map_err(failed)?;
                stations.add(name, radio.kind(), t);
            }
        }
    }
    Ok(Some(stations))
}
