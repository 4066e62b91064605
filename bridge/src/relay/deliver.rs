//! Delivery: a signed request is finalized and broadcast, and every outcome goes back
//! where it came from (the cosigner pool's mailbox, Nostr, the owner's email) before the
//! request is marked delivered, in the transaction that stores the Nostr answer.

use bitcoin::psbt::Psbt;

use satcosign_link::store::LinkStore;

use crate::lifecycle::Step;
use crate::notice;
use crate::service::{unix_now, Service, ServiceError};
use crate::state::{load_wallet, save_wallet, Action, Outcome, RequestRecord, State, WalletState};
use crate::store::StoreError;
use crate::watch::Watch;

use super::Relay;

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// Finishes request `r`: broadcasts a complete transaction (once; the result is
    /// recorded), hands the outcome back where the request came from, emails the owner,
    /// and marks it delivered.
    pub(super) async fn deliver(&self, r: RequestRecord) -> Result<(), ServiceError> {
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
                    crate::nostr_keep::keep_in(txn, r.id, reply)?;
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
                crate::state::forget_checks(txn, &r.id)?;
                Ok(())
            })
            .await?
            .is_some()
        {
            if let (Some(n), Some(reply)) = (nostr, reply) {
                n.published(r.id, reply);
            }
        }
        Ok(())
    }
}
