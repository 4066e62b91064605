"""satcosign: a satellite co-signs your Electrum multisig wallet.

This package is an Electrum plugin. Electrum 4.3-4.5 reads ``fullname``, ``description`` and
``available_for`` from here; 4.6+ reads the same from ``manifest.json`` in the zip. Everything
but ``qt.py`` is free of Qt, so the core runs (and is tested) headless.
"""
try:  # inside Electrum: translated strings
    from electrum.i18n import _
except ImportError:  # pragma: no cover - only outside Electrum
    def _(s):
        return s

fullname = _('Satellite Cosigner')
description = ' '.join([
    _("Co-sign your multisig wallet with a key that lives on a satellite (satcosign)."),
    _("The satellite signs only what you confirm from an email, and only within its policy."),
    _("Your two other keys always spend without it."),
])
available_for = ['qt']
version = '0.1.0'
