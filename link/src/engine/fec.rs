//! Reed-Solomon erasure coding of a message's fragments: how much parity a loss rate asks
//! for, and joining fragments back into the message, rebuilding lost data from parity.

/// Most fragments (data + parity) an erasure-coded message may have (GF(256)).
pub(super) const MAX_FEC_SHARDS: usize = 255;

/// Parity fragments for `k` data fragments so that at most 5% of transmissions lose more
/// than the parity can replace, at loss rate `p`.
pub fn parity_for(k: usize, p: f64) -> usize {
    if p <= 0.0 || k == 0 {
        return 0;
    }
    let p = p.min(0.9);
    for r in 0..=MAX_FEC_SHARDS.saturating_sub(k) {
        let n = k + r;
        // P(losses <= r) for Binomial(n, p).
        let mut term = (1.0 - p).powi(n as i32);
        let mut cdf = term;
        for i in 1..=r {
            term *= (n - i + 1) as f64 / i as f64 * p / (1.0 - p);
            cdf += term;
        }
        if 1.0 - cdf <= 0.05 {
            return r;
        }
    }
    MAX_FEC_SHARDS.saturating_sub(k)
}

pub(super) fn rs(
    data: usize,
    parity: usize,
) -> Option<reed_solomon_erasure::galois_8::ReedSolomon> {
    reed_solomon_erasure::galois_8::ReedSolomon::new(data, parity).ok()
}

/// Joins a message's fragments, reconstructing missing data from parity if needed.
pub(super) fn assemble(parts: Vec<Option<Vec<u8>>>, data: usize) -> Option<Vec<u8>> {
    if parts.len() == data {
        return Some(parts.into_iter().flatten().flatten().collect());
    }
    let mut shards = parts;
    let size = shards.iter().flatten().map(Vec::len).next()?;
    if shards.iter().flatten().any(|s| s.len() != size) {
        return None;
    }
    rs(data, shards.len() - data)?
        .reconstruct_data(&mut shards)
        .ok()?;
    let framed: Vec<u8> = shards.into_iter().take(data).flatten().flatten().collect();
    let mut rest = framed.as_slice();
    let len = usize::try_from(crate::frame::get_varint(&mut rest)?).ok()?;
    rest.get(..len).map(<[u8]>::to_vec)
}
