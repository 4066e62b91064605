//! `satcosign-bridge`: the production ground bridge. Parses arguments and configuration,
//! sets up logging, runs the bridge (see the library's [`satcosign_bridge::run`]). The
//! embedded system with an in-process cosigner is another binary, `satcosign-dev`.

use clap::{Parser, Subcommand};
use satcosign_bridge::cli::{listener_lines, load_config, Overrides};

/// satcosign's ground bridge: Electrum-protocol JSON-RPC, cosigner-pool mailboxes, the email
/// gate, and the relay to the satellite cosigner.
#[derive(Parser, Debug)]
#[command(name = "satcosign-bridge", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bridge with the satellite link of the configuration (the default).
    Run,
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
    let Command::Run = cli.command.unwrap_or(Command::Run);
    let config = load_config(cli.overrides, false)?;
    let link_key = (!config.satellite.account_key.is_empty())
        .then(|| satcosign_bridge::link_identity(&config))
        .transpose()?
        .map(|id| hex::encode(id.public()));
    satcosign_bridge::run(config, move |running| {
        #[allow(clippy::print_stdout)]
        {
            for line in listener_lines(running) {
                println!("{line}");
            }
            if let Some(k) = &link_key {
                println!("link public key (give it to the cosigner's serve --bridge-key): {k}");
            }
            println!("ready");
        }
        // On PostgreSQL a replica serves clients at once, and says when it takes the
        // ground (the link and the relay) from the replica that held it.
        if let Some(ground) = running.ground.clone() {
            tokio::spawn(async move {
                ground.taken().await;
                #[allow(clippy::print_stdout)]
                {
                    println!("driving the ground");
                }
            });
        }
    })
    .await?;
    Ok(())
}
