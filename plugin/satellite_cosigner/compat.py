"""Everything that differs between the Electrum versions the plugin runs in (4.3 to 4.8), in
one place, each difference with the version that made it. The rest of the plugin calls these
names and never tests a version itself.

Checked against Debian's 4.3.4 (bookworm), 4.5.8 (trixie) and 4.8.3 (sid).
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
           "dialog_finalized"]


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
