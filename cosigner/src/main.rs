//! `satcosign-cosigner`: parses arguments and configuration, sets up logging, runs a command.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bitcoin::NetworkKind;
use clap::{Parser, Subcommand};
use satcosign_cosigner::config::Config;
use satcosign_cosigner::daemon::Cosigner;
use satcosign_cosigner::keys::{self, CosignerKey};
use satcosign_cosigner::protocol::{Response, SignOutcome, MAX_MESSAGE_BYTES};

/// satcosign's satellite cosigner: holds one key of each user's multisig wallet and signs
/// only what its rules allow.
#[derive(Parser, Debug)]
#[command(name = "satcosign-cosigner", version, about)]
struct Cli {
    /// TOML configuration file (see the README). Without it: testnet, ./cosigner-data.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the key (refuses to overwrite one) and print the issuer key for the bridge's
    /// private `satellite.account_key` (users get per-wallet keys from the bridge).
    Init,
    /// Print the issuer key of an existing key (for the bridge; never publish it).
    Xpub,
    /// Serve requests: length-prefixed messages (4-byte big-endian length, then the message)
    /// on stdin, answers on stdout. The radio link connects here.
    Run,
    /// Print the audit log.
    Audit,
    /// Serve the bridge over the radio link: UDP datagrams (`--udp-bind`, `--udp-peer`) or a
    /// KISS TNC over TCP (`--kiss-tcp`, e.g. Dire Wolf's port 8001).
    Serve(ServeArgs),
}

/// Where the radio link is, and who is at the other end.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The bridge's link public key (hex; the bridge creates `<data_dir>/link.key`).
    #[arg(long, value_name = "HEX")]
    bridge_key: String,
    /// Local UDP address.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "udp_peer",
        conflicts_with = "kiss_tcp"
    )]
    udp_bind: Option<std::net::SocketAddr>,
    /// The ground's UDP address.
    #[arg(long, value_name = "ADDR")]
    udp_peer: Option<std::net::SocketAddr>,
    /// A KISS TNC over TCP.
    #[arg(long, value_name = "HOST:PORT")]
    kiss_tcp: Option<String>,
    /// Largest link frame, bytes.
    #[arg(long, default_value_t = 256)]
    mtu: usize,
    /// Channel bit rate, for the link's timers.
    #[arg(long, default_value_t = 9600)]
    bitrate: u64,
    /// Frame loss expected on the channel (sizes forward error correction).
    #[arg(long, default_value_t = 0.05)]
    expected_loss: f64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)]
fn print_xpubs(seed: &[u8; 32]) -> anyhow::Result<()> {
    for (name, kind) in [
        ("mainnet", NetworkKind::Main),
        ("testnet/signet/regtest", NetworkKind::Test),
    ] {
        let key = CosignerKey::from_seed(seed, kind)?;
        println!("{name}:");
        println!("  issuer key: {}", key.descriptor_key());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
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
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    config.check()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let key_path = config.key_path();
    match cli.command {
        Command::Init => {
            let seed = keys::create_key_file(&key_path)?;
            let link_path = config.data_dir.join("link.key");
            let link = satcosign_link::crypto::Identity::create_file(&link_path)?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "created {} (mode 0600; back it up offline)",
                    key_path.display()
                );
                println!("created {} (mode 0600)", link_path.display());
                println!(
                    "link public key (give it to the bridge): {}",
                    hex::encode(link.public())
                );
            }
            print_xpubs(&seed)
        }
        Command::Xpub => print_xpubs(&keys::load_key_file(&key_path)?),
        Command::Audit => {
            let cosigner = open(&config)?;
            #[allow(clippy::print_stdout)]
            for e in cosigner.audit_log()? {
                println!(
                    "{} {} wallet={} request={} {} {}",
                    e.at,
                    e.action,
                    e.wallet_id.map(|w| w.to_string()).unwrap_or_default(),
                    e.request_id.map(|r| r.to_string()).unwrap_or_default(),
                    e.outcome,
                    e.detail
                );
            }
            Ok(())
        }
        Command::Run => serve_stdio(&open(&config)?),
        Command::Serve(args) => serve_link(&config, open(&config)?, args),
    }
}

/// Serves the bridge over the radio link until the link stops.
fn serve_link(config: &Config, cosigner: Cosigner, args: ServeArgs) -> anyhow::Result<()> {
    use satcosign_link::{crypto, engine, link::LinkHandle, store::RedbStore, transport};
    anyhow::ensure!(
        (0.0..0.5).contains(&args.expected_loss),
        "--expected-loss must be within 0..0.5"
    );
    anyhow::ensure!(
        (64..=4096).contains(&args.mtu),
        "--mtu must be within 64..=4096"
    );
    let peer = crypto::parse_public(&args.bridge_key).context("--bridge-key")?;
    let identity = crypto::Identity::load_file(&config.data_dir.join("link.key"))
        .context("the link key (made by `init`)")?;
    let store = std::sync::Arc::new(RedbStore::open(&config.data_dir.join("link.redb"))?);
    let engine = engine::Engine::new(
        engine::EngineConfig {
            mtu: args.mtu,
            bitrate: args.bitrate,
            expected_loss: args.expected_loss,
            ..Default::default()
        },
        crypto::Cipher::new(&identity, &peer),
        store,
        // The bridge uses 1.0: the two sides' timers must not run in step.
        1.37,
    )?;
    let cosigner = std::sync::Arc::new(cosigner);
    tokio::runtime::Runtime::new()?.block_on(async move {
        tracing::info!(info = ?cosigner.info(), "cosigner serving over the radio link");
        let result = match (args.udp_bind, args.udp_peer, args.kiss_tcp) {
            (Some(bind), Some(peer), None) => {
                let t = transport::udp::UdpTransport::connect(bind, peer).await?;
                let link = std::sync::Arc::new(LinkHandle::spawn(engine, t));
                satcosign_cosigner::link_service::serve(cosigner, link).await
            }
            (None, None, Some(addr)) => {
                let me = transport::kiss::Callsign::new("SAT", 0).context("callsign")?;
                let ground = transport::kiss::Callsign::new("GROUND", 0).context("callsign")?;
                let t = transport::kiss::KissTransport::connect_tcp(&addr, me, ground).await?;
                let link = std::sync::Arc::new(LinkHandle::spawn(engine, t));
                satcosign_cosigner::link_service::serve(cosigner, link).await
            }
            _ => anyhow::bail!("give either --udp-bind and --udp-peer, or --kiss-tcp"),
        };
        result.map_err(anyhow::Error::from)
    })
}

fn open(config: &Config) -> anyhow::Result<Cosigner> {
    let seed = keys::load_key_file(&config.key_path())?;
    let key = CosignerKey::from_seed(&seed, config.network.to_bitcoin().into())?;
    Ok(Cosigner::open(
        key,
        &config.database_path(),
        config.settings(),
    )?)
}

/// Test hook: pause (for a test to SIGKILL the process) after a signature is recorded and
/// before it is written out.
const PAUSE_ENV: &str = "SATCOSIGN_TEST_PAUSE_BEFORE_REPLY";

fn serve_stdio(cosigner: &Cosigner) -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let pause = std::env::var_os(PAUSE_ENV).is_some();
    tracing::info!(info = ?cosigner.info(), "cosigner serving on stdin/stdout");
    loop {
        let mut len = [0u8; 4];
        match stdin.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE_BYTES {
            anyhow::bail!("frame of {len} bytes is over the limit of {MAX_MESSAGE_BYTES}");
        }
        let mut msg = vec![0u8; len];
        stdin.read_exact(&mut msg)?;
        let reply = cosigner.handle_bytes(&msg, now());
        if pause
            && matches!(
                Response::decode(&reply),
                Ok(Response::Sign(ref r)) if matches!(r.outcome, SignOutcome::Signed { .. })
            )
        {
            eprintln!("paused before reply");
            loop {
                std::thread::park();
            }
        }
        stdout.write_all(&(reply.len() as u32).to_be_bytes())?;
        stdout.write_all(&reply)?;
        stdout.flush()?;
    }
}
