"""Tests of dynamic_atss.benchmark.timing."""

from __future__ import annotations


def test_timed_instrumentation_restores_the_method():
    from dynamic_atss.benchmark.timing import timed_method as _timed

    class Counter:
        def __call__(self, x):
            return x + 1

    original = Counter.__call__
    with _timed(Counter, "__call__") as clock:
        assert Counter()(1) == 2
    assert Counter.__call__ is original and clock.total_ms > 0
