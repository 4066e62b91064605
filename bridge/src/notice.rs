//! What the user reads: the emails of the gate and the confirmation page.
//!
//! Both show the same summary, built once by [`summary`]: for a spend, each destination
//! with its amount, the total leaving the wallet, fee and fee rate, change, inputs; always
//! the wallet's label, the request id and when the code expires. Never keys, xpubs,
//! descriptors or the PSBT: an email is read on many devices and kept for years.

use crate::mail::Email;
use crate::state::{Action, Outcome, RequestRecord, State, WalletRecord};

/// Satoshis as BTC with eight decimals.
pub fn btc(sat: u64) -> String {
    format!("{}.{:08} BTC", sat / 100_000_000, sat % 100_000_000)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc(secs: u64) -> String {
    let (year, month, day, hour, minute, _) = civil(secs);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// Unix seconds as the UTC calendar: year, month, day, hour, minute, second.
pub fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Payments an email lists one by one; past them it gives their count and total.
pub const SHOWN_PAYMENTS: usize = 20;

/// A one-line description of what the request asks.
pub fn headline(wallet: &WalletRecord, req: &RequestRecord) -> String {
    match &req.action {
        Action::Register => format!("Register wallet \"{}\" with the satellite", wallet.label),
        Action::Sign { summary, .. } => format!(
            "Send {} from \"{}\"",
            btc(summary.leaving_sat.saturating_sub(summary.fee_sat)),
            wallet.label
        ),
        Action::UpdateEmail { .. } => {
            format!("Change the email address of wallet \"{}\"", wallet.label)
        }
        Action::SetPolicy { policy } if policy.locked && !wallet.policy.locked => {
            format!("Lock down wallet \"{}\": sign nothing", wallet.label)
        }
        Action::SetPolicy { policy } if !policy.locked && wallet.policy.locked => {
            format!("Unlock wallet \"{}\"", wallet.label)
        }
        Action::SetPolicy { policy } if policy.is_tightening_of(&wallet.policy) => {
            format!("Tighten the limits of wallet \"{}\"", wallet.label)
        }
        Action::SetPolicy { .. } => format!("Loosen the limits of wallet \"{}\"", wallet.label),
    }
}

/// The summary as label/value rows, shared by the emails and the page.
pub fn summary(
    wallet: &WalletRecord,
    req: &RequestRecord,
    expires_at: Option<u64>,
    network: bitcoin::Network,
) -> Vec<(String, String)> {
    let mut rows = vec![
        ("Wallet".to_owned(), wallet.label.clone()),
        ("Request".to_owned(), req.id.to_string()),
    ];
    match &req.action {
        Action::Register => {
            rows.push((
                "Action".into(),
                "register this wallet with the satellite cosigner".into(),
            ));
            rows.push((
                "Limit per transaction".into(),
                btc(wallet.policy.max_per_tx_sat),
            ));
            rows.push((
                format!("Limit per {} hours", wallet.policy.period_secs / 3600),
                btc(wallet.policy.max_per_period_sat),
            ));
        }
        Action::Sign { summary, .. } => {
            for (i, d) in summary.destinations.iter().take(SHOWN_PAYMENTS).enumerate() {
                rows.push((
                    format!("Pay #{}", i + 1),
                    format!("{} to {}", btc(d.amount_sat), d.address),
                ));
            }
            let rest = &summary.destinations[summary.destinations.len().min(SHOWN_PAYMENTS)..];
            if !rest.is_empty() {
                // A readable email: the rest in one line, with their total; every payment is
                // in request.status and the transaction itself.
                let total: u64 = rest.iter().map(|d| d.amount_sat).sum();
                rows.push((
                    format!(
                        "Pay #{} to #{}",
                        SHOWN_PAYMENTS + 1,
                        summary.destinations.len()
                    ),
                    format!("{} in all, to {} more addresses", btc(total), rest.len()),
                ));
            }
            rows.push((
                "Total leaving the wallet".into(),
                format!("{} (payments plus fee)", btc(summary.leaving_sat)),
            ));
            rows.push((
                "Fee".into(),
                format!(
                    "{} sat ({} sat/vB)",
                    summary.fee_sat, summary.fee_rate_sat_vb
                ),
            ));
            rows.push((
                "Back to the wallet (change and its own addresses)".into(),
                btc(summary.change_sat),
            ));
            rows.push(("Inputs spent".into(), summary.inputs.to_string()));
            rows.push(("Transaction id".into(), summary.txid.clone()));
        }
        Action::UpdateEmail { new_email } => {
            rows.push((
                "Action".into(),
                "change where this wallet's confirmations go".into(),
            ));
            rows.push(("Old address".into(), wallet.email.clone()));
            rows.push(("New address".into(), new_email.clone()));
        }
        Action::SetPolicy { policy } => {
            let action = if policy.is_tightening_of(&wallet.policy) {
                "tighten this wallet's limits (the satellite applies it at once)"
            } else {
                "loosen this wallet's limits (the satellite applies it after its delay)"
            };
            rows.push(("Action".into(), action.into()));
            rows.extend(policy_changes(&wallet.policy, policy, network));
        }
    }
    if let Some(at) = expires_at {
        rows.push(("Code expires".into(), format_utc(at)));
    }
    rows
}

/// Every rule of a policy change, old and new: a changed rule reads "new (now old)", an
/// unchanged one "value (unchanged)", changed rules first; an allowlist's entries are
/// listed as added and removed.
pub fn policy_changes(
    old: &satcosign_cosigner::policy::Policy,
    new: &satcosign_cosigner::policy::Policy,
    network: bitcoin::Network,
) -> Vec<(String, String)> {
    let mut changed = Vec::new();
    let mut same = Vec::new();
    for (name, before, after) in rule_values(old, new) {
        if before != after {
            changed.push((name.to_owned(), format!("{after} (now {before})")));
        } else {
            same.push((name.to_owned(), format!("{after} (unchanged)")));
        }
    }
    match (&old.allowlist, &new.allowlist) {
        (None, None) => same.push(("Allowlist".into(), "none: any address (unchanged)".into())),
        (Some(_), None) => changed.push((
            "Allowlist".into(),
            "removed: payments may go to any address".into(),
        )),
        (before, Some(after)) => {
            if before.is_none() {
                changed.push((
                    "Allowlist".into(),
                    format!("new: payments only to its {} entries", after.len()),
                ));
            }
            let before = before.as_deref().unwrap_or_default();
            for script in after.iter().filter(|s| !before.contains(s)) {
                changed.push(("Allowlist adds".into(), script_text(script, network)));
            }
            for script in before.iter().filter(|s| !after.contains(s)) {
                changed.push(("Allowlist removes".into(), script_text(script, network)));
            }
            if after.iter().all(|s| before.contains(s)) && before.len() == after.len() {
                same.push((
                    "Allowlist".into(),
                    format!("{} entries (unchanged)", after.len()),
                ));
            }
        }
    }
    if changed.is_empty() {
        changed.push(("Change".into(), "none: the policy is the same".into()));
    }
    changed.extend(same);
    changed
}

/// Each rule of the policy but the allowlist, as (name, old value, new value) in words.
fn rule_values(
    old: &satcosign_cosigner::policy::Policy,
    new: &satcosign_cosigner::policy::Policy,
) -> Vec<(&'static str, String, String)> {
    use satcosign_cosigner::policy::Policy;
    type Rule = (&'static str, fn(&Policy) -> String);
    let rules: [Rule; 13] = [
        ("Limit per transaction", |p| btc(p.max_per_tx_sat)),
        ("Limit per period", |p| btc(p.max_per_period_sat)),
        ("Period", |p| {
            format!("{} hours", p.period_secs as f64 / 3600.0)
        }),
        ("Highest fee", |p| format!("{} sat", p.max_fee_sat)),
        ("Highest fee rate", |p| {
            format!("{} sat/vB", p.max_fee_rate_sat_vb)
        }),
        ("Delay after approval", |p| {
            format!("{} s", p.min_approval_delay_secs)
        }),
        ("Time between signatures", |p| {
            format!("{} s", p.min_secs_between_signatures)
        }),
        ("Signatures per period", |p| {
            p.max_signatures_per_period
                .map_or("no limit".into(), |n| n.to_string())
        }),
        ("Change per period", |p| {
            p.max_change_per_period_sat.map_or("no limit".into(), btc)
        }),
        ("Delay for new allowlist entries", |p| {
            format!("{} s", p.allowlist_add_delay_secs)
        }),
        ("Hold spends over", |p| {
            p.hold_over_sat.map_or("no hold".into(), btc)
        }),
        ("Hold for", |p| format!("{} s", p.hold_secs)),
        ("Lockdown", |p| {
            if p.locked {
                "locked: nothing is signed".into()
            } else {
                "off".into()
            }
        }),
    ];
    rules
        .iter()
        .map(|(name, f)| (*name, f(old), f(new)))
        .collect()
}

/// An output script as people read it: its address on the bridge's network, else hex.
fn script_text(script: &[u8], network: bitcoin::Network) -> String {
    let script = bitcoin::Script::from_bytes(script);
    bitcoin::Address::from_script(script, network)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| hex::encode(script.as_bytes()))
}

/// What an unexpected email of this kind means, in words that are true for its action.
fn not_you(action: &Action) -> &'static str {
    match action {
        Action::Sign { .. } => {
            "If you did not ask for this, do not confirm: press Reject on the page, or simply \
             ignore this email (nothing happens without your confirmation). Someone who can \
             make this request holds one of your wallet's keys or its Electrum file: move your \
             funds with your two own keys and contact your operator."
        }
        Action::Register => {
            "If you did not register this wallet, ignore this email: someone gave your address, \
             and nothing happens without your confirmation."
        }
        Action::UpdateEmail { .. } | Action::SetPolicy { .. } => {
            "If you did not ask for this, do not confirm: press Reject on the page, or simply \
             ignore this email (nothing changes without your confirmation). Anyone who knows \
             this wallet's id can ask for a change; it does not mean your keys are exposed."
        }
    }
}

fn text_rows(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("  {k:width$}  {v}\n"))
        .collect()
}

fn html_rows(rows: &[(String, String)]) -> String {
    rows.iter()
        .map(|(k, v)| {
            format!(
                "<tr><th style=\"text-align:left;padding-right:1em\">{}</th><td>{}</td></tr>\n",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect()
}

/// The email that asks the user to confirm.
///
/// `when` says when a confirmed request would reach the satellite ("next pass over turin
/// at …, in about 41 minutes"), when that is known.
pub fn confirm_email(
    public_url: &str,
    wallet: &WalletRecord,
    req: &RequestRecord,
    token: &str,
    expires_at: u64,
    network: bitcoin::Network,
    when: Option<&str>,
) -> Email {
    let rows = summary(wallet, req, Some(expires_at), network);
    let when = when
        .map(|w| format!("Once confirmed, it goes to the satellite: {w}."))
        .unwrap_or_default();
    let link = format!("{public_url}/confirm/{}?t={}", req.id, token);
    let head = headline(wallet, req);
    // Always the wallet's current address: an email change is confirmed at the old one.
    let to = wallet.email.clone();
    let text = format!(
        "{head}?\n\n{}\nTo confirm, open this link and press Confirm:\n\n  {link}\n\n\
         or give this code to the satcosign plugin in Electrum:\n\n  {token}\n\n{when}\n\n{}\n",
        text_rows(&rows),
        not_you(&req.action)
    );
    let html = format!(
        "<html><body style=\"font-family:sans-serif\"><h2>{}?</h2>\n<table>\n{}</table>\n\
         <p><a href=\"{}\">Review and confirm</a> (the page asks once more before anything happens).</p>\n\
         <p>Or give this code to the satcosign plugin in Electrum: <code>{}</code></p>\n<p>{}</p>\n<p>{}</p></body></html>\n",
        html_escape(&head),
        html_rows(&rows),
        html_escape(&link),
        html_escape(token),
        html_escape(&when),
        html_escape(not_you(&req.action))
    );
    Email {
        to,
        subject: format!("Confirm: {head} (request {})", &req.id.to_string()[..8]),
        text,
        html,
    }
}

/// The email that tells the user how a request ended.
pub fn outcome_email(
    wallet: &WalletRecord,
    req: &RequestRecord,
    to: &str,
    network: bitcoin::Network,
) -> Email {
    let state = req.final_state.unwrap_or(req.state);
    let head = headline(wallet, req);
    let what = match (&req.outcome, state) {
        (Some(Outcome::Signed { tx, broadcast, .. }), _) => match (tx, broadcast) {
            (_, Some(Ok(txid))) => format!("The satellite cosigned and the transaction was broadcast: {txid}."),
            (_, Some(Err(e))) => format!("The satellite cosigned, but the broadcast failed ({e}); Electrum can broadcast it from your mailbox."),
            (Some(_), None) => "The satellite cosigned; the complete transaction is in your Electrum cosigner mailbox.".to_owned(),
            (None, None) => "The satellite cosigned; more signatures are needed before it can be broadcast.".to_owned(),
        },
        (Some(Outcome::Done { detail }), _) => format!("Done: {detail}."),
        (Some(Outcome::Refused { code, reason }), _) => {
            format!("Refused ({code}): {reason}. Nothing was signed.")
        }
        (None, State::Expired) => "Expired: it was not confirmed in time. Nothing was signed.".to_owned(),
        (None, _) => format!(
            "Cancelled{}. Nothing was signed.",
            req.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
        ),
    };
    let rows = summary(wallet, req, None, network);
    Email {
        to: to.to_owned(),
        subject: format!("{} (request {}): {}", head, &req.id.to_string()[..8], state.as_str()),
        text: format!("{head}\n\n{what}\n\n{}", text_rows(&rows)),
        html: format!(
            "<html><body style=\"font-family:sans-serif\"><h2>{}</h2><p>{}</p><table>{}</table></body></html>\n",
            html_escape(&head),
            html_escape(&what),
            html_rows(&rows)
        ),
    }
}

/// The page behind the emailed link: the summary and two POST buttons. A GET changes
/// nothing, so mail scanners that follow links confirm nothing.
pub fn confirm_page(
    wallet: &WalletRecord,
    req: &RequestRecord,
    token: &str,
    expires_at: Option<u64>,
    network: bitcoin::Network,
) -> String {
    let rows = summary(wallet, req, expires_at, network);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: confirm</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\n<h1>{}?</h1>\n<table>\n{}</table>\n\
         <form method=\"post\" action=\"/confirm/{}\">\n<input type=\"hidden\" name=\"t\" value=\"{}\">\n\
         <button id=\"confirm\" type=\"submit\" name=\"action\" value=\"confirm\">Confirm</button>\n\
         <button id=\"reject\" type=\"submit\" name=\"action\" value=\"reject\">Reject</button>\n</form>\n<p>{}</p></body></html>\n",
        html_escape(&headline(wallet, req)),
        html_rows(&rows),
        req.id,
        html_escape(token),
        html_escape(not_you(&req.action))
    )
}

/// A short page after a POST, or for an error.
pub fn message_page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: {}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\"><h1 id=\"result\">{}</h1><p>{}</p></body></html>\n",
        html_escape(title),
        html_escape(title),
        html_escape(message)
    )
}

/// The email that tells the owner a large spend is held on the satellite: when the hold
/// began and when it releases (the satellite's clock), and how to cancel it meanwhile.
pub fn hold_email(
    public_url: &str,
    wallet: &WalletRecord,
    req: &RequestRecord,
    hold: &satcosign_cosigner::decision::Hold,
    network: bitcoin::Network,
) -> Email {
    let head = headline(wallet, req);
    let link = format!("{public_url}/cancel/{}", req.id);
    let mut rows = summary(wallet, req, None, network);
    rows.push(("Held since".into(), format_utc(hold.started_at)));
    rows.push(("Signed from".into(), format_utc(hold.releases_at)));
    let what = format!(
        "The satellite holds this spend: it is over the wallet's hold limit. It will be signed \
         at the first pass after {}, unless you cancel it before.",
        format_utc(hold.releases_at)
    );
    let cancel = format!(
        "To cancel it, open this link and press Cancel:\n\n  {link}\n\nor cancel request {} \
         in the satcosign plugin in Electrum.",
        req.id
    );
    Email {
        to: wallet.email.clone(),
        subject: format!(
            "Held until {}: {head} (request {})",
            format_utc(hold.releases_at),
            &req.id.to_string()[..8]
        ),
        text: format!("{head}\n\n{what}\n\n{}\n{cancel}\n", text_rows(&rows)),
        html: format!(
            "<html><body style=\"font-family:sans-serif\"><h2>{}</h2><p>{}</p><table>{}</table>\
             <p><a href=\"{}\">Review and cancel</a> (the page asks once more), or cancel request \
             <code>{}</code> in the satcosign plugin in Electrum.</p></body></html>\n",
            html_escape(&head),
            html_escape(&what),
            html_rows(&rows),
            html_escape(&link),
            req.id
        ),
    }
}

/// The page behind a hold email's link: the summary, the hold's times and a POST button
/// that cancels. A GET changes nothing.
pub fn cancel_page(
    wallet: &WalletRecord,
    req: &RequestRecord,
    network: bitcoin::Network,
) -> String {
    let mut rows = summary(wallet, req, None, network);
    if let Some(hold) = &req.hold {
        rows.push(("Held since".into(), format_utc(hold.started_at)));
        rows.push(("Signed from".into(), format_utc(hold.releases_at)));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: cancel</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\n<h1>Cancel: {}?</h1>\n\
         <table>\n{}</table>\n<form method=\"post\" action=\"/cancel/{}\">\n\
         <button id=\"cancel\" type=\"submit\" name=\"action\" value=\"cancel\">Cancel this spend</button>\n\
         </form>\n</body></html>\n",
        html_escape(&headline(wallet, req)),
        html_rows(&rows),
        req.id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_amounts() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06 UTC");
        assert_eq!(btc(400_000), "0.00400000 BTC");
        assert_eq!(btc(2_100_000_000_000_000), "21000000.00000000 BTC");
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
