"""Everything that differs between the Electrum versions the plugin runs in (4.3 to 4.8), in
one place, each difference with the version that made it. The rest of the plugin calls these
names and never tests a version itself.

Checked against Debian's 4.3.4 (bookworm), 4.5.8 (trixie) and 4.8.3 (sid).

The others live where they must, and are named here so this stays the one list:
- Qt: PyQt6 in 4.6+, PyQt5 before; chosen at the top of ``qt.py``, the only module that
  draws (this one and the core stay free of Qt).
- Loading: 4.6+ imports an external plugin from its zip as
  ``electrum_external_plugins.<name>``, where ``from . import module`` fails; modules import
  names from their siblings (``from .module import name``), which works in every version.
- Menus: 4.6+ calls ``init_menubar``, 4.3-4.5 ``init_menubar_tools`` (both hooks in ``qt.py``).
- Packaging and authorization (the 4.6+ zip, the plugins key): ``install.py``.
"""
try:  # Electrum 4.6+: secp256k1 in the `electrum_ecc` package, ECIES in `electrum.crypto`
    import electrum_ecc as ecc
    from electrum.crypto import ecies_decrypt_message, ecies_encrypt_message
except ImportError:  # Electrum 4.3-4.5: `electrum.ecc`, ECIES as methods of the keys
    from electrum import ecc

    def ecies_encrypt_message(pubkey, message):
        return pubkey.encrypt_message(message)

    def ecies_decrypt_message(privkey, encrypted):
        return privkey.decrypt_message(encrypted)

__all__ = ["ecc", "ecies_decrypt_message", "ecies_encrypt_message", "partial_sigs",
           "dialog_finalized", "network_proxy"]


def partial_sigs(txin):
    """A PSBT input's ECDSA partial signatures, pubkey bytes -> signature bytes.

    Electrum 4.3-4.5 call them `part_sigs`; 4.6+ `sigs_ecdsa` (beside Schnorr ones)."""
    sigs = getattr(txin, "sigs_ecdsa", None)
    return sigs if sigs is not None else txin.part_sigs


def dialog_finalized(dialog):
    """Whether a transaction dialog shows a finished transaction.

    Electrum 4.3 has `finalized` (its dialog also previewed unfinished ones); 4.4 removed it,
    since its transaction dialog shows only finished transactions."""
    return bool(getattr(dialog, "finalized", True))


def network_proxy(network):
    """Electrum's proxy as ``{mode, host, port, user, password}``, or None when none is set.

    Electrum 4.3-4.5 keep it as a dict on the network, None when off; 4.6+ as a
    ``ProxySettings`` with ``enabled``."""
    p = getattr(network, "proxy", None) if network is not None else None
    if p is None:
        return None
    if isinstance(p, dict):
        fields = {k: p.get(k) for k in ("mode", "host", "port", "user", "password")}
    else:
        if not getattr(p, "enabled", False):
            return None
        fields = {k: getattr(p, k, None) for k in ("mode", "host", "port", "user", "password")}
    if not fields["host"] or not fields["port"]:
        return None
    fields["port"] = int(fields["port"])
    fields["mode"] = (fields["mode"] or "socks5").lower()
    return fields
