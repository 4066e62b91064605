//! One frame on the air, byte by byte (see `schemas/link-frames.md`):
//!
//! ```text
//! frame  = header(7) || ciphertext || tag(16) || crc32c(4)
//! header = version(1: 0x10 | direction) || counter(6, big-endian)
//! ```
//!
//! The CRC-32C (as CubeSat Space Protocol uses) rejects frames damaged on the air before any
//! cryptography runs; ChaCha20-Poly1305 then authenticates the header (as associated data)
//! and decrypts the body. The nonce is the 48-bit counter, which each sender never reuses.
//! Inside, one record:
//!
//! ```text
//! record = kind(low 4 bits) | flags(high 4 bits) || fields
//! DATA   (1): msg_id varint, index varint, count varint, [parity varint if flag 0x2], chunk (rest)
//! ACK    (2): n varint, msg_id varint × n
//! REPORT (3): msg_id varint, count varint, received bitmap (ceil(count/8) bytes, LSB first)
//! flags: 0x1 = last frame of this transmission (the peer may transmit now)
//!        0x2 = (DATA) the message is erasure-coded: `count` data fragments, `parity` more
//! ```

/// Version nibble of this frame format.
pub const VERSION: u8 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 7;
/// AEAD tag bytes.
pub const TAG_LEN: usize = 16;
/// CRC bytes.
pub const CRC_LEN: usize = 4;
/// Bytes every frame spends outside its record.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN + CRC_LEN;
/// Largest counter (48 bits).
pub const MAX_COUNTER: u64 = (1 << 48) - 1;

/// Flag: the last frame of a transmission.
pub const FLAG_END_OF_BURST: u8 = 0x1;
/// Flag (DATA): the message carries Reed-Solomon parity fragments.
pub const FLAG_FEC: u8 = 0x2;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// Why a frame was rejected. Each is counted in the link's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than any frame.
    #[error("frame too short")]
    TooShort,
    /// The CRC does not match: damaged on the air.
    #[error("CRC mismatch")]
    BadCrc,
    /// Another version, or a frame from our own direction.
    #[error("wrong version or direction")]
    WrongHeader,
    /// Authentication failed: forged, or sealed with another key.
    #[error("authentication failed")]
    Forged,
    /// A counter seen before: a replay.
    #[error("replayed frame")]
    Replayed,
    /// A counter too old to tell: stale.
    #[error("stale frame")]
    Stale,
    /// Authentic but the record inside does not parse.
    #[error("malformed record")]
    Malformed,
}

/// A record carried by one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A fragment of a message.
    Data {
        /// The message.
        msg_id: u64,
        /// Fragment index.
        index: u32,
        /// Data fragments in the message.
        count: u32,
        /// Parity fragments after them (0: no erasure coding).
        parity: u32,
        /// Fragment bytes.
        chunk: Vec<u8>,
    },
    /// Messages delivered (or already delivered before).
    Ack {
        /// Their ids.
        msg_ids: Vec<u64>,
    },
    /// Which fragments of a message arrived so far.
    Report {
        /// The message.
        msg_id: u64,
        /// Fragments in the message.
        count: u32,
        /// Bit i set: fragment i arrived.
        received: Vec<u8>,
    },
}

/// A record with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// The record.
    pub record: Record,
}

/// Writes `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint; `None` if truncated or over 64 bits.
pub fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            if shift == 63 && b > 1 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

/// Size of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7).max(1)
}

impl Plain {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let kind = match &self.record {
            Record::Data { .. } => 1,
            Record::Ack { .. } => 2,
            Record::Report { .. } => 3,
        };
        let fec = matches!(&self.record, Record::Data { parity, .. } if *parity > 0);
        let flags = if fec {
            self.flags | FLAG_FEC
        } else {
            self.flags & !FLAG_FEC
        };
        out.push(kind | (flags << 4));
        match &self.record {
            Record::Data {
                msg_id,
                index,
                count,
                parity,
                chunk,
            } => {
                put_varint(&mut out, *msg_id);
                put_varint(&mut out, u64::from(*index));
                put_varint(&mut out, u64::from(*count));
                if *parity > 0 {
                    put_varint(&mut out, u64::from(*parity));
                }
                out.extend_from_slice(chunk);
            }
            Record::Ack { msg_ids } => {
                put_varint(&mut out, msg_ids.len() as u64);
                for id in msg_ids {
                    put_varint(&mut out, *id);
                }
            }
            Record::Report {
                msg_id,
                count,
                received,
            } => {
                put_varint(&mut out, *msg_id);
                put_varint(&mut out, u64::from(*count));
                out.extend_from_slice(received);
            }
        }
        out
    }

    /// Decodes a record; never panics.
    pub fn decode(mut buf: &[u8]) -> Result<Plain, FrameError> {
        let (&first, rest) = buf.split_first().ok_or(FrameError::Malformed)?;
        buf = rest;
        let flags = first >> 4;
        let u32v = |b: &mut &[u8]| -> Result<u32, FrameError> {
            get_varint(b)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(FrameError::Malformed)
        };
        let record = match first & 0x0f {
            1 => {
                let msg_id = get_varint(&mut buf).ok_or(FrameError::Malformed)?;
                let index = u32v(&mut buf)?;
                let count = u32v(&mut buf)?;
                let parity = if flags & FLAG_FEC != 0 {
                    let p = u32v(&mut buf)?;
                    if p == 0 || count.saturating_add(p) > 255 {
                        return Err(FrameError::Malformed);
                    }
                    p
                } else {
                    0
                };
                if count == 0 || index >= count.saturating_add(parity) {
                    return Err(FrameError::Malformed);
                }
                Record::Data {
                    msg_id,
                    index,
                    count,
                    parity,
                    chunk: buf.to_vec(),
                }
            }
            2 => {
                let n = get_varint(&mut buf).ok_or(FrameError::Malformed)?;
                if n > buf.len() as u64 {
                    return Err(FrameError::Malformed);
                }
                let mut msg_ids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    msg_ids.push(get_varint(&mut buf).ok_or(FrameError::Malformed)?);
                }
                if !buf.is_empty() {
                    return Err(FrameError::Malformed);
                }
                Record::Ack { msg_ids }
            }
            3 => {
                let msg_id = get_varint(&mut buf).ok_or(FrameError::Malformed)?;
                let count = u32v(&mut buf)?;
                if count == 0 || buf.len() != (count as usize).div_ceil(8) {
                    return Err(FrameError::Malformed);
                }
                Record::Report {
                    msg_id,
                    count,
                    received: buf.to_vec(),
                }
            }
            _ => return Err(FrameError::Malformed),
        };
        Ok(Plain { flags, record })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut s = b.as_slice();
            assert_eq!(get_varint(&mut s), Some(v));
            assert!(s.is_empty());
        }
        assert_eq!(get_varint(&mut &[0x80u8][..]), None);
        assert_eq!(get_varint(&mut &[0xffu8; 11][..]), None);
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (iSCSI, as CSP uses).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn records_round_trip() {
        for r in [
            Plain {
                flags: 1,
                record: Record::Data {
                    msg_id: 9,
                    index: 2,
                    count: 3,
                    parity: 0,
                    chunk: vec![1, 2, 3],
                },
            },
            Plain {
                flags: 1 | FLAG_FEC,
                record: Record::Data {
                    msg_id: 9,
                    index: 4,
                    count: 3,
                    parity: 2,
                    chunk: vec![1, 2, 3],
                },
            },
            Plain {
                flags: 0,
                record: Record::Ack {
                    msg_ids: vec![1, 500, 7],
                },
            },
            Plain {
                flags: 1,
                record: Record::Report {
                    msg_id: 4,
                    count: 9,
                    received: vec![0xff, 0x01],
                },
            },
        ] {
            assert_eq!(Plain::decode(&r.encode()), Ok(r));
        }
        assert_eq!(
            Plain::decode(&[1, 5, 3, 3]),
            Err(FrameError::Malformed),
            "index >= count"
        );
        assert_eq!(
            Plain::decode(&[3, 4, 9, 0xff]),
            Err(FrameError::Malformed),
            "short bitmap"
        );
    }
}
