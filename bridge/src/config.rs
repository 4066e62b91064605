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

/// Why a configuration could not be loaded; each variant names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File that was asked for.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// File being parsed.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value parsed but is outside what the bridge accepts.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `mailbox.ttl_secs`.
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

/// Bitcoin network the bridge serves; decides `genesis_hash` in `server.features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Bitcoin mainnet.
    Bitcoin,
    /// Testnet3.
    Testnet,
    /// Testnet4.
    Testnet4,
    /// The default signet.
    Signet,
    /// Regtest.
    Regtest,
}

impl Network {
    /// The rust-bitcoin network value.
    pub fn to_bitcoin(self) -> bitcoin::Network {
        match self {
            Network::Bitcoin => bitcoin::Network::Bitcoin,
            Network::Testnet => bitcoin::Network::Testnet,
            Network::Testnet4 => bitcoin::Network::Testnet4,
            Network::Signet => bitcoin::Network::Signet,
            Network::Regtest => bitcoin::Network::Regtest,
        }
    }

    /// Hash of the network's genesis block, hex, as Electrum servers report it.
    pub fn genesis_hash(self) -> String {
        bitcoin::blockdata::constants::genesis_block(self.to_bitcoin())
            .block_hash()
            .to_string()
    }
}

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
}

/// The cosigner-pool mailbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxConfig {
    /// Seconds a message stays in its slot before it expires. Default 604800 (7 days).
    pub ttl_secs: u64,
    /// Largest message, in bytes after base64 decoding. Default 1,000,000.
    pub max_message_bytes: usize,
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
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8780".into(),
            max_body_bytes: 2_000_000,
            max_connections: 1024,
        }
    }
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            ttl_secs: 7 * 24 * 3600,
            max_message_bytes: 1_000_000,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
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
        Ok(())
    }

    /// The listen addresses, parsed.
    pub fn listeners(&self) -> Result<Listeners, ConfigError> {
        Ok(Listeners {
            electrum_tcp: parse_listen("electrum.tcp", &self.electrum.tcp)?,
            electrum_tls: parse_listen("electrum.tls", &self.electrum.tls)?,
            http: parse_listen("http.listen", &self.http.listen)?,
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
