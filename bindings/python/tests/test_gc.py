"""Handles are released by the garbage collector without crashes, and closing from
one thread while others use the handle is safe."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import quotagate
from quotagate import Limiter


def test_an_unreferenced_limiter_is_collected() -> None:
    lim = Limiter([(10, 1)])
    lim.try_acquire("x")
    ref = weakref.ref(lim)
    del lim
    gc.collect()
    assert ref() is None


def test_a_limiter_in_a_reference_cycle_is_collected() -> None:
    lim = Limiter([(10, 1)])
    lim.cycle = lim  # type: ignore[attr-defined]
    ref = weakref.ref(lim)
    del lim
    gc.collect()
    assert ref() is None


def test_many_limiters_created_and_dropped() -> None:
    for i in range(2000):
        lim = Limiter([(10, 1)])
        lim.try_acquire(str(i))
        if i % 2:
            lim.close()
    gc.collect()


def test_a_failed_constructor_leaves_nothing_to_free() -> None:
    try:
        Limiter([(0, 1)])
    except ValueError:
        pass
    gc.collect()


def test_close_racing_with_calls_from_other_threads() -> None:
    for _ in range(20):
        lim = Limiter([(1_000_000, 1)])
        outcomes: list = []

        def hammer(lim: Limiter) -> None:
            try:
                while True:
                    lim.try_acquire("k")
            except quotagate.ClosedError:
                outcomes.append("closed")

        threads = [threading.Thread(target=hammer, args=(lim,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.01)
        lim.close()
        for t in threads:
            t.join(5)
        assert outcomes == ["closed"] * 4
        del lim
        gc.collect()
