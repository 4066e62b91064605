//! Two bridges on one PostgreSQL database, one holding it and one standing by, with the
//! satellite as its own process over UDP. The holder is killed (SIGKILL) at random moments,
//! 50 times, while signing requests flow; each time the standby takes over where it
//! stopped, and the killed one comes back as the next standby.
//!
//! Every request completes once, signed and broadcast once; no code is emailed twice; and
//! the satellite's own audit shows exactly one signature per request: nothing was signed
//! twice across the takeovers.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use common::process::{mailed_code, BridgeProcess, Starting};
use common::satellite::{
    ground_config, printed_link_key, provision, register_wallet, signatures, start_satellite,
    udp_ports,
};
use common::stores::TestStore;

const KILLS: usize = 50;
/// A new request every this many kills.
const REQUEST_EVERY: usize = 5;

fn run_args(config: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        config.to_str().expect("utf-8").into(),
        "run".into(),
    ]
}

fn standby(config: &Path) -> Starting {
    let args = run_args(config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BridgeProcess::standby(&args)
}

/// The standby, once it drives the ground.
async fn took_over(standby: Starting) -> BridgeProcess {
    tokio::task::spawn_blocking(move || {
        let replica = standby.ready();
        replica.driving();
        replica
    })
    .await
    .expect("the standby took over")
}

/// A small deterministic generator for the kill moments (the seed is printed).
struct Moments(u64);

impl Moments {
    fn next_millis(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_killed_fifty_times_loses_no_request_and_nothing_is_signed_twice() {
    let store = TestStore::postgres().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ground_dir, sat_dir) = (tmp.path().join("ground"), tmp.path().join("satellite"));
    let (sat_link_key, account_key) = provision(&sat_dir);
    let url = store.fresh_database("takeover").await;
    let ports = udp_ports();
    // The upstream Electrum server the holder broadcasts through.
    let chain = common::chain::ChainServer::start(Vec::new()).await;
    let config = tmp.path().join("bridge.toml");
    // Both bridges read this file: the same database, radio address and key files (the
    // link key and the mailbox key are the deployment's, not one machine's).
    std::fs::write(
        &config,
        ground_config(
            &ground_dir,
            (&sat_link_key, &account_key),
            ports,
            &format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\nlease_secs = 2\n\
                 [upstream]\nurl = \"{}\"\npoll_secs = 1\n",
                chain.url
            ),
        ),
    )
    .expect("config");
    let mail = ground_dir.join("mail");

    let mut holder = took_over(standby(&config)).await;
    let ground_key = printed_link_key(&holder);
    let satellite = start_satellite(&sat_dir, &ground_key, ports);
    let mut next = standby(&config);

    let (w, wid, reg_id) = register_wallet(&holder, &mail).await;
    // Every request's coins are on the chain.
    let psbts: Vec<bitcoin::Psbt> = (0..KILLS / REQUEST_EVERY)
        .map(|n| w.typical_signed_psbt(1, 100 + n as u32))
        .collect();
    chain.confirm(
        psbts
            .iter()
            .flat_map(|p| p.inputs.iter().filter_map(|i| i.non_witness_utxo.clone()))
            .collect(),
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill moments seed: {seed}");
    let mut moments = Moments(seed);
    let mut requests: Vec<String> = Vec::new();
    for kill in 0..KILLS {
        if kill % REQUEST_EVERY == 0 {
            let psbt = &psbts[kill / REQUEST_EVERY];
            let b64 = base64::engine::general_purpose::STANDARD.encode(psbt.serialize());
            let sub = holder
                .call("request.submit", vec![json!(wid), json!(b64)])
                .await;
            let id = sub["request_id"].as_str().expect("id").to_owned();
            let code = mailed_code(&mail, &id).await;
            holder
                .call("request.confirm", vec![json!(id), json!(code)])
                .await;
            requests.push(id);
        }
        // Somewhere in the request's way: on the link, at the satellite, on its way back.
        tokio::time::sleep(Duration::from_millis(moments.next_millis(1500))).await;
        holder.kill();
        holder = took_over(next).await;
        next = standby(&config);
    }

    let mut txids = Vec::new();
    for id in &requests {
        let done = holder.wait_state(id, "delivered").await;
        assert_eq!(done["final_state"], "signed", "{id}: {done}");
        let txid = done["outcome"]["signed"]["broadcast"]["txid"].clone();
        assert!(txid.is_string(), "{id} was broadcast: {done}");
        txids.push(txid);
    }
    // Each transaction reached the server once: a holder killed between its broadcast and
    // its record left the next one to find it there, not to send it again.
    let mut sent: HashMap<String, usize> = HashMap::new();
    for tx in chain.broadcasts() {
        *sent.entry(tx.compute_txid().to_string()).or_default() += 1;
    }
    for txid in &txids {
        let txid = txid.as_str().expect("a txid");
        assert_eq!(
            sent.get(txid).copied(),
            Some(1),
            "{txid} broadcast once: {sent:?}"
        );
    }
    // One signature per request, none twice: the satellite's audit, read once it has
    // stopped.
    satellite.kill();
    let signed = signatures(&sat_dir);
    let mut per_request: HashMap<&str, usize> = HashMap::new();
    for line in &signed {
        if let Some(id) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("request="))
        {
            *per_request.entry(id).or_default() += 1;
        }
    }
    for id in &requests {
        assert_eq!(
            per_request.get(id.as_str()).copied(),
            Some(1),
            "{id} signed once: {signed:?}"
        );
    }
    assert_eq!(signed.len(), requests.len(), "{signed:?}");
    // No code went out in two emails.
    let mut codes: HashMap<String, usize> = HashMap::new();
    for id in requests.iter().chain([&reg_id]) {
        let rid = common::flow::parse_id(id);
        for text in satcosign_bridge::demo::codes_in_mail_dir(&mail, &rid) {
            *codes.entry(text).or_default() += 1;
        }
    }
    assert!(
        codes.values().all(|n| *n == 1),
        "a code emailed twice: {codes:?}"
    );
    drop(next);
    holder.terminate();
}
