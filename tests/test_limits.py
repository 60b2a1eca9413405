"""Rate limiter and daily token budget."""

from __future__ import annotations

from rag.limits import DailyBudget, RateLimiter


def test_rate_limiter_window_and_retry_after() -> None:
    limiter = RateLimiter(3, window=60)
    assert [limiter.check("a", now=t) for t in (0, 1, 2)] == [None, None, None]
    wait = limiter.check("a", now=10)
    assert wait == 50
    assert limiter.check("b", now=10) is None  # other clients are not affected
    assert limiter.check("a", now=60.5) is None  # the first hit left the window
    assert RateLimiter.retry_after_header(0.2) == "1"


def test_rate_limiter_bounds_memory() -> None:
    limiter = RateLimiter(1, max_clients=100)
    for i in range(1000):
        limiter.check(f"client{i}", now=0)
    assert len(limiter._hits) == 100


def test_budget() -> None:
    budget = DailyBudget(100)
    assert budget.available()
    budget.spend(60)
    assert budget.available()
    budget.spend(60)
    assert not budget.available()
    assert DailyBudget(0).available()
