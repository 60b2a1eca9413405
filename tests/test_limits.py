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


def test_budget_reserves_the_most_an_answer_can_cost_then_settles() -> None:
    budget = DailyBudget(100)
    first = budget.reserve(60)
    assert first is not None
    assert budget.reserve(60) is None  # in flight: a second one would pass the limit
    first.settle(30)  # it cost less than it could have
    first.settle(30)  # settling twice charges once
    assert budget.to_json() == {"limit": 100, "spent": 30, "reserved": 0}
    second = budget.reserve(60)
    assert second is not None
    second.settle(60)
    assert budget.reserve(11) is None  # 90 spent: 11 more would pass the limit
    assert budget.reserve(10) is not None
    unlimited = DailyBudget(0)
    held = unlimited.reserve(10**9)
    assert held is not None
    held.settle(5)
    assert unlimited.to_json() == {"limit": None, "spent": 5, "reserved": 0}
