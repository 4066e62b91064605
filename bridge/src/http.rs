//! The HTTP port: JSON-RPC over HTTP POST and WebSocket (jsonrpsee's server), plus plain
//! HTTP routes served beside it: `GET /health` (see [`crate::health`]), `GET /status` (see
//! [`crate::status_page`]), `GET /metrics` (see [`crate::metrics`]), and
//! the confirmation pages of the email gate
//! (`GET /confirm/<id>?t=<code>` shows what will be approved and changes nothing, so mail
//! scanners that follow links confirm nothing; only `POST /confirm/<id>` acts).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use jsonrpsee::server::{
    HttpBody, HttpRequest, HttpResponse, Methods, Server, ServerConfig, ServerHandle,
};
use tower::{Layer, Service};

use crate::config::HttpConfig;
use crate::rpc::SERVER_VERSION;

/// Answers the bridge's plain HTTP routes and passes everything else to JSON-RPC.
#[derive(Clone, Default)]
pub struct RoutesLayer {
    service: Option<Arc<crate::service::Service>>,
    metrics: Option<crate::metrics::Source>,
    health: Option<crate::health::HealthSources>,
    status_page: bool,
    nostr_relay: Option<String>,
}

impl<S> Layer<S> for RoutesLayer {
    type Service = Routes<S>;

    fn layer(&self, inner: S) -> Routes<S> {
        Routes {
            inner,
            service: self.service.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            status_page: self.status_page,
            nostr_relay: self.nostr_relay.clone(),
        }
    }
}

/// The service made by [`RoutesLayer`].
#[derive(Clone)]
pub struct Routes<S> {
    inner: S,
    service: Option<Arc<crate::service::Service>>,
    metrics: Option<crate::metrics::Source>,
    health: Option<crate::health::HealthSources>,
    status_page: bool,
    nostr_relay: Option<String>,
}

/// Largest form body accepted on the confirmation page.
const MAX_FORM_BYTES: usize = 4096;

/// A response of `content_type` that is never cached; HEAD gets the headers only.
fn plain_response(
    status: http::StatusCode,
    content_type: &'static str,
    body: String,
    head: bool,
) -> HttpResponse {
    let len = body.len();
    let mut resp = HttpResponse::new(if head {
        HttpBody::empty()
    } else {
        HttpBody::from(body)
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn html_response(status: http::StatusCode, body: String, head: bool) -> HttpResponse {
    let mut resp = plain_response(status, "text/html; charset=utf-8", body, head);
    let h = resp.headers_mut();
    h.insert(
        "referrer-policy",
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    resp
}

/// Decodes `application/x-www-form-urlencoded` text (also a query string).
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn confirm_route(service: Arc<crate::service::Service>, req: HttpRequest) -> HttpResponse {
    use crate::notice::{confirm_page, message_page};
    use http_body_util::BodyExt as _;
    let method = req.method().clone();
    let head = method == http::Method::HEAD;
    let bad =
        |title: &str, msg: &str, status| html_response(status, message_page(title, msg), head);
    let id_text = req.uri().path().trim_start_matches("/confirm/").to_owned();
    let mut raw = [0u8; 16];
    if hex::decode_to_slice(&id_text, &mut raw).is_err() {
        return bad(
            "Not found",
            "This link does not name a request.",
            http::StatusCode::NOT_FOUND,
        );
    }
    let id = satcosign_cosigner::decision::RequestId(raw);
    if method == http::Method::GET || head {
        let query = parse_form(req.uri().query().unwrap_or(""));
        let code = field(&query, "t").unwrap_or("").to_owned();
        return match service.page_view(id, &code).await {
            Ok((wallet, record, expires_at)) => html_response(
                http::StatusCode::OK,
                confirm_page(&wallet, &record, &code, Some(expires_at), service.network),
                head,
            ),
            Err(e) => bad(
                "This link does not work",
                &e.to_string(),
                http::StatusCode::NOT_FOUND,
            ),
        };
    }
    if method != http::Method::POST {
        return bad(
            "Method not allowed",
            "Use the buttons on the page.",
            http::StatusCode::METHOD_NOT_ALLOWED,
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return bad(
                "Too large",
                "The form is too large.",
                http::StatusCode::PAYLOAD_TOO_LARGE,
            )
        }
    };
    let form = parse_form(&String::from_utf8_lossy(&body));
    let code = field(&form, "t").unwrap_or("");
    let approve = match field(&form, "action") {
        Some("confirm") => true,
        Some("reject") => false,
        _ => {
            return bad(
                "Bad request",
                "Press Confirm or Reject.",
                http::StatusCode::BAD_REQUEST,
            )
        }
    };
    match service.confirm(id, code, approve).await {
        Ok(state) if approve => {
            let record = service.request(id).await.ok();
            let when = record
                .and_then(|r| service.expected(&r, state))
                .map(|e| format!(" Queued: {}.", e.sentence(std::time::SystemTime::now())))
                .unwrap_or_default();
            html_response(
                http::StatusCode::OK,
                message_page(
                    "Confirmed",
                    &format!("Thank you. The request goes to the satellite at its next pass;{when} You will get an email with the outcome."),
                ),
                false,
            )
        }
        Ok(_) => html_response(
            http::StatusCode::OK,
            message_page("Rejected", "Nothing will be signed. If you did not make this request, move your funds with your own two keys."),
            false,
        ),
        Err(e) => bad("Not confirmed", &e.to_string(), http::StatusCode::CONFLICT),
    }
}

fn health_response(sources: Option<&crate::health::HealthSources>, head: bool) -> HttpResponse {
    let Some(sources) = sources else {
        let body = serde_json::json!({"status": "ok", "server_version": SERVER_VERSION});
        return plain_response(
            http::StatusCode::OK,
            "application/json",
            body.to_string(),
            head,
        );
    };
    let (verdict, body) = crate::health::report(sources, crate::service::unix_now());
    let status = match verdict {
        crate::health::Verdict::Failing => http::StatusCode::SERVICE_UNAVAILABLE,
        _ => http::StatusCode::OK,
    };
    plain_response(status, "application/json", body.to_string(), head)
}

async fn metrics_response(source: &crate::metrics::Source, head: bool) -> HttpResponse {
    let (status, body) = match crate::metrics::render(source).await {
        Ok(text) => (http::StatusCode::OK, text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the metrics");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!("storage error: {e}\n"),
            )
        }
    };
    plain_response(
        status,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
        head,
    )
}

impl<S> Service<HttpRequest> for Routes<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Send,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if let (Some(service), "/key") = (&self.service, req.uri().path()) {
            let service = service.clone();
            let relay = self.nostr_relay.clone();
            return Box::pin(async move {
                let head = req.method() == http::Method::HEAD;
                let (status, page) = crate::key_page::route(service, req.method(), relay).await;
                Ok(html_response(status, page, head))
            });
        }
        if let (Some(service), true) = (
            &self.service,
            req.uri().path().starts_with(crate::cancel_page::PREFIX),
        ) {
            let service = service.clone();
            return Box::pin(async move {
                let head = req.method() == http::Method::HEAD;
                let (status, page) =
                    crate::cancel_page::route(service, req.method(), req.uri().path()).await;
                Ok(html_response(status, page, head))
            });
        }
        if req.uri().path().starts_with("/confirm/") {
            if let Some(service) = self.service.clone() {
                return Box::pin(async move { Ok(confirm_route(service, req).await) });
            }
        }
        if let (Some(source), "/metrics") = (&self.metrics, req.uri().path()) {
            let method = req.method().clone();
            if method == http::Method::GET || method == http::Method::HEAD {
                let source = source.clone();
                return Box::pin(async move {
                    Ok(metrics_response(&source, method == http::Method::HEAD).await)
                });
            }
        }
        if let (true, "/status", Some(service), Some(sources)) = (
            self.status_page,
            req.uri().path(),
            &self.service,
            &self.health,
        ) {
            let method = req.method().clone();
            if method == http::Method::GET || method == http::Method::HEAD {
                let (service, sources) = (service.clone(), sources.clone());
                return Box::pin(async move {
                    let head = method == http::Method::HEAD;
                    Ok(
                        match crate::status_page::render(
                            &service,
                            &sources,
                            std::time::SystemTime::now(),
                        )
                        .await
                        {
                            Ok(page) => html_response(http::StatusCode::OK, page, head),
                            Err(e) => html_response(
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                crate::notice::message_page("Unavailable", &e.to_string()),
                                head,
                            ),
                        },
                    )
                });
            }
        }
        if req.uri().path() == "/health" {
            let method = req.method();
            if method == http::Method::GET || method == http::Method::HEAD {
                let head = method == http::Method::HEAD;
                let sources = self.health.clone();
                return Box::pin(async move {
                    // A database server is asked now: no write may have tried it lately.
                    if let Some(pg) = sources.as_ref().and_then(|s| s.store.postgres()) {
                        pg.probe().await;
                    }
                    Ok(health_response(sources.as_ref(), head))
                });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// The JSON-RPC limits every transport shares (set in `[electrum]`): batch size, answer
/// size, subscriptions per connection.
#[derive(Debug, Clone, Copy)]
pub struct RpcLimits {
    /// Most calls in a batch.
    pub max_batch: usize,
    /// Largest answer, bytes.
    pub max_response_bytes: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// One HTTP request's answer, boxed so the connection task's type is nameable.
type ServeFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

/// One connection served until it ends or the server stops (boxed, which spares the
/// accept loop's task a higher-ranked `Send` check that rustc cannot prove).
fn serve_connection<S>(
    socket: crate::read_rate::Throttled<tokio::net::TcpStream>,
    svc: S,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
where
    S: Service<http::Request<hyper::body::Incoming>, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(jsonrpsee::server::serve_with_graceful_shutdown(
        socket, svc, stopped,
    ))
}

/// The running HTTP server: stop it with `handle`; `accept` is its accept loop.
pub struct HttpServer {
    /// Stops the server's connections (gracefully) when told.
    pub handle: ServerHandle,
    /// The accept loop; abort it to stop taking connections.
    pub accept: tokio::task::JoinHandle<()>,
    /// The address it listens on.
    pub local: SocketAddr,
}

/// Starts the HTTP + WebSocket server on `listener`.
///
/// The accept loop is the bridge's own (jsonrpsee's service per connection), so each
/// connection is admitted by [`Admission`](crate::admission::Admission), a cap with a share
/// per peer address, refused at once when over it, and each call knows the client's
/// address ([`crate::admission::ClientAddr`]) for per-client limits.
#[allow(clippy::too_many_arguments)]
pub fn start(
    listener: tokio::net::TcpListener,
    cfg: &HttpConfig,
    limits: RpcLimits,
    methods: Methods,
    service: Option<Arc<crate::service::Service>>,
    health: crate::health::HealthSources,
    nostr_relay: Option<String>,
    rates: Arc<crate::read_rate::ReadRates>,
) -> std::io::Result<HttpServer> {
    // The operator's page: on by default only where nobody but this machine can reach it.
    let status_page = cfg
        .status_page
        .unwrap_or_else(|| listener.local_addr().is_ok_and(|a| a.ip().is_loopback()));
    let metrics = cfg.metrics.then(|| crate::metrics::Source {
        service: service.clone(),
        link_status: health.link.clone(),
        passes: health.passes.clone(),
    });
    let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let config = ServerConfig::builder()
        .max_request_body_size(cfg.max_body_bytes)
        .max_response_body_size(as_u32(limits.max_response_bytes))
        .max_connections(cfg.max_connections)
        .max_subscriptions_per_connection(as_u32(limits.max_subscriptions))
        .set_batch_request_config(jsonrpsee::server::BatchRequestConfig::Limit(as_u32(
            limits.max_batch,
        )))
        .build();
    let builder = Server::builder()
        .set_config(config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(RoutesLayer {
            service,
            metrics,
            health: Some(health),
            status_page,
            nostr_relay,
        }))
        .to_service_builder();
    let local = listener.local_addr()?;
    let admission = crate::admission::Admission::new(
        cfg.max_connections as usize,
        cfg.max_connections_per_peer as usize,
        ("http_connections", "http_connections_per_peer"),
    );
    let (stop, handle) = jsonrpsee::server::stop_channel();
    let accept = tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: the cap should prevent them; don't spin.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admitted = match admission.admit(peer.ip()) {
                Ok(a) => a,
                // Refused: counted and logged by admission; the socket closes here.
                Err(_) => continue,
            };
            let rpc = builder.clone().build(methods.clone(), stop.clone());
            let ip = peer.ip();
            let socket = rates.wrap(ip, socket);
            let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(crate::admission::ClientAddr::of(ip));
                let mut rpc = rpc.clone();
                let answer: ServeFuture =
                    Box::pin(async move { rpc.call(req.map(HttpBody::new)).await });
                answer
            });
            let stopped = stop.clone().shutdown();
            tokio::spawn(async move {
                let _admitted = admitted;
                if let Err(e) = serve_connection(socket, svc, stopped).await {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
            });
        }
    });
    Ok(HttpServer {
        handle,
        accept,
        local,
    })
}
