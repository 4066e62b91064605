//! A test program at the other end of stdio (Electrum's side, in Python): started with its
//! stdout read line by line, its stdin for answers, and its stderr kept for the failure
//! message. Killed when dropped.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

pub struct Script {
    pub child: Child,
    pub stdin: ChildStdin,
    pub lines: Lines<BufReader<ChildStdout>>,
    errors: JoinHandle<String>,
}

impl Script {
    /// Starts `program[0]` with `program[1..]` and `args`.
    pub fn spawn(program: &[&str], args: &[&str]) -> Script {
        let mut child = tokio::process::Command::new(program[0])
            .args(&program[1..])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program:?}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stderr = child.stderr.take().expect("stderr");
        let errors = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        Script {
            child,
            stdin,
            lines,
            errors,
        }
    }

    /// Writes one line to the program.
    pub async fn answer(stdin: &mut ChildStdin, line: &str) {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the program");
        stdin.flush().await.expect("flush");
    }

    /// Stops the program; returns how it ended and what it wrote to stderr.
    pub async fn finish(mut self) -> (ExitStatus, String) {
        let _ = self.child.start_kill();
        let status = self.child.wait().await.expect("wait");
        (status, self.errors.await.unwrap_or_default())
    }
}

/// A virtualenv over Debian's Python (and its python3-electrum) with the Nostr libraries
/// Electrum 4.6 uses, made once per target directory.
pub fn nostr_python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nostr-venv");
    let python = venv.join("bin/python");
    let ready = || {
        std::process::Command::new(&python)
            .args(["-c", "import electrum, electrum_aionostr, electrum_ecc"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&venv));
    // Without this pip tries to compile libsecp256k1; Debian's libsecp256k1-1 is used.
    run(std::process::Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "electrum-ecc",
            "electrum-aionostr",
            "cryptography",
        ])
        .env("ELECTRUM_ECC_DONT_COMPILE", "1"));
    assert!(ready(), "the Nostr libraries import");
    python
}
