//! NIP-01 client messages: the text a Nostr client sends, decoded into what the relay acts
//! on, and the relay's answers (`OK`, `CLOSED`, `NOTICE`).
//!
//! This is the relay's only decoder of untrusted text, kept apart from the relay's state so
//! it can be fuzzed on its own (`bridge/fuzz`). It checks shape and size only: an event's
//! id, signature and time are checked by the relay, which knows the clock and its store.
//! Every refusal says what was wrong, with NIP-01's machine-readable prefix.

use nostr::{Event, Filter};
use serde_json::{json, Value};

use crate::nostr_relay::{Accepted, Rejection};

/// Longest subscription id accepted.
pub const MAX_SUB_ID: usize = 64;

/// What a client asked for.
#[derive(Debug)]
pub enum ClientMessage {
    /// `["EVENT", <event>]`: publish an event; `json_len` is its size as JSON.
    Event {
        /// The event, not yet verified.
        event: Box<Event>,
        /// Its JSON size, bytes.
        json_len: usize,
    },
    /// `["REQ", <sub>, <filter>...]`: stored matches, `EOSE`, then live ones.
    Req {
        /// The subscription id.
        sub: String,
        /// Its filters (at least one).
        filters: Vec<Filter>,
    },
    /// `["CLOSE", <sub>]`: end a subscription.
    Close {
        /// The subscription id.
        sub: String,
    },
    /// `["AUTH", <event>]`: NIP-42, the client proves a key (a kind-22242 event answering
    /// the relay's challenge).
    Auth {
        /// The event, not yet verified.
        event: Box<Event>,
    },
}

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest event, bytes of JSON.
    pub max_event_bytes: usize,
    /// Most filters in one `REQ`.
    pub max_filters: usize,
}

/// Why a message was refused, as the answer the client gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `["NOTICE", text]`: the message made no sense as a whole.
    Notice(String),
    /// `["OK", id, false, reason]`: an event was refused.
    Event {
        /// The event id as sent (empty if there was none).
        id: String,
        /// Why.
        why: Rejection,
    },
    /// `["CLOSED", sub, reason]`: a subscription was refused.
    Closed {
        /// The subscription id.
        sub: String,
        /// Why, with its NIP-01 prefix.
        why: String,
    },
}

impl Refusal {
    /// The answer to send.
    pub fn to_value(&self) -> Value {
        match self {
            Refusal::Notice(text) => notice(text),
            Refusal::Event { id, why } => ok(id, Err(why.clone())),
            Refusal::Closed { sub, why } => closed(sub, why),
        }
    }
}

/// Decodes one text message from a client.
pub fn decode(text: &str, limits: &DecodeLimits) -> Result<ClientMessage, Refusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::Notice(format!("invalid: malformed JSON: {e}")))?;
    let Some(arr) = v.as_array() else {
        return Err(Refusal::Notice("invalid: a message is a JSON array".into()));
    };
    let Some(kind) = arr.first().and_then(Value::as_str) else {
        return Err(Refusal::Notice(
            "invalid: a message's first element is its type, a string".into(),
        ));
    };
    match kind {
        "EVENT" => decode_event(arr, limits),
        "REQ" => decode_req(arr, limits),
        "CLOSE" => match arr.get(1).and_then(Value::as_str) {
            Some(sub) if arr.len() == 2 => Ok(ClientMessage::Close {
                sub: sub.to_owned(),
            }),
            _ => Err(Refusal::Notice(
                "invalid: CLOSE takes one subscription id".into(),
            )),
        },
        "AUTH" => match arr.get(1) {
            Some(e) if arr.len() == 2 && e.to_string().len() <= limits.max_event_bytes => {
                serde_json::from_value::<Event>(e.clone())
                    .map(|event| ClientMessage::Auth {
                        event: Box::new(event),
                    })
                    .map_err(|err| Refusal::Notice(format!("invalid: AUTH: not an event: {err}")))
            }
            _ => Err(Refusal::Notice(
                "invalid: AUTH takes one signed event (NIP-42)".into(),
            )),
        },
        other => Err(Refusal::Notice(format!(
            "unsupported: unknown message type {other:?}"
        ))),
    }
}

fn decode_event(arr: &[Value], limits: &DecodeLimits) -> Result<ClientMessage, Refusal> {
    let id = arr
        .get(1)
        .and_then(|e| e.get("id"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if arr.len() != 2 {
        return Err(Refusal::Notice(
            "invalid: EVENT takes exactly one event".into(),
        ));
    }
    let json_len = arr[1].to_string().len();
    if json_len > limits.max_event_bytes {
        return Err(Refusal::Event {
            id,
            why: Rejection::Invalid(format!(
                "event is {json_len} bytes; the limit is {}",
                limits.max_event_bytes
            )),
        });
    }
    match serde_json::from_value::<Event>(arr[1].clone()) {
        Ok(event) => Ok(ClientMessage::Event {
            event: Box::new(event),
            json_len,
        }),
        Err(e) if id.is_empty() => Err(Refusal::Notice(format!("invalid: not an event: {e}"))),
        Err(e) => Err(Refusal::Event {
            id,
            why: Rejection::Invalid(format!("not an event: {e}")),
        }),
    }
}

fn decode_req(arr: &[Value], limits: &DecodeLimits) -> Result<ClientMessage, Refusal> {
    let Some(sub) = arr.get(1).and_then(Value::as_str).map(str::to_owned) else {
        return Err(Refusal::Notice(
            "invalid: REQ needs a subscription id string".into(),
        ));
    };
    if sub.is_empty() || sub.chars().count() > MAX_SUB_ID {
        return Err(Refusal::Closed {
            sub,
            why: format!("invalid: subscription ids are 1 to {MAX_SUB_ID} characters"),
        });
    }
    let raw = &arr[2..];
    if raw.is_empty() || raw.len() > limits.max_filters {
        return Err(Refusal::Closed {
            sub,
            why: format!("invalid: REQ takes 1 to {} filters", limits.max_filters),
        });
    }
    let mut filters = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        match serde_json::from_value::<Filter>(f.clone()) {
            Ok(f) => filters.push(f),
            Err(e) => {
                return Err(Refusal::Closed {
                    sub,
                    why: format!("invalid: filter {i}: {e}"),
                })
            }
        }
    }
    Ok(ClientMessage::Req { sub, filters })
}

/// `["NOTICE", text]`.
pub fn notice(text: &str) -> Value {
    json!(["NOTICE", text])
}

/// `["CLOSED", sub, text]`.
pub fn closed(sub: &str, text: &str) -> Value {
    json!(["CLOSED", sub, text])
}

/// `["OK", id, accepted, message]`.
pub fn ok(id: &str, result: Result<Accepted, Rejection>) -> Value {
    match result {
        Ok(Accepted::New) => json!(["OK", id, true, ""]),
        Ok(Accepted::Duplicate) => json!(["OK", id, true, "duplicate: already have this event"]),
        Err(r) => json!(["OK", id, false, r.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_event_bytes: 4096,
        max_filters: 2,
    };

    fn refusal(text: &str) -> Value {
        decode(text, &LIMITS).expect_err("refused").to_value()
    }

    #[test]
    fn each_refusal_names_what_was_wrong() {
        assert!(refusal("{").to_string().contains("malformed JSON"));
        assert!(refusal("{}").to_string().contains("a JSON array"));
        assert!(refusal("[1]").to_string().contains("first element"));
        assert!(refusal("[\"X\"]").to_string().contains("unknown message"));
        assert!(refusal("[\"EVENT\"]").to_string().contains("exactly one"));
        assert!(refusal("[\"EVENT\", {\"id\": \"ab\"}]")
            .to_string()
            .contains("not an event"));
        assert_eq!(refusal("[\"REQ\", \"s\"]")[0], "CLOSED");
        assert!(refusal("[\"REQ\", \"s\", {}, {}, {}]")
            .to_string()
            .contains("1 to 2 filters"));
        assert!(refusal(&format!("[\"REQ\", \"{}\", {{}}]", "s".repeat(65)))
            .to_string()
            .contains("1 to 64 characters"));
        assert!(refusal("[\"REQ\", \"s\", {\"kinds\": \"x\"}]")
            .to_string()
            .contains("filter 0"));
        let big = format!(
            "[\"EVENT\", {{\"id\": \"ab\", \"content\": \"{}\"}}]",
            "x".repeat(5000)
        );
        assert!(refusal(&big).to_string().contains("the limit is 4096"));
        assert!(matches!(
            decode("[\"CLOSE\", \"s\"]", &LIMITS),
            Ok(ClientMessage::Close { .. })
        ));
        assert!(matches!(
            decode("[\"REQ\", \"s\", {\"kinds\": [4]}]", &LIMITS),
            Ok(ClientMessage::Req { .. })
        ));
    }
}
