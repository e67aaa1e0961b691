"""The one thread that runs generations: concurrent requests decode together in one batch
(continuous batching, app/lemoe/batching.py), joining and leaving between decode steps.

Callers block in `run` (from a worker thread, never the event loop) until their generation ends.
At most `max_batch` rows decode at once; at most `max_waiting` more wait for a place, and past
that `run` raises QueueFull at once (the API answers 429 with Retry-After).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future

from app.lemoe.batching import DecodeBatch, RowRequest
from app.lemoe.editor import Generation, LemoeEditor

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler's waiting queue is full."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} generations are already waiting for a place in the batch")
        self.waiting = waiting


class Scheduler:
    def __init__(self, editor: LemoeEditor, *, max_batch: int = 16, max_waiting: int = 64) -> None:
        if max_batch < 1 or max_waiting < 0:
            raise ValueError(f"max_batch must be >= 1 and max_waiting >= 0, got {max_batch} and {max_waiting}")
        self.editor = editor
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: deque[tuple[Future[Generation], RowRequest]] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.running = 0  # rows in the batch now (read by metrics; written by the loop only)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def run(self, request: RowRequest) -> Generation:
        """`request`'s generation, decoded beside whatever else runs meanwhile."""
        future: Future[Generation] = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the generation scheduler is stopped")
            if len(self._waiting) >= self.max_waiting + max(0, self.max_batch - self.running):
                raise QueueFull(len(self._waiting))
            self._waiting.append((future, request))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lemoe-generation", daemon=True)
                self._thread.start()
            self._wake.notify()
        return future.result()

    def close(self) -> None:
        """Stop the thread once the batch drains; requests still waiting fail."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        batch = DecodeBatch(self.editor)
        futures: dict[int, Future[Generation]] = {}
        while True:
            with self._wake:
                while not self._waiting and not len(batch) and not self._closed:
                    self._wake.wait()
                if self._closed and not len(batch):
                    for future, _ in self._waiting:
                        future.set_exception(RuntimeError("the generation scheduler stopped"))
                    self._waiting.clear()
                    return
                joining = []
                while self._waiting and len(batch) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            try:
                for future, _ in joining:
                    futures[id(future)] = future
                for key, generation in batch.add([(id(future), request) for future, request in joining]):
                    futures.pop(key).set_result(generation)
                self.running = len(batch)
                for key, generation in batch.step():
                    futures.pop(key).set_result(generation)
                self.running = len(batch)
            except Exception as exc:  # a bad step must not strand the callers, nor stop the thread
                log.exception("generation batch failed; its %d requests get the error", len(futures))
                batch.fail_all()
                for future in futures.values():
                    future.set_exception(exc)
                futures.clear()
                self.running = 0
