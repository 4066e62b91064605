//! 100 concurrent connections on distinct and shared slots end in a state some serial order
//! of their operations would produce.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

const CONNECTIONS: usize = 100;
const OPS: usize = 30;
const SHARED: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Put(String),
    Get,
    Delete,
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_a_serializable_mailbox() {
    // Every connection comes from 127.0.0.1: the per-client shares (hostile.rs tests them)
    // are opened up, so this tests ordering alone.
    let h = common::start_bridge(|c| {
        c.electrum.max_connections_per_peer = c.electrum.max_connections;
        c.mailbox.puts_per_minute_per_peer = 100_000;
        c.limits.read_bytes_per_second_per_peer = 1 << 40;
        c.limits.read_burst_bytes_per_peer = 1 << 40;
        c.mailbox.put_bytes_per_minute_per_peer = 1 << 40;
    })
    .await;
    let addr = h.tcp();
    let shared: Vec<String> = (0..SHARED)
        .map(|i| common::keyhash(&format!("shared-{i}")))
        .collect();

    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (conn as u64 + 1));
            let own = common::keyhash(&format!("own-{conn}"));
            let mut c = common::LineClient::connect(addr).await;
            let mut own_model: Option<String> = None;
            // Per shared key: every value this connection put, every value it read, its last write.
            let mut log: Vec<(String, Op, Value)> = Vec::new();
            for i in 0..OPS {
                let key = if rng.next().is_multiple_of(2) {
                    own.clone()
                } else {
                    shared[(rng.next() % SHARED as u64) as usize].clone()
                };
                let op = match rng.next() % 3 {
                    0 => Op::Put(common::b64(format!("c{conn}-op{i}").as_bytes())),
                    1 => Op::Get,
                    _ => Op::Delete,
                };
                let result = match &op {
                    Op::Put(v) => c.ok("cosigner.put", json!([key, v])).await,
                    Op::Get => c.ok("cosigner.get", json!([key])).await,
                    Op::Delete => c.ok("cosigner.delete", json!([key])).await,
                };
                if key == own {
                    // Only this connection touches its own slot: it must behave exactly serially.
                    match &op {
                        Op::Put(v) => own_model = Some(v.clone()),
                        Op::Get => assert_eq!(result, json!(own_model), "conn {conn} op {i}"),
                        Op::Delete => {
                            assert_eq!(result, json!(own_model.is_some()), "conn {conn} op {i}");
                            own_model = None;
                        }
                    }
                }
                log.push((key, op, result));
            }
            (own, own_model, log)
        }));
    }

    let mut finals_expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut put_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last_writes: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    let mut reads: Vec<(String, Value)> = Vec::new();
    for t in tasks {
        let (own, own_model, log) = t.await.expect("client task");
        finals_expected.insert(own.clone(), own_model);
        let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (key, op, result) in log {
            if key == own {
                continue;
            }
            match op {
                Op::Put(v) => {
                    put_values.entry(key.clone()).or_default().insert(v.clone());
                    last.insert(key, Some(v));
                }
                Op::Delete => {
                    last.insert(key, None);
                }
                Op::Get => reads.push((key, result)),
            }
        }
        for (key, w) in last {
            last_writes.entry(key).or_default().insert(w);
        }
    }

    let mut c = common::LineClient::connect(addr).await;
    for (key, expected) in &finals_expected {
        assert_eq!(
            &c.ok("cosigner.get", json!([key])).await,
            &json!(expected),
            "own slot {key}"
        );
    }
    for (key, value) in &reads {
        if let Some(s) = value.as_str() {
            assert!(
                put_values.get(key).is_some_and(|p| p.contains(s)),
                "a read of {key} returned {s}, which nobody put there"
            );
        }
    }
    for key in &shared {
        let final_value = c.ok("cosigner.get", json!([key])).await;
        let final_value = final_value.as_str().map(str::to_owned);
        match last_writes.get(key) {
            // In any serial order the final state is the last write of some connection.
            Some(candidates) => assert!(
                candidates.contains(&final_value),
                "shared slot {key} ended as {final_value:?}, not the last write of any connection: {candidates:?}"
            ),
            None => assert_eq!(final_value, None, "never written"),
        }
    }
}
