"""The HTTP boundary's first check: an ASGI middleware in front of the whole app.

For every request, before a byte of its body is read:

1. **Host** (only when no token is set and the service listens on loopback): the
   ``Host`` header must name this machine (``localhost``, ``127.0.0.1``, ``[::1]``), so a
   web page elsewhere cannot reach a token-less local instance by DNS rebinding (421).
2. **Token**: every path but health, metrics, the page and its static files needs
   ``Authorization: Bearer <DFM_API_TOKEN>``; compared as bytes in constant time, so a
   header that is not ASCII is a plain 401, never a 500.
3. **Size**: the body's cap by route (``body_cap``): a declared ``Content-Length`` over
   it is a 413 at once; a chunked body is counted as it arrives and cut at the cap.
4. **Read timeout**: a body that stalls for ``read_timeout_s`` ends with a 408.

Each refusal is ``{"error": ...}`` with its status, and counted in
``deepfake_http_rejected_total{reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/favicon.ico"})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
JSON_MAX_BYTES = 64 << 10
LINGER_BYTES = 8 << 20  # a refused body up to this size is read and dropped, not reset
LINGER_S = 2.0


def is_open(method: str, path: str) -> bool:
    """Paths anyone may call: probes, metrics, the page, and WHIP's OPTIONS."""
    return (
        path in OPEN_PATHS
        or path.startswith("/static/")
        or (method == "OPTIONS" and path.startswith("/v1/whip/"))
    )


class _Refused(Exception):
    def __init__(self, status: int, reason: str, label: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.label = status, reason, label


class HttpGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        check_host: bool,
        body_cap: Callable[[str, str], tuple[int, str]],
        read_timeout_s: float,
        on_reject: Callable[[str], None] = lambda label: None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.check_host = check_host
        self.body_cap = body_cap
        self.read_timeout_s = read_timeout_s
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        cap, setting = self.body_cap(method, path)
        try:
            self._check_head(method, path, headers, cap, setting)
        except _Refused as refused:
            await self._drain_small(receive, headers)
            await self._refuse(send, refused)
            return
        responded = False
        received = 0
        # After the last body piece (or with no body at all), receive() only waits for a
        # disconnect: no read timeout then.
        body_done = b"content-length" not in headers and b"transfer-encoding" not in headers
        late: list[_Refused] = []  # the refusal sent mid-body, if any

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if late:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    message = await receive()
            except TimeoutError:
                refused = _Refused(
                    408,
                    f"the request body stalled for {self.read_timeout_s:g} s "
                    "(DFM_HTTP_READ_TIMEOUT_S); send it without pauses",
                    "read_timeout",
                )
                return await refuse_midway(refused)
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > cap:
                    return await refuse_midway(_too_large(cap, setting))
            return message

        async def refuse_midway(refused: _Refused) -> Message:
            nonlocal responded
            late.append(refused)
            if not responded:
                responded = True
                await self._refuse(send, refused)
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if late:
                return  # our refusal was the answer; the app's late reply is dropped
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not late:
                raise
            # The app saw a disconnect after our refusal and gave up: nothing more to say.

    def _check_head(
        self, method: str, path: str, headers: dict[bytes, bytes], cap: int, setting: str
    ) -> None:
        if self.check_host:
            host = headers.get(b"host", b"").decode("latin-1").strip().lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOCAL_HOSTS:
                raise _Refused(
                    421,
                    f"Host {host[:100]!r} is not this service: without DFM_API_TOKEN it answers "
                    "only to localhost, 127.0.0.1 and [::1]",
                    "host",
                )
        if self.token is not None and not is_open(method, path):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                raise _Refused(401, "missing or wrong bearer token", "auth")
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _Refused(400, "Content-Length is not a number", "bad_length")
            if int(declared) > cap:
                raise _too_large(cap, setting)

    async def _drain_small(self, receive: Receive, headers: dict[bytes, bytes]) -> None:
        """Read and drop a small refused body first, so its client reads our answer.

        A server that answers and closes while the client is still sending makes the
        kernel reset the connection, and the client sees that instead of the 401/413.
        Bodies over ``LINGER_BYTES`` (or of unknown size) are not read: cut at once.
        """
        declared = headers.get(b"content-length", b"").strip()
        if not declared.isdigit() or not 0 < int(declared) <= LINGER_BYTES:
            return
        left = int(declared)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while left > 0:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    left -= len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return

    async def _refuse(self, send: Send, refused: _Refused) -> None:
        self.on_reject(refused.label)
        body = json.dumps({"error": refused.reason}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if refused.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="deepfake-monitor"'))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _too_large(cap: int, setting: str) -> _Refused:
    shown = f"{cap / (1 << 20):g} MiB" if cap >= 1 << 20 else f"{cap} bytes"
    return _Refused(
        413,
        f"the request body is larger than {shown}, this service's limit ({setting})",
        "too_large",
    )
