"""Time spent inside one method during a benchmark, measured without replacing any part of the model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Clock", "timed_method"]


class Clock:
    """Accumulated milliseconds (`total_ms`)."""

    def __init__(self) -> None:
        self.total_ms = 0.0


@contextmanager
def timed_method(owner: type, name: str, sync: Callable[[], None] | None = None) -> Iterator[Clock]:
    """While inside, every call of the method `owner.name` (a class attribute, e.g. `CombinedIoUAssigner.__call__`)
    adds its wall time to the yielded `Clock`; `sync` (e.g. `torch.cuda.synchronize`) runs before and after each
    call so that asynchronous devices are timed too. The class is restored on exit (an inherited method is inherited again): the model itself
    runs as built, none of its attributes is replaced."""
    inner = getattr(owner, name)
    own = name in vars(owner)  # defined on `owner` itself, or inherited (then restoring = deleting the wrapper)
    clock = Clock()

    def wrapper(*args, **kwargs):
        if sync is not None:
            sync()
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        if sync is not None:
            sync()
        clock.total_ms += (time.perf_counter() - start) * 1000
        return result

    setattr(owner, name, wrapper)
    try:
        yield clock
    finally:
        if own:
            setattr(owner, name, inner)
        else:
            delattr(owner, name)
