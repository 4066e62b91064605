//! What the bridge's fuzz targets run, shared with `bridge/tests/fuzz_corpus.rs`, which runs
//! every input in `bridge/fuzz/corpus/` on stable Rust as a regression test.
//!
//! - [`electrum_lines`]: bytes from an Electrum TCP client, through the bounded line reader
//!   and the JSON-RPC line and batch decoder, against a small set of methods. Every line must
//!   get valid JSON or nothing (a notification), within the response cap.
//! - [`nostr_message`]: text from a Nostr client through the NIP-01 message decoder. A
//!   refusal must be a well-formed relay answer.

#![allow(dead_code)] // each target uses one of these

use std::sync::OnceLock;

use jsonrpsee::{Extensions, RpcModule};
use satcosign_bridge::dispatch::Dispatcher;
use satcosign_bridge::electrum_tcp::{LineRead, LineReader};
use satcosign_bridge::nostr_message::{self, DecodeLimits};
use serde_json::Value;

/// The response cap the dispatcher is given.
const MAX_RESPONSE: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn dispatcher() -> &'static Dispatcher {
    static D: OnceLock<Dispatcher> = OnceLock::new();
    D.get_or_init(|| {
        let mut m = RpcModule::new(());
        m.register_method("server.ping", |_, _, _| Value::Null)
            .expect("ping");
        m.register_method("echo", |params, _, _| {
            params.parse::<Value>().unwrap_or(Value::Null)
        })
        .expect("echo");
        m.register_method("fail", |_, _, _| {
            Err::<(), _>(jsonrpsee::types::ErrorObject::owned(
                -32001, "failed", None::<()>,
            ))
        })
        .expect("fail");
        Dispatcher::new(m.into(), 8, MAX_RESPONSE)
    })
}

/// The first byte sets the line limit and the read size; the rest is the stream.
pub fn electrum_lines(data: &[u8]) {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    let max_line = 16 + usize::from(shape & 0x0f) * 64;
    let chunk = 1 + usize::from(shape >> 4) * 3;
    runtime().block_on(async {
        let mut reader =
            LineReader::new(tokio::io::BufReader::with_capacity(chunk, stream), max_line);
        let mut line = Vec::new();
        let ext = Extensions::new();
        loop {
            match reader.read_line(&mut line).await.expect("reading a slice") {
                LineRead::Eof => break,
                LineRead::TooLong => assert!(line.is_empty(), "nothing of a long line is kept"),
                LineRead::Line => {
                    assert!(line.len() <= max_line, "a line over the limit was read");
                    if let Some(answer) = dispatcher().handle_line(&line, &ext).await {
                        let v: Value = serde_json::from_str(&answer)
                            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {answer}"));
                        assert!(v.is_object() || v.is_array(), "{answer}");
                        assert!(answer.len() <= MAX_RESPONSE + 256, "answer over the cap");
                    }
                }
            }
        }
    });
}

/// Any text from a Nostr client.
pub fn nostr_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = DecodeLimits {
        max_event_bytes: 2048,
        max_filters: 4,
    };
    if let Err(refusal) = nostr_message::decode(text, &limits) {
        let answer = refusal.to_value();
        let kind = answer[0].as_str().expect("an answer has a type");
        assert!(["NOTICE", "OK", "CLOSED"].contains(&kind), "{answer}");
        let why = answer
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_str);
        let why = why.expect("a reason");
        assert!(why.contains(": "), "a reason has its NIP-01 prefix: {why}");
    }
}
