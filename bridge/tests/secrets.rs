//! Keys and codes never reach the logs: the real `dev` binary, logging at debug level,
//! registers a wallet and signs a request, and nothing it wrote contains a code it emailed,
//! the cosigner's seed, any link or mailbox secret, or an extended private key.

mod common;

use std::path::Path;

use serde_json::json;

use common::process::{mailed_code, BridgeProcess};

fn secret_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_code_is_ever_logged_at_debug_level() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let b = BridgeProcess::dev(&dir, &[], &[("RUST_LOG", "debug")]);
    let w = common::process::issue_dev_wallet(&b, &dir).await;

    let mut codes = Vec::new();
    let reg = b
        .call(
            "wallet.register",
            vec![json!(w.descriptor), json!("hal@example.org"), json!("Hal")],
        )
        .await;
    let rid = reg["request_id"].as_str().expect("id").to_owned();
    let wid = reg["wallet_id"].as_str().expect("wallet").to_owned();
    codes.push(mailed_code(&dir.join("mail"), &rid).await);
    b.call("request.confirm", vec![json!(rid), json!(codes[0])])
        .await;
    b.wait_state(&rid, "delivered").await;

    let psbt = w.typical_signed_psbt(1, 17);
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
    };
    let sub = b.call("request.submit", vec![json!(wid), json!(b64)]).await;
    let id = sub["request_id"].as_str().expect("id").to_owned();
    codes.push(mailed_code(&dir.join("mail"), &id).await);
    b.call("request.confirm", vec![json!(id), json!(codes[1])])
        .await;
    let done = b.wait_state(&id, "delivered").await;
    assert_eq!(done["final_state"], "signed", "{done}");

    let printed = b.printed.join("\n");
    let logs = b.terminate_with_logs().join("\n");
    // The logs are there to be searched: every state change is logged.
    assert!(
        logs.contains("request state") && logs.contains(&id),
        "debug logs were not captured:\n{logs}"
    );
    let seed =
        satcosign_cosigner::keys::load_key_file(&dir.join("cosigner/cosigner.key")).expect("key");
    let issuer =
        satcosign_cosigner::keys::CosignerKey::from_seed(&seed, bitcoin::NetworkKind::Test)
            .expect("key");
    let secrets = [
        ("the cosigner's seed", hex::encode(seed)),
        (
            "the issuer key (every wallet key derives from it)",
            issuer.account_xpub().to_string(),
        ),
        ("the bridge's link key", secret_text(&dir.join("link.key"))),
        (
            "the cosigner's link key",
            secret_text(&dir.join("cosigner/link.key")),
        ),
        ("the mailbox key", secret_text(&dir.join("mailbox.key"))),
        ("the registration's code", codes[0].clone()),
        ("the request's code", codes[1].clone()),
    ];
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is read");
        assert!(!logs.contains(secret.as_str()), "{what} is in the logs");
        assert!(!printed.contains(secret.as_str()), "{what} was printed");
    }
    // Extended private keys: the cosigner's own, and anything spelled like one (a bare
    // "tprv" could occur inside random base58).
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &seed).expect("key");
    let account = master
        .derive_priv(
            &secp,
            &satcosign_cosigner::keys::account_path(bitcoin::NetworkKind::Test),
        )
        .expect("account");
    for key in [master, account] {
        assert!(
            !logs.contains(&key.to_string()),
            "the cosigner's xprv is in the logs"
        );
    }
    assert!(
        !logs
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|t| t.starts_with("xprv") || t.starts_with("tprv")),
        "an extended private key in the logs"
    );
}
