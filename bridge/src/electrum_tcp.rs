//! The Electrum-protocol transport: newline-delimited JSON-RPC over TCP and TLS.
//!
//! Each connection has a reader that takes one line at a time (never holding more than the
//! configured maximum: a longer line is answered with an error and skipped unread, and the
//! connection stays usable), and a writer task fed by a queue, so responses and Electrum-style
//! pushes from any method interleave safely. Calls on a connection are handled in order.
//!
//! Every resource a client holds is bounded: connections by [`crate::admission`] (a cap,
//! and a share of it per peer address), unsent bytes by the queue's budget
//! ([`crate::push`]: past it the connection reads no more requests until the client reads,
//! and is closed if it does not within the idle timeout), and each answer's size by the
//! dispatcher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::{ConnectionId, Extensions};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admission, ClientAddr};
use crate::dispatch::Dispatcher;
use crate::push::{outgoing, OutgoingRx, Pusher};
use crate::read_rate::ReadRates;
use crate::rpc_error::{protocol_error_line, OVERSIZED_REQUEST};

/// Limits applied to every Electrum-protocol connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line read, bytes.
    pub max_line_bytes: usize,
    /// Close a connection silent for this long (or not reading its answers for this long).
    pub idle_timeout: Duration,
    /// Unsent bytes past which a connection reads no more requests.
    pub max_unsent_bytes: usize,
    /// Most `request.subscribe` subscriptions a connection holds.
    pub max_subscriptions: usize,
}

/// What reading one line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line is in the buffer (without its newline).
    Line,
    /// The line exceeded the limit; it is being skipped and nothing of it is kept.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads newline-terminated lines of bounded length.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    skipping: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader refusing lines longer than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            skipping: false,
        }
    }

    /// Reads the next line into `buf` (cleared first).
    pub async fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<LineRead> {
        buf.clear();
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(if buf.is_empty() || self.skipping {
                    LineRead::Eof
                } else {
                    LineRead::Line
                });
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |p| p + 1);
            if self.skipping {
                self.inner.consume(take);
                if newline.is_some() {
                    self.skipping = false;
                }
                continue;
            }
            let content = newline.unwrap_or(available.len());
            if buf.len() + content > self.max {
                self.inner.consume(take);
                // Skip the rest of this line in later calls, unless it just ended.
                self.skipping = newline.is_none();
                buf.clear();
                return Ok(LineRead::TooLong);
            }
            buf.extend_from_slice(&available[..content]);
            self.inner.consume(take);
            if newline.is_some() {
                return Ok(LineRead::Line);
            }
        }
    }
}

/// Accepts connections on `listener` until the task is dropped; TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    dispatcher: Dispatcher,
    limits: Limits,
    connections: Arc<Admission>,
    rates: Arc<ReadRates>,
) {
    static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
    let local = listener.local_addr().ok();
    // Connections belong to the listener: stopping it (aborting this task) closes them.
    let mut open = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match connections.admit(peer.ip()) {
            Ok(p) => p,
            // Refused: counted and logged by admission; the socket closes here.
            Err(_) => continue,
        };
        let _ = socket.set_nodelay(true);
        let socket = rates.wrap(peer.ip(), socket);
        let rates = rates.clone();
        let dispatcher = dispatcher.clone();
        let tls = tls.clone();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        open.spawn(async move {
            let _permit = permit;
            tracing::debug!(%peer, ?local, conn = id, tls = tls.is_some(), "connection opened");
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(limits.idle_timeout, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, id, dispatcher, limits, rates).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => connection(socket, peer, id, dispatcher, limits, rates).await,
            }
            tracing::debug!(%peer, conn = id, "connection closed");
        });
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    id: usize,
    dispatcher: Dispatcher,
    limits: Limits,
    rates: Arc<ReadRates>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = outgoing(limits.max_unsent_bytes, limits.max_subscriptions);
    let (reader_done, reader_done_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(write_loop(write_half, rx, reader_done_rx));

    let mut ext = Extensions::new();
    ext.insert(ConnectionId(id));
    ext.insert(ClientAddr::of(peer.ip()));
    ext.insert(rates);
    ext.insert(Pusher::new(tx.clone()));

    let mut reader = LineReader::new(
        BufReader::with_capacity(64 * 1024, read_half),
        limits.max_line_bytes,
    );
    let mut line = Vec::with_capacity(1024);
    loop {
        if tx.over_budget() {
            // The client is not reading its answers: read nothing more until it does.
            crate::metrics::limit_hit("electrum_unsent_bytes");
            tracing::debug!(%peer, unsent = tx.queued_bytes(), "holding the connection until its answers are read");
            if tokio::time::timeout(limits.idle_timeout, tx.within_budget())
                .await
                .is_err()
            {
                tracing::info!(%peer, unsent = tx.queued_bytes(), "closing a connection that does not read its answers");
                break;
            }
        }
        let read = tokio::time::timeout(limits.idle_timeout, reader.read_line(&mut line)).await;
        let reply = match read {
            Err(_) => {
                tracing::debug!(%peer, "idle timeout");
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
            Ok(Ok(LineRead::Eof)) => break,
            Ok(Ok(LineRead::TooLong)) => {
                tracing::info!(%peer, max = limits.max_line_bytes, "request line over the limit refused");
                Some(protocol_error_line(
                    OVERSIZED_REQUEST,
                    &format!(
                        "Request is too big: lines are limited to {} bytes",
                        limits.max_line_bytes
                    ),
                ))
            }
            Ok(Ok(LineRead::Line)) => dispatcher.handle_line(&line, &ext).await,
        };
        if let Some(reply) = reply {
            if !tx.send(reply) {
                break;
            }
        }
    }
    drop(ext);
    drop(tx);
    let _ = reader_done.send(());
    // What is queued gets a short while to go; a client that reads nothing does not hold
    // the connection (and its queue) open any longer.
    let grace = limits.idle_timeout.min(Duration::from_secs(30));
    let abort = writer.abort_handle();
    if tokio::time::timeout(grace, writer).await.is_err() {
        abort.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    write_half: W,
    mut rx: OutgoingRx,
    mut reader_done: oneshot::Receiver<()>,
) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, write_half);
    loop {
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = &mut reader_done => {
                // The reader has finished: send what is already queued, then close.
                // Pushers kept by methods must not hold the connection open.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        if write_line(&mut out, &first).await.is_err() {
            return;
        }
        rx.written(&first);
        while let Some(more) = rx.try_recv() {
            if write_line(&mut out, &more).await.is_err() {
                return;
            }
            rx.written(&more);
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}

async fn write_line<W: AsyncWrite + Unpin>(out: &mut W, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(LineRead, Vec<u8>)> {
        // A tiny buffer forces lines to span many reads.
        let mut r = LineReader::new(BufReader::with_capacity(3, input), max);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let what = r.read_line(&mut buf).await.expect("in-memory read");
            if what == LineRead::Eof {
                return out;
            }
            out.push((what, buf.clone()));
        }
    }

    #[tokio::test]
    async fn splits_and_bounds_lines() {
        let got = lines(b"ab\n0123456789\ncd\nxyz", 5).await;
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::TooLong, vec![]),
                (LineRead::Line, b"cd".to_vec()),
                (LineRead::Line, b"xyz".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_passes() {
        let got = lines(b"12345\n123456\n", 5).await;
        assert_eq!(got[0], (LineRead::Line, b"12345".to_vec()));
        assert_eq!(got[1].0, LineRead::TooLong);
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn an_unterminated_oversize_tail_ends_cleanly() {
        let got = lines(b"ok\n0123456789", 5).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, LineRead::TooLong);
    }
}
