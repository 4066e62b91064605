//! The JSON-RPC methods of the signing flow: `satellite.info`, `wallet.*` and `request.*`.
//!
//! Parameters are positional, as in the rest of the API, and checked here; the work is
//! done by [`crate::service::Service`]. Ids are hex (32 characters). Results are the JSON
//! documented in `schemas/openrpc.json`.

use std::sync::Arc;

use jsonrpsee::RpcModule;
use serde_json::{json, Value};

use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::wallet::WalletId;

use crate::follow::{ended, follow, send_json, view};
use crate::push::Pusher;
use crate::rpc::{json_type, positional, string_param, ApiContext};
use crate::rpc_error::RpcError;
use crate::views::{status_json, wallet_json};

fn id16(values: &[Value], index: usize, name: &'static str) -> Result<[u8; 16], RpcError> {
    let s = string_param(values, index, name)?;
    let mut out = [0u8; 16];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| RpcError::InvalidParam {
        index,
        name,
        reason: format!(
            "expected 32 hex characters, got {:?}",
            s.chars().take(40).collect::<String>()
        ),
    })?;
    Ok(out)
}

fn request_id(values: &[Value], index: usize) -> Result<RequestId, RpcError> {
    id16(values, index, "request_id").map(RequestId)
}

fn wallet_id(values: &[Value], index: usize) -> Result<WalletId, RpcError> {
    id16(values, index, "wallet_id").map(WalletId)
}

fn policy_param(values: &[Value], index: usize) -> Result<Option<Policy>, RpcError> {
    match values.get(index) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| RpcError::InvalidParam {
                    index,
                    name: "policy",
                    reason: e.to_string(),
                })
        }
        Some(other) => Err(RpcError::InvalidParam {
            index,
            name: "policy",
            reason: format!("expected an object, got {}", json_type(other)),
        }),
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pass_json(p: satcosign_link::link::PassWindow) -> Value {
    json!({ "start": unix(p.start), "end": unix(p.end) })
}

/// The link as `satellite.info` shows it: whether the satellite is in view (from the pass
/// schedule), when it was last heard (a frame accepted), and where the oldest queued
/// message stands.
fn link_json(l: &satcosign_link::link::LinkStatus) -> Value {
    let ago = |t: std::time::SystemTime| {
        std::time::SystemTime::now()
            .duration_since(t)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    json!({
        "in_view": l.in_view,
        "passes_known": l.passes_known,
        "peer_heard_at": l.peer_heard_at.map(unix),
        "peer_heard_secs_ago": l.peer_heard_at.map(ago),
        "queue_depth": l.queue_depth,
        "head": l.head.map(|h| json!({
            "state": h.state.as_str(),
            "fragments": h.fragments,
            "fragments_sent": h.fragments_sent,
        })),
    })
}

/// Registers the methods.
pub fn register(
    module: &mut RpcModule<ApiContext>,
) -> Result<(), jsonrpsee::core::RegisterMethodError> {
    module.register_method("satellite.info", |params, ctx, _| {
        positional(&params, "satellite.info", 0, 0)?;
        let service = ctx.service()?;
        let link = ctx.link_status.as_ref().map(|f| f());
        Ok::<_, RpcError>(json!({
            "network": service.network.to_string(),
            "mailbox_pubkey": hex::encode(service.mailbox_public.serialize()),
            "link": link.as_ref().map(link_json),
            "current_pass": link.as_ref().and_then(|l| l.current_pass).map(pass_json),
            "next_pass": link.as_ref().and_then(|l| l.next_pass).map(pass_json),
            "orbit": ctx.passes.as_ref().map(|p| p.to_json(std::time::SystemTime::now(), 5)),
        }))
    })?;
    module.register_async_method(
        "satellite.set_elements",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "satellite.set_elements", 3, 3)?;
            let line1 = string_param(&values, 0, "line1")?;
            let line2 = string_param(&values, 1, "line2")?;
            let token = string_param(&values, 2, "token")?;
            for (index, name, line, first) in [(0, "line1", &line1, "1 "), (1, "line2", &line2, "2 ")] {
                if !(69..=80).contains(&line.len()) {
                    return Err(RpcError::InvalidParam {
                        index,
                        name,
                        reason: format!("an element line is 69 to 80 characters, not {}", line.len()),
                    });
                }
                if !line.trim_start().starts_with(first) {
                    return Err(RpcError::InvalidParam {
                        index,
                        name,
                        reason: format!(
                            "an element line starts with `{first}` (an OMM goes to satellite.set_omm)"
                        ),
                    });
                }
            }
            load_elements(&ctx, format!("{line1}\n{line2}\n"), token).await
        },
    )?;
    module.register_async_method(
        "satellite.set_omm",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "satellite.set_omm", 2, 2)?;
            let omm = string_param(&values, 0, "omm")?;
            let token = string_param(&values, 1, "token")?;
            if omm.len() > MAX_OMM_BYTES {
                return Err(RpcError::InvalidParam {
                    index: 0,
                    name: "omm",
                    reason: format!("an OMM is at most {MAX_OMM_BYTES} bytes, not {}", omm.len()),
                });
            }
            if !matches!(omm.trim_start().chars().next(), Some('{' | '[')) {
                return Err(RpcError::InvalidParam {
                    index: 0,
                    name: "omm",
                    reason: "an OMM in JSON is an object, or an array of one".into(),
                });
            }
            load_elements(&ctx, omm, token).await
        },
    )?;
    module.register_async_method(
        "satellite.new_key",
        |params, ctx: Arc<ApiContext>, ext| async move {
            positional(&params, "satellite.new_key", 0, 0)?;
            let service = ctx.service()?;
            let client = ext.get::<crate::admission::ClientAddr>().map(|c| c.0);
            let key = service.new_key(client).await?;
            let mut json = crate::wallet_keys::key_json(&key);
            json["network"] = json!(service.network.to_string());
            Ok::<_, RpcError>(json)
        },
    )?;
    module.register_async_method(
        "wallet.register",
        |params, ctx: Arc<ApiContext>, ext| async move {
            let values = positional(&params, "wallet.register", 3, 4)?;
            let service = ctx.service()?;
            let descriptors = match values.first() {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(other) => {
                    return Err(RpcError::InvalidParam {
                        index: 0,
                        name: "descriptor",
                        reason: format!(
                            "expected a descriptor string or a [receive, change] pair, got {}",
                            json_type(other)
                        ),
                    })
                }
                None => unreachable!("at least 3 parameters"),
            };
            let email = string_param(&values, 1, "email")?;
            let label = string_param(&values, 2, "label")?;
            let policy = policy_param(&values, 3)?;
            let (wallet_id, request_id) = service
                .register_wallet(
                    descriptors,
                    email,
                    label,
                    policy,
                    ext.get::<crate::admission::ClientAddr>().map(|c| c.0),
                )
                .await?;
            Ok::<_, RpcError>(json!({
                "wallet_id": wallet_id.to_string(),
                "request_id": request_id.to_string(),
            }))
        },
    )?;
    module.register_async_method(
        "wallet.status",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "wallet.status", 1, 1)?;
            let id = wallet_id(&values, 0)?;
            let service = ctx.service()?;
            let (w, pending) = service.wallet_and_pending(id).await?;
            let mut json = wallet_json(&w);
            json["pending_policy"] = pending.map_or(Value::Null, |p| p.to_json());
            let key = service.satellite_key(&w)?;
            json["satellite_key"] = crate::wallet_keys::key_json(&key);
            Ok::<_, RpcError>(json)
        },
    )?;
    module.register_async_method(
        "wallet.last_violation",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "wallet.last_violation", 1, 1)?;
            let id = wallet_id(&values, 0)?;
            Ok::<_, RpcError>(ctx.service()?.last_violation(id).await?)
        },
    )?;
    module.register_async_method(
        "wallet.update_email",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "wallet.update_email", 2, 2)?;
            let id = wallet_id(&values, 0)?;
            let email = string_param(&values, 1, "email")?;
            let rid = ctx.service()?.update_email(id, email).await?;
            Ok::<_, RpcError>(json!({"request_id": rid.to_string()}))
        },
    )?;
    module.register_async_method(
        "wallet.set_policy",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "wallet.set_policy", 2, 2)?;
            let id = wallet_id(&values, 0)?;
            let Some(policy) = policy_param(&values, 1)? else {
                return Err(RpcError::InvalidParam {
                    index: 1,
                    name: "policy",
                    reason: "missing".into(),
                });
            };
            let (rid, tightening) = ctx.service()?.set_policy(id, policy).await?;
            // Every change is confirmed by email now; `tightening` says whether the
            // satellite applies it at once once confirmed (or after its delay).
            Ok::<_, RpcError>(json!({
                "request_id": rid.to_string(),
                "needs_email": true,
                "tightening": tightening,
            }))
        },
    )?;
    for (method, locked) in [("wallet.lockdown", true), ("wallet.unlock", false)] {
        module.register_async_method(
            method,
            move |params, ctx: Arc<ApiContext>, _| async move {
                let values = positional(&params, method, 1, 1)?;
                let id = wallet_id(&values, 0)?;
                let rid = ctx.service()?.set_lockdown(id, locked).await?;
                Ok::<_, RpcError>(json!({"request_id": rid.to_string(), "needs_email": true}))
            },
        )?;
    }
    module.register_async_method(
        "request.submit",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.submit", 2, 3)?;
            let wid = wallet_id(&values, 0)?;
            let psbt = string_param(&values, 1, "psbt")?;
            let replaces = match values.get(2) {
                None | Some(Value::Null) => None,
                Some(_) => Some(id16(&values, 2, "replaces").map(RequestId)?),
            };
            let service = ctx.service()?;
            let id = service
                .submit_psbt(Some(wid), psbt.as_bytes(), replaces)
                .await?;
            Ok::<_, RpcError>(json!({"request_id": id.to_string()}))
        },
    )?;
    module.register_async_method(
        "request.check",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.check", 2, 2)?;
            let wid = wallet_id(&values, 0)?;
            let psbt = string_param(&values, 1, "psbt")?;
            Ok::<_, RpcError>(ctx.service()?.check_psbt(wid, psbt.as_bytes()).await?)
        },
    )?;
    module.register_async_method(
        "request.status",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.status", 1, 1)?;
            let id = request_id(&values, 0)?;
            let service = ctx.service()?;
            let r = service.request(id).await?;
            let watch = crate::watch::of(service, id).await?;
            Ok::<_, RpcError>(status_json(service, &r, watch.as_ref()))
        },
    )?;
    module.register_async_method(
        "request.confirm",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.confirm", 2, 2)?;
            let id = request_id(&values, 0)?;
            let code = string_param(&values, 1, "code")?;
            let state = ctx.service()?.confirm(id, &code, true).await?;
            Ok::<_, RpcError>(json!({"request_id": id.to_string(), "state": state.as_str()}))
        },
    )?;
    module.register_async_method(
        "request.cancel",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.cancel", 1, 1)?;
            let id = request_id(&values, 0)?;
            let state = ctx.service()?.cancel(id).await?;
            Ok::<_, RpcError>(json!({"request_id": id.to_string(), "state": state.as_str()}))
        },
    )?;
    module.register_async_method(
        "request.resend",
        |params, ctx: Arc<ApiContext>, _| async move {
            let values = positional(&params, "request.resend", 1, 1)?;
            let id = request_id(&values, 0)?;
            ctx.service()?.resend(id).await?;
            Ok::<_, RpcError>(Value::Null)
        },
    )?;
    module.register_async_method(
        "request.subscribe",
        |params, ctx: Arc<ApiContext>, ext| async move {
            let values = positional(&params, "request.subscribe", 1, 1)?;
            let id = request_id(&values, 0)?;
            let service = ctx.service()?.clone();
            // Subscribe before reading, so no change between the two is missed.
            let events = service.events();
            let (r, watch) = view(&service, id).await?;
            let first = status_json(&service, &r, watch.as_ref());
            if let Some(pusher) = ext.get::<Pusher>().cloned() {
                if !ended(&r, &watch) {
                    let slot = pusher
                        .subscription()
                        .map_err(|max| RpcError::TooManySubscriptions { max })?;
                    let gone = pusher.clone();
                    tokio::spawn(follow(
                        service,
                        id,
                        events,
                        first["expected"].clone(),
                        move |status| {
                            let _held = &slot;
                            let ok = pusher
                                .push("request.subscribe", vec![json!(id.to_string()), status]);
                            async move { ok }
                        },
                        async move { gone.closed().await },
                    ));
                }
            }
            Ok::<_, RpcError>(first)
        },
    )?;
    // The same over WebSocket, as a jsonrpsee subscription (the Electrum TCP transport has
    // `request.subscribe`'s pushes instead).
    module.register_subscription(
        "request.watch",
        "request.watch",
        "request.unwatch",
        |params, pending, ctx: Arc<ApiContext>, _| async move {
            let start = async {
                let values = positional(&params, "request.watch", 1, 1)?;
                let id = request_id(&values, 0)?;
                let service = ctx.service()?.clone();
                let events = service.events();
                let (r, watch) = view(&service, id).await?;
                Ok::<_, RpcError>((service, id, events, r, watch))
            };
            use jsonrpsee::core::server::SubscriptionCloseResponse as Close;
            let (service, id, events, r, watch) = match start.await {
                Ok(x) => x,
                Err(e) => {
                    pending.reject(e).await;
                    return Close::None;
                }
            };
            let Ok(sink) = pending.accept().await else {
                return Close::None;
            };
            // jsonrpsee's way to end a subscription from the server is a closing
            // notification with an `error` member; clients then end the stream.
            let done = || Close::NotifErr("ended: the request is delivered and final".into());
            let first = status_json(&service, &r, watch.as_ref());
            if !send_json(&sink, &first).await {
                return Close::None;
            }
            if ended(&r, &watch) {
                return done();
            }
            let gone = sink.clone();
            follow(
                service,
                id,
                events,
                first["expected"].clone(),
                move |status| {
                    let sink = sink.clone();
                    async move { send_json(&sink, &status).await }
                },
                async move { gone.closed().await },
            )
            .await;
            done()
        },
    )?;
    Ok(())
}

/// The largest OMM `satellite.set_omm` takes (one object is under 1 KB).
const MAX_OMM_BYTES: usize = 20_000;

/// Loads an element set for `satellite.set_elements` and `satellite.set_omm`.
async fn load_elements(
    ctx: &ApiContext,
    elements: String,
    token: String,
) -> Result<Value, RpcError> {
    let Some(plan) = ctx.passes.clone() else {
        return Err(RpcError::from(crate::passes::ElementsError::Off));
    };
    let now = std::time::SystemTime::now();
    let epoch = tokio::task::spawn_blocking(move || plan.load_elements(&elements, &token, now))
        .await
        .map_err(|e| RpcError::Storage(e.to_string()))??;
    Ok(json!({
        "elements_epoch": unix(epoch),
        "elements_age_secs": now.duration_since(epoch).map_or(0, |d| d.as_secs()),
    }))
}
