//! The bridge's configuration: one TOML file, checked at load.
//!
//! Every key is documented on the struct that holds it and in the README's configuration
//! reference. Unknown keys are refused (`deny_unknown_fields`) so a typo never silently
//! falls back to a default; values are checked once at load so the daemon never starts
//! with a limit it cannot honour. Defaults are safe: loopback listeners only, no TLS
//! unless a certificate is given, a data directory created on first start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod check;
mod store;

pub use store::{Backend, StoreConfig};

// One configuration error type and one network list for both daemons (the cosigner's).
pub use satcosign_cosigner::config::{ConfigError, Network};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network served: `bitcoin`, `testnet`, `testnet4`, `signet` or `regtest`. Default `testnet`.
    pub network: Network,
    /// Directory for the bridge's database (`bridge.redb`); created if missing. Default `./satcosign-data`.
    pub data_dir: PathBuf,
    /// Text returned by `server.banner`.
    pub banner: String,
    /// Address returned by `server.donation_address` (empty: none).
    pub donation_address: String,
    /// The Electrum-protocol listeners.
    pub electrum: ElectrumConfig,
    /// The HTTP + WebSocket listener.
    pub http: HttpConfig,
    /// The cosigner-pool mailbox.
    pub mailbox: MailboxConfig,
    /// The satellite cosigner and the radio link to it.
    pub satellite: SatelliteConfig,
    /// Outgoing email.
    pub email: EmailConfig,
    /// The email gate's limits.
    pub gate: GateConfig,
    /// The upstream Electrum server.
    pub upstream: UpstreamConfig,
    /// The policy a wallet registers with when the user gives none.
    pub default_policy: satcosign_cosigner::policy::Policy,
    /// The Nostr relay (NIP-01) for Electrum 4.6+'s built-in Nostr cosigning.
    pub nostr: NostrConfig,
    /// Limits shared by every listener.
    pub limits: LimitsConfig,
    /// Where the bridge keeps its state: redb (default) or PostgreSQL.
    pub store: StoreConfig,
}

/// Limits that span every listener (Electrum TCP and TLS, HTTP and WebSocket, the relay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes per second one peer address may send, over all its connections together; a
    /// faster peer is slowed to it (its reads wait), not refused. Default 1000000.
    pub read_bytes_per_second_per_peer: u64,
    /// Bytes one peer address may send at once before its rate applies; at least the
    /// largest request any listener takes. Default 4000000.
    pub read_burst_bytes_per_peer: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            read_bytes_per_second_per_peer: 1_000_000,
            read_burst_bytes_per_peer: 4_000_000,
        }
    }
}

/// The Nostr relay: stock Electrum 4.6+ sends PSBTs to its cosigners as NIP-04 direct
/// messages through the relays in its `nostr_relays` setting; pointed here, the satellite's
/// Nostr identity (derived from its xpub, as Electrum derives it) answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NostrConfig {
    /// WebSocket listen address (`ws://` relay, NIP-11 on the same port); `""` disables it.
    /// Default `127.0.0.1:50107`.
    pub listen: String,
    /// Largest event accepted, bytes of JSON. Default 262144 (a PSBT of ~100 inputs).
    pub max_event_bytes: usize,
    /// Largest WebSocket message read; bigger ones close the connection. Default 1048576.
    pub max_message_bytes: usize,
    /// Open subscriptions per connection. Default 20.
    pub max_subscriptions: usize,
    /// Filters per `REQ`. Default 10.
    pub max_filters: usize,
    /// Most stored events one filter returns (its `limit` is capped to this). Default 500.
    pub max_limit: usize,
    /// `EVENT`s and `REQ`s per connection per minute. Default 120.
    pub messages_per_minute: u32,
    /// How far in the future `created_at` may be, seconds. Default 900.
    pub max_future_secs: u64,
    /// How long events without an expiration tag are kept, seconds. Default 604800.
    pub retention_secs: u64,
    /// Most simultaneous connections. Default 512.
    pub max_connections: usize,
    /// Most simultaneous connections from one peer address. Default 16.
    pub max_connections_per_peer: usize,
    /// Seconds a connection may take to send its HTTP request headers. Default 10.
    pub header_timeout_secs: u64,
    /// A WebSocket silent for this long is closed, seconds. Default 600.
    pub idle_timeout_secs: u64,
    /// Bytes of events (JSON) the relay holds in all, in memory and in redb; past it new
    /// events are refused until old ones expire. Default 67108864 (64 MiB).
    pub max_stored_bytes: usize,
    /// Bytes of events one author may have held at once. Default 4194304 (4 MiB: sixteen of
    /// the largest events).
    pub max_stored_bytes_per_author: usize,
}

impl Default for NostrConfig {
    fn default() -> Self {
        NostrConfig {
            listen: "127.0.0.1:50107".into(),
            max_event_bytes: 256 * 1024,
            max_message_bytes: 1024 * 1024,
            max_subscriptions: 20,
            max_filters: 10,
            max_limit: 500,
            messages_per_minute: 120,
            max_future_secs: 900,
            retention_secs: 7 * 24 * 3600,
            max_connections: 512,
            max_connections_per_peer: 16,
            header_timeout_secs: 10,
            idle_timeout_secs: 600,
            max_stored_bytes: 64 << 20,
            max_stored_bytes_per_author: 4 << 20,
        }
    }
}

/// The satellite: its public account key and the link that reaches it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SatelliteConfig {
    /// The satellite's issuer key with its origin, `[fingerprint/48h/1h/0h/2h]tpub...`
    /// (printed by `satcosign-cosigner init`). Every wallet's satellite key derives from it,
    /// so it is this bridge's secret: keep it out of anything published (see
    /// `schemas/wallet-keys.md`). Required by `run`; `dev` fills it in.
    pub account_key: String,
    /// The cosigner's link public key, hex (printed by `satcosign-cosigner init`).
    pub link_public_key: String,
    /// The bridge's link identity file; created (0600) if missing. Default `<data_dir>/link.key`.
    pub link_key_file: Option<PathBuf>,
    /// Transport: `udp` (needs `udp_bind`, `udp_peer`) or `kiss-tcp` (needs `kiss_tcp`). Default `udp`.
    pub transport: String,
    /// Local UDP address. Default `127.0.0.1:9701`.
    pub udp_bind: String,
    /// The ground station's (or cosigner's) UDP address. Default `127.0.0.1:9702`.
    pub udp_peer: String,
    /// A KISS TNC over TCP (e.g. Dire Wolf's port 8001).
    pub kiss_tcp: String,
    /// Largest link frame, bytes. Default 256.
    pub mtu: usize,
    /// Channel bit rate, for the link's timers. Default 9600.
    pub bitrate: u64,
    /// Frame loss expected on the channel (0..0.5); sizes forward error correction. Default 0.05.
    pub expected_loss: f64,
    /// `[satellite.orbit]`: the element set and ground stations the passes are predicted
    /// from (see [`crate::passes`]); none by default.
    pub orbit: crate::passes::OrbitConfig,
}

impl Default for SatelliteConfig {
    fn default() -> Self {
        SatelliteConfig {
            account_key: String::new(),
            link_public_key: String::new(),
            link_key_file: None,
            transport: "udp".into(),
            udp_bind: "127.0.0.1:9701".into(),
            udp_peer: "127.0.0.1:9702".into(),
            kiss_tcp: String::new(),
            mtu: 256,
            bitrate: 9600,
            expected_loss: 0.05,
            orbit: crate::passes::OrbitConfig::default(),
        }
    }
}

/// How SMTP is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Implicit TLS (port 465).
    Tls,
    /// STARTTLS, required (port 587).
    Starttls,
    /// No encryption: only for a server on loopback (tests, a local relay).
    Plain,
}

/// Outgoing email: SMTP when `smtp_host` is set, `.eml` files in `dir` otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Sender address. Default `satcosign <satcosign@localhost>`.
    pub from: String,
    /// Folder for `.eml` files when no SMTP server is set. Default `<data_dir>/mail`.
    pub dir: Option<PathBuf>,
    /// SMTP server host name.
    pub smtp_host: Option<String>,
    /// SMTP port. Default by security: 465, 587 or 25.
    pub smtp_port: Option<u16>,
    /// `tls`, `starttls` or `plain` (loopback only). Default `starttls`.
    pub smtp_security: SmtpSecurity,
    /// SMTP user name, if the server wants one.
    pub smtp_username: Option<String>,
    /// File holding the SMTP password (kept out of the config file).
    pub smtp_password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the SMTP server, besides the usual public
    /// roots (a mail server with a private CA).
    pub smtp_ca_file: Option<PathBuf>,
    /// Base URL of the confirmation pages, as users reach the HTTP port. Default
    /// `http://<http.listen>`.
    pub public_url: Option<String>,
}

impl EmailConfig {
    /// The SMTP password, read from its file.
    pub fn smtp_password(&self) -> Result<String, ConfigError> {
        let Some(path) = &self.smtp_password_file else {
            return Err(ConfigError::Invalid {
                key: "email.smtp_password_file",
                reason: "email.smtp_username is set, so a password file is needed".into(),
            });
        };
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            from: "satcosign <satcosign@localhost>".into(),
            dir: None,
            smtp_host: None,
            smtp_port: None,
            smtp_security: SmtpSecurity::Starttls,
            smtp_username: None,
            smtp_password_file: None,
            smtp_ca_file: None,
            public_url: None,
        }
    }
}

/// The email gate's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// How long an emailed code works, seconds. Default 86400; keep hours, not minutes:
    /// mail can be slow and users are away.
    pub token_ttl_secs: u64,
    /// Wrong codes before a request is voided. Default 5.
    pub max_attempts: u32,
    /// Emails per request (the first and the resends). Default 4.
    pub max_emails: u32,
    /// Least time between two emails of one request, seconds. Default 60.
    pub resend_interval_secs: u64,
    /// Signing requests per wallet per hour. Default 30.
    pub max_requests_per_hour: u32,
    /// Registrations per email address per day (each sends that address an email). Default 5.
    pub max_registrations_per_email_per_day: u32,
    /// Registrations per hour in all, whatever the address: a cap on the mail anyone can
    /// make the bridge send. Default 100.
    pub max_registrations_per_hour: u32,
    /// A client address's share of `max_registrations_per_hour` (over transports that know
    /// the address), so one stranger cannot use up everyone's registrations. Default 20.
    pub max_registrations_per_client_per_hour: u32,
    /// Email and policy changes asked for one wallet per day (each emails its owner).
    /// Default 6.
    pub max_changes_per_wallet_per_day: u32,
    /// Satellite keys issued per client address per hour (`satellite.new_key` over
    /// Electrum TCP). Default 10.
    pub max_keys_per_client_per_hour: u32,
    /// Satellite keys issued per hour in all, whatever the client: bounds the storage
    /// strangers can make the bridge hold. Default 600.
    pub max_keys_per_hour: u32,
    /// Most inputs of a PSBT co-signed (the largest hardware cosigners are tested with).
    /// Default 250.
    pub max_psbt_inputs: usize,
    /// Most outputs of a PSBT co-signed. Default 2000.
    pub max_psbt_outputs: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            token_ttl_secs: 24 * 3600,
            max_attempts: 5,
            max_emails: 4,
            resend_interval_secs: 60,
            max_requests_per_hour: 30,
            max_registrations_per_email_per_day: 5,
            max_registrations_per_hour: 100,
            max_registrations_per_client_per_hour: 20,
            max_changes_per_wallet_per_day: 6,
            max_keys_per_client_per_hour: 10,
            max_keys_per_hour: 600,
            max_psbt_inputs: 250,
            max_psbt_outputs: 2000,
        }
    }
}

/// The upstream Electrum server (electrs, Fulcrum, ElectrumX).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `tcp://host:port` or `ssl://host:port`; empty: none (the wallet broadcasts).
    pub url: String,
    /// How often broadcast transactions are looked up on the chain, seconds. Default 60.
    pub poll_secs: u64,
    /// Confirmations after which a transaction is no longer watched. Default 6.
    pub confirmations: u32,
    /// How long a transaction the server never shows is watched, seconds. Default 1209600 (14 days).
    pub watch_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: String::new(),
            poll_secs: 60,
            confirmations: 6,
            watch_secs: 14 * 24 * 3600,
        }
    }
}

/// Electrum-style newline-delimited JSON-RPC over TCP and TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElectrumConfig {
    /// Plain TCP listen address; `""` disables it. Default `127.0.0.1:50101`.
    pub tcp: String,
    /// TLS listen address; `""` (the default) disables it. Needs `tls_cert` and `tls_key`.
    pub tls: String,
    /// PEM certificate chain for the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// Longest request line accepted, in bytes; longer lines are refused unread. Default 1,000,000.
    pub max_line_bytes: usize,
    /// Most calls in one batch. Default 100.
    pub max_batch: usize,
    /// Most simultaneous connections over TCP and TLS together. Default 1024.
    pub max_connections: usize,
    /// A connection silent for this long is closed. Default 600.
    pub idle_timeout_secs: u64,
    /// Most simultaneous connections from one peer address, over TCP and TLS together.
    /// Default 16.
    pub max_connections_per_peer: usize,
    /// Unsent bytes a connection may have queued; past them it reads no more requests
    /// until its client reads (and is closed if it does not within `idle_timeout_secs`).
    /// Default 4,000,000.
    pub max_unsent_bytes: usize,
    /// Largest answer to one line (a call, or a whole batch), bytes. Default 4,000,000.
    pub max_response_bytes: usize,
    /// Most `request.subscribe` subscriptions per connection. Default 256.
    pub max_subscriptions: usize,
}

/// The HTTP port: JSON-RPC over HTTP POST and WebSocket, plus `GET /health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; `""` disables it. Default `127.0.0.1:8780`.
    pub listen: String,
    /// Largest request body, bytes. Default 2,000,000 (room for a 1 MB message in base64).
    pub max_body_bytes: u32,
    /// Most simultaneous connections. Default 1024.
    pub max_connections: u32,
    /// Most simultaneous connections from one peer address. Default 16.
    pub max_connections_per_peer: u32,
    /// Serve `GET /metrics` (Prometheus text: counts and states only). Default true; turn it
    /// off when this port is public and a proxy does not keep `/metrics` to the operator.
    pub metrics: bool,
    /// Serve the operator's page, `GET /status` (passes, link, requests by state). Default:
    /// on when the listener is on loopback, off otherwise.
    pub status_page: Option<bool>,
}

/// The cosigner-pool mailbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxConfig {
    /// Seconds a message stays in its slot before it expires. Default 604800 (7 days).
    pub ttl_secs: u64,
    /// Largest message, in bytes after base64 decoding. Default 1,000,000.
    pub max_message_bytes: usize,
    /// Bytes of messages (base64 text) the mailbox holds in all; past it puts are refused
    /// until old messages expire or are deleted. Default 268435456 (256 MiB).
    pub max_total_bytes: u64,
    /// `cosigner.put` calls one client address may make per minute (a burst of this many,
    /// then this rate). Default 60.
    pub puts_per_minute_per_peer: u32,
    /// Bytes of `cosigner.put` requests one client address may send per minute (a burst of
    /// this many, then this rate); at least twice `max_message_bytes`, so one largest
    /// message in base64 always fits. Default 4000000.
    pub put_bytes_per_minute_per_peer: u64,
    /// The bridge's mailbox key (requests are encrypted to it); created (0600) if missing.
    /// Replicas on one PostgreSQL database share one. Default `<data_dir>/mailbox.key`.
    pub key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: Network::Testnet,
            data_dir: PathBuf::from("./satcosign-data"),
            banner: "satcosign bridge: satellite cosigning for Bitcoin multisig".into(),
            donation_address: String::new(),
            electrum: ElectrumConfig::default(),
            http: HttpConfig::default(),
            mailbox: MailboxConfig::default(),
            satellite: SatelliteConfig::default(),
            email: EmailConfig::default(),
            gate: GateConfig::default(),
            upstream: UpstreamConfig::default(),
            default_policy: satcosign_cosigner::policy::Policy::of_limits(
                10_000_000,
                20_000_000,
                24 * 3600,
                200_000,
                500,
            ),
            nostr: NostrConfig::default(),
            limits: LimitsConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for ElectrumConfig {
    fn default() -> Self {
        ElectrumConfig {
            tcp: "127.0.0.1:50101".into(),
            tls: String::new(),
            tls_cert: None,
            tls_key: None,
            max_line_bytes: 1_000_000,
            max_batch: 100,
            max_connections: 1024,
            idle_timeout_secs: 600,
            max_connections_per_peer: 16,
            max_unsent_bytes: 4_000_000,
            max_response_bytes: 4_000_000,
            max_subscriptions: 256,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8780".into(),
            max_body_bytes: 2_000_000,
            max_connections: 1024,
            max_connections_per_peer: 16,
            metrics: true,
            status_page: None,
        }
    }
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            ttl_secs: 7 * 24 * 3600,
            max_message_bytes: 1_000_000,
            max_total_bytes: 256 << 20,
            puts_per_minute_per_peer: 60,
            put_bytes_per_minute_per_peer: 4_000_000,
            key_file: None,
        }
    }
}

/// Listen addresses after parsing; `None` means that listener is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// Electrum plain TCP.
    pub electrum_tcp: Option<SocketAddr>,
    /// Electrum TLS.
    pub electrum_tls: Option<SocketAddr>,
    /// HTTP + WebSocket.
    pub http: Option<SocketAddr>,
    /// The Nostr relay.
    pub nostr: Option<SocketAddr>,
}

fn parse_listen(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("`{value}` is not an IP:port address ({e})"),
    })
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config: Config = satcosign_cosigner::config::read_toml(path)?;
        config.check()?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = satcosign_cosigner::config::parse_toml(text, Path::new("<text>"))?;
        config.check()?;
        Ok(config)
    }

    /// The listen addresses, parsed.
    pub fn listeners(&self) -> Result<Listeners, ConfigError> {
        Ok(Listeners {
            electrum_tcp: parse_listen("electrum.tcp", &self.electrum.tcp)?,
            electrum_tls: parse_listen("electrum.tls", &self.electrum.tls)?,
            http: parse_listen("http.listen", &self.http.listen)?,
            nostr: parse_listen("nostr.listen", &self.nostr.listen)?,
        })
    }

    /// Path of the bridge's redb database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("bridge.redb")
    }
}

#[cfg(test)]
mod tests;
