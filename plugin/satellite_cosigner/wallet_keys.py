"""What the plugin reads from an Electrum multisig wallet: its keys, as the bridge needs them.

- ``find_satellite``: which keystore is the satellite's (compared by public key and chain
  code, so Vpub/Zpub/tpub spellings of the same key match).
- ``descriptor``: the wallet's output descriptor, ``wsh(sortedmulti(m, ...))`` with every key
  as a ``tpub``/``xpub`` and ``/<0;1>/*``, with ``[fingerprint/path]`` origins where Electrum
  knows them (its own seed keys). Electrum's multisig wallets always sort their keys.
- ``wallet_id``: the id the bridge knows the wallet by, whoever registered it.
- ``mailbox_keyhashes``: the cosigner-pool slots of the keys this wallet can sign with;
  results come back there.
- ``open_message``: decrypts a mailbox message with the wallet's own key (ECIES "BIE1"), as
  Electrum's cosigner pool does.
- ``satellite_has_signed`` / ``needs_satellite``: reads a PSBT's signatures.

What differs between Electrum versions (where secp256k1 and ECIES live, what a PSBT input
calls its signatures) comes from ``compat``.
"""
import hashlib

from electrum.bip32 import BIP32Node
from electrum.crypto import sha256d
from electrum.wallet import Multisig_Wallet

from .compat import ecc, ecies_decrypt_message, ecies_encrypt_message, partial_sigs


class NotASatelliteWallet(Exception):
    """The wallet cannot be used with the satellite; the message says why."""


def same_key(a, b):
    """Whether two extended public keys (any SLIP-132 version) are the same key."""
    na, nb = BIP32Node.from_xkey(a), BIP32Node.from_xkey(b)
    return (na.chaincode == nb.chaincode
            and na.eckey.get_public_key_bytes(True) == nb.eckey.get_public_key_bytes(True))


def keyhash(xpub):
    """Electrum's cosigner-pool slot: hex(sha256d(the key's compressed public key))."""
    return sha256d(BIP32Node.from_xkey(xpub).eckey.get_public_key_bytes(compressed=True)).hex()


def plain_xpub(xpub):
    """The same key with plain ``xpub``/``tpub`` version bytes, as descriptors want."""
    return BIP32Node.from_xkey(xpub)._replace(xtype="standard").to_xpub()


def find_satellite(wallet, satellite_xpub):
    """The keystore name ('x1/', ...) holding the satellite's key, or None."""
    for name, ks in getattr(wallet, "keystores", {}).items():
        try:
            if same_key(ks.get_master_public_key(), satellite_xpub):
                return name
        except Exception:
            continue
    return None


def check_wallet(wallet, satellite_xpub):
    """Raises ``NotASatelliteWallet`` unless the satellite can co-sign this wallet (holding
    ``satellite_xpub``, when known: before registration only the bridge knows which key is
    the one it issued)."""
    if not isinstance(wallet, Multisig_Wallet):
        raise NotASatelliteWallet("This is not a multisig wallet.")
    if wallet.txin_type != "p2wsh":
        raise NotASatelliteWallet(
            f"The satellite co-signs native segwit multisig (p2wsh) wallets; this one is "
            f"{wallet.txin_type}.")
    if satellite_xpub is not None and find_satellite(wallet, satellite_xpub) is None:
        raise NotASatelliteWallet("The satellite's key is not one of this wallet's cosigners.")
    if wallet.m < 2:
        raise NotASatelliteWallet("The wallet must need at least two signatures.")


def _origin(ks):
    fp = ks.get_root_fingerprint() if hasattr(ks, "get_root_fingerprint") else None
    path = ks.get_derivation_prefix() if hasattr(ks, "get_derivation_prefix") else None
    if not fp or not path:
        return ""
    steps = [s.replace("'", "h") for s in path.split("/")[1:] if s]
    return "[" + "/".join([fp.lower()] + steps) + "]"


def descriptor(wallet, satellite_xpub):
    """The wallet's descriptor for ``wallet.register``."""
    check_wallet(wallet, satellite_xpub)
    keys = []
    for name in sorted(wallet.keystores):
        ks = wallet.keystores[name]
        keys.append(_origin(ks) + plain_xpub(ks.get_master_public_key()) + "/<0;1>/*")
    return "wsh(sortedmulti(%d,%s))" % (wallet.m, ",".join(keys))


def wallet_id(wallet):
    """The id the bridge and the satellite give this wallet, however it was registered (by
    the plugin, by JSON-RPC, or by Nostr): the first 16 bytes of sha256 of
    ``wsh(sortedmulti(m,<xpubs, sorted>))``, keys in their plain xpub/tpub spelling."""
    keys = sorted(plain_xpub(ks.get_master_public_key()) for ks in wallet.keystores.values())
    text = "wsh(sortedmulti(%d,%s))" % (wallet.m, ",".join(keys))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def mailbox_keyhashes(wallet):
    """{keyhash: keystore name} for the keys this wallet holds privately."""
    out = {}
    for name, ks in wallet.keystores.items():
        if not ks.is_watching_only():
            out[keyhash(ks.get_master_public_key())] = name
    return out


def open_message(wallet, keystore_name, message, password=None):
    """Decrypts a mailbox message with the keystore's private key; returns the bytes."""
    ks = wallet.keystores[keystore_name]
    xprv = ks.get_master_private_key(password)
    return ecies_decrypt_message(BIP32Node.from_xkey(xprv).eckey, message)


def encrypt_to(pubkey_hex, payload):
    """ECIES "BIE1" to a public key, as Electrum's cosigner pool; returns base64 text."""
    return ecies_encrypt_message(ecc.ECPubkey(bytes.fromhex(pubkey_hex)), payload).decode("ascii")


def satellite_pubkeys(wallet, satellite_name, tx):
    """For each input of ``tx``: the satellite's public key there (bytes), or None when the
    input is not the wallet's."""
    ks = wallet.keystores[satellite_name]
    out = []
    for txin in tx.inputs():
        addr = txin.address
        index = wallet.get_address_index(addr) if addr and wallet.is_mine(addr) else None
        out.append(ks.derive_pubkey(*index) if index is not None else None)
    return out


def satellite_has_signed(wallet, satellite_name, tx):
    """Whether every wallet input of ``tx`` already carries the satellite's signature."""
    pairs = [(k, txin) for k, txin in zip(satellite_pubkeys(wallet, satellite_name, tx),
                                          tx.inputs()) if k is not None]
    return bool(pairs) and all(k in partial_sigs(txin) for k, txin in pairs)


def needs_satellite(wallet, satellite_name, tx):
    """Whether "Ask satellite to co-sign" makes sense for ``tx``: it is a partially signed
    transaction of this wallet that lacks the satellite's signature, and this wallet has
    nothing more to add itself."""
    if tx.is_complete() or not hasattr(tx, "inputs"):
        return False
    if not any(k is not None for k in satellite_pubkeys(wallet, satellite_name, tx)):
        return False
    return not satellite_has_signed(wallet, satellite_name, tx) and not wallet.can_sign(tx)
