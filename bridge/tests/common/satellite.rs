//! The satellite as its own process: `satcosign-cosigner` provisioned with `init` and run
//! with `serve` over UDP on loopback, as a ground station would reach it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The cosigner's binary, built beside the bridge's by `cargo test --workspace`.
pub fn cosigner_bin() -> PathBuf {
    let bridge = PathBuf::from(env!("CARGO_BIN_EXE_satcosign-bridge"));
    let path = bridge.with_file_name("satcosign-cosigner");
    if !path.exists() {
        // Run on its own (`cargo test -p satcosign-bridge`), the other binary may be missing.
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "satcosign-cosigner",
                "--bin",
                "satcosign-cosigner",
            ])
            .status()
            .expect("cargo");
        assert!(status.success(), "building satcosign-cosigner");
    }
    path
}

pub fn cosigner(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(cosigner_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("cosigner binary");
    assert!(
        out.status.success(),
        "satcosign-cosigner {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8");
    out
}

/// Two free UDP ports on loopback.
pub fn udp_ports() -> (u16, u16) {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    )
}

pub struct Process(Child);

impl Process {
    pub fn kill(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        self.0.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The satellite: `satcosign-cosigner serve` over UDP, answering the bridge's link key.
pub fn start_satellite(dir: &Path, ground_key: &str, ports: (u16, u16)) -> Process {
    Process(
        Command::new(cosigner_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["serve", "--bridge-key", ground_key])
            .args(["--udp-bind", &format!("127.0.0.1:{}", ports.1)])
            .args(["--udp-peer", &format!("127.0.0.1:{}", ports.0)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cosigner binary"),
    )
}

/// What `init` printed for the operator: the satellite's link key (for the bridge's
/// `link_public_key`) and the test networks' issuer key (for its `account_key`).
pub fn provision(dir: &Path) -> (String, String) {
    let init = String::from_utf8(cosigner(dir, &["init"]).stdout).expect("utf-8");
    let link_key = init
        .lines()
        .find_map(|l| l.split_once("(give it to the bridge): ").map(|(_, k)| k))
        .expect("init prints the link key")
        .trim()
        .to_owned();
    let testnet = init
        .split("testnet/signet/regtest:")
        .nth(1)
        .expect("test keys");
    let account_key = testnet
        .lines()
        .find_map(|l| l.trim().strip_prefix("issuer key: "))
        .expect("init prints the issuer key")
        .to_owned();
    (link_key, account_key)
}

/// The satellite's audit lines that record a signature it made.
pub fn signatures(dir: &Path) -> Vec<String> {
    String::from_utf8(cosigner(dir, &["audit"]).stdout)
        .expect("utf-8")
        .lines()
        .filter(|l| l.contains(" sign ") && l.contains(" signed"))
        .map(str::to_owned)
        .collect()
}

/// The ground's `bridge.toml` for a satellite provisioned with [`provision`] and reached
/// over UDP on `ports` (ground, satellite); `extra` is appended (more sections).
pub fn ground_config(
    ground_dir: &Path,
    (sat_link_key, account_key): (&str, &str),
    ports: (u16, u16),
    extra: &str,
) -> String {
    format!(
        r#"network = "testnet"
data_dir = "{data}"
[electrum]
tcp = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[nostr]
listen = ""
[satellite]
account_key = "{account_key}"
link_public_key = "{sat_link_key}"
transport = "udp"
udp_bind = "127.0.0.1:{ground_port}"
udp_peer = "127.0.0.1:{sat_port}"
{extra}"#,
        data = ground_dir.display(),
        ground_port = ports.0,
        sat_port = ports.1,
    )
}

/// A wallet on a satellite key `ground` issues, registered for Ann and confirmed from the
/// mail in `mail`: the wallet, its id, and the registration's request id.
pub async fn register_wallet(
    ground: &super::process::BridgeProcess,
    mail: &Path,
) -> (satcosign_cosigner::testkit::TestWallet, String, String) {
    let issued = ground.call("satellite.new_key", vec![]).await;
    let key: satcosign_cosigner::keys::AccountKey = issued["descriptor_key"]
        .as_str()
        .expect("descriptor_key")
        .parse()
        .expect("parses");
    let w = satcosign_cosigner::testkit::TestWallet::with_satellite(key);
    let reg = ground
        .call(
            "wallet.register",
            vec![
                serde_json::json!(w.descriptor),
                serde_json::json!("ann@example.org"),
                serde_json::json!("Ann"),
            ],
        )
        .await;
    let reg_id = reg["request_id"].as_str().expect("id").to_owned();
    let wid = reg["wallet_id"].as_str().expect("wallet").to_owned();
    let code = super::process::mailed_code(mail, &reg_id).await;
    ground
        .call(
            "request.confirm",
            vec![serde_json::json!(reg_id), serde_json::json!(code)],
        )
        .await;
    let done = ground.wait_state(&reg_id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "registration: {done}");
    (w, wid, reg_id)
}

/// The link key a ground bridge printed for the satellite's `--bridge-key`.
pub fn printed_link_key(ground: &super::process::BridgeProcess) -> String {
    ground
        .printed
        .iter()
        .find_map(|l| {
            l.split_once("--bridge-key): ")
                .map(|(_, k)| k.trim().to_owned())
        })
        .expect("the bridge printed its link key")
}
