//! `satcosign-dev`: the whole system in one process on embedded defaults (redb in the data
//! directory, mail as .eml files under it, and a cosigner daemon in this process over a
//! simulated radio link), or one request through it step by step (`demo`). For trying
//! satcosign and for tests; the production bridge is `satcosign-bridge`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use satcosign_bridge::cli::{listener_lines, load_config, Overrides};
use satcosign_bridge::dev::Sky;

/// satcosign on one machine: the ground bridge with a cosigner in the same process over a
/// simulated radio link. Not for real funds.
#[derive(Parser, Debug)]
#[command(
    name = "satcosign-dev",
    version,
    about = "satcosign on one machine: the ground bridge with a cosigner in the same process \
             over a simulated radio link (`dev`), or one request through it step by step \
             (`demo`). Not for real funds: the production bridge is satcosign-bridge.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole system on embedded defaults (the default command).
    Dev(SkyArgs),
    /// Run one whole request through the embedded system and print each step.
    Demo(SkyArgs),
}

/// The simulated sky of `dev` and `demo`.
#[derive(Args, Debug, Clone, Copy)]
struct SkyArgs {
    /// Seconds the satellite is in view per pass.
    #[arg(long, default_value_t = 60)]
    pass_up: u64,
    /// Seconds from one pass to the next (e.g. 5400 for a low orbit).
    #[arg(long, default_value_t = 120)]
    pass_period: u64,
    /// Frame loss on the simulated channel, 0 to 0.45.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seconds until the first pass begins. `dev` starts in view (0); `demo` starts out of
    /// view, so you see the wait for a pass (default: the gap between passes, at most 30 s).
    #[arg(long, value_name = "SECS")]
    first_pass_in: Option<u64>,
}

impl SkyArgs {
    fn sky(self, start_out_of_view: bool) -> anyhow::Result<Sky> {
        anyhow::ensure!(self.pass_up >= 5, "--pass-up must be at least 5 seconds");
        anyhow::ensure!(
            self.pass_period >= self.pass_up,
            "--pass-period must be at least --pass-up"
        );
        anyhow::ensure!(
            (0.0..=0.45).contains(&self.loss),
            "--loss must be within 0..=0.45"
        );
        let gap = self.pass_period - self.pass_up;
        let first_pass_in = match self.first_pass_in {
            Some(s) => {
                anyhow::ensure!(
                    s <= self.pass_period,
                    "--first-pass-in must be at most --pass-period"
                );
                s
            }
            None if start_out_of_view => gap.min(30),
            None => 0,
        };
        Ok(Sky {
            pass_up: Duration::from_secs(self.pass_up),
            pass_period: Duration::from_secs(self.pass_period),
            loss: self.loss,
            first_pass_in: Duration::from_secs(first_pass_in),
            ..Sky::default()
        })
    }
}

#[allow(clippy::print_stdout)]
fn print_listeners(running: &satcosign_bridge::RunningBridge) {
    for line in listener_lines(running) {
        println!("{line}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Some(Command::Demo(_)));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if demo { "warn" } else { "info" })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let default = SkyArgs {
        pass_up: 60,
        pass_period: 120,
        loss: 0.0,
        first_pass_in: None,
    };
    match cli.command.unwrap_or(Command::Dev(default)) {
        Command::Dev(sky) => {
            let sky = sky.sky(false)?;
            let config = load_config(cli.overrides, true)?;
            let system = satcosign_bridge::dev::start_dev(config, sky).await?;
            print_listeners(&system.bridge);
            #[allow(clippy::print_stdout)]
            {
                if let Some(s) = &system.bridge.service {
                    println!(
                        "satellite keys for new wallets: satellite.new_key, or {}/key",
                        s.public_url()
                    );
                    if let Some(n) = s.nostr.get() {
                        println!(
                            "satellite's Nostr identities: {} (one per wallet key)",
                            n.identities()
                        );
                    }
                    println!("mail: {}", s.mail_destination());
                }
                println!(
                    "passes: in view {} s every {} s, the first in {} s, loss {}",
                    sky.pass_up.as_secs(),
                    sky.pass_period.as_secs(),
                    sky.first_pass_in.as_secs(),
                    sky.loss
                );
                println!("network: regtest (point Electrum at it with --regtest; see the README)");
                println!("ready");
            }
            satcosign_bridge::shutdown_signal().await;
            system.stop().await;
        }
        Command::Demo(sky) => {
            let sky = sky.sky(true)?;
            let config = load_config(cli.overrides, true)?;
            let system = satcosign_bridge::dev::start_dev(config, sky).await?;
            print_listeners(&system.bridge);
            let mut out = std::io::stdout();
            let result = satcosign_bridge::demo::run(&system, sky, &mut out).await;
            system.stop().await;
            let txid = result?;
            #[allow(clippy::print_stdout)]
            {
                println!("demo complete: {txid}");
            }
        }
    }
    Ok(())
}
