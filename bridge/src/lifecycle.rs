//! The request state machine: which step moves a request from which state to which.
//!
//! [`next`] is the one table of transitions. Every change of a request's state goes through
//! it, by [`apply_in`] inside a write transaction that changes other records with it (the
//! intake's), or by [`advance`], one write transaction of its own that first asks the
//! caller which step applies (a code decides between confirm, reject, wrong and void) and
//! then lets it change the record and anything else that must change with it. A step the
//! table does not allow from the request's state is refused with
//! [`ServiceError::WrongState`] (JSON-RPC -32022) and changes nothing. Each step says
//! whether it is announced ([`Step::announced`]); `Service::advance`
//! announces what [`advance`] committed.

use crate::store::tables::WriteTransaction;

use satcosign_cosigner::decision::RequestId;

use crate::service::{unix_now, ServiceError};
use crate::state::{load_request, save_request, RequestRecord, State};
use crate::store::{Store, StoreError};

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// An email with a fresh code went out and its code is recorded.
    Emailed,
    /// The same transaction came again with a changed PSBT: its old codes are void and a
    /// new email is due (counted against the request's emails like a resend).
    Resubmitted,
    /// A wrong code was tried: counted, not a change of state, not announced.
    WrongCode,
    /// The last wrong code allowed was tried: the request is void.
    Voided,
    /// The owner confirmed with the code.
    Confirmed,
    /// The owner confirmed a change the bridge applies itself (an email address).
    AppliedHere,
    /// The owner rejected it with the code.
    Rejected,
    /// The owner cancelled it before it was handed to the link.
    Cancelled,
    /// Every code expired unused.
    Expired,
    /// Refused on the ground after confirmation (a coin spent meanwhile).
    RefusedOnGround,
    /// Handed to the link's outbox.
    Queued,
    /// The link acknowledged it reached the satellite.
    Acknowledged,
    /// The cosigner signed (or accepted a non-signing action).
    Signed,
    /// The cosigner refused.
    Refused,
    /// The satellite holds a large spend until its release: the request waits, confirmed,
    /// to be asked again then (or cancelled meanwhile).
    Held,
    /// The wallet was locked down before the request reached the satellite.
    Locked,
    /// The broadcast's result was recorded: not a change of state, not announced.
    Broadcast,
    /// The outcome reached the owner.
    Delivered,
}

/// Every step, for tests and documentation.
pub const ALL_STEPS: [Step; 18] = [
    Step::Emailed,
    Step::Resubmitted,
    Step::WrongCode,
    Step::Voided,
    Step::Confirmed,
    Step::AppliedHere,
    Step::Rejected,
    Step::Cancelled,
    Step::Expired,
    Step::RefusedOnGround,
    Step::Queued,
    Step::Acknowledged,
    Step::Signed,
    Step::Refused,
    Step::Held,
    Step::Locked,
    Step::Broadcast,
    Step::Delivered,
];

/// The transition table: the state `step` takes a request in state `from` to, or `None`
/// when it is not allowed there.
pub fn next(from: State, step: Step) -> Option<State> {
    use State as S;
    use Step as E;
    let to = match (step, from) {
        (E::Emailed, S::Received | S::AwaitingEmail) => S::AwaitingEmail,
        (E::Resubmitted, S::Received | S::AwaitingEmail) => S::Received,
        (E::WrongCode, S::AwaitingEmail) => S::AwaitingEmail,
        (E::Voided | E::Rejected, S::AwaitingEmail) => S::Cancelled,
        (E::Confirmed, S::AwaitingEmail) => S::Confirmed,
        (E::AppliedHere, S::AwaitingEmail) => S::Signed,
        (E::Cancelled, S::Received | S::AwaitingEmail | S::Confirmed) => S::Cancelled,
        (E::Expired, S::AwaitingEmail) => S::Expired,
        (E::RefusedOnGround, S::Confirmed) => S::Refused,
        (E::Queued, S::Confirmed) => S::Queued,
        (E::Acknowledged, S::Queued) => S::Sent,
        (E::Signed, S::Confirmed | S::Queued | S::Sent) => S::Signed,
        (E::Refused, S::Confirmed | S::Queued | S::Sent) => S::Refused,
        (E::Held, S::Confirmed | S::Queued | S::Sent) => S::Confirmed,
        (E::Locked, S::Received | S::AwaitingEmail | S::Confirmed | S::Queued) => S::Refused,
        (E::Broadcast, S::Signed) => S::Signed,
        (E::Delivered, S::Signed | S::Refused | S::Expired | S::Cancelled) => S::Delivered,
        _ => return None,
    };
    Some(to)
}

impl Step {
    /// Whether subscribers hear of it (and the record's version counts it).
    pub fn announced(self) -> bool {
        !matches!(self, Step::WrongCode | Step::Broadcast)
    }

    /// What it is, in an error ("request … is queued; cancelling needs it …").
    pub fn doing(self) -> &'static str {
        match self {
            Step::Emailed | Step::Resubmitted => "emailing a code",
            Step::WrongCode | Step::Voided | Step::Confirmed | Step::AppliedHere => "confirming",
            Step::Rejected => "rejecting",
            Step::Cancelled => "cancelling",
            Step::Expired => "expiring",
            Step::RefusedOnGround | Step::Queued => "queueing for the satellite",
            Step::Acknowledged | Step::Signed | Step::Refused | Step::Held => {
                "recording the satellite's answer"
            }
            Step::Locked => "locking down",
            Step::Broadcast => "recording the broadcast",
            Step::Delivered => "delivering",
        }
    }

    /// The states it is allowed from, as words.
    pub fn allowed_from(self) -> String {
        let names: Vec<&str> = crate::state::ALL_STATES
            .iter()
            .filter(|s| next(**s, self).is_some())
            .map(|s| s.as_str())
            .collect();
        match names.as_slice() {
            [] => "never".into(),
            [one] => (*one).into(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// The refusal of `step` for a request in `state`.
pub fn refusal(id: RequestId, state: State, step: Step) -> ServiceError {
    ServiceError::WrongState {
        id,
        state: state.as_str(),
        action: step.doing(),
        allowed: step.allowed_from(),
    }
}

/// A committed transition.
#[derive(Debug, Clone)]
pub struct Moved {
    /// What happened.
    pub step: Step,
    /// The state it left.
    pub from: State,
    /// The record as saved.
    pub record: RequestRecord,
}

impl Moved {
    /// The state to announce, if the step is announced.
    pub fn announce(&self) -> Option<State> {
        self.step.announced().then_some(self.record.state)
    }
}

/// The states a request may start in: `Received` (an email is due), or `Refused` for a
/// PSBT refused before any email that must still be answered where it came from.
pub const OPENING_STATES: [State; 2] = [State::Received, State::Refused];

/// Saves the new request `r` inside `txn`; the caller announces it once committed.
pub fn open_in(txn: &WriteTransaction, r: &RequestRecord) -> Result<(), StoreError> {
    if !OPENING_STATES.contains(&r.state) || load_request(txn, &r.id)?.is_some() {
        return Err(StoreError::Database(format!(
            "request {} cannot start as {}",
            r.id,
            r.state.as_str()
        )));
    }
    save_request(txn, r)
}

/// Takes `r` through `step` inside `txn` and saves it; refused (and nothing written) when
/// the table does not allow it.
pub fn apply_in(
    txn: &WriteTransaction,
    r: &mut RequestRecord,
    step: Step,
    now: u64,
) -> Result<Result<State, ServiceError>, StoreError> {
    let Some(to) = next(r.state, step) else {
        return Ok(Err(refusal(r.id, r.state, step)));
    };
    r.state = to;
    r.updated_at = now;
    if step.announced() {
        r.version += 1;
    }
    save_request(txn, r)?;
    Ok(Ok(to))
}

/// Reads a request and names the step that applies (`None`: nothing to do).
pub trait Decide:
    FnOnce(&RequestRecord) -> Result<Option<Step>, ServiceError> + Send + 'static
{
}
impl<F> Decide for F where
    F: FnOnce(&RequestRecord) -> Result<Option<Step>, ServiceError> + Send + 'static
{
}

/// Edits the record for the step taken, and writes whatever must change with it.
pub trait Change:
    FnOnce(&WriteTransaction, &mut RequestRecord, Step) -> Result<(), StoreError> + Send + 'static
{
}
impl<F> Change for F where
    F: FnOnce(&WriteTransaction, &mut RequestRecord, Step) -> Result<(), StoreError>
        + Send
        + 'static
{
}

/// One transition of request `id` in its own write transaction: `decide` reads the record
/// and names the step (or `None`: nothing to do, nothing written), the table checks it,
/// `change` edits the record and writes whatever must change with it, and the record is
/// saved in its new state. Refused steps and `decide`'s errors write nothing.
pub async fn advance(
    store: &Store,
    id: RequestId,
    decide: impl Decide,
    change: impl Change,
) -> Result<Option<Moved>, ServiceError> {
    store
        .write(move |txn| {
            let Some(mut r) = load_request(txn, &id)? else {
                return Ok(Err(ServiceError::UnknownRequest(id)));
            };
            let step = match decide(&r) {
                Ok(Some(step)) => step,
                Ok(None) => return Ok(Ok(None)),
                Err(e) => return Ok(Err(e)),
            };
            let from = r.state;
            if next(from, step).is_none() {
                return Ok(Err(refusal(id, from, step)));
            }
            change(txn, &mut r, step)?;
            match apply_in(txn, &mut r, step, unix_now())? {
                Ok(_) => Ok(Ok(Some(Moved {
                    step,
                    from,
                    record: r,
                }))),
                Err(e) => Ok(Err(e)),
            }
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc_error::WRONG_STATE;
    use crate::service::new_request;
    use crate::state::{Action, ALL_STATES};
    use satcosign_cosigner::wallet::WalletId;

    /// The table as it is meant to read, one row per step: (step, from, to).
    const EXPECTED: &[(Step, &[State], State)] = {
        use State as S;
        &[
            (
                Step::Emailed,
                &[S::Received, S::AwaitingEmail],
                S::AwaitingEmail,
            ),
            (
                Step::Resubmitted,
                &[S::Received, S::AwaitingEmail],
                S::Received,
            ),
            (Step::WrongCode, &[S::AwaitingEmail], S::AwaitingEmail),
            (Step::Voided, &[S::AwaitingEmail], S::Cancelled),
            (Step::Confirmed, &[S::AwaitingEmail], S::Confirmed),
            (Step::AppliedHere, &[S::AwaitingEmail], S::Signed),
            (Step::Rejected, &[S::AwaitingEmail], S::Cancelled),
            (
                Step::Cancelled,
                &[S::Received, S::AwaitingEmail, S::Confirmed],
                S::Cancelled,
            ),
            (Step::Expired, &[S::AwaitingEmail], S::Expired),
            (Step::RefusedOnGround, &[S::Confirmed], S::Refused),
            (Step::Queued, &[S::Confirmed], S::Queued),
            (Step::Acknowledged, &[S::Queued], S::Sent),
            (Step::Signed, &[S::Confirmed, S::Queued, S::Sent], S::Signed),
            (
                Step::Refused,
                &[S::Confirmed, S::Queued, S::Sent],
                S::Refused,
            ),
            (
                Step::Held,
                &[S::Confirmed, S::Queued, S::Sent],
                S::Confirmed,
            ),
            (
                Step::Locked,
                &[S::Received, S::AwaitingEmail, S::Confirmed, S::Queued],
                S::Refused,
            ),
            (Step::Broadcast, &[S::Signed], S::Signed),
            (
                Step::Delivered,
                &[S::Signed, S::Refused, S::Expired, S::Cancelled],
                S::Delivered,
            ),
        ]
    };

    fn record_in(state: State, n: u8) -> RequestRecord {
        let mut r = new_request(
            RequestId([n; 16]),
            WalletId([7; 16]),
            Action::Register,
            state,
            1,
        );
        r.version = 5;
        r
    }

    /// Every state × every step, through the store: an allowed step moves the record to the
    /// table's state (and bumps its version when announced); any other is refused with
    /// -32022, names the states it needs, and leaves the stored record byte for byte as it was.
    #[tokio::test]
    async fn every_state_and_step_advances_or_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.redb")).expect("store");
        assert_eq!(EXPECTED.len(), ALL_STEPS.len());
        let mut n = 0u8;
        for &(step, from_states, to) in EXPECTED {
            for &from in &ALL_STATES {
                n = n.wrapping_add(1);
                let before = record_in(from, n);
                let id = before.id;
                let saved = before.clone();
                store
                    .write(move |txn| save_request(txn, &saved))
                    .await
                    .expect("seed");
                let moved = advance(&store, id, move |_| Ok(Some(step)), |_, _, _| Ok(())).await;
                let after = store
                    .read(move |txn| {
                        let t = txn
                            .open_table(crate::state::REQUESTS)
                            .map_err(crate::state::db_err)?;
                        let v = crate::store::tables::ReadableTable::get(&t, &id.0)
                            .map_err(crate::state::db_err)?
                            .expect("kept");
                        crate::state::from_bytes::<RequestRecord>(v.value())
                    })
                    .await
                    .expect("read");
                if from_states.contains(&from) {
                    let moved = moved.unwrap_or_else(|e| panic!("{step:?} from {from:?}: {e}"));
                    let moved = moved.expect("a step was named");
                    assert_eq!(moved.from, from);
                    assert_eq!(after.state, to, "{step:?} from {from:?}");
                    assert_eq!(next(from, step), Some(to));
                    let announced = step.announced();
                    assert_eq!(moved.announce(), announced.then_some(to));
                    assert_eq!(after.version, 5 + u32::from(announced), "{step:?}");
                } else {
                    let err = moved.expect_err("refused");
                    let text = err.to_string();
                    let code = crate::rpc_error::RpcError::from(err).code();
                    assert_eq!(code, WRONG_STATE, "{step:?} from {from:?}");
                    assert!(text.contains(from.as_str()), "{text}");
                    assert!(text.contains(step.doing()), "{text}");
                    for allowed in from_states {
                        assert!(text.contains(allowed.as_str()), "{text}");
                    }
                    assert_eq!(after, before, "{step:?} from {from:?} changed the record");
                    assert_eq!(next(from, step), None);
                }
            }
        }
    }

    #[test]
    fn nothing_leaves_delivered_and_every_state_is_reachable() {
        for step in ALL_STEPS {
            assert_eq!(next(State::Delivered, step), None, "{step:?}");
        }
        for s in ALL_STATES {
            let reached = ALL_STATES
                .iter()
                .any(|f| ALL_STEPS.iter().any(|e| next(*f, *e) == Some(s)));
            assert!(reached || s == State::Received, "{s:?} is never reached");
        }
    }
}
