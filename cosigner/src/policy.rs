//! Per-wallet spending policy, and the rule that loosening waits while tightening is instant.
//!
//! A compromised ground segment could try to raise a wallet's limits and then spend; so a
//! change that makes any limit looser only takes effect after the cosigner's configured
//! delay, during which the user is told and can react. A change that only tightens applies
//! at once.

use serde::{Deserialize, Serialize};

/// The limits one wallet's spends must respect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Most that may leave the wallet in one transaction (outputs that are not change, plus fee), sat.
    pub max_per_tx_sat: u64,
    /// Most that may leave the wallet within any rolling `period_secs`, sat.
    pub max_per_period_sat: u64,
    /// Length of the rolling period, seconds.
    pub period_secs: u64,
    /// Highest absolute fee, sat.
    pub max_fee_sat: u64,
    /// Highest fee rate, sat per virtual byte.
    pub max_fee_rate_sat_vb: u64,
    /// If set, the only output scripts non-change outputs may pay. In JSON and TOML each
    /// entry is an address or a script_pubkey in hex (shown as hex); in binary encodings
    /// (the link, the databases) the script's bytes.
    #[serde(default, with = "allowlist_text")]
    pub allowlist: Option<Vec<Vec<u8>>>,
    /// Seconds that must pass between the user's approval and the signature.
    pub min_approval_delay_secs: u64,
}

/// An allowlist entry as people write it: an address (any network's: the script is the
/// same) or an output script in hex.
pub fn parse_allowlist_entry(entry: &str) -> Result<Vec<u8>, String> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>() {
        return Ok(address.assume_checked().script_pubkey().to_bytes());
    }
    match hex::decode(entry) {
        Ok(script) if !script.is_empty() => Ok(script),
        _ => Err(format!(
            "allowlist entry `{entry}` is neither an address nor an output script in hex"
        )),
    }
}

/// Allowlists as text for people (JSON, TOML) and as bytes for machines (postcard).
mod allowlist_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.as_ref()
                .map(|l| l.iter().map(hex::encode).collect::<Vec<_>>())
                .serialize(s)
        } else {
            v.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<u8>>>, D::Error> {
        if d.is_human_readable() {
            let text: Option<Vec<String>> = Option::deserialize(d)?;
            text.map(|l| {
                l.iter()
                    .map(|e| super::parse_allowlist_entry(e).map_err(D::Error::custom))
                    .collect()
            })
            .transpose()
        } else {
            Option::<Vec<Vec<u8>>>::deserialize(d)
        }
    }
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A value that makes no sense.
    #[error("policy field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Policy {
    /// Checks internal consistency.
    pub fn check(&self) -> Result<(), PolicyError> {
        let invalid = |field, reason: &str| {
            Err(PolicyError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.period_secs == 0 {
            return invalid("period_secs", "must be at least 1");
        }
        if self.max_per_tx_sat > self.max_per_period_sat {
            return invalid("max_per_tx_sat", "must not exceed max_per_period_sat");
        }
        if self.max_per_period_sat > 21_000_000 * 100_000_000 {
            return invalid("max_per_period_sat", "exceeds the bitcoin supply");
        }
        if let Some(list) = &self.allowlist {
            if list.is_empty() {
                return invalid(
                    "allowlist",
                    "an empty allowlist would refuse every spend; omit it instead",
                );
            }
            if list.iter().any(|s| s.is_empty() || s.len() > 80) {
                return invalid(
                    "allowlist",
                    "entries must be output scripts of 1..=80 bytes",
                );
            }
        }
        Ok(())
    }

    /// Whether `self` is at least as strict as `old` in every respect.
    pub fn is_tightening_of(&self, old: &Policy) -> bool {
        let allowlist_tighter = match (&self.allowlist, &old.allowlist) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(new), Some(old)) => new.iter().all(|s| old.contains(s)),
        };
        self.max_per_tx_sat <= old.max_per_tx_sat
            && self.max_per_period_sat <= old.max_per_period_sat
            // A longer period over the same amount is stricter.
            && self.period_secs >= old.period_secs
            && self.max_fee_sat <= old.max_fee_sat
            && self.max_fee_rate_sat_vb <= old.max_fee_rate_sat_vb
            && self.min_approval_delay_secs >= old.min_approval_delay_secs
            && allowlist_tighter
    }
}

/// A wallet's policy, with any loosening that is waiting for its delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// The policy in force.
    pub current: Policy,
    /// A looser policy and the time (unix seconds) it takes effect.
    pub pending: Option<(Policy, u64)>,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyChange {
    /// The new policy applies now.
    Applied,
    /// The new policy loosens something; it applies at this time (unix seconds).
    Deferred {
        /// When it takes effect.
        effective_at: u64,
    },
}

impl PolicyState {
    /// A state with `policy` in force.
    pub fn new(policy: Policy) -> PolicyState {
        PolicyState {
            current: policy,
            pending: None,
        }
    }

    /// The policy in force at `now` (a pending loosening whose time has come applies).
    pub fn effective(&self, now: u64) -> &Policy {
        match &self.pending {
            Some((p, at)) if *at <= now => p,
            _ => &self.current,
        }
    }

    /// Applies an update requested at `now`, with `loosen_delay` seconds for loosening.
    pub fn update(&mut self, new: Policy, now: u64, loosen_delay: u64) -> PolicyChange {
        let in_force = self.effective(now).clone();
        if new.is_tightening_of(&in_force) {
            // Tightening also cancels any loosening still waiting.
            self.current = new;
            self.pending = None;
            PolicyChange::Applied
        } else {
            self.current = in_force;
            let effective_at = now.saturating_add(loosen_delay);
            self.pending = Some((new, effective_at));
            PolicyChange::Deferred { effective_at }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        Policy {
            max_per_tx_sat: 1_000_000,
            max_per_period_sat: 5_000_000,
            period_secs: 86_400,
            max_fee_sat: 50_000,
            max_fee_rate_sat_vb: 200,
            allowlist: None,
            min_approval_delay_secs: 0,
        }
    }

    #[test]
    fn allowlists_read_addresses_and_hex_and_keep_their_binary_form() {
        let p2wpkh = "0014751e76e8199196d454941c45d1b3a323f1433bd6";
        let json = serde_json::json!({
            "max_per_tx_sat": 1, "max_per_period_sat": 1, "period_secs": 1,
            "max_fee_sat": 1, "max_fee_rate_sat_vb": 1, "min_approval_delay_secs": 0,
            "allowlist": ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", p2wpkh,
                          "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"],
        });
        let p: Policy = serde_json::from_value(json).expect("parses");
        let script = hex::decode(p2wpkh).expect("hex");
        // The mainnet and testnet spellings of one key hash are one script.
        assert_eq!(p.allowlist, Some(vec![script.clone(); 3]));
        let shown = serde_json::to_value(&p).expect("json");
        assert_eq!(
            shown["allowlist"],
            serde_json::json!([p2wpkh, p2wpkh, p2wpkh])
        );
        // Binary: the script bytes, exactly as before this text form existed.
        #[derive(Serialize)]
        struct Plain {
            a: u64,
            b: u64,
            c: u64,
            d: u64,
            e: u64,
            allowlist: Option<Vec<Vec<u8>>>,
            f: u64,
        }
        let plain = Plain {
            a: 1,
            b: 1,
            c: 1,
            d: 1,
            e: 1,
            allowlist: p.allowlist.clone(),
            f: 0,
        };
        let bytes = postcard::to_stdvec(&p).expect("postcard");
        assert_eq!(bytes, postcard::to_stdvec(&plain).expect("postcard"));
        assert_eq!(postcard::from_bytes::<Policy>(&bytes).expect("back"), p);
        // TOML, as in a config file; a typo is named.
        let t: Policy = toml::from_str(&format!(
            "max_per_tx_sat = 1\nmax_per_period_sat = 1\nperiod_secs = 1\nmax_fee_sat = 1\n\
             max_fee_rate_sat_vb = 1\nmin_approval_delay_secs = 0\nallowlist = [\"{p2wpkh}\"]\n"
        ))
        .expect("toml");
        assert_eq!(t.allowlist, Some(vec![script]));
        let err = serde_json::from_value::<Policy>(serde_json::json!({
            "max_per_tx_sat": 1, "max_per_period_sat": 1, "period_secs": 1,
            "max_fee_sat": 1, "max_fee_rate_sat_vb": 1, "min_approval_delay_secs": 0,
            "allowlist": ["bc1qnotanaddress"],
        }))
        .expect_err("refused");
        assert!(
            err.to_string().contains("`bc1qnotanaddress` is neither"),
            "{err}"
        );
    }

    #[test]
    fn tightening_is_immediate_loosening_waits() {
        let mut state = PolicyState::new(base());
        let tighter = Policy {
            max_per_tx_sat: 500_000,
            ..base()
        };
        assert_eq!(
            state.update(tighter.clone(), 100, 3600),
            PolicyChange::Applied
        );
        assert_eq!(state.effective(100), &tighter);

        let looser = Policy {
            max_per_tx_sat: 2_000_000,
            max_per_period_sat: 9_000_000,
            ..base()
        };
        assert_eq!(
            state.update(looser.clone(), 200, 3600),
            PolicyChange::Deferred { effective_at: 3800 }
        );
        assert_eq!(
            state.effective(3799),
            &tighter,
            "still the old limits before the delay"
        );
        assert_eq!(state.effective(3800), &looser);

        // Tightening while a loosening waits cancels the loosening.
        let mut state = PolicyState::new(base());
        state.update(looser, 0, 3600);
        state.update(tighter.clone(), 10, 3600);
        assert_eq!(state.effective(10_000), &tighter);
    }

    #[test]
    fn adding_an_allowlist_tightens_removing_it_loosens() {
        let with = Policy {
            allowlist: Some(vec![vec![0x00, 0x14]]),
            ..base()
        };
        assert!(with.is_tightening_of(&base()));
        assert!(!base().is_tightening_of(&with));
        assert!(base().is_tightening_of(&base()));
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        assert!(Policy {
            period_secs: 0,
            ..base()
        }
        .check()
        .is_err());
        assert!(Policy {
            max_per_tx_sat: 6_000_000,
            ..base()
        }
        .check()
        .is_err());
        assert!(Policy {
            allowlist: Some(vec![]),
            ..base()
        }
        .check()
        .is_err());
        assert!(base().check().is_ok());
    }
}
