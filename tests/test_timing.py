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


def test_timed_instrumentation_of_an_inherited_method_leaves_the_subclass_as_it_was():
    from dynamic_atss.benchmark.timing import timed_method

    class Base:
        def __call__(self, x):
            return x * 2

    class Child(Base):
        pass

    with timed_method(Child, "__call__") as clock:
        assert Child()(3) == 6 and "__call__" in vars(Child)
    assert "__call__" not in vars(Child) and Child.__call__ is Base.__call__ and clock.total_ms > 0
