//! `satcosign-link`: provisions link identities.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use satcosign_link::crypto::Identity;

/// satcosign's radio link tools.
#[derive(Parser, Debug)]
#[command(name = "satcosign-link", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a link identity key (mode 0600, never overwritten) and print its public key,
    /// to give to the other side.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Print the public key of an existing identity.
    Pubkey {
        /// The secret key file.
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
    },
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keygen { out } => {
            let id = Identity::create_file(&out)?;
            println!("{}", hex::encode(id.public()));
        }
        Command::Pubkey { key } => {
            println!("{}", hex::encode(Identity::load_file(&key)?.public()));
        }
    }
    Ok(())
}
