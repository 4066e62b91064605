//! Outbound: a confirmed request becomes a cosigner message in the link's persisted
//! outbox (refused on the ground first if a coin it spends was spent meanwhile).

use bitcoin::psbt::Psbt;

use satcosign_cosigner::air;
use satcosign_cosigner::decision::{Approval, SignRequest};
use satcosign_cosigner::protocol::{seal_envelope, RegisterWallet, Request, UpdatePolicy};
use satcosign_cosigner::spend::analyze;
use satcosign_link::store::LinkStore;

use crate::lifecycle::Step;
use crate::service::{unix_now, ServiceError};
use crate::state::{Action, Outcome, RequestRecord};
use crate::store::StoreError;

use super::Relay;

impl<S> Relay<S>
where
    S: LinkStore + Clone + Send + Sync + 'static,
{
    /// The cosigner message for a confirmed request.
    pub(super) async fn message_for(&self, r: &RequestRecord) -> Result<Request, ServiceError> {
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

    pub(super) async fn queue(&self, r: &RequestRecord) -> Result<(), ServiceError> {
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
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg, r.id);
        self.service
            .take(r.id, Step::Queued, move |_, r| {
                r.link_msg = Some(msg);
                Ok(())
            })
            .await?;
        Ok(())
    }
}
