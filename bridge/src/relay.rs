//! Moves requests forward: emails the code, queues confirmed requests on the radio link,
//! merges the cosigner's answers, finalizes and broadcasts, and delivers the outcome.
//!
//! Each step is driven from the request's persisted state, so the same code resumes every
//! request after a restart. A step performs its side effect first and then commits the
//! transition (see [`crate::lifecycle`]); a request is claimed while a step runs so two tasks
//! never work on it at once. Answers from the link are acknowledged only after the
//! transition that records them is durable.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::psbt::Psbt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use satcosign_cosigner::air;
use satcosign_cosigner::decision::{Approval, RequestId, SignRequest};
use satcosign_cosigner::policy::PolicyChange;
use satcosign_cosigner::protocol::{
    open_envelope, seal_envelope, CompactOutcome, PolicyOutcome, RegisterOutcome, RegisterWallet,
    Request, Response, SignOutcome, UpdatePolicy,
};
use satcosign_cosigner::spend::analyze;
use satcosign_cosigner::wallet::Wallet;
use satcosign_link::link::LinkHandle;
use satcosign_link::store::LinkStore;

use crate::answer::{merge_compact, merge_psbt};
use crate::lifecycle::Step;
use crate::notice;
use crate::service::{unix_now, Service, ServiceError};
use crate::state::{
    load_wallet, mirror_policy_change, save_wallet, Action, Outcome, RequestRecord, State,
    WalletState,
};
use crate::store::StoreError;
use crate::watch::Watch;

/// How often every active request is looked at, besides the wake-ups.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// How often expired codes are swept.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);
/// Longest wait before a step that keeps failing (a mail server down) is tried again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// A request whose last step failed: not tried again before `until`.
struct Backoff {
    until: std::time::Instant,
    failures: u32,
}

/// The relay between the service and the link.
pub struct Relay<S: LinkStore + Clone> {
    service: Arc<Service>,
    link: Arc<LinkHandle<S>>,
    link_store: S,
    /// `SATCOSIGN_TEST_HOLD_AT=broadcast`: freeze after a broadcast and before its record,
    /// so a test can kill the bridge there.
    hold_after_broadcast: bool,
    /// Requests whose last step failed, waiting 1 s, 2 s, 4 s... (at most
    /// [`MAX_RETRY_WAIT`]) before the next try, so a dead mail server is not hammered.
    backoff: std::sync::Mutex<std::collections::HashMap<RequestId, Backoff>>,
}

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// A relay over `link`, whose store is `link_store`.
    pub fn new(service: Arc<Service>, link: Arc<LinkHandle<S>>, link_store: S) -> Arc<Relay<S>> {
        Arc::new(Relay {
            service,
            link,
            link_store,
            hold_after_broadcast: std::env::var("SATCOSIGN_TEST_HOLD_AT")
                .is_ok_and(|v| v == "broadcast"),
            backoff: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Runs until the link stops: one task receives answers, another drives requests.
    /// Every task it starts is its own (a [`JoinSet`]): aborting `run` stops them all.
    pub async fn run(self: Arc<Self>) {
        let mut tasks = JoinSet::new();
        let receiver = {
            let me = self.clone();
            tasks.spawn(async move { me.receive_loop().await })
        };
        let (work_tx, mut work_rx) = mpsc::unbounded_channel::<RequestId>();
        let mut events = self.service.events();
        tasks.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if work_tx.send(e.id).is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
        let mut scan = tokio::time::interval(SCAN_EVERY);
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        loop {
            // Reap the steps that ended.
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                Some(id) = work_rx.recv() => self.spawn_step(&mut tasks, id),
                _ = scan.tick() => {
                    match self.service.active_requests().await {
                        Ok(ids) => ids.into_iter().for_each(|id| self.spawn_step(&mut tasks, id)),
                        Err(e) => tracing::warn!(error = %e, "cannot list active requests"),
                    }
                }
                _ = expire.tick() => {
                    if let Err(e) = self.service.expire_stale().await {
                        tracing::warn!(error = %e, "cannot sweep expired codes");
                    }
                }
                _ = async { while !receiver.is_finished() { tokio::time::sleep(Duration::from_secs(1)).await } } => break,
            }
        }
        tasks.abort_all();
        tracing::warn!("relay stopped: the link has stopped");
    }

    fn spawn_step(self: &Arc<Self>, tasks: &mut JoinSet<()>, id: RequestId) {
        let now = std::time::Instant::now();
        let waiting = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|b| b.until > now);
        if waiting {
            return;
        }
        let me = self.clone();
        tasks.spawn(async move {
            let result = me.step(id).await;
            let mut backoff = me.backoff.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => {
                    backoff.remove(&id);
                }
                Err(e) => {
                    let b = backoff.entry(id).or_insert(Backoff {
                        until: std::time::Instant::now(),
                        failures: 0,
                    });
                    b.failures += 1;
                    let wait =
                        Duration::from_secs(1u64 << (b.failures - 1).min(16)).min(MAX_RETRY_WAIT);
                    b.until = std::time::Instant::now() + wait;
                    tracing::warn!(request = %id, error = %e, failures = b.failures,
                        retry_in_secs = wait.as_secs(), "request step failed; will retry");
                }
            }
        });
    }

    /// Does the next thing for request `id`, if anything is due and nobody else is on it.
    pub async fn step(&self, id: RequestId) -> Result<(), ServiceError> {
        let Some(_claim) = self.service.claim(id) else {
            return Ok(());
        };
        let r = self.service.request(id).await?;
        match r.state {
            State::Received => self.service.send_confirmation(&r).await,
            State::Confirmed => self.queue(&r).await,
            State::Queued => {
                let Some(msg) = r.link_msg else { return Ok(()) };
                let pending = self
                    .link_store
                    .outbox()
                    .map_err(|e| StoreError::Database(e.to_string()))?
                    .iter()
                    .any(|(m, _)| *m == msg);
                if !pending {
                    self.to_sent(id).await?;
                }
                Ok(())
            }
            State::Signed | State::Refused | State::Expired | State::Cancelled => {
                self.deliver(r).await
            }
            State::AwaitingEmail | State::Sent | State::Delivered => Ok(()),
        }
    }

    async fn to_sent(&self, id: RequestId) -> Result<(), ServiceError> {
        self.service
            .take(id, Step::Acknowledged, |_, _| Ok(()))
            .await?;
        Ok(())
    }

    /// The cosigner message for a confirmed request.
    async fn message_for(&self, r: &RequestRecord) -> Result<Request, ServiceError> {
        let wallet = self.service.wallet_record(r.wallet_id).await?;
        let approved_at = r.approved_at.unwrap_or_else(unix_now);
        Ok(match &r.action {
            Action::Register => Request::RegisterWallet(RegisterWallet {
                descriptors: wallet.descriptors.clone(),
                policy: wallet.policy.clone(),
                key_index: wallet.key_index,
            }),
            Action::SetPolicy { policy } => Request::UpdatePolicy(UpdatePolicy {
                wallet_id: r.wallet_id,
                policy: policy.clone(),
            }),
            Action::Sign { psbt, replaces, .. } => {
                let parsed =
                    Psbt::deserialize(psbt).map_err(|e| ServiceError::BadPsbt(e.to_string()))?;
                let checked = self.service.wallet(&wallet)?;
                let spend = analyze(&self.service.secp, &checked, &parsed)
                    .map_err(ServiceError::Refused)?;
                // The compact form when it can carry the PSBT (it nearly always can).
                match air::compact(&checked, &parsed, &spend, r.id, approved_at, *replaces) {
                    Some(c) => Request::SignCompact(c),
                    None => Request::Sign(SignRequest {
                        request_id: r.id,
                        wallet_id: r.wallet_id,
                        psbt: psbt.clone(),
                        approval: Approval {
                            request_id: r.id,
                            txid: parsed.unsigned_tx.compute_txid(),
                            approved_at,
                        },
                        replaces: *replaces,
                    }),
                }
            }
            Action::UpdateEmail { .. } => {
                return Err(ServiceError::Invalid {
                    field: "action",
                    reason: "an email change never goes to the cosigner".into(),
                })
            }
        })
    }

    async fn queue(&self, r: &RequestRecord) -> Result<(), ServiceError> {
        // Hours may pass between the email and the confirmation: a coin spent meanwhile is
        // refused here rather than spend a pass on a transaction that cannot confirm.
        if let Action::Sign { psbt, replaces, .. } = &r.action {
            let parsed =
                Psbt::deserialize(psbt).map_err(|e| ServiceError::BadPsbt(e.to_string()))?;
            if let Err(e @ ServiceError::InputSpent { .. }) =
                self.service.check_unspent(&parsed, *replaces).await
            {
                let outcome = Outcome::Refused {
                    code: "input_spent".into(),
                    reason: e.to_string(),
                };
                tracing::info!(request = %r.id, reason = %e, "refused before the link");
                self.service
                    .take(r.id, Step::RefusedOnGround, move |_, r| {
                        r.outcome = Some(outcome);
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
        }
        let message = self.message_for(r).await?;
        let bytes = seal_envelope(&r.id, &message.encode());
        // Into the link's persisted outbox first; a crash before the transition below sends
        // it again on restart, and the cosigner answers a duplicate from its records.
        let msg = self
            .link
            .send(bytes)
            .await
            .map_err(|e| StoreError::Database(format!("link: {e}")))?;
        self.service
            .take(r.id, Step::Queued, move |_, r| {
                r.link_msg = Some(msg);
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn receive_loop(&self) {
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
    async fn on_answer(&self, bytes: &[u8]) -> Result<(), ServiceError> {
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
        let outcome = self.outcome_of(&r, &wallet, response);
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
                if wallet_change.is_some() || new_policy.is_some() {
                    if let Some(mut w) = load_wallet(txn, &r.wallet_id)? {
                        if let Some((s, why)) = wallet_change {
                            w.state = s;
                            w.refusal = why;
                        }
                        if let Some((p, deferred_until)) = new_policy {
                            mirror_policy_change(txn, &mut w, p, deferred_until)?;
                        }
                        save_wallet(txn, &w)?;
                    }
                }
                r.outcome = Some(outcome);
                Ok(())
            })
            .await?;
        Ok(())
    }

    fn outcome_of(&self, r: &RequestRecord, wallet: &Wallet, response: Response) -> Outcome {
        let refused = |code: &str, reason: String| Outcome::Refused {
            code: code.to_owned(),
            reason,
        };
        let outcome = match (response, &r.action) {
            (Response::Sign(s), Action::Sign { psbt, .. }) => match s.outcome {
                SignOutcome::Signed { psbt: signed } => {
                    match merge_psbt(&self.service.secp, wallet, psbt, &signed) {
                        Ok(o) => o,
                        Err(e) => refused("bad_answer", e),
                    }
                }
                SignOutcome::Refused(refusal) => refused(refusal.code(), refusal.to_string()),
            },
            (Response::SignCompact(s), Action::Sign { psbt, .. }) => match s.outcome {
                CompactOutcome::Signed(sigs) => {
                    match merge_compact(&self.service.secp, wallet, psbt, &sigs.0) {
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

    async fn deliver(&self, r: RequestRecord) -> Result<(), ServiceError> {
        let service = &self.service;
        let wallet = service.wallet_record(r.wallet_id).await?;
        let mut r = r;
        if let (
            Action::Sign { .. },
            Some(Outcome::Signed {
                tx: Some(tx),
                broadcast: None,
                ..
            }),
            Some(upstream),
        ) = (&r.action, &r.outcome, &service.upstream)
        {
            let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(tx)
                .map_err(|e| ServiceError::BadPsbt(e.to_string()))?;
            let txid = tx.compute_txid();
            // The script the watch looks the transaction up by: the first input's, one of
            // the user's own (every input carries its previous transaction by now).
            let script = match &r.action {
                Action::Sign { psbt, .. } => Psbt::deserialize(psbt).ok().and_then(|p| {
                    let prev = p.inputs.first()?.non_witness_utxo.as_ref()?;
                    let vout = p.unsigned_tx.input.first()?.previous_output.vout;
                    Some(prev.output.get(vout as usize)?.script_pubkey.clone())
                }),
                _ => None,
            };
            let up = upstream.clone();
            let result = tokio::task::spawn_blocking(move || {
                // A restart between the broadcast and its record finds it already there.
                if up.transaction(&txid).is_ok() {
                    tracing::info!(%txid, "the upstream server already has the transaction");
                    return Ok(txid);
                }
                up.broadcast(&tx)
            })
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?
            .map(|txid| txid.to_string())
            .map_err(|e| e.to_string());
            tracing::info!(request = %r.id, result = ?result, "broadcast");
            service.counters.broadcast(result.is_ok());
            if self.hold_after_broadcast {
                eprintln!("test-hold: broadcast {}", r.id);
                std::future::pending::<()>().await;
            }
            let watch = match (&result, script) {
                (Ok(_), Some(script)) => Some(Watch::new(txid, script, unix_now())),
                _ => None,
            };
            if let Some(saved) = service
                .take(r.id, Step::Broadcast, move |txn, r| {
                    if let Some(Outcome::Signed { broadcast, .. }) = &mut r.outcome {
                        *broadcast = Some(result);
                    }
                    if let Some(w) = &watch {
                        crate::watch::start_in(txn, r.id, w)?;
                    }
                    Ok(())
                })
                .await?
            {
                r = saved;
            }
        }
        if let (Action::Sign { reply_to, .. }, Some(Outcome::Signed { psbt, tx, .. })) =
            (&r.action, &r.outcome)
        {
            // As a cosigner in Electrum's pool sends it: the complete transaction when there
            // is one (Electrum reads raw transactions and PSBTs alike), else the PSBT.
            let payload = tx.as_ref().unwrap_or(psbt);
            for (keyhash, key) in Service::reply_keys(reply_to) {
                let message = crate::ecies::encrypt(&key, payload);
                service
                    .mailbox
                    .put(keyhash, message)
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?;
            }
        }
        let mut recipients = vec![wallet.email.clone()];
        if let (Action::UpdateEmail { new_email }, Some(old)) = (&r.action, &r.note) {
            recipients = vec![old.clone(), new_email.clone()];
        }
        for to in recipients {
            service
                .send_mail(notice::outcome_email(&wallet, &r, &to, service.network))
                .await?;
        }
        // A request that came by Nostr is answered there too; the answer is stored in the
        // transaction that marks the request delivered, so it goes out exactly once.
        let nostr = service.nostr.get().cloned();
        let reply = match &nostr {
            Some(n) => n.reply_for(&r).await?,
            None => None,
        };
        let stored_reply = reply.clone();
        let prior = r.state;
        let unregistered = matches!(r.action, Action::Register) && prior != State::Signed;
        if service
            .take(r.id, Step::Delivered, move |txn, r| {
                if let Some(reply) = &stored_reply {
                    crate::nostr_relay::NostrRelay::store_in(txn, reply)?;
                }
                if unregistered {
                    if let Some(mut w) = load_wallet(txn, &r.wallet_id)? {
                        if w.state == WalletState::Pending {
                            w.state = WalletState::Refused;
                            w.refusal = Some(format!("registration {}", prior.as_str()));
                            save_wallet(txn, &w)?;
                        }
                    }
                }
                r.final_state = Some(prior);
                Ok(())
            })
            .await?
            .is_some()
        {
            if let (Some(n), Some(reply)) = (nostr, reply) {
                n.published(reply);
            }
        }
        Ok(())
    }
}
