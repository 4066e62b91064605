//! The bridge's own binary as a child process, reached over HTTP as any client reaches it:
//! started with its arguments, read until it prints `ready`, and stopped by a signal
//! (SIGKILL for a crash, SIGTERM for a shutdown).

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::HttpClientBuilder;
use serde_json::{json, Value};

/// A running `satcosign-bridge`.
pub struct BridgeProcess {
    child: Child,
    /// Every line it printed up to `ready` (addresses, keys, where mail goes).
    pub printed: Vec<String>,
    /// Its JSON-RPC URL (`http://…`).
    pub http: String,
    stderr: mpsc::Receiver<String>,
    /// What it prints after `ready`.
    stdout: mpsc::Receiver<String>,
}

impl BridgeProcess {
    /// Runs the production bridge binary with `args` and `env`; returns once it is ready.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> BridgeProcess {
        BridgeProcess::spawn_bin(env!("CARGO_BIN_EXE_satcosign-bridge"), args, env)
    }

    /// Runs `bin` (`satcosign-bridge` or `satcosign-dev`) with `args` and `env`; returns
    /// once it is ready.
    fn spawn_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> BridgeProcess {
        Starting::spawn_bin(bin, args, env).ready()
    }

    /// Starts the production bridge binary and returns at once: a replica on PostgreSQL,
    /// [`Starting::ready`] once it serves, [`BridgeProcess::driving`] once it holds the
    /// ground lease.
    pub fn standby(args: &[&str]) -> Starting {
        Starting::spawn_bin(env!("CARGO_BIN_EXE_satcosign-bridge"), args, &[])
    }
}

/// A bridge process that has not said `ready` yet.
pub struct Starting {
    child: Option<Child>,
}

impl Starting {
    fn spawn_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Starting {
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bridge binary");
        Starting { child: Some(child) }
    }

    /// Reads its output until it says `ready`.
    pub fn ready(mut self) -> BridgeProcess {
        let mut child = self.child.take().expect("not yet ready");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = stdout.lines().map_while(Result::ok);
        let printed: Vec<String> = lines.by_ref().take_while(|l| l != "ready").collect();
        let (out, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines {
                if out.send(line).is_err() {
                    return;
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut p = BridgeProcess {
            child,
            printed,
            http: String::new(),
            stderr: rx,
            stdout,
        };
        p.http = p
            .printed_after("http: ")
            .unwrap_or_else(|| panic!("the bridge printed no http address: {:?}", p.printed))
            .to_owned();
        p
    }
}

impl Drop for Starting {
    /// A standby that never took over is not left running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl BridgeProcess {
    /// `satcosign-dev dev` on data folder `dir`, every listener on a free loopback port,
    /// the satellite always in view; `global` goes before the command (`--config …`).
    pub fn dev(dir: &Path, global: &[&str], env: &[(&str, &str)]) -> BridgeProcess {
        BridgeProcess::dev_sky(
            dir,
            global,
            &["--pass-up", "3600", "--pass-period", "3600"],
            env,
        )
    }

    /// As [`Self::dev`], with the sky's arguments (`--pass-up`, `--pass-period`, `--loss`,
    /// `--first-pass-in`).
    pub fn dev_sky(
        dir: &Path,
        global: &[&str],
        sky: &[&str],
        env: &[(&str, &str)],
    ) -> BridgeProcess {
        let dir = dir.to_str().expect("utf-8 path");
        let mut args = global.to_vec();
        args.extend([
            "dev",
            "--electrum-tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--nostr",
            "127.0.0.1:0",
            "--data-dir",
            dir,
        ]);
        args.extend(sky);
        BridgeProcess::spawn_bin(env!("CARGO_BIN_EXE_satcosign-dev"), &args, env)
    }

    /// The rest of the printed line that starts with `prefix`.
    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let addr: std::net::SocketAddr = self
            .http
            .trim_start_matches("http://")
            .parse()
            .expect("http address");
        let (status, text) = super::flow::http_raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The bridge's process id (for reading its `/proc` entry).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn printed_after(&self, prefix: &str) -> Option<&str> {
        self.printed.iter().find_map(|l| l.strip_prefix(prefix))
    }

    /// Calls `method`; panics with the error if it fails.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        HttpClientBuilder::default()
            .request_timeout(Duration::from_secs(30))
            .build(&self.http)
            .expect("client")
            .request(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Waits (up to two minutes) until request `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.call("request.status", vec![json!(id)]).await;
            if s["state"] == state {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} never reached {state}: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 120 s) until the bridge says it drives the ground (a replica on
    /// PostgreSQL that took the lease).
    pub fn driving(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line == "driving the ground" => return,
                Ok(_) => {}
                Err(e) => panic!("the bridge never took the ground: {e}"),
            }
        }
    }

    /// Waits for the bridge to freeze at the test hold point `at`
    /// (`SATCOSIGN_TEST_HOLD_AT`); returns the id it names.
    pub fn held(&self, at: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the bridge never held at {at}"));
            if let Some(rest) = line.strip_prefix(&format!("test-hold: {at} ")) {
                return rest.trim().to_owned();
            }
        }
    }

    fn signal(mut self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal");
        self.child.wait().expect("reaped");
    }

    /// Waits (up to 60 s) for the bridge to stop by itself; returns its exit status and
    /// everything it wrote to stderr.
    pub fn exited(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        // The stderr reader's channel closes when the process's pipe ends: at its exit.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the bridge did not stop by itself: {lines:?}")
                }
            }
        }
        let status = self.child.wait().expect("reaped");
        (status, lines)
    }

    /// A crash: SIGKILL.
    pub fn kill(self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    /// A shutdown: SIGTERM.
    pub fn terminate(self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// A shutdown (SIGTERM); returns everything the bridge wrote to stderr that no
    /// [`Self::held`] consumed.
    pub fn terminate_with_logs(mut self) -> Vec<String> {
        let stderr = std::mem::replace(&mut self.stderr, mpsc::channel().1);
        self.terminate();
        // The reader thread ends at the pipe's end, which closes the channel.
        stderr.iter().collect()
    }
}

impl Drop for BridgeProcess {
    /// A test that fails (or forgets) never leaves its bridge running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The code of request `id` from the `.eml` files in `mail_dir` (waiting up to 30 s).
pub async fn mailed_code(mail_dir: &Path, id: &str) -> String {
    let rid = super::flow::parse_id(id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(c) = satcosign_bridge::demo::code_from_mail_dir(mail_dir, &rid) {
            return c;
        }
        assert!(Instant::now() < deadline, "no email for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a test keeps the satellite key its `dev` bridge issued (beside the data folder).
fn issued_key_file(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("satellite-key")
}

/// Asks the running `dev` bridge for a satellite key (`satellite.new_key`) and returns the
/// test wallet of two test user keys and that key; [`dev_wallet`] finds it again later.
pub async fn issue_dev_wallet(
    b: &BridgeProcess,
    dir: &Path,
) -> satcosign_cosigner::testkit::TestWallet {
    let issued = b.call("satellite.new_key", vec![]).await;
    let text = issued["descriptor_key"].as_str().expect("descriptor_key");
    std::fs::write(issued_key_file(dir), text).expect("keep the issued key");
    dev_wallet(dir)
}

/// The test wallet of a `dev` data folder whose key [`issue_dev_wallet`] asked for.
pub fn dev_wallet(dir: &Path) -> satcosign_cosigner::testkit::TestWallet {
    let text = std::fs::read_to_string(issued_key_file(dir)).expect("a key was issued");
    let key: satcosign_cosigner::keys::AccountKey = text.trim().parse().expect("key parses");
    satcosign_cosigner::testkit::TestWallet::with_satellite(key)
}

/// The in-process satellite of a `dev` data folder, opened after the bridge stopped (its
/// ledger and audit log, as the satellite keeps them).
pub fn dev_cosigner(dir: &Path) -> satcosign_cosigner::daemon::Cosigner {
    let seed =
        satcosign_cosigner::keys::load_key_file(&dir.join("cosigner/cosigner.key")).expect("key");
    let key = satcosign_cosigner::keys::CosignerKey::from_seed(&seed, bitcoin::NetworkKind::Test)
        .expect("key");
    satcosign_cosigner::daemon::Cosigner::open(
        key,
        &dir.join("cosigner/cosigner.redb"),
        satcosign_cosigner::daemon::Settings {
            network: bitcoin::Network::Regtest,
            rules: satcosign_cosigner::decision::Rules {
                approval_max_age_secs: 3600,
                clock_skew_secs: 60,
            },
            policy_loosen_delay_secs: 0,
        },
    )
    .expect("cosigner db")
}
