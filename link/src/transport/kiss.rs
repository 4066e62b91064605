//! KISS, as software TNCs (Dire Wolf) and hardware TNCs speak it, over any byte stream:
//! TCP ([`KissTransport::connect_tcp`]) or a serial port ([`KissTransport::open_serial`]). Each frame travels as the information
//! field of an AX.25 UI frame with configured callsigns, since Dire Wolf expects AX.25
//! inside KISS; the TNC adds HDLC flags and the FCS, and drops frames whose FCS fails.
//!
//! ```text
//! KISS:  C0 | cmd (port << 4 | 0 = data) | escaped AX.25 frame | C0    (C0 -> DB DC, DB -> DB DD)
//! AX.25: dest(7) | src(7) | control 03 (UI) | PID F0 (no layer 3) | information
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Transport;

const FEND: u8 = 0xC0;
const FESC: u8 = 0xDB;
const TFEND: u8 = 0xDC;
const TFESC: u8 = 0xDD;
/// Bytes of the AX.25 UI header.
pub const AX25_HEADER: usize = 16;

/// A callsign with SSID, as AX.25 addresses carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callsign {
    /// Up to six letters and digits.
    pub call: String,
    /// 0..=15.
    pub ssid: u8,
}

impl Callsign {
    /// A callsign; `None` unless 1-6 ASCII letters/digits and SSID 0..=15.
    pub fn new(call: &str, ssid: u8) -> Option<Callsign> {
        let ok = !call.is_empty()
            && call.len() <= 6
            && call.bytes().all(|b| b.is_ascii_alphanumeric())
            && ssid <= 15;
        ok.then(|| Callsign {
            call: call.to_ascii_uppercase(),
            ssid,
        })
    }

    fn encode(&self, last: bool, command: bool) -> [u8; 7] {
        let mut a = [b' ' << 1; 7];
        for (i, b) in self.call.bytes().enumerate() {
            a[i] = b << 1;
        }
        a[6] = 0x60 | (self.ssid << 1) | if command { 0x80 } else { 0 } | u8::from(last);
        a
    }

    fn matches(&self, field: &[u8]) -> bool {
        field.len() == 7
            && field[..6] == self.encode(false, false)[..6]
            && (field[6] >> 1) & 0x0f == self.ssid
    }
}

/// Wraps `info` in an AX.25 UI frame from `src` to `dst`.
pub fn ax25_ui(dst: &Callsign, src: &Callsign, info: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(AX25_HEADER + info.len());
    f.extend_from_slice(&dst.encode(false, true));
    f.extend_from_slice(&src.encode(true, false));
    f.extend_from_slice(&[0x03, 0xF0]);
    f.extend_from_slice(info);
    f
}

/// The information field of a UI frame addressed to `me`; `None` for anything else.
pub fn ax25_info<'a>(frame: &'a [u8], me: &Callsign) -> Option<&'a [u8]> {
    if frame.len() < AX25_HEADER
        || !me.matches(&frame[..7])
        || frame[13] & 1 == 0
        || frame[14] != 0x03
        || frame[15] != 0xF0
    {
        return None;
    }
    Some(&frame[AX25_HEADER..])
}

/// KISS-escapes `frame` as a data frame for TNC port 0.
pub fn kiss_encode(frame: &[u8], out: &mut Vec<u8>) {
    out.push(FEND);
    out.push(0x00);
    for &b in frame {
        match b {
            FEND => out.extend_from_slice(&[FESC, TFEND]),
            FESC => out.extend_from_slice(&[FESC, TFESC]),
            b => out.push(b),
        }
    }
    out.push(FEND);
}

/// Incremental KISS decoder.
#[derive(Default)]
pub struct KissDecoder {
    buf: Vec<u8>,
    escaped: bool,
}

/// Longest KISS frame kept (longer ones are dropped).
const MAX_KISS_FRAME: usize = 4096;

impl KissDecoder {
    /// Feeds bytes; returns the complete data frames they finish (command byte stripped).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == FEND {
                if self.buf.len() > 1 && self.buf[0] & 0x0f == 0 {
                    out.push(self.buf[1..].to_vec());
                }
                self.buf.clear();
                self.escaped = false;
                continue;
            }
            let b = if self.escaped {
                self.escaped = false;
                match b {
                    TFEND => FEND,
                    TFESC => FESC,
                    other => other,
                }
            } else if b == FESC {
                self.escaped = true;
                continue;
            } else {
                b
            };
            if self.buf.len() < MAX_KISS_FRAME {
                self.buf.push(b);
            }
        }
        out
    }
}

/// A KISS TNC reached over a byte stream.
pub struct KissTransport<W> {
    writer: W,
    me: Callsign,
    peer: Callsign,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl KissTransport<tokio::net::tcp::OwnedWriteHalf> {
    /// Connects to a TNC's KISS TCP port (Dire Wolf: 8001).
    pub async fn connect_tcp(addr: &str, me: Callsign, peer: Callsign) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(KissTransport::new(r, w, me, peer))
    }
}

impl KissTransport<tokio::io::WriteHalf<tokio_serial::SerialStream>> {
    /// Opens a TNC on a serial port (8N1 at `baud`), as hardware TNCs and radios with a
    /// built-in TNC are connected.
    pub fn open_serial(
        path: &str,
        baud: u32,
        me: Callsign,
        peer: Callsign,
    ) -> std::io::Result<Self> {
        use tokio_serial::SerialPortBuilderExt as _;
        let port = tokio_serial::new(path, baud)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::None)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(std::io::Error::other)?;
        let (r, w) = tokio::io::split(port);
        Ok(KissTransport::new(r, w, me, peer))
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> KissTransport<W> {
    /// A transport over a stream's two halves.
    pub fn new<R: AsyncRead + Unpin + Send + 'static>(
        mut reader: R,
        writer: W,
        me: Callsign,
        peer: Callsign,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let mine = me.clone();
        tokio::spawn(async move {
            let mut dec = KissDecoder::default();
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for frame in dec.feed(&buf[..n]) {
                    if let Some(info) = ax25_info(&frame, &mine) {
                        if tx.send(info.to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        KissTransport {
            writer,
            me,
            peer,
            rx,
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Transport for KissTransport<W> {
    async fn transmit(&mut self, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        // One write for the whole burst, so the TNC keys up once for all of it.
        let mut out = Vec::new();
        for f in &frames {
            kiss_encode(&ax25_ui(&self.peer, &self.me, f), &mut out);
        }
        self.writer.write_all(&out).await?;
        self.writer.flush().await
    }

    async fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        self.rx.recv().await.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "TNC connection closed")
        })
    }
}

/// A KISS TNC over TCP that is connected again whenever the connection drops (the TNC
/// restarted, the network blinked), and that may be absent when the link starts: a ground
/// station's radio. While it is disconnected, transmissions fail (and are counted as such)
/// and nothing is heard; every [`RECONNECT_EVERY`] a new connection is tried. The link's
/// own retransmission covers what was lost meanwhile.
pub struct KissTcpStation {
    addr: String,
    me: Callsign,
    peer: Callsign,
    inner: Option<KissTransport<tokio::net::tcp::OwnedWriteHalf>>,
    next_try: tokio::time::Instant,
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a disconnected [`KissTcpStation`] waits between connection attempts.
pub const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl KissTcpStation {
    /// A station whose TNC listens on `addr` (host:port); connects at first use.
    pub fn new(addr: &str, me: Callsign, peer: Callsign) -> KissTcpStation {
        KissTcpStation {
            addr: addr.to_owned(),
            me,
            peer,
            inner: None,
            next_try: tokio::time::Instant::now(),
            connected: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Connects if it is time to try; returns whether a connection is up.
    async fn ensure(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if self.inner.is_some() {
            return true;
        }
        if tokio::time::Instant::now() < self.next_try {
            return false;
        }
        self.next_try = tokio::time::Instant::now() + RECONNECT_EVERY;
        // Bounded: a TNC host that drops packets must not hold the link's task for the
        // operating system's two-minute connect timeout.
        let connect = KissTransport::connect_tcp(&self.addr, self.me.clone(), self.peer.clone());
        match tokio::time::timeout(RECONNECT_EVERY, connect)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            Ok(t) => {
                tracing::info!(tnc = %self.addr, "connected to the TNC");
                self.inner = Some(t);
                self.connected.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::debug!(tnc = %self.addr, error = %e, "the TNC is not reachable yet");
                false
            }
        }
    }

    fn lost(&mut self, e: &std::io::Error) {
        tracing::warn!(tnc = %self.addr, error = %e, "lost the TNC; connecting again");
        self.inner = None;
        self.connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Transport for KissTcpStation {
    async fn transmit(&mut self, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        if !self.ensure().await {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the TNC at {} is not connected", self.addr),
            ));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let result = inner.transmit(frames).await;
        if let Err(e) = &result {
            self.lost(e);
        }
        result
    }

    async fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if !self.ensure().await {
                tokio::time::sleep_until(self.next_try).await;
                continue;
            }
            let Some(inner) = self.inner.as_mut() else {
                continue;
            };
            match inner.recv().await {
                Ok(frame) => return Ok(frame),
                Err(e) => self.lost(&e),
            }
        }
    }

    fn connected_flag(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        Some(self.connected.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiss_and_ax25_round_trip_with_escapes() {
        let me = Callsign::new("SAT", 0).expect("call");
        let ground = Callsign::new("GROUND", 0).expect("call");
        let info = vec![FEND, 1, FESC, 2, FEND, FESC];
        let mut wire = Vec::new();
        kiss_encode(&ax25_ui(&me, &ground, &info), &mut wire);
        assert!(!wire[1..wire.len() - 1].contains(&FEND));
        let mut dec = KissDecoder::default();
        // Split arbitrarily across reads.
        let mut frames = dec.feed(&wire[..5]);
        frames.extend(dec.feed(&wire[5..]));
        assert_eq!(frames.len(), 1);
        assert_eq!(ax25_info(&frames[0], &me), Some(info.as_slice()));
        assert_eq!(
            ax25_info(&frames[0], &ground),
            None,
            "addressed to SAT, not GROUND"
        );
        assert!(Callsign::new("TOOLONGX", 0).is_none());
    }
}
