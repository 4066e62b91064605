//! Mail through a real SMTP server the way a production relay wants it: STARTTLS (the
//! default `email.smtp_security`) with the server's own certificate, trusted through
//! `email.smtp_ca_file`, and AUTH PLAIN with the password from `email.smtp_password_file`.
//! Without the certificate, or with a wrong password, nothing is sent in the clear or at
//! all: the failure is counted in `/metrics` and the request waits to be retried.

mod common;

use std::path::Path;
use std::time::Duration;

use mailin_embedded::SslConfig;
use serde_json::json;

use common::flow::{http_raw, sky, test_wallet, Flow, Inbox};
use satcosign_bridge::config::{Config, SmtpSecurity};

/// A certificate for `localhost` and its key, as PEM files in `dir`.
fn certificate(dir: &Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_path, key_path) = (dir.join("smtp.pem"), dir.join("smtp.key"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

fn secure_smtp(c: &mut Config, port: u16, dir: &Path, password: &str, trust: Option<&str>) {
    let password_file = dir.join(format!("smtp-password-{password}"));
    std::fs::write(&password_file, format!("{password}\n")).expect("write");
    c.email.smtp_host = Some("localhost".into());
    c.email.smtp_port = Some(port);
    c.email.smtp_security = SmtpSecurity::Starttls;
    c.email.smtp_username = Some("satcosign".into());
    c.email.smtp_password_file = Some(password_file);
    c.email.smtp_ca_file = trust.map(Into::into);
}

/// Registers the flow's test wallet; returns the registration's request id.
async fn register(flow: &Flow) -> String {
    let w = test_wallet(flow).await;
    let r = flow
        .ok(
            "wallet.register",
            vec![json!(w.descriptor), json!("gil@example.org"), json!("Gil")],
        )
        .await;
    r["request_id"].as_str().expect("id").to_owned()
}

async fn email_failures(flow: &Flow) -> f64 {
    let (_, text) = http_raw(
        flow.http_addr(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    text.lines()
        .find_map(|l| l.strip_prefix("satcosign_email_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("email failures counted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_with_a_login_and_not_without_trust_or_the_password() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(tmp.path());
    let tls = || SslConfig::SelfSigned {
        cert_path: cert.clone(),
        key_path: key.clone(),
    };
    let (inbox, port) = Inbox::start_with(tls(), Some(("satcosign", "s3cret")));

    // Trusted and logged in: the registration email arrives and its code works.
    let dir = tmp.path().to_owned();
    let ca = cert.clone();
    let flow = Flow::start(sky(0.0), |c| {
        secure_smtp(c, port, &dir, "s3cret", Some(&ca))
    })
    .await;
    let id = register(&flow).await;
    let code = inbox.code(&id).await;
    flow.ok("request.confirm", vec![json!(id), json!(code)])
        .await;
    let done = flow.wait_state(&id, "delivered", 60).await;
    assert_eq!(done["final_state"], "signed", "{done}");
    assert_eq!(email_failures(&flow).await, 0.0);
    flow.system.stop().await;

    // The server's certificate not trusted, or the wrong password: nothing is sent.
    for (password, trust) in [("s3cret", None), ("guess", Some(cert.as_str()))] {
        let (inbox, port) = Inbox::start_with(tls(), Some(("satcosign", "s3cret")));
        let dir = tmp.path().to_owned();
        let flow = Flow::start(sky(0.0), |c| secure_smtp(c, port, &dir, password, trust)).await;
        let id = register(&flow).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while email_failures(&flow).await < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{password}/{trust:?}: no failure counted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Retried with growing waits (1 s, 2 s, 4 s...), not hammered.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let failures = email_failures(&flow).await;
        assert!(
            (2.0..=4.0).contains(&failures),
            "{password}/{trust:?}: {failures} tries in about 4 s"
        );
        assert!(
            inbox.all().is_empty(),
            "{password}/{trust:?}: nothing arrives"
        );
        // The request waits for mail to work again (it is retried), not lost.
        assert_eq!(flow.status(&id).await["state"], "received");
        flow.system.stop().await;
    }
}
