"""Stock Electrum 4.6+'s Nostr cosigning (its psbt_nostr plugin), against the bridge's relay.

Runs in a virtualenv over Debian's python3-electrum with electrum-aionostr and electrum-ecc
from PyPI (the libraries Electrum 4.6 itself uses). Keys, encryption, tags and queries are
exactly psbt_nostr's: each keystore's Nostr key is sha256("nostr_psbt:" + xpub string),
the wallet's own identity is its first keystore that can sign, a PSBT goes to every other
cosigner as a NIP-04 kind-4 event with content {"tx": <PSBT hex>, "label": ...} tagged
["p", cosigner] and ["expiration", now + 24 h], and the wallet reads kind-4 events tagged
with its own key since 24 h ago, from its cosigners only.

    nostr_client.py RELAY_URL SATELLITE_VPUB

Talks to bridge/tests/nostr_electrum.rs on stdio: prints REGISTER <descriptor> and waits for
a line; prints SENT <event id> per event; the last line is RESULT {json}.
"""
import asyncio
import hashlib
import json
import logging
import os
import sys
import time

from electrum import constants
constants.set_regtest()
from electrum import bitcoin, keystore  # noqa: E402
from electrum.address_synchronizer import TX_HEIGHT_UNCONFIRMED  # noqa: E402
from electrum.crypto import sha256  # noqa: E402
from electrum.simple_config import SimpleConfig  # noqa: E402
from electrum.storage import WalletStorage  # noqa: E402
from electrum.transaction import PartialTxOutput, Transaction, tx_from_any  # noqa: E402
from electrum.util import create_and_start_event_loop  # noqa: E402
from electrum.wallet import Multisig_Wallet  # noqa: E402
from electrum.wallet_db import WalletDB  # noqa: E402

import electrum_aionostr as aionostr  # noqa: E402
import electrum_ecc as ecc  # noqa: E402
from electrum_aionostr.key import PrivateKey  # noqa: E402

KIND = 4
KEEP_DELAY = 24 * 60 * 60
DERIVATION = "m/48'/1'/0'/2'"
RUN = os.urandom(4).hex()
now = lambda: int(time.time())  # noqa: E731


def say(*parts):
    print(*parts, flush=True)


def keystore_for(tag):
    seed = hashlib.sha256((tag + RUN).encode()).digest()
    return keystore.from_bip43_rootseed(seed, DERIVATION, xtype="p2wsh")


def nostr_keys(xpub):
    """psbt_nostr: privkey = sha256('nostr_psbt:' + xpub); pubkey = its x-only key."""
    privkey = sha256('nostr_psbt:' + xpub)
    return privkey.hex(), ecc.ECPrivkey(privkey).get_public_key_bytes()[1:].hex()


def plain_xpub(ks):
    from electrum.bip32 import BIP32Node
    return BIP32Node.from_xkey(ks.get_master_public_key())._replace(xtype="standard").to_xpub()


async def send_psbts(relay, privkey, cosigners, tx, label):
    """psbt_nostr's send_direct_messages: one kind-4 event per cosigner."""
    our = PrivateKey(bytes.fromhex(privkey))
    payload = {"tx": tx.serialize_as_bytes().hex(), "label": label}
    ids = []
    async with aionostr.Manager(relays=[relay], private_key=privkey,
                                log=logging.getLogger("aionostr")) as manager:
        for pubkey in cosigners:
            content = our.encrypt_message(json.dumps(payload), pubkey)
            eid = await aionostr._add_event(
                manager, kind=KIND, content=content, private_key=privkey,
                tags=[["p", pubkey], ["expiration", str(int(now() + KEEP_DELAY))]])
            say("SENT", eid)
            ids.append(eid)
    return ids


async def receive(relay, privkey, pubkey, cosigners, want):
    """psbt_nostr's check_direct_messages, until `want` messages from cosigners arrived."""
    key = PrivateKey(bytes.fromhex(privkey))
    got, known = [], set()
    query = {"kinds": [KIND], "limit": 100, "#p": [pubkey], "since": int(now() - KEEP_DELAY)}
    async with aionostr.Manager(relays=[relay], private_key=privkey,
                                log=logging.getLogger("aionostr")) as manager:
        await manager.connect()
        async for event in manager.get_events(query, single_event=False, only_stored=False):
            if event.id in known:
                continue
            known.add(event.id)
            if event.pubkey not in cosigners:
                continue
            message = key.decrypt_message(event.content, event.pubkey)
            got.append({"id": event.id, "author": event.pubkey, "message": message})
            if len(got) >= want:
                return got
    return got


def main():
    relay, sat_vpub = sys.argv[1], sys.argv[2]
    loop, stopping, thread = create_and_start_event_loop()
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "satcosign-nostr-" + RUN)
    try:
        config = SimpleConfig({"electrum_path": tmp, "regtest": True, "offline": True})
        a, b = keystore_for("user-A"), keystore_for("backup-B")
        db = WalletDB("", manual_upgrades=False)
        for i, ks in enumerate([a, keystore.from_xpub(b.get_master_public_key()),
                                keystore.from_xpub(sat_vpub)]):
            db.put("x%d/" % (i + 1), ks.dump())
        db.put("wallet_type", "2of3")
        wallet = Multisig_Wallet(db, WalletStorage(os.path.join(tmp, "w")), config=config)
        wallet.synchronize()
        # psbt_nostr's identities.
        own_priv = own_pub = None
        cosigners = []
        for ks in wallet.get_keystores():
            priv, pub = nostr_keys(ks.get_master_public_key())
            if own_pub is None and not ks.is_watching_only():
                own_priv, own_pub = priv, pub
            else:
                cosigners.append(pub)
        sat_pub = nostr_keys(sat_vpub)[1]
        assert sat_pub in cosigners
        # As a stock user writes it from Wallet > Information: the three keys as Electrum
        # shows them (Vpub), no origins.
        descriptor = "wsh(sortedmulti(2,%s))" % ",".join(
            ks.get_master_public_key() + "/<0;1>/*" for ks in wallet.get_keystores())
        say("REGISTER", descriptor)
        if not sys.stdin.readline():
            sys.exit("no registration answer")

        address = wallet.get_receiving_addresses()[0]
        spk = bytes.fromhex(bitcoin.address_to_script(address))
        raw = (b"\x02\x00\x00\x00\x01" + os.urandom(32) + b"\x00" * 4 + b"\x00"
               + b"\xfd\xff\xff\xff\x01" + (1_000_000).to_bytes(8, "little")
               + bytes([len(spk)]) + spk + b"\x00" * 4)
        funding = Transaction(raw.hex())
        wallet.adb.receive_tx_callback(funding.txid(), funding, TX_HEIGHT_UNCONFIRMED)
        dest = bitcoin.public_key_to_p2wpkh(bytes.fromhex("02" + "22" * 32))

        def spend(amount):
            tx = wallet.make_unsigned_transaction(
                coins=wallet.get_spendable_coins(None),
                outputs=[PartialTxOutput.from_address_and_value(dest, amount)], fee=1_000)
            tx.set_rbf(True)
            wallet.sign_transaction(tx, password=None)
            assert not tx.is_complete()
            return tx

        small, large = spend(300_000), spend(900_000)
        stranger_priv, _ = nostr_keys(plain_xpub(keystore_for("stranger")))

        async def run():
            # A stranger's message to the satellite, ignored by the bridge.
            await send_psbts(relay, stranger_priv, [sat_pub], small, "stranger")
            # The wallet's own: within the policy, and over it.
            await send_psbts(relay, own_priv, cosigners, small, "rent")
            await send_psbts(relay, own_priv, [sat_pub], large, "too much")
            return await asyncio.wait_for(receive(relay, own_priv, own_pub, cosigners, 2), 240)

        replies = asyncio.run(run())
        result = {"replies": [], "funding_tx": funding.serialize(), "txid": small.txid(),
                  "satellite_pubkey": sat_pub}
        ours = {small.txid(): small, large.txid(): large}
        result["large_txid"] = large.txid()
        for r in replies:
            # Exactly what psbt_nostr accepts: a JSON object whose "tx" parses; anything else
            # it logs and drops, and the user sees nothing.
            entry = {"author": r["author"], "shown": False, "text": r["message"], "tx": None,
                     "complete": None}
            try:
                message = json.loads(r["message"])
                if not isinstance(message, dict):
                    raise ValueError("not a dict")
                received = tx_from_any(message.get("tx"))
            except (ValueError, KeyError, TypeError) as e:
                entry["dropped_because"] = str(e)
                result["replies"].append(entry)
                continue
            entry.update(shown=True, text=None, txid=received.txid(), label=message.get("label"))
            # As Electrum does with a received PSBT: merge into its own, finalize.
            mine = tx_from_any(ours[received.txid()].serialize())
            mine.add_info_from_wallet(wallet)
            mine.combine_with_other_psbt(received)
            mine.finalize_psbt()
            entry.update(complete=mine.is_complete(), tx=mine.serialize())
            result["replies"].append(entry)
        say("RESULT", json.dumps(result))
    finally:
        loop.call_soon_threadsafe(stopping.set_result, 1)
        thread.join(5)


if __name__ == "__main__":
    main()
