//! JSON-RPC 2.0 dispatch of one Electrum-protocol line against the bridge's methods.
//!
//! The same `Methods` that jsonrpsee serves on HTTP and WebSocket are called here, so the
//! two transports cannot drift apart. This layer adds what the Electrum line protocol needs
//! and jsonrpsee's in-memory call does not: batches, notifications (calls without `id`,
//! which are run and never answered), a missing `"jsonrpc"` member accepted as electrs
//! does, and per-connection extensions (the [`crate::push::Pusher`]). Every failure becomes
//! a JSON-RPC error object; nothing here panics on input.

use std::borrow::Cow;

use jsonrpsee::core::server::{MethodCallback, MethodResponse, Methods};
use jsonrpsee::types::{ErrorObject, Id, Params};
use jsonrpsee::{ConnectionId, Extensions};

use crate::admission::ClientAddr;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::rpc_error::{
    protocol_error_line, BATCH_TOO_LARGE, INVALID_REQUEST, METHOD_NOT_FOUND, OVERSIZED_RESPONSE,
    PARSE_ERROR,
};

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_id")]
    id: Option<Id<'a>>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// Distinguishes `"id": null` (a call, answered with `id: null`) from no `id` (a notification).
fn present_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Id<'de>>, D::Error> {
    Id::deserialize(d).map(Some)
}

/// Runs lines of JSON-RPC against a set of methods.
#[derive(Clone)]
pub struct Dispatcher {
    methods: Methods,
    max_batch: usize,
    max_response_bytes: usize,
}

fn error_response(id: Id<'_>, code: i32, message: &str) -> String {
    MethodResponse::error(id, ErrorObject::owned(code, message, None::<()>))
        .into_json()
        .get()
        .to_owned()
}

impl Dispatcher {
    /// A dispatcher over `methods` accepting batches of at most `max_batch` calls, whose
    /// answer to one line (a call or a whole batch) is at most `max_response_bytes`.
    pub fn new(methods: Methods, max_batch: usize, max_response_bytes: usize) -> Dispatcher {
        Dispatcher {
            methods,
            max_batch,
            max_response_bytes,
        }
    }

    /// Handles one line (without its newline). Returns the line to send back, if any.
    pub async fn handle_line(&self, line: &[u8], ext: &Extensions) -> Option<String> {
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(protocol_error_line(PARSE_ERROR, "Parse error: not UTF-8"));
        };
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let raw: &RawValue = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                return Some(protocol_error_line(
                    PARSE_ERROR,
                    &format!("Parse error: {e}"),
                ))
            }
        };
        match raw.get().as_bytes().first() {
            Some(b'[') => self.handle_batch(raw, ext).await,
            Some(b'{') => self.handle_call(raw, ext).await,
            _ => Some(protocol_error_line(
                INVALID_REQUEST,
                "Invalid request: expected a JSON object or an array of them",
            )),
        }
    }

    async fn handle_batch(&self, raw: &RawValue, ext: &Extensions) -> Option<String> {
        let calls: Vec<&RawValue> = match serde_json::from_str(raw.get()) {
            Ok(calls) => calls,
            Err(e) => {
                return Some(protocol_error_line(
                    PARSE_ERROR,
                    &format!("Parse error: {e}"),
                ))
            }
        };
        if calls.is_empty() {
            return Some(protocol_error_line(
                INVALID_REQUEST,
                "Invalid request: empty batch",
            ));
        }
        if calls.len() > self.max_batch {
            return Some(protocol_error_line(
                BATCH_TOO_LARGE,
                &format!(
                    "Batch of {} calls is over the limit of {}",
                    calls.len(),
                    self.max_batch
                ),
            ));
        }
        let mut out = String::from("[");
        let mut any = false;
        for call in calls {
            let answer = if call.get().starts_with('{') {
                self.handle_call(call, ext).await
            } else {
                Some(protocol_error_line(
                    INVALID_REQUEST,
                    "Invalid request: batch element is not an object",
                ))
            };
            if let Some(answer) = answer {
                if any {
                    out.push(',');
                }
                out.push_str(&answer);
                any = true;
            }
            if out.len() > self.max_response_bytes {
                // As jsonrpsee answers an HTTP batch whose response is too big; the calls
                // after this one are not run.
                crate::metrics::limit_hit("electrum_response_bytes");
                // The answer was built, though not sent: it counts against the peer's share.
                if let (Some(rates), Some(ClientAddr(ip))) = (
                    ext.get::<std::sync::Arc<crate::read_rate::ReadRates>>(),
                    ext.get::<ClientAddr>(),
                ) {
                    rates.spent(*ip, out.len());
                }
                return Some(protocol_error_line(
                    OVERSIZED_RESPONSE,
                    &format!(
                        "Response is too big: a batch's answer is limited to {} bytes; ask in smaller batches",
                        self.max_response_bytes
                    ),
                ));
            }
        }
        out.push(']');
        // A batch of notifications only is answered with nothing at all.
        any.then_some(out)
    }

    async fn handle_call(&self, raw: &RawValue, ext: &Extensions) -> Option<String> {
        let call: Call<'_> = match serde_json::from_str(raw.get()) {
            Ok(call) => call,
            Err(e) => {
                return Some(protocol_error_line(
                    INVALID_REQUEST,
                    &format!("Invalid request: {e}"),
                ))
            }
        };
        let is_notification = call.id.is_none();
        let id = call.id.unwrap_or(Id::Null);
        if let Some(v) = call.jsonrpc.as_deref() {
            if v != "2.0" {
                let msg = format!("Invalid request: jsonrpc must be \"2.0\", got {v:?}");
                return (!is_notification).then(|| error_response(id, INVALID_REQUEST, &msg));
            }
        }
        let params = Params::new(call.params.map(RawValue::get));
        let response = match self.methods.method(&call.method) {
            Some(MethodCallback::Sync(cb)) => cb(id, params, self.max_response_bytes, ext.clone()),
            Some(MethodCallback::Async(cb)) => {
                let conn = ext.get::<ConnectionId>().copied().unwrap_or_default();
                cb(
                    id.into_owned(),
                    params.into_owned(),
                    conn,
                    self.max_response_bytes,
                    ext.clone(),
                )
                .await
            }
            Some(MethodCallback::Subscription(_) | MethodCallback::Unsubscription(_)) => {
                let msg = format!(
                    "Method not found: {} is a WebSocket subscription; on this transport, \
                     subscribe with request.subscribe (Electrum-style pushes)",
                    call.method
                );
                return (!is_notification).then(|| error_response(id, METHOD_NOT_FOUND, &msg));
            }
            None => {
                let msg = format!("Method not found: {}", call.method);
                return (!is_notification).then(|| error_response(id, METHOD_NOT_FOUND, &msg));
            }
        };
        if is_notification {
            tracing::trace!(method = %call.method, "notification handled");
            return None;
        }
        Some(response.into_json().get().to_owned())
    }
}
