//! The radio, behind one trait: a transport sends a transmission (a burst of frames sent
//! back to back under one preamble) and yields the frames it receives, damaged or not
//! (the engine checks them). Implementations: a seeded simulated channel, UDP datagrams,
//! and KISS (with AX.25 UI framing) over TCP to a software TNC such as Dire Wolf; and
//! [`stations::GroundStations`], several of those as one radio, one per ground station.

use std::future::Future;

pub mod kiss;
pub mod sim;
pub mod stations;
pub mod udp;

/// A radio.
pub trait Transport: Send + 'static {
    /// Sends `frames` as one transmission; returns when the transmission has been handed
    /// to the radio (for the simulated channel: when it has finished on the air).
    fn transmit(
        &mut self,
        frames: Vec<Vec<u8>>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// The next frame received. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = std::io::Result<Vec<u8>>> + Send;
    /// For a radio reached over a connection that can drop and come back (a TNC over TCP):
    /// a flag that says whether it is connected now. `None`: always there.
    fn connected_flag(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        None
    }
}
