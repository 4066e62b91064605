//! `GET /metrics` over a real socket after a whole signing flow, read with an independent
//! Prometheus text parser: the counts match what happened, and nothing identifying (ids,
//! keys, addresses) is in it.

mod common;

use bitcoin::hashes::Hash as _;

use std::collections::HashMap;

use serde_json::json;

use common::flow::{http_raw, sky, test_wallet, Flow};

/// Every sample, keyed `name{label=value,...}` (labels sorted), from a strict parse.
fn samples(body: &str) -> HashMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("unexpected sample kind {other:?}"),
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_name_nobody() {
    let flow = Flow::start(sky(0.0), |_| {}).await;
    let w = test_wallet(&flow).await;
    let wid = flow.register(&w.descriptor).await;
    let id = flow.submit(&wid, &w.typical_signed_psbt(1, 5)).await;
    let code = flow.inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 120).await;
    assert_eq!(done["final_state"], "signed", "{done}");

    let addr = flow.http_addr();
    let (status, text) = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let m = samples(body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing in:\n{body}"))
    };

    assert_eq!(
        get(&format!(
            "satcosign_build_info{{version={}}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // The registration and the signing request, each through every state to delivered.
    for state in [
        "received",
        "awaiting_email",
        "confirmed",
        "signed",
        "delivered",
    ] {
        assert_eq!(
            get(&format!(
                "satcosign_request_transitions_total{{state={state}}}"
            )),
            2.0,
            "{state}"
        );
    }
    assert_eq!(
        get("satcosign_request_transitions_total{state=refused}"),
        0.0
    );
    for state in ["received", "awaiting_email", "confirmed", "queued", "sent"] {
        assert_eq!(
            get(&format!("satcosign_requests_active{{state={state}}}")),
            0.0
        );
    }
    assert_eq!(get("satcosign_wallets{state=active}"), 1.0);
    assert_eq!(get("satcosign_wallets{state=pending}"), 0.0);
    assert_eq!(
        get("satcosign_emails_sent_total{}"),
        flow.inbox.all().len() as f64,
        "every email counted"
    );
    assert_eq!(get("satcosign_email_failures_total{}"), 0.0);
    // In view or not is the schedule's word; the satellite was heard during the flow.
    let in_view = get("satcosign_link_in_view{}");
    assert!(in_view == 0.0 || in_view == 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let heard = get("satcosign_link_peer_heard_timestamp_seconds{}");
    assert!(
        now - heard < 300.0 && heard <= now + 1.0,
        "heard at {heard}, now {now}"
    );
    for state in ["waiting_for_pass", "sending", "awaiting_ack"] {
        assert_eq!(
            get(&format!("satcosign_link_head_state{{state={state}}}")),
            0.0,
            "nothing queued"
        );
    }
    assert!(get("satcosign_link_next_pass_start_seconds{}") > now - 1.0);
    assert_eq!(get("satcosign_link_queue_depth{}"), 0.0);
    assert!(get("satcosign_link_messages_acknowledged_total{}") >= 2.0);
    assert!(get("satcosign_link_messages_delivered_total{}") >= 2.0);
    assert!(get("satcosign_link_bytes_sent_total{}") > 0.0);
    assert_eq!(
        get("satcosign_link_frames_rejected_total{reason=forged}"),
        0.0
    );

    // Counts and states only.
    let satellite_key = w.satellite.xpub.to_string();
    let key_id = hex::encode(
        bitcoin::hashes::sha256d::Hash::hash(&w.satellite.xpub.public_key.serialize())
            .to_byte_array(),
    );
    for secret in [
        wid.as_str(),
        id.as_str(),
        "alice@example.org",
        "example.org",
        satellite_key.as_str(),
        key_id.as_str(),
        "tpub",
    ] {
        assert!(!body.contains(secret), "{secret} in /metrics");
    }

    // HEAD has the headers and no body.
    let (status, text) = http_raw(
        addr,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    flow.system.stop().await;

    // Turned off, the route is not there.
    let flow = Flow::start(sky(0.0), |c| c.http.metrics = false).await;
    let (status, text) = http_raw(
        flow.http_addr(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status, 200, "{text}");
    assert!(!text.contains("satcosign_"), "{text}");
    flow.system.stop().await;
}
