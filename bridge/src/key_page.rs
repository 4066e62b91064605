//! The `/key` page on the bridge's HTTP port: a satellite key for a new wallet, for users of
//! stock Electrum 4.6+ who have no plugin.
//!
//! `GET /key` shows what the key is for and a button; only the button's `POST` issues a key
//! (a page fetch, a link preview or a crawler never spends the issuing limits). The answer
//! shows the key as text and as a QR code, and the three steps: create the wallet with it,
//! register the wallet, point Electrum's Nostr cosigning at the bridge's relay.

use std::sync::Arc;

use qrcode::render::svg;
use qrcode::QrCode;

use crate::notice::{html_escape, message_page};
use crate::service::{Service, ServiceError};

/// The page before a key is issued.
pub fn ask_page() -> String {
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: a satellite key</title></head>\
     <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\
     <h1>A satellite key for a new wallet</h1>\
     <p>Every wallet gets its own satellite key: no other customer can derive it, recognize it \
     or link your wallet to theirs. Ask for one just before you create the wallet in Electrum.</p>\
     <form method=\"post\" action=\"/key\"><button id=\"issue\" type=\"submit\">Get a new satellite key</button></form>\
     </body></html>\n"
        .to_owned()
}

/// The page with an issued key.
pub fn key_page(electrum_xpub: &str, key_id: &str, nostr_relay: Option<&str>) -> String {
    let qr = QrCode::new(electrum_xpub.as_bytes())
        .map(|code| {
            code.render::<svg::Color<'_>>()
                .min_dimensions(240, 240)
                .build()
        })
        .unwrap_or_default();
    let relay = nostr_relay.map_or_else(
        || "its relay (ask the bridge's operator for the address)".to_owned(),
        |r| format!("<code>{}</code>", html_escape(r)),
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>satcosign: your satellite key</title></head>\
         <body style=\"font-family:sans-serif;max-width:44em;margin:2em auto\">\
         <h1>Your new satellite key</h1>\
         <p><textarea id=\"key\" readonly rows=\"3\" cols=\"60\">{key}</textarea></p>\
         <div id=\"qr\">{qr}</div>\
         <p>Key id: <code id=\"key_id\">{id}</code></p>\
         <ol id=\"steps\">\
         <li>In Electrum, create a new multisig wallet (2 of 3). Add your own keys, and for the \
         satellite's choose <em>Enter cosigner key</em> and paste this key (or scan the QR code).</li>\
         <li>Register the wallet with the bridge: call <code>wallet.register</code> with the wallet's \
         descriptor, your email and a label, and confirm the email the bridge sends you. This key \
         then serves that wallet alone.</li>\
         <li>In Electrum's Nostr cosigning settings, use {relay} as the relay. Sign a transaction, \
         send it to the satellite cosigner, and confirm the email that shows what it spends.</li>\
         </ol>\
         <p>This page is the only place this key is shown: keep it with your wallet's backup.</p>\
         </body></html>\n",
        key = html_escape(electrum_xpub),
        id = html_escape(key_id),
    )
}

/// Answers `/key`: the form on GET/HEAD, a new key on POST.
pub async fn route(
    service: Arc<Service>,
    method: &http::Method,
    nostr_relay: Option<String>,
) -> (http::StatusCode, String) {
    if method == http::Method::GET || method == http::Method::HEAD {
        return (http::StatusCode::OK, ask_page());
    }
    if method != http::Method::POST {
        return (
            http::StatusCode::METHOD_NOT_ALLOWED,
            message_page("Not allowed", "Use the page's button."),
        );
    }
    match service.new_key(None).await {
        Ok(key) => {
            let json = crate::wallet_keys::key_json(&key);
            (
                http::StatusCode::OK,
                key_page(
                    &key.electrum_xpub(),
                    json["key_id"].as_str().unwrap_or_default(),
                    nostr_relay.as_deref(),
                ),
            )
        }
        Err(e @ ServiceError::RateLimited { .. }) => (
            http::StatusCode::TOO_MANY_REQUESTS,
            message_page("Not now", &e.to_string()),
        ),
        Err(e) => {
            tracing::error!(error = %e, "issuing a satellite key failed");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                message_page(
                    "Not now",
                    "The bridge could not issue a key; try again later.",
                ),
            )
        }
    }
}
