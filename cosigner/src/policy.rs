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
    /// If set, the only output scripts (script_pubkey bytes) non-change outputs may pay.
    pub allowlist: Option<Vec<Vec<u8>>>,
    /// Seconds that must pass between the user's approval and the signature.
    pub min_approval_delay_secs: u64,
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
