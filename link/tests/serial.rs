//! KISS over a serial port: the transport opens a pseudo-terminal's slave end as a serial
//! port (8N1, 9600 baud), and a TNC played by the test on the master end exchanges KISS
//! frames with it in both directions.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use satcosign_link::transport::kiss::{
    ax25_info, ax25_ui, kiss_encode, Callsign, KissDecoder, KissTransport,
};
use satcosign_link::transport::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiss_frames_cross_a_serial_port_both_ways() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave_path = nix::unistd::ttyname(&pty.slave).expect("ttyname");
    let ground = Callsign::new("GROUND", 0).expect("call");
    let sat = Callsign::new("SAT", 0).expect("call");
    let mut transport = KissTransport::open_serial(
        slave_path.to_str().expect("utf8"),
        9600,
        ground.clone(),
        sat.clone(),
    )
    .expect("open the serial port");
    let master: OwnedFd = pty.master;
    let mut tnc = std::fs::File::from(master);

    // Ground -> TNC: the frames written to the port arrive KISS-framed and AX.25-addressed.
    let frames = vec![vec![0xC0, 1, 2, 0xDB], vec![9; 200]];
    transport.transmit(frames.clone()).await.expect("transmit");
    let got = tokio::task::spawn_blocking(move || {
        let mut dec = KissDecoder::default();
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while out.len() < 2 {
            let n = tnc.read(&mut buf).expect("read master");
            out.extend(dec.feed(&buf[..n]));
        }
        (out, tnc)
    });
    let (received, mut tnc) = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("frames reach the TNC")
        .expect("join");
    let infos: Vec<Vec<u8>> = received
        .iter()
        .map(|f| ax25_info(f, &sat).expect("addressed to SAT").to_vec())
        .collect();
    assert_eq!(infos, frames);

    // TNC -> ground: a frame for GROUND is delivered; one for another station is not.
    let mut wire = Vec::new();
    kiss_encode(
        &ax25_ui(
            &Callsign::new("OTHER", 0).expect("call"),
            &sat,
            b"not for us",
        ),
        &mut wire,
    );
    kiss_encode(&ax25_ui(&ground, &sat, b"hello ground"), &mut wire);
    tnc.write_all(&wire).expect("write master");
    let frame = tokio::time::timeout(Duration::from_secs(10), transport.recv())
        .await
        .expect("a frame arrives")
        .expect("recv");
    assert_eq!(frame, b"hello ground");
}
