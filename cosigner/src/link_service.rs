//! The cosigner's side of the radio link: every message delivered is handled by the daemon
//! and answered with the same correlation id.
//!
//! Exactly once, end to end: the link delivers each message once and keeps it in its
//! persisted inbox until [`LinkHandle::ack`]; the answer is queued (durably) before the ack,
//! so a crash in between only replays the message, and the daemon answers a replay with what
//! it recorded the first time (an identical signing request returns the stored signature and
//! debits nothing twice).

use std::sync::Arc;

use satcosign_link::link::{LinkError, LinkHandle};
use satcosign_link::store::LinkStore;

use crate::daemon::Cosigner;
use crate::protocol::{open_envelope, seal_envelope};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves requests from the link until it stops.
pub async fn serve<S>(cosigner: Arc<Cosigner>, link: Arc<LinkHandle<S>>) -> Result<(), LinkError>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    serve_with(cosigner, link, |answer| answer).await
}

/// As [`serve`], with each answer passed through `alter` before it is sent: the identity
/// for the daemon; a test harness uses it to play a satellite that misbehaves (an answer
/// with a bad signature), which the ground must catch.
pub async fn serve_with<S>(
    cosigner: Arc<Cosigner>,
    link: Arc<LinkHandle<S>>,
    alter: impl Fn(Vec<u8>) -> Vec<u8> + Send,
) -> Result<(), LinkError>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    serve_on_clock(cosigner, link, alter, unix_now).await
}

/// As [`serve_with`], reading the satellite's time (unix seconds) from `clock`: a simulated
/// satellite in a test of days-long behaviour lives on the test's clock.
pub async fn serve_on_clock<S>(
    cosigner: Arc<Cosigner>,
    link: Arc<LinkHandle<S>>,
    alter: impl Fn(Vec<u8>) -> Vec<u8> + Send,
    clock: fn() -> u64,
) -> Result<(), LinkError>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    loop {
        let (msg_id, bytes) = link.recv().await?;
        match open_envelope(&bytes) {
            Ok((request_id, body)) => {
                let body = body.to_vec();
                let c = cosigner.clone();
                let answer = tokio::task::spawn_blocking(move || c.handle_bytes(&body, clock()))
                    .await
                    .map_err(|_| LinkError::Stopped)?;
                let answer = alter(answer);
                tracing::info!(request = %request_id, bytes = answer.len(), "answering over the link");
                link.send(seal_envelope(&request_id, &answer)).await?;
            }
            Err(e) => {
                tracing::warn!(msg_id, error = %e, "dropping a link message without an envelope")
            }
        }
        link.ack(msg_id)?;
    }
}
