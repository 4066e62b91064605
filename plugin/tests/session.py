#!/usr/bin/python3
"""The plugin's core inside Debian's real Electrum 4.3.4 library, against a running bridge.

Run by ``bridge/tests/plugin_electrum.rs``, which starts the bridge, the cosigner, the
simulated link and a real SMTP server, answers ``NEED_CODE <request id>`` lines on stdout
with the emailed code on stdin, and checks the final ``RESULT {json}`` line (the final
transaction also goes through Bitcoin Core's script interpreter there).

    session.py flow   BRIDGE WORKDIR      register, sign once, ask the satellite, receive
    session.py errors BRIDGE DEAD NOSAT WORKDIR   what the user sees when things go wrong
    session.py tls    HOST:PORT CA_FILE   "Test connection" over TLS, trusted and not
    session.py prepare BRIDGE WORKDIR     a registered wallet file and a PSBT signed once,
                                          for the GUI test
    session.py proxied BRIDGE PROXY DEAD_PROXY   "Test connection" through Electrum's proxy
    session.py registered_elsewhere BRIDGE WORKDIR   a wallet registered by JSON-RPC shows
                                          its real status

Keys derive from public tags (seed = sha256(tag)): test keys, never for real funds.
"""
import hashlib
import inspect
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from electrum import constants  # noqa: E402
if hasattr(constants, "set_regtest"):
    constants.set_regtest()  # Electrum 4.3-4.5
else:
    constants.BitcoinRegtest.set_as_network()  # 4.6+ (4.8: set_regtest is gone)
from electrum import bitcoin, keystore  # noqa: E402
from electrum.address_synchronizer import TX_HEIGHT_UNCONFIRMED  # noqa: E402
from electrum.simple_config import SimpleConfig  # noqa: E402
from electrum.storage import WalletStorage  # noqa: E402
from electrum.transaction import PartialTxOutput, Transaction, tx_from_any  # noqa: E402
from electrum.util import create_and_start_event_loop  # noqa: E402
from electrum.wallet import Multisig_Wallet  # noqa: E402
from electrum.wallet_db import WalletDB  # noqa: E402
from electrum.version import ELECTRUM_VERSION  # noqa: E402

from satellite_cosigner import errors, wallet_keys  # noqa: E402
from satellite_cosigner.core import Service, Settings, WalletSession  # noqa: E402

DERIVATION = "m/48'/1'/0'/2'"
EMAIL = "alice@example.org"


def verify_signatures(tx):
    """Checks every partial signature of a PSBT against its input's sighash, with Electrum's
    own code; returns the number checked. Raises ValueError naming the input on failure."""
    from electrum.crypto import sha256d
    from satellite_cosigner.compat import ecc, partial_sigs
    checked = 0
    for i, txin in enumerate(tx.inputs()):
        preimage = tx.serialize_preimage(i)
        if isinstance(preimage, str):
            preimage = bytes.fromhex(preimage)  # Electrum before 4.6 returns hex
        digest = sha256d(preimage)
        for pubkey, sig in partial_sigs(txin).items():
            if hasattr(ecc, "ecdsa_sig64_from_der_sig"):  # 4.6+ (electrum_ecc)
                ok = ecc.ECPubkey(pubkey).ecdsa_verify(ecc.ecdsa_sig64_from_der_sig(sig[:-1]),
                                                       digest)
            else:  # 4.3-4.5
                compact = ecc.sig_string_from_der_sig(sig[:-1])
                ok = ecc.ECPubkey(pubkey).verify_message_hash(compact, digest)
            if not ok:
                raise ValueError(f"input {i}: bad signature by {pubkey.hex()}")
            checked += 1
    return checked


def say(*parts):
    print(*parts, flush=True)


def ask_code(request_id):
    say("NEED_CODE", request_id)
    line = sys.stdin.readline()
    if not line:
        sys.exit("no code on stdin")
    return line.strip()


def keystore_for(tag):
    # `derivation` is keyword-only since Electrum 4.4.
    return keystore.from_bip43_rootseed(hashlib.sha256(tag.encode()).digest(),
                                        derivation=DERIVATION, xtype="p2wsh")


RUN = os.urandom(4).hex()  # each run its own keys, so a bridge never sees a wallet twice


def build_wallet(config, path, keystores):
    """A 2-of-3 multisig wallet file from three keystores (the first is the one it signs
    with), as Electrum's wizard writes it."""
    storage = WalletStorage(path)
    if "manual_upgrades" in inspect.signature(WalletDB.__init__).parameters:
        db = WalletDB("", manual_upgrades=False)  # Electrum 4.3
        name = "x%d/"  # 4.3 names a multisig keystore "x1/"
    else:
        db = WalletDB("", storage=storage, upgrade=True)  # 4.4+: the db holds its storage
        name = "x%d"  # 4.4+: "x1"
    for i, ks in enumerate(keystores):
        db.put(name % (i + 1), ks.dump())
    db.put("wallet_type", "2of3")
    if "storage" in inspect.signature(Multisig_Wallet.__init__).parameters:
        w = Multisig_Wallet(db, storage, config=config)  # Electrum 4.3
    else:
        w = Multisig_Wallet(db, config=config)
    w.synchronize()
    w.save_db()
    return w


def make_wallet(config, path, satellite_xpub, tag="user-A"):
    """The 2-of-3 as a user makes it in the wizard: their seed key, their backup's Vpub, and
    the satellite's Vpub pasted from the plugin."""
    tag = tag + "-" + RUN
    a, b = keystore_for(tag), keystore_for("backup-B-" + tag)
    return build_wallet(config, path, [a, keystore.from_xpub(b.get_master_public_key()),
                                       keystore.from_xpub(satellite_xpub)])


def recover(config, path, tx, satellite_xpub, tag="user-A"):
    """Recovery without satcosign: the backup key's own wallet (its seed, the user's xpub,
    the satellite's xpub) adds the second signature to the user's PSBT."""
    tag = tag + "-" + RUN
    a, b = keystore_for(tag), keystore_for("backup-B-" + tag)
    backup = build_wallet(config, path, [b, keystore.from_xpub(a.get_master_public_key()),
                                         keystore.from_xpub(satellite_xpub)])
    theirs = tx_from_any(tx.serialize())
    theirs.add_info_from_wallet(backup)
    backup.sign_transaction(theirs, password=None)
    theirs.finalize_psbt()
    return theirs


def fund(wallet, sats=1_000_000):
    address = wallet.get_receiving_addresses()[0]
    spk = bitcoin.address_to_script(address)
    if isinstance(spk, str):
        spk = bytes.fromhex(spk)  # Electrum before 4.6 returns hex
    raw = (b"\x02\x00\x00\x00" + b"\x01" + os.urandom(32) + b"\x00" * 4 + b"\x00"
           + b"\xfd\xff\xff\xff" + b"\x01" + sats.to_bytes(8, "little") + bytes([len(spk)])
           + spk + b"\x00" * 4)
    funding = Transaction(raw.hex())
    params = inspect.signature(wallet.adb.receive_tx_callback).parameters
    if "tx_hash" in params:
        wallet.adb.receive_tx_callback(funding.txid(), funding, TX_HEIGHT_UNCONFIRMED)  # 4.3
    else:
        wallet.adb.receive_tx_callback(funding, tx_height=TX_HEIGHT_UNCONFIRMED)  # 4.4+
    wallet.save_db()
    return funding


def spend(wallet, amount=400_000):
    """A spend signed by the user's own key only: a partially signed transaction."""
    dest = bitcoin.public_key_to_p2wpkh(bytes.fromhex("02" + "11" * 32))
    try:  # Electrum 4.6+ takes a fee policy (the wrapped method hides its signature)
        from electrum.fee_policy import FixedFeePolicy
        fee = {"fee_policy": FixedFeePolicy(1_000)}
    except ImportError:
        fee = {"fee": 1_000}
    tx = wallet.make_unsigned_transaction(
        coins=wallet.get_spendable_coins(None),
        outputs=[PartialTxOutput.from_address_and_value(dest, amount)], **fee)
    tx.set_rbf(True)
    wallet.sign_transaction(tx, password=None)
    assert not tx.is_complete()
    return tx


def register(session, label="Alice's savings"):
    rid = session.register(EMAIL, label)
    assert rid, "a new wallet must get a registration request"
    code = ask_code(rid)
    session.confirm(rid, code)
    deadline = time.time() + 120
    while session.registration_status()["state"] != "active":
        if time.time() > deadline:
            raise SystemExit("registration never became active: " + session.registration_text())
        time.sleep(0.2)
    return session.registration_text()


class Env:
    def __init__(self, workdir):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.loop, self.stopping, self.thread = create_and_start_event_loop()
        self.config = SimpleConfig({"electrum_path": os.path.join(workdir, "electrum"),
                                    "regtest": True, "offline": True})

    def close(self):
        self.loop.call_soon_threadsafe(self.stopping.set_result, 1)
        self.thread.join(5)


def flow(bridge, workdir):
    env = Env(workdir)
    try:
        service = Service(Settings(bridge=bridge, email=EMAIL))
        test = service.test_connection()
        connection_text = service.link_text(test)
        sat_xpub = service.new_key()["electrum_xpub"]
        wallet = make_wallet(env.config, os.path.join(workdir, "wallet"), sat_xpub)
        stages_seen = []
        got = threading.Event()
        received = {}

        def on_status(rid, status, text):
            stages_seen.append([rid, status["state"], text])

        def on_transaction(tx, rid):
            received["tx"], received["request_id"] = tx, rid
            got.set()

        session = WalletSession(service, wallet, on_status=on_status,
                                on_transaction=on_transaction, poll_interval=2.0)
        assert session.contains_satellite()
        descriptor = session.descriptor()
        session.start()
        registered = register(session)

        funding = fund(wallet)
        tx = spend(wallet)
        before = session.needs_satellite(tx)
        request_id = session.ask_cosign(tx, label="rent")
        awaiting = session.stage_text(request_id)
        code = ask_code(request_id)
        state = session.confirm(request_id, code)
        if not got.wait(180):
            raise SystemExit("no signed transaction came back; stages: %r; listener: %r"
                             % (stages_seen, session.listener.last_error))
        final = received["tx"]
        # Electrum's own checks: the result is complete, and the satellite's signatures,
        # merged into the wallet's PSBT from the request's status, verify and finalize to
        # the same transaction.
        status = session.status(request_id)
        signed = tx_from_any(status["outcome"]["signed"]["psbt"])
        sigs = verify_signatures(signed)
        merged = tx_from_any(tx.serialize())
        merged.add_info_from_wallet(wallet)  # as Electrum does for a loaded PSBT
        merged.combine_with_other_psbt(signed)  # Electrum finalizes once it is complete
        merged.finalize_psbt()
        recovered = recover(env.config, os.path.join(workdir, "backup"), tx, sat_xpub)
        result = {
            "recovered_complete": recovered.is_complete(),
            "recovered_tx": recovered.serialize() if recovered.is_complete() else None,
            "electrum_version": ELECTRUM_VERSION,
            "connection": connection_text,
            "descriptor": descriptor,
            "satellite_key": sat_xpub,
            # "Show satellite key": the registered wallet's own key; a new wallet a new one.
            "own_key_after_registration": session.satellite_xpub(),
            "fresh_key": service.new_key()["electrum_xpub"],
            "registered": registered,
            "needs_satellite_before": before,
            "needs_satellite_after": session.needs_satellite(merged),
            "awaiting": awaiting,
            "confirmed_state": state,
            "request_id": request_id,
            "received_for": received["request_id"],
            "complete": final.is_complete(),
            "tx": final.serialize(),
            "txid": final.txid(),
            "psbt_txid": tx.txid(),
            "merged_tx": merged.serialize() if merged.is_complete() else None,
            "signatures_verified": sigs,
            "funding_tx": funding.serialize(),
            "stages": stages_seen,
            "final_text": session.stage_text(request_id),
            "mailbox_after": [service.client.cosigner_get(k)
                              for k in wallet_keys.mailbox_keyhashes(wallet)],
        }
        # Emergency lockdown from the plugin, confirmed with the emailed code: the bridge
        # locks at once, and the satellite at its next pass.
        lock_id = session.lockdown()
        session.confirm(lock_id, ask_code(lock_id))
        result["locked_at_once"] = session.registration_status()["policy"]["locked"]
        deadline = time.time() + 120
        while session.status(lock_id)["state"] != "delivered":
            if time.time() > deadline:
                raise SystemExit("the lockdown never reached the satellite: %r"
                                 % session.status(lock_id))
            time.sleep(0.2)
        result["lockdown_final"] = session.status(lock_id)["final_state"]
        session.stop()
        service.close()
        say("RESULT", json.dumps(result))
    finally:
        env.close()


def timed(fn):
    """(error class name, message, seconds) of what fn raised."""
    start = time.time()
    try:
        fn()
    except errors.SatelliteError as e:
        return [type(e).__name__, str(e), round(time.time() - start, 2)]
    return [None, None, round(time.time() - start, 2)]


def errors_scenario(bridge, dead, nosat, workdir):
    env = Env(workdir)
    try:
        out = {}
        # The bridge is stopped (nothing listens there).
        down = Service(Settings(bridge=dead), timeout=5.0)
        out["bridge_down"] = timed(down.test_connection)
        down.close()
        # A bridge with no satellite behind it.
        mailbox_only = Service(Settings(bridge=nosat), timeout=5.0)
        out["link_down"] = timed(mailbox_only.new_key)
        mailbox_only.close()

        service = Service(Settings(bridge=bridge), timeout=10.0)
        sat = service.new_key()["electrum_xpub"]
        # Not registered.
        w1 = make_wallet(env.config, os.path.join(workdir, "unregistered"), sat, "user-U")
        fund(w1)
        s1 = WalletSession(service, w1)
        out["not_registered"] = timed(lambda: s1.ask_cosign(spend(w1)))
        # Registered, but over the policy's per-transaction limit: refused before any email.
        w2 = make_wallet(env.config, os.path.join(workdir, "limited"), service.new_key()["electrum_xpub"], "user-L")
        s2 = WalletSession(service, w2)
        register(s2, "Limited")
        fund(w2)
        out["refused"] = timed(lambda: s2.ask_cosign(spend(w2, 400_000)))
        # A mistyped code, then the right wallet but an expired code is covered by the
        # bridge's own tests; here: what the user sees for a wrong code.
        small = spend(w2, 5_000)
        rid = s2.ask_cosign(small)
        out["wrong_code"] = timed(lambda: s2.confirm(rid, "AAAA-AAAA"))
        out["cancelled_text"] = (s2.cancel(rid), s2.stage_text(rid))
        service.close()
        say("RESULT", json.dumps(out))
    finally:
        env.close()


def prepare(bridge, workdir):
    """A wallet file registered with the satellite and a PSBT signed once, for the GUI."""
    env = Env(workdir)
    try:
        service = Service(Settings(bridge=bridge, email=EMAIL))
        path = os.path.join(workdir, "electrum", "regtest", "wallets", "satellite_wallet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        satellite_key = service.new_key()["electrum_xpub"]
        wallet = make_wallet(env.config, path, satellite_key, "user-G")
        session = WalletSession(service, wallet)
        register(session, "GUI wallet")
        funding = fund(wallet)
        tx = spend(wallet, 250_000)
        wallet.save_db()
        service.close()
        say("RESULT", json.dumps({"wallet": path, "psbt": tx.serialize(),
                                  "satellite_key": satellite_key,
                                  "funding_tx": funding.serialize(), "txid": tx.txid()}))
    finally:
        env.close()


def registered_elsewhere(bridge, workdir):
    """A wallet registered by another route (JSON-RPC, as a Nostr user's tools do): the
    plugin shows its real status. Prints REGISTER_ELSEWHERE <descriptor>, waits for a line on
    stdin once the harness has registered and confirmed it."""
    env = Env(workdir)
    try:
        service = Service(Settings(bridge=bridge, email=EMAIL))
        wallet = make_wallet(env.config, os.path.join(workdir, "wallet"),
                             service.new_key()["electrum_xpub"], "user-R")
        session = WalletSession(service, wallet)
        before = session.registration_text()
        say("REGISTER_ELSEWHERE", session.descriptor())
        if not sys.stdin.readline():
            sys.exit("no go-ahead on stdin")
        after = session.registration_text()
        service.close()
        say("RESULT", json.dumps({"before": before, "after": after,
                                  "wallet_id": session.wallet_id()}))
    finally:
        env.close()


def electrum_proxy_setting(address):
    """Electrum's network with a SOCKS5 proxy at ``address`` set, stored exactly as this
    version stores it (4.3-4.5: a dict from ``deserialize_proxy``; 4.6+: ``ProxySettings``)."""
    import types
    from electrum import network
    host, port = address.rsplit(":", 1)
    if hasattr(network, "ProxySettings"):
        p = network.ProxySettings()
        p.deserialize_proxy_cfgstr("socks5:%s:%s" % (host, port))
        p.enabled = True
    else:
        p = network.deserialize_proxy("socks5:%s:%s::" % (host, port))
    return types.SimpleNamespace(proxy=p)


def proxied(bridge, proxy_address, dead_proxy):
    """Test connection with Electrum's proxy set: through the proxy; and with a proxy that is
    down, the bridge is unreachable (never a direct connection that would reveal the user)."""
    from satellite_cosigner.compat import network_proxy
    service = Service(Settings(bridge=bridge),
                      proxy=network_proxy(electrum_proxy_setting(proxy_address)), timeout=10.0)
    try:
        text = service.link_text()
        xpub = service.new_key()["electrum_xpub"]
    finally:
        service.close()
    down = Service(Settings(bridge=bridge),
                   proxy=network_proxy(electrum_proxy_setting(dead_proxy)), timeout=5.0)
    try:
        down.link_text()
        without = "connected anyway"
    except errors.SatelliteError as e:
        without = str(e)
    finally:
        down.close()
    say("RESULT", json.dumps({"connection": text, "xpub": xpub, "proxy_down": without,
                              "electrum_version": ELECTRUM_VERSION}))


def tls(address, ca_file):
    """Test connection over TLS: trusting the bridge's own certificate, then the system's
    roots only (which do not know a self-signed bridge)."""
    out = {}
    trusted = Service(Settings(bridge=address, tls=True, ca_file=ca_file), timeout=5.0)
    out["trusted"] = trusted.link_text()
    trusted.close()
    untrusted = Service(Settings(bridge=address, tls=True), timeout=5.0)
    out["untrusted"] = timed(untrusted.test_connection)
    untrusted.close()
    say("RESULT", json.dumps(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "flow":
        flow(*args)
    elif cmd == "errors":
        errors_scenario(*args)
    elif cmd == "tls":
        tls(*args)
    elif cmd == "prepare":
        prepare(*args)
    elif cmd == "proxied":
        proxied(*args)
    elif cmd == "registered_elsewhere":
        registered_elsewhere(*args)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
