//! What operators see of an engine: its counters, and where its oldest queued message
//! stands.

/// Counters for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transmissions (bursts; each costs a preamble).
    pub transmissions: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Data frames sent again.
    pub frames_resent: u64,
    /// Frames received and accepted.
    pub frames_received: u64,
    /// Bytes received (accepted frames).
    pub bytes_received: u64,
    /// Frames rejected: damaged (CRC) or too short.
    pub rejected_damaged: u64,
    /// Frames rejected: forged, wrong key or wrong direction.
    pub rejected_forged: u64,
    /// Frames rejected: replayed or stale.
    pub rejected_replayed: u64,
    /// Authentic frames whose record did not parse.
    pub rejected_malformed: u64,
    /// Messages delivered to the inbox.
    pub messages_delivered: u64,
    /// Duplicate messages acknowledged but not delivered again.
    pub duplicates_suppressed: u64,
    /// Messages acknowledged by the peer.
    pub messages_acknowledged: u64,
}

/// Where the oldest queued message stands, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadStatus {
    /// Its link message id.
    pub msg_id: u64,
    /// Fragments it has (data and parity).
    pub fragments: usize,
    /// Fragments sent at least once.
    pub fragments_sent: usize,
    /// What it waits for.
    pub state: HeadState,
}

/// What the oldest queued message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadState {
    /// The peer is out of view: the next pass.
    WaitingForPass,
    /// Fragments are due to go (now, or when the channel is ours).
    Sending,
    /// Everything went out; waiting for the peer's acknowledgement or report.
    AwaitingAck,
}

impl HeadState {
    /// A stable lowercase name, for JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadState::WaitingForPass => "waiting_for_pass",
            HeadState::Sending => "sending",
            HeadState::AwaitingAck => "awaiting_ack",
        }
    }
}
