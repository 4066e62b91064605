//! Wallets and requests as clients see them: `wallet.status`, `request.status` and what a
//! request's subscribers are sent, email addresses masked (a status is not a directory of
//! addresses), with the expected time of a request waiting for the satellite.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::state::{Action, Outcome, RequestRecord, WalletRecord, WalletState};
use crate::watch::Watch;

/// Hides most of an email address (a wallet's status is not a directory of addresses).
fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((user, domain)) => {
            let first: String = user.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// A wallet as `wallet.status` shows it.
pub fn wallet_json(w: &WalletRecord) -> Value {
    json!({
        "wallet_id": w.id.to_string(),
        "label": w.label,
        "state": match w.state {
            WalletState::Pending => "pending",
            WalletState::Active => "active",
            WalletState::Refused => "refused",
        },
        "email": mask_email(&w.email),
        "policy": serde_json::to_value(&w.policy).unwrap_or(Value::Null),
        "refusal": w.refusal,
    })
}

/// A request as `request.status` and its notifications show it, with where its broadcast
/// transaction stands on the chain when it is watched.
pub fn request_json(r: &RequestRecord, watch: Option<&Watch>) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let outcome = match &r.outcome {
        None => Value::Null,
        Some(Outcome::Signed {
            psbt,
            tx,
            broadcast,
        }) => json!({
            "signed": {
                "psbt": b64(psbt),
                "tx": tx.as_ref().map(hex::encode),
                "broadcast": match broadcast {
                    None => Value::Null,
                    Some(Ok(txid)) => json!({"txid": txid, "chain": watch.map(Watch::json)}),
                    Some(Err(e)) => json!({"error": e}),
                },
            }
        }),
        Some(Outcome::Done { detail }) => json!({"done": detail}),
        Some(Outcome::Refused { code, reason }) => {
            json!({"refused": {"code": code, "reason": reason}})
        }
    };
    let summary = match &r.action {
        Action::Sign { summary, .. } => serde_json::to_value(summary).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    // An email change names both addresses in its record (the old one is told after it);
    // anyone with the request id sees them masked, as `wallet.status` shows them.
    let addresses: Vec<&str> = match &r.action {
        Action::UpdateEmail { new_email } => std::iter::once(new_email.as_str())
            .chain(r.note.as_deref())
            .collect(),
        _ => Vec::new(),
    };
    let masked = |text: &str| {
        addresses
            .iter()
            .filter(|a| !a.is_empty())
            .fold(text.to_owned(), |t, a| t.replace(a, &mask_email(a)))
    };
    let outcome = match (outcome, &r.outcome) {
        (_, Some(Outcome::Done { detail })) if !addresses.is_empty() => {
            json!({"done": masked(detail)})
        }
        (o, _) => o,
    };
    json!({
        "request_id": r.id.to_string(),
        "wallet_id": r.wallet_id.to_string(),
        "kind": r.action.kind(),
        "state": r.state.as_str(),
        "final_state": r.final_state.map(|s| s.as_str()),
        "summary": summary,
        "outcome": outcome,
        "note": r.note.as_deref().map(masked),
        "emails_sent": r.emails_sent,
        "failed_attempts": r.failed_attempts,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "approved_at": r.approved_at,
        "hold": r.hold.map(|h| json!({"started_at": h.started_at, "releases_at": h.releases_at})),
    })
}

/// [`request_json`] with the time the request is expected to reach the satellite
/// (`expected`, null unless it is confirmed and waiting for a pass).
pub fn status_json(
    service: &crate::service::Service,
    r: &RequestRecord,
    watch: Option<&Watch>,
) -> Value {
    let mut json = request_json(r, watch);
    json["expected"] = service
        .expected(r, r.state)
        .map_or(Value::Null, |e| e.to_json(std::time::SystemTime::now()));
    json
}
