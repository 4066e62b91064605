//! Time for the cosigner to check and sign PSBTs of 1, 10 and 100 inputs, and of 250 inputs
//! with 2,000 outputs (the size Coldcard tests its spending policy with), and the daemon's
//! resident memory when idle and under load.
//!
//! Baseline, measured in the same run on the same PSBT: decoding it, computing each input's
//! BIP143 sighash and making its ECDSA signature, with no checks at all (the irreducible work
//! of any signer).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use clap::Parser;
use satcosign_bench::table;
use satcosign_cosigner::daemon::{Cosigner, Settings};
use satcosign_cosigner::decision::{decide, Decision, DecisionInput, Rules};
use satcosign_cosigner::protocol::{RegisterWallet, Request, Response};
use satcosign_cosigner::testkit::{self, TestWallet};

/// Measure the cosigner's check-and-sign time and memory.
#[derive(Parser, Debug)]
#[command(name = "cosigner-sign", about)]
struct Args {
    /// Repetitions per size.
    #[arg(long, default_value_t = 30)]
    reps: u32,
    /// The daemon binary whose memory is measured.
    #[arg(long, default_value = "target/release/satcosign-cosigner")]
    daemon: PathBuf,
}

const NOW: u64 = 1_800_000_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn rules() -> Rules {
    Rules {
        approval_max_age_secs: 3600,
        clock_skew_secs: 300,
    }
}

/// Decode, then sighash and sign every input: what any signer must do, and nothing more.
fn bare_decode_and_sign(bytes: &[u8], sk: &SecretKey, secp: &Secp256k1<All>) -> anyhow::Result<()> {
    let psbt = bitcoin::psbt::Psbt::deserialize(bytes)?;
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    for (i, input) in psbt.inputs.iter().enumerate() {
        let script = input.witness_script.as_ref().context("witness script")?;
        let value = input.witness_utxo.as_ref().context("witness utxo")?.value;
        let sighash = cache.p2wsh_signature_hash(i, script, value, EcdsaSighashType::All)?;
        let msg = Message::from_digest(sighash.to_byte_array());
        std::hint::black_box(secp.sign_ecdsa_low_r(&msg, sk));
    }
    Ok(())
}

/// The spends measured: (inputs, outputs).
const SIZES: [(u32, u32); 4] = [(1, 2), (10, 2), (100, 2), (250, 2_000)];

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tw = TestWallet::new();
    let satellite_key = testkit::satellite_wallet_key();
    let secp = Secp256k1::new();
    let policy = testkit::generous_policy();
    let dir = tempfile::tempdir()?;
    let daemon = Cosigner::open(
        testkit::key(testkit::SATELLITE_TAG),
        &dir.path().join("bench.redb"),
        Settings {
            network: bitcoin::Network::Regtest,
            rules: rules(),
            policy_loosen_delay_secs: 0,
        },
    )?;
    daemon.handle(
        &Request::RegisterWallet(RegisterWallet {
            descriptors: vec![tw.descriptor.clone()],
            policy: policy.clone(),
            key_index: testkit::WALLET_KEY_INDEX,
        }),
        NOW,
    );

    let mut rows = Vec::new();
    let mut salt = 1u32;
    let sk = SecretKey::from_slice(&[7u8; 32])?;
    for (n, outputs) in SIZES {
        let (mut base, mut pure, mut durable) = (Vec::new(), Vec::new(), Vec::new());
        // The largest spend is slow to build; fewer repetitions still give a stable median.
        let reps = if outputs > 2 {
            args.reps.div_ceil(3)
        } else {
            args.reps
        };
        for _ in 0..reps {
            salt += 1;
            let psbt = if outputs > 2 {
                tw.large_signed_psbt(n, outputs, salt)
            } else {
                tw.typical_signed_psbt(n, salt)
            };
            let req = tw.request(&psbt, (salt % 250) as u8, NOW);

            let t = Instant::now();
            bare_decode_and_sign(&req.psbt, &sk, &secp)?;
            base.push(t.elapsed());
            // The pure decision: every check and every signature.
            let none = BTreeMap::new();
            let input = DecisionInput {
                key: &satellite_key,
                wallet: Some((&tw.wallet, &policy)),
                history: satcosign_cosigner::decision::History::none(),
                hold: None,
                cancelled: false,
                signed_outpoints: &none,
                request: &req,
                now: NOW,
                rules: rules(),
            };
            let t = Instant::now();
            let d = decide(&input, &secp);
            pure.push(t.elapsed());
            anyhow::ensure!(
                matches!(d, Decision::Sign(_)),
                "benchmark spend refused: {d:?}"
            );

            // Through the daemon: decode, decide, durable two-phase commit, encode.
            let bytes = Request::Sign(req).encode();
            let t = Instant::now();
            let reply = daemon.handle_bytes(&bytes, NOW);
            durable.push(t.elapsed());
            anyhow::ensure!(matches!(Response::decode(&reply), Ok(Response::Sign(_))));
        }
        let (b, p, d) = (median(base), median(pure), median(durable));
        rows.push(vec![
            format!("{n} x {outputs}"),
            ms(b),
            ms(p),
            format!("{:.1}x", p.as_secs_f64() / b.as_secs_f64()),
            ms(d),
        ]);
    }
    println!("cosigner-sign: median of {} runs per size", args.reps);
    println!(
        "{}",
        table(
            &[
                "inputs x outputs",
                "baseline ms (decode+sighash+sign)",
                "decision ms (check+sign)",
                "vs baseline",
                "daemon ms (+durable commit)"
            ],
            &rows
        )
    );
    println!(
        "goals: 1 input <= 2 ms, 100 inputs <= 150 ms (decision column); 250 x 2000 <= 2x baseline"
    );
    memory(&args, &tw)?;
    Ok(())
}

/// Idle and loaded resident memory of the real daemon process.
#[allow(clippy::print_stdout)]
fn memory(args: &Args, tw: &TestWallet) -> anyhow::Result<()> {
    if !args.daemon.exists() {
        println!(
            "memory: {} not built; run scripts/bench",
            args.daemon.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cosigner.key");
    std::fs::write(&key, hex::encode(testkit::seed(testkit::SATELLITE_TAG)))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            "network = \"regtest\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    )?;
    let mut child = Command::new(&args.daemon)
        .arg("--config")
        .arg(dir.path().join("c.toml"))
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut call = |req: &Request| -> anyhow::Result<Response> {
        let b = req.encode();
        stdin.write_all(&(b.len() as u32).to_be_bytes())?;
        stdin.write_all(&b)?;
        stdin.flush()?;
        let mut len = [0u8; 4];
        stdout.read_exact(&mut len)?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        stdout.read_exact(&mut buf)?;
        Ok(Response::decode(&buf)?)
    };
    call(&Request::Hello)?;
    let status = |field: &str| -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let line = s.lines().find(|l| l.starts_with(field)).unwrap_or("");
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    };
    let idle = status("VmRSS:")?;
    call(&Request::RegisterWallet(RegisterWallet {
        descriptors: vec![tw.descriptor.clone()],
        policy: testkit::generous_policy(),
        key_index: testkit::WALLET_KEY_INDEX,
    }))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    for salt in 0..20 {
        let psbt = tw.typical_signed_psbt(100, 500 + salt);
        let r = call(&Request::Sign(tw.request(&psbt, salt as u8, now)))?;
        anyhow::ensure!(matches!(r, Response::Sign(_)));
    }
    let loaded = status("VmRSS:")?;
    let peak_typical = status("VmHWM:")?;
    let large = tw.large_signed_psbt(250, 2_000, 9_000);
    let r = call(&Request::Sign(tw.request(&large, 240, now)))?;
    anyhow::ensure!(
        matches!(&r, Response::Sign(s) if matches!(s.outcome, satcosign_cosigner::protocol::SignOutcome::Signed { .. })),
        "the 250 x 2000 spend was not signed: {r:?}"
    );
    let peak = status("VmHWM:")?;
    drop(stdin);
    child.wait()?;
    let mb = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
    println!("daemon resident memory (MB)");
    println!(
        "{}",
        table(
            &[
                "idle",
                "after 20 x 100-input requests",
                "peak so far",
                "peak after a 250 x 2000 request"
            ],
            &[vec![mb(idle), mb(loaded), mb(peak_typical), mb(peak)]]
        )
    );
    println!("goals: idle <= 16 MB; peak with the 250 x 2000 spend <= 16 MB");
    Ok(())
}
