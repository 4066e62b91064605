//! The real `satcosign-bridge` binary on the real clock, with short passes, loss and kills:
//! a request confirmed out of view is signed in the very next pass; `demo` completes on 5 s
//! passes at 30% loss every time; and a bridge SIGKILLed every 1-3 s still delivers requests
//! while the kills go on, each signed once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use common::flow::assert_final_tx;
use common::process::{dev_cosigner, dev_wallet, issue_dev_wallet, mailed_code, BridgeProcess};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Registers the test wallet through `b` and confirms it from the mail; returns its id.
async fn register(b: &BridgeProcess, dir: &Path) -> String {
    let w = issue_dev_wallet(b, dir).await;
    let r = b
        .call(
            "wallet.register",
            vec![json!(w.descriptor), json!("ann@example.org"), json!("Ann")],
        )
        .await;
    let rid = r["request_id"].as_str().expect("id").to_owned();
    let code = mailed_code(&dir.join("mail"), &rid).await;
    b.call("request.confirm", vec![json!(rid), json!(code)])
        .await;
    let done = b.wait_state(&rid, "delivered").await;
    assert_eq!(done["final_state"], "signed", "registration: {done}");
    r["wallet_id"].as_str().expect("wallet").to_owned()
}

/// Submits a PSBT of the test wallet (made distinct by `salt`) and confirms it from the
/// mail; returns the request id and the PSBT.
async fn submit_and_confirm(
    b: &BridgeProcess,
    dir: &Path,
    wid: &str,
    salt: u32,
) -> (String, bitcoin::Psbt) {
    let psbt = dev_wallet(dir).typical_signed_psbt(1, salt);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let sub = b.call("request.submit", vec![json!(wid), json!(b64)]).await;
    let id = sub["request_id"].as_str().expect("id").to_owned();
    let code = mailed_code(&dir.join("mail"), &id).await;
    b.call("request.confirm", vec![json!(id), json!(code)])
        .await;
    (id, psbt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_confirmed_out_of_view_is_signed_in_the_very_next_pass() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // In view for 10 s of every 60, the first pass at start (the registration crosses in it).
    let b = BridgeProcess::dev_sky(
        &dir,
        &[],
        &[
            "--pass-up",
            "10",
            "--pass-period",
            "60",
            "--first-pass-in",
            "0",
        ],
        &[],
    );
    let wid = register(&b, &dir).await;

    // Wait for the satellite to go out of view, as the bridge's status tells it.
    let deadline = Instant::now() + Duration::from_secs(70);
    let info = loop {
        let info = b.call("satellite.info", vec![]).await;
        if info["link"]["in_view"] == false {
            break info;
        }
        assert!(Instant::now() < deadline, "never out of view: {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(info["current_pass"], Value::Null, "{info}");
    let next_start = info["next_pass"]["start"].as_f64().expect("next pass");
    let next_end = info["next_pass"]["end"].as_f64().expect("next pass");
    assert!(
        next_start > unix_now() - 1.0,
        "next_pass is not a past one: {info}"
    );

    // Confirmed out of view: it waits in the queue, and the status says for what.
    let (id, psbt) = submit_and_confirm(&b, &dir, &wid, 11).await;
    let queued = b.wait_state(&id, "queued").await;
    assert_eq!(queued["state"], "queued");
    let info = b.call("satellite.info", vec![]).await;
    if unix_now() < next_start - 1.0 {
        assert_eq!(info["link"]["in_view"], false, "{info}");
        assert_eq!(info["link"]["queue_depth"], 1, "{info}");
        assert_eq!(info["link"]["head"]["state"], "waiting_for_pass", "{info}");
        assert_eq!(info["link"]["head"]["fragments_sent"], 0, "{info}");
    }

    // Signed, delivered and final within that very pass.
    let done = b.wait_state(&id, "delivered").await;
    let at = unix_now();
    assert_eq!(done["final_state"], "signed", "{done}");
    assert!(
        at >= next_start - 1.0 && at <= next_end + 2.0,
        "delivered at {at}, the next pass was {next_start}..{next_end}"
    );
    assert_final_tx(&done, &psbt);
    b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_completes_on_five_second_passes_at_thirty_percent_loss_ten_times_out_of_ten() {
    let runs: Vec<_> = (0..10)
        .map(|_| {
            let tmp = tempfile::tempdir().expect("tempdir");
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_satcosign-dev"))
                .args(["--electrum-tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
                .args(["--nostr", "", "--data-dir"])
                .arg(tmp.path().join("data"))
                .args([
                    "demo",
                    "--pass-up",
                    "5",
                    "--pass-period",
                    "20",
                    "--loss",
                    "0.3",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("bridge binary");
            (tmp, Reaped(Some(child)))
        })
        .collect();
    let mut failures = Vec::new();
    for (i, (_tmp, mut child)) in runs.into_iter().enumerate() {
        let out = child
            .0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // It waits for a pass first (it starts out of view), then every step is shown.
        let complete = stdout.lines().any(|l| l.starts_with("demo complete: "));
        let waited = stdout.contains("next pass in");
        let verified = stdout.contains("every input verified by miniscript's interpreter");
        if !(out.status.success() && complete && waited && verified) {
            let tail: String = stdout
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            failures.push(format!("run {i}: {}\n{tail}\n{stderr}", out.status));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 10 runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A child killed if the test ends before it does.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_every_few_seconds_still_delivers_during_the_kills() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let b = BridgeProcess::dev(&dir, &[], &[]);
    let wid = register(&b, &dir).await;
    // Ten requests confirmed and queued, then the kills begin at once.
    let mut requests = Vec::new();
    for salt in 0..10 {
        requests.push(submit_and_confirm(&b, &dir, &wid, 100 + salt).await);
    }
    for (id, _) in &requests {
        let s = b.call("request.status", vec![json!(id)]).await;
        assert_ne!(s["state"], "awaiting_email", "{s}");
    }
    b.kill();

    let loop_ends = Instant::now() + Duration::from_secs(120);
    let mut delivered_during = std::collections::BTreeSet::new();
    let mut kills = 0u32;
    let mut rng = 0x5eed_u64;
    while Instant::now() < loop_ends {
        let b = BridgeProcess::dev(&dir, &[], &[]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let dies_at = Instant::now() + Duration::from_millis(1000 + rng % 2000);
        while Instant::now() < dies_at {
            for (id, _) in &requests {
                if delivered_during.contains(id) {
                    continue;
                }
                let s = b.call("request.status", vec![json!(id)]).await;
                if s["state"] == "delivered" {
                    delivered_during.insert(id.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.kill();
        kills += 1;
    }
    assert!(kills >= 30, "{kills} kills in two minutes");
    eprintln!(
        "{kills} kills in two minutes; {} of {} requests delivered during them",
        delivered_during.len(),
        requests.len()
    );

    // After the kills, every request completes, signed once by the satellite.
    let b = BridgeProcess::dev(&dir, &[], &[]);
    for (id, psbt) in &requests {
        let done = b.wait_state(id, "delivered").await;
        assert_eq!(done["final_state"], "signed", "{done}");
        assert_final_tx(&done, psbt);
    }
    b.terminate();
    // The satellite's own audit log: each request signed exactly once.
    let cosigner = dev_cosigner(&dir);
    let audit = cosigner.audit_log().expect("audit");
    for (id, _) in &requests {
        let rid = common::flow::parse_id(id);
        let n = audit
            .iter()
            .filter(|e| e.action == "sign" && e.outcome == "signed" && e.request_id == Some(rid))
            .count();
        assert_eq!(n, 1, "request {id} signed {n} times");
    }
    assert!(
        delivered_during.len() * 2 >= requests.len(),
        "only {} of {} requests were delivered during two minutes of kills every 1-3 s",
        delivered_during.len(),
        requests.len()
    );
}
