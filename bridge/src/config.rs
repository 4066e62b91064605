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
            default_policy: satcosign_cosigner::policy::Policy {
                max_per_tx_sat: 10_000_000,
                max_per_period_sat: 20_000_000,
                period_secs: 24 * 3600,
                max_fee_sat: 200_000,
                max_fee_rate_sat_vb: 500,
                allowlist: None,
                min_approval_delay_secs: 0,
            },
            nostr: NostrConfig::default(),
            limits: LimitsConfig::default(),
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

    /// Checks every value; called at load and again after command-line overrides.
    pub fn check(&self) -> Result<(), ConfigError> {
        let listeners = self.listeners()?;
        if listeners.electrum_tls.is_some()
            && (self.electrum.tls_cert.is_none() || self.electrum.tls_key.is_none())
        {
            return Err(ConfigError::Invalid {
                key: "electrum.tls",
                reason: "a TLS listener needs both electrum.tls_cert and electrum.tls_key".into(),
            });
        }
        if listeners.electrum_tcp.is_none()
            && listeners.electrum_tls.is_none()
            && listeners.http.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "electrum.tcp",
                reason: "every listener is disabled; enable at least one".into(),
            });
        }
        let n = &self.nostr;
        for (key, value, range) in [
            ("nostr.max_event_bytes", n.max_event_bytes, 1024..=16 << 20),
            (
                "nostr.max_message_bytes",
                n.max_message_bytes,
                1024..=64 << 20,
            ),
            ("nostr.max_subscriptions", n.max_subscriptions, 1..=1000),
            ("nostr.max_filters", n.max_filters, 1..=100),
            ("nostr.max_limit", n.max_limit, 1..=100_000),
            ("nostr.max_connections", n.max_connections, 1..=100_000),
            (
                "nostr.max_connections_per_peer",
                n.max_connections_per_peer,
                1..=n.max_connections.max(1),
            ),
            (
                "nostr.header_timeout_secs",
                usize::try_from(n.header_timeout_secs).unwrap_or(usize::MAX),
                1..=3600,
            ),
            (
                "nostr.idle_timeout_secs",
                usize::try_from(n.idle_timeout_secs).unwrap_or(usize::MAX),
                1..=86_400,
            ),
        ] {
            if !range.contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{value} is outside {}..={}", range.start(), range.end()),
                });
            }
        }
        if !(n.max_event_bytes..=4 << 30).contains(&n.max_stored_bytes) {
            return Err(ConfigError::Invalid {
                key: "nostr.max_stored_bytes",
                reason: format!(
                    "{} is outside nostr.max_event_bytes ({})..=4294967296",
                    n.max_stored_bytes, n.max_event_bytes
                ),
            });
        }
        if !(n.max_event_bytes..=n.max_stored_bytes).contains(&n.max_stored_bytes_per_author) {
            return Err(ConfigError::Invalid {
                key: "nostr.max_stored_bytes_per_author",
                reason: format!(
                    "{} is outside nostr.max_event_bytes ({})..=nostr.max_stored_bytes ({})",
                    n.max_stored_bytes_per_author, n.max_event_bytes, n.max_stored_bytes
                ),
            });
        }
        if n.max_event_bytes > n.max_message_bytes {
            return Err(ConfigError::Invalid {
                key: "nostr.max_event_bytes",
                reason: "must not exceed nostr.max_message_bytes".into(),
            });
        }
        if n.messages_per_minute == 0 || n.retention_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "nostr.messages_per_minute",
                reason: "nostr.messages_per_minute and nostr.retention_secs must be positive"
                    .into(),
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".into(),
            });
        }
        if !(1024..=64_000_000).contains(&self.electrum.max_line_bytes) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_line_bytes",
                reason: format!(
                    "{} is outside 1024..=64000000",
                    self.electrum.max_line_bytes
                ),
            });
        }
        if !(1..=10_000).contains(&self.electrum.max_batch) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_batch",
                reason: format!("{} is outside 1..=10000", self.electrum.max_batch),
            });
        }
        if self.electrum.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.electrum.idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.idle_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        if !(1..=self.electrum.max_connections).contains(&self.electrum.max_connections_per_peer) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_connections_per_peer",
                reason: format!(
                    "{} is outside 1..=electrum.max_connections ({})",
                    self.electrum.max_connections_per_peer, self.electrum.max_connections
                ),
            });
        }
        for (key, value) in [
            ("electrum.max_unsent_bytes", self.electrum.max_unsent_bytes),
            (
                "electrum.max_response_bytes",
                self.electrum.max_response_bytes,
            ),
        ] {
            if !(65_536..=1_000_000_000).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{value} is outside 65536..=1000000000"),
                });
            }
        }
        if self.electrum.max_subscriptions == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.max_subscriptions",
                reason: "must be at least 1".into(),
            });
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "http.max_body_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if !(1..=self.http.max_connections).contains(&self.http.max_connections_per_peer) {
            return Err(ConfigError::Invalid {
                key: "http.max_connections_per_peer",
                reason: format!(
                    "{} is outside 1..=http.max_connections ({})",
                    self.http.max_connections_per_peer, self.http.max_connections
                ),
            });
        }
        if self.mailbox.ttl_secs == 0 || self.mailbox.ttl_secs > 366 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                key: "mailbox.ttl_secs",
                reason: format!(
                    "{} is outside 1..=31622400 (one year)",
                    self.mailbox.ttl_secs
                ),
            });
        }
        if !(1..=16_000_000).contains(&self.mailbox.max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "mailbox.max_message_bytes",
                reason: format!("{} is outside 1..=16000000", self.mailbox.max_message_bytes),
            });
        }
        if !(4 * self.mailbox.max_message_bytes as u64..=1 << 40)
            .contains(&self.mailbox.max_total_bytes)
        {
            return Err(ConfigError::Invalid {
                key: "mailbox.max_total_bytes",
                reason: format!(
                    "{} is outside 4 x mailbox.max_message_bytes ({})..=1099511627776",
                    self.mailbox.max_total_bytes,
                    4 * self.mailbox.max_message_bytes
                ),
            });
        }
        let least = 2 * self.mailbox.max_message_bytes as u64;
        if !(least..=1 << 40).contains(&self.mailbox.put_bytes_per_minute_per_peer) {
            return Err(ConfigError::Invalid {
                key: "mailbox.put_bytes_per_minute_per_peer",
                reason: format!(
                    "{} is outside 2 x mailbox.max_message_bytes ({least})..=1099511627776",
                    self.mailbox.put_bytes_per_minute_per_peer
                ),
            });
        }
        if !(1024..=1 << 40).contains(&self.limits.read_bytes_per_second_per_peer) {
            return Err(ConfigError::Invalid {
                key: "limits.read_bytes_per_second_per_peer",
                reason: format!(
                    "{} is outside 1024..=1099511627776",
                    self.limits.read_bytes_per_second_per_peer
                ),
            });
        }
        let largest = [
            self.electrum.max_line_bytes as u64,
            u64::from(self.http.max_body_bytes),
            self.nostr.max_message_bytes as u64,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if !(largest..=1 << 40).contains(&self.limits.read_burst_bytes_per_peer) {
            return Err(ConfigError::Invalid {
                key: "limits.read_burst_bytes_per_peer",
                reason: format!(
                    "{} is outside the largest request a listener takes ({largest})..=1099511627776",
                    self.limits.read_burst_bytes_per_peer
                ),
            });
        }
        if !(1..=100_000).contains(&self.mailbox.puts_per_minute_per_peer) {
            return Err(ConfigError::Invalid {
                key: "mailbox.puts_per_minute_per_peer",
                reason: format!(
                    "{} is outside 1..=100000",
                    self.mailbox.puts_per_minute_per_peer
                ),
            });
        }
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !self.satellite.account_key.is_empty() {
            if let Err(e) = self
                .satellite
                .account_key
                .parse::<satcosign_cosigner::keys::AccountKey>()
            {
                return invalid("satellite.account_key", e.to_string());
            }
        }
        if !self.satellite.link_public_key.is_empty() {
            if let Err(e) = satcosign_link::crypto::parse_public(&self.satellite.link_public_key) {
                return invalid("satellite.link_public_key", e.to_string());
            }
        }
        match self.satellite.transport.as_str() {
            "udp" => {
                parse_listen("satellite.udp_bind", &self.satellite.udp_bind)?;
                parse_listen("satellite.udp_peer", &self.satellite.udp_peer)?;
            }
            "kiss-tcp" if !self.satellite.kiss_tcp.is_empty() => {}
            "kiss-tcp" => {
                return invalid("satellite.kiss_tcp", "kiss-tcp needs a host:port".into())
            }
            other => {
                return invalid(
                    "satellite.transport",
                    format!("`{other}` is not one of udp, kiss-tcp"),
                )
            }
        }
        if !(64..=4096).contains(&self.satellite.mtu) {
            return invalid(
                "satellite.mtu",
                format!("{} is outside 64..=4096", self.satellite.mtu),
            );
        }
        if self.satellite.bitrate < 100 {
            return invalid("satellite.bitrate", "must be at least 100".into());
        }
        self.satellite.orbit.check()?;
        if !(0.0..0.5).contains(&self.satellite.expected_loss) {
            return invalid(
                "satellite.expected_loss",
                format!("{} is outside 0..0.5", self.satellite.expected_loss),
            );
        }
        if let Err(e) = crate::mail::parse_address(&self.email.from) {
            return invalid("email.from", e.to_string());
        }
        if self.email.smtp_username.is_some() && self.email.smtp_password_file.is_none() {
            return invalid(
                "email.smtp_password_file",
                "email.smtp_username is set, so a password file is needed".into(),
            );
        }
        if let Some(url) = &self.email.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("email.public_url", format!("`{url}` is not an http(s) URL"));
            }
        }
        if !(1..=30 * 24 * 3600).contains(&self.gate.token_ttl_secs) {
            return invalid(
                "gate.token_ttl_secs",
                format!("{} is outside 1..=2592000", self.gate.token_ttl_secs),
            );
        }
        if !(1..=100).contains(&self.gate.max_attempts) {
            return invalid(
                "gate.max_attempts",
                format!("{} is outside 1..=100", self.gate.max_attempts),
            );
        }
        if !(1..=100).contains(&self.gate.max_emails) {
            return invalid(
                "gate.max_emails",
                format!("{} is outside 1..=100", self.gate.max_emails),
            );
        }
        if self.gate.max_requests_per_hour == 0 {
            return invalid("gate.max_requests_per_hour", "must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.gate.max_psbt_inputs) {
            return invalid(
                "gate.max_psbt_inputs",
                format!("{} is outside 1..=10000", self.gate.max_psbt_inputs),
            );
        }
        if !(1..=100_000).contains(&self.gate.max_psbt_outputs) {
            return invalid(
                "gate.max_psbt_outputs",
                format!("{} is outside 1..=100000", self.gate.max_psbt_outputs),
            );
        }
        for (key, value) in [
            ("gate.max_keys_per_hour", self.gate.max_keys_per_hour),
            (
                "gate.max_keys_per_client_per_hour",
                self.gate.max_keys_per_client_per_hour,
            ),
            (
                "gate.max_changes_per_wallet_per_day",
                self.gate.max_changes_per_wallet_per_day,
            ),
            (
                "gate.max_registrations_per_client_per_hour",
                self.gate.max_registrations_per_client_per_hour,
            ),
            (
                "gate.max_registrations_per_email_per_day",
                self.gate.max_registrations_per_email_per_day,
            ),
            (
                "gate.max_registrations_per_hour",
                self.gate.max_registrations_per_hour,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        let url = &self.upstream.url;
        if !(url.is_empty() || url.starts_with("tcp://") || url.starts_with("ssl://")) {
            return invalid(
                "upstream.url",
                format!("`{}` must start with tcp:// or ssl://", self.upstream.url),
            );
        }
        if !(1..=86_400).contains(&self.upstream.poll_secs) {
            return invalid(
                "upstream.poll_secs",
                format!("{} is outside 1..=86400", self.upstream.poll_secs),
            );
        }
        if !(1..=1000).contains(&self.upstream.confirmations) {
            return invalid(
                "upstream.confirmations",
                format!("{} is outside 1..=1000", self.upstream.confirmations),
            );
        }
        if self.upstream.watch_secs < self.upstream.poll_secs {
            return invalid(
                "upstream.watch_secs",
                "must be at least upstream.poll_secs".into(),
            );
        }
        if let (Some(host), SmtpSecurity::Plain) = (&self.email.smtp_host, self.email.smtp_security)
        {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return invalid(
                    "email.smtp_security",
                    format!(
                        "plain (unencrypted) SMTP is for a server on this machine only, not {host}; \
                         use starttls or tls"
                    ),
                );
            }
        }
        if let Err(e) = self.default_policy.check() {
            return invalid("default_policy", e.to_string());
        }
        Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = Config::from_toml("").expect("defaults are valid");
        let l = c.listeners().expect("default listeners parse");
        assert!(l.electrum_tcp.expect("tcp on").ip().is_loopback());
        assert!(l.http.expect("http on").ip().is_loopback());
        assert_eq!(l.electrum_tls, None);
        assert_eq!(c.electrum.max_line_bytes, 1_000_000);
    }

    #[test]
    fn nostr_limits_are_checked_and_named() {
        let c = Config::from_toml("").expect("defaults");
        assert!(c
            .listeners()
            .expect("parse")
            .nostr
            .expect("relay on")
            .ip()
            .is_loopback());
        for (toml, key) in [
            (
                "[nostr]\nmax_event_bytes = 2000000\n",
                "nostr.max_event_bytes",
            ),
            ("[nostr]\nmax_filters = 0\n", "nostr.max_filters"),
            (
                "[nostr]\nmessages_per_minute = 0\n",
                "nostr.messages_per_minute",
            ),
            ("[nostr]\nlisten = \"nowhere\"\n", "nostr.listen"),
            ("[upstream]\npoll_secs = 0\n", "upstream.poll_secs"),
            (
                "[email]\nsmtp_host = \"mail.example.org\"\nsmtp_security = \"plain\"\n",
                "email.smtp_security",
            ),
            ("[upstream]\nconfirmations = 0\n", "upstream.confirmations"),
            (
                "[upstream]\npoll_secs = 60\nwatch_secs = 5\n",
                "upstream.watch_secs",
            ),
        ] {
            let err = Config::from_toml(toml)
                .and_then(|c| c.check().map(|_| c))
                .expect_err(toml);
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[mailbox]\nttl_sec = 5\n").expect_err("typo refused");
        assert!(err.to_string().contains("ttl_sec"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[mailbox]\nttl_secs = \"long\"\n").expect_err("type");
        assert!(err.to_string().contains("ttl_secs"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[mailbox]\nttl_secs = 0\n", "mailbox.ttl_secs"),
            (
                "[mailbox]\nput_bytes_per_minute_per_peer = 1000\n",
                "mailbox.put_bytes_per_minute_per_peer",
            ),
            (
                "[limits]\nread_bytes_per_second_per_peer = 10\n",
                "limits.read_bytes_per_second_per_peer",
            ),
            (
                "[limits]\nread_burst_bytes_per_peer = 100000\n",
                "limits.read_burst_bytes_per_peer",
            ),
            ("[electrum]\ntcp = \"localhost\"\n", "electrum.tcp"),
            ("[electrum]\ntls = \"127.0.0.1:1\"\n", "electrum.tls"),
            (
                "[electrum]\nmax_line_bytes = 10\n",
                "electrum.max_line_bytes",
            ),
            ("network = \"mars\"\n", "network"),
            (
                "[electrum]\ntcp = \"\"\n[http]\nlisten = \"\"\n",
                "electrum.tcp",
            ),
        ] {
            let err = Config::from_toml(toml).expect_err(toml);
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn station_radios_are_checked_and_named() {
        let tle = "tle = [\"1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927\", \"2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537\"]";
        let with = |stations: &str| format!("[satellite.orbit]\n{tle}\n{stations}");
        let a = "[[satellite.orbit.stations]]\nname = \"a\"\nlatitude_deg = 45.0\nlongitude_deg = 7.0\n";
        let b = "[[satellite.orbit.stations]]\nname = \"b\"\nlatitude_deg = -31.0\nlongitude_deg = 115.0\n";
        let udp =
            "transport = \"udp\"\nudp_bind = \"127.0.0.1:9801\"\nudp_peer = \"127.0.0.1:9802\"\n";
        let kiss = "transport = \"kiss-tcp\"\nkiss_tcp = \"127.0.0.1:8001\"\n";
        let serial =
            "transport = \"kiss-serial\"\nkiss_serial = \"/dev/ttyUSB0\"\nserial_baud = 1200\n";
        for ok in [
            with(&format!("{a}{b}")),
            with(&format!("{a}{udp}{b}{kiss}")),
            with(&format!("{a}{serial}{b}{udp}")),
        ] {
            Config::from_toml(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            (with(&format!("{a}{udp}{b}")), "every station"),
            (with(&format!("{a}transport = \"udp\"\nudp_bind = \"127.0.0.1:1\"\n{b}{udp}")), "udp_peer"),
            (with(&format!("{a}transport = \"kiss-tcp\"\nkiss_tcp = \"nowhere\"\n{b}{udp}")), "host:port"),
            (with(&format!("{a}transport = \"kiss-tcp\"\nkiss_tcp = \"h:1\"\nudp_bind = \"127.0.0.1:1\"\n{b}{udp}")), "`udp_bind` does not belong"),
            (with(&format!("{a}transport = \"ham\"\n{b}{udp}")), "not one of"),
            (with(&format!("{a}transport = \"kiss-serial\"\nkiss_serial = \"/dev/x\"\nserial_baud = 5\n{b}{udp}")), "serial_baud"),
        ] {
            let err = Config::from_toml(&bad).expect_err(&bad);
            let text = err.to_string();
            assert!(
                text.contains("satellite.orbit.stations") && text.contains(says),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn the_element_set_is_two_lines_or_an_omm_never_both() {
        let tle = "tle = [\"1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927\", \"2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537\"]";
        let omm = "omm = '{\"EPOCH\":\"2008-09-20T12:25:40.104192\",\"MEAN_MOTION\":15.72125391,\"ECCENTRICITY\":0.0006703,\"INCLINATION\":51.6416,\"RA_OF_ASC_NODE\":247.4627,\"ARG_OF_PERICENTER\":130.536,\"MEAN_ANOMALY\":325.0288,\"EPHEMERIS_TYPE\":0,\"CLASSIFICATION_TYPE\":\"U\",\"NORAD_CAT_ID\":25544,\"ELEMENT_SET_NO\":292,\"REV_AT_EPOCH\":56353,\"BSTAR\":-1.1606e-5,\"MEAN_MOTION_DOT\":-2.182e-5,\"MEAN_MOTION_DDOT\":0}'";
        let station = "[[satellite.orbit.stations]]\nname = \"a\"\nlatitude_deg = 45.0\nlongitude_deg = 7.0\n";
        let with = |elements: &str| format!("[satellite.orbit]\n{elements}\n{station}");
        Config::from_toml(&with(omm)).expect("an OMM");
        Config::from_toml(&with(tle)).expect("two lines");
        for (bad, key) in [
            (with(&format!("{tle}\n{omm}")), "satellite.orbit.omm"),
            (with("omm = '{\"EPOCH\": 1}'"), "satellite.orbit.omm"),
            (with("tle = [\"1 x\"]"), "satellite.orbit.tle"),
        ] {
            let err = Config::from_toml(&bad).expect_err(&bad);
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn genesis_hashes_are_the_real_ones() {
        assert_eq!(
            Network::Bitcoin.genesis_hash(),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
        assert_eq!(
            Network::Testnet.genesis_hash(),
            "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943"
        );
    }
}
