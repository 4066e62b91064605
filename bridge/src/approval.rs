//! Approval: the emailed code, and what an owner does with a request before it flies.
//!
//! Decides whether a code confirms or rejects a request (single use, bound to its content,
//! voided after too many wrong attempts), and when another email may go (at most
//! `max_emails`, `resend_interval_secs` apart, for resends and resubmissions alike).

use tokio::sync::broadcast;

use satcosign_cosigner::decision::RequestId;

use crate::config::GateConfig;
use crate::gate::{self, approval_digest};
use crate::lifecycle::{next, refusal, Step};
use crate::notice;
use crate::service::*;
use crate::state::{
    load_wallet, save_wallet, Action, Outcome, RequestRecord, State, TokenRecord, WalletRecord,
};

impl Service {
    /// `request.confirm`, and Confirm on the page: checks the code and consumes it in the
    /// transaction that advances the request.
    pub async fn confirm(
        &self,
        id: RequestId,
        code: &str,
        approve: bool,
    ) -> Result<State, ServiceError> {
        // The email goes out just before its code is recorded: a user (or script) quick
        // enough to answer in between waits for the record instead of being refused.
        let events = self.events();
        match self.confirm_once(id, code, approve).await {
            Err(ServiceError::WrongState {
                state: "received", ..
            }) => {
                Self::email_recorded(id, events).await;
                self.confirm_once(id, code, approve).await
            }
            other => other,
        }
    }

    /// Waits (up to 10 s) until request `id` leaves `received`, i.e. until the code of the
    /// email that just went out is recorded. `events` is subscribed before the first try.
    pub(crate) async fn email_recorded(id: RequestId, mut events: broadcast::Receiver<Event>) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Ok(e) = events.recv().await {
                if e.id == id && e.state != State::Received {
                    return;
                }
            }
        })
        .await;
    }

    pub(crate) async fn confirm_once(
        &self,
        id: RequestId,
        code: &str,
        approve: bool,
    ) -> Result<State, ServiceError> {
        let hash = gate::hash_code(code);
        let max_attempts = self.gate.max_attempts;
        let now = unix_now();
        // The code decides the step; the table decides whether the request may take it.
        let decide = move |r: &RequestRecord| -> Result<Option<Step>, ServiceError> {
            if next(r.state, Step::Confirmed).is_none() {
                return Err(refusal(r.id, r.state, Step::Confirmed));
            }
            let Some(token) = hash.and_then(|h| r.tokens.iter().find(|t| t.hash == h)) else {
                return Ok(Some(if r.failed_attempts + 1 >= max_attempts {
                    Step::Voided
                } else {
                    Step::WrongCode
                }));
            };
            if token.expires_at <= now {
                return Err(ServiceError::CodeExpired(r.id));
            }
            if token.digest != approval_digest(&r.id, &r.action) {
                return Err(ServiceError::ContentChanged(r.id));
            }
            Ok(Some(match (approve, &r.action) {
                (false, _) => Step::Rejected,
                (true, Action::UpdateEmail { .. }) => Step::AppliedHere,
                (true, _) => Step::Confirmed,
            }))
        };
        let change = move |txn: &crate::store::WriteTransaction,
                           r: &mut RequestRecord,
                           step: Step| {
            match step {
                Step::WrongCode => r.failed_attempts += 1,
                Step::Voided => {
                    r.failed_attempts += 1;
                    r.tokens.clear();
                    r.note = Some("voided after too many wrong codes".into());
                }
                Step::Rejected => {
                    r.tokens.clear();
                    r.note = Some("rejected by the user".into());
                }
                Step::Confirmed => {
                    r.tokens.clear();
                    r.approved_at = Some(now);
                }
                Step::AppliedHere => {
                    r.tokens.clear();
                    r.approved_at = Some(now);
                    // Nothing for the cosigner: applied here, in the same transaction.
                    if let (Action::UpdateEmail { new_email }, Some(mut w)) =
                        (&r.action, load_wallet(txn, &r.wallet_id)?)
                    {
                        let old = std::mem::replace(&mut w.email, new_email.clone());
                        save_wallet(txn, &w)?;
                        r.outcome = Some(Outcome::Done {
                            detail: format!("confirmations now go to {new_email} instead of {old}"),
                        });
                        r.note = Some(old);
                    }
                }
                _ => {}
            }
            Ok(())
        };
        let moved = match self.advance(id, decide, change).await {
            Ok(Some(moved)) => moved,
            Ok(None) => return Err(ServiceError::UnknownRequest(id)),
            Err(e) => {
                tracing::info!(request = %id, error = %e, "confirmation refused");
                return Err(e);
            }
        };
        match moved.step {
            Step::WrongCode => Err(ServiceError::WrongCode {
                id,
                attempts_left: max_attempts.saturating_sub(moved.record.failed_attempts),
            }),
            Step::Voided => Err(ServiceError::Voided(id)),
            _ => Ok(moved.record.state),
        }
    }

    /// What the confirmation page shows for `id` and `code`: read-only (a GET must change
    /// nothing, not even the count of wrong attempts).
    pub async fn page_view(
        &self,
        id: RequestId,
        code: &str,
    ) -> Result<(WalletRecord, RequestRecord, u64), ServiceError> {
        // As for `confirm`: a link opened before its code is recorded waits for the record.
        let events = self.events();
        match self.page_view_once(id, code).await {
            Err(ServiceError::WrongState {
                state: "received", ..
            }) => {
                Self::email_recorded(id, events).await;
                self.page_view_once(id, code).await
            }
            other => other,
        }
    }

    pub(crate) async fn page_view_once(
        &self,
        id: RequestId,
        code: &str,
    ) -> Result<(WalletRecord, RequestRecord, u64), ServiceError> {
        let r = self.request(id).await?;
        if next(r.state, Step::Confirmed).is_none() {
            return Err(refusal(id, r.state, Step::Confirmed));
        }
        let hash = gate::hash_code(code);
        let Some(token) = hash.and_then(|h| r.tokens.iter().find(|t| t.hash == h)) else {
            return Err(ServiceError::WrongCode {
                id,
                attempts_left: self.gate.max_attempts.saturating_sub(r.failed_attempts),
            });
        };
        if token.expires_at <= unix_now() {
            return Err(ServiceError::CodeExpired(id));
        }
        if token.digest != approval_digest(&r.id, &r.action) {
            return Err(ServiceError::ContentChanged(id));
        }
        let expires_at = token.expires_at;
        let wallet = self.wallet_record(r.wallet_id).await?;
        Ok((wallet, r, expires_at))
    }

    /// `request.cancel`: possible until the request is handed to the link.
    pub async fn cancel(&self, id: RequestId) -> Result<State, ServiceError> {
        let moved = self
            .advance(
                id,
                |_| Ok(Some(Step::Cancelled)),
                |_, r, _| {
                    r.tokens.clear();
                    r.note = Some("cancelled by the user".into());
                    Ok(())
                },
            )
            .await?;
        Ok(moved.map_or(State::Cancelled, |m| m.record.state))
    }

    /// `request.resend`: a new email with a new code, within the limits.
    pub async fn resend(&self, id: RequestId) -> Result<(), ServiceError> {
        let r = self.request(id).await?;
        if next(r.state, Step::Emailed).is_none() {
            return Err(refusal(id, r.state, Step::Emailed));
        }
        may_email_again(&r, &self.gate, unix_now())?;
        // The relay (or another resend) is working on this request now: one email at a time.
        let Some(_claim) = self.claim(id) else {
            return Err(ServiceError::RateLimited {
                what: "emails for this request",
                retry_after: "a moment (an email for it is being sent)".into(),
            });
        };
        // Read again under the claim: a resend that raced this one has counted its email.
        let r = self.request(id).await?;
        may_email_again(&r, &self.gate, unix_now())?;
        self.send_confirmation(&r).await
    }

    /// Emails a fresh code for `r` and records its hash (the email first, so a crash
    /// between the two costs a dead code, never a lost email).
    pub(crate) async fn send_confirmation(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        let wallet = self.wallet_record(r.wallet_id).await?;
        let token = gate::new_token();
        let now = unix_now();
        let expires_at = now + self.gate.token_ttl_secs;
        let when = self
            .expected(r, State::Confirmed)
            .map(|e| e.sentence(std::time::SystemTime::now()));
        let email = notice::confirm_email(
            &self.public_url(),
            &wallet,
            r,
            &token.text,
            expires_at,
            self.network,
            when.as_deref(),
        );
        self.send_mail(email).await?;
        let record = TokenRecord {
            hash: token.hash,
            digest: approval_digest(&r.id, &r.action),
            expires_at,
        };
        let id = r.id;
        let expected_version = r.version;
        let recorded = self
            .advance(
                id,
                move |cur| {
                    // Changed since this email was made (resubmitted, cancelled): its code
                    // approves nothing, and is not recorded.
                    if cur.version != expected_version {
                        return Err(ServiceError::ContentChanged(id));
                    }
                    Ok(Some(Step::Emailed))
                },
                move |_, cur, _| {
                    cur.tokens.retain(|t| t.expires_at > now);
                    cur.tokens.push(record);
                    cur.emails_sent += 1;
                    cur.last_email_at = now;
                    Ok(())
                },
            )
            .await;
        match recorded {
            Ok(_) | Err(ServiceError::ContentChanged(_) | ServiceError::WrongState { .. }) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Marks requests whose every code expired as expired.
    pub async fn expire_stale(&self) -> Result<usize, ServiceError> {
        let now = unix_now();
        let mut expired = 0;
        for id in self.active_requests().await? {
            let due = move |r: &RequestRecord| {
                let due =
                    r.state == State::AwaitingEmail && r.tokens.iter().all(|t| t.expires_at <= now);
                Ok(due.then_some(Step::Expired))
            };
            let moved = self
                .advance(id, due, |_, r, _| {
                    r.tokens.clear();
                    Ok(())
                })
                .await?;
            expired += usize::from(moved.is_some());
        }
        Ok(expired)
    }
}

/// Whether request `r` may be sent another email now: at most `max_emails` in all, and
/// `resend_interval_secs` apart. The one rule for resends and resubmissions.
pub(crate) fn may_email_again(
    r: &RequestRecord,
    gate: &GateConfig,
    now: u64,
) -> Result<(), ServiceError> {
    if r.emails_sent >= gate.max_emails {
        return Err(ServiceError::RateLimited {
            what: "emails for this request",
            retry_after: "never (cancel it and make a new request)".into(),
        });
    }
    let next = r.last_email_at + gate.resend_interval_secs;
    if r.emails_sent > 0 && now < next {
        return Err(ServiceError::RateLimited {
            what: "emails for this request",
            retry_after: notice::format_utc(next),
        });
    }
    Ok(())
}
