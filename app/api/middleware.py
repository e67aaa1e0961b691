"""ASGI middleware of the HTTP layer: body limits and read deadline, unexpected errors. (The access
log and request metrics: app.api.request_metrics.)"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, unexpected_error_response

# Body limit of every route not named in RequestBodyMiddleware's table (ids, small triggers).
DEFAULT_BODY_LIMIT = 64 * 1024
_CLOSE = {"Connection": "close"}  # the rest of the body is never read: the connection cannot be reused


class RequestBodyMiddleware:
    """Read the request body before the route runs: at most a per-route size, within a deadline.

    `limits` maps (method, path) to the bytes that route accepts; every other route gets
    `default_limit`. A declared Content-Length over the limit is refused before anything is read;
    a chunked body is counted as it arrives. Over the limit: 413; not all there within
    `read_timeout_s`: 408. Both in the one error shape, with `Connection: close`. The route then
    reads the body from memory, and later receive() calls (disconnect checks) go to the server.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Mapping[tuple[str, str], int],
        default_limit: int = DEFAULT_BODY_LIMIT,
        read_timeout_s: float,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_limit = default_limit
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        limit = self.limits.get((method, path), self.default_limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(method, path, limit, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.read_timeout_s) as deadline:
            while size <= limit:
                message = await receive()
                if message["type"] != "http.request":  # the client left mid-body: nobody to answer
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if size > limit:
            await self._too_large(method, path, limit, scope, receive, send)
            return
        if deadline.cancelled_caught:
            response = error_response(
                408,
                "request_timeout",
                f"the request body did not arrive within {self.read_timeout_s:g} s (LEMOE_BODY_READ_TIMEOUT_S; {size} bytes came)",
                _CLOSE,
                path=path,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    @staticmethod
    async def _too_large(method: str, path: str, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body is larger than the {limit} bytes {method} {path} accepts",
            _CLOSE,
            path=path,
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives the body read already, then hands over to the server's."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class UnhandledErrorMiddleware:
    """A 500 in the one shape for an exception no handler took, keeping the connection alive.

    Starlette's ServerErrorMiddleware answers too, but then re-raises, and the server closes the
    keep-alive connection. This sits inside it: when nothing was sent yet, it answers and stops
    the exception; once a response has started it re-raises (the connection must close).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            response = unexpected_error_response(scope.get("method", "?"), scope.get("path", "?"), exc)
            await response(scope, receive, send)
