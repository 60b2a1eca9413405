"""Abuse and cost protection: per-client rate limits and a daily LLM token budget.

Both live in memory, owned by the app's lifespan: a Space is one process, and a
restart forgetting the counts errs on the reader's side, not the bill's (the
budget is small per day and the limiter window is a minute).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import OrderedDict, deque


class RateLimiter:
    """Sliding one-minute window per client key; bounded number of tracked clients."""

    def __init__(self, per_minute: int, *, max_clients: int = 10_000, window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window
        self.max_clients = max_clients
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, key: str, now: float | None = None) -> float | None:
        """Record a request; None if allowed, else the seconds until one is allowed."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            while len(self._hits) > self.max_clients:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return max(0.0, self.window - (now - hits[0]))
        hits.append(now)
        return None

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


class DailyBudget:
    """LLM tokens spent today (UTC); 0 means unlimited."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.day = dt.datetime.now(dt.UTC).date()
        self.spent = 0

    def _roll(self) -> None:
        today = dt.datetime.now(dt.UTC).date()
        if today != self.day:
            self.day, self.spent = today, 0

    def available(self) -> bool:
        self._roll()
        return self.limit <= 0 or self.spent < self.limit

    def spend(self, tokens: int) -> None:
        self._roll()
        self.spent += max(0, tokens)

    def to_json(self) -> dict[str, int | None]:
        self._roll()
        return {"limit": self.limit or None, "spent": self.spent}
