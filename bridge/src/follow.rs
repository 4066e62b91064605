//! Following a request for its subscribers (`request.subscribe` over the Electrum protocol,
//! `request.watch` over WebSocket): every change of state is sent, and, while the request
//! waits for the satellite, its expected time when it moves (a missed pass, the queue ahead
//! draining), looked at every [`EXPECTED_RECHECK`].

use std::sync::Arc;

use serde_json::Value;

use satcosign_cosigner::decision::RequestId;

use crate::rpc_error::RpcError;
use crate::state::RequestRecord;
use crate::views::status_json;
use crate::watch::Watch;

/// A request and its watch, if its transaction was broadcast.
pub(crate) async fn view(
    service: &crate::service::Service,
    id: RequestId,
) -> Result<(RequestRecord, Option<Watch>), RpcError> {
    let r = service.request(id).await?;
    let watch = crate::watch::of(service, id).await?;
    Ok((r, watch))
}

/// Whether nothing more will change: delivered, and its transaction (if any) buried. (The
/// watch is written before the request is delivered.)
pub(crate) fn ended(r: &RequestRecord, watch: &Option<Watch>) -> bool {
    r.state.is_final() && watch.as_ref().is_none_or(|w| w.done)
}

pub(crate) async fn send_json(sink: &jsonrpsee::SubscriptionSink, value: &Value) -> bool {
    match serde_json::value::to_raw_value(value) {
        Ok(raw) => sink.send(raw).await.is_ok(),
        Err(_) => false,
    }
}

/// How often a waiting request's expected time is looked at again for its subscribers.
pub const EXPECTED_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the expected time moved enough to tell a subscriber: a minute or more, another
/// station, a pass that began, or a promise given or withdrawn. (While its pass is under
/// way, `at` is "now" and moves with the clock: that is no news.)
pub(crate) fn expected_moved(before: &Value, now: &Value) -> bool {
    match (before.is_null(), now.is_null()) {
        (true, true) => false,
        (false, false) => {
            let at = |v: &Value| v["at"].as_i64().unwrap_or(0);
            let under_way = before["in_view"] == true && now["in_view"] == true;
            (!under_way && (at(before) - at(now)).abs() >= 60)
                || before["station"] != now["station"]
                || before["in_view"] != now["in_view"]
        }
        _ => true,
    }
}

/// Follows request `id` on `events`, handing `send` each new view of it until nothing more
/// will change, `send` fails, or `gone` completes (the listener left). Besides each change
/// of state, a waiting request's expected time is looked at every [`EXPECTED_RECHECK`] and
/// sent when it moved ([`expected_moved`]): a missed pass, or the queue ahead draining.
pub(crate) async fn follow<F, Fut>(
    service: Arc<crate::service::Service>,
    id: RequestId,
    mut events: tokio::sync::broadcast::Receiver<crate::service::Event>,
    mut expected: Value,
    mut send: F,
    gone: impl std::future::Future<Output = ()>,
) where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use tokio::sync::broadcast::error::RecvError;
    tokio::pin!(gone);
    let mut recheck = tokio::time::interval(EXPECTED_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    loop {
        let changed = tokio::select! {
            e = events.recv() => match e {
                Ok(e) if e.id != id => continue,
                // A lagging listener may have missed this request's change: look again.
                Ok(_) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            _ = recheck.tick(), if !expected.is_null() => false,
            () = &mut gone => return,
        };
        let Ok((r, watch)) = view(&service, id).await else {
            return;
        };
        let status = status_json(&service, &r, watch.as_ref());
        if !changed && !expected_moved(&expected, &status["expected"]) {
            continue;
        }
        expected = status["expected"].clone();
        if !send(status).await || ended(&r, &watch) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subscriber_hears_of_an_expected_time_that_moved() {
        let at = |t: i64, station: &str| json!({"at": t, "in_secs": 0, "station": station, "in_view": false});
        assert!(!expected_moved(&Value::Null, &Value::Null));
        assert!(
            !expected_moved(&at(1000, "turin"), &at(1030, "turin")),
            "a few seconds"
        );
        assert!(
            expected_moved(&at(1000, "turin"), &at(1000 + 5400, "turin")),
            "a missed pass"
        );
        assert!(expected_moved(&at(1000, "turin"), &at(1000, "perth")));
        assert!(
            expected_moved(&at(1000, "turin"), &Value::Null),
            "signed: no more promise"
        );
        let mut begun = at(1000, "turin");
        begun["in_view"] = json!(true);
        assert!(expected_moved(&at(1000, "turin"), &begun));
        let mut later = begun.clone();
        later["at"] = json!(1000 + 300);
        assert!(
            !expected_moved(&begun, &later),
            "a pass under way: 'now' moving is no news"
        );
    }
}
