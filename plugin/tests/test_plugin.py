#!/usr/bin/python3
"""Unit tests of the plugin's pure parts and its packaging, in Debian's Electrum 4.3.4.

    /usr/bin/python3 -m unittest discover -s plugin/tests -p 'test_*.py'

What needs a bridge (registration, signing, the listener, the GUI) is tested against a real
one by ``bridge/tests/plugin_electrum.rs``.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, "..")
sys.path.insert(0, PLUGIN)

from electrum import constants  # noqa: E402
constants.set_regtest()
from electrum import keystore  # noqa: E402

from satellite_cosigner import errors, stages, wallet_keys  # noqa: E402
from satellite_cosigner.bridge_client import BridgeClient, parse_address  # noqa: E402
from satellite_cosigner.core import Settings  # noqa: E402


class ErrorMapping(unittest.TestCase):
    def test_each_bridge_error_becomes_its_own_plain_error(self):
        cases = [
            ((-32020, "the bridge has no satellite", None), errors.LinkDown),
            ((-32021, "the PSBT spends from no wallet registered here", None),
             errors.WalletNotRegistered),
            ((-32022, "wallet ab is pending, not active", {"wallet_id": "ab",
                                                           "state": "pending"}),
             errors.WalletNotRegistered),
            ((-32022, "wallet ab is already pending", {"wallet_id": "ab", "state": "pending"}),
             errors.BridgeError),
            ((-32023, "refused (fee_too_high): fee 9 > 1", {"reason": "fee_too_high"}),
             errors.RefusedByPolicy),
            ((-32024, "wrong code", {"reason": "wrong_code", "attempts_left": 3}),
             errors.WrongCode),
            ((-32024, "expired", {"reason": "expired"}), errors.RequestExpired),
            ((-32024, "voided", {"reason": "voided"}), errors.RequestExpired),
            ((-32025, "too many", {"retry_after": "x"}), errors.BridgeError),
        ]
        for args, cls in cases:
            self.assertIs(type(errors.from_rpc_error(*args)), cls, args)

    def test_messages_say_what_to_do(self):
        e = errors.from_rpc_error(-32023, "refused (over_tx_limit): 5 > 1",
                                  {"reason": "over_tx_limit"})
        self.assertIn("per-transaction limit", str(e))
        self.assertEqual(e.reason_code, "over_tx_limit")
        e = errors.from_rpc_error(-32023, "refused (something_new): it is new",
                                  {"reason": "something_new"})
        self.assertIn("it is new", str(e))
        self.assertIn("2 attempts left", str(errors.WrongCode(2)))
        self.assertIn("your own keys still spend", str(errors.LinkDown("x")))


class Stages(unittest.TestCase):
    def test_every_state_reads_as_a_sentence(self):
        for state in ["received", "awaiting_email", "confirmed", "queued", "sent", "signed",
                      "refused", "expired", "cancelled"]:
            text = stages.describe({"state": state, "kind": "sign"})
            self.assertTrue(text.endswith("."), (state, text))
            self.assertNotIn("State:", text)

    def test_delivered_reads_as_how_it_ended(self):
        refused = {"state": "delivered", "final_state": "refused", "kind": "sign",
                   "outcome": {"refused": {"code": "over_period_limit", "reason": "x"}}}
        self.assertIn("over what the wallet may spend in this period",
                      stages.describe(refused))
        signed = {"state": "delivered", "final_state": "signed", "kind": "sign"}
        self.assertEqual(stages.describe(signed), "Signed by the satellite.")

    def test_a_broadcast_transaction_reads_as_where_it_stands(self):
        def status(chain):
            return {"state": "delivered", "final_state": "signed", "kind": "sign",
                    "outcome": {"signed": {"broadcast": {"txid": "ab" * 32, "chain": chain}}}}
        self.assertEqual(stages.describe(status(None)),
                         "Signed by the satellite. The bridge broadcast it.")
        self.assertIn("waiting to be mined", stages.describe(status({"status": "mempool"})))
        confirmed = status({"status": "confirmed", "height": 840_001, "confirmations": 3})
        self.assertIn("Confirmed in block 840001 (3 confirmations).",
                      stages.describe(confirmed))
        self.assertNotEqual(stages.chain_key(confirmed),
                            stages.chain_key(status({"status": "mempool"})))
        failed = {"state": "delivered", "final_state": "signed", "kind": "sign",
                  "outcome": {"signed": {"broadcast": {"error": "txn-mempool-conflict"}}}}
        self.assertIn("could not broadcast it: txn-mempool-conflict", stages.describe(failed))

    def test_queued_gives_the_next_pass_time(self):
        text = stages.describe({"state": "queued"}, {"start": 4_000_000_000,
                                                     "end": 4_000_000_600})
        self.assertIn("next satellite pass, at about " + stages.when(4_000_000_000), text)

    def test_queued_shows_the_bridges_expected_time_and_station(self):
        at = 4_000_000_000
        status = {"state": "queued", "expected": {"at": at, "in_secs": 41 * 60,
                                                  "station": "turin", "in_view": False}}
        text = stages.describe(status, {"start": 1, "end": 2})
        self.assertEqual(text, "Confirmed. Queued with the next satellite pass over turin, at "
                               f"{stages.when(at)}, in about 41 minutes.")
        status["expected"]["in_view"] = True
        self.assertEqual(stages.describe(status),
                         "Confirmed. Going up to the satellite now, during this pass over turin.")
        sent = {"state": "sent", "expected": {"at": at, "in_secs": 3 * 3600, "station": None,
                                              "in_view": False}}
        self.assertEqual(stages.describe(sent),
                         "Sent to the satellite; its answer is expected with the next satellite "
                         f"pass, at {stages.when(at)}, in about 3 hours.")
        waiting = dict(status, expected=dict(status["expected"], in_view=False))
        moved = dict(waiting, expected=dict(waiting["expected"], at=at + 5400))
        self.assertNotEqual(stages.expected_key(waiting), stages.expected_key(moved))
        self.assertIsNone(stages.expected_key({"state": "signed", "expected": None}))
        under_way = dict(status, expected=dict(status["expected"], in_view=True))
        later = dict(under_way, expected=dict(under_way["expected"], at=at + 300))
        self.assertEqual(stages.expected_key(under_way), stages.expected_key(later))

    def test_a_stale_status_never_takes_a_request_back(self):
        self.assertTrue(stages.is_stale({"state": "queued"}, {"state": "confirmed"}))
        self.assertFalse(stages.is_stale({"state": "queued"}, {"state": "queued"}))
        self.assertFalse(stages.is_stale({"state": "sent"}, {"state": "refused"}))
        self.assertFalse(stages.is_stale(None, {"state": "received"}))

    def test_queued_during_a_pass_says_it_goes_up_now(self):
        import time
        now = int(time.time())
        text = stages.describe({"state": "queued"}, {"start": now + 3600, "end": now + 3700},
                               {"start": now - 5, "end": now + 300})
        self.assertIn("during this pass", text)

    def test_a_held_spend_says_when_it_releases_and_that_it_can_be_cancelled(self):
        hold = {"started_at": 1_800_000_000, "releases_at": 1_800_086_400}
        text = stages.describe({"state": "confirmed", "hold": hold,
                                "expected": {"at": 1_800_000_600, "in_secs": 600}})
        self.assertIn("Held on the satellite", text)
        self.assertIn(stages.when(hold["started_at"]), text)
        self.assertIn(stages.when(hold["releases_at"]), text)
        self.assertIn("cancel", text)
        self.assertNotIn("Held", stages.describe({"state": "confirmed", "hold": None}))


class SettingsAndAddresses(unittest.TestCase):
    def test_bad_settings_are_named(self):
        for address in ["", "host", "host:", ":50001", "host:0", "host:70000", "host:abc"]:
            with self.assertRaises(ValueError) as c:
                parse_address(address)
            self.assertIn("host:port", str(c.exception))
        with self.assertRaises(ValueError) as c:
            Settings(bridge="h:1", email="not an address").check()
        self.assertIn("email", str(c.exception))
        self.assertEqual(parse_address("[::1]:50001"), ("::1", 50001))

    def test_a_refused_connection_is_bridge_unreachable(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        client = BridgeClient(f"127.0.0.1:{port}", timeout=3)
        try:
            with self.assertRaises(errors.BridgeUnreachable) as c:
                client.satellite_info()
            self.assertIn("connection refused", str(c.exception))
        finally:
            client.close()


class Keys(unittest.TestCase):
    def test_the_same_key_in_any_spelling_is_found(self):
        ks = keystore.from_bip43_rootseed(b"\x01" * 32, "m/48'/1'/0'/2'", xtype="p2wsh")
        vpub = ks.get_master_public_key()
        tpub = wallet_keys.plain_xpub(vpub)
        self.assertTrue(vpub.startswith("Vpub") and tpub.startswith("tpub"))
        self.assertTrue(wallet_keys.same_key(vpub, tpub))
        other = keystore.from_bip43_rootseed(b"\x02" * 32, "m/48'/1'/0'/2'", xtype="p2wsh")
        self.assertFalse(wallet_keys.same_key(vpub, other.get_master_public_key()))
        self.assertEqual(wallet_keys._origin(ks),
                         "[%s/48h/1h/0h/2h]" % ks.get_root_fingerprint())
        self.assertEqual(wallet_keys._origin(keystore.from_xpub(vpub)), "")


class Contract(unittest.TestCase):
    def test_the_plugin_calls_only_documented_methods(self):
        import re
        with open(os.path.join(PLUGIN, "..", "schemas", "openrpc.json")) as f:
            documented = {m["name"] for m in json.load(f)["methods"]}
        called = set()
        for name in os.listdir(os.path.join(PLUGIN, "satellite_cosigner")):
            if name.endswith(".py"):
                with open(os.path.join(PLUGIN, "satellite_cosigner", name)) as f:
                    called |= set(re.findall(r'call\(\s*"([a-z_.]+)"', f.read()))
        self.assertIn("cosigner.put", called)
        self.assertIn("request.subscribe", called)
        self.assertEqual(called - documented, set())


class Packaging(unittest.TestCase):
    def test_the_zip_for_electrum_4_6_holds_a_manifest_and_imports_from_the_zip(self):
        out = tempfile.mkdtemp()
        r = subprocess.run([sys.executable, os.path.join(PLUGIN, "install.py"), "zip",
                            "--out", out], check=True, capture_output=True, text=True)
        path = r.stdout.strip()
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            manifest = json.loads(z.read("satellite_cosigner/manifest.json"))
        self.assertIn("satellite_cosigner/qt.py", names)
        self.assertIn("satellite_cosigner/__init__.py", names)
        self.assertEqual(manifest["name"], "satellite_cosigner")
        self.assertEqual(manifest["available_for"], ["qt"])
        self.assertTrue(path.endswith("satellite_cosigner-%s.zip" % manifest["version"]))
        # Electrum 4.6 imports external plugins from the zip: the relative imports must work.
        code = ("import sys; sys.path.insert(0, %r); import satellite_cosigner.core as c; "
                "print(c.__file__)" % path)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(".zip", r.stdout)

    def test_the_manifest_and_the_package_agree(self):
        import satellite_cosigner
        with open(os.path.join(PLUGIN, "satellite_cosigner", "manifest.json")) as f:
            manifest = json.load(f)
        self.assertEqual(manifest["version"], satellite_cosigner.version)
        self.assertEqual(manifest["available_for"], satellite_cosigner.available_for)
        self.assertEqual(manifest["fullname"], satellite_cosigner.fullname)


if __name__ == "__main__":
    unittest.main()
