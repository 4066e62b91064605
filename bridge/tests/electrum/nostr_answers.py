"""Electrum 4.6+'s psbt_nostr reading a wallet's direct messages, at a time of the test's
choosing: the process's clock runs AHEAD_SECS ahead (as the bridge's does in the test), so a
wallet opened days after its request is played in seconds.

The query and the checks are psbt_nostr's check_direct_messages: kind 4, tagged with the
wallet's own key, since 24 hours ago (KEEP_DELAY), limit 100; events already known by id
are skipped, as are authors that are not cosigners and events outside 24 hours of now.
Only the events the relay holds are read (the subscription ends at EOSE).

    nostr_answers.py RELAY_URL PRIVKEY_HEX COSIGNER_PUBKEYS AHEAD_SECS

Prints RESULT {"answers": [{"id", "created_at", "author", "message"}]}.
"""
import asyncio
import json
import logging
import sys
import time

_real_time = time.time
AHEAD = float(sys.argv[4])
time.time = lambda: _real_time() + AHEAD  # noqa: E731  (aionostr reads time.time too)

import electrum_aionostr as aionostr  # noqa: E402
import electrum_ecc as ecc  # noqa: E402
from electrum_aionostr.key import PrivateKey  # noqa: E402

KIND = 4
KEEP_DELAY = 24 * 60 * 60
now = lambda: int(time.time())  # noqa: E731


async def check_direct_messages(relay, privkey_hex, cosigners):
    privkey = PrivateKey(bytes.fromhex(privkey_hex))
    own = ecc.ECPrivkey(bytes.fromhex(privkey_hex)).get_public_key_bytes()[1:].hex()
    known, answers = set(), []
    query = {"kinds": [KIND], "limit": 100, "#p": [own], "since": int(now() - KEEP_DELAY)}
    async with aionostr.Manager(relays=[relay], private_key=privkey_hex,
                                log=logging.getLogger("aionostr")) as manager:
        await manager.connect()
        async for event in manager.get_events(query, single_event=False, only_stored=True):
            if event.id in known:
                continue
            if event.pubkey not in cosigners:
                continue
            if event.created_at > now() + KEEP_DELAY or event.created_at < now() - KEEP_DELAY:
                continue
            known.add(event.id)
            message = privkey.decrypt_message(event.content, event.pubkey)
            answers.append({"id": event.id, "created_at": event.created_at,
                            "author": event.pubkey, "message": message})
    return answers


def main():
    relay, privkey_hex, cosigners = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    answers = asyncio.run(asyncio.wait_for(
        check_direct_messages(relay, privkey_hex, cosigners), 60))
    print("RESULT", json.dumps({"answers": answers}), flush=True)


if __name__ == "__main__":
    main()
