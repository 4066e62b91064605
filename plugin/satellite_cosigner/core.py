"""The plugin without its GUI: settings, one bridge connection, and a session per wallet.

``Settings`` lives in Electrum's config (``satcosign_bridge``, ``satcosign_tls``,
``satcosign_ca_file``, ``satcosign_email``). ``Service`` owns the bridge connection and the
satellite's public facts (``satellite.info``). ``WalletSession`` is one wallet's use of it:
registering the wallet, asking for a cosignature, confirming with the emailed code, tracking
each request's stage, and the ``Listener`` that brings the signed transaction back from the
wallet's mailbox. The session's record (wallet id, requests) is kept in the wallet file.

Nothing here imports Qt: the Qt layer (``qt.py``) only draws what this module reports, and
the tests drive this module inside Debian's real Electrum library.
"""
import threading
import time

from electrum.transaction import tx_from_any

# Electrum 4.6+ imports an external plugin as `electrum_external_plugins.<name>` from its zip,
# where `from . import module` fails (ModuleNotFoundError for the bare package name); names
# imported from submodules (`from .module import name`, as Electrum's own plugins do) work
# in every version from 4.3 on.
from .stages import FINAL, chain_key, describe as describe_stage, expected_key, is_stale, when
from .wallet_keys import (
    NotASatelliteWallet,
    descriptor as wallet_descriptor,
    encrypt_to,
    find_satellite,
    mailbox_keyhashes,
    needs_satellite as tx_needs_satellite,
    open_message,
    wallet_id as derived_wallet_id,
)
from .bridge_client import BridgeClient, parse_address
from .errors import (BridgeError, LinkDown, NOT_FOUND, SatelliteError, WalletNotRegistered,
                     WRONG_STATE)

# The bridge's default Electrum-protocol port (electrum.tcp = 127.0.0.1:50101).
DEFAULT_BRIDGE = "127.0.0.1:50101"
RECORD_KEY = "satellite_cosigner"


class Settings:
    """The plugin's settings, read from and written to Electrum's config."""

    KEYS = {"bridge": "satcosign_bridge", "tls": "satcosign_tls",
            "ca_file": "satcosign_ca_file", "email": "satcosign_email"}

    def __init__(self, bridge=DEFAULT_BRIDGE, tls=False, ca_file="", email=""):
        self.bridge = bridge
        self.tls = bool(tls)
        self.ca_file = ca_file or ""
        self.email = email or ""

    @classmethod
    def from_config(cls, config):
        return cls(bridge=config.get(cls.KEYS["bridge"], DEFAULT_BRIDGE),
                   tls=config.get(cls.KEYS["tls"], False),
                   ca_file=config.get(cls.KEYS["ca_file"], ""),
                   email=config.get(cls.KEYS["email"], ""))

    def check(self):
        """Raises ValueError naming the setting that is wrong."""
        parse_address(self.bridge)
        if self.email and ("@" not in self.email or " " in self.email.strip()):
            raise ValueError(f"email {self.email!r} is not an email address")

    def save(self, config):
        self.check()
        for attr, key in self.KEYS.items():
            config.set_key(key, getattr(self, attr), save=True)


class Service:
    """The bridge connection and the satellite's public facts, shared by all wallets."""

    ISSUED_KEY = "satcosign_issued_keys"

    def __init__(self, settings, timeout=15.0, proxy=None, config=None):
        """``proxy``: Electrum's proxy (``compat.network_proxy``); every connection to the
        bridge goes through it when set. ``config``: Electrum's config, where the satellite
        keys this plugin was given are remembered (public keys only), so a wallet made with
        one is known as the satellite's before it is registered."""
        settings.check()
        self.settings = settings
        self.config = config
        self._issued = list((config.get(self.ISSUED_KEY, []) if config is not None else []) or [])
        self._sessions = []
        self._info = None
        self.client = BridgeClient(settings.bridge, use_tls=settings.tls,
                                   ca_file=settings.ca_file or None, timeout=timeout,
                                   on_notification=self._on_notification, proxy=proxy)

    def close(self):
        for s in list(self._sessions):
            s.stop()
        self.client.close()

    def info(self, refresh=False):
        """``satellite.info``, cached; raises ``LinkDown`` if the bridge has no satellite."""
        if self._info is None or refresh:
            self._info = self.client.satellite_info()
        return self._info

    def new_key(self):
        """A fresh satellite key for a new wallet (``satellite.new_key``): every wallet has
        its own. Returns the bridge's answer (``electrum_xpub``, ``descriptor_key``,
        ``key_id``)."""
        key = self.client.new_key()
        self._issued = (self._issued + [key["electrum_xpub"]])[-100:]
        if self.config is not None:
            self.config.set_key(self.ISSUED_KEY, self._issued, save=True)
        return key

    def issued_keys(self):
        """The satellite keys this plugin was given, newest last."""
        return list(self._issued)

    def test_connection(self):
        """What "Test connection" shows: the bridge's version and the link's state."""
        version = self.client.call("server.version", "satcosign-electrum-plugin/0.1", "1.4")
        info = self.info(refresh=True)
        link = info.get("link")
        return {
            "server_version": version[0] if isinstance(version, list) else str(version),
            "network": info.get("network"),
            # In view by the pass schedule (the bridge's word), not "heard lately".
            "in_view": bool(link and link.get("in_view")),
            "queue_depth": (link or {}).get("queue_depth"),
            "current_pass": info.get("current_pass"),
            "next_pass": info.get("next_pass"),
        }

    def link_text(self, test=None):
        test = test or self.test_connection()
        np = test.get("next_pass")
        if test["in_view"]:
            link = "the satellite is in view now"
        elif np and np.get("start"):
            link = f"next pass at about {when(np['start'])}"
        else:
            link = "the satellite is out of view"
        return f"Connected to {test['server_version']} ({test['network']}); {link}."

    def _on_notification(self, method, params):
        if method != "request.subscribe" or len(params) < 2:
            return
        request_id, status = params[0], params[1]
        for s in list(self._sessions):
            s._on_status(request_id, status, pushed=True)


class WalletSession:
    """One wallet's use of the satellite.

    ``on_status(request_id, status, text)`` is called when a request changes stage;
    ``on_transaction(tx, request_id)`` when a signed transaction arrives from the mailbox.
    Both run on a background thread. ``password`` returns the wallet's password when its
    keys are encrypted (the GUI asks the user), or None.
    """

    def __init__(self, service, wallet, *, on_status=None, on_transaction=None,
                 password=None, poll_interval=30.0):
        self.service = service
        self.wallet = wallet
        self.on_status = on_status or (lambda *a: None)
        self.on_transaction = on_transaction or (lambda *a: None)
        self.password = password or (lambda: None)
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._statuses = {}
        self.listener = None
        service._sessions.append(self)

    # ---- the record in the wallet file -------------------------------------------------
    def record(self):
        raw = self.wallet.db.get(RECORD_KEY) or {}
        rec = {"wallet_id": raw.get("wallet_id"),
               "registration": raw.get("registration"),
               "requests": {k: dict(v) for k, v in (raw.get("requests") or {}).items()}}
        return rec

    def _save(self, rec):
        with self._lock:
            self.wallet.db.put(RECORD_KEY, rec)
            # Electrum writes wallet files only from non-daemon threads; from the listener
            # the record stays in memory until Electrum's next save.
            if not threading.current_thread().daemon:
                self.wallet.save_db()

    # ---- the satellite in this wallet --------------------------------------------------
    def satellite_key(self):
        """This wallet's own satellite key (``wallet.status``'s ``satellite_key``: the bridge
        knows it once the wallet is registered), or None before that."""
        with self._lock:
            if getattr(self, "_satellite_key", None):
                return self._satellite_key
        try:
            status = self.registration_status()
        except (WalletNotRegistered, BridgeError):
            return None
        key = status.get("satellite_key") or None
        with self._lock:
            self._satellite_key = key
        return key

    def satellite_xpub(self):
        """The wallet's satellite key: its own once registered; before that, one the bridge
        gave this plugin that the wallet holds."""
        key = self.satellite_key()
        if key:
            return key["electrum_xpub"]
        for xpub in reversed(self.service.issued_keys()):
            if find_satellite(self.wallet, xpub) is not None:
                return xpub
        return None

    def satellite_keystore(self):
        xpub = self.satellite_xpub()
        return find_satellite(self.wallet, xpub) if xpub else None

    def contains_satellite(self):
        return self.satellite_keystore() is not None

    def descriptor(self):
        """The descriptor to register: the bridge finds the satellite key it issued among
        the wallet's keys."""
        return wallet_descriptor(self.wallet, None)

    # ---- registration ------------------------------------------------------------------
    def register(self, email, label):
        """Sends the wallet's descriptor and email; the bridge emails a code. Returns the
        registration's request id."""
        desc = self.descriptor()
        try:
            r = self.service.client.wallet_register(desc, email, label)
        except BridgeError as e:
            if e.code == WRONG_STATE and "wallet_id" in (e.data or {}):
                # Registered before (this file, or another copy of the wallet).
                rec = self.record()
                rec["wallet_id"] = e.data["wallet_id"]
                self._save(rec)
                return None
            raise
        rec = self.record()
        rec["wallet_id"] = r["wallet_id"]
        rec["registration"] = r["request_id"]
        self._save(rec)
        self.watch(r["request_id"])
        return r["request_id"]

    def wallet_id(self):
        return self.record()["wallet_id"]

    def lockdown(self):
        """Asks the bridge to freeze signing for this wallet; the bridge emails a code, and
        once it is confirmed every pending spend is refused and the satellite locks. The
        user's own two keys can still spend without the satellite. Returns the request id."""
        return self._wallet_change(self.service.client.wallet_lockdown)

    def unlock(self):
        """Asks to lift a lockdown: confirmed by email, then the satellite's delay."""
        return self._wallet_change(self.service.client.wallet_unlock)

    def _wallet_change(self, call):
        wallet_id = self.wallet_id()
        if not wallet_id:
            raise WalletNotRegistered()
        request_id = call(wallet_id)["request_id"]
        rec = self.record()
        rec["requests"][request_id] = {"txid": "", "created": int(time.time()),
                                       "label": "", "state": "received"}
        self._save(rec)
        self.watch(request_id)
        return request_id

    def registration_status(self):
        """``wallet.status`` (state pending/active/refused), or raises WalletNotRegistered.

        A wallet this plugin never registered may have been registered by another route
        (JSON-RPC, Nostr, another copy of the wallet): the bridge is asked by the id it
        derives from the wallet's keys, and a known wallet is remembered."""
        wid = self.wallet_id()
        if wid:
            return self.service.client.wallet_status(wid)
        wid = derived_wallet_id(self.wallet)
        try:
            status = self.service.client.wallet_status(wid)
        except BridgeError as e:
            if e.code == NOT_FOUND:
                raise WalletNotRegistered() from e
            raise
        rec = self.record()
        rec["wallet_id"] = wid
        self._save(rec)
        return status

    def registration_state(self):
        """'active', 'pending', 'refused', or 'none' when never registered."""
        try:
            return self.registration_status()["state"]
        except WalletNotRegistered:
            return "none"

    def registration_text(self):
        try:
            st = self.registration_status()
        except WalletNotRegistered:
            return "Not registered with the satellite."
        if st["state"] == "active":
            return f"Registered with the satellite as \u201c{st['label']}\u201d ({st['email']})."
        if st["state"] == "refused":
            return f"The satellite refused this wallet: {st.get('refusal') or 'no reason'}."
        reg = self.record().get("registration")
        if reg:
            return "Registration pending: " + self.stage_text(reg)
        return "Registration pending."

    # ---- signing -----------------------------------------------------------------------
    def needs_satellite(self, tx):
        name = self.satellite_keystore()
        return name is not None and tx_needs_satellite(self.wallet, name, tx)

    def ask_cosign(self, tx, label=None):
        """Encrypts the PSBT to the bridge's mailbox key and puts it to the satellite's
        keyhash; returns the request id the put answers with."""
        if not self.wallet_id() and self.satellite_key() is None:
            raise WalletNotRegistered()
        if self.satellite_keystore() is None:
            raise NotASatelliteWallet(
                "The satellite's key is not one of this wallet's cosigners.")
        st = self.registration_status()
        if st["state"] != "active":
            raise WalletNotRegistered("its registration is " + st["state"])
        info = self.service.info(refresh=True)
        if info.get("link") is None:
            raise LinkDown("the bridge runs without a satellite")
        message = encrypt_to(info["mailbox_pubkey"], tx.serialize_as_bytes())
        request_id = self.service.client.cosigner_put(self.satellite_key()["key_id"], message)
        if not isinstance(request_id, str):
            raise SatelliteError("The bridge stored the transaction but did not start a "
                                 "request; is it a mailbox-only bridge?")
        rec = self.record()
        rec["requests"][request_id] = {"txid": tx.txid(), "created": int(time.time()),
                                       "label": label or "", "state": "received"}
        self._save(rec)
        self.watch(request_id)
        return request_id

    def confirm(self, request_id, code):
        """Confirms a request with the emailed code; returns its new state."""
        r = self.service.client.request_confirm(request_id, code.strip())
        self._on_status(request_id, self.service.client.request_status(request_id))
        return r["state"]

    def cancel(self, request_id):
        return self.service.client.request_cancel(request_id)["state"]

    def resend(self, request_id):
        self.service.client.request_resend(request_id)

    def status(self, request_id):
        st = self.service.client.request_status(request_id)
        self._on_status(request_id, st)
        return st

    def stage_text(self, request_id):
        st = self._statuses.get(request_id) or self.status(request_id)
        next_pass = current_pass = None
        try:
            info = self.service.info()
            next_pass, current_pass = info.get("next_pass"), info.get("current_pass")
        except SatelliteError:
            pass
        return describe_stage(st, next_pass, current_pass)

    def open_requests(self):
        return [rid for rid, r in self.record()["requests"].items()
                if r.get("state") not in FINAL]

    # ---- status updates and the listener ------------------------------------------------
    def watch(self, request_id):
        """Follows a request: by notification when connected, else by polling."""
        if self.listener is not None:
            self.listener.watch(request_id)

    def _on_status(self, request_id, status, pushed=False):
        rec = self.record()
        tracked = request_id in rec["requests"] or request_id == rec.get("registration")
        if not tracked:
            return
        previous = self._statuses.get(request_id)
        if is_stale(previous, status):
            return
        self._statuses[request_id] = status
        if request_id in rec["requests"] and rec["requests"][request_id].get("state") != \
                status.get("state"):
            rec["requests"][request_id]["state"] = status.get("state")
            self._save(rec)
        changed = (previous is None or previous.get("state") != status.get("state")
                   or chain_key(previous) != chain_key(status)
                   or expected_key(previous) != expected_key(status))
        if changed:
            self.on_status(request_id, status, describe_stage(status))
        if status.get("state") == "delivered" and self.listener is not None:
            self.listener.wake()

    def start(self):
        """Starts the listener for this wallet's mailbox and open requests."""
        if self.listener is None:
            self.listener = Listener(self, self.poll_interval)
            for rid in self.open_requests():
                self.listener.watch(rid)
            reg = self.record().get("registration")
            if reg:
                self.listener.watch(reg)
            self.listener.start()

    def stop(self):
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self in self.service._sessions:
            self.service._sessions.remove(self)

    def check_mailbox(self):
        """Fetches, decrypts and hands over what waits in this wallet's mailboxes; returns
        the transactions received."""
        received = []
        for kh, name in mailbox_keyhashes(self.wallet).items():
            message = self.service.client.cosigner_get(kh)
            if not message:
                continue
            try:
                plain = open_message(self.wallet, name, message, self.password())
                tx = tx_from_any(plain)
            except Exception as e:  # not for this key, or not a transaction: the slot stays
                raise SatelliteError(f"A message in this wallet's mailbox could not be read: "
                                     f"{e}") from e
            self.service.client.cosigner_delete(kh)
            request_id = self._request_for(tx)
            if request_id:
                rec = self.record()
                rec["requests"][request_id]["received"] = int(time.time())
                self._save(rec)
            received.append(tx)
            self.on_transaction(tx, request_id)
        return received

    def _request_for(self, tx):
        txid = tx.txid()
        for rid, r in self.record()["requests"].items():
            if r.get("txid") == txid:
                return rid
        return None


class Listener(threading.Thread):
    """Brings results back: subscribes to each open request on the bridge's connection
    (pushes wake it at once) and polls statuses and the mailbox otherwise."""

    def __init__(self, session, poll_interval):
        super().__init__(name="satcosign-listener", daemon=True)
        self.session = session
        self.poll_interval = poll_interval
        self._watched = set()
        self._subscribed = set()
        self._generation = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.last_error = None

    def watch(self, request_id):
        self._watched.add(request_id)
        self.wake()

    def wake(self):
        self._wake.set()

    def stop(self):
        self._stop.set()
        self._wake.set()

    def run(self):
        backoff = 1.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._tick()
                self.last_error = None
                backoff = 1.0
                delay = self.poll_interval
            except SatelliteError as e:
                self.last_error = e
                delay = min(backoff, self.poll_interval)
                backoff = min(backoff * 2, 60.0)
            except Exception as e:  # never let the thread die silently
                self.last_error = e
                delay = self.poll_interval
            self._wake.wait(delay)

    def _tick(self):
        client = self.session.service.client
        if client.generation != self._generation:
            self._subscribed.clear()
            self._generation = client.generation
        for rid in list(self._watched):
            if rid in self._subscribed and client.connected:
                continue  # the bridge pushes its changes
            status = client.request_subscribe(rid)
            self._generation = client.generation
            self._subscribed.add(rid)
            self.session._on_status(rid, status)
            if status.get("state") in FINAL:
                self._watched.discard(rid)
        self.session.check_mailbox()
