//! The bridge's JSON-RPC API: one `RpcModule`, served on every transport.
//!
//! Method names are the API and each is documented in `schemas/openrpc.json` (a test keeps
//! the two in step). Parameters are positional, as in the Electrum protocol; every one is
//! checked here and a bad one is named in the error.

use std::sync::Arc;

use jsonrpsee::types::Params;
use jsonrpsee::RpcModule;
use serde_json::{json, Value};

use crate::config::Network;
use crate::mailbox::{Keyhash, Mailbox, MailboxError};
use crate::rpc_error::RpcError;
use crate::rpc_signing;
use crate::service::Service;

/// The Electrum protocol version the bridge speaks.
pub const PROTOCOL_VERSION: &str = "1.4";
/// Software name and version reported by `server.version` and `server.features`.
pub const SERVER_VERSION: &str = concat!("satcosign-bridge ", env!("CARGO_PKG_VERSION"));

/// What the methods need.
pub struct ApiContext {
    /// Network served.
    pub network: Network,
    /// `server.banner` text.
    pub banner: String,
    /// `server.donation_address` text.
    pub donation_address: String,
    /// The cosigner-pool mailbox.
    pub mailbox: Mailbox,
    /// Wallets and signing requests; `None` when no satellite is configured.
    pub service: Option<Arc<Service>>,
    /// The radio link's status, when there is a link.
    pub link_status: Option<LinkStatusFn>,
    /// The passes predicted from the orbit, when `[satellite.orbit]` is set.
    pub passes: Option<Arc<crate::passes::PassPlan>>,
}

/// Reads the link's status.
pub type LinkStatusFn = Arc<dyn Fn() -> satcosign_link::link::LinkStatus + Send + Sync>;

impl ApiContext {
    pub(crate) fn service(&self) -> Result<&Arc<Service>, RpcError> {
        self.service.as_ref().ok_or(RpcError::Service {
            code: crate::rpc_error::NO_SATELLITE,
            message: "this bridge has no satellite configured (set satellite.account_key)".into(),
            data: None,
        })
    }
}

impl From<MailboxError> for RpcError {
    fn from(e: MailboxError) -> Self {
        match e {
            MailboxError::BadKeyhash { .. } => RpcError::InvalidParam {
                index: 0,
                name: "keyhash",
                reason: e.to_string(),
            },
            MailboxError::BadMessage { .. } => RpcError::InvalidParam {
                index: 1,
                name: "message",
                reason: e.to_string(),
            },
            MailboxError::TooLarge { size, max } => RpcError::MessageTooLarge { size, max },
            MailboxError::Full { held, max } => RpcError::Service {
                code: crate::rpc_error::RATE_LIMITED,
                message: e.to_string(),
                data: Some(serde_json::json!({
                    "limit": "mailbox.max_total_bytes", "held": held, "max": max,
                })),
            },
            MailboxError::RateLimited { per_minute } => RpcError::Service {
                code: crate::rpc_error::RATE_LIMITED,
                message: e.to_string(),
                data: Some(serde_json::json!({
                    "limit": "mailbox.puts_per_minute_per_peer",
                    "retry_after": 60_u32.div_ceil(per_minute.max(1)),
                })),
            },
            MailboxError::BytesRateLimited { .. } => RpcError::Service {
                code: crate::rpc_error::RATE_LIMITED,
                message: e.to_string(),
                data: Some(serde_json::json!({
                    "limit": "mailbox.put_bytes_per_minute_per_peer",
                    "retry_after": 60,
                })),
            },
            MailboxError::Store(s) => RpcError::Storage(s.to_string()),
        }
    }
}

/// Positional parameters of `method`, between `min` and `max` of them.
pub(crate) fn positional(
    params: &Params<'_>,
    method: &'static str,
    min: usize,
    max: usize,
) -> Result<Vec<Value>, RpcError> {
    let values = match params.as_str() {
        None => Vec::new(),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Array(values)) => values,
            Ok(Value::Null) => Vec::new(),
            _ => return Err(RpcError::ParamsNotArray),
        },
    };
    if values.len() < min || values.len() > max {
        return Err(RpcError::ParamCount {
            method,
            min,
            max,
            got: values.len(),
        });
    }
    Ok(values)
}

pub(crate) fn string_param(
    values: &[Value],
    index: usize,
    name: &'static str,
) -> Result<String, RpcError> {
    match values.get(index) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(RpcError::InvalidParam {
            index,
            name,
            reason: format!("expected a string, got {}", json_type(other)),
        }),
        None => Err(RpcError::InvalidParam {
            index,
            name,
            reason: "missing".into(),
        }),
    }
}

fn keyhash_param(values: &[Value]) -> Result<Keyhash, RpcError> {
    Ok(string_param(values, 0, "keyhash")?.parse::<Keyhash>()?)
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a dotted protocol version such as `1.4` into comparable parts.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

/// Negotiates the protocol version from `server.version`'s second parameter: absent, a
/// single version, or a `[min, max]` pair, as Electrum clients send it.
pub fn negotiate_protocol(arg: Option<&Value>) -> Result<&'static str, RpcError> {
    let bad = |reason: &str| RpcError::InvalidParam {
        index: 1,
        name: "protocol_version",
        reason: reason.into(),
    };
    let (min, max) = match arg {
        None | Some(Value::Null) => (PROTOCOL_VERSION.to_owned(), PROTOCOL_VERSION.to_owned()),
        Some(Value::String(v)) => (v.clone(), v.clone()),
        Some(Value::Array(pair)) => match pair.as_slice() {
            [Value::String(v)] => (v.clone(), v.clone()),
            [Value::String(lo), Value::String(hi)] => (lo.clone(), hi.clone()),
            _ => {
                return Err(bad(
                    "expected a version string or a [min, max] pair of strings",
                ))
            }
        },
        Some(_) => {
            return Err(bad(
                "expected a version string or a [min, max] pair of strings",
            ))
        }
    };
    let (Some(lo), Some(hi)) = (parse_version(&min), parse_version(&max)) else {
        return Err(bad("versions must be dotted numbers such as \"1.4\""));
    };
    let ours = parse_version(PROTOCOL_VERSION).unwrap_or_default();
    if lo <= ours && ours <= hi {
        Ok(PROTOCOL_VERSION)
    } else {
        Err(RpcError::UnsupportedProtocol {
            client_min: min,
            client_max: max,
            server: PROTOCOL_VERSION,
        })
    }
}

/// Builds the module with every method of the API.
pub fn build_module(ctx: ApiContext) -> RpcModule<ApiContext> {
    let mut module = RpcModule::new(ctx);
    register(&mut module).expect("method names are unique and registered once");
    module
}

fn register(
    module: &mut RpcModule<ApiContext>,
) -> Result<(), jsonrpsee::core::RegisterMethodError> {
    module.register_method("server.version", |params, _, _| {
        let values = positional(&params, "server.version", 0, 2)?;
        if let Some(name) = values.first() {
            if !matches!(name, Value::String(_) | Value::Null) {
                return Err(RpcError::InvalidParam {
                    index: 0,
                    name: "client_name",
                    reason: format!("expected a string, got {}", json_type(name)),
                });
            }
        }
        let version = negotiate_protocol(values.get(1))?;
        tracing::debug!(client = ?values.first(), protocol = version, "server.version");
        Ok::<_, RpcError>(json!([SERVER_VERSION, version]))
    })?;
    module.register_method("server.ping", |params, _, _| {
        positional(&params, "server.ping", 0, 0)?;
        Ok::<_, RpcError>(Value::Null)
    })?;
    module.register_method("server.banner", |params, ctx, _| {
        positional(&params, "server.banner", 0, 0)?;
        Ok::<_, RpcError>(ctx.banner.clone())
    })?;
    module.register_method("server.donation_address", |params, ctx, _| {
        positional(&params, "server.donation_address", 0, 0)?;
        Ok::<_, RpcError>(ctx.donation_address.clone())
    })?;
    module.register_method("server.peers.subscribe", |params, _, _| {
        positional(&params, "server.peers.subscribe", 0, 0)?;
        Ok::<_, RpcError>(json!([]))
    })?;
    module.register_method("server.features", |params, ctx, _| {
        positional(&params, "server.features", 0, 0)?;
        Ok::<_, RpcError>(json!({
            "genesis_hash": ctx.network.genesis_hash(),
            "hosts": {},
            "protocol_min": PROTOCOL_VERSION,
            "protocol_max": PROTOCOL_VERSION,
            "pruning": null,
            "server_version": SERVER_VERSION,
            "hash_function": "sha256",
        }))
    })?;
    module.register_async_method(
        "cosigner.put",
        |params, ctx: Arc<ApiContext>, ext| async move {
            // The client's put rate first: a flood is refused before its megabyte is parsed.
            ctx.mailbox.take_put(
                ext.get::<crate::admission::ClientAddr>().map(|c| c.0),
                params.as_str().map_or(0, str::len),
            )?;
            let values = positional(&params, "cosigner.put", 2, 2)?;
            let key = keyhash_param(&values)?;
            let message = string_param(&values, 1, "message")?;
            if let Some(service) = &ctx.service {
                if service.is_satellite_keyhash(key).await? {
                    // A signing request: never stored in the slot, each its own request.
                    ctx.mailbox.check_message(&message)?;
                    let id = service.submit_mailbox_message(&message).await?;
                    return Ok::<_, RpcError>(Value::String(id.to_string()));
                }
            }
            ctx.mailbox.put(key, message).await?;
            Ok::<_, RpcError>(Value::Null)
        },
    )?;
    module.register_async_method(
        "cosigner.get",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "cosigner.get", 1, 1)?;
            let key = keyhash_param(&values)?;
            Ok::<_, RpcError>(ctx.mailbox.get(key).await?)
        },
    )?;
    module.register_async_method(
        "cosigner.delete",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "cosigner.delete", 1, 1)?;
            let key = keyhash_param(&values)?;
            Ok::<_, RpcError>(ctx.mailbox.delete(key).await?)
        },
    )?;
    rpc_signing::register(module)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_electrum_clients_ask() {
        assert_eq!(negotiate_protocol(None), Ok("1.4"));
        assert_eq!(negotiate_protocol(Some(&json!("1.4"))), Ok("1.4"));
        assert_eq!(negotiate_protocol(Some(&json!(["1.4", "1.6"]))), Ok("1.4"));
        assert_eq!(
            negotiate_protocol(Some(&json!(["1.2", "1.4.2"]))),
            Ok("1.4")
        );
        assert!(matches!(
            negotiate_protocol(Some(&json!("1.2"))),
            Err(RpcError::UnsupportedProtocol { .. })
        ));
        assert!(matches!(
            negotiate_protocol(Some(&json!(["1.5", "1.6"]))),
            Err(RpcError::UnsupportedProtocol { .. })
        ));
        assert!(matches!(
            negotiate_protocol(Some(&json!(["one", "1.6"]))),
            Err(RpcError::InvalidParam { index: 1, .. })
        ));
        assert!(matches!(
            negotiate_protocol(Some(&json!(14))),
            Err(RpcError::InvalidParam { index: 1, .. })
        ));
    }
}
