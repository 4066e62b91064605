//! A spend of 250 inputs and 2,000 outputs through the whole system: the bridge takes it,
//! emails a summary a person can read (the first payments one by one, the rest as one line
//! with their count and total, and always the totals), the simulated link carries it up and
//! the satellite signs it, and Bitcoin Core's interpreter accepts the final transaction.

mod common;

use serde_json::json;

use common::flow::{assert_final_tx, registered_wallet, sky_at, Flow};
use satcosign_bridge::notice::{btc, SHOWN_PAYMENTS};
use satcosign_cosigner::testkit::generous_policy;

const INPUTS: u32 = 250;
const OUTPUTS: u32 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_250_input_2000_output_spend_is_summarized_readably_signed_and_accepted_by_core() {
    // A fast channel: the test is about size, not air time (the link's own tests cover that).
    let flow = Flow::start(sky_at(2_000_000), |_| {}).await;
    let (wid, w) = registered_wallet(&flow, &generous_policy()).await;
    let psbt = w.large_signed_psbt(INPUTS, OUTPUTS, 1);
    let txid = psbt.unsigned_tx.compute_txid().to_string();
    let id = flow.submit(&wid, &psbt).await;
    let code = flow.inbox.code(&id).await;

    // The email: readable at this size, with every total.
    let mail = flow
        .inbox
        .all()
        .into_iter()
        .map(|m| satcosign_bridge::demo::decode_quoted_printable(&m))
        .find(|m| m.contains(&txid))
        .expect("the confirmation email names the transaction");
    let text = mail.split("<html").next().expect("the text part");
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("Pay #")).collect();
    assert_eq!(rows.len(), SHOWN_PAYMENTS + 1, "{text}");
    let rest = OUTPUTS as usize - 1 - SHOWN_PAYMENTS;
    let rest_line = format!(
        "{} in all, to {rest} more addresses",
        btc(rest as u64 * 10_000)
    );
    assert!(
        rows[SHOWN_PAYMENTS].contains(&format!("Pay #{} to #{}", SHOWN_PAYMENTS + 1, OUTPUTS - 1))
            && rows[SHOWN_PAYMENTS].contains(&rest_line),
        "{text}"
    );
    let status = flow.status(&id).await;
    let summary = &status["summary"];
    assert_eq!(
        summary["destinations"].as_array().map(Vec::len),
        Some(OUTPUTS as usize - 1),
        "request.status lists every payment"
    );
    let row = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in {text}"))
            .trim_end()
            .to_owned()
    };
    let leaving = btc(summary["leaving_sat"].as_u64().expect("leaving"));
    assert!(row("Total leaving the wallet").contains(&leaving), "{text}");
    let fee = format!("{} sat", summary["fee_sat"]);
    assert!(row("Fee").contains(&fee), "{text}");
    let change = btc(summary["change_sat"].as_u64().expect("change"));
    assert!(row("Back to the wallet").contains(&change), "{text}");
    assert!(row("Inputs spent").ends_with(&INPUTS.to_string()), "{text}");
    assert!(
        text.lines().count() < 80 && text.len() < 8_000,
        "a summary a person can read: {} lines, {} bytes",
        text.lines().count(),
        text.len()
    );

    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 300).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert_final_tx(&done, &psbt);
    flow.system.stop().await;
}
