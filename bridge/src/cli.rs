//! What the two binaries share: the command-line settings that override the
//! configuration file (`satcosign-bridge` and `satcosign-dev` take the same ones), and how
//! a running bridge announces its listeners.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::config::Config;
use crate::RunningBridge;

/// Settings every command takes.
#[derive(Args, Debug)]
pub struct Overrides {
    /// TOML configuration file (see the README's configuration reference). Without it,
    /// safe defaults: loopback listeners, data in ./satcosign-data.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Electrum-protocol plain TCP listen address (overrides `electrum.tcp`; "" disables).
    #[arg(long, value_name = "ADDR", global = true)]
    pub electrum_tcp: Option<String>,
    /// Electrum-protocol TLS listen address (overrides `electrum.tls`; needs tls_cert/tls_key).
    #[arg(long, value_name = "ADDR", global = true)]
    pub electrum_tls: Option<String>,
    /// HTTP + WebSocket listen address (overrides `http.listen`; "" disables).
    #[arg(long, value_name = "ADDR", global = true)]
    pub http: Option<String>,
    /// Nostr relay listen address (overrides `nostr.listen`; "" disables).
    #[arg(long, value_name = "ADDR", global = true)]
    pub nostr: Option<String>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Reads the configuration (`o.config`, or the defaults: regtest when `dev`) and applies
/// the command line's overrides; checked after.
pub fn load_config(o: Overrides, dev: bool) -> anyhow::Result<Config> {
    let mut config = match &o.config {
        Some(path) => Config::load(path)?,
        None if dev => Config {
            network: crate::config::Network::Regtest,
            ..Config::default()
        },
        None => Config::default(),
    };
    if let Some(a) = o.electrum_tcp {
        config.electrum.tcp = a;
    }
    if let Some(a) = o.electrum_tls {
        config.electrum.tls = a;
    }
    if let Some(a) = o.http {
        config.http.listen = a;
    }
    if let Some(a) = o.nostr {
        config.nostr.listen = a;
    }
    if let Some(d) = o.data_dir {
        config.data_dir = d;
    }
    config
        .check()
        .context("invalid configuration after command-line overrides")?;
    Ok(config)
}

/// One line per listener, as the binaries print them.
pub fn listener_lines(running: &RunningBridge) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(a) = running.electrum_tcp {
        lines.push(format!("electrum tcp: {a}"));
    }
    if let Some(a) = running.electrum_tls {
        lines.push(format!("electrum tls: {a}"));
    }
    if let Some(a) = running.http {
        lines.push(format!("http: http://{a}"));
    }
    if let Some(a) = running.nostr {
        lines.push(format!("nostr relay: ws://{a}"));
    }
    lines
}
