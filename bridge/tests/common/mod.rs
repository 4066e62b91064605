//! Shared test harness: an in-process bridge on ephemeral loopback ports, a raw
//! Electrum-protocol line client, and the OpenRPC contract that every result is checked
//! against.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use satcosign_bridge::config::Config;
use satcosign_bridge::RunningBridge;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A bridge running in this process, with its own data directory.
pub struct Harness {
    pub bridge: RunningBridge,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn tcp(&self) -> SocketAddr {
        self.bridge.electrum_tcp.expect("electrum tcp enabled")
    }
    pub fn http(&self) -> SocketAddr {
        self.bridge.http.expect("http enabled")
    }
}

/// A config on ephemeral loopback ports in a fresh temporary data directory.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut c = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    c.electrum.tcp = "127.0.0.1:0".into();
    c.http.listen = "127.0.0.1:0".into();
    c.nostr.listen = "127.0.0.1:0".into();
    c
}

pub async fn start_bridge(edit: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&dir);
    edit(&mut config);
    let bridge = satcosign_bridge::start(&config)
        .await
        .expect("bridge starts");
    Harness {
        bridge,
        config,
        dir,
    }
}

/// A raw newline-delimited JSON-RPC connection.
pub struct LineClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        LineClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Sends one line (a newline is added).
    pub async fn send_line(&mut self, line: &str) {
        self.send_raw(line.as_bytes()).await;
        self.send_raw(b"\n").await;
    }

    /// Reads one response line as JSON.
    pub async fn recv(&mut self) -> Value {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("a response within 20 s")
            .expect("read");
        assert!(!line.is_empty(), "connection closed instead of answering");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("response is not JSON ({e}): {line}"))
    }

    /// Whether nothing arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        let mut line = String::new();
        tokio::time::timeout(wait, self.reader.read_line(&mut line))
            .await
            .is_err()
    }

    /// Calls `method` and returns the whole response object.
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_line(&req.to_string()).await;
        let resp = self.recv().await;
        assert_eq!(resp["id"], json!(id), "response id: {resp}");
        if let Some(result) = resp.get("result") {
            contract().check_result(method, result);
        }
        resp
    }

    /// Calls `method`, expects success, checks the result against the contract.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let resp = self.call(1, method, params).await;
        resp.get("result")
            .unwrap_or_else(|| panic!("{method} failed: {resp}"))
            .clone()
    }
}

/// The error code of a response, panicking if it is not an error.
pub fn error_code(resp: &Value) -> i64 {
    resp["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {resp}"))
}

/// `schemas/openrpc.json`.
pub struct Contract {
    doc: Value,
}

pub fn contract() -> Contract {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/openrpc.json");
    let text = std::fs::read_to_string(&path).expect("schemas/openrpc.json readable");
    Contract {
        doc: serde_json::from_str(&text).expect("openrpc.json is JSON"),
    }
}

impl Contract {
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    pub fn method_names(&self) -> BTreeSet<String> {
        self.methods()
            .iter()
            .map(|m| m["name"].as_str().expect("method name").to_owned())
            .collect()
    }

    fn methods(&self) -> &Vec<Value> {
        self.doc["methods"].as_array().expect("methods array")
    }

    pub fn method(&self, name: &str) -> &Value {
        self.methods()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not documented in schemas/openrpc.json"))
    }

    /// A JSON Schema validator for `schema`, resolving `#/components/...` references.
    pub fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let wrapped = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::validator_for(&wrapped).expect("schema compiles")
    }

    /// Panics unless `result` matches the documented result schema of `method`.
    pub fn check_result(&self, method: &str, result: &Value) {
        let schema = &self.method(method)["result"]["schema"];
        let validator = self.validator(schema);
        if let Err(e) = validator.validate(result) {
            panic!("{method} result {result} does not match schemas/openrpc.json: {e}");
        }
    }
}

/// A keyhash made from a label, so tests can name slots.
pub fn keyhash(label: &str) -> String {
    use std::fmt::Write;
    let mut h = 0xcbf29ce484222325u64;
    for b in label.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let mut s = String::new();
    for i in 0..4u64 {
        let _ = write!(s, "{:016x}", h.rotate_left((i * 16) as u32) ^ i);
    }
    s
}

/// Base64 of `bytes`.
/// An address where nothing listens, and where nothing a test starts will: the bridges,
/// servers and proxies of the tests bind 127.0.0.1, so a port of 127.0.0.2 freed here is
/// not taken again by another test while this one uses it (a freed 127.0.0.1 port can be).
pub fn nobody_listens() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.2")
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
pub mod browser;
pub mod chain;
pub mod flow;
pub mod process;
pub mod satellite;
pub mod script;
pub mod socks;
pub mod stores;
