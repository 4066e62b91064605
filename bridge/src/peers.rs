//! What replicas on one PostgreSQL database tell each other, so that a client is served
//! the same whichever replica it reaches: a subscriber on one hears a request change made
//! on another, the replica driving the link wakes for a request confirmed elsewhere, and
//! each replica's Nostr relay shows the events another stored.
//!
//! Each replica sends, after its commit, one `NOTIFY` per change on channel [`CHANNEL`]
//! (batched in one statement when several are waiting), and `LISTEN`s on a connection of
//! its own. A notice carries only ids: what changed is read from the database, so a notice
//! that is lost (a replica restarting) costs a wake-up, which the relay's periodic sweep
//! makes up, never a state.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use satcosign_cosigner::decision::RequestId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::postgres::PgStore;
use crate::state::State;

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "satcosign";

/// Most notices sent in one statement.
const MAX_BATCH: usize = 512;

/// A change another replica made, as heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Request `0` changed (to state `1`).
    Request(RequestId, State),
    /// A Nostr event was stored.
    NostrStored([u8; 32]),
    /// A stored Nostr event was deleted.
    NostrGone([u8; 32]),
    /// A satellite key was issued or a wallet registered: more Nostr identities to serve.
    Identities,
}

impl Heard {
    fn encode(&self, me: &str) -> String {
        match self {
            Heard::Request(id, state) => format!("{me} r {id} {}", state.as_str()),
            Heard::NostrStored(id) => format!("{me} n {}", hex::encode(id)),
            Heard::NostrGone(id) => format!("{me} x {}", hex::encode(id)),
            Heard::Identities => format!("{me} i -"),
        }
    }

    /// A notice's payload: the sender, and what it heard; `None` for a malformed one.
    fn decode(payload: &str) -> Option<(&str, Heard)> {
        let mut parts = payload.split(' ');
        let (from, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
        let heard = match kind {
            "r" => {
                let id = RequestId(hex::decode(id).ok()?.try_into().ok()?);
                Heard::Request(id, State::parse(parts.next()?)?)
            }
            "n" => Heard::NostrStored(hex::decode(id).ok()?.try_into().ok()?),
            "x" => Heard::NostrGone(hex::decode(id).ok()?.try_into().ok()?),
            "i" if id == "-" => Heard::Identities,
            _ => return None,
        };
        Some((from, heard))
    }
}

/// This replica's side: what it tells the others.
pub struct Peers {
    me: String,
    out: mpsc::UnboundedSender<String>,
}

impl Peers {
    /// Starts telling the replicas on `pg` of this one's changes, and hands `on_heard`
    /// each change one of them made (never this one's own). The tasks end with the
    /// returned `Peers` (the sender) and with the process (the listener: abort it).
    pub fn start(
        pg: &PgStore,
        on_heard: impl Fn(Heard) + Send + Sync + 'static,
    ) -> (Arc<Peers>, Vec<JoinHandle<()>>) {
        let me = hex::encode(crate::service::random_id());
        let (out, rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send(pg.clone(), rx));
        let listener = tokio::spawn(listen(
            pg.connection_config().clone(),
            me.clone(),
            Arc::new(on_heard),
        ));
        (Arc::new(Peers { me, out }), vec![sender, listener])
    }

    /// Tells the other replicas of `heard`, after its commit.
    pub fn tell(&self, heard: Heard) {
        let _ = self.out.send(heard.encode(&self.me));
    }
}

/// Applies what another replica did to this one: its subscribers (and relay) hear of a
/// request's change, its Nostr relay shows the events stored there.
pub fn apply(
    heard: Heard,
    service: Option<&Arc<crate::service::Service>>,
    nostr: Option<&Arc<crate::nostr_relay::NostrRelay>>,
) {
    match heard {
        Heard::Request(id, state) => {
            if let Some(service) = service {
                service.heard(crate::service::Event { id, state });
            }
        }
        Heard::NostrStored(id) => {
            if let Some(relay) = nostr {
                let relay = relay.clone();
                tokio::spawn(async move { relay.mirror(id).await });
            }
        }
        Heard::NostrGone(id) => {
            if let Some(relay) = nostr {
                relay.mirror_gone(&id);
            }
        }
        Heard::Identities => {
            if let Some(cosigner) = service.and_then(|s| s.nostr.get()).cloned() {
                tokio::spawn(async move {
                    if let Err(e) = cosigner.reload().await {
                        tracing::warn!(error = %e, "cannot load the Nostr identities another replica added");
                    }
                });
            }
        }
    }
}

/// Sends what is queued, in batches, until every [`Peers`] is gone.
async fn send(pg: PgStore, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let sent = async {
            let client = pg.client().await?;
            client
                .execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&CHANNEL, &batch],
                )
                .await
                .map_err(crate::postgres::db_err)
        }
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, notices = batch.len(),
                "could not tell the other replicas of changes; they see them at their next sweep");
        }
        batch.clear();
    }
}

/// Listens on a connection of its own, connecting again (every second) when it is cut.
async fn listen(
    config: tokio_postgres::Config,
    me: String,
    on_heard: Arc<dyn Fn(Heard) + Send + Sync>,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {CHANNEL}");
                let listening = client.batch_execute(&statement);
                // The connection is driven by polling its messages: the LISTEN completes
                // while they are read.
                tokio::pin!(listening);
                let mut listened = false;
                loop {
                    tokio::select! {
                        done = &mut listening, if !listened => {
                            listened = true;
                            if let Err(e) = done {
                                tracing::warn!(error = %e, "cannot listen to the other replicas");
                                break;
                            }
                            tracing::debug!("listening to the other replicas");
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                match Heard::decode(n.payload()) {
                                    Some((from, heard)) if from != me => on_heard(heard),
                                    Some(_) => {}
                                    None => tracing::warn!(payload = n.payload(),
                                        "a malformed notice on the replicas' channel"),
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "the replicas' channel was cut");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot reach the database to listen yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_as_sent_and_malformed_ones_are_refused() {
        let id = RequestId([7; 16]);
        for heard in [
            Heard::Request(id, State::Confirmed),
            Heard::NostrStored([9; 32]),
            Heard::NostrGone([1; 32]),
            Heard::Identities,
        ] {
            let text = heard.encode("abc");
            assert_eq!(Heard::decode(&text), Some(("abc", heard)));
        }
        for bad in [
            "",
            "abc",
            "abc r 07",
            "abc r zz confirmed",
            "abc q 00",
            "abc r 0707 nope",
        ] {
            assert_eq!(Heard::decode(bad), None, "{bad}");
        }
    }
}
