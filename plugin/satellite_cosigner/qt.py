"""The plugin's Qt layer: settings, the satellite's key, registration, and "Ask satellite to
co-sign" in the transaction dialog.

Thin on purpose: every decision and every bridge call is in ``core.py`` (tested headless);
this module draws dialogs, runs calls off the GUI thread (Electrum's ``WaitingDialog`` and
``TaskThread``) and turns the core's callbacks into Qt signals.
"""
import threading
from functools import partial

try:  # Electrum 4.6+ ships PyQt6; 4.3-4.5 PyQt5.
    from PyQt6.QtCore import QObject, pyqtSignal
    from PyQt6.QtWidgets import (QCheckBox, QGridLayout, QLabel, QLineEdit, QPushButton,
                                 QVBoxLayout)
except ImportError:
    from PyQt5.QtCore import QObject, pyqtSignal
    from PyQt5.QtWidgets import (QCheckBox, QGridLayout, QLabel, QLineEdit, QPushButton,
                                 QVBoxLayout)

from electrum.i18n import _
from electrum.plugin import BasePlugin, hook
from electrum.wallet import Multisig_Wallet

from electrum.gui.qt.qrcodewidget import QRCodeWidget
from electrum.gui.qt.util import (Buttons, CancelButton, CloseButton, EnterButton, OkButton,
                                  TaskThread, WaitingDialog, WindowModalDialog)

from .wallet_keys import NotASatelliteWallet, check_wallet, needs_satellite as tx_needs_satellite
from .compat import dialog_finalized, network_proxy
from .core import Service, Settings, WalletSession
from .errors import SatelliteError

ASK_BUTTON = "Ask satellite to co-sign"


def electrum_proxy():
    """The proxy Electrum's network uses (Tor, say), so the bridge never sees the user's own
    address; None when none is set."""
    try:
        from electrum.network import Network
        return network_proxy(Network.get_instance())
    except Exception:  # no network (offline): a direct connection, as Electrum's own
        return None


def error_text(exc):
    """The plain-language text of an exception from the core."""
    if isinstance(exc, (SatelliteError, NotASatelliteWallet, ValueError)):
        return str(exc)
    return _("Unexpected error") + f": {exc!r}"


class Signals(QObject):
    status = pyqtSignal(str, object, str)
    transaction = pyqtSignal(object, object)
    ready = pyqtSignal(object)
    registration = pyqtSignal(str, str)
    need_password = pyqtSignal(object, object)


class Plugin(BasePlugin):

    def __init__(self, parent, config, name):
        BasePlugin.__init__(self, parent, config, name)
        self._service = None
        self._init_qt_received = False
        self.wallets = {}  # Abstract_Wallet -> SatelliteWallet

    # ---- the shared service ---------------------------------------------------------------
    def service(self):
        if self._service is None:
            self._service = Service(Settings.from_config(self.config), proxy=electrum_proxy(),
                                    config=self.config)
        return self._service

    def reset_service(self):
        for sw in list(self.wallets.values()):
            sw.close()
        if self._service is not None:
            self._service.close()
            self._service = None
        for wallet, sw in list(self.wallets.items()):
            self.wallets[wallet] = SatelliteWallet(self, wallet, sw.window)

    def on_close(self):
        for sw in list(self.wallets.values()):
            sw.close()
        self.wallets.clear()
        if self._service is not None:
            self._service.close()
            self._service = None

    # ---- settings -------------------------------------------------------------------------
    def requires_settings(self):
        return True

    def settings_widget(self, window):
        return EnterButton(_('Settings'), partial(self.settings_dialog, window))

    def settings_dialog(self, window):
        _exec(SettingsDialog(self, window))

    # ---- Electrum hooks -------------------------------------------------------------------
    @hook
    def init_qt(self, gui):
        if self._init_qt_received:
            return
        self._init_qt_received = True
        for window in gui.windows:
            self.load_wallet(window.wallet, window)

    @hook
    def load_wallet(self, wallet, window):
        if window is None or not isinstance(wallet, Multisig_Wallet) or wallet in self.wallets:
            return
        self.wallets[wallet] = SatelliteWallet(self, wallet, window)

    @hook
    def on_close_window(self, window):
        sw = self.wallets.pop(window.wallet, None)
        if sw is not None:
            sw.close()

    @hook
    def init_menubar(self, window):  # Electrum 4.6+
        self.init_menubar_tools(window, window.tools_menu)

    @hook
    def init_menubar_tools(self, window, tools_menu):  # Electrum 4.3-4.5
        menu = tools_menu.addMenu(_("Satellite cosigner"))
        menu.addAction(_("Show satellite key"), partial(self.show_satellite_key, window))
        menu.addAction(_("Register with satellite"), partial(self.register_dialog, window))
        menu.addAction(_("Registration status"), partial(self.registration_status, window))
        menu.addAction(_("Emergency lockdown"), partial(self.lockdown_dialog, window, True))
        menu.addAction(_("Lift the lockdown"), partial(self.lockdown_dialog, window, False))
        menu.addAction(_("Settings"), partial(self.settings_dialog, window))

    @hook
    def transaction_dialog(self, d):
        sw = self.wallets.get(d.wallet)
        if sw is None:
            return
        d.satellite_button = b = QPushButton(_(ASK_BUTTON))
        b.clicked.connect(lambda: sw.ask(d))
        d.buttons.insert(0, b)
        b.setVisible(False)

    @hook
    def transaction_dialog_update(self, d):
        sw = self.wallets.get(d.wallet)
        b = getattr(d, "satellite_button", None)
        if sw is None or b is None:
            return
        b.setVisible(dialog_finalized(d) and sw.needs_satellite(d.tx))

    # ---- menu actions ---------------------------------------------------------------------
    def _run(self, window, message, task, on_success):
        def on_error(exc_info):
            window.show_error(error_text(exc_info[1]))
        WaitingDialog(window, message, task, on_success, on_error)

    def show_satellite_key(self, window):
        """This wallet's own satellite key once it is registered; otherwise a fresh key for
        a new wallet (each wallet has its own)."""
        sw = self.wallets.get(window.wallet)

        def task():
            own = sw.session.satellite_key() if sw is not None else None
            if own:
                return own, True
            return self.service().new_key(), False

        def done(result):
            key, own = result
            _exec(SatelliteKeyDialog(window, key, sw, own))
        self._run(window, _("Asking the bridge for a satellite key..."), task, done)

    def registration_status(self, window):
        sw = self.wallets.get(window.wallet)
        if sw is None:
            window.show_message(_("This is not a multisig wallet."))
            return
        self._run(window, _("Asking the bridge..."), sw.session.registration_text,
                  window.show_message)

    def lockdown_dialog(self, window, lock):
        """Locks the wallet down (or asks to unlock it): the bridge emails a code, entered
        in the request's window like any other."""
        sw = self.wallets.get(window.wallet)
        if sw is None:
            window.show_error(_("Only multisig wallets can use the satellite."))
            return
        if lock:
            question = _("Freeze signing for this wallet on the satellite? Every spend not yet "
                         "signed is refused. Your own two keys can still spend without the "
                         "satellite. The bridge emails a code to confirm.")
            task, title = sw.session.lockdown, _("Emergency lockdown")
        else:
            question = _("Ask to lift the lockdown? After you confirm by email, the satellite "
                         "waits its delay for loosening before it signs again.")
            task, title = sw.session.unlock, _("Lift the lockdown")
        if not window.question(question):
            return
        self._run(window, _("Asking the bridge..."), task,
                  lambda request_id: sw.open_request(request_id, title))

    def register_dialog(self, window):
        sw = self.wallets.get(window.wallet)
        if sw is None:
            window.show_error(_("Only multisig wallets can use the satellite."))
            return
        sw.register(window)


class SatelliteWallet:
    """The plugin's state for one open wallet window."""

    def __init__(self, plugin, wallet, window):
        self.plugin = plugin
        self.wallet = wallet
        self.window = window
        self.signals = Signals()
        self.signals.status.connect(self._on_status)
        self.signals.transaction.connect(self._on_transaction)
        self.signals.ready.connect(self._on_ready)
        self.signals.registration.connect(self._on_registration)
        self.signals.need_password.connect(self._ask_password)
        self.dialogs = {}  # request id -> RequestDialog
        self.satellite = None  # keystore name, once known
        self.session = WalletSession(
            plugin.service(), wallet,
            on_status=lambda rid, st, text: self.signals.status.emit(rid, st, text),
            on_transaction=lambda tx, rid: self.signals.transaction.emit(tx, rid),
            password=self._password)
        self.status_label = QLabel("")
        try:
            window.statusBar().addPermanentWidget(self.status_label)
        except Exception:
            pass
        threading.Thread(target=self._probe, name="satcosign-probe", daemon=True).start()

    def close(self):
        self.session.stop()
        try:
            self.window.statusBar().removeWidget(self.status_label)
        except Exception:
            pass

    def _probe(self):
        """Off the GUI thread: does this wallet hold the satellite's key?"""
        try:
            self.signals.ready.emit(self.session.satellite_keystore())
        except Exception as e:
            self.signals.ready.emit(e)

    def _on_ready(self, result):
        if isinstance(result, Exception):
            self.status_label.setText(_("Satellite: bridge unreachable"))
            self.status_label.setToolTip(error_text(result))
            return
        self.satellite = result
        if result is None:
            self.status_label.setText("")
            return
        self.status_label.setText(_("Satellite cosigner"))
        self.status_label.setToolTip(_("This wallet includes the satellite's key."))
        self.session.start()
        self.refresh_registration()

    def refresh_registration(self):
        """Off the GUI thread: the wallet's registration, for the status bar."""
        def probe():
            try:
                self.signals.registration.emit(self.session.registration_state(),
                                               self.session.registration_text())
            except Exception as e:
                self.signals.registration.emit("unknown", error_text(e))
        threading.Thread(target=probe, name="satcosign-registration", daemon=True).start()

    def _on_registration(self, state, text):
        words = {"active": _("registered"), "pending": _("registration pending"),
                 "refused": _("registration refused"), "none": _("not registered")}
        self.status_label.setText(_("Satellite") + ": " + words.get(state, _("bridge unreachable")))
        self.status_label.setToolTip(text)

    def needs_satellite(self, tx):
        if self.satellite is None:
            return False
        try:
            return tx_needs_satellite(self.wallet, self.satellite, tx)
        except Exception:
            return False

    # ---- registration ----------------------------------------------------------------------
    def register(self, window):
        settings = self.plugin.service().settings
        d = WindowModalDialog(window, _("Register with satellite"))
        grid = QGridLayout(d)
        grid.addWidget(QLabel(_("The bridge emails a code to confirm; every request to the "
                                "satellite is confirmed by email at this address.")), 0, 0, 1, 2)
        email = QLineEdit(settings.email)
        label = QLineEdit(self.wallet.basename())
        grid.addWidget(QLabel(_("Email")), 1, 0)
        grid.addWidget(email, 1, 1)
        grid.addWidget(QLabel(_("Label")), 2, 0)
        grid.addWidget(label, 2, 1)
        grid.addLayout(Buttons(CancelButton(d), OkButton(d, _("Register"))), 3, 0, 1, 2)
        if not _exec(d):
            return

        def done(request_id):
            if request_id is None:
                window.show_message(_("This wallet was registered before.") + "\n"
                                    + self.session.registration_text())
                return
            self.open_request(request_id, _("Registration"))
        self.plugin._run(window, _("Sending the wallet's descriptor..."),
                         lambda: self.session.register(email.text().strip(),
                                                       label.text().strip()), done)

    # ---- signing -----------------------------------------------------------------------------
    def ask(self, d):
        tx = d.tx

        def done(request_id):
            self.open_request(request_id, _("Co-signing request"))
        self.plugin._run(d, _("Sending the transaction to the satellite's bridge..."),
                         lambda: self.session.ask_cosign(tx), done)

    def open_request(self, request_id, title):
        dialog = RequestDialog(self, request_id, title)
        self.dialogs[request_id] = dialog
        dialog.show()
        dialog.refresh()

    def _on_status(self, request_id, status, text):
        dialog = self.dialogs.get(request_id)
        if dialog is not None:
            dialog.set_stage(status, text)
        if status.get("kind") == "register" and status.get("state") == "delivered":
            self.refresh_registration()

    def _on_transaction(self, tx, request_id):
        dialog = self.dialogs.get(request_id)
        signed = ((self.session._statuses.get(request_id) or {}).get("outcome") or {}) \
            .get("signed") or {}
        broadcast = signed.get("broadcast") or {}
        if broadcast.get("txid"):
            text = _("Signed by the satellite, and the bridge broadcast it") + \
                f": {broadcast['txid']}"
        else:
            text = _("Signed by the satellite. The transaction is open in a new window, "
                     "ready to broadcast.")
        if dialog is not None:
            dialog.set_text(text)
        self.window.show_transaction(tx)

    def _password(self):
        if not self.wallet.has_keystore_encryption():
            return None
        box, done = {}, threading.Event()
        self.signals.need_password.emit(box, done)
        done.wait()
        if box.get("password") is None:
            raise SatelliteError("A signed transaction waits in this wallet's mailbox; it "
                                 "opens once you enter the wallet's password.")
        return box["password"]

    def _ask_password(self, box, done):
        try:
            box["password"] = self.window.password_dialog(
                _("The satellite's signed transaction arrived.") + "\n"
                + _("Enter your password to decrypt it."))
        finally:
            done.set()


class RequestDialog(WindowModalDialog):
    """A request's life: the stage in words, the emailed code, resend and cancel."""

    def __init__(self, sw, request_id, title):
        WindowModalDialog.__init__(self, sw.window, title)
        self.setModal(False)
        self.sw = sw
        self.request_id = request_id
        self.setMinimumWidth(520)
        vbox = QVBoxLayout(self)
        vbox.addWidget(QLabel(_("Request") + f": {request_id}"))
        self.stage = QLabel(_("Asking the bridge..."))
        self.stage.setWordWrap(True)
        self.stage.setMinimumHeight(3 * self.stage.fontMetrics().height())
        vbox.addWidget(self.stage)
        vbox.addWidget(QLabel(_("Enter the code from the email (or use the email's link; "
                                "this window follows either):")))
        self.code_edit = QLineEdit()
        self.code_edit.setPlaceholderText("XXXX-XXXX-...")
        vbox.addWidget(self.code_edit)
        self.confirm_button = QPushButton(_("Confirm"))
        self.confirm_button.clicked.connect(self.confirm)
        self.resend_button = QPushButton(_("Resend email"))
        self.resend_button.clicked.connect(self.resend)
        self.cancel_button = QPushButton(_("Cancel request"))
        self.cancel_button.clicked.connect(self.cancel)
        vbox.addLayout(Buttons(self.cancel_button, self.resend_button, self.confirm_button,
                               CloseButton(self)))
        self.thread = TaskThread(self)

    def closeEvent(self, event):
        self.sw.dialogs.pop(self.request_id, None)
        self.thread.stop()
        event.accept()

    def _call(self, task, on_done=None):
        def on_error(exc_info):
            self.show_error(error_text(exc_info[1]))
        self.thread.add(task, on_done or (lambda _: self.refresh()), None, on_error)

    def refresh(self):
        self._call(lambda: (self.sw.session.status(self.request_id),
                            self.sw.session.stage_text(self.request_id)),
                   lambda r: self.set_stage(*r))

    def set_text(self, text):
        self.stage.setText(text)

    def set_stage(self, status, text):
        self.set_text(text)
        waiting = status.get("state") in ("received", "awaiting_email")
        for w in (self.code_edit, self.confirm_button, self.resend_button):
            w.setEnabled(waiting)
        self.cancel_button.setEnabled(status.get("state") in
                                      ("received", "awaiting_email", "confirmed", "queued"))

    def confirm(self):
        code = self.code_edit.text().strip()
        if not code:
            self.show_error(_("Enter the code from the email first."))
            return
        self._call(lambda: self.sw.session.confirm(self.request_id, code))

    def resend(self):
        self._call(lambda: self.sw.session.resend(self.request_id),
                   lambda _: self.show_message(_("A new email is on its way.")))

    def cancel(self):
        self._call(lambda: self.sw.session.cancel(self.request_id))


class SatelliteKeyDialog(WindowModalDialog):
    """A satellite key, as text and QR: this wallet's own (``own``), or a fresh one for
    Electrum's multisig wizard."""

    def __init__(self, window, info, sw, own=False):
        WindowModalDialog.__init__(self, window, _("Satellite key"))
        self.setMinimumWidth(640)
        vbox = QVBoxLayout(self)
        if own:
            help_text = QLabel(_("This wallet's satellite key. It serves this wallet alone."))
        else:
            help_text = QLabel(_(
                "A new satellite key, for a new wallet: File > New, \"Multi-signature "
                "wallet\", 2 of 3, native segwit; add this key as a cosigner (\"Enter "
                "cosigner key\"), then register the wallet. Each wallet gets its own key. "
                "Keep your own two keys; they spend without the satellite."))
        help_text.setWordWrap(True)
        vbox.addWidget(help_text)
        text = QLineEdit(info["electrum_xpub"])
        text.setReadOnly(True)
        self.key_text = text
        vbox.addWidget(text)
        vbox.addWidget(QRCodeWidget(info["electrum_xpub"]))
        if sw is not None:
            try:
                check_wallet(sw.wallet, info["electrum_xpub"] if own else None)
                verdict = (_("This wallet contains the satellite's key.") if own else
                           _("This wallet is not registered; the key above is for a new wallet."))
            except NotASatelliteWallet as e:
                verdict = _("This wallet cannot use the satellite") + f": {e}"
            self.verdict = QLabel(verdict)
            vbox.addWidget(self.verdict)
        vbox.addLayout(Buttons(CloseButton(self)))


class SettingsDialog(WindowModalDialog):
    """Bridge address, TLS, email, and "Test connection"."""

    def __init__(self, plugin, window):
        WindowModalDialog.__init__(self, window, _("Satellite cosigner settings"))
        self.plugin = plugin
        s = Settings.from_config(plugin.config)
        grid = QGridLayout(self)
        self.bridge = QLineEdit(s.bridge)
        self.tls = QCheckBox(_("Use TLS"))
        self.tls.setChecked(s.tls)
        self.ca_file = QLineEdit(s.ca_file)
        self.ca_file.setPlaceholderText(_("CA or certificate file (self-signed bridge)"))
        self.email = QLineEdit(s.email)
        for row, (name, widget) in enumerate([(_("Bridge (host:port)"), self.bridge),
                                              ("", self.tls),
                                              (_("TLS certificate"), self.ca_file),
                                              (_("Email"), self.email)]):
            grid.addWidget(QLabel(name), row, 0)
            grid.addWidget(widget, row, 1)
        self.setMinimumWidth(520)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setMinimumHeight(3 * self.result.fontMetrics().height())
        grid.addWidget(self.result, 4, 0, 1, 2)
        self.test_button = QPushButton(_("Test connection"))
        self.test_button.clicked.connect(self.test)
        grid.addLayout(Buttons(self.test_button, CancelButton(self), OkButton(self)), 5, 0, 1, 2)
        self.thread = TaskThread(self)

    def settings(self):
        return Settings(bridge=self.bridge.text().strip(), tls=self.tls.isChecked(),
                        ca_file=self.ca_file.text().strip(), email=self.email.text().strip())

    def test(self):
        try:
            settings = self.settings()
            settings.check()
        except ValueError as e:
            self.result.setText(str(e))
            return
        self.result.setText(_("Connecting..."))

        def task():
            service = Service(settings, timeout=10.0, proxy=electrum_proxy())
            try:
                return service.link_text()
            finally:
                service.close()
        self.thread.add(task, self.result.setText, None,
                        lambda exc_info: self.result.setText(error_text(exc_info[1])))

    def accept(self):
        try:
            self.settings().save(self.plugin.config)
        except ValueError as e:
            self.result.setText(str(e))
            return
        self.thread.stop()
        self.plugin.reset_service()
        super().accept()


def _exec(dialog):
    return dialog.exec_() if hasattr(dialog, "exec_") else dialog.exec()
