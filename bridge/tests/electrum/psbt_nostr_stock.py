#!/usr/bin/env python3
"""Stock Electrum 4.6+'s own Nostr cosigning, with no satcosign plugin: the ``CosignerWallet``
of Electrum's ``psbt_nostr`` plugin, subclassed exactly as its Qt class does but without a
window, pointed at the bridge's relay. Every Nostr message is made, sent, fetched, decrypted
and parsed by Electrum's own code; only the GUI's dialogs are left out (the network object
carries the event loop, as Electrum's does).

    psbt_nostr_stock.py RELAY_URL SATELLITE_XPUB WORKDIR

Prints ``REGISTER <descriptor>`` and waits for a line on stdin (the harness registers the
wallet as its owner would), then ``SENT <txid>`` for each PSBT sent to the cosigners (one
within the policy, one over it), and finally ``RESULT {json}`` with every answer Electrum
received: its txid, label, and whether it is complete once merged as Electrum merges it.
"""
import asyncio
import json
import os
import sys
import threading
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "plugin", "tests"))
import session  # noqa: E402  (wallets made as the plugin's tests make them; regtest)

from electrum.plugins.psbt_nostr.psbt_nostr import CosignerWallet  # noqa: E402
from electrum.transaction import tx_from_any  # noqa: E402
from electrum.util import EventListener, event_listener  # noqa: E402
from electrum.version import ELECTRUM_VERSION  # noqa: E402


class HeadlessCosignerWallet(EventListener, CosignerWallet):
    """QtCosignerWallet without its window: sends as it does, records what it would show."""

    def __init__(self, wallet):
        CosignerWallet.__init__(self, wallet, {})
        self.received = []
        self.got = threading.Event()
        self.register_callbacks()

    @event_listener
    def on_event_psbt_nostr_received(self, wallet, pubkey, event_id, tx, label):
        if wallet is self.wallet:
            self.received.append({"author": pubkey, "tx": tx, "label": label})
            self.got.set()
            self.mark_pending_event_rcvd(event_id)

    def do_send(self, messages, txid=None):
        fut = asyncio.run_coroutine_threadsafe(self.send_direct_messages(messages),
                                               self.network.asyncio_loop)
        fut.result(60)


def main(relay, satellite_xpub, workdir):
    env = session.Env(workdir)
    try:
        env.config.set_key("nostr_relays", relay, save=True)
        wallet = session.make_wallet(env.config, os.path.join(workdir, "wallet"),
                                     satellite_xpub, "nostr-user")
        session.say("REGISTER", wallet_descriptor(wallet, satellite_xpub))
        if not sys.stdin.readline():
            sys.exit("no go-ahead on stdin")
        funding = session.fund(wallet)
        small = session.spend(wallet, 300_000)
        large = session.spend(wallet, 900_000)
        # Electrum's network, as far as psbt_nostr uses it: its event loop, no proxy.
        wallet.network = types.SimpleNamespace(asyncio_loop=env.loop, proxy=None)
        wallet.is_up_to_date = lambda: True
        cw = HeadlessCosignerWallet(wallet)
        assert cw.can_send_psbt(small)
        cw.send_psbt(small, "rent")
        session.say("SENT", small.txid())
        cw.send_psbt(large, "too much")
        session.say("SENT", large.txid())
        deadline = time.time() + 240
        while len({r["tx"].txid() for r in cw.received}) < 2 and time.time() < deadline:
            cw.got.wait(1)
            cw.got.clear()
        ours = {small.txid(): small, large.txid(): large}
        answers = []
        for r in cw.received:
            received = r["tx"]
            mine = tx_from_any(ours[received.txid()].serialize())
            mine.add_info_from_wallet(wallet)
            mine.combine_with_other_psbt(received)
            mine.finalize_psbt()
            answers.append({"author": r["author"], "txid": received.txid(), "label": r["label"],
                            "complete": mine.is_complete(), "tx": mine.serialize()})
        cw.close()
        session.say("RESULT", json.dumps({
            "electrum_version": ELECTRUM_VERSION, "answers": answers,
            "small_txid": small.txid(), "large_txid": large.txid(),
            "funding_tx": funding.serialize(), "satellite_pubkey": satellite_nostr_key(cw)}))
    finally:
        env.close()


def wallet_descriptor(wallet, satellite_xpub):
    from satellite_cosigner.wallet_keys import descriptor
    return descriptor(wallet, satellite_xpub)


def satellite_nostr_key(cw):
    return [pub for _xpub, pub in cw.cosigner_list]


if __name__ == "__main__":
    main(*sys.argv[1:])
