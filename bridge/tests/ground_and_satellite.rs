//! The deployment's shape: the bridge (`satcosign-bridge run`) and the cosigner
//! (`satcosign-cosigner serve`) as two separate processes, each with its own data directory
//! and link identity, talking over UDP on loopback as they would through a ground station.
//!
//! A wallet is registered and a request signed; meanwhile the satellite is out of reach
//! (its process is killed) and the bridge is killed too. The request waits in the bridge's
//! persisted outbox, crosses when the satellite is back, and is signed once.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use common::flow::assert_final_tx;
use common::process::{mailed_code, BridgeProcess};
use common::satellite::{
    ground_config, printed_link_key, provision, register_wallet, signatures, start_satellite,
    udp_ports,
};

/// The ground: `satcosign-bridge run` with a config file naming the satellite; returns it
/// and the link key it printed for the satellite's `--bridge-key`.
fn start_ground(config: &Path) -> (BridgeProcess, String) {
    let config = config.to_str().expect("utf-8 path");
    let ground = BridgeProcess::spawn(&["--config", config, "run"], &[]);
    let key = printed_link_key(&ground);
    (ground, key)
}

async fn confirm_from_mail(ground: &BridgeProcess, mail: &Path, id: &str) {
    let code = mailed_code(mail, id).await;
    ground
        .call("request.confirm", vec![json!(id), json!(code)])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_cosigner_processes_sign_over_udp_through_outages_and_kills_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ground_dir, sat_dir) = (tmp.path().join("ground"), tmp.path().join("satellite"));

    // The satellite is provisioned first; its printout is what the operator copies.
    let (sat_link_key, account_key) = provision(&sat_dir);

    let ports = udp_ports();
    let config = tmp.path().join("bridge.toml");
    std::fs::write(
        &config,
        ground_config(&ground_dir, (&sat_link_key, &account_key), ports, ""),
    )
    .expect("config");
    let mail = ground_dir.join("mail");

    let (ground, ground_key) = start_ground(&config);
    let satellite = start_satellite(&sat_dir, &ground_key, ports);
    let info = ground.call("satellite.info", vec![]).await;
    let issuer: satcosign_cosigner::keys::AccountKey = account_key.parse().expect("issuer key");
    let published = info.to_string();
    assert!(
        !published.contains(&issuer.xpub.to_string())
            && !published.contains(&issuer.electrum_xpub()),
        "satellite.info publishes no key that signs: {info}"
    );

    // The user's wallet holds a satellite key the bridge issued for it.
    let (w, wid, _) = register_wallet(&ground, &mail).await;
    let status = ground.call("wallet.status", vec![json!(wid)]).await;
    assert_eq!(status["state"], "active", "{status}");

    // The satellite goes out of reach; a request is made and confirmed meanwhile.
    satellite.kill();
    let psbt = w.typical_signed_psbt(1, 3);
    let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
    let sub = ground
        .call("request.submit", vec![json!(wid), json!(b64)])
        .await;
    let id = sub["request_id"].as_str().expect("id").to_owned();
    confirm_from_mail(&ground, &mail, &id).await;
    ground.wait_state(&id, "queued").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = ground.call("request.status", vec![json!(id)]).await;
    assert_eq!(s["state"], "queued", "nobody to hear it: {s}");

    // The ground is killed too; what it acknowledged waits in its outbox.
    ground.kill();
    let (ground, ground_key) = start_ground(&config);
    let s = ground.call("request.status", vec![json!(id)]).await;
    assert_eq!(s["state"], "queued", "after the restart: {s}");

    // The satellite comes back into view: the request crosses, is signed and delivered.
    let _satellite = start_satellite(&sat_dir, &ground_key, ports);
    let done = ground.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert_final_tx(&done, &psbt);
    drop(_satellite);

    // The satellite's own audit log: one registration, one signature, for this request.
    let signed = signatures(&sat_dir);
    assert_eq!(signed.len(), 1, "signed once: {signed:?}");
    assert!(signed[0].contains(&format!("request={id}")), "{signed:?}");
}
