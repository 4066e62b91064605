//! Connection admission: a cap on the open connections of a listener (or of listeners that
//! share one), and a share of it per peer address, so one peer cannot take every slot.
//!
//! A connection over either bound is refused at once (the socket is closed without a
//! word, and the refusal is logged and counted in `/metrics`): accepting never stalls, so
//! the listener keeps serving everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The address of the client a call came from, where the transport knows it (method
/// handlers find it in their `Extensions` for per-client limits). Made by
/// [`ClientAddr::of`], so it is always a [`peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client behind a connection from `ip`.
    pub fn of(ip: IpAddr) -> ClientAddr {
        ClientAddr(peer(ip))
    }
}

/// The peer a connection from `ip` counts against: an IPv4 address (IPv4-mapped IPv6 too),
/// or an IPv6 /64, the block one subscriber is given, so an attacker cannot take a fresh
/// share from each of its 2^64 addresses.
pub fn peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// The bounds of one listener family.
#[derive(Debug)]
pub struct Admission {
    total: Arc<Semaphore>,
    max: usize,
    per_peer: usize,
    peers: Mutex<HashMap<IpAddr, usize>>,
    /// The `/metrics` names of the two limits.
    names: (&'static str, &'static str),
    /// Refusals not yet logged, and when the last log line was written: refusals are
    /// logged at most once a second, as a peer that reconnects in a loop would otherwise
    /// cost a log line per connection.
    unlogged: Mutex<(u64, Option<std::time::Instant>)>,
}

/// One admitted connection: its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut peers = self
            .admission
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken.
    Full,
    /// This peer holds its whole share.
    PeerShare,
}

impl Admission {
    /// At most `max` connections, `per_peer` of them from one address; `names` label the
    /// two limits in `/metrics` (see [`crate::metrics::LIMITS`]).
    pub fn new(max: usize, per_peer: usize, names: (&'static str, &'static str)) -> Arc<Admission> {
        Arc::new(Admission {
            total: Arc::new(Semaphore::new(max)),
            max,
            per_peer: per_peer.min(max),
            peers: Mutex::new(HashMap::new()),
            names,
            unlogged: Mutex::new((0, None)),
        })
    }

    /// Admits a connection from `ip`, or says why not (and counts it).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let ip = peer(ip);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let held = peers.get(&ip).copied().unwrap_or(0);
        if held >= self.per_peer {
            drop(peers);
            return Err(self.refuse(ip, Refused::PeerShare));
        }
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            drop(peers);
            return Err(self.refuse(ip, Refused::Full));
        };
        peers.insert(ip, held + 1);
        Ok(Admitted {
            _permit: permit,
            admission: self.clone(),
            ip,
        })
    }

    /// Counts a refusal in `/metrics` and logs it (at most a line a second, with the
    /// number of refusals since the last line).
    fn refuse(&self, ip: IpAddr, why: Refused) -> Refused {
        crate::metrics::limit_hit(match why {
            Refused::Full => self.names.0,
            Refused::PeerShare => self.names.1,
        });
        let mut unlogged = self.unlogged.lock().unwrap_or_else(|p| p.into_inner());
        unlogged.0 += 1;
        let now = std::time::Instant::now();
        if unlogged
            .1
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1))
        {
            tracing::warn!(
                limit = self.names.0,
                peer = %ip,
                ?why,
                refused = unlogged.0,
                open = self.open(),
                "connections refused: over the limit (count since the last such line)"
            );
            *unlogged = (0, Some(now));
        }
        why
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.total.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_is_one_peer() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(peer(a), peer(b));
        assert_ne!(peer(a), peer(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(peer(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
        let admission = Admission::new(4, 1, ("http_connections", "http_connections_per_peer"));
        let _first = admission.admit(a).expect("first");
        assert_eq!(
            admission.admit(b).expect_err("same /64"),
            Refused::PeerShare
        );
        admission.admit(c).expect("another /64");
    }

    #[test]
    fn each_peer_gets_a_share_and_slots_come_back() {
        let a = Admission::new(
            3,
            2,
            ("electrum_connections", "electrum_connections_per_peer"),
        );
        let (x, y): (IpAddr, IpAddr) = (
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
        );
        let x1 = a.admit(x).expect("first");
        let _x2 = a.admit(x).expect("second");
        assert_eq!(a.admit(x).expect_err("over the share"), Refused::PeerShare);
        let _y1 = a.admit(y).expect("another peer");
        assert_eq!(a.admit(y).expect_err("full"), Refused::Full);
        drop(x1);
        assert_eq!(a.open(), 2);
        a.admit(y).expect("a slot came back");
    }
}

/// File descriptors kept aside for the database, SMTP, the upstream server, the link and
/// logs, whatever the listeners hold.
pub const RESERVED_FILES: u64 = 128;

/// Raises the process's open-file limit to its hard limit and returns the new soft limit.
pub fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
                return hard;
            }
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "the open-file limit could not be read; assuming 1024");
            1024
        }
    }
}

/// The listeners' connection caps, scaled down together when their sum would not leave
/// [`RESERVED_FILES`] under `open_files` (each keeps at least 1).
pub fn fit_caps<const N: usize>(caps: [usize; N], open_files: u64) -> [usize; N] {
    let room = usize::try_from(open_files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    let total: usize = caps.iter().sum();
    if total <= room {
        return caps;
    }
    caps.map(|c| (c.saturating_mul(room) / total.max(1)).max(1))
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn caps_fit_under_the_file_limit() {
        assert_eq!(fit_caps([1024, 1024, 512], 65_536), [1024, 1024, 512]);
        let fitted = fit_caps([1024, 1024, 512], 1024);
        assert!(
            fitted.iter().sum::<usize>() as u64 <= 1024 - RESERVED_FILES,
            "{fitted:?}"
        );
        assert!(fitted.iter().all(|c| *c >= 1));
        assert!(raise_open_files() >= 1024);
    }
}

/// Each listener's connection cap, fitted under the open-file limit (raised to its hard
/// limit first) with room left for the database, SMTP and the upstream server.
#[derive(Debug, Clone, Copy)]
pub struct ListenerCaps {
    /// Electrum TCP and TLS together.
    pub electrum: usize,
    /// HTTP and WebSocket.
    pub http: usize,
    /// The Nostr relay.
    pub nostr: usize,
}

impl ListenerCaps {
    /// The caps for `config` on this machine.
    pub fn fit(config: &crate::config::Config) -> ListenerCaps {
        let files = raise_open_files();
        let asked = [
            config.electrum.max_connections,
            config.http.max_connections as usize,
            config.nostr.max_connections,
        ];
        let [electrum, http, nostr] = fit_caps(asked, files);
        if [electrum, http, nostr] != asked {
            tracing::warn!(
                open_files = files,
                electrum,
                http,
                nostr,
                "connection caps lowered to fit under the open-file limit"
            );
        }
        ListenerCaps {
            electrum,
            http,
            nostr,
        }
    }
}
