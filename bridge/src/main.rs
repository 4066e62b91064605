//! `satcosign-bridge`: parses arguments and configuration, sets up logging, calls `run`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use satcosign_bridge::config::Config;

/// satcosign's ground bridge: Electrum-protocol JSON-RPC, cosigner-pool mailboxes, and the
/// relay to the satellite cosigner.
#[derive(Parser, Debug)]
#[command(name = "satcosign-bridge", version, about, long_about = None)]
struct Cli {
    /// TOML configuration file (see the README's configuration reference). Without it,
    /// safe defaults: loopback listeners, data in ./satcosign-data.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Electrum-protocol plain TCP listen address (overrides `electrum.tcp`; "" disables).
    #[arg(long, value_name = "ADDR")]
    electrum_tcp: Option<String>,
    /// Electrum-protocol TLS listen address (overrides `electrum.tls`; needs tls_cert/tls_key).
    #[arg(long, value_name = "ADDR")]
    electrum_tls: Option<String>,
    /// HTTP + WebSocket listen address (overrides `http.listen`; "" disables).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(a) = cli.electrum_tcp {
        config.electrum.tcp = a;
    }
    if let Some(a) = cli.electrum_tls {
        config.electrum.tls = a;
    }
    if let Some(a) = cli.http {
        config.http.listen = a;
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    config
        .check()
        .context("invalid configuration after command-line overrides")?;

    satcosign_bridge::run(config, |running| {
        #[allow(clippy::print_stdout)]
        {
            if let Some(a) = running.electrum_tcp {
                println!("electrum tcp: {a}");
            }
            if let Some(a) = running.electrum_tls {
                println!("electrum tls: {a}");
            }
            if let Some(a) = running.http {
                println!("http: http://{a}");
            }
            println!("ready");
        }
    })
    .await?;
    Ok(())
}
