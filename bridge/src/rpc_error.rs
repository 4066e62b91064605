//! JSON-RPC error codes and the error type every method returns.
//!
//! All codes the bridge can send live here, so that clients (the plugin, scripts) and
//! `schemas/openrpc.json` have one place to agree with. Standard JSON-RPC 2.0 codes are
//! used for protocol-level failures; application errors use the `-320xx` server range.
//! Every error carries a `data` object naming what was wrong (a parameter, a size, a limit).

use jsonrpsee::types::ErrorObjectOwned;
use serde_json::json;

/// Invalid JSON was received.
pub const PARSE_ERROR: i32 = -32700;
/// The JSON sent is not a valid request object (or is an empty batch).
pub const INVALID_REQUEST: i32 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Wrong number or type of parameters, or a parameter value that is not acceptable.
pub const INVALID_PARAMS: i32 = -32602;
/// The bridge failed internally (storage, I/O); the request may be retried.
pub const INTERNAL_ERROR: i32 = -32603;
/// The client asked for a protocol version range the bridge does not speak.
pub const UNSUPPORTED_PROTOCOL: i32 = -32001;
/// A request line or body exceeded the configured size limit.
pub const OVERSIZED_REQUEST: i32 = -32007;
/// An answer exceeded the configured size limit (jsonrpsee's code for the same on HTTP).
pub const OVERSIZED_RESPONSE: i32 = -32008;
/// A batch held more calls than the configured limit.
pub const BATCH_TOO_LARGE: i32 = -32010;

/// The bridge has no satellite configured (mailbox-only mode).
pub const NO_SATELLITE: i32 = -32020;
/// No such wallet or request.
pub const NOT_FOUND: i32 = -32021;
/// The wallet or request is not in a state that allows the call.
pub const WRONG_STATE: i32 = -32022;
/// The PSBT is refused: it does not match the wallet, or the policy would refuse it.
pub const REFUSED: i32 = -32023;
/// The confirmation code is wrong, expired, or approves other content; or the request was
/// voided after too many wrong codes.
pub const BAD_CODE: i32 = -32024;
/// A rate limit was hit.
pub const RATE_LIMITED: i32 = -32025;
/// The upstream Electrum server or the mail server failed; try again later.
pub const UPSTREAM_FAILED: i32 = -32026;
/// An operator's method was called without the operator's token (or it is off).
pub const NOT_OPERATOR: i32 = -32027;

/// An error a JSON-RPC method returns; converted to a JSON-RPC error object on the wire.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RpcError {
    /// Parameter count is outside what the method takes.
    #[error("{method} takes {min} to {max} parameters, got {got}")]
    ParamCount {
        /// Method called.
        method: &'static str,
        /// Fewest parameters accepted.
        min: usize,
        /// Most parameters accepted.
        max: usize,
        /// Parameters received.
        got: usize,
    },
    /// Params were neither absent nor a JSON array (this API is positional, as Electrum's).
    #[error("params must be an array (positional), as in the Electrum protocol")]
    ParamsNotArray,
    /// One parameter has the wrong type or value.
    #[error("parameter {index} ({name}): {reason}")]
    InvalidParam {
        /// Zero-based position of the parameter.
        index: usize,
        /// Name of the parameter in `schemas/openrpc.json`.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The decoded mailbox message is larger than allowed.
    #[error("message is {size} bytes decoded; the limit is {max}")]
    MessageTooLarge {
        /// Decoded size received.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// No protocol version in the client's range is spoken here.
    #[error("unsupported protocol version: client wants {client_min}..={client_max}, bridge speaks {server}")]
    UnsupportedProtocol {
        /// Lowest version the client accepts.
        client_min: String,
        /// Highest version the client accepts.
        client_max: String,
        /// The version the bridge speaks.
        server: &'static str,
    },
    /// The connection holds as many subscriptions as it may.
    #[error(
        "this connection already holds {max} subscriptions, the limit; close it or use another"
    )]
    TooManySubscriptions {
        /// The limit.
        max: usize,
    },
    /// Storage failed; nothing was changed by this call.
    #[error("storage error: {0}")]
    Storage(String),
    /// A wallet or request call failed; `code` is one of the codes above.
    #[error("{message}")]
    Service {
        /// JSON-RPC code.
        code: i32,
        /// What was wrong.
        message: String,
        /// Details (reason code, attempts left, state...).
        data: Option<serde_json::Value>,
    },
}

impl From<crate::service::ServiceError> for RpcError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        let message = e.to_string();
        let (code, data) = match &e {
            E::BadDescriptor(_) => (INVALID_PARAMS, Some(json!({"param": "descriptor"}))),
            E::Invalid { field, .. } => (INVALID_PARAMS, Some(json!({"param": field}))),
            E::BadPsbt(_) => (INVALID_PARAMS, Some(json!({"param": "psbt"}))),
            E::Decrypt(_) => (INVALID_PARAMS, Some(json!({"param": "message"}))),
            E::UnknownWallet(id) => (NOT_FOUND, Some(json!({"wallet_id": id.to_string()}))),
            E::UnknownRequest(id) => (NOT_FOUND, Some(json!({"request_id": id.to_string()}))),
            E::NoWalletForPsbt => (NOT_FOUND, None),
            E::WalletExists { wallet_id, state } => (
                WRONG_STATE,
                Some(json!({"wallet_id": wallet_id.to_string(), "state": state})),
            ),
            E::WalletNotActive { wallet_id, state } => (
                WRONG_STATE,
                Some(json!({"wallet_id": wallet_id.to_string(), "state": state})),
            ),
            E::WrongState { id, state, .. } => (
                WRONG_STATE,
                Some(json!({"request_id": id.to_string(), "state": state})),
            ),
            E::Refused(r) => {
                let violations = r.violations();
                let data = if violations.is_empty() {
                    json!({"reason": r.code()})
                } else {
                    // Every rule of the policy the PSBT breaks, each with its figures.
                    json!({"reason": r.code(), "violations": violations})
                };
                (REFUSED, Some(data))
            }
            E::InputSpent {
                index,
                outpoint,
                spent_by,
                height,
            } => (
                REFUSED,
                Some(json!({
                    "reason": "input_spent",
                    "input": index,
                    "outpoint": outpoint.to_string(),
                    "spent_by": spent_by.to_string(),
                    "height": height,
                })),
            ),
            E::WrongCode { attempts_left, .. } => (
                BAD_CODE,
                Some(json!({"reason": "wrong_code", "attempts_left": attempts_left})),
            ),
            E::Voided(_) => (BAD_CODE, Some(json!({"reason": "voided"}))),
            E::CodeExpired(_) => (BAD_CODE, Some(json!({"reason": "expired"}))),
            E::ContentChanged(_) => (BAD_CODE, Some(json!({"reason": "content_changed"}))),
            E::RateLimited { retry_after, .. } => {
                (RATE_LIMITED, Some(json!({"retry_after": retry_after})))
            }
            E::Upstream(_) | E::Mail(_) => (UPSTREAM_FAILED, None),
            E::Store(_) => (INTERNAL_ERROR, None),
        };
        RpcError::Service {
            code,
            message,
            data,
        }
    }
}

impl From<crate::passes::ElementsError> for RpcError {
    fn from(e: crate::passes::ElementsError) -> Self {
        use crate::passes::ElementsError as E;
        let message = e.to_string();
        let (code, data) = match &e {
            E::Off | E::NotOperator => (NOT_OPERATOR, None),
            E::Bad(_) => (INVALID_PARAMS, Some(json!({"param": "line1"}))),
            E::Future { epoch } => (
                INVALID_PARAMS,
                Some(json!({"param": "line1", "epoch": epoch})),
            ),
            E::NotNewer { epoch, current } => (
                WRONG_STATE,
                Some(json!({"epoch": epoch, "current_epoch": current})),
            ),
            E::Save(_) => (INTERNAL_ERROR, None),
        };
        RpcError::Service {
            code,
            message,
            data,
        }
    }
}

impl RpcError {
    /// The JSON-RPC error code for this error.
    pub fn code(&self) -> i32 {
        match self {
            RpcError::ParamCount { .. }
            | RpcError::ParamsNotArray
            | RpcError::InvalidParam { .. }
            | RpcError::MessageTooLarge { .. } => INVALID_PARAMS,
            RpcError::UnsupportedProtocol { .. } => UNSUPPORTED_PROTOCOL,
            RpcError::Storage(_) => INTERNAL_ERROR,
            RpcError::TooManySubscriptions { .. } => RATE_LIMITED,
            RpcError::Service { code, .. } => *code,
        }
    }

    fn data(&self) -> Option<serde_json::Value> {
        match self {
            RpcError::ParamCount { min, max, got, .. } => {
                Some(json!({"min": min, "max": max, "got": got}))
            }
            RpcError::ParamsNotArray => None,
            RpcError::InvalidParam { index, name, .. } => {
                Some(json!({"index": index, "param": name}))
            }
            RpcError::MessageTooLarge { size, max } => {
                Some(json!({"param": "message", "size": size, "max": max}))
            }
            RpcError::UnsupportedProtocol { server, .. } => {
                Some(json!({"protocol_min": server, "protocol_max": server}))
            }
            RpcError::Storage(_) => None,
            RpcError::TooManySubscriptions { max } => Some(json!({"max": max})),
            RpcError::Service { data, .. } => data.clone(),
        }
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(e: RpcError) -> Self {
        ErrorObjectOwned::owned(e.code(), e.to_string(), e.data())
    }
}

/// A protocol-level error (parse, invalid request, oversize) as a response line with `id: null`.
pub fn protocol_error_line(code: i32, message: &str) -> String {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": null}).to_string()
}
