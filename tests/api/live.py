"""A real uvicorn server on 127.0.0.1 in a thread, for what TestClient cannot show: connections
that stay open or close, clients that hang up, bodies that stall, a busy thread pool."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

DEADLINE_S = 60.0  # generous: these tests must pass on a busy machine


@dataclass
class LiveServer:
    app: FastAPI
    host: str
    port: int
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call_in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's event loop (e.g. to read or set anyio's thread limiter)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(DEADLINE_S)

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=DEADLINE_S)
        return sock


@contextmanager
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """Serve `app` (lifespan included) on a free port until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(sockets=[sock])), name="live-server", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + DEADLINE_S
        while not server.started:
            assert thread.is_alive(), "the server thread died during start-up"
            assert time.monotonic() < give_up, "the server did not start"
            time.sleep(0.05)
        yield LiveServer(app, host, port, server, loop)
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)
        # Tasks the app left on the loop (sse-starlette's shutdown watcher, while a stream was
        # served) end with it rather than being destroyed pending.
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending and not thread.is_alive():
            # In a thread of its own: this thread may be running a loop already (Playwright's sync API).
            finish = threading.Thread(target=loop.run_until_complete, args=(asyncio.gather(*pending, return_exceptions=True),))
            finish.start()
            finish.join(DEADLINE_S)
        loop.close()
        sock.close()


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after the deadline."""
    give_up = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after the deadline)."""
    sock.settimeout(DEADLINE_S)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
