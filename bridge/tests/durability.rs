//! Nothing acknowledged is lost: puts survive SIGKILL of the bridge process; entries expire.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A child killed when dropped, so a failing test leaves no bridge behind.
struct Killed(Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the real binary on an ephemeral port; returns it and its Electrum TCP address.
/// Every connection here comes from 127.0.0.1, so the per-client shares are opened up.
fn spawn_bridge(data_dir: &Path) -> (Killed, SocketAddr) {
    let config = data_dir.with_extension("toml");
    std::fs::write(
        &config,
        "[electrum]\nmax_connections_per_peer = 64\n[mailbox]\nputs_per_minute_per_peer = 100000\nput_bytes_per_minute_per_peer = 1000000000000\n[limits]\nread_bytes_per_second_per_peer = 1000000000000\nread_burst_bytes_per_peer = 1000000000000\n",
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_satcosign-bridge"))
        .arg("--config")
        .arg(&config)
        .args([
            "--electrum-tcp",
            "127.0.0.1:0",
            "--http",
            "",
            "--nostr",
            "",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn satcosign-bridge");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        if let Some(a) = line.strip_prefix("electrum tcp: ") {
            addr = Some(a.parse().expect("address"));
        }
        if line == "ready" {
            break;
        }
    }
    (Killed(child), addr.expect("bridge printed its address"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut child, addr) = spawn_bridge(&data);

    // Many connections put at once, so several puts share each group commit.
    let mut tasks = Vec::new();
    for conn in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = common::LineClient::connect(addr).await;
            let mut written = Vec::new();
            for i in 0..10 {
                let key = common::keyhash(&format!("kill-{conn}-{i}"));
                let msg = common::b64(format!("payload {conn} {i}").as_bytes());
                assert_eq!(c.ok("cosigner.put", json!([key, msg])).await, Value::Null);
                written.push((key, msg));
            }
            written
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.expect("writer task"));
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix: no chance to flush
    child.wait().expect("reaped");

    let (mut child, addr) = spawn_bridge(&data);
    let mut c = common::LineClient::connect(addr).await;
    for (key, msg) in &acknowledged {
        assert_eq!(
            c.ok("cosigner.get", json!([key])).await,
            json!(msg),
            "acknowledged put to {key} lost across SIGKILL"
        );
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn entries_expire() {
    let h = common::start_bridge(|c| c.mailbox.ttl_secs = 1).await;
    let mut c = common::LineClient::connect(h.tcp()).await;
    let key = common::keyhash("short-lived");
    let msg = common::b64(b"soon gone");
    c.ok("cosigner.put", json!([key, msg])).await;
    assert_eq!(c.ok("cosigner.get", json!([key])).await, json!(msg));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        c.ok("cosigner.get", json!([key])).await,
        Value::Null,
        "expired"
    );
    assert_eq!(
        c.ok("cosigner.delete", json!([key])).await,
        json!(false),
        "nothing live to delete"
    );
    // A fresh put after expiry starts a new lifetime.
    c.ok("cosigner.put", json!([key, msg])).await;
    assert_eq!(c.ok("cosigner.get", json!([key])).await, json!(msg));
}

#[test]
fn help_and_bad_config_are_clear() {
    let out = Command::new(env!("CARGO_BIN_EXE_satcosign-bridge"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in [
        "--config",
        "--electrum-tcp",
        "--http",
        "--nostr",
        "--data-dir",
    ] {
        assert!(help.contains(flag), "--help lists {flag}: {help}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bridge.toml");
    std::fs::write(&cfg, "[mailbox]\nttl = 5\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_satcosign-bridge"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success(), "an unknown key stops the bridge");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ttl") && err.contains("bridge.toml"), "{err}");

    // The production binary has no embedded cosigner: `dev` and `demo` are another
    // binary's, which says what it is for.
    for command in ["dev", "demo"] {
        let out = Command::new(env!("CARGO_BIN_EXE_satcosign-bridge"))
            .arg(command)
            .output()
            .expect("run");
        assert!(
            !out.status.success(),
            "satcosign-bridge {command} must not run"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_satcosign-dev"))
        .arg("--help")
        .output()
        .expect("run satcosign-dev --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for word in ["dev", "demo", "--data-dir", "Not for real funds"] {
        assert!(
            help.contains(word),
            "satcosign-dev --help lists {word}: {help}"
        );
    }
}
