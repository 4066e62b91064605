//! The `satcosign-cosigner` binary: `init` makes a private key file and prints the xpubs
//! users need, refuses to overwrite, and `--help` documents every command.

use std::process::Command;

fn cosigner(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_satcosign-cosigner"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run satcosign-cosigner")
}

#[test]
fn init_creates_a_private_key_and_prints_the_issuer_key_for_the_bridge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cosigner(dir.path(), &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/48h/1h/0h/2h]tpub"),
        "test-network descriptor key: {text}"
    );
    assert!(
        text.contains("/48h/0h/0h/2h]xpub"),
        "mainnet descriptor key: {text}"
    );
    assert!(
        !text.contains("Vpub") && !text.contains("Zpub"),
        "no key for users to add: each wallet gets its own from the bridge: {text}"
    );
    let link_line = text
        .lines()
        .find(|l| l.starts_with("link public key"))
        .expect("the link public key is printed");
    let link_pub = link_line.rsplit(' ').next().expect("key");
    assert_eq!(link_pub.len(), 64, "{link_line}");
    let link_secret = std::fs::read_to_string(dir.path().join("link.key")).expect("link key file");
    assert!(
        !text.contains(link_secret.trim()),
        "the link secret is never printed"
    );
    let seed = std::fs::read_to_string(dir.path().join("cosigner.key")).expect("key file");
    assert!(!text.contains(seed.trim()), "the seed is never printed");
    // No extended private key: not the master's nor the account's, in either network's
    // form, nor anything spelled like one. (A bare "prv" can occur in random base58 or
    // in the random temporary folder's name, so the test looks for whole keys.)
    let seed_bytes =
        satcosign_cosigner::keys::load_key_file(&dir.path().join("cosigner.key")).expect("seed");
    let secp = bitcoin::secp256k1::Secp256k1::new();
    for network in [bitcoin::NetworkKind::Main, bitcoin::NetworkKind::Test] {
        let master = bitcoin::bip32::Xpriv::new_master(network, &seed_bytes).expect("master");
        let account = master
            .derive_priv(&secp, &satcosign_cosigner::keys::account_path(network))
            .expect("account");
        for key in [master, account] {
            assert!(!text.contains(&key.to_string()), "a private key is printed");
        }
    }
    assert!(
        !text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|t| t.starts_with("xprv") || t.starts_with("tprv")),
        "no extended private key is printed: {text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("cosigner.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A second init must not replace the key.
    let again = cosigner(dir.path(), &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cosigner.key")).expect("key"),
        seed
    );

    // `xpub` prints the same keys again.
    let xpub = cosigner(dir.path(), &["xpub"]);
    assert!(xpub.status.success());
    let lines = |t: &str| {
        t.lines()
            .filter(|l| l.contains("descriptor key:") || l.contains("electrum xpub:"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&String::from_utf8_lossy(&xpub.stdout)), lines(&text));
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cosigner(dir.path(), &["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "init",
        "xpub",
        "run",
        "serve",
        "audit",
        "--config",
        "--data-dir",
    ] {
        assert!(text.contains(cmd), "--help mentions {cmd}: {text}");
    }
}

#[test]
fn a_bad_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "network = \"moonnet\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_satcosign-cosigner"))
        .arg("--config")
        .arg(&cfg)
        .arg("xpub")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network") && err.contains("moonnet"), "{err}");
}

#[test]
fn serve_answers_the_bridge_over_udp_with_authenticated_link_messages() {
    use satcosign_cosigner::decision::RequestId;
    use satcosign_cosigner::protocol::{open_envelope, seal_envelope, Request, Response};
    use satcosign_link::crypto::{Cipher, Identity};
    use satcosign_link::engine::{Engine, EngineConfig};
    use satcosign_link::link::LinkHandle;
    use satcosign_link::store::MemStore;
    use satcosign_link::transport::udp::UdpTransport;

    let dir = tempfile::tempdir().expect("tempdir");
    let out = cosigner(dir.path(), &["init"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let sat_key = text
        .lines()
        .find_map(|l| l.strip_prefix("link public key (give it to the bridge): "))
        .expect("link key printed")
        .trim()
        .to_owned();
    let ground = Identity::generate();
    let free = |_| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
    };
    let (sat_addr, ground_addr) = (free(0), free(1));
    let child = Command::new(env!("CARGO_BIN_EXE_satcosign-cosigner"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--bridge-key", &hex::encode(ground.public())])
        .args([
            "--udp-bind",
            &sat_addr.to_string(),
            "--udp-peer",
            &ground_addr.to_string(),
        ])
        .spawn()
        .expect("serve");
    // Killed however the test ends, so no daemon outlives it.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Killed(child);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reply = rt.block_on(async {
        let peer = satcosign_link::crypto::parse_public(&sat_key).expect("key");
        let engine = Engine::new(
            EngineConfig::default(),
            Cipher::new(&ground, &peer),
            MemStore::new(),
            1.0,
        )
        .expect("engine");
        let t = UdpTransport::connect(ground_addr, sat_addr)
            .await
            .expect("udp");
        let link = LinkHandle::spawn(engine, t);
        let id = RequestId([9; 16]);
        link.send(seal_envelope(&id, &Request::Hello.encode()))
            .await
            .expect("send");
        let (msg, bytes) = tokio::time::timeout(std::time::Duration::from_secs(60), link.recv())
            .await
            .expect("an answer within a minute")
            .expect("recv");
        link.ack(msg).expect("ack");
        let (rid, body) = open_envelope(&bytes).expect("envelope");
        assert_eq!(rid, id, "answered with the request's id");
        Response::decode(body).expect("decodes")
    });
    drop(child);
    match reply {
        Response::Info(info) => assert!(text.contains(&info.issuer_key), "{info:?}"),
        other => panic!("expected Info, got {other:?}"),
    }
}
