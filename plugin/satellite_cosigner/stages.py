"""A request's stage in words: what the status line and the dialogs say.

The bridge reports a request's ``state`` (``received``, ``awaiting_email``, ``confirmed``,
``queued``, ``sent``, ``signed``, ``refused``, ``expired``, ``cancelled``, ``delivered``);
once delivered, ``final_state`` says how it ended; while it waits for the satellite,
``expected`` says when (the start of the pass that should carry it, and its station).
``describe`` turns a status (and the satellite's next pass, when the bridge gives no
expected time) into one sentence.
"""
import time

# Plain words for the cosigner's refusal codes (cosigner/src/refusal.rs).
REFUSAL_WORDS = {
    "over_tx_limit": "the amount is over the wallet's per-transaction limit",
    "over_period_limit": "the amount is over what the wallet may spend in this period",
    "destination_not_allowed": "a destination is not on the wallet's allowlist",
    "fee_too_high": "the fee is higher than the policy allows",
    "fee_rate_too_high": "the fee rate is higher than the policy allows",
    "outpoint_already_signed": "a coin in it was already spent by another signed transaction",
    "no_other_signature": "it lacks your own signature; sign it in Electrum first",
    "unknown_wallet": "the satellite does not know this wallet",
    "input_not_in_wallet": "it spends a coin that is not this wallet's",
    "change_mismatch": "its change does not go back to this wallet",
    "stale_approval": "the approval is too old",
    "input_spent": "a coin in it was already spent by another transaction",
}

FINAL = {"delivered", "cancelled", "expired", "refused"}

# The order a request's states come in; a status that ranks below one already seen is stale
# (a poll answered before a push that overtook it) and is not shown.
RANK = {"received": 0, "awaiting_email": 1, "confirmed": 2, "queued": 3, "sent": 4,
        "signed": 5, "refused": 5, "expired": 5, "cancelled": 5, "delivered": 6}


def is_stale(previous, status):
    """Whether `status` is older than `previous` (both of one request)."""
    if not previous:
        return False
    return RANK.get(status.get("state"), 0) < RANK.get(previous.get("state"), 0)


def when(ts):
    return time.strftime("%H:%M", time.localtime(ts))


def refusal_text(outcome):
    """The refusal in words, from a status's ``outcome``; None if not refused."""
    refused = (outcome or {}).get("refused")
    if not refused:
        return None
    code = refused.get("code", "")
    return REFUSAL_WORDS.get(code) or refused.get("reason") or code


def chain_key(status):
    """What the bridge last saw of the broadcast transaction, for change detection."""
    chain = chain_of(status)
    return (chain.get("status"), chain.get("confirmations")) if chain else None


def chain_of(status):
    signed = (status.get("outcome") or {}).get("signed") or {}
    return (signed.get("broadcast") or {}).get("chain") or None


def chain_text(status):
    """Where the bridge's broadcast stands, as a sentence to follow another; '' if none."""
    signed = (status.get("outcome") or {}).get("signed") or {}
    broadcast = signed.get("broadcast") or {}
    if broadcast.get("error"):
        return " The bridge could not broadcast it: " + broadcast["error"] + "."
    chain = broadcast.get("chain")
    if not broadcast.get("txid"):
        return ""
    if not chain or chain.get("status") == "broadcast":
        return " The bridge broadcast it."
    if chain["status"] == "mempool":
        return " The bridge broadcast it; it is waiting to be mined."
    if chain["status"] == "confirmed":
        n = chain.get("confirmations", 1)
        return (f" Confirmed in block {chain.get('height')} "
                f"({n} confirmation{'s' if n != 1 else ''}).")
    return " The bridge broadcast it, but its server no longer shows it (replaced or dropped)."


def expected_text(expected):
    """The pass the bridge expects (``status["expected"]``) in words: "during this pass
    over turin", or "with the next satellite pass over turin, at 14:32, in about 41
    minutes"; None when the bridge gives none."""
    if not expected or not expected.get("at"):
        return None
    over = f" over {expected['station']}" if expected.get("station") else ""
    if expected.get("in_view"):
        return f"during this pass{over}"
    minutes = max(1, -(-int(expected.get("in_secs", 0)) // 60))
    if minutes < 2:
        soon = "in about a minute"
    elif minutes < 120:
        soon = f"in about {minutes} minutes"
    else:
        soon = f"in about {-(-minutes // 60)} hours"
    return f"with the next satellite pass{over}, at {when(expected['at'])}, {soon}"


def expected_key(status):
    """The expected time as far as the user sees it, for change detection."""
    e = status.get("expected") or None
    if not e:
        return None
    # While its pass is under way, "at" is now and moves with the clock: no news.
    at = None if e.get("in_view") else e.get("at", 0) // 60
    return (at, e.get("station"), e.get("in_view"))


def effective_state(status):
    """The state that matters to the user: a delivered request's final state."""
    state = status.get("state")
    if state == "delivered" and status.get("final_state"):
        return status["final_state"]
    return state


def describe(status, next_pass=None, current_pass=None):
    """One sentence for the request's stage. `next_pass` is the next pass that has not
    begun; `current_pass` the one in progress, if any (both as satellite.info gives them)."""
    state = effective_state(status)
    kind = status.get("kind", "sign")
    what = "registration" if kind == "register" else "request"
    if state in ("received", "awaiting_email"):
        return (f"Waiting for you: confirm the {what} with the code or the link in the email "
                "the bridge sent.")
    hold = status.get("hold")
    if state == "confirmed" and hold:
        return (f"Held on the satellite: a large spend, held since {when(hold['started_at'])}. "
                f"It is signed at the first pass after {when(hold['releases_at'])}, unless "
                "you cancel it before then.")
    expected = expected_text(status.get("expected"))
    if state in ("confirmed", "queued") and expected:
        if status["expected"].get("in_view"):
            return f"Confirmed. Going up to the satellite now, {expected}."
        return f"Confirmed. Queued {expected}."
    if state == "sent" and expected:
        return f"Sent to the satellite; its answer is expected {expected}."
    if state in ("confirmed", "queued"):
        if current_pass and time.time() <= current_pass.get("end", 0):
            return "Confirmed. Going up to the satellite now, during this pass."
        if next_pass and next_pass.get("start"):
            return (f"Confirmed. Queued for the next satellite pass, at about "
                    f"{when(next_pass['start'])}.")
        return "Confirmed. Queued for the next satellite pass."
    if state == "sent":
        return "Sent to the satellite; waiting for its answer."
    if state == "signed":
        if status.get("state") == "delivered" or kind != "sign":
            return ("Signed by the satellite." + chain_text(status) if kind == "sign"
                    else "Accepted by the satellite.")
        return "Signed by the satellite; the transaction is on its way back to this wallet."
    if state == "refused":
        why = refusal_text(status.get("outcome")) or "no reason given"
        return f"Refused by the satellite's policy: {why}. Nothing was signed."
    if state == "expired":
        return "Expired: it was not confirmed in time. Ask again to get a new email."
    if state == "cancelled":
        return "Cancelled. Nothing was signed."
    return f"State: {state}."
