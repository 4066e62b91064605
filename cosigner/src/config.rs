//! The cosigner daemon's configuration: one TOML file, checked at load. Unknown keys are
//! refused; errors name the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[cfg(feature = "daemon")]
use crate::daemon::Settings;
#[cfg(feature = "daemon")]
use crate::decision::Rules;

/// Why a configuration (the cosigner's or the bridge's) cannot be used; each variant names
/// the file or the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Malformed TOML, an unknown key or a wrong type (the message names the key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value out of range.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The Bitcoin network a daemon serves (the bridge's and the cosigner's must agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Mainnet.
    Bitcoin,
    /// Testnet3.
    Testnet,
    /// Testnet4.
    Testnet4,
    /// Signet.
    Signet,
    /// Regtest.
    Regtest,
}

impl Network {
    /// rust-bitcoin's value.
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

/// Parses TOML `text` read from `path` (named in errors) into `T`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Reads and parses the TOML file at `path` into `T` (its values are not checked here).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// The configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network: `bitcoin`, `testnet`, `testnet4`, `signet`, `regtest`. Default `testnet`.
    pub network: Network,
    /// Directory of `cosigner.redb` (and the key file by default). Default `./cosigner-data`.
    pub data_dir: PathBuf,
    /// The key file; default `<data_dir>/cosigner.key`. Must be mode 0600.
    pub key_file: Option<PathBuf>,
    /// Longest accepted age of a user's approval, seconds. Default 86400.
    pub approval_max_age_secs: u64,
    /// How far an approval's time may be ahead of the cosigner's clock, seconds. Default 300.
    pub clock_skew_secs: u64,
    /// Delay before a policy change that loosens any limit takes effect, seconds. Default 86400.
    pub policy_loosen_delay_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: Network::Testnet,
            data_dir: PathBuf::from("./cosigner-data"),
            key_file: None,
            approval_max_age_secs: 86_400,
            clock_skew_secs: 300,
            policy_loosen_delay_secs: 86_400,
        }
    }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config: Config = read_toml(path)?;
        config.check()?;
        Ok(config)
    }

    /// Checks every value.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.approval_max_age_secs == 0 || self.approval_max_age_secs > 30 * 86_400 {
            return Err(ConfigError::Invalid {
                key: "approval_max_age_secs",
                reason: "must be 1..=2592000 (30 days)".into(),
            });
        }
        if self.clock_skew_secs > 3600 {
            return Err(ConfigError::Invalid {
                key: "clock_skew_secs",
                reason: "must be at most 3600".into(),
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The key file's path.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cosigner.key"))
    }

    /// The database's path.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("cosigner.redb")
    }

    /// The daemon's settings.
    #[cfg(feature = "daemon")]
    pub fn settings(&self) -> Settings {
        Settings {
            network: self.network.to_bitcoin(),
            rules: Rules {
                approval_max_age_secs: self.approval_max_age_secs,
                clock_skew_secs: self.clock_skew_secs,
            },
            policy_loosen_delay_secs: self.policy_loosen_delay_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = toml::from_str::<Config>("aproval_max_age_secs = 5").expect_err("typo");
        assert!(e.to_string().contains("aproval_max_age_secs"), "{e}");
        let c: Config = toml::from_str("approval_max_age_secs = 0").expect("parses");
        assert!(c
            .check()
            .expect_err("zero")
            .to_string()
            .contains("approval_max_age_secs"));
        let c: Config = toml::from_str("network = \"regtest\"").expect("parses");
        assert!(c.check().is_ok());
    }
}
