#!/usr/bin/python3
"""Drives the real Electrum Qt GUI (Debian's 4.3.4, or 4.5/4.8 unpacked by
scripts/electrum-debian), with the installed plugin, under Xvfb.

    xvfb-run -a PYTHON gui.py ELECTRUM_DIR WALLET PSBT_FILE ARTIFACTS_DIR

Runs that Electrum's own ``electrum`` entry point (beside its library, as Debian installs
it) in this process (regtest, offline), on PyQt5 or PyQt6, whichever it uses, and
scripts it from Qt's event loop with Qt's test API, as a user would click: wait for the
wallet window and the plugin, open the partially signed transaction, press "Ask satellite to
co-sign", type the emailed code (read from stdin after ``NEED_CODE <id>``) and press Confirm,
then wait for the signed transaction to open in its own dialog. Each step saves a screenshot
of its window, grabbed from the X server by window id, into ARTIFACTS_DIR. Any error dialog
fails the run with its text. The last line is ``RESULT {json}``.
"""
import json
import os
import runpy
import subprocess
import sys
import threading
import time
import traceback

ELECTRUM_DIR, WALLET, PSBT_FILE, ARTIFACTS = sys.argv[1:5]
STEP_LIMIT = 120  # seconds any one step may take
os.makedirs(ARTIFACTS, exist_ok=True)

import electrum  # noqa: E402

# Debian installs the entry point at <prefix>/bin/electrum beside
# <prefix>/lib/python3/dist-packages/electrum: the same Electrum as the library imported.
ENTRY = os.path.normpath(os.path.join(os.path.dirname(electrum.__file__), "..", "..", "..",
                                      "..", "bin", "electrum"))

# No first-run questions: they are not what this test is about.
for key, value in (("dont_show_testnet_warning", "true"), ("check_updates", "false")):
    subprocess.run([sys.executable, ENTRY, "--regtest", "-D", ELECTRUM_DIR, "--offline",
                    "setconfig", key, value], check=True, stdout=subprocess.DEVNULL)

codes = []


def read_codes():
    for line in sys.stdin:
        codes.append(line.strip())


threading.Thread(target=read_codes, daemon=True).start()

import electrum.gui.qt as qtgui  # noqa: E402
try:  # Electrum 4.6+ is on PyQt6
    from PyQt6.QtCore import Qt, QTimer  # noqa: E402
    from PyQt6.QtTest import QTest  # noqa: E402
    from PyQt6.QtWidgets import QApplication, QMessageBox  # noqa: E402
except ImportError:  # 4.3-4.5: PyQt5
    from PyQt5.QtCore import Qt, QTimer  # noqa: E402
    from PyQt5.QtTest import QTest  # noqa: E402
    from PyQt5.QtWidgets import QApplication, QMessageBox  # noqa: E402
LEFT = Qt.MouseButton.LeftButton


def say(*parts):
    print(*parts, flush=True)


def top_level(class_name):
    return [w for w in QApplication.topLevelWidgets()
            if type(w).__name__ == class_name and w.isVisible()]


class Driver:
    def __init__(self, gui):
        self.gui = gui
        from electrum.version import ELECTRUM_VERSION
        self.result = {"screenshots": [], "electrum_version": ELECTRUM_VERSION}
        self.step = self.wait_for_wallet
        self.step_started = time.time()
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(200)

    def shot(self, widget, name):
        # The X server gives what is on screen in the window's area: bring it to the top.
        widget.raise_()
        widget.activateWindow()
        QTest.qWait(300)
        path = os.path.join(ARTIFACTS, name + ".png")
        pixmap = QApplication.primaryScreen().grabWindow(int(widget.winId()))
        if not pixmap.save(path):
            raise RuntimeError(f"could not save {path}")
        self.result["screenshots"].append(path)

    def go(self, step):
        self.step = step
        self.step_started = time.time()

    def fail(self, why):
        say("FAILED", why)
        self.timer.stop()
        os._exit(3)

    def tick(self):
        try:
            boxes = [w for w in QApplication.topLevelWidgets()
                     if isinstance(w, QMessageBox) and w.isVisible()]
            if boxes:
                self.fail("an error dialog appeared: " + " | ".join(b.text() for b in boxes))
            if time.time() - self.step_started > STEP_LIMIT:
                self.fail(f"step {self.step.__name__} did not finish in {STEP_LIMIT} s")
            self.step()
        except SystemExit:
            raise
        except Exception:
            self.fail(traceback.format_exc())

    def wait_for_wallet(self):
        if not self.gui.windows:
            return
        self.window = window = self.gui.windows[0]
        plugin = self.gui.plugins.get("satellite_cosigner")
        if plugin is None:
            self.fail("the satellite_cosigner plugin is not loaded")
        self.sw = plugin.wallets.get(window.wallet)
        if self.sw is None or self.sw.satellite is None:
            return  # still asking the bridge for the satellite's key
        if not self.sw.status_label.text().startswith("Satellite:"):
            return  # still asking for the registration
        self.plugin = plugin
        self.result["status_bar"] = self.sw.status_label.text()
        self.shot(window, "1-wallet")
        # Tools > Satellite cosigner > Settings, as a user opens it.
        QTimer.singleShot(0, lambda: plugin.settings_dialog(window))
        self.go(self.test_connection)

    def test_connection(self):
        dialogs = top_level("SettingsDialog")
        if not dialogs:
            return
        self.settings = d = dialogs[0]
        self.result["settings_bridge"] = d.bridge.text()
        QTest.mouseClick(d.test_button, LEFT)
        self.go(self.connection_tested)

    def connection_tested(self):
        text = self.settings.result.text()
        if not text or text.endswith("..."):
            return
        self.result["test_connection"] = text
        self.shot(self.settings, "2-settings-test-connection")
        self.settings.reject()
        QTimer.singleShot(0, lambda: self.plugin.show_satellite_key(self.window))
        self.go(self.satellite_key)

    def satellite_key(self):
        dialogs = top_level("SatelliteKeyDialog")
        if not dialogs:
            return
        d = dialogs[0]
        self.result["satellite_key"] = d.key_text.text()
        self.result["wallet_verdict"] = d.verdict.text()
        self.shot(d, "3-satellite-key")
        d.reject()
        from electrum.transaction import tx_from_any
        with open(PSBT_FILE) as f:
            self.window.show_transaction(tx_from_any(f.read().strip()))
        self.go(self.press_ask)

    def press_ask(self):
        dialogs = [d for d in top_level("TxDialog") if getattr(d, "satellite_button", None)]
        if not dialogs or not dialogs[0].satellite_button.isVisible():
            return
        self.tx_dialog = d = dialogs[0]
        self.result["button"] = d.satellite_button.text()
        self.shot(d, "4-partially-signed")
        QTest.mouseClick(d.satellite_button, LEFT)
        self.go(self.wait_for_request)

    def wait_for_request(self):
        dialogs = top_level("RequestDialog")
        if not dialogs or "email" not in dialogs[0].stage.text():
            return
        self.request = d = dialogs[0]
        self.result["request_id"] = d.request_id
        self.result["stage_before"] = d.stage.text()
        say("NEED_CODE", d.request_id)
        self.go(self.type_code)

    def type_code(self):
        if not codes:
            return
        QTest.keyClicks(self.request.code_edit, codes.pop(0))
        self.shot(self.request, "5-code-entered")
        QTest.mouseClick(self.request.confirm_button, LEFT)
        self.go(self.wait_for_signed)

    def wait_for_signed(self):
        done = [d for d in top_level("TxDialog") if d is not self.tx_dialog and d.tx.is_complete()]
        if not done:
            return
        d = done[0]
        self.shot(d, "6-signed-transaction")
        self.shot(self.request, "7-request")
        self.result.update({
            "tx": d.tx.serialize(),
            "txid": d.tx.txid(),
            "complete": d.tx.is_complete(),
            "stage_after": self.request.stage.text(),
            "broadcast_button": d.broadcast_button.isVisible(),
        })
        say("RESULT", json.dumps(self.result))
        self.timer.stop()
        # Leave as a user would; if Electrum's shutdown lingers, the result is already out.
        threading.Timer(20, os._exit, [0]).start()
        for w in list(self.gui.windows):
            w.close()
        QApplication.instance().quit()


original_main = qtgui.ElectrumGui.main


def main_with_driver(gui):
    gui.satcosign_driver = Driver(gui)
    return original_main(gui)


qtgui.ElectrumGui.main = main_with_driver
sys.argv = ["electrum", "--regtest", "--offline", "-D", ELECTRUM_DIR, "-w", WALLET]
runpy.run_path(ENTRY, run_name="__main__")
