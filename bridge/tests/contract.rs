//! `schemas/openrpc.json` and the registered methods stay in step.

mod common;

use std::collections::BTreeSet;

use satcosign_bridge::config::Network;
use satcosign_bridge::mailbox::Mailbox;
use satcosign_bridge::rpc::{build_module, ApiContext};
use satcosign_bridge::store::Store;

#[tokio::test]
async fn every_registered_method_is_documented_and_every_documented_one_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("t.redb")).expect("store");
    let module = build_module(ApiContext {
        network: Network::Regtest,
        banner: String::new(),
        donation_address: String::new(),
        mailbox: Mailbox::new(store, &satcosign_bridge::config::MailboxConfig::default()),
        service: None,
        link_status: None,
        passes: None,
    });
    let registered: BTreeSet<String> = module.method_names().map(str::to_owned).collect();
    let documented = common::contract().method_names();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "registered but missing from schemas/openrpc.json: {undocumented:?}"
    );
    assert!(
        unregistered.is_empty(),
        "documented in schemas/openrpc.json but not registered: {unregistered:?}"
    );
}

#[test]
fn every_documented_schema_compiles_and_params_are_positional() {
    let contract = common::contract();
    assert_eq!(
        contract.doc()["openrpc"].as_str().map(|v| &v[..3]),
        Some("1.2")
    );
    for name in contract.method_names() {
        let m = contract.method(&name);
        assert_eq!(m["paramStructure"], "by-position", "{name}");
        contract.validator(&m["result"]["schema"]);
        for p in m["params"].as_array().expect("params array") {
            assert!(p["name"].is_string(), "{name}: param without a name");
            contract.validator(&p["schema"]);
        }
    }
}

#[test]
fn documented_schemas_reject_what_the_bridge_rejects() {
    // The contract is only useful if it is strict: spot-check that its schemas refuse bad values.
    let contract = common::contract();
    let keyhash = contract.validator(&serde_json::json!({"$ref": "#/components/schemas/Keyhash"}));
    assert!(keyhash.is_valid(&serde_json::json!(common::keyhash("a"))));
    assert!(!keyhash.is_valid(&serde_json::json!("abc")));
    let features = contract.validator(&contract.method("server.features")["result"]["schema"]);
    assert!(!features.is_valid(&serde_json::json!({"protocol_min": "1.4"})));
}
