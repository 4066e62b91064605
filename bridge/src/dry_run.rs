//! `request.check`: a PSBT tried against a wallet's policy without becoming a request. The
//! PSBT goes through the same checks as a submit (shape, previous transactions, the wallet's
//! descriptor, with the cosigner's own code), then through every rule of the policy: the
//! answer lists each rule it would break, with its figures, and what the confirmation
//! email would show. Nothing is stored, no email goes out, nothing is counted against the
//! wallet's hourly requests, and the satellite is not asked.
//!
//! The rules that read the wallet's history (velocity, the rolling limits, the change cap,
//! allowlist delays) are judged against the ground's copy of what the satellite signed and
//! applied ([`crate::signed_history`]); a violation that time will lift says from when
//! (`ready_at`). A submit does not refuse for these (the pass that carries it may be late
//! enough); the satellite's own ledger has the last word.

use serde_json::{json, Value};

use satcosign_cosigner::decision::{check_policy, policy_violations, RequestId};
use satcosign_cosigner::spend::analyze;
use satcosign_cosigner::wallet::WalletId;

use crate::intake::summarize;
use crate::service::{new_request, unix_now, Service, ServiceError};
use crate::state::{Action, State, WalletState};

impl Service {
    /// Evaluates `bytes` (a PSBT, base64 or hex) for wallet `wallet_id` against its policy
    /// in force; see the module's documentation.
    pub async fn check_psbt(
        &self,
        wallet_id: WalletId,
        bytes: &[u8],
    ) -> Result<Value, ServiceError> {
        let record = self.wallet_record(wallet_id).await?;
        if record.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: crate::service::wallet_state_name(record.state),
            });
        }
        let mut psbt = Self::parse_psbt(bytes)?;
        self.check_shape(&psbt)?;
        self.fill_previous(&mut psbt).await?;
        let wallet = self.wallet(&record)?;
        // A PSBT that is not this wallet's (or is malformed) is refused as a submit is.
        let spend = analyze(&self.secp, &wallet, &psbt).map_err(ServiceError::Refused)?;
        let now = unix_now();
        let history = self
            .satellite_history(wallet_id, &record.policy, now)
            .await?;
        let broken = policy_violations(&spend, &record.policy, history.view(), now, None);
        let refusal = check_policy(&spend, &record.policy, history.view(), now, None).err();
        let violations: Vec<_> = broken.iter().flat_map(|r| r.violations()).collect();
        let summary = summarize(&spend, self.network);
        let shown = new_request(
            RequestId([0; 16]),
            wallet_id,
            Action::Sign {
                psbt: Vec::new(),
                summary: summary.clone(),
                reply_to: Vec::new(),
                replaces: None,
            },
            State::Received,
            now,
        );
        // What the email would show, less what only a submitted request has (its id, its
        // code's expiry).
        let email: Vec<Value> = crate::notice::summary(&record, &shown, None, self.network)
            .into_iter()
            .filter(|(label, _)| label != "Request")
            .map(|(label, value)| json!([label, value]))
            .collect();
        Ok(json!({
            "wallet_id": wallet_id.to_string(),
            "txid": spend.txid.to_string(),
            "would_sign": refusal.is_none(),
            "refusal": refusal.as_ref().map(|r| json!({"code": r.code(), "reason": r.to_string()})),
            "violations": violations,
            "summary": summary,
            "email": {
                "headline": crate::notice::headline(&record, &shown),
                "rows": email,
            },
        }))
    }
}
