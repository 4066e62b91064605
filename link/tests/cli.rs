//! `satcosign-link keygen` writes a private identity and prints the public key to give to
//! the other side; it never overwrites.

use std::process::Command;

#[test]
fn keygen_prints_the_public_key_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("ground.key");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_satcosign-link"))
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["keygen", "--out", key.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(public.len(), 64);
    let secret = std::fs::read_to_string(&key).expect("key");
    assert_ne!(
        secret.trim(),
        public,
        "the file holds the secret, stdout only the public key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = run(&["keygen", "--out", key.to_str().expect("utf8")]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&key).expect("key"), secret);
    let pubkey = run(&["pubkey", "--key", key.to_str().expect("utf8")]);
    assert_eq!(String::from_utf8_lossy(&pubkey.stdout).trim(), public);
    let help = run(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("keygen"));
}
