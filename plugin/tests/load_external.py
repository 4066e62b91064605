#!/usr/bin/env python3
"""Electrum 4.6+'s own plugin loader, as Electrum runs it at start, over an Electrum data
folder where ``install.py authorize`` put the plugin's zip: is it authorized, and does it
load? Run as the user who runs Electrum (Electrum trusts the plugins key only when that user
cannot write it).

    load_external.py ELECTRUM_DIR     prints RESULT {json}
"""
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from electrum import constants  # noqa: E402
constants.BitcoinRegtest.set_as_network()
from electrum.plugin import Plugins  # noqa: E402
from electrum.simple_config import SimpleConfig  # noqa: E402
from electrum.util import create_and_start_event_loop  # noqa: E402
from electrum.version import ELECTRUM_VERSION  # noqa: E402

NAME = "satellite_cosigner"


def main(electrum_dir):
    from PyQt6.QtWidgets import QApplication
    app = QApplication([])  # noqa: F841 (the plugin's Qt objects need one)
    loop, stopping, thread = create_and_start_event_loop()  # as Electrum's start does
    config = SimpleConfig({"electrum_path": electrum_dir, "regtest": True})
    plugins = Plugins(config, "qt")
    try:
        plugin = plugins.get(NAME)
        result = {
            "electrum_version": ELECTRUM_VERSION,
            "external": plugins.is_external(NAME),
            "authorized": plugins.is_authorized(NAME),
            "loaded": plugin is not None,
            "module": type(plugin).__module__ if plugin is not None else None,
            "has_menu_hook": hasattr(plugin, "init_menubar") if plugin is not None else False,
        }
    finally:
        plugins.stop()
        loop.call_soon_threadsafe(stopping.set_result, 1)
        thread.join(5)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
