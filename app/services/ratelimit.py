"""Per-key request limits: a token bucket per (key, scope class), in this process.

Each process counts its own requests, so N replicas behind a load balancer let a key through
up to N times its limit (a shared limit would need a shared counter, e.g. in the database).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.domain import Scope


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`per_minute[scope]` requests a minute per key, in bursts of up to that many; a scope
    absent or 0 is not limited."""

    def __init__(self, per_minute: Mapping[Scope, int], clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = {scope: n for scope, n in per_minute.items() if n > 0}
        self.clock = clock
        self._buckets: dict[tuple[str, Scope], _Bucket] = {}
        self._lock = threading.Lock()

    def limit(self, scope: Scope) -> int | None:
        return self.per_minute.get(scope)

    def acquire(self, key: str, scope: Scope) -> int | None:
        """Take one request from `key`'s bucket: None when allowed, else the whole seconds to
        wait until one is free."""
        capacity = self.per_minute.get(scope)
        if capacity is None:
            return None
        rate = capacity / 60.0  # tokens a second
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault((key, scope), _Bucket(tokens=float(capacity), at=now))
            bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / rate))
