//! Messages between the bridge and the cosigner, defined once and used by both sides.
//!
//! Encoding: one version byte ([`PROTOCOL_VERSION`]) followed by the message in postcard
//! (serde's compact binary format: varint integers, length-prefixed byte strings, enum
//! variants as varint indices). The layout is documented byte by byte in
//! `schemas/cosigner-messages.md`. Decoding never panics and refuses trailing bytes,
//! unknown versions and oversize input.

use serde::{Deserialize, Serialize};

use crate::air::{CompactSign, CompactSignatures};
use crate::decision::{RequestId, SignRequest};
use crate::policy::{Policy, PolicyChange};
use crate::refusal::Refusal;
use crate::wallet::WalletId;

/// Version byte that starts every encoded message.
pub const PROTOCOL_VERSION: u8 = 3;
/// Largest encoded message accepted (a PSBT of hundreds of inputs fits easily).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What the bridge asks of the cosigner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Who are you? Answered with [`Response::Info`].
    Hello,
    /// Register a wallet (after the user confirmed by email).
    RegisterWallet(RegisterWallet),
    /// Change a wallet's policy (after the user confirmed by email).
    UpdatePolicy(UpdatePolicy),
    /// Cosign a PSBT (after the user confirmed by email).
    Sign(SignRequest),
    /// Cosign, in the compact form of [`crate::air`] (the bridge's usual choice).
    SignCompact(CompactSign),
    /// The user cancelled a signing request (a held one, usually): never sign it.
    Cancel(Cancel),
}

/// Cancel a signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The wallet.
    pub wallet_id: WalletId,
    /// The request.
    pub request_id: RequestId,
}

/// Outcome of a [`Cancel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// Recorded: the request is never signed.
    Cancelled,
    /// Too late: the satellite signed it before the cancel arrived.
    AlreadySigned,
    /// The wallet is not registered with this cosigner.
    UnknownWallet,
}

/// What the cosigner answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The cosigner's identity.
    Info(Info),
    /// Outcome of a registration.
    WalletRegistered(RegisterOutcome),
    /// Outcome of a policy update.
    PolicyUpdated(PolicyOutcome),
    /// Outcome of a signing request.
    Sign(SignResponse),
    /// The request could not be decoded or handled at all.
    Error {
        /// Why.
        reason: String,
    },
    /// Outcome of a compact signing request.
    SignCompact(CompactSignResponse),
    /// Outcome of a cancel.
    Cancel(CancelOutcome),
}

/// Outcome of a [`CompactSign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSignResponse {
    /// The request answered.
    pub request_id: RequestId,
    /// Signed or refused.
    pub outcome: CompactOutcome,
}

/// Signed (the satellite's signatures only) or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompactOutcome {
    /// One signature per input, in order.
    Signed(CompactSignatures),
    /// Refused, with the reason.
    Refused(Refusal),
}

/// The cosigner's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Software version.
    pub version: String,
    /// Protocol version spoken.
    pub protocol: u8,
    /// Network (`bitcoin`, `testnet`, `signet`, `regtest`...).
    pub network: String,
    /// The account key that wallet keys derive from, in descriptor form
    /// (`[fp/48h/1h/0h/2h]tpub...`): the bridge's secret, never published (see
    /// [`crate::keys`]). It signs nothing itself.
    pub issuer_key: String,
}

/// Register a wallet with its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWallet {
    /// One multipath descriptor, or the `/0/*` and `/1/*` pair.
    pub descriptors: Vec<String>,
    /// The wallet's initial policy.
    pub policy: Policy,
    /// The index of the wallet key the bridge issued for it (see [`crate::keys`]).
    pub key_index: u32,
}

/// Outcome of [`RegisterWallet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutcome {
    /// Registered (or already registered with the same descriptor: idempotent).
    Registered {
        /// The wallet's id.
        wallet_id: WalletId,
    },
    /// Refused, with the reason.
    Refused {
        /// What is wrong with the descriptor or policy.
        reason: String,
    },
}

/// Change a wallet's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// The wallet.
    pub wallet_id: WalletId,
    /// The new policy.
    pub policy: Policy,
}

/// Outcome of [`UpdatePolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyOutcome {
    /// Applied now, or deferred because it loosens something.
    Changed(PolicyChange),
    /// Refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Outcome of a [`SignRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The request answered.
    pub request_id: RequestId,
    /// Signed or refused.
    pub outcome: SignOutcome,
}

/// Signed or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignOutcome {
    /// The PSBT with the satellite's signatures added.
    Signed {
        /// BIP-174 bytes.
        psbt: Vec<u8>,
    },
    /// Refused, with the reason.
    Refused(Refusal),
}

/// Why bytes could not be decoded as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// A protocol version this build does not speak.
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes remain after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Serializing these plain data types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// Bytes of the correlation id that starts every message on the link.
pub const ENVELOPE_ID_BYTES: usize = 16;

/// Wraps an encoded message for the link: the bridge's request id (16 bytes), then the
/// message. The cosigner answers with the same id, so the bridge matches each answer to its
/// request whatever order the link delivers them in.
pub fn seal_envelope(id: &RequestId, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_ID_BYTES + message.len());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(message);
    out
}

/// Splits a link message into its correlation id and the encoded message.
pub fn open_envelope(bytes: &[u8]) -> Result<(RequestId, &[u8]), DecodeError> {
    if bytes.len() <= ENVELOPE_ID_BYTES {
        return Err(DecodeError::Malformed(format!(
            "link message of {} bytes is too short for its {ENVELOPE_ID_BYTES}-byte id",
            bytes.len()
        )));
    }
    let (id, body) = bytes.split_at(ENVELOPE_ID_BYTES);
    let mut rid = [0u8; ENVELOPE_ID_BYTES];
    rid.copy_from_slice(id);
    Ok((RequestId(rid), body))
}

impl Request {
    /// Encodes for the link.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes from the link.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        decode(bytes)
    }
}

impl Response {
    /// Encodes for the link.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes from the link.
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Approval, SignRequest};
    use bitcoin::hashes::Hash as _;

    /// Golden vectors: the byte layout documented in `schemas/cosigner-messages.md`.
    #[test]
    fn encoding_is_the_documented_layout() {
        assert_eq!(Request::Hello.encode(), [3, 0]);
        let refused = Response::Sign(SignResponse {
            request_id: RequestId([0xaa; 16]),
            outcome: SignOutcome::Refused(Refusal::UnknownWallet {
                wallet_id: WalletId([0xbb; 16]),
            }),
        });
        let mut expected = vec![3, 3];
        expected.extend([0xaa; 16]);
        expected.extend([1, 0]);
        expected.extend([0xbb; 16]);
        assert_eq!(refused.encode(), expected);

        let sign = Request::Sign(SignRequest {
            request_id: RequestId([1; 16]),
            wallet_id: WalletId([2; 16]),
            psbt: vec![0x70, 0x73],
            approval: Approval {
                request_id: RequestId([1; 16]),
                txid: bitcoin::Txid::from_byte_array([3; 32]),
                approved_at: 300,
            },
            replaces: None,
        });
        let mut expected = vec![3, 3];
        expected.extend([1; 16]);
        expected.extend([2; 16]);
        expected.extend([2, 0x70, 0x73]);
        expected.extend([1; 16]);
        expected.push(32);
        expected.extend([3; 32]);
        expected.extend([0xac, 0x02]); // 300 as a varint
        expected.push(0); // replaces: None
        assert_eq!(sign.encode(), expected);
        assert_eq!(Request::decode(&expected), Ok(sign));
    }
}
