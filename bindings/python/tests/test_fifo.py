"""Waiters on one bucket are admitted in the order they arrived."""

from __future__ import annotations

import threading
import time
from typing import List

from quotagate import Limiter


def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.002)


def _queued_or_admitted(lim: Limiter) -> int:
    stats = lim.stats()
    return int(stats["queued"] + stats["waited_calls"])


def test_sixteen_threads_are_admitted_in_fifo_order() -> None:
    order: List[int] = []
    lock = threading.Lock()
    with Limiter([(1, 0.04)]) as lim:
        assert lim.try_acquire()  # everybody below has to wait

        def waiter(i: int) -> None:
            lim.acquire()
            with lock:
                order.append(i)

        threads = []
        for i in range(16):
            t = threading.Thread(target=waiter, args=(i,))
            t.start()
            threads.append(t)
            # the next thread starts only once this one holds its place in the queue
            # (or was already admitted)
            wait_until(lambda: _queued_or_admitted(lim) == i + 1)
        for t in threads:
            t.join(10)
        assert order == list(range(16))
        stats = lim.stats()
        assert stats["admitted_calls"] == 17
        assert stats["waited_calls"] == 16
        assert stats["queued"] == 0


def test_try_acquire_does_not_barge_past_waiters() -> None:
    with Limiter([(1, 0.2)]) as lim:
        assert lim.try_acquire()
        t = threading.Thread(target=lim.acquire)
        t.start()
        wait_until(lambda: lim.stats()["queued"] == 1)
        time.sleep(0.25)  # the window has room again, but a waiter is first
        t.join(2)
        assert not lim.try_acquire()
