//! Lockdown on the ground: when the owner confirms a lockdown, every signing request of the
//! wallet that has not reached the satellite ends `refused` with code `locked` before the
//! lockdown itself is queued: those awaiting their email, those confirmed (and those held
//! on the satellite, which are told to cancel), and those still in the link's outbox, taken
//! back if no part of them went on the air. The bridge's copy of the policy is locked at
//! once too, so new requests are refused at submit. The satellite locks when the lockdown
//! reaches it, and refuses whatever it is asked for the wallet from then.
//!
//! A request whose message already went on the air cannot be taken back: the satellite
//! judges it before the lockdown, which follows it on the link. If it signs, the signature
//! is not handed out when it comes down: that request too ends refused `locked` (the
//! satellite's audit and ledger show the signature).

use satcosign_cosigner::protocol::{seal_envelope, Cancel, Request};
use satcosign_link::store::LinkStore;

use crate::lifecycle::Step;
use crate::service::ServiceError;
use crate::state::{load_wallet, save_wallet, Action, Outcome, RequestRecord, State};
use crate::store::StoreError;

use super::Relay;

/// The outcome of a request stopped by a lockdown.
fn locked() -> Outcome {
    Outcome::Refused {
        code: "locked".into(),
        reason: "the wallet was locked down before the satellite signed; nothing was signed".into(),
    }
}

/// The outcome of a request signed on the satellite after its wallet was locked down on
/// the ground: the signature is discarded.
pub(super) fn discarded() -> Outcome {
    Outcome::Refused {
        code: "locked".into(),
        reason: "the wallet was locked down before the signature came down; the bridge \
                 discarded it"
            .into(),
    }
}

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// Whether confirmed request `r` locks its wallet down.
    pub(super) fn locks_down(&self, r: &RequestRecord) -> bool {
        matches!(&r.action, Action::SetPolicy { policy } if policy.locked)
    }

    /// Stops the wallet's pending signing requests, locks the bridge's copy of its policy,
    /// then queues lockdown `r` for the satellite. Safe to run again after a crash.
    pub(super) async fn lock_down(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        let wallet_id = r.wallet_id;
        self.service
            .store
            .write(move |txn| {
                if let Some(mut w) = load_wallet(txn, &wallet_id)? {
                    w.policy.locked = true;
                    save_wallet(txn, &w)?;
                }
                Ok(())
            })
            .await?;
        let mut busy = 0;
        for id in self.service.active_requests().await? {
            if id == r.id {
                continue;
            }
            let Some(_claim) = self.service.claim(id) else {
                busy += 1;
                continue;
            };
            let other = self.service.request(id).await?;
            if other.wallet_id != r.wallet_id || !matches!(other.action, Action::Sign { .. }) {
                continue;
            }
            let stoppable = match (other.state, other.link_msg) {
                (State::Received | State::AwaitingEmail | State::Confirmed, _) => true,
                (State::Queued, Some(msg)) => self
                    .link
                    .withdraw(msg)
                    .await
                    .map_err(|e| StoreError::Database(format!("link: {e}")))?,
                _ => false,
            };
            if !stoppable {
                tracing::warn!(request = %id, state = other.state.as_str(),
                    "lockdown: already on the air; a signature for it will be discarded");
                continue;
            }
            self.service
                .take(id, Step::Locked, |_, rec| {
                    rec.tokens.clear();
                    rec.outcome = Some(locked());
                    Ok(())
                })
                .await?;
            tracing::info!(request = %id, "refused: the wallet is locked down");
        }
        if busy > 0 {
            // Another task is moving some request of the wallet: come back for it before
            // the lockdown goes.
            return Err(ServiceError::Invalid {
                field: "lockdown",
                reason: format!("{busy} requests were busy; trying again"),
            });
        }
        self.queue(r).await
    }

    /// Tells the satellite never to sign held request `r`.
    pub(super) async fn cancel_on_satellite(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        let message = Request::Cancel(Cancel {
            wallet_id: r.wallet_id,
            request_id: r.id,
        });
        self.link
            .send(seal_envelope(&r.id, &message.encode()))
            .await
            .map_err(|e| StoreError::Database(format!("link: {e}")))?;
        Ok(())
    }
}
