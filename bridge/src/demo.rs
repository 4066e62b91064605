//! `satcosign-bridge demo`: one whole request through the embedded system, step by step.
//!
//! A 2-of-3 wallet (two demo user keys and the in-process satellite's key) is registered and
//! confirmed from its email; a PSBT signed by one user key is submitted, its email read, the
//! code confirmed; the request waits for the next pass, the satellite signs, the bridge
//! finalizes, and the final transaction is checked by miniscript's interpreter. Every step
//! is written to the given output, with a progress line while waiting for the pass.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bitcoin::psbt::Psbt;

use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::testkit::TestWallet;

use crate::dev::{DevSystem, Sky};
use crate::service::ServiceError;
use crate::state::{Outcome, State};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A service call failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The email never arrived or had no code.
    #[error("no confirmation email for request {0} in {1}")]
    NoEmail(RequestId, String),
    /// Waited too long.
    #[error("request {0} did not finish within {1:?}")]
    Timeout(RequestId, Duration),
    /// The outcome is not what a signed request gives.
    #[error("request {0} ended {1}")]
    Unexpected(RequestId, String),
    /// Output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes quoted-printable text (soft line breaks and `=XX`), enough to read our emails.
pub fn decode_quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The confirmation code an email gives for request `id` (from its link), if any.
pub fn find_code(raw_email: &str, id: &RequestId) -> Option<String> {
    let text = decode_quoted_printable(raw_email);
    let marker = format!("/confirm/{id}?t=");
    let start = text.find(&marker)? + marker.len();
    let code: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!code.is_empty()).then_some(code)
}

/// Reads the newest code for `id` from the `.eml` files in `dir`.
pub fn code_from_mail_dir(dir: &std::path::Path, id: &RequestId) -> Option<String> {
    let mut found = mailed_codes(dir, id);
    found.sort();
    found.pop().map(|(_, c)| c)
}

/// Every code emailed for request `id` into `dir`, one per email (a code sent twice
/// appears twice).
pub fn codes_in_mail_dir(dir: &std::path::Path, id: &RequestId) -> Vec<String> {
    mailed_codes(dir, id).into_iter().map(|(_, c)| c).collect()
}

fn mailed_codes(dir: &std::path::Path, id: &RequestId) -> Vec<(SystemTime, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let code = find_code(&text, id)?;
            Some((e.metadata().ok()?.modified().ok()?, code))
        })
        .collect()
}

async fn wait_for_code(sys: &DevSystem, id: &RequestId) -> Result<String, DemoError> {
    for _ in 0..100 {
        if let Some(c) = code_from_mail_dir(&sys.mail_dir, id) {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DemoError::NoEmail(*id, sys.mail_dir.display().to_string()))
}

/// What the link is doing, in words, with a bar of the oldest queued message's fragments.
fn link_line(sys: &DevSystem) -> String {
    let Some(status) = sys.bridge.link_status.as_ref().map(|f| f()) else {
        return String::new();
    };
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::now())
            .map(|d| d.as_secs_f64().ceil() as u64)
            .unwrap_or(0)
    };
    let sky = match (status.in_view, status.current_pass, status.next_pass) {
        (true, Some(p), _) => format!("in view, {:>3} s left", secs(p.end)),
        (true, None, _) => "in view".to_owned(),
        (false, _, Some(p)) => format!("next pass in {:>3} s", secs(p.start)),
        (false, _, None) => "out of view".to_owned(),
    };
    let head = match status.head {
        Some(h) => {
            let width = 12;
            let done = h.fragments_sent * width / h.fragments.max(1);
            format!(
                " [{}{}] {}/{} fragments, {}",
                "#".repeat(done),
                " ".repeat(width - done),
                h.fragments_sent,
                h.fragments,
                h.state.as_str().replace('_', " ")
            )
        }
        None => String::new(),
    };
    format!("{sky}{head}")
}

async fn wait_delivered(
    sys: &DevSystem,
    sky: &Sky,
    id: RequestId,
    out: &mut (dyn Write + Send),
) -> Result<crate::state::RequestRecord, DemoError> {
    let service = sys
        .bridge
        .service
        .as_ref()
        .ok_or_else(|| DemoError::Unexpected(id, "no service".into()))?;
    // A safety net, not a schedule: ten passes carry any request the link can carry.
    let limit = sky.first_pass_in + sky.pass_period * 10 + Duration::from_secs(60);
    let t0 = Instant::now();
    let mut last = None;
    loop {
        let r = service.request(id).await?;
        if r.state == State::Delivered {
            writeln!(
                out,
                "\r  [{:>5.1} s] delivered{:60}",
                t0.elapsed().as_secs_f64(),
                ""
            )?;
            return Ok(r);
        }
        if t0.elapsed() > limit {
            return Err(DemoError::Timeout(id, limit));
        }
        if last != Some(r.state) {
            if last.is_some() {
                writeln!(out)?;
            }
            last = Some(r.state);
        }
        write!(
            out,
            "\r  [{:>5.1} s] {:<10} {:<70}",
            t0.elapsed().as_secs_f64(),
            r.state.as_str(),
            link_line(sys)
        )?;
        out.flush()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the demo against a started embedded system.
pub async fn run(
    sys: &DevSystem,
    sky: Sky,
    out: &mut (dyn Write + Send),
) -> Result<String, DemoError> {
    let service = sys
        .bridge
        .service
        .clone()
        .ok_or_else(|| DemoError::Unexpected(RequestId([0; 16]), "no service".into()))?;
    let label = "Demo wallet".to_owned();
    // A data folder used before keeps its demo wallet, and so its satellite key.
    let earlier = service
        .wallets()
        .await?
        .into_iter()
        .find(|(r, _)| r.label == label && r.state == crate::state::WalletState::Active)
        .map(|(r, _)| service.satellite_key(&r))
        .transpose()?;
    let satellite = match earlier {
        Some(key) => key,
        None => service.new_key(None).await?,
    };
    writeln!(
        out,
        "1. A satellite key for a new wallet: {}",
        satellite.descriptor_key()
    )?;
    writeln!(out, "   Electrum form: {}", satellite.electrum_xpub())?;
    let wallet = TestWallet::with_satellite(satellite);
    writeln!(
        out,
        "2. A 2-of-3 wallet of two demo user keys and the satellite's key:"
    )?;
    writeln!(out, "   {}", wallet.descriptor)?;
    let (wallet_id, reg) = match service
        .register_wallet(
            vec![wallet.descriptor.clone()],
            "you@example.org".into(),
            label,
            None,
            None,
        )
        .await
    {
        Ok(x) => x,
        Err(ServiceError::WalletExists { wallet_id, .. }) => {
            writeln!(
                out,
                "   already registered as {wallet_id} (data directory reused)"
            )?;
            (wallet_id, RequestId([0; 16]))
        }
        Err(e) => return Err(e.into()),
    };
    if reg.0 != [0; 16] {
        writeln!(
            out,
            "   registration request {reg}; the email went to {}",
            sys.mail_dir.display()
        )?;
        let code = wait_for_code(sys, &reg).await?;
        writeln!(out, "3. The email's code: {code}; confirming it")?;
        service.confirm(reg, &code, true).await?;
        let r = wait_delivered(sys, &sky, reg, out).await?;
        match r.outcome {
            Some(Outcome::Done { detail }) => writeln!(out, "   {detail}")?,
            other => return Err(DemoError::Unexpected(reg, format!("{other:?}"))),
        }
    }
    let salt = (SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 100_000) as u32;
    let psbt = wallet.typical_signed_psbt(1, salt);
    let raw = psbt.serialize();
    writeln!(
        out,
        "4. A PSBT signed by the user's key: {} bytes, txid {}",
        raw.len(),
        psbt.unsigned_tx.compute_txid()
    )?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let id = service
        .submit_psbt(Some(wallet_id), b64.as_bytes(), None)
        .await?;
    writeln!(out, "   request {id}")?;
    let code = wait_for_code(sys, &id).await?;
    let r = service.request(id).await?;
    if let crate::state::Action::Sign { summary, .. } = &r.action {
        writeln!(out, "5. The email shows:")?;
        for d in &summary.destinations {
            writeln!(
                out,
                "     pay {} to {}",
                crate::notice::btc(d.amount_sat),
                d.address
            )?;
        }
        writeln!(
            out,
            "     fee {} sat ({} sat/vB), change {}",
            summary.fee_sat,
            summary.fee_rate_sat_vb,
            crate::notice::btc(summary.change_sat)
        )?;
    }
    writeln!(out, "   code {code}; confirming it")?;
    service.confirm(id, &code, true).await?;
    writeln!(
        out,
        "6. Waiting for the pass, the satellite's signature and the answer:"
    )?;
    let r = wait_delivered(sys, &sky, id, out).await?;
    let Some(Outcome::Signed {
        psbt, tx: Some(tx), ..
    }) = r.outcome
    else {
        return Err(DemoError::Unexpected(id, format!("{:?}", r.outcome)));
    };
    let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&tx)
        .map_err(|e| DemoError::Unexpected(id, e.to_string()))?;
    let final_psbt =
        Psbt::deserialize(&psbt).map_err(|e| DemoError::Unexpected(id, e.to_string()))?;
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let spent_all = final_psbt
        .inputs
        .iter()
        .map(|i| {
            i.witness_utxo
                .clone()
                .ok_or_else(|| DemoError::Unexpected(id, "no witness utxo".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prevouts = bitcoin::sighash::Prevouts::All(&spent_all);
    for (i, spent) in spent_all.iter().enumerate() {
        let interp = miniscript::Interpreter::from_txdata(
            &spent.script_pubkey,
            &tx.input[i].script_sig,
            &tx.input[i].witness,
            tx.input[i].sequence,
            tx.lock_time,
        )
        .map_err(|e| DemoError::Unexpected(id, e.to_string()))?;
        for step in interp.iter(&secp, &tx, i, &prevouts) {
            step.map_err(|e| DemoError::Unexpected(id, format!("input {i}: {e}")))?;
        }
    }
    writeln!(
        out,
        "7. Final transaction {} ({} bytes), every input verified by miniscript's interpreter:",
        tx.compute_txid(),
        bitcoin::consensus::serialize(&tx).len()
    )?;
    writeln!(out, "   {}", bitcoin::consensus::encode::serialize_hex(&tx))?;
    Ok(tx.compute_txid().to_string())
}
