//! Kill the daemon (SIGKILL) after it recorded a signature and before it replied; restart;
//! retry: the same signatures come back, the ledger is debited once, and a different
//! transaction over the same outpoints is refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use satcosign_cosigner::protocol::{RegisterWallet, Request, Response, SignOutcome};
use satcosign_cosigner::testkit::{self, foreign_script, SpendSpec, TestWallet};

struct Daemon {
    child: Reaped,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

fn start(dir: &Path, pause: bool) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_satcosign-cosigner"));
    cmd.arg("--config")
        .arg(dir.join("cosigner.toml"))
        .arg("run")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if pause {
        cmd.env("SATCOSIGN_TEST_PAUSE_BEFORE_REPLY", "1");
    }
    let mut child = cmd.spawn().expect("spawn satcosign-cosigner");
    Daemon {
        stdin: child.stdin.take().expect("stdin"),
        stdout: child.stdout.take().expect("stdout"),
        child: Reaped(child),
    }
}

/// The daemon's process, killed when dropped: a failing test never leaves it running.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Daemon {
    fn send(&mut self, req: &Request) {
        let bytes = req.encode();
        self.stdin
            .write_all(&(bytes.len() as u32).to_be_bytes())
            .expect("write");
        self.stdin.write_all(&bytes).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn recv(&mut self) -> Response {
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len).expect("reply length");
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stdout.read_exact(&mut buf).expect("reply");
        Response::decode(&buf).expect("reply decodes")
    }

    fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        self.recv()
    }

    fn stop(mut self) {
        drop(self.stdin);
        self.child.wait().expect("exits at end of input");
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn sigkill_between_ledger_write_and_reply_signs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cosigner.toml"),
        format!(
            "network = \"regtest\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let key_path = dir.path().join("data/cosigner.key");
    std::fs::write(
        &key_path,
        hex::encode(testkit::seed(testkit::SATELLITE_TAG)),
    )
    .expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    let tw = TestWallet::new();
    let spec = SpendSpec {
        inputs: vec![(0, 0, 1_000_000), (0, 1, 500_000)],
        payments: vec![(foreign_script(1), 900_000)],
        change: Some((0, 598_000)),
    };
    let mut psbt = tw.psbt(&spec);
    tw.sign_with(&tw.user, &mut psbt);
    let request = tw.request(&psbt, 1, now());

    // First run: register, then sign; the daemon pauses after committing, before replying.
    let mut d = start(dir.path(), true);
    let registered = d.call(&Request::RegisterWallet(RegisterWallet {
        descriptors: vec![tw.descriptor.clone()],
        policy: testkit::generous_policy(),
        key_index: testkit::WALLET_KEY_INDEX,
    }));
    assert!(
        matches!(registered, Response::WalletRegistered(_)),
        "{registered:?}"
    );
    d.send(&Request::Sign(request.clone()));
    let mut stderr = BufReader::new(d.child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "daemon exited before pausing"
        );
        if line.contains("paused before reply") {
            break;
        }
    }
    d.child.kill().expect("SIGKILL");
    d.child.wait().expect("reaped");

    // Second run: the same request again.
    let mut d = start(dir.path(), false);
    let first = match d.call(&Request::Sign(request.clone())) {
        Response::Sign(r) => r.outcome,
        other => panic!("{other:?}"),
    };
    let SignOutcome::Signed { psbt: signed } = first else {
        panic!("the retry after the crash must be signed: {first:?}");
    };
    // Asking once more returns exactly the same bytes.
    match d.call(&Request::Sign(request.clone())) {
        Response::Sign(r) => assert_eq!(
            r.outcome,
            SignOutcome::Signed {
                psbt: signed.clone()
            }
        ),
        other => panic!("{other:?}"),
    }
    // A different transaction over the same coins is refused.
    let mut other = tw.psbt(&SpendSpec {
        payments: vec![(foreign_script(2), 900_000)],
        ..spec.clone()
    });
    tw.sign_with(&tw.user, &mut other);
    match d.call(&Request::Sign(tw.request(&other, 2, now()))) {
        Response::Sign(r) => match r.outcome {
            SignOutcome::Refused(refusal) => assert_eq!(refusal.code(), "outpoint_already_signed"),
            signed => panic!("signed a conflicting transaction: {signed:?}"),
        },
        other => panic!("{other:?}"),
    }
    d.stop();

    // The record, read with the daemon stopped: one debit, signed once, then retries.
    let c = satcosign_cosigner::daemon::Cosigner::open(
        testkit::key(testkit::SATELLITE_TAG),
        &dir.path().join("data/cosigner.redb"),
        common::settings(),
    )
    .expect("open");
    let ledger = c.ledger(&tw.wallet.id, 0).expect("ledger");
    assert_eq!(ledger.len(), 1, "debited exactly once: {ledger:?}");
    assert_eq!(ledger[0].amount_sat, 900_000 + 2_000);
    let outcomes: Vec<String> = c
        .audit_log()
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "sign")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes,
        ["signed", "retry", "retry", "outpoint_already_signed"]
    );
    let signed = bitcoin::psbt::Psbt::deserialize(&signed).expect("psbt");
    common::finalize_and_verify(signed);
}
