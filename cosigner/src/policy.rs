//! Per-wallet spending policy, and the rule that loosening waits while tightening is instant.
//!
//! A compromised ground segment could try to raise a wallet's limits and then spend; so a
//! change that makes any limit looser only takes effect after the cosigner's configured
//! delay, during which the user is told and can react. A change that only tightens applies
//! at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest delay a policy may set (a hold, an allowlist addition, between signatures): a
/// year. Longer is a typo, or a wallet frozen by accident; lockdown is the way to freeze.
pub const MAX_DELAY_SECS: u64 = 366 * 86_400;

/// The limits one wallet's spends must respect.
///
/// In JSON and TOML it is a table of the fields below; the rules added after the first
/// seven may be left out (they are then off). In binary encodings (the link, the
/// databases) it is a layout version (a varint, [`Binary`]) and then every field in order,
/// so a later layout can be read beside this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
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
    /// Velocity: the fewest seconds between two signatures for the wallet (0: any).
    #[serde(default)]
    pub min_secs_between_signatures: u64,
    /// Velocity: the most signatures within a rolling `period_secs` (none: no limit).
    #[serde(default)]
    pub max_signatures_per_period: Option<u32>,
    /// Most value the cosigner may classify as change within a rolling `period_secs`, sat
    /// (none: no cap). A second line behind change verification: were it ever fooled, what
    /// hides as change is still bounded.
    #[serde(default)]
    pub max_change_per_period_sat: Option<u64>,
    /// Seconds a destination added to the allowlist waits before it may be paid (removal
    /// is at once). With 0, adding a destination is a loosening like any other, and waits
    /// for the cosigner's loosening delay together with the whole policy.
    #[serde(default)]
    pub allowlist_add_delay_secs: u64,
    /// A spend of more than this leaving the wallet (sat) is held on the satellite for
    /// `hold_secs` after it first reaches it, and may be cancelled meanwhile (none: no hold).
    #[serde(default)]
    pub hold_over_sat: Option<u64>,
    /// How long a large spend is held, seconds, on the satellite's clock.
    #[serde(default)]
    pub hold_secs: u64,
    /// Emergency lockdown: nothing is signed for the wallet. Locking is a tightening and
    /// applies at once; unlocking is a loosening and waits for the delay.
    #[serde(default)]
    pub locked: bool,
}

/// The binary layouts of a [`Policy`], by version. Append a layout for a new field; never
/// change one.
#[derive(Serialize, Deserialize)]
enum Binary {
    /// Every field, in the order of [`Policy`].
    V1(#[serde(with = "Policy")] Policy),
}

impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            Policy::serialize(self, s)
        } else {
            Binary::V1(self.clone()).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
        if d.is_human_readable() {
            Policy::deserialize(d)
        } else {
            match Binary::deserialize(d)? {
                Binary::V1(p) => Ok(p),
            }
        }
    }
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
    /// A policy of amount and fee limits alone: no allowlist, no delays, no velocity, no
    /// change cap, no hold, not locked (each of those rules is off until set).
    pub fn of_limits(
        max_per_tx_sat: u64,
        max_per_period_sat: u64,
        period_secs: u64,
        max_fee_sat: u64,
        max_fee_rate_sat_vb: u64,
    ) -> Policy {
        Policy {
            max_per_tx_sat,
            max_per_period_sat,
            period_secs,
            max_fee_sat,
            max_fee_rate_sat_vb,
            allowlist: None,
            min_approval_delay_secs: 0,
            min_secs_between_signatures: 0,
            max_signatures_per_period: None,
            max_change_per_period_sat: None,
            allowlist_add_delay_secs: 0,
            hold_over_sat: None,
            hold_secs: 0,
            locked: false,
        }
    }

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
        for (field, secs) in [
            (
                "min_secs_between_signatures",
                self.min_secs_between_signatures,
            ),
            ("allowlist_add_delay_secs", self.allowlist_add_delay_secs),
            ("hold_secs", self.hold_secs),
            ("min_approval_delay_secs", self.min_approval_delay_secs),
        ] {
            if secs > MAX_DELAY_SECS {
                return Err(PolicyError::Invalid {
                    field,
                    reason: format!(
                        "{secs} s is over a year ({MAX_DELAY_SECS} s); to stop signing, lock the wallet"
                    ),
                });
            }
        }
        if self.max_signatures_per_period == Some(0) {
            return invalid(
                "max_signatures_per_period",
                "0 would refuse every spend; to stop signing, lock the wallet",
            );
        }
        match (self.hold_over_sat, self.hold_secs) {
            (Some(_), 0) => return invalid("hold_secs", "a hold needs at least 1 second"),
            (None, secs) if secs > 0 => {
                return invalid(
                    "hold_over_sat",
                    "hold_secs is set but no amount to hold over",
                )
            }
            _ => {}
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
            && self.is_tightening_of_guards(old)
    }

    /// The rules added after the first layout: velocity, change cap, allowlist delay,
    /// hold and lockdown, each at least as strict as in `old`.
    fn is_tightening_of_guards(&self, old: &Policy) -> bool {
        // An optional limit: none is no limit, so any limit is tighter than none.
        fn at_most<T: PartialOrd>(new: Option<T>, old: Option<T>) -> bool {
            match (new, old) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(n), Some(o)) => n <= o,
            }
        }
        let hold_tighter = match (self.hold_over_sat, old.hold_over_sat) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(o)) => n <= o && self.hold_secs >= old.hold_secs,
        };
        self.min_secs_between_signatures >= old.min_secs_between_signatures
            && at_most(
                self.max_signatures_per_period,
                old.max_signatures_per_period,
            )
            && at_most(
                self.max_change_per_period_sat,
                old.max_change_per_period_sat,
            )
            && self.allowlist_add_delay_secs >= old.allowlist_add_delay_secs
            && hold_tighter
            && self.locked >= old.locked
    }

    /// The allowlist entries of `self` that `old` does not hold (none when either has no
    /// allowlist: adding a whole allowlist tightens, dropping one loosens).
    pub fn allowlist_additions(&self, old: &Policy) -> Vec<Vec<u8>> {
        match (&self.allowlist, &old.allowlist) {
            (Some(new), Some(old)) => new.iter().filter(|s| !old.contains(s)).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// `self` with the allowlist entries of `extra` added: the policy whose tightening
    /// check ignores destinations that wait for their own delay.
    fn with_entries(&self, extra: &[Vec<u8>]) -> Policy {
        let mut p = self.clone();
        if let Some(list) = &mut p.allowlist {
            list.extend(extra.iter().cloned());
        }
        p
    }
}

/// A wallet's policy, with any loosening that is waiting for its delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// The policy in force.
    pub current: Policy,
    /// A looser policy and the time (unix seconds) it takes effect.
    pub pending: Option<(Policy, u64)>,
    /// Allowlist destinations added under `allowlist_add_delay_secs`, with the time (unix
    /// seconds) from which they may be paid.
    pub allowlist_since: BTreeMap<Vec<u8>, u64>,
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
            allowlist_since: BTreeMap::new(),
        }
    }

    /// When allowlisted destination `script` may first be paid (0: it always could).
    pub fn allowed_from(&self, script: &[u8]) -> u64 {
        self.allowlist_since.get(script).copied().unwrap_or(0)
    }

    /// The policy in force at `now` (a pending loosening whose time has come applies).
    pub fn effective(&self, now: u64) -> &Policy {
        match &self.pending {
            Some((p, at)) if *at <= now => p,
            _ => &self.current,
        }
    }

    /// Applies an update requested at `now`, with `loosen_delay` seconds for loosening.
    ///
    /// When the policy in force sets `allowlist_add_delay_secs`, destinations added to its
    /// allowlist do not count as loosening: the rest applies as if they were not there, and
    /// each waits that delay (the policy in force's, not the new one's) from now.
    pub fn update(&mut self, new: Policy, now: u64, loosen_delay: u64) -> PolicyChange {
        let in_force = self.effective(now).clone();
        let added = match in_force.allowlist_add_delay_secs {
            0 => Vec::new(),
            _ => new.allowlist_additions(&in_force),
        };
        if new.is_tightening_of(&in_force.with_entries(&added)) {
            // Tightening also cancels any loosening still waiting.
            let from = now.saturating_add(in_force.allowlist_add_delay_secs);
            for script in added {
                self.allowlist_since.insert(script, from);
            }
            if let Some(list) = &new.allowlist {
                self.allowlist_since.retain(|s, _| list.contains(s));
            }
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
        Policy::of_limits(1_000_000, 5_000_000, 86_400, 50_000, 200)
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
        // Binary: the layout's version, then every field in order, the allowlist as bytes.
        #[derive(Serialize)]
        struct Plain {
            layout: u8,
            a: u64,
            b: u64,
            c: u64,
            d: u64,
            e: u64,
            allowlist: Option<Vec<Vec<u8>>>,
            f: u64,
            guards: (u64, Option<u32>, Option<u64>, u64, Option<u64>, u64, bool),
        }
        let plain = Plain {
            layout: 0,
            a: 1,
            b: 1,
            c: 1,
            d: 1,
            e: 1,
            allowlist: p.allowlist.clone(),
            f: 0,
            guards: (0, None, None, 0, None, 0, false),
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
