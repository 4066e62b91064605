//! The Electrum plugin (`plugin/satellite_cosigner`) inside Debian's real Electrum (4.3.4 of
//! this machine, and 4.5.8 and 4.8.3 from Debian's trixie and sid, fetched and cached by
//! `scripts/electrum-debian`), against the bridge, the cosigner and the simulated link started
//! here, with mail through a real SMTP server.
//!
//! The plugin's side runs in `/usr/bin/python3` or the other versions' virtualenvs
//! (`plugin/tests/session.py`, and under Xvfb `plugin/tests/gui.py`). It prints `NEED_CODE <request id>` when a user would read the
//! email; this harness answers with the code from the SMTP inbox, as the user would type it.
//! Final transactions go through Bitcoin Core's script interpreter here.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::Transaction;
use serde_json::{json, Value};

use common::flow::{assert_ran_in, electrum_python, tx_at, verify_with_core, Flow, Inbox};
use common::script::Script;
use satcosign_bridge::dev::Sky;

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin")
}

/// Passes short enough for a test, long enough that requests wait for one.
fn short_passes() -> Sky {
    Sky {
        pass_up: Duration::from_secs(4),
        pass_period: Duration::from_secs(6),
        loss: 0.0,
        bitrate: 9600,
        ..Sky::default()
    }
}

/// Runs a plugin test program, answering its `NEED_CODE` lines from `inbox`; returns its
/// `RESULT` JSON. Fails the test if it does not finish within `limit`.
async fn run_plugin(program: &[&str], args: &[&str], inbox: &Inbox, limit: Duration) -> Value {
    let mut script = Script::spawn(program, args);
    let talk = async {
        let mut result = None;
        while let Some(line) = script.lines.next_line().await.expect("read stdout") {
            if let Some(id) = line.strip_prefix("NEED_CODE ") {
                let code = inbox.code(id.trim()).await;
                Script::answer(&mut script.stdin, &code).await;
            } else if let Some(json) = line.strip_prefix("RESULT ") {
                result = Some(serde_json::from_str::<Value>(json).expect("RESULT is JSON"));
            } else {
                eprintln!("plugin: {line}");
            }
        }
        result
    };
    let result = tokio::time::timeout(limit, talk).await;
    let (status, stderr) = script.finish().await;
    let Ok(result) = result else {
        panic!("{program:?} did not finish within {limit:?}; stderr:\n{stderr}");
    };
    match result {
        Some(v) if status.success() => v,
        _ => panic!("{program:?} failed ({status}); stderr:\n{stderr}"),
    }
}

fn session_py_in(suite: &str) -> Vec<String> {
    vec![
        electrum_python(suite),
        plugin_dir()
            .join("tests/session.py")
            .to_string_lossy()
            .into_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_3_the_plugin_registers_asks_the_satellite_and_receives_the_signed_transaction(
) {
    headless_flow("bookworm", "4.3.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_5_the_plugin_registers_asks_the_satellite_and_receives_the_signed_transaction(
) {
    headless_flow("trixie", "4.5.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_8_the_plugin_registers_asks_the_satellite_and_receives_the_signed_transaction(
) {
    headless_flow("sid", "4.8.").await;
}

/// The whole flow through the plugin's core in the Electrum of `suite`, whose version
/// starts with `version`.
async fn headless_flow(suite: &str, version: &str) {
    let flow = Flow::start(short_passes(), |_| {}).await;
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp").to_string();
    let work = flow.dir.path().join("plugin");
    let program = session_py_in(suite);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let r = run_plugin(
        &program,
        &["flow", &tcp, &work.to_string_lossy()],
        &flow.inbox,
        Duration::from_secs(300),
    )
    .await;

    assert_ran_in(&r, version);
    // "Test connection" shows the bridge's version and network.
    let connection = r["connection"].as_str().expect("connection");
    assert!(
        connection.starts_with("Connected to satcosign-bridge") && connection.contains("regtest"),
        "{connection}"
    );
    // The descriptor the plugin sent holds the satellite key the bridge issued for it.
    let sat_tpub = satcosign_cosigner::keys::parse_any_xpub(
        r["satellite_key"].as_str().expect("satellite_key"),
    )
    .expect("an xpub")
    .to_string();
    assert_eq!(r["own_key_after_registration"], r["satellite_key"]);
    assert_ne!(
        r["fresh_key"], r["satellite_key"],
        "a new wallet gets a new key"
    );
    let descriptor = r["descriptor"].as_str().expect("descriptor");
    assert!(
        descriptor.starts_with("wsh(sortedmulti(2,[")
            && descriptor.contains(&format!("{sat_tpub}/<0;1>/*")),
        "{descriptor}"
    );
    assert!(
        r["registered"]
            .as_str()
            .expect("text")
            .starts_with("Registered with the satellite as “Alice's savings”"),
        "{r}"
    );
    // The button shows on the partially signed transaction and not once the satellite signed.
    assert_eq!(r["needs_satellite_before"], true);
    assert_eq!(r["needs_satellite_after"], false);
    assert!(r["awaiting"].as_str().expect("text").contains("email"));
    assert_eq!(r["confirmed_state"], "confirmed");

    // The listener brought back the signed transaction of this request and emptied the slot.
    assert_eq!(r["received_for"], r["request_id"]);
    assert_eq!(r["complete"], true);
    assert_eq!(r["txid"], r["psbt_txid"]);
    assert!(r["mailbox_after"]
        .as_array()
        .expect("list")
        .iter()
        .all(Value::is_null));
    // Electrum verified both signatures and finalized the same transaction.
    assert_eq!(r["signatures_verified"], 2);
    assert_eq!(r["merged_tx"], r["tx"]);
    // The user saw each stage, in words.
    let stages: Vec<(String, String)> = r["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s[0] == r["request_id"])
        .map(|s| {
            (
                s[1].as_str().expect("state").to_owned(),
                s[2].as_str().expect("text").to_owned(),
            )
        })
        .collect();
    // The user saw the request wait for the pass and come back; `sent` (acknowledged by the
    // satellite, no answer yet) is often too brief to see, since the satellite's answer
    // acknowledges the request itself. Whatever was seen came in the request's own order.
    for state in ["queued", "delivered"] {
        assert!(
            stages.iter().any(|(s, _)| s == state),
            "no {state} in {stages:?}"
        );
    }
    let order = [
        "received",
        "awaiting_email",
        "confirmed",
        "queued",
        "sent",
        "signed",
        "delivered",
    ];
    let ranks: Vec<usize> = stages
        .iter()
        .map(|(s, _)| order.iter().position(|o| o == s).unwrap_or(usize::MAX))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]) && !ranks.contains(&usize::MAX),
        "stages out of order: {stages:?}"
    );
    // While queued it says which pass takes it: this one, or the next (with its time).
    assert!(
        stages.iter().any(|(s, t)| s == "queued"
            && (t.contains("during this pass") || t.contains("next satellite pass, at"))),
        "{stages:?}"
    );
    assert_eq!(r["final_text"], "Signed by the satellite.");
    // The plugin's emergency lockdown, confirmed with the emailed code, locks the wallet
    // on the bridge at once and on the satellite at the next pass.
    assert_eq!(r["locked_at_once"], true, "{r}");
    assert_eq!(r["lockdown_final"], "signed", "{r}");

    // Bitcoin Core's interpreter accepts the final transaction.
    let tx: Transaction = tx_at(&r, "tx");
    let funding: Transaction = tx_at(&r, "funding_tx");
    verify_with_core(&tx, std::slice::from_ref(&funding));
    // Recovery without satcosign: the backup key's wallet adds the second signature, and
    // that transaction is valid too.
    assert_eq!(r["recovered_complete"], true, "{r}");
    let recovered: Transaction = tx_at(&r, "recovered_tx");
    assert_ne!(
        recovered, tx,
        "the backup's signature differs from the satellite's"
    );
    verify_with_core(&recovered, &[funding]);
    let status = flow
        .status(r["request_id"].as_str().expect("request id"))
        .await;
    assert_eq!(status["final_state"], "signed", "{status}");
    // Every email about the request (the code, then the outcome) went to the wallet's owner.
    let to = flow
        .inbox
        .recipients_of(r["request_id"].as_str().expect("id"));
    assert!(
        !to.is_empty() && to.iter().all(|t| t == "alice@example.org"),
        "{to:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_3_the_plugin_names_each_failure_plainly_and_nothing_hangs() {
    failures_named("bookworm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_5_the_plugin_names_each_failure_plainly_and_nothing_hangs() {
    failures_named("trixie").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_8_the_plugin_names_each_failure_plainly_and_nothing_hangs() {
    failures_named("sid").await;
}

/// Every failure a user can meet, through the plugin's core in the Electrum of `suite`.
async fn failures_named(suite: &str) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let certs = tempfile::tempdir().expect("tempdir");
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let flow = Flow::start(common::flow::sky(0.0), |c| {
        c.default_policy.max_per_tx_sat = 100_000;
        c.electrum.tls = "127.0.0.1:0".into();
        c.electrum.tls_cert = Some(cert_path.clone());
        c.electrum.tls_key = Some(key_path.clone());
    })
    .await;
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp").to_string();
    // A stopped bridge: a port where nothing listens.
    let dead = common::nobody_listens().to_string();
    // A bridge with no satellite behind it (mailbox only).
    let mailbox_only = common::start_bridge(|_| {}).await;
    let work = flow.dir.path().join("plugin");
    let program = session_py_in(suite);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let r = run_plugin(
        &program,
        &[
            "errors",
            &tcp,
            &dead,
            &mailbox_only.tcp().to_string(),
            &work.to_string_lossy(),
        ],
        &flow.inbox,
        Duration::from_secs(180),
    )
    .await;
    let case = |name: &str| -> (String, String) {
        (
            r[name][0].as_str().unwrap_or("no error").to_owned(),
            r[name][1].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (kind, text) = case("bridge_down");
    assert_eq!(kind, "BridgeUnreachable", "{text}");
    assert!(
        text.contains(&dead) && text.contains("connection refused"),
        "{text}"
    );
    let (kind, text) = case("link_down");
    assert_eq!(kind, "LinkDown", "{text}");
    assert!(text.contains("no link to the satellite"), "{text}");
    let (kind, text) = case("not_registered");
    assert_eq!(kind, "WalletNotRegistered", "{text}");
    assert!(text.contains("Register with satellite"), "{text}");
    let (kind, text) = case("refused");
    assert_eq!(kind, "RefusedByPolicy", "{text}");
    assert!(
        text.contains("over the wallet's per-transaction limit") && text.contains("Nothing"),
        "{text}"
    );
    let (kind, text) = case("wrong_code");
    assert_eq!(kind, "WrongCode", "{text}");
    assert!(text.contains("attempts left"), "{text}");
    assert_eq!(
        r["cancelled_text"],
        json!(["cancelled", "Cancelled. Nothing was signed."])
    );
    mailbox_only.bridge.stop().await;

    // TLS: with the bridge's self-signed certificate trusted it connects; with only the
    // system's roots it is refused, and the user is told it is the certificate.
    let tls = format!(
        "localhost:{}",
        flow.system.bridge.electrum_tls.expect("tls").port()
    );
    let r = run_plugin(
        &program,
        &["tls", &tls, &cert_path.to_string_lossy()],
        &flow.inbox,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        r["trusted"]
            .as_str()
            .expect("text")
            .starts_with("Connected to satcosign-bridge"),
        "{r}"
    );
    assert_eq!(r["untrusted"][0], "BridgeUnreachable", "{r}");
    assert!(
        r["untrusted"][1]
            .as_str()
            .expect("text")
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{r}"
    );
}

/// Installs the plugin into Debian's Electrum with the README's command, for this Electrum
/// data folder and bridge.
fn install_plugin(python: &str, electrum_dir: &Path, bridge: &str) {
    let out = std::process::Command::new(python)
        .arg(plugin_dir().join("install.py"))
        .args(["electrum", "--regtest", "--electrum-dir"])
        .arg(electrum_dir)
        .args(["--bridge", bridge])
        .output()
        .expect("run install.py");
    assert!(
        out.status.success(),
        "install.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_3s_qt_gui_the_button_asks_the_satellite_and_the_signed_transaction_opens() {
    gui_flow("bookworm", "4.3.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_5s_qt_gui_the_button_asks_the_satellite_and_the_signed_transaction_opens() {
    gui_flow("trixie", "4.5.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_electrum_4_8s_qt_gui_the_zip_loads_the_button_asks_and_the_signed_transaction_opens() {
    gui_flow("sid", "4.8.").await;
}

/// The plugin in the real Qt GUI of the Electrum of `suite` (version starting `version`),
/// under Xvfb, clicked as a user would, with a screenshot of each step.
async fn gui_flow(suite: &str, version: &str) {
    let flow = Flow::start(short_passes(), |_| {}).await;
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp").to_string();
    let work = flow.dir.path().join("gui");
    let python = electrum_python(suite);
    let program = session_py_in(suite);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    // A registered wallet and a transaction the user signed once, made headless.
    let prepared = run_plugin(
        &program,
        &["prepare", &tcp, &work.to_string_lossy()],
        &flow.inbox,
        Duration::from_secs(180),
    )
    .await;
    let psbt_file = work.join("psbt.txt");
    std::fs::write(&psbt_file, prepared["psbt"].as_str().expect("psbt")).expect("write psbt");
    let electrum_dir = work.join("electrum");
    // Electrum 4.6+ takes the zip, authorized by a user who is not root (its plugins key is
    // trusted only then), and that user runs Electrum; 4.3-4.5 the installed package.
    let zip_install = suite == "sid";
    let _aside = zip_install.then(KeyfileAside::new);
    if zip_install {
        ensure_electrum_user();
        chmod(flow.dir.path(), 0o755);
        install_zip_as_user(&python, &work, &electrum_dir, &tcp);
        give_to_electrum_user(&work);
    } else {
        install_plugin(&python, &electrum_dir, &tcp);
    }

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plugin-gui-{suite}"));
    let _ = std::fs::remove_dir_all(&artifacts);
    let gui = plugin_dir().join("tests/gui.py");
    let gui = gui.to_string_lossy();
    let mut command = vec![
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1280x1024x24",
        &python,
        &gui,
    ];
    if zip_install {
        std::fs::create_dir_all(&artifacts).expect("artifacts");
        give_to_electrum_user(&artifacts);
        command.splice(0..0, ["runuser", "-u", ELECTRUM_USER, "--"]);
    }
    let r = run_plugin(
        &command,
        &[
            &electrum_dir.to_string_lossy(),
            prepared["wallet"].as_str().expect("wallet"),
            &psbt_file.to_string_lossy(),
            &artifacts.to_string_lossy(),
        ],
        &flow.inbox,
        Duration::from_secs(400),
    )
    .await;
    eprintln!("screenshots in {}", artifacts.display());

    assert_ran_in(&r, version);
    assert_eq!(r["status_bar"], "Satellite: registered", "{r}");
    // Settings show the bridge set by the install command; "Test connection" reaches it.
    assert_eq!(r["settings_bridge"], tcp.as_str());
    let tested = r["test_connection"].as_str().expect("text");
    assert!(
        tested.starts_with("Connected to satcosign-bridge") && tested.contains("regtest"),
        "{tested}"
    );
    // "Show satellite key" in a registered wallet shows that wallet's own key.
    assert_eq!(r["satellite_key"], prepared["satellite_key"]);
    assert_eq!(
        r["wallet_verdict"],
        "This wallet contains the satellite's key."
    );
    assert_eq!(r["button"], "Ask satellite to co-sign");
    assert!(
        r["stage_before"]
            .as_str()
            .expect("text")
            .contains("the email"),
        "{r}"
    );
    assert_eq!(r["complete"], true);
    assert_eq!(r["txid"], prepared["txid"]);
    assert!(
        r["stage_after"]
            .as_str()
            .expect("text")
            .starts_with("Signed by the satellite"),
        "{r}"
    );
    assert_eq!(r["broadcast_button"], true);
    for shot in r["screenshots"].as_array().expect("screenshots") {
        let png = std::fs::read(shot.as_str().expect("path")).expect("screenshot saved");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 2_000,
            "{shot} is not a real screenshot"
        );
    }
    assert_eq!(r["screenshots"].as_array().map(Vec::len), Some(7));

    let tx: Transaction = tx_at(&r, "tx");
    let funding: Transaction = tx_at(&prepared, "funding_tx");
    verify_with_core(&tx, &[funding]);
    let status = flow
        .status(r["request_id"].as_str().expect("request id"))
        .await;
    assert_eq!(status["final_state"], "signed", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_registered_by_json_rpc_shows_its_real_status_in_the_plugin() {
    let flow = Flow::start(short_passes(), |_| {}).await;
    let tcp = flow.system.bridge.electrum_tcp.expect("tcp").to_string();
    let work = flow.dir.path().join("plugin");
    let program = session_py_in("sid");
    let mut script = Script::spawn(
        &program.iter().map(String::as_str).collect::<Vec<_>>(),
        &["registered_elsewhere", &tcp, &work.to_string_lossy()],
    );
    let talk = async {
        while let Some(line) = script.lines.next_line().await.expect("read stdout") {
            if let Some(descriptor) = line.strip_prefix("REGISTER_ELSEWHERE ") {
                // The wallet's owner registers it without the plugin, as the Nostr route does.
                let r = flow
                    .ok(
                        "wallet.register",
                        vec![
                            json!(descriptor),
                            json!("alice@example.org"),
                            json!("By RPC"),
                        ],
                    )
                    .await;
                let id = r["request_id"].as_str().expect("id").to_owned();
                let code = flow.inbox.code(&id).await;
                flow.ok("request.confirm", vec![json!(id), json!(code)])
                    .await;
                flow.wait_state(&id, "delivered", 120).await;
                Script::answer(&mut script.stdin, "go").await;
            } else if let Some(json) = line.strip_prefix("RESULT ") {
                return Some(serde_json::from_str::<Value>(json).expect("RESULT is JSON"));
            }
        }
        None
    };
    let r = tokio::time::timeout(Duration::from_secs(240), talk).await;
    let (status, stderr) = script.finish().await;
    let Ok(Some(r)) = r else {
        panic!("the plugin did not finish ({status}):\n{stderr}");
    };
    assert_eq!(r["before"], "Not registered with the satellite.", "{r}");
    assert_eq!(
        r["after"], "Registered with the satellite as \u{201c}By RPC\u{201d} (a***@example.org).",
        "{r}"
    );
    let listed = flow.ok("wallet.status", vec![r["wallet_id"].clone()]).await;
    assert_eq!(
        listed["state"], "active",
        "the plugin's id is the bridge's: {listed}"
    );
}

/// With Electrum's proxy set, the plugin reaches the bridge only through it (a Tor user's
/// address never reaches the bridge), in each Electrum version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_electrums_proxy_set_the_plugin_connects_only_through_it() {
    let flow = Flow::start(short_passes(), |_| {}).await;
    let bridge = flow.system.bridge.electrum_tcp.expect("tcp");
    let dead = common::nobody_listens().to_string();
    for (suite, version) in [("bookworm", "4.3."), ("trixie", "4.5."), ("sid", "4.8.")] {
        let proxy = common::socks::SocksProxy::start().await;
        let program = session_py_in(suite);
        let program: Vec<&str> = program.iter().map(String::as_str).collect();
        let r = run_plugin(
            &program,
            &[
                "proxied",
                &bridge.to_string(),
                &proxy.addr.to_string(),
                &dead,
            ],
            &flow.inbox,
            Duration::from_secs(60),
        )
        .await;
        assert_ran_in(&r, version);
        assert!(
            r["connection"]
                .as_str()
                .expect("text")
                .starts_with("Connected to satcosign-bridge"),
            "{r}"
        );
        assert!(r["xpub"].as_str().expect("xpub").starts_with("Vpub"), "{r}");
        let seen = proxy.destinations();
        assert!(
            !seen.is_empty() && seen.iter().all(|d| *d == bridge.to_string()),
            "{version}: every connection went through the proxy to the bridge: {seen:?}"
        );
        let down = r["proxy_down"].as_str().expect("text");
        assert!(
            down.starts_with("Cannot reach the satcosign bridge") && down.contains("proxy"),
            "{version}: with the proxy down the bridge is unreachable, not reached directly: {down}"
        );
    }
}

/// Moves Electrum's plugins key file aside for a test and puts it back afterwards. There is
/// one key file per machine: tests that set it take turns.
struct KeyfileAside {
    backup: Option<PathBuf>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static KEYFILE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

const KEYFILE: &str = "/etc/electrum/plugins_key";

impl KeyfileAside {
    fn new() -> KeyfileAside {
        let turn = KEYFILE_TURN.lock().unwrap_or_else(|p| p.into_inner());
        let key = Path::new(KEYFILE);
        let backup = key.exists().then(|| {
            let b = key.with_extension("satcosign-test-backup");
            std::fs::rename(key, &b).expect("move the machine's plugins key aside");
            b
        });
        KeyfileAside {
            backup,
            _turn: turn,
        }
    }
}

impl Drop for KeyfileAside {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(KEYFILE);
        if let Some(b) = &self.backup {
            let _ = std::fs::rename(b, KEYFILE);
        }
    }
}

/// The unprivileged user that runs Electrum 4.6+ in these tests (Electrum trusts the plugins
/// key only when the user running it cannot write it); made when missing. Needs root.
const ELECTRUM_USER: &str = "satcosign-electrum";

fn ensure_electrum_user() {
    assert!(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0"),
        "this test sets Electrum's plugins key as root, as a real installation does: run the \
         suite as root (CI does)"
    );
    if std::process::Command::new("id")
        .arg(ELECTRUM_USER)
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        let made = std::process::Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/usr/sbin/nologin"])
            .arg(ELECTRUM_USER)
            .status()
            .expect("useradd");
        assert!(made.success(), "useradd {ELECTRUM_USER}");
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `path` (recursively) to the Electrum user.
fn give_to_electrum_user(path: &Path) {
    let ok = std::process::Command::new("chown")
        .args(["-R", ELECTRUM_USER])
        .arg(path)
        .status()
        .expect("chown");
    assert!(ok.success(), "chown {}", path.display());
}

/// Builds the zip, sets the plugins key as root and installs, authorizes and enables the
/// zip as the Electrum user in `electrum_dir`, with `bridge`; returns the zip's path.
fn install_zip_as_user(python: &str, work: &Path, electrum_dir: &Path, bridge: &str) -> String {
    let install = plugin_dir().join("install.py");
    let install = install.to_str().expect("utf-8");
    let password = work.join("plugins-password");
    std::fs::write(&password, "correct horse battery staple\n").expect("password");
    chmod(&password, 0o644);
    let dist = work.join("dist");
    let zip = std::process::Command::new(python)
        .args([install, "zip", "--out", dist.to_str().expect("utf-8")])
        .output()
        .expect("install.py zip");
    assert!(
        zip.status.success(),
        "{}",
        String::from_utf8_lossy(&zip.stderr)
    );
    let zip = String::from_utf8(zip.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let key = std::process::Command::new(python)
        .args([
            install,
            "keyfile",
            "--password-file",
            password.to_str().expect("utf-8"),
        ])
        .output()
        .expect("install.py keyfile");
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    std::fs::create_dir_all(electrum_dir).expect("electrum dir");
    give_to_electrum_user(electrum_dir);
    let edir = electrum_dir.to_str().expect("utf-8");
    let said = run_as(
        ELECTRUM_USER,
        &[
            python,
            install,
            "authorize",
            "--zip",
            &zip,
            "--password-file",
            password.to_str().expect("utf-8"),
            "--electrum-dir",
            edir,
            "--regtest",
        ],
    );
    assert!(said.contains("restart Electrum"), "{said}");
    run_as(
        ELECTRUM_USER,
        &[
            python,
            install,
            "enable",
            "--regtest",
            "--electrum-dir",
            edir,
            "--bridge",
            bridge,
        ],
    );
    zip
}

/// Runs `program` as `user` (runuser); panics with its stderr if it fails.
fn run_as(user: &str, program: &[&str]) -> String {
    let out = std::process::Command::new("runuser")
        .args(["-u", user, "--"])
        .args(program)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{program:?} as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Electrum 4.6+ as users install it: root sets the plugins key from a password once; the
/// user who runs Electrum installs and authorizes the zip with that password; Electrum's own
/// loader (run as that user, who cannot write the key) finds it authorized and loads it. A
/// zip changed after its authorization is refused.
#[test]
fn in_electrum_4_8_the_zip_installs_authorizes_and_loads_for_a_user_who_is_not_root() {
    ensure_electrum_user();
    let user = ELECTRUM_USER;
    let python = electrum_python("sid");
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    let _aside = KeyfileAside::new();
    let electrum_dir = dir.path().join("electrum");
    let zip = install_zip_as_user(&python, dir.path(), &electrum_dir, "127.0.0.1:50101");
    let edir = electrum_dir.to_str().expect("utf-8");

    let loader = plugin_dir().join("tests/load_external.py");
    let load = || -> Value {
        let out = run_as(user, &[&python, loader.to_str().expect("utf-8"), edir]);
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT: {out}"));
        serde_json::from_str(line).expect("json")
    };
    let r = load();
    assert_ran_in(&r, "4.8.");
    assert_eq!(r["external"], true, "{r}");
    assert_eq!(r["authorized"], true, "{r}");
    assert_eq!(r["loaded"], true, "{r}");
    assert_eq!(
        r["module"], "electrum_external_plugins.satellite_cosigner.qt",
        "{r}"
    );
    assert_eq!(r["has_menu_hook"], true, "{r}");

    // A zip changed after it was authorized is not loaded.
    let installed = electrum_dir
        .join("regtest/plugins")
        .join(Path::new(&zip).file_name().expect("name"));
    let mut bytes = std::fs::read(&installed).expect("installed zip");
    bytes.extend_from_slice(b"\0");
    std::fs::write(&installed, bytes).expect("tamper");
    let r = load();
    assert_eq!(r["loaded"], false, "a changed zip is refused: {r}");
}
