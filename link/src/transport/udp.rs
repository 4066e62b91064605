//! UDP datagrams: one frame per datagram, to a fixed peer.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::Transport;

/// A UDP radio.
pub struct UdpTransport {
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl UdpTransport {
    /// Binds `local` and sends to (and only receives from) `peer`.
    pub async fn connect(local: SocketAddr, peer: SocketAddr) -> std::io::Result<UdpTransport> {
        let socket = UdpSocket::bind(local).await?;
        socket.connect(peer).await?;
        Ok(UdpTransport {
            socket,
            buf: vec![0u8; 65_536],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Transport for UdpTransport {
    async fn transmit(&mut self, frames: Vec<Vec<u8>>) -> std::io::Result<()> {
        for f in frames {
            self.socket.send(&f).await?;
        }
        Ok(())
    }

    async fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            match self.socket.recv(&mut self.buf).await {
                Ok(n) => return Ok(self.buf[..n].to_vec()),
                // A peer not yet listening makes the OS report ICMP errors: keep waiting.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
