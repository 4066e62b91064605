//! Every configuration value checked at load, each error naming its key: listeners, limits,
//! the Nostr relay, the satellite and its link (with `[satellite.orbit]`), email, the gate,
//! the upstream server and the mailbox.

use super::*;

impl Config {
    /// Checks every value; called at load and again after command-line overrides.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.store.check()?;
        let listeners = self.listeners()?;
        if listeners.electrum_tls.is_some()
            && (self.electrum.tls_cert.is_none() || self.electrum.tls_key.is_none())
        {
            return Err(ConfigError::Invalid {
                key: "electrum.tls",
                reason: "a TLS listener needs both electrum.tls_cert and electrum.tls_key".into(),
            });
        }
        if listeners.electrum_tcp.is_none()
            && listeners.electrum_tls.is_none()
            && listeners.http.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "electrum.tcp",
                reason: "every listener is disabled; enable at least one".into(),
            });
        }
        let n = &self.nostr;
        for (key, value, range) in [
            ("nostr.max_event_bytes", n.max_event_bytes, 1024..=16 << 20),
            (
                "nostr.max_message_bytes",
                n.max_message_bytes,
                1024..=64 << 20,
            ),
            ("nostr.max_subscriptions", n.max_subscriptions, 1..=1000),
            ("nostr.max_filters", n.max_filters, 1..=100),
            ("nostr.max_limit", n.max_limit, 1..=100_000),
            ("nostr.max_connections", n.max_connections, 1..=100_000),
            (
                "nostr.max_connections_per_peer",
                n.max_connections_per_peer,
                1..=n.max_connections.max(1),
            ),
            (
                "nostr.header_timeout_secs",
                usize::try_from(n.header_timeout_secs).unwrap_or(usize::MAX),
                1..=3600,
            ),
            (
                "nostr.idle_timeout_secs",
                usize::try_from(n.idle_timeout_secs).unwrap_or(usize::MAX),
                1..=86_400,
            ),
        ] {
            if !range.contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{value} is outside {}..={}", range.start(), range.end()),
                });
            }
        }
        if !(n.max_event_bytes..=4 << 30).contains(&n.max_stored_bytes) {
            return Err(ConfigError::Invalid {
                key: "nostr.max_stored_bytes",
                reason: format!(
                    "{} is outside nostr.max_event_bytes ({})..=4294967296",
                    n.max_stored_bytes, n.max_event_bytes
                ),
            });
        }
        if !(n.max_event_bytes..=n.max_stored_bytes).contains(&n.max_stored_bytes_per_author) {
            return Err(ConfigError::Invalid {
                key: "nostr.max_stored_bytes_per_author",
                reason: format!(
                    "{} is outside nostr.max_event_bytes ({})..=nostr.max_stored_bytes ({})",
                    n.max_stored_bytes_per_author, n.max_event_bytes, n.max_stored_bytes
                ),
            });
        }
        if n.max_event_bytes > n.max_message_bytes {
            return Err(ConfigError::Invalid {
                key: "nostr.max_event_bytes",
                reason: "must not exceed nostr.max_message_bytes".into(),
            });
        }
        if n.messages_per_minute == 0 || n.retention_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "nostr.messages_per_minute",
                reason: "nostr.messages_per_minute and nostr.retention_secs must be positive"
                    .into(),
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".into(),
            });
        }
        if !(1024..=64_000_000).contains(&self.electrum.max_line_bytes) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_line_bytes",
                reason: format!(
                    "{} is outside 1024..=64000000",
                    self.electrum.max_line_bytes
                ),
            });
        }
        if !(1..=10_000).contains(&self.electrum.max_batch) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_batch",
                reason: format!("{} is outside 1..=10000", self.electrum.max_batch),
            });
        }
        if self.electrum.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.electrum.idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.idle_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        if !(1..=self.electrum.max_connections).contains(&self.electrum.max_connections_per_peer) {
            return Err(ConfigError::Invalid {
                key: "electrum.max_connections_per_peer",
                reason: format!(
                    "{} is outside 1..=electrum.max_connections ({})",
                    self.electrum.max_connections_per_peer, self.electrum.max_connections
                ),
            });
        }
        for (key, value) in [
            ("electrum.max_unsent_bytes", self.electrum.max_unsent_bytes),
            (
                "electrum.max_response_bytes",
                self.electrum.max_response_bytes,
            ),
        ] {
            if !(65_536..=1_000_000_000).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{value} is outside 65536..=1000000000"),
                });
            }
        }
        if self.electrum.max_subscriptions == 0 {
            return Err(ConfigError::Invalid {
                key: "electrum.max_subscriptions",
                reason: "must be at least 1".into(),
            });
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "http.max_body_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if !(1..=self.http.max_connections).contains(&self.http.max_connections_per_peer) {
            return Err(ConfigError::Invalid {
                key: "http.max_connections_per_peer",
                reason: format!(
                    "{} is outside 1..=http.max_connections ({})",
                    self.http.max_connections_per_peer, self.http.max_connections
                ),
            });
        }
        if self.mailbox.ttl_secs == 0 || self.mailbox.ttl_secs > 366 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                key: "mailbox.ttl_secs",
                reason: format!(
                    "{} is outside 1..=31622400 (one year)",
                    self.mailbox.ttl_secs
                ),
            });
        }
        if !(1..=16_000_000).contains(&self.mailbox.max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "mailbox.max_message_bytes",
                reason: format!("{} is outside 1..=16000000", self.mailbox.max_message_bytes),
            });
        }
        if !(4 * self.mailbox.max_message_bytes as u64..=1 << 40)
            .contains(&self.mailbox.max_total_bytes)
        {
            return Err(ConfigError::Invalid {
                key: "mailbox.max_total_bytes",
                reason: format!(
                    "{} is outside 4 x mailbox.max_message_bytes ({})..=1099511627776",
                    self.mailbox.max_total_bytes,
                    4 * self.mailbox.max_message_bytes
                ),
            });
        }
        let least = 2 * self.mailbox.max_message_bytes as u64;
        if !(least..=1 << 40).contains(&self.mailbox.put_bytes_per_minute_per_peer) {
            return Err(ConfigError::Invalid {
                key: "mailbox.put_bytes_per_minute_per_peer",
                reason: format!(
                    "{} is outside 2 x mailbox.max_message_bytes ({least})..=1099511627776",
                    self.mailbox.put_bytes_per_minute_per_peer
                ),
            });
        }
        if !(1024..=1 << 40).contains(&self.limits.read_bytes_per_second_per_peer) {
            return Err(ConfigError::Invalid {
                key: "limits.read_bytes_per_second_per_peer",
                reason: format!(
                    "{} is outside 1024..=1099511627776",
                    self.limits.read_bytes_per_second_per_peer
                ),
            });
        }
        let largest = [
            self.electrum.max_line_bytes as u64,
            u64::from(self.http.max_body_bytes),
            self.nostr.max_message_bytes as u64,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if !(largest..=1 << 40).contains(&self.limits.read_burst_bytes_per_peer) {
            return Err(ConfigError::Invalid {
                key: "limits.read_burst_bytes_per_peer",
                reason: format!(
                    "{} is outside the largest request a listener takes ({largest})..=1099511627776",
                    self.limits.read_burst_bytes_per_peer
                ),
            });
        }
        if !(1..=100_000).contains(&self.mailbox.puts_per_minute_per_peer) {
            return Err(ConfigError::Invalid {
                key: "mailbox.puts_per_minute_per_peer",
                reason: format!(
                    "{} is outside 1..=100000",
                    self.mailbox.puts_per_minute_per_peer
                ),
            });
        }
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !self.satellite.account_key.is_empty() {
            if let Err(e) = self
                .satellite
                .account_key
                .parse::<satcosign_cosigner::keys::AccountKey>()
            {
                return invalid("satellite.account_key", e.to_string());
            }
        }
        if !self.satellite.link_public_key.is_empty() {
            if let Err(e) = satcosign_link::crypto::parse_public(&self.satellite.link_public_key) {
                return invalid("satellite.link_public_key", e.to_string());
            }
        }
        match self.satellite.transport.as_str() {
            "udp" => {
                parse_listen("satellite.udp_bind", &self.satellite.udp_bind)?;
                parse_listen("satellite.udp_peer", &self.satellite.udp_peer)?;
            }
            "kiss-tcp" if !self.satellite.kiss_tcp.is_empty() => {}
            "kiss-tcp" => {
                return invalid("satellite.kiss_tcp", "kiss-tcp needs a host:port".into())
            }
            other => {
                return invalid(
                    "satellite.transport",
                    format!("`{other}` is not one of udp, kiss-tcp"),
                )
            }
        }
        if !(64..=4096).contains(&self.satellite.mtu) {
            return invalid(
                "satellite.mtu",
                format!("{} is outside 64..=4096", self.satellite.mtu),
            );
        }
        if self.satellite.bitrate < 100 {
            return invalid("satellite.bitrate", "must be at least 100".into());
        }
        self.satellite.orbit.check()?;
        if !(0.0..0.5).contains(&self.satellite.expected_loss) {
            return invalid(
                "satellite.expected_loss",
                format!("{} is outside 0..0.5", self.satellite.expected_loss),
            );
        }
        if let Err(e) = crate::mail::parse_address(&self.email.from) {
            return invalid("email.from", e.to_string());
        }
        if self.email.smtp_username.is_some() && self.email.smtp_password_file.is_none() {
            return invalid(
                "email.smtp_password_file",
                "email.smtp_username is set, so a password file is needed".into(),
            );
        }
        if let Some(url) = &self.email.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("email.public_url", format!("`{url}` is not an http(s) URL"));
            }
        }
        if !(1..=30 * 24 * 3600).contains(&self.gate.token_ttl_secs) {
            return invalid(
                "gate.token_ttl_secs",
                format!("{} is outside 1..=2592000", self.gate.token_ttl_secs),
            );
        }
        if !(1..=100).contains(&self.gate.max_attempts) {
            return invalid(
                "gate.max_attempts",
                format!("{} is outside 1..=100", self.gate.max_attempts),
            );
        }
        if !(1..=100).contains(&self.gate.max_emails) {
            return invalid(
                "gate.max_emails",
                format!("{} is outside 1..=100", self.gate.max_emails),
            );
        }
        if self.gate.max_requests_per_hour == 0 {
            return invalid("gate.max_requests_per_hour", "must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.gate.max_psbt_inputs) {
            return invalid(
                "gate.max_psbt_inputs",
                format!("{} is outside 1..=10000", self.gate.max_psbt_inputs),
            );
        }
        if !(1..=100_000).contains(&self.gate.max_psbt_outputs) {
            return invalid(
                "gate.max_psbt_outputs",
                format!("{} is outside 1..=100000", self.gate.max_psbt_outputs),
            );
        }
        for (key, value) in [
            ("gate.max_keys_per_hour", self.gate.max_keys_per_hour),
            (
                "gate.max_keys_per_client_per_hour",
                self.gate.max_keys_per_client_per_hour,
            ),
            (
                "gate.max_changes_per_wallet_per_day",
                self.gate.max_changes_per_wallet_per_day,
            ),
            (
                "gate.max_registrations_per_client_per_hour",
                self.gate.max_registrations_per_client_per_hour,
            ),
            (
                "gate.max_registrations_per_email_per_day",
                self.gate.max_registrations_per_email_per_day,
            ),
            (
                "gate.max_registrations_per_hour",
                self.gate.max_registrations_per_hour,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        let url = &self.upstream.url;
        if !(url.is_empty() || url.starts_with("tcp://") || url.starts_with("ssl://")) {
            return invalid(
                "upstream.url",
                format!("`{}` must start with tcp:// or ssl://", self.upstream.url),
            );
        }
        if !(1..=86_400).contains(&self.upstream.poll_secs) {
            return invalid(
                "upstream.poll_secs",
                format!("{} is outside 1..=86400", self.upstream.poll_secs),
            );
        }
        if !(1..=1000).contains(&self.upstream.confirmations) {
            return invalid(
                "upstream.confirmations",
                format!("{} is outside 1..=1000", self.upstream.confirmations),
            );
        }
        if self.upstream.watch_secs < self.upstream.poll_secs {
            return invalid(
                "upstream.watch_secs",
                "must be at least upstream.poll_secs".into(),
            );
        }
        if let (Some(host), SmtpSecurity::Plain) = (&self.email.smtp_host, self.email.smtp_security)
        {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return invalid(
                    "email.smtp_security",
                    format!(
                        "plain (unencrypted) SMTP is for a server on this machine only, not {host}; \
                         use starttls or tls"
                    ),
                );
            }
        }
        if let Err(e) = self.default_policy.check() {
            return invalid("default_policy", e.to_string());
        }
        Ok(())
    }
}
