#!/usr/bin/python3
"""Stock Electrum's side of the bridge's end-to-end tests, run with Debian's python3-electrum.

    ecies-encrypt PUBKEY_HEX MESSAGE_HEX   -> base64, as Electrum's cosigner pool encrypts
    ecies-decrypt PRIVKEY_HEX BASE64       -> hex of the plaintext
    request SATELLITE_XPUB MAILBOX_PUBKEY  -> JSON: a 2-of-3 wallet (user A, backup B, the
        satellite's key as Electrum holds a cosigner's: a bare Vpub), a spend signed once by
        A, and that PSBT encrypted to the bridge's mailbox key as the plugin sends it
    receive BASE64                         -> JSON: the mailbox message decrypted with A's
        xpub key exactly as Electrum's cosigner pool does, read by tx_from_any, finalized
    scripts TAG SATELLITE_XPUB N           -> JSON: a 2-of-3 wallet of the keys TAG-hot and
        TAG-backup and the satellite's, as Electrum makes it; its descriptor, and the public
        keys of its first N receive and change scripts

Keys derive from public tags (seed = sha256(tag)): test keys, never for real funds.
"""
import base64, hashlib, json, os, shutil, sys, tempfile

from electrum import constants
constants.set_regtest()
from electrum import bitcoin, ecc, keystore
from electrum.address_synchronizer import TX_HEIGHT_UNCONFIRMED
from electrum.bip32 import BIP32Node
from electrum.crypto import sha256d
from electrum.simple_config import SimpleConfig
from electrum.storage import WalletStorage
from electrum.transaction import PartialTxOutput, Transaction, tx_from_any
from electrum.util import create_and_start_event_loop
from electrum.wallet import Multisig_Wallet
from electrum.wallet_db import WalletDB

DERIVATION = "m/48'/1'/0'/2'"
TPUB = bytes.fromhex("043587cf")


def keystore_for(tag):
    return keystore.from_bip43_rootseed(hashlib.sha256(tag.encode()).digest(), DERIVATION, xtype="p2wsh")


def to_tpub(xpub):
    raw = bitcoin.DecodeBase58Check(xpub)
    return bitcoin.EncodeBase58Check(TPUB + raw[4:])


def keyhash(xpub):
    """Electrum's cosigner pool: sha256d of the xpub's compressed public key."""
    return sha256d(BIP32Node.from_xkey(xpub).eckey.get_public_key_bytes(compressed=True)).hex()


def request(sat_xpub, mailbox_pubkey):
    loop, stopping, thread = create_and_start_event_loop()
    tmp = tempfile.mkdtemp(prefix="satcosign-electrum-")
    try:
        config = SimpleConfig({"electrum_path": tmp, "regtest": True, "offline": True})
        a, b = keystore_for("user-A"), keystore_for("backup-B")
        db = WalletDB("", manual_upgrades=False)
        for i, ks in enumerate([a, keystore.from_xpub(b.get_master_public_key()), keystore.from_xpub(sat_xpub)]):
            db.put("x%d/" % (i + 1), ks.dump())
        db.put("wallet_type", "2of3")
        w = Multisig_Wallet(db, WalletStorage(os.path.join(tmp, "w")), config=config)
        w.synchronize()
        address = w.get_receiving_addresses()[0]
        spk = bytes.fromhex(bitcoin.address_to_script(address))
        salt = os.urandom(32)
        raw = (b"\x02\x00\x00\x00" + b"\x01" + salt + b"\x00" * 4 + b"\x00" + b"\xfd\xff\xff\xff"
               + b"\x01" + (1_000_000).to_bytes(8, "little") + bytes([len(spk)]) + spk + b"\x00" * 4)
        funding = Transaction(raw.hex())
        w.adb.receive_tx_callback(funding.txid(), funding, TX_HEIGHT_UNCONFIRMED)
        dest = bitcoin.public_key_to_p2wpkh(bytes.fromhex("02" + "11" * 32))
        tx = w.make_unsigned_transaction(coins=w.get_spendable_coins(None),
                                         outputs=[PartialTxOutput.from_address_and_value(dest, 400_000)], fee=1_000)
        tx.set_rbf(True)
        tx.prepare_for_export_for_hardware_device(w)
        w.sign_transaction(tx, password=None)
        assert not tx.is_complete()
        psbt = tx.serialize_as_bytes()
        message = ecc.ECPubkey(bytes.fromhex(mailbox_pubkey)).encrypt_message(psbt).decode()
        sat_tpub = to_tpub(sat_xpub)
        desc = "wsh(sortedmulti(2,[%s/48h/1h/0h/2h]%s/<0;1>/*,%s/<0;1>/*,%s/<0;1>/*))" % (
            a.get_root_fingerprint(), to_tpub(a.get_master_public_key()),
            to_tpub(b.get_master_public_key()), sat_tpub)
        return {
            "descriptor": desc,
            "user_xpub": a.get_master_public_key(),
            "user_keyhash": keyhash(a.get_master_public_key()),
            "backup_keyhash": keyhash(b.get_master_public_key()),
            "satellite_keyhash": keyhash(sat_xpub),
            "psbt": base64.b64encode(psbt).decode(),
            "message": message,
            "funding_tx": funding.serialize(),
            "destination": dest,
            "txid": tx.txid(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        loop.call_soon_threadsafe(stopping.set_result, 1)
        thread.join(5)


def scripts(tag, sat_xpub, n):
    loop, stopping, thread = create_and_start_event_loop()
    tmp = tempfile.mkdtemp(prefix="satcosign-electrum-")
    try:
        config = SimpleConfig({"electrum_path": tmp, "regtest": True, "offline": True})
        hot, backup = keystore_for(tag + "-hot"), keystore_for(tag + "-backup")
        sat = keystore.from_xpub(sat_xpub)
        db = WalletDB("", manual_upgrades=False)
        for i, ks in enumerate([hot, keystore.from_xpub(backup.get_master_public_key()), sat]):
            db.put("x%d/" % (i + 1), ks.dump())
        db.put("wallet_type", "2of3")
        w = Multisig_Wallet(db, WalletStorage(os.path.join(tmp, "w")), config=config)
        pubkeys = []
        for change in (0, 1):
            for i in range(n):
                pubkeys.extend(w.derive_pubkeys(change, i))
        origin = "[%s/48h/1h/0h/2h]" % hot.get_root_fingerprint()
        descriptor = "wsh(sortedmulti(2,%s%s/<0;1>/*,%s/<0;1>/*,%s/<0;1>/*))" % (
            origin, to_tpub(hot.get_master_public_key()), to_tpub(backup.get_master_public_key()),
            to_tpub(sat_xpub))
        keys = [pk.hex() if isinstance(pk, bytes) else str(pk) for pk in pubkeys]
        return {"descriptor": descriptor, "pubkeys": keys,
                "user_xpubs": [hot.get_master_public_key(), backup.get_master_public_key()]}
    finally:
        loop.call_soon_threadsafe(stopping.set_result, 1)
        thread.join(5)
        shutil.rmtree(tmp, ignore_errors=True)


def receive(message):
    a = keystore_for("user-A")
    key = BIP32Node.from_xkey(a.get_master_private_key(None)).eckey
    plain = key.decrypt_message(message)
    tx = tx_from_any(plain)
    if not tx.is_complete():
        tx.finalize_psbt()
    return {"kind": type(tx).__name__, "bytes": len(plain), "complete": tx.is_complete(), "tx": tx.serialize() if tx.is_complete() else None, "txid": tx.txid()}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ecies-encrypt":
        print(ecc.ECPubkey(bytes.fromhex(args[0])).encrypt_message(bytes.fromhex(args[1])).decode())
    elif cmd == "ecies-decrypt":
        print(ecc.ECPrivkey(bytes.fromhex(args[0])).decrypt_message(args[1]).hex())
    elif cmd == "request":
        print(json.dumps(request(args[0], args[1])))
    elif cmd == "receive":
        print(json.dumps(receive(args[0])))
    elif cmd == "scripts":
        print(json.dumps(scripts(args[0], args[1], int(args[2]))))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
