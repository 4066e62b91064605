//! `[store]`: which engine keeps the bridge's state, checked at load.

use serde::Deserialize;

use super::ConfigError;

/// The engine behind the bridge's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One redb file, `bridge.redb` in `data_dir`: nothing to install (the default).
    #[default]
    Redb,
    /// A PostgreSQL database that the operator runs and backs up.
    Postgres,
}

/// Where the bridge keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redb` (default) or `postgres`.
    pub backend: Backend,
    /// With `postgres`: the connection, as a libpq string (`host=/run/postgresql
    /// dbname=satcosign user=satcosign`) or a `postgres://` URL. Plain TCP or a Unix
    /// socket: keep the database on loopback or a private network.
    pub url: Option<String>,
    /// With `postgres`: most connections the bridge opens, 1 to 256. Default 16.
    pub pool_size: usize,
    /// With `postgres`: the ground lease, in seconds (2 to 300, default 10). Every replica
    /// serves clients; the one holding the lease drives the radio link and the side
    /// effects. A holder that cannot reach the database stops driving within half of it;
    /// the server frees the lease of a holder it cannot reach within it, and another
    /// replica takes over.
    pub lease_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Redb,
            url: None,
            pool_size: 16,
            lease_secs: 10,
        }
    }
}

impl StoreConfig {
    /// Checks the values; an error names the key and never echoes a password.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        match (self.backend, &self.url) {
            (Backend::Redb, Some(_)) => Err(invalid(
                "store.url",
                "is only for backend = \"postgres\"; redb keeps bridge.redb in data_dir".into(),
            )),
            (Backend::Postgres, None) => Err(invalid(
                "store.url",
                "backend = \"postgres\" needs the database's connection string".into(),
            )),
            (Backend::Postgres, Some(url)) => {
                let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
                    invalid(
                        "store.url",
                        format!("is not a libpq connection string or postgres:// URL ({e})"),
                    )
                })?;
                if parsed.get_hosts().is_empty() {
                    return Err(invalid(
                        "store.url",
                        "names no host (give host=... or postgres://host/...)".into(),
                    ));
                }
                if !(1..=256).contains(&self.pool_size) {
                    return Err(invalid(
                        "store.pool_size",
                        format!("{} is outside 1..=256", self.pool_size),
                    ));
                }
                if !(2..=300).contains(&self.lease_secs) {
                    return Err(invalid(
                        "store.lease_secs",
                        format!("{} is outside 2..=300 seconds", self.lease_secs),
                    ));
                }
                Ok(())
            }
            (Backend::Redb, None) => Ok(()),
        }
    }
}
