//! A read rate per peer address, shared by every listener (Electrum TCP and TLS, HTTP and
//! WebSocket, the Nostr relay).
//!
//! Each peer address has a token bucket of bytes: a burst, refilled at a steady rate. A
//! connection's reads, and the answers written to it, draw on its peer's bucket, and once
//! the bucket is empty the connection reads nothing more until it has refilled. A client that sends faster than
//! its share is not refused; it is slowed to it, and its bytes stay in its own socket
//! buffers and its own kernel's, not in the bridge. This is what keeps a few addresses
//! that send large refused requests (oversized lines, floods of puts or events, big PSBTs
//! for wallets they do not own) from taking the CPU every other client needs: each
//! refused request still has to be read and scanned before it can be refused.
//!
//! The debt of one read (at most one buffer) is allowed, so a read is never split; the next
//! read waits until the debt is paid. Buckets of idle peers are full and are dropped. A peer
//! is an IPv4 address or an IPv6 /64 ([`crate::admission::peer`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Peers tracked before full (idle) buckets are swept out.
const SWEEP_AT: usize = 1024;

/// The per-peer read rates of the whole bridge.
#[derive(Debug)]
pub struct ReadRates {
    bytes_per_second: f64,
    burst_bytes: f64,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bytes the peer may still read; negative while it owes for its last read.
    tokens: f64,
    at: Instant,
}

impl ReadRates {
    /// Each peer may read `burst_bytes` at once, then `bytes_per_second`.
    pub fn new(bytes_per_second: u64, burst_bytes: u64) -> Arc<ReadRates> {
        Arc::new(ReadRates {
            bytes_per_second: bytes_per_second.max(1) as f64,
            burst_bytes: burst_bytes.max(1) as f64,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Wraps a connection from `ip` so that its reads draw on `ip`'s bucket.
    pub fn wrap<S>(self: &Arc<Self>, ip: IpAddr, stream: S) -> Throttled<S> {
        Throttled {
            inner: stream,
            ip: crate::admission::peer(ip),
            rates: self.clone(),
            sleep: None,
        }
    }

    /// How long `ip` must wait before it may read again (zero: now).
    fn wait(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = peers.get_mut(&ip) else {
            return Duration::ZERO;
        };
        self.refill(bucket, now);
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.bytes_per_second)
        }
    }

    /// Charges `bytes` just read by `ip`.
    fn charge(&self, ip: IpAddr, bytes: usize, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= SWEEP_AT && !peers.contains_key(&ip) {
            peers.retain(|_, b| {
                self.refill(b, now);
                b.tokens < self.burst_bytes
            });
        }
        let bucket = peers.entry(ip).or_insert(Bucket {
            tokens: self.burst_bytes,
            at: now,
        });
        self.refill(bucket, now);
        bucket.tokens -= bytes as f64;
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        if now > bucket.at {
            let elapsed = (now - bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_second).min(self.burst_bytes);
            bucket.at = now;
        }
    }

    /// What peer `ip` costs is charged here: `bytes` it made the bridge produce (an answer
    /// that was built and then refused for its size, say).
    pub fn spent(&self, ip: IpAddr, bytes: usize) {
        self.charge(crate::admission::peer(ip), bytes, Instant::now());
    }

    /// Peers with a bucket now (idle ones may linger until the next sweep).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection whose reads are paced by its peer's bucket; writes pass through.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    ip: IpAddr,
    rates: Arc<ReadRates>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            let wait = self.rates.wait(self.ip, Instant::now());
            if wait.is_zero() {
                break;
            }
            crate::metrics::limit_hit("read_bytes_per_peer");
            tracing::trace!(peer = %self.ip, ?wait, "reads held: over the peer's read rate");
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.rates.charge(this.ip, read, Instant::now());
        }
        polled
    }
}

impl<S> Throttled<S> {
    /// Answers count against the peer's share too: what a peer reads costs the bridge as
    /// much as what it sends, so asking for large answers slows its next requests.
    fn charge_written(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            if *n > 0 {
                self.rates.charge(self.ip, *n, Instant::now());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.charge_written(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.charge_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let rates = ReadRates::new(1000, 5000);
        let t0 = Instant::now();
        assert_eq!(rates.wait(ip(2), t0), Duration::ZERO);
        rates.charge(ip(2), 6000, t0);
        // 1000 bytes owed at 1000 bytes/s.
        assert_eq!(rates.wait(ip(2), t0), Duration::from_secs(1));
        assert_eq!(
            rates.wait(ip(2), t0 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(
            rates.wait(ip(2), t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        // Another peer has its own bucket.
        assert_eq!(rates.wait(ip(3), t0), Duration::ZERO);
    }

    #[test]
    fn refills_never_pass_the_burst_and_idle_peers_are_swept() {
        let rates = ReadRates::new(1000, 5000);
        let t0 = Instant::now();
        rates.charge(ip(2), 100, t0);
        let later = t0 + Duration::from_secs(3600);
        rates.charge(ip(2), 5500, later);
        assert!(rates.wait(ip(2), later) > Duration::ZERO);
        for n in 0..SWEEP_AT as u32 {
            rates.charge(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), 1, t0);
        }
        assert_eq!(rates.tracked(), SWEEP_AT + 1);
        // An hour on, every bucket but ip(2)'s has refilled: the next new peer sweeps them.
        rates.charge(ip(9), 1, later);
        assert_eq!(rates.tracked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_sender_is_paced_to_its_share() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rates = ReadRates::new(10_000, 10_000);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut server = rates.wrap(ip(2), server);
        client.write_all(&[7u8; 50_000]).await.expect("write");
        drop(client);
        let start = tokio::time::Instant::now();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.len(), 50_000);
        // 10 kB at once, the other 40 kB (less the last read's debt) at 10 kB/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took <= Duration::from_secs(5), "{took:?}");
    }
}
