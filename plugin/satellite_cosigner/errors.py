"""What can go wrong, in words a wallet user understands.

Every failure the plugin shows is one of these classes, so the GUI (and a script) can tell
"the bridge is down" from "the satellite said no" without parsing text. The JSON-RPC error
codes are the bridge's, from ``schemas/openrpc.json`` and ``bridge/src/rpc_error.rs``.
"""

# The bridge's JSON-RPC error codes (bridge/src/rpc_error.rs).
INVALID_PARAMS = -32602
NO_SATELLITE = -32020
NOT_FOUND = -32021
WRONG_STATE = -32022
REFUSED = -32023
BAD_CODE = -32024
RATE_LIMITED = -32025
UPSTREAM_FAILED = -32026


class SatelliteError(Exception):
    """Base class: ``str(e)`` is the plain-language message shown to the user."""

    title = "Satellite cosigner"


class BridgeUnreachable(SatelliteError):
    """The bridge did not answer (stopped, wrong address, network down)."""

    title = "Bridge unreachable"

    def __init__(self, address, detail):
        self.address = address
        self.detail = detail
        super().__init__(
            f"Cannot reach the satcosign bridge at {address} ({detail}). "
            "Check the address in the plugin's settings and your connection; nothing was sent.")


class WalletNotRegistered(SatelliteError):
    """The bridge does not know this wallet (or not yet: registration is unconfirmed)."""

    title = "Wallet not registered"

    def __init__(self, detail=None):
        self.detail = detail
        msg = ("This wallet is not registered with the satellite yet. Use \"Register with "
               "satellite\" and confirm the email first.")
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class RefusedByPolicy(SatelliteError):
    """The satellite's policy (checked by the bridge first, then the satellite) said no."""

    title = "Refused by policy"

    def __init__(self, reason_code, reason):
        self.reason_code = reason_code
        self.reason = reason
        super().__init__(f"The satellite refused to co-sign: {reason}. Nothing was signed.")


class RequestExpired(SatelliteError):
    """The confirmation window passed, or the request was voided after wrong codes."""

    title = "Request expired"

    def __init__(self, detail):
        self.detail = detail
        super().__init__(f"This request can no longer be confirmed: {detail}. "
                         "Ask the satellite again to get a new email.")


class LinkDown(SatelliteError):
    """The bridge has no radio link to the satellite."""

    title = "Satellite link down"

    def __init__(self, detail):
        self.detail = detail
        super().__init__(f"The bridge has no link to the satellite ({detail}). "
                         "Try again later; your own keys still spend without it.")


class WrongCode(SatelliteError):
    """The emailed code was mistyped."""

    title = "Wrong code"

    def __init__(self, attempts_left):
        self.attempts_left = attempts_left
        left = "" if attempts_left is None else f" {attempts_left} attempts left."
        super().__init__("That code does not match the email for this request." + left)


class BridgeError(SatelliteError):
    """Any other error the bridge reported, with its code and message."""

    def __init__(self, code, message, data=None):
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"The bridge answered: {message} (error {code}).")


def from_rpc_error(code, message, data=None):
    """Maps a JSON-RPC error object from the bridge to the error the user should see."""
    data = data if isinstance(data, dict) else {}
    if code == NO_SATELLITE:
        return LinkDown(message)
    if code == NOT_FOUND and "request_id" not in data:
        return WalletNotRegistered(message)
    if (code == WRONG_STATE and "wallet_id" in data and data.get("state") == "pending"
            and "already" not in message):
        return WalletNotRegistered("its registration is not confirmed yet")
    if code == REFUSED:
        from .stages import REFUSAL_WORDS
        reason = data.get("reason", "refused")
        return RefusedByPolicy(reason, REFUSAL_WORDS.get(reason) or _reason_text(message))
    if code == BAD_CODE:
        reason = data.get("reason")
        if reason == "wrong_code":
            return WrongCode(data.get("attempts_left"))
        if reason in ("expired", "voided"):
            return RequestExpired("the code expired" if reason == "expired"
                                  else "too many wrong codes were entered")
        if reason == "content_changed":
            return RequestExpired("the transaction changed after the email was sent")
    return BridgeError(code, message, data)


def _reason_text(message):
    # The bridge's message reads "refused (code): reason"; keep the reason.
    if message.startswith("refused (") and "): " in message:
        return message.split("): ", 1)[1]
    return message
