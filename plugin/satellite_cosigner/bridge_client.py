"""The bridge's JSON-RPC client: newline-delimited JSON-RPC 2.0 over TCP or TLS.

This is the protocol Electrum servers speak, so it is the same one the bridge serves on its
Electrum port. One connection carries calls (matched to answers by id) and Electrum-style
notifications (``{"method": ..., "params": [...]}`` without an id), which the bridge sends
for ``request.subscribe``.

With a proxy (Electrum's own, so a Tor user's address never reaches the bridge), the
connection is dialed through it with ``python_socks``, the library Electrum's own network
code uses, and the bridge's name is resolved by the proxy.

``AsyncBridgeClient`` is plain asyncio. ``BridgeClient`` wraps it for threads (Qt's, a
script's): it runs its own event loop in a daemon thread and reconnects on the next call
after the connection drops. Only methods documented in ``schemas/openrpc.json`` are called.
"""
import asyncio
import itertools
import json
import ssl
import threading

from .errors import BridgeUnreachable, from_rpc_error

CLIENT_NAME = "satcosign-electrum-plugin/0.1"
PROTOCOL_VERSION = "1.4"
# Answers can carry a whole PSBT; the bridge caps lines at 1,000,000 bytes.
MAX_LINE = 4 * 1024 * 1024


def parse_address(address):
    """``host:port`` (or ``[v6]:port``) -> (host, port); ValueError names what is wrong."""
    address = (address or "").strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bridge address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def tls_context(ca_file=None):
    """Verifies the bridge's certificate: against ``ca_file`` (a self-signed bridge) if given,
    else against the system's roots."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    return ctx


class AsyncBridgeClient:
    """One connection to the bridge. ``on_notification(method, params)`` is called on the
    event loop for every notification."""

    def __init__(self, address, *, use_tls=False, ca_file=None, timeout=15.0,
                 on_notification=None, proxy=None):
        self.address = address
        self.proxy = proxy
        self.host, self.port = parse_address(address)
        self.use_tls = use_tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.on_notification = on_notification
        self.server_version = None
        self._ids = itertools.count(1)
        self._pending = {}
        self._reader = None
        self._writer = None
        self._task = None

    @property
    def connected(self):
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self):
        ssl_ctx = tls_context(self.ca_file) if self.use_tls else None
        hostname = self.host if ssl_ctx else None
        try:
            if self.proxy:
                sock = await asyncio.wait_for(self._through_proxy(), self.timeout)
                opened = asyncio.open_connection(sock=sock, ssl=ssl_ctx, limit=MAX_LINE,
                                                 server_hostname=hostname)
            else:
                opened = asyncio.open_connection(self.host, self.port, ssl=ssl_ctx,
                                                 limit=MAX_LINE, server_hostname=hostname)
            self._reader, self._writer = await asyncio.wait_for(opened, self.timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise BridgeUnreachable(self.address, _describe(e)) from e
        except Exception as e:  # python_socks' own errors (refused by the proxy...)
            if type(e).__module__.startswith("python_socks"):
                raise BridgeUnreachable(self.address, f"through the proxy: {e}") from e
            raise
        self._task = asyncio.ensure_future(self._read_loop())
        self.server_version = await self.call("server.version", CLIENT_NAME, PROTOCOL_VERSION)

    async def _through_proxy(self):
        from python_socks import ProxyType
        from python_socks.async_.asyncio import Proxy
        kinds = {"socks5": ProxyType.SOCKS5, "socks4": ProxyType.SOCKS4,
                 "http": ProxyType.HTTP}
        p = self.proxy
        proxy = Proxy.create(proxy_type=kinds.get(p["mode"], ProxyType.SOCKS5), host=p["host"],
                             port=p["port"], username=p.get("user") or None,
                             password=p.get("password") or None, rdns=True)
        return await proxy.connect(dest_host=self.host, dest_port=self.port)

    async def close(self):
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
        self._fail_pending(BridgeUnreachable(self.address, "connection closed"))
        self._writer = None

    async def call(self, method, *params):
        if not self.connected:
            raise BridgeUnreachable(self.address, "not connected")
        request_id = next(self._ids)
        fut = asyncio.get_event_loop().create_future()
        self._pending[request_id] = fut
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                           "params": list(params)}) + "\n"
        try:
            self._writer.write(line.encode())
            await self._writer.drain()
            return await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError as e:
            raise BridgeUnreachable(self.address, f"no answer to {method} within "
                                                  f"{self.timeout:.0f} s") from e
        except OSError as e:
            raise BridgeUnreachable(self.address, _describe(e)) from e
        finally:
            self._pending.pop(request_id, None)

    async def _read_loop(self):
        error = BridgeUnreachable(self.address, "the bridge closed the connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self._dispatch(msg)
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            error = BridgeUnreachable(self.address, _describe(e))
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            self._fail_pending(error)

    def _dispatch(self, msg):
        if isinstance(msg, list):  # a batch answer
            for m in msg:
                self._dispatch(m)
            return
        if not isinstance(msg, dict):
            return
        if msg.get("id") is None and "method" in msg:  # a notification
            if self.on_notification:
                self.on_notification(msg["method"], msg.get("params") or [])
            return
        fut = self._pending.get(msg.get("id"))
        if fut is None or fut.done():
            return
        if "error" in msg and msg["error"] is not None:
            err = msg["error"]
            fut.set_exception(from_rpc_error(err.get("code"), err.get("message", ""),
                                             err.get("data")))
        else:
            fut.set_result(msg.get("result"))

    def _fail_pending(self, error):
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()


def _describe(e):
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed: {e.reason or e}"
    return str(e) or type(e).__name__


class BridgeClient:
    """A thread-safe, blocking face of ``AsyncBridgeClient`` with its own event loop.

    ``on_notification(method, params)`` runs on the client's loop thread; keep it short.
    """

    def __init__(self, address, *, use_tls=False, ca_file=None, timeout=15.0,
                 on_notification=None, proxy=None):
        parse_address(address)  # a clear error now, not on first use
        self.address = address
        self._kwargs = dict(use_tls=use_tls, ca_file=ca_file, timeout=timeout,
                            on_notification=self._notify, proxy=proxy)
        self.timeout = timeout
        self.on_notification = on_notification
        self._client = None
        self._connecting = None
        self.generation = 0  # counts connections: subscriptions live as long as one
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="satcosign-bridge", daemon=True)
        self._thread.start()

    def _notify(self, method, params):
        if self.on_notification is not None:
            self.on_notification(method, params)

    def _run(self, coro):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(self.timeout * 2 + 5)

    async def _ensure(self):
        # Calls run on one loop; the lock keeps two of them from opening two connections.
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None or not self._client.connected:
                client = AsyncBridgeClient(self.address, **self._kwargs)
                await client.connect()
                self._client = client
                self.generation += 1
            return self._client

    async def _call(self, method, params):
        client = await self._ensure()
        return await client.call(method, *params)

    @property
    def connected(self):
        return self._client is not None and self._client.connected

    @property
    def server_version(self):
        return self._client.server_version if self._client else None

    def call(self, method, *params):
        """Calls ``method``; raises a ``SatelliteError`` subclass on any failure."""
        return self._run(self._call(method, params))

    def close(self):
        if self._client is not None:
            try:
                self._run(self._client.close())
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # The documented API, one method each (schemas/openrpc.json).
    def satellite_info(self):
        return self.call("satellite.info")

    def new_key(self):
        """``satellite.new_key``: a fresh satellite key for a wallet about to be created."""
        return self.call("satellite.new_key")

    def server_features(self):
        return self.call("server.features")

    def cosigner_put(self, keyhash, message):
        return self.call("cosigner.put", keyhash, message)

    def cosigner_get(self, keyhash):
        return self.call("cosigner.get", keyhash)

    def cosigner_delete(self, keyhash):
        return self.call("cosigner.delete", keyhash)

    def wallet_register(self, descriptor, email, label):
        return self.call("wallet.register", descriptor, email, label)

    def wallet_status(self, wallet_id):
        return self.call("wallet.status", wallet_id)

    def wallet_lockdown(self, wallet_id):
        return self.call("wallet.lockdown", wallet_id)

    def wallet_unlock(self, wallet_id):
        return self.call("wallet.unlock", wallet_id)

    def request_status(self, request_id):
        return self.call("request.status", request_id)

    def request_subscribe(self, request_id):
        return self.call("request.subscribe", request_id)

    def request_confirm(self, request_id, code):
        return self.call("request.confirm", request_id, code)

    def request_cancel(self, request_id):
        return self.call("request.cancel", request_id)

    def request_resend(self, request_id):
        return self.call("request.resend", request_id)
