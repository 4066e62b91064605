//! Approval: the emailed code, and what an owner does with a request before it flies.
//!
//! Decides whether a code confirms or rejects a request (single use, bound to its content,
//! voided after too many wrong attempts), and when another email may go (at most
//! `max_emails`, `resend_interval_secs` apart, for resends and resubmissions alike).

use tokio::sync::broadcast;

use satcosign_cosigner::decision::RequestId;

use crate::config::GateConfig;
use crate::gate::{self, approval_digest};
use crate::notice;
use crate::service::*;
use crate::state::{
    load_request, load_wallet, save_request, save_wallet, Action, Outcome, RequestRecord, State,
    TokenRecord, WalletRecord,
};
use crate::store::StoreError;

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
        let result = self
            .store
            .write(
                move |txn| -> Result<Result<(State, bool), ServiceError>, StoreError> {
                    let Some(mut r) = load_request(txn, &id)? else {
                        return Ok(Err(ServiceError::UnknownRequest(id)));
                    };
                    if r.state != State::AwaitingEmail {
                        return Ok(Err(ServiceError::WrongState {
                            id,
                            state: r.state.as_str(),
                            action: "confirming",
                            allowed: "awaiting_email",
                        }));
                    }
                    let token = hash.and_then(|h| r.tokens.iter().find(|t| t.hash == h).cloned());
                    let Some(token) = token else {
                        r.failed_attempts += 1;
                        r.updated_at = now;
                        if r.failed_attempts >= max_attempts {
                            r.state = State::Cancelled;
                            r.tokens.clear();
                            r.note = Some("voided after too many wrong codes".into());
                            r.version += 1;
                            save_request(txn, &r)?;
                            return Ok(Err(ServiceError::Voided(id)));
                        }
                        let left = max_attempts - r.failed_attempts;
                        save_request(txn, &r)?;
                        return Ok(Err(ServiceError::WrongCode {
                            id,
                            attempts_left: left,
                        }));
                    };
                    if token.expires_at <= now {
                        return Ok(Err(ServiceError::CodeExpired(id)));
                    }
                    if token.digest != approval_digest(&r.id, &r.action) {
                        return Ok(Err(ServiceError::ContentChanged(id)));
                    }
                    r.tokens.clear();
                    r.updated_at = now;
                    r.version += 1;
                    if !approve {
                        r.state = State::Cancelled;
                        r.note = Some("rejected by the user".into());
                    } else {
                        r.approved_at = Some(now);
                        r.state = State::Confirmed;
                        if let Action::UpdateEmail { new_email } = &r.action {
                            // Nothing for the cosigner: applied here, in the same transaction.
                            let Some(mut w) = load_wallet(txn, &r.wallet_id)? else {
                                return Ok(Err(ServiceError::UnknownWallet(r.wallet_id)));
                            };
                            let old = std::mem::replace(&mut w.email, new_email.clone());
                            save_wallet(txn, &w)?;
                            r.state = State::Signed;
                            r.outcome = Some(Outcome::Done {
                                detail: format!(
                                    "confirmations now go to {new_email} instead of {old}"
                                ),
                            });
                            r.note = Some(old);
                        }
                    }
                    save_request(txn, &r)?;
                    Ok(Ok((r.state, true)))
                },
            )
            .await
            .map_err(ServiceError::from)
            .and_then(|r| r);
        let (state, changed) = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::info!(request = %id, error = %e, "confirmation refused");
                if matches!(e, ServiceError::Voided(_)) {
                    // Committed: subscribers (and the relay) hear the request end.
                    self.transitioned(id, State::Cancelled).await;
                }
                return Err(e);
            }
        };
        if changed {
            self.transitioned(id, state).await;
        }
        Ok(state)
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
        if r.state != State::AwaitingEmail {
            return Err(ServiceError::WrongState {
                id,
                state: r.state.as_str(),
                action: "confirming",
                allowed: "awaiting_email",
            });
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
        let now = unix_now();
        let state = self
            .store
            .write(move |txn| {
                let Some(mut r) = load_request(txn, &id)? else {
                    return Ok(Err(ServiceError::UnknownRequest(id)));
                };
                if !matches!(r.state, State::Received | State::AwaitingEmail | State::Confirmed) {
                    return Ok(Err(ServiceError::WrongState {
                        id,
                        state: r.state.as_str(),
                        action: "cancelling",
                        allowed: "received, awaiting_email or confirmed (before it is queued for the satellite)",
                    }));
                }
                r.state = State::Cancelled;
                r.tokens.clear();
                r.note = Some("cancelled by the user".into());
                r.updated_at = now;
                r.version += 1;
                save_request(txn, &r)?;
                Ok(Ok(r.state))
            })
            .await??;
        self.transitioned(id, state).await;
        Ok(state)
    }

    /// `request.resend`: a new email with a new code, within the limits.
    pub async fn resend(&self, id: RequestId) -> Result<(), ServiceError> {
        let r = self.request(id).await?;
        if r.state != State::AwaitingEmail {
            return Err(ServiceError::WrongState {
                id,
                state: r.state.as_str(),
                action: "resending",
                allowed: "awaiting_email",
            });
        }
        may_email_again(&r, &self.gate, unix_now())?;
        // The relay (or another resend) is working on this request now: one email at a time.
        let Some(_claim) = self.claim(id) else {
            return Err(ServiceError::RateLimited {
                what: "emails for this request",
                retry_after: "a moment (an email for it is being sent)".into(),
            });
        };
        self.send_confirmation(&r).await
    }

    /// Emails a fresh code for `r` and records its hash (the email first, so a crash
    /// between the two costs a dead code, never a lost email).
    pub(crate) async fn send_confirmation(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        let wallet = self.wallet_record(r.wallet_id).await?;
        let token = gate::new_token();
        let now = unix_now();
        let expires_at = now + self.gate.token_ttl_secs;
        let email = notice::confirm_email(
            &self.public_url(),
            &wallet,
            r,
            &token.text,
            expires_at,
            self.network,
        );
        self.send_mail(email).await?;
        let record = TokenRecord {
            hash: token.hash,
            digest: approval_digest(&r.id, &r.action),
            expires_at,
        };
        let id = r.id;
        let expected_version = r.version;
        let state = self
            .store
            .write(move |txn| {
                let Some(mut cur) = load_request(txn, &id)? else {
                    return Ok(None);
                };
                if !matches!(cur.state, State::Received | State::AwaitingEmail)
                    || cur.version != expected_version
                {
                    return Ok(None);
                }
                cur.tokens.retain(|t| t.expires_at > now);
                cur.tokens.push(record);
                cur.emails_sent += 1;
                cur.last_email_at = now;
                cur.state = State::AwaitingEmail;
                cur.updated_at = now;
                cur.version += 1;
                save_request(txn, &cur)?;
                Ok(Some(cur.state))
            })
            .await?;
        if let Some(s) = state {
            self.transitioned(id, s).await;
        }
        Ok(())
    }

    /// Marks requests whose every code expired as expired.
    pub async fn expire_stale(&self) -> Result<usize, ServiceError> {
        let now = unix_now();
        let ids = self.active_requests().await?;
        let mut expired = Vec::new();
        for id in ids {
            let done = self
                .store
                .write(move |txn| {
                    let Some(mut r) = load_request(txn, &id)? else {
                        return Ok(false);
                    };
                    if r.state != State::AwaitingEmail
                        || r.tokens.iter().any(|t| t.expires_at > now)
                    {
                        return Ok(false);
                    }
                    r.state = State::Expired;
                    r.tokens.clear();
                    r.updated_at = now;
                    r.version += 1;
                    save_request(txn, &r)?;
                    Ok(true)
                })
                .await?;
            if done {
                expired.push(id);
            }
        }
        for id in &expired {
            self.transitioned(*id, State::Expired).await;
        }
        Ok(expired.len())
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
