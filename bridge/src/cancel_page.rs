//! `/cancel/<request id>`: the page behind a hold email's link. A GET shows what is held
//! and until when, and changes nothing (mail scanners follow links); the page's POST button
//! cancels, as `request.cancel` does, and the cancel goes up the link to the satellite.
//!
//! The request id is the capability, as for `request.cancel`: 128 random bits that only
//! the wallet's owner (their email, their Electrum) is told.

use std::sync::Arc;

use satcosign_cosigner::decision::RequestId;

use crate::notice::{cancel_page, message_page};
use crate::service::Service;

/// The path's prefix.
pub const PREFIX: &str = "/cancel/";

/// Answers `method` on `path` (which starts with [`PREFIX`]).
pub async fn route(
    service: Arc<Service>,
    method: &http::Method,
    path: &str,
) -> (http::StatusCode, String) {
    let mut raw = [0u8; 16];
    if hex::decode_to_slice(path.trim_start_matches(PREFIX), &mut raw).is_err() {
        return (
            http::StatusCode::NOT_FOUND,
            message_page("Not found", "This link does not name a request."),
        );
    }
    let id = RequestId(raw);
    if method == http::Method::GET || method == http::Method::HEAD {
        let shown = async {
            let r = service.request(id).await?;
            let wallet = service.wallet_record(r.wallet_id).await?;
            Ok::<_, crate::service::ServiceError>(cancel_page(&wallet, &r, service.network))
        };
        return match shown.await {
            Ok(page) => (http::StatusCode::OK, page),
            Err(e) => (
                http::StatusCode::NOT_FOUND,
                message_page("This link does not work", &e.to_string()),
            ),
        };
    }
    if method != http::Method::POST {
        return (
            http::StatusCode::METHOD_NOT_ALLOWED,
            message_page("Method not allowed", "Use the button on the page."),
        );
    }
    match service.cancel(id).await {
        Ok(_) => (
            http::StatusCode::OK,
            message_page(
                "Cancelled",
                "Nothing will be signed. The satellite is told at its next pass, and you will \
                 get an email with the outcome.",
            ),
        ),
        Err(e) => (
            http::StatusCode::CONFLICT,
            message_page("Not cancelled", &e.to_string()),
        ),
    }
}
