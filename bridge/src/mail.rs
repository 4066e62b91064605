//! Sending the gate's emails: SMTP through lettre (implicit TLS, STARTTLS, or plain for a
//! loopback test server), or `.eml` files in a folder (the embedded default).
//!
//! Backends sit behind [`Mailer`]; the bridge never needs to know which one it has. Every
//! email is multipart/alternative: plain text first, then a simple HTML part.

use std::future::Future;
use std::pin::Pin;

use lettre::message::{Mailbox as Address, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{EmailConfig, SmtpSecurity};

/// One email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// Why an email could not be sent or built.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// An address does not parse.
    #[error("invalid email address {address:?}: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The message could not be built.
    #[error("cannot build the email: {0}")]
    Build(String),
    /// The transport failed (server down, refused, disk full...).
    #[error("cannot send the email: {0}")]
    Send(String),
}

/// Boxed future of a send.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), MailError>> + Send + 'a>>;

/// A way of delivering email.
pub trait Mailer: Send + Sync {
    /// Sends `email`.
    fn send(&self, email: Email) -> SendFuture<'_>;
    /// Where mail goes, for operators (a folder or a server address).
    fn describe(&self) -> String;
}

/// Checks that `address` is a single valid email address.
pub fn parse_address(address: &str) -> Result<Address, MailError> {
    address.parse::<Address>().map_err(|e| MailError::Address {
        address: address.to_owned(),
        reason: e.to_string(),
    })
}

fn build(from: &Address, email: &Email) -> Result<Message, MailError> {
    Message::builder()
        .from(from.clone())
        .to(parse_address(&email.to)?)
        .subject(email.subject.clone())
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| MailError::Build(e.to_string()))
}

/// A lettre transport (SMTP, or `.eml` files) and the sender address.
pub struct LettreMailer<T> {
    from: Address,
    transport: T,
    destination: String,
}

/// Builds the mailer the configuration asks for. `data_dir` holds the default mail folder.
pub fn from_config(
    cfg: &EmailConfig,
    data_dir: &std::path::Path,
) -> Result<Box<dyn Mailer>, MailError> {
    let from = parse_address(&cfg.from)?;
    match &cfg.smtp_host {
        None => {
            let dir = cfg.dir.clone().unwrap_or_else(|| data_dir.join("mail"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| MailError::Send(format!("cannot create {}: {e}", dir.display())))?;
            Ok(Box::new(MailFolder { from, dir }))
        }
        Some(host) => {
            let port = cfg.smtp_port.unwrap_or(match cfg.smtp_security {
                SmtpSecurity::Tls => 465,
                SmtpSecurity::Starttls => 587,
                SmtpSecurity::Plain => 25,
            });
            let extra_roots = match &cfg.smtp_ca_file {
                None => Vec::new(),
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        MailError::Send(format!("email.smtp_ca_file {}: {e}", path.display()))
                    })?;
                    vec![Certificate::from_pem(&pem).map_err(|e| {
                        MailError::Send(format!("email.smtp_ca_file {}: {e}", path.display()))
                    })?]
                }
            };
            let tls_params = || {
                extra_roots
                    .iter()
                    .cloned()
                    .fold(TlsParameters::builder(host.clone()), |b, c| {
                        b.add_root_certificate(c)
                    })
                    .build_rustls()
                    .map_err(|e| MailError::Send(e.to_string()))
            };
            let mut builder =
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                    .port(port)
                    .tls(match cfg.smtp_security {
                        SmtpSecurity::Tls => Tls::Wrapper(tls_params()?),
                        SmtpSecurity::Starttls => Tls::Required(tls_params()?),
                        SmtpSecurity::Plain => Tls::None,
                    });
            if let Some(user) = &cfg.smtp_username {
                let password = cfg
                    .smtp_password()
                    .map_err(|e| MailError::Send(e.to_string()))?;
                builder = builder.credentials(Credentials::new(user.clone(), password));
            }
            Ok(Box::new(LettreMailer {
                from,
                transport: builder.build(),
                destination: format!("smtp://{host}:{port} ({:?})", cfg.smtp_security),
            }))
        }
    }
}

/// Mail as `.eml` files in a folder (the embedded default). Each is written whole under a
/// temporary name, synced, then renamed, so a reader of the folder never sees a partial mail,
/// even if the process is killed while writing.
pub struct MailFolder {
    from: Address,
    dir: std::path::PathBuf,
}

impl MailFolder {
    fn write(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let name = hex::encode(id);
        // Not `.eml`: readers of the folder skip it until the rename.
        let part = dir.join(format!(".{name}.part"));
        let mut f = std::fs::File::create(&part)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&part, dir.join(format!("{name}.eml")))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Mailer for MailFolder {
    fn send(&self, email: Email) -> SendFuture<'_> {
        Box::pin(async move {
            let bytes = build(&self.from, &email)?.formatted();
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || Self::write(&dir, &bytes))
                .await
                .map_err(|e| MailError::Send(e.to_string()))?
                .map_err(|e| MailError::Send(format!("writing to {}: {e}", self.dir.display())))
        })
    }

    fn describe(&self) -> String {
        format!("{} (.eml files)", self.dir.display())
    }
}

impl<T> Mailer for LettreMailer<T>
where
    T: AsyncTransport + Send + Sync,
    T::Error: std::fmt::Display,
{
    fn send(&self, email: Email) -> SendFuture<'_> {
        Box::pin(async move {
            let message = build(&self.from, &email)?;
            self.transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Send(e.to_string()))
        })
    }

    fn describe(&self) -> String {
        self.destination.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mail_files_appear_whole_and_nothing_else_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mailer = MailFolder {
            from: parse_address("bridge@example.org").expect("from"),
            dir: dir.path().to_path_buf(),
        };
        for i in 0..3 {
            mailer
                .send(Email {
                    to: "you@example.org".into(),
                    subject: format!("mail {i}"),
                    text: "text".into(),
                    html: "<p>html</p>".into(),
                })
                .await
                .expect("send");
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for n in &names {
            assert!(n.ends_with(".eml"), "only whole mails: {n}");
            let text = std::fs::read_to_string(dir.path().join(n)).expect("read");
            assert!(
                text.contains("Subject: mail") && text.contains("html"),
                "{text}"
            );
        }
    }
}
