//! The HTTP port: JSON-RPC over HTTP POST and WebSocket (jsonrpsee's server), plus plain
//! HTTP routes served beside it (`GET /health`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use jsonrpsee::server::{
    HttpBody, HttpRequest, HttpResponse, Methods, Server, ServerConfig, ServerHandle,
};
use tower::{Layer, Service};

use crate::config::HttpConfig;
use crate::rpc::SERVER_VERSION;

/// Answers the bridge's plain HTTP routes and passes everything else to JSON-RPC.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoutesLayer;

impl<S> Layer<S> for RoutesLayer {
    type Service = Routes<S>;

    fn layer(&self, inner: S) -> Routes<S> {
        Routes { inner }
    }
}

/// The service made by [`RoutesLayer`].
#[derive(Clone, Debug)]
pub struct Routes<S> {
    inner: S,
}

fn health_response(head: bool) -> HttpResponse {
    let body = serde_json::json!({"status": "ok", "server_version": SERVER_VERSION}).to_string();
    let len = body.len();
    let body = if head {
        HttpBody::empty()
    } else {
        HttpBody::from(body)
    };
    let mut resp = HttpResponse::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
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
        if req.uri().path() == "/health" {
            let method = req.method();
            if method == http::Method::GET || method == http::Method::HEAD {
                let resp = health_response(method == http::Method::HEAD);
                return Box::pin(async move { Ok(resp) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// Starts the HTTP + WebSocket server; returns its handle and the address it listens on.
pub async fn start(
    addr: SocketAddr,
    cfg: &HttpConfig,
    methods: Methods,
) -> std::io::Result<(ServerHandle, SocketAddr)> {
    let config = ServerConfig::builder()
        .max_request_body_size(cfg.max_body_bytes)
        .max_connections(cfg.max_connections)
        .build();
    let server = Server::builder()
        .set_config(config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(RoutesLayer))
        .build(addr)
        .await?;
    let local = server.local_addr()?;
    Ok((server.start(methods), local))
}
