//! Over real software modems: two Dire Wolf instances (Debian's `direwolf`) joined by a
//! virtual audio channel (`tests/direwolf/audio_channel.py`), G3RUH 9600 bit/s, 300 ms
//! TXDELAY. A 4 KB message goes each way through the KISS-over-TCP transport, on a clean
//! channel and on a noisy one that loses frames; the test checks delivery and prints times.
//! `scripts/test` installs `direwolf` when it is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::link::LinkHandle;
use satcosign_link::store::MemStore;
use satcosign_link::transport::kiss::{Callsign, KissTransport, AX25_HEADER};

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Two modems; killed (SIGINT, then SIGKILL) when dropped.
struct ModemPair {
    children: Vec<Child>,
    kiss: [u16; 2],
    dir: tempfile::TempDir,
}

impl Drop for ModemPair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(500));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn channel_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/direwolf/audio_channel.py")
}

fn start_modems(snr_db: Option<f64>) -> ModemPair {
    assert!(
        Command::new("direwolf")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "direwolf is not installed: run ./scripts/test, which installs it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = [free_udp_port(), free_udp_port()];
    let kiss = [free_tcp_port(), free_tcp_port()];
    let mut children = Vec::new();
    for (side, call) in ["GROUND", "SAT"].iter().enumerate() {
        let home = dir.path().join(format!("home{side}"));
        std::fs::create_dir_all(&home).expect("home");
        // This modem's transmit audio goes to the other modem's UDP audio input.
        let noise = snr_db
            .map(|s| format!("SNR_DB={s} SEED={} ", side + 7))
            .unwrap_or_default();
        std::fs::write(
            home.join(".asoundrc"),
            format!(
                "pcm.satcosign_tx {{\n  type file\n  slave.pcm \"null\"\n  file \"|/usr/bin/env PORT={} {noise}/usr/bin/python3 {}\"\n  format \"raw\"\n}}\n",
                audio[1 - side],
                channel_script().display()
            ),
        )
        .expect("asoundrc");
        let conf = home.join("direwolf.conf");
        std::fs::write(
            &conf,
            format!(
                "ADEVICE UDP:{} satcosign_tx\nARATE 48000\nACHANNELS 1\nCHANNEL 0\nMYCALL {call}\nMODEM 9600\nTXDELAY 30\nTXTAIL 10\nPERSIST 255\nSLOTTIME 1\nFULLDUP ON\nKISSPORT {}\nAGWPORT 0\n",
                audio[side], kiss[side]
            ),
        )
        .expect("config");
        let log =
            std::fs::File::create(dir.path().join(format!("direwolf{side}.log"))).expect("log");
        children.push(
            Command::new("direwolf")
                .args(["-c", conf.to_str().expect("utf8"), "-t", "0", "-q", "d"])
                .env("HOME", &home)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start direwolf"),
        );
    }
    // Wait until both KISS ports accept connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in kiss {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "direwolf did not open KISS port {port}; see {}",
                dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    ModemPair {
        children,
        kiss,
        dir,
    }
}

async fn endpoint(port: u16, me: (&str, [u8; 32]), peer: (&str, [u8; 32])) -> LinkHandle<MemStore> {
    let transport = KissTransport::connect_tcp(
        &format!("127.0.0.1:{port}"),
        Callsign::new(me.0, 0).expect("call"),
        Callsign::new(peer.0, 0).expect("call"),
    )
    .await
    .expect("connect to the TNC");
    let cipher = Cipher::new(
        &Identity::from_bytes(me.1),
        &Identity::from_bytes(peer.1).public(),
    );
    let cfg = EngineConfig {
        // A KISS frame also carries the AX.25 header; keep the whole under 256 bytes.
        mtu: 256 - AX25_HEADER,
        bitrate: 9600,
        // TXDELAY, the audio channel's buffering and the modem's decode latency.
        preamble: Duration::from_millis(500),
        latency: Duration::from_millis(150),
        ..EngineConfig::default()
    };
    let jitter = if me.0 == "GROUND" { 1.0 } else { 1.37 };
    LinkHandle::spawn(
        Engine::new(cfg, cipher, MemStore::new(), jitter).expect("engine"),
        transport,
    )
}

/// Returns the times each way and how many frames both sides had to resend. Prints them:
/// the times over real modems are part of what this test reports.
#[allow(clippy::print_stdout)]
async fn exchange_4k_each_way(snr_db: Option<f64>) -> (Duration, Duration, u64) {
    let modems = start_modems(snr_db);
    let ground = endpoint(modems.kiss[0], ("GROUND", [1; 32]), ("SAT", [2; 32])).await;
    let sat = endpoint(modems.kiss[1], ("SAT", [2; 32]), ("GROUND", [1; 32])).await;
    // Dire Wolf needs a moment to attach a new KISS client.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let up: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    let down: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
    let limit = Duration::from_secs(240);
    let t0 = Instant::now();
    ground.send(up.clone()).await.expect("send");
    let (id, got) = tokio::time::timeout(limit, sat.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "4 KB did not reach the satellite; logs in {}",
                modems.dir.path().display()
            )
        })
        .expect("recv");
    let t_up = t0.elapsed();
    assert_eq!(got, up, "intact");
    sat.ack(id).expect("ack");
    let t1 = Instant::now();
    sat.send(down.clone()).await.expect("send");
    let (id, got) = tokio::time::timeout(limit, ground.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "4 KB did not reach the ground; logs in {}",
                modems.dir.path().display()
            )
        })
        .expect("recv");
    let t_down = t1.elapsed();
    assert_eq!(got, down, "intact");
    ground.ack(id).expect("ack");
    // Nothing more arrives: exactly once.
    assert!(tokio::time::timeout(Duration::from_secs(3), sat.recv())
        .await
        .is_err());
    let (g, s) = (ground.status(), sat.status());
    println!(
        "dire wolf 9600 {}: 4 KB up in {:.1} s, 4 KB down in {:.1} s; ground sent {} transmissions, {} frames ({} resent); satellite sent {} transmissions, {} frames ({} resent); rejected damaged {} + {}",
        snr_db.map_or("clean".to_owned(), |s| format!("SNR {s} dB")),
        t_up.as_secs_f64(),
        t_down.as_secs_f64(),
        g.stats.transmissions,
        g.stats.frames_sent,
        g.stats.frames_resent,
        s.stats.transmissions,
        s.stats.frames_sent,
        s.stats.frames_resent,
        g.stats.rejected_damaged,
        s.stats.rejected_damaged,
    );
    ground.stop();
    sat.stop();
    (t_up, t_down, g.stats.frames_resent + s.stats.frames_resent)
}

/// One test, run in sequence: two modem pairs at once could pick each other's ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_kilobytes_each_way_over_two_dire_wolf_modems_clean_and_noisy() {
    exchange_4k_each_way(None).await;
    let (_, _, resent) = exchange_4k_each_way(Some(6.0)).await;
    assert!(
        resent > 0,
        "at 6 dB the modems lose frames; the link must have recovered some"
    );
}
