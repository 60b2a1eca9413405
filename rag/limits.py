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
    """LLM tokens spent today (UTC); 0 means unlimited.

    A generated answer first *reserves* what it may cost at most (its prompt plus the
    answer cap), so concurrent questions cannot all slip in under the limit before any
    of them is charged; it then settles with what it really cost, also when the reader
    left early or the upstream never reported usage.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.day = dt.datetime.now(dt.UTC).date()
        self.spent = 0
        self.reserved = 0

    def _roll(self) -> None:
        today = dt.datetime.now(dt.UTC).date()
        if today != self.day:
            self.day, self.spent = today, 0

    def reserve(self, tokens: int) -> Reservation | None:
        """Hold `tokens` for one answer; None when that would pass today's limit."""
        self._roll()
        tokens = max(0, tokens)
        if self.limit > 0 and self.spent + self.reserved + tokens > self.limit:
            return None
        self.reserved += tokens
        return Reservation(self, tokens)

    def spend(self, tokens: int) -> None:
        self._roll()
        self.spent += max(0, tokens)

    def to_json(self) -> dict[str, int | None]:
        self._roll()
        return {"limit": self.limit or None, "spent": self.spent, "reserved": self.reserved}


class Reservation:
    """Tokens held for one answer until `settle` charges what it really cost (once)."""

    def __init__(self, budget: DailyBudget, tokens: int) -> None:
        self.budget = budget
        self.tokens = tokens
        self.settled = False

    def settle(self, tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        self.budget.reserved -= self.tokens
        self.budget.spend(tokens)
