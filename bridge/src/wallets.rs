//! Wallets: satellite keys issued, registrations, and the changes an owner confirms by
//! email (address, policy).
//!
//! Decides who may register what (the descriptor's keys, the issued satellite key bound to
//! one wallet, the per-inbox, per-client and global registration allowances) and that every
//! change of a wallet waits for the registered address, within a daily allowance per wallet.

use bitcoin::bip32::Fingerprint;
use bitcoin::hashes::Hash as _;
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::ForEachKey as _;

use satcosign_cosigner::decision::RequestId;
use satcosign_cosigner::keys::AccountKey;
use satcosign_cosigner::policy::Policy;
use satcosign_cosigner::wallet::{Wallet, WalletId};

use crate::allowance::{self, Allowance};
use crate::lifecycle::open_in;
use crate::mailbox::keyhash_of;
use crate::service::*;
use crate::state::{
    self, db_err, load_wallet, save_wallet, Action, State, WalletRecord, WalletState,
    WALLET_BY_FINGERPRINT,
};
use crate::store::tables::ReadableTable as _;

impl Service {
    /// `satellite.new_key`: a fresh satellite key for a wallet about to be created, after
    /// the rate limits (per client when the transport knows it, and in all).
    pub async fn new_key(
        &self,
        client: Option<std::net::IpAddr>,
    ) -> Result<AccountKey, ServiceError> {
        let issuer = self.issuer.clone();
        let mut limits = vec![Allowance {
            key: crate::wallet_keys::ALL_CLIENTS,
            max: self.gate.max_keys_per_hour,
            window_secs: 3600,
            what: "satellite keys issued on this bridge this hour",
        }];
        if let Some(ip) = client {
            use bitcoin::hashes::sha256;
            limits.push(Allowance {
                key: sha256::Hash::hash(format!("client:{ip}").as_bytes()).to_byte_array(),
                max: self.gate.max_keys_per_client_per_hour,
                window_secs: 3600,
                what: "satellite keys for this client this hour",
            });
        }
        let now = unix_now();
        let key = self
            .store
            .write(move |txn| crate::wallet_keys::issue(txn, &issuer, &limits, now))
            .await??;
        tracing::info!(key_id = %hex::encode(keyhash_of(&key.xpub.public_key).0), "satellite key issued");
        if let Some(n) = self.nostr.get() {
            n.serve_key(&key);
        }
        self.tell_peers(crate::peers::Heard::Identities);
        Ok(key)
    }

    /// The satellite key of a registered wallet.
    pub fn satellite_key(&self, record: &WalletRecord) -> Result<AccountKey, ServiceError> {
        self.issuer
            .wallet_key(record.key_index)
            .map_err(|e| ServiceError::BadDescriptor(e.to_string()))
    }

    /// `wallet.register`: checks the descriptor now and emails a confirmation.
    pub async fn register_wallet(
        &self,
        descriptors: Vec<String>,
        email: String,
        label: String,
        policy: Option<Policy>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(WalletId, RequestId), ServiceError> {
        let email = email.trim().to_owned();
        check_email(&email)?;
        check_label(&label)?;
        let descriptors: Vec<String> = descriptors.iter().map(|d| plain_xpubs(d)).collect();
        let policy = policy.unwrap_or_else(|| self.default_policy.clone());
        policy.check().map_err(|e| ServiceError::Invalid {
            field: "policy",
            reason: e.to_string(),
        })?;
        let xpubs = descriptor_xpubs(&descriptors);
        let issuer = self.issuer.clone();
        let found = self
            .store
            .read(move |txn| {
                let t = txn
                    .open_table(crate::wallet_keys::ISSUED_KEYS)
                    .map_err(db_err)?;
                crate::wallet_keys::find_in(&t, &issuer, &xpubs)
            })
            .await??;
        let wallet = Wallet::from_descriptors(&descriptors, &found.key)
            .map_err(|e| ServiceError::BadDescriptor(e.to_string()))?;
        let wallet_id = wallet.id;
        let satellite_key = found.key;
        let fingerprints = wallet_fingerprints(&descriptors);
        let now = unix_now();
        let request_id = RequestId(random_id());
        let email_key: [u8; 32] = {
            use bitcoin::hashes::sha256;
            sha256::Hash::hash(mailbox_of(&email).as_bytes()).to_byte_array()
        };
        let mut limits = vec![
            Allowance {
                key: email_key,
                max: self.gate.max_registrations_per_email_per_day,
                window_secs: 24 * 3600,
                what: "registrations for this email address",
            },
            Allowance {
                key: state::ALL_REGISTRATIONS,
                max: self.gate.max_registrations_per_hour,
                window_secs: 3600,
                what: "registrations on this bridge",
            },
        ];
        if let Some(ip) = client {
            use bitcoin::hashes::sha256;
            let key = sha256::Hash::hash(format!("registrations from:{ip}").as_bytes());
            limits.push(Allowance {
                key: key.to_byte_array(),
                max: self
                    .gate
                    .max_registrations_per_client_per_hour
                    .min(self.gate.max_registrations_per_hour),
                window_secs: 3600,
                what: "registrations from this client",
            });
        }
        let record = WalletRecord {
            id: wallet_id,
            descriptors,
            label,
            email,
            state: WalletState::Pending,
            policy,
            refusal: None,
            created_at: now,
            recent_requests: Vec::new(),
            key_index: found.issued.index,
        };
        self.store
            .write(move |txn| {
                if let Some(existing) = load_wallet(txn, &wallet_id)? {
                    if existing.state != WalletState::Refused {
                        return Ok(Err(ServiceError::WalletExists {
                            wallet_id,
                            state: wallet_state_name(existing.state),
                        }));
                    }
                }
                // Each registration emails the address given: limit them per address and
                // in all, so the bridge cannot be made to flood anyone's inbox.
                let mut recent = txn.open_table(state::REGISTRATIONS).map_err(db_err)?;
                if let Err(used_up) = allowance::take(&mut recent, &limits, now)? {
                    return Ok(Err(used_up.into()));
                }
                drop(recent);
                if let Err(e) = crate::wallet_keys::bind(txn, &satellite_key, wallet_id)? {
                    return Ok(Err(e.into()));
                }
                save_wallet(txn, &record)?;
                let mut index = txn.open_table(WALLET_BY_FINGERPRINT).map_err(db_err)?;
                for fp in &fingerprints {
                    index
                        .insert(&index_key(fp, &wallet_id), ())
                        .map_err(db_err)?;
                }
                drop(index);
                open_in(
                    txn,
                    &new_request(
                        request_id,
                        wallet_id,
                        Action::Register,
                        State::Received,
                        now,
                    ),
                )?;
                Ok(Ok(()))
            })
            .await??;
        if let Some(n) = self.nostr.get() {
            n.serve_members(&wallet);
        }
        self.tell_peers(crate::peers::Heard::Identities);
        self.transitioned(request_id, State::Received).await;
        Ok((wallet_id, request_id))
    }

    /// `wallet.update_email`: confirmed at the old address; both addresses are told.
    pub async fn update_email(
        &self,
        wallet_id: WalletId,
        new_email: String,
    ) -> Result<RequestId, ServiceError> {
        check_email(&new_email)?;
        let wallet = self.wallet_record(wallet_id).await?;
        if wallet.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: wallet_state_name(wallet.state),
            });
        }
        self.new_wallet_request(wallet_id, Action::UpdateEmail { new_email })
            .await
    }

    /// `wallet.set_policy`: a change that only tightens goes to the cosigner at once; one
    /// that loosens anything waits for email confirmation (and the cosigner's own delay).
    pub async fn set_policy(
        &self,
        wallet_id: WalletId,
        policy: Policy,
    ) -> Result<(RequestId, bool), ServiceError> {
        policy.check().map_err(|e| ServiceError::Invalid {
            field: "policy",
            reason: e.to_string(),
        })?;
        let wallet = self.wallet_record(wallet_id).await?;
        if wallet.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: wallet_state_name(wallet.state),
            });
        }
        // Every change is confirmed from the registered email, tightening included: a
        // stranger's "tightening" (a limit of 1,000 sat, an allowlist of their address)
        // would lock the owner out. Once confirmed, a tightening applies at once on the
        // satellite and a loosening after its delay.
        let tightening = policy.is_tightening_of(&wallet.policy);
        let id = self
            .new_wallet_request(wallet_id, Action::SetPolicy { policy })
            .await?;
        Ok((id, tightening))
    }

    /// `wallet.lockdown` and `wallet.unlock`: the wallet's policy with signing frozen (or
    /// not), confirmed by email like any change. Once confirmed, a lockdown stops every
    /// request that has not reached the satellite and applies there at once; an unlock is a
    /// loosening, applied after the satellite's delay.
    pub async fn set_lockdown(
        &self,
        wallet_id: WalletId,
        locked: bool,
    ) -> Result<RequestId, ServiceError> {
        let wallet = self.wallet_record(wallet_id).await?;
        if wallet.state != WalletState::Active {
            return Err(ServiceError::WalletNotActive {
                wallet_id,
                state: wallet_state_name(wallet.state),
            });
        }
        if wallet.policy.locked == locked {
            return Err(ServiceError::Invalid {
                field: "wallet_id",
                reason: format!(
                    "wallet {wallet_id} is {} already",
                    if locked { "locked down" } else { "unlocked" }
                ),
            });
        }
        let policy = Policy {
            locked,
            ..wallet.policy
        };
        if locked {
            return self.open_lockdown(wallet_id, policy).await;
        }
        self.new_wallet_request(wallet_id, Action::SetPolicy { policy })
            .await
    }

    /// Opens lockdown `policy` for wallet `wallet_id`. An emergency must not wait on an
    /// allowance a stranger could use up, so a lockdown counts against none; instead, while
    /// one awaits its email, asking again answers that one (its email is in the owner's
    /// inbox), so strangers cause at most one email per code's lifetime.
    async fn open_lockdown(
        &self,
        wallet_id: WalletId,
        policy: Policy,
    ) -> Result<RequestId, ServiceError> {
        let id = RequestId(random_id());
        let now = unix_now();
        let (id, opened) = self
            .store
            .write(move |txn| {
                let active = txn.open_table(state::ACTIVE).map_err(db_err)?;
                let mut ids = Vec::new();
                for row in active.iter().map_err(db_err)? {
                    ids.push(RequestId(*row.map_err(db_err)?.0.value()));
                }
                drop(active);
                for other in ids {
                    let Some(r) = state::load_request(txn, &other)? else {
                        continue;
                    };
                    let pending_lockdown = r.wallet_id == wallet_id
                        && matches!(r.state, State::Received | State::AwaitingEmail)
                        && matches!(&r.action, Action::SetPolicy { policy } if policy.locked);
                    if pending_lockdown {
                        return Ok((r.id, false));
                    }
                }
                open_in(
                    txn,
                    &new_request(
                        id,
                        wallet_id,
                        Action::SetPolicy { policy },
                        State::Received,
                        now,
                    ),
                )?;
                Ok((id, true))
            })
            .await?;
        if opened {
            self.transitioned(id, State::Received).await;
        }
        Ok(id)
    }

    /// Opens a change of wallet `wallet_id` (email or policy), within the wallet's daily
    /// allowance of changes: each one emails the owner.
    pub(crate) async fn new_wallet_request(
        &self,
        wallet_id: WalletId,
        action: Action,
    ) -> Result<RequestId, ServiceError> {
        use bitcoin::hashes::sha256;
        let id = RequestId(random_id());
        let now = unix_now();
        let changes = Allowance {
            key: sha256::Hash::hash(format!("changes:{wallet_id}").as_bytes()).to_byte_array(),
            max: self.gate.max_changes_per_wallet_per_day,
            window_secs: 24 * 3600,
            what: "changes to this wallet today",
        };
        self.store
            .write(move |txn| {
                let mut recent = txn.open_table(state::REGISTRATIONS).map_err(db_err)?;
                if let Err(used_up) = allowance::take(&mut recent, &[changes], now)? {
                    return Ok(Err(ServiceError::from(used_up)));
                }
                drop(recent);
                open_in(
                    txn,
                    &new_request(id, wallet_id, action, State::Received, now),
                )?;
                Ok(Ok(()))
            })
            .await??;
        self.transitioned(id, State::Received).await;
        Ok(id)
    }
}

/// Every member xpub of the descriptors (the receive and change forms name the same ones).
pub(crate) fn descriptor_xpubs(descriptors: &[String]) -> Vec<bitcoin::bip32::Xpub> {
    let mut out = Vec::new();
    for d in descriptors {
        let text = d.split('#').next().unwrap_or(d);
        if let Ok(desc) = text.parse::<miniscript::Descriptor<DescriptorPublicKey>>() {
            desc.for_each_key(|k| {
                let x = match k {
                    DescriptorPublicKey::MultiXPub(x) => Some(x.xkey),
                    DescriptorPublicKey::XPub(x) => Some(x.xkey),
                    _ => None,
                };
                if let Some(x) = x.filter(|x| !out.contains(x)) {
                    out.push(x);
                }
                true
            });
        }
    }
    out
}

/// Every key fingerprint a PSBT of the wallet may name: each xpub's own, and each origin's.
pub(crate) fn wallet_fingerprints(descriptors: &[String]) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    for d in descriptors {
        let text = d.split('#').next().unwrap_or(d);
        if let Ok(desc) = text.parse::<miniscript::Descriptor<DescriptorPublicKey>>() {
            desc.for_each_key(|k| {
                out.push(k.master_fingerprint());
                if let DescriptorPublicKey::MultiXPub(x) = k {
                    out.push(x.xkey.fingerprint());
                }
                if let DescriptorPublicKey::XPub(x) = k {
                    out.push(x.xkey.fingerprint());
                }
                true
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The mailbox an address reaches, as the per-address limits count it: trimmed, in lower
/// case, without a `+tag` (`Victim+1@Example.org` and `victim@example.org` are one inbox).
pub fn mailbox_of(email: &str) -> String {
    let email = email.trim().to_lowercase();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split_once('+').map_or(local, |(base, _)| base);
            format!("{local}@{domain}")
        }
        None => email,
    }
}

pub(crate) fn check_email(email: &str) -> Result<(), ServiceError> {
    crate::mail::parse_address(email).map_err(|e| ServiceError::Invalid {
        field: "email",
        reason: e.to_string(),
    })?;
    if email.contains('<') {
        return Err(ServiceError::Invalid {
            field: "email",
            reason: "give the bare address, without a display name".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_label(label: &str) -> Result<(), ServiceError> {
    if label.trim().is_empty() || label.chars().count() > 64 || label.chars().any(char::is_control)
    {
        return Err(ServiceError::Invalid {
            field: "label",
            reason: "must be 1 to 64 printable characters".into(),
        });
    }
    Ok(())
}

/// Electrum shows multisig keys in SLIP-132 form (`Vpub...`, `Zpub...`); descriptors take
/// them as `tpub`/`xpub`. Rewrites every such key of `descriptor` so users can paste the
/// keys Electrum's Wallet > Information shows.
pub fn plain_xpubs(descriptor: &str) -> String {
    let mut out = String::with_capacity(descriptor.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match satcosign_cosigner::keys::parse_any_xpub(token) {
            Some(x) if token.len() > 100 && !token.starts_with(['x', 't']) => {
                out.push_str(&x.to_string())
            }
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in descriptor.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    if out != descriptor {
        // A checksum over the SLIP-132 text is not one over the rewritten descriptor.
        if let Some(i) = out.find('#') {
            out.truncate(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plain_xpubs;

    #[test]
    fn electrums_vpub_keys_become_tpubs_and_the_rest_is_unchanged() {
        let tpub = "tpubDFZBNTpvF2ZW2AUpjJ4bHTCsQRXrUxggsQcWr7HsMyBwuEUmtUcp2gNgUi46cMjuKYQaf8QTAr5U7JTUpT1SC7fQuU8Gpgt5qvxSXHwUUZb";
        let x = satcosign_cosigner::keys::parse_any_xpub(tpub).expect("tpub");
        let vpub = satcosign_cosigner::keys::slip132(&x);
        assert!(vpub.starts_with("Vpub"));
        let given = format!(
            "wsh(sortedmulti(2,[eb3191e0/48h/1h/0h/2h]{vpub}/<0;1>/*,{tpub}/<0;1>/*))#abcd"
        );
        let want =
            format!("wsh(sortedmulti(2,[eb3191e0/48h/1h/0h/2h]{tpub}/<0;1>/*,{tpub}/<0;1>/*))");
        assert_eq!(plain_xpubs(&given), want);
        assert_eq!(
            plain_xpubs("wsh(pk(garbage))#abcd"),
            "wsh(pk(garbage))#abcd"
        );
    }
}
