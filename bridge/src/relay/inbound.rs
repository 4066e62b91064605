//! Inbound: the cosigner's answers from the link, checked (every signature against the
//! sighashes of the request) and recorded, then acknowledged to the link only once the
//! record is durable; what the satellite did with a policy change is mirrored.
use std::time::Duration;

use satcosign_cosigner::policy::PolicyChange;
use satcosign_cosigner::protocol::{
    open_envelope, CancelOutcome, CompactOutcome, PolicyOutcome, RegisterOutcome, Response,
    SignOutcome,
};
use satcosign_cosigner::refusal::Refusal;
use satcosign_link::store::LinkStore;

use crate::answer::{merge_compact, merge_psbt, IntakeChecks};
use crate::lifecycle::Step;
use crate::notice;
use crate::service::ServiceError;
use crate::signed_history;
use crate::state::{
    load_wallet, mirror_policy_change, save_wallet, Action, Outcome, RequestRecord, State,
    WalletRecord, WalletState,
};
use satcosign_cosigner::decision::{Hold, LedgerEntry};

use super::Relay;

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// Takes the link's delivered messages one by one until the link stops.
    pub(super) async fn receive_loop(&self) {
        loop {
            let (msg_id, bytes) = match self.link.recv().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "link receive stopped");
                    return;
                }
            };
            match self.on_answer(&bytes).await {
                Ok(()) => {
                    if let Err(e) = self.link.ack(msg_id) {
                        tracing::warn!(error = %e, "cannot acknowledge a link message");
                    }
                }
                Err(e) => {
                    tracing::warn!(msg_id, error = %e, "cannot record an answer; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Records one answer from the cosigner (an answer to nothing pending is dropped).
    pub(super) async fn on_answer(&self, bytes: &[u8]) -> Result<(), ServiceError> {
        let (id, body) = match open_envelope(bytes) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a link message without an envelope");
                return Ok(());
            }
        };
        let response = match Response::decode(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "dropping an undecodable answer");
                return Ok(());
            }
        };
        if let Response::Cancel(outcome) = &response {
            // The request was cancelled (or locked down) on the ground before this was
            // sent; the satellite says whether the cancel came in time.
            match outcome {
                CancelOutcome::Cancelled => {
                    tracing::info!(request = %id, "the satellite recorded the cancel")
                }
                other => {
                    tracing::warn!(request = %id, outcome = ?other, "the satellite could not cancel")
                }
            }
            return Ok(());
        }
        let _claim = loop {
            if let Some(c) = self.service.claim(id) {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Ok(r) = self.service.request(id).await else {
            tracing::warn!(request = %id, "answer for an unknown request dropped");
            return Ok(());
        };
        if !matches!(r.state, State::Confirmed | State::Queued | State::Sent) {
            tracing::debug!(request = %id, state = r.state.as_str(), "duplicate answer dropped");
            return Ok(());
        }
        if r.state == State::Queued {
            self.to_sent(id).await?;
        }
        let wallet = self
            .service
            .wallet(&self.service.wallet_record(r.wallet_id).await?)?;
        let policy_change = match &response {
            Response::PolicyUpdated(PolicyOutcome::Changed(c)) => Some(c.clone()),
            _ => None,
        };
        // A spend the satellite refused is the wallet's last violation.
        let satellite_refusal = match &response {
            Response::Sign(s) => match &s.outcome {
                SignOutcome::Refused(refusal) => Some(refusal.clone()),
                SignOutcome::Signed { .. } => None,
            },
            Response::SignCompact(s) => match &s.outcome {
                CompactOutcome::Refused(refusal) => Some(refusal.clone()),
                CompactOutcome::Signed(_) => None,
            },
            _ => None,
        };
        if let Some(Refusal::Held {
            started_at,
            releases_at,
        }) = satellite_refusal
        {
            let hold = Hold {
                started_at,
                releases_at,
            };
            let record = self.service.wallet_record(r.wallet_id).await?;
            return self.held(&r, &record, hold).await;
        }
        // A cancel is the user's doing, not a rule broken.
        let satellite_refusal = satellite_refusal.filter(|r| *r != Refusal::Cancelled);
        let checks = self.service.intake_checks(&r, &wallet).await?;
        let outcome = self.outcome_of(&r, checks.as_ref(), response);
        // The ground's copy of the satellite's ledger, for the dry run's checks.
        let signed = match (&r.action, &outcome) {
            (
                Action::Sign {
                    summary, replaces, ..
                },
                Outcome::Signed { .. },
            ) => Some((
                LedgerEntry {
                    at: crate::service::unix_now(),
                    amount_sat: summary.leaving_sat,
                    request_id: r.id,
                    change_sat: summary.change_sat,
                },
                *replaces,
            )),
            _ => None,
        };
        // A signature that comes down after the owner locked the wallet down is not handed
        // out: the request ends refused `locked`, as every other pending one did. (Its message
        // was on the air before the lockdown, so the satellite signed it and counts it.)
        let outcome = match outcome {
            Outcome::Signed { .. }
                if matches!(r.action, Action::Sign { .. })
                    && self.service.wallet_record(r.wallet_id).await?.policy.locked =>
            {
                tracing::warn!(request = %id, "signature discarded: the wallet is locked down");
                super::lockdown::discarded()
            }
            other => other,
        };
        let step = match outcome {
            Outcome::Refused { .. } => Step::Refused,
            _ => Step::Signed,
        };
        let wallet_change = match (&r.action, &outcome) {
            (Action::Register, Outcome::Done { .. }) => Some((WalletState::Active, None)),
            (Action::Register, Outcome::Refused { reason, .. }) => {
                Some((WalletState::Refused, Some(reason.clone())))
            }
            _ => None,
        };
        // The bridge mirrors what the satellite did: applied now, or held back until its
        // delay is over (the answer says when).
        let new_policy = match (&r.action, &policy_change) {
            (Action::SetPolicy { policy }, Some(PolicyChange::Applied)) => {
                Some((policy.clone(), None))
            }
            (Action::SetPolicy { policy }, Some(PolicyChange::Deferred { effective_at })) => {
                Some((policy.clone(), Some(*effective_at)))
            }
            _ => None,
        };
        self.service
            .take(id, step, move |txn, r| {
                if let Some((entry, replaces)) = &signed {
                    signed_history::record_signed(txn, &r.wallet_id, entry, *replaces)?;
                }
                if wallet_change.is_some() || new_policy.is_some() {
                    if let Some(mut w) = load_wallet(txn, &r.wallet_id)? {
                        if let Some((s, why)) = wallet_change {
                            w.state = s;
                            w.refusal = why;
                        }
                        if let Some((p, deferred_until)) = new_policy {
                            if deferred_until.is_none() {
                                let now = crate::service::unix_now();
                                signed_history::record_policy_applied(
                                    txn, &w.id, &w.policy, &p, now,
                                )?;
                            }
                            mirror_policy_change(txn, &mut w, p, deferred_until)?;
                        }
                        save_wallet(txn, &w)?;
                    }
                }
                if let Some(refusal) = &satellite_refusal {
                    let now = crate::service::unix_now();
                    crate::last_violation::record(
                        txn,
                        r.wallet_id,
                        Some(r.id),
                        "satellite",
                        refusal,
                        now,
                    )?;
                }
                r.outcome = Some(outcome);
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The satellite holds large spend `r`: the request goes back to confirmed, to be asked
    /// again at the release; the owner is told once, when the hold begins, how to cancel.
    async fn held(
        &self,
        r: &RequestRecord,
        wallet: &WalletRecord,
        hold: Hold,
    ) -> Result<(), ServiceError> {
        if r.hold.is_none() {
            let email = notice::hold_email(
                &self.service.public_url(),
                wallet,
                r,
                &hold,
                self.service.network,
            );
            if let Err(e) = self.service.send_mail(email).await {
                tracing::warn!(request = %r.id, error = %e, "cannot email the hold");
            }
        }
        tracing::info!(request = %r.id, releases_at = hold.releases_at, "held on the satellite");
        self.service
            .take(r.id, Step::Held, move |_, r| {
                r.hold = Some(hold);
                r.link_msg = None;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// What the cosigner's `response` to `r` means, its signatures checked against the
    /// request's intake `checks`.
    pub(super) fn outcome_of(
        &self,
        r: &RequestRecord,
        checks: Option<&IntakeChecks>,
        response: Response,
    ) -> Outcome {
        let refused = |code: &str, reason: String| Outcome::Refused {
            code: code.to_owned(),
            reason,
        };
        let outcome = match (response, &r.action) {
            (Response::Sign(s), Action::Sign { psbt, .. }) => match s.outcome {
                SignOutcome::Signed { psbt: signed } => {
                    let merged = checks
                        .ok_or_else(|| "no intake checks".to_owned())
                        .and_then(|c| merge_psbt(&self.service.secp, c, psbt, &signed));
                    match merged {
                        Ok(o) => o,
                        Err(e) => refused("bad_answer", e),
                    }
                }
                SignOutcome::Refused(refusal) => refused(refusal.code(), refusal.to_string()),
            },
            (Response::SignCompact(s), Action::Sign { psbt, .. }) => match s.outcome {
                CompactOutcome::Signed(sigs) => {
                    let merged = checks
                        .ok_or_else(|| "no intake checks".to_owned())
                        .and_then(|c| merge_compact(&self.service.secp, c, psbt, &sigs.0));
                    match merged {
                        Ok(o) => o,
                        Err(e) => refused("bad_answer", e),
                    }
                }
                CompactOutcome::Refused(refusal) => refused(refusal.code(), refusal.to_string()),
            },
            (Response::WalletRegistered(o), Action::Register) => match o {
                RegisterOutcome::Registered { wallet_id } if wallet_id == r.wallet_id => {
                    Outcome::Done {
                        detail: "the satellite registered the wallet".into(),
                    }
                }
                RegisterOutcome::Registered { wallet_id } => refused(
                    "bad_answer",
                    format!(
                        "the satellite registered wallet {wallet_id}, not {}",
                        r.wallet_id
                    ),
                ),
                RegisterOutcome::Refused { reason } => refused("registration_refused", reason),
            },
            (Response::PolicyUpdated(o), Action::SetPolicy { .. }) => match o {
                PolicyOutcome::Changed(PolicyChange::Applied) => Outcome::Done {
                    detail: "the new limits apply now".into(),
                },
                PolicyOutcome::Changed(PolicyChange::Deferred { effective_at }) => Outcome::Done {
                    detail: format!(
                        "the new limits apply from {}",
                        notice::format_utc(effective_at)
                    ),
                },
                PolicyOutcome::Refused { reason } => refused("policy_refused", reason),
            },
            (Response::Error { reason }, _) => refused("cosigner_error", reason),
            (other, action) => refused(
                "bad_answer",
                format!(
                    "the satellite answered a {} request with {other:?}",
                    action.kind()
                ),
            ),
        };
        if let Outcome::Refused { code, reason } = &outcome {
            if code == "bad_answer" {
                self.service.counters.bad_answer();
                tracing::error!(request = %r.id, %reason, "the satellite's answer was refused");
            }
        }
        outcome
    }
}
