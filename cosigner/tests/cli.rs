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
fn init_creates_a_private_key_and_prints_both_xpub_forms() {
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
        text.contains("Vpub") && text.contains("Zpub"),
        "Electrum forms: {text}"
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
    assert!(!text.contains("prv"), "no private key is printed");
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
    for cmd in ["init", "xpub", "run", "audit", "--config", "--data-dir"] {
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
