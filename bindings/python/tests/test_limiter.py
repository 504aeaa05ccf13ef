"""Every method of Limiter, on real (short) windows."""

from __future__ import annotations

import threading
import time

import pytest

import quotagate
from quotagate import Limiter


def test_try_acquire_admits_up_to_the_rate_then_refuses() -> None:
    with Limiter([(3, 0.3)]) as lim:
        assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
        stats = lim.stats()
        assert stats["admitted_calls"] == 3
        assert stats["refusals"] == 1
        assert stats["windows"] == [{"used": 3, "calls": 3, "window": 0.3}]


def test_the_window_rolls_exactly() -> None:
    with Limiter([(2, 1.0)]) as lim:
        started = time.monotonic()
        assert lim.try_acquire()
        time.sleep(0.5)
        assert lim.try_acquire()
        assert not lim.try_acquire()
        time.sleep(started + 1.05 - time.monotonic())
        assert lim.try_acquire()  # the first call left the window...
        assert not lim.try_acquire()  # ...the second (until 1.5 s) did not


def test_several_rates_apply_at_once() -> None:
    with Limiter([(5, 0.1), (6, 10)]) as lim:
        assert sum(lim.try_acquire() for _ in range(10)) == 5
        time.sleep(0.12)
        assert sum(lim.try_acquire() for _ in range(10)) == 1


def test_keys_have_separate_buckets() -> None:
    with Limiter([(1, 10)]) as lim:
        assert lim.try_acquire("a")
        assert not lim.try_acquire("a")
        assert lim.try_acquire("b")
        assert lim.try_acquire()  # the default bucket
        assert lim.stats("a")["admitted_calls"] == 1
        assert lim.stats("never-used")["admitted_calls"] == 0


def test_cost_counts_units() -> None:
    with Limiter([(5, 10)]) as lim:
        assert lim.try_acquire(cost=3)
        assert not lim.try_acquire(cost=3)
        assert lim.try_acquire(cost=2)
        assert lim.stats()["admitted_units"] == 5
        assert lim.stats()["admitted_calls"] == 2


def test_cost_above_the_smallest_rate_is_refused_by_the_library() -> None:
    with Limiter([(5, 10)]) as lim:
        with pytest.raises(quotagate.InvalidArgumentError) as info:
            lim.acquire(cost=6)
        assert isinstance(info.value, ValueError)
        assert "cost" in str(info.value)


def test_wait_time_tells_the_wait_and_takes_nothing() -> None:
    with Limiter([(1, 0.5)]) as lim:
        assert lim.wait_time() == 0.0
        assert lim.stats()["admitted_calls"] == 0
        assert lim.try_acquire()
        wait = lim.wait_time()
        assert 0.4 < wait <= 0.5
        assert lim.stats()["admitted_calls"] == 1


def test_acquire_waits_for_the_window() -> None:
    with Limiter([(1, 0.2)]) as lim:
        lim.acquire()
        started = time.monotonic()
        lim.acquire("", 1)
        waited = time.monotonic() - started
        assert 0.15 < waited < 1.0
        stats = lim.stats()
        assert stats["waited_calls"] == 1
        assert 0.15 < stats["longest_wait"] < 1.0
        assert stats["total_wait"] == pytest.approx(stats["longest_wait"])


def test_acquire_times_out_at_once_when_the_deadline_cannot_be_met() -> None:
    with Limiter([(1, 10)]) as lim:
        lim.acquire()
        started = time.monotonic()
        with pytest.raises(quotagate.TimeoutError) as info:
            lim.acquire(timeout=1.0)
        assert time.monotonic() - started < 0.5  # at once, not at the deadline
        assert isinstance(info.value, TimeoutError)  # the builtin too
        assert info.value.result == 200
        # The message says when the quota frees a slot (about 10 s), not "the deadline
        # passed" after no time at all.
        message = str(info.value)
        assert "frees a slot in" in message, message
        seconds = float(message.split("frees a slot in ")[1].split(" s")[0])
        assert 9.0 < seconds <= 10.0, message
        assert lim.stats()["timeouts"] == 1


def test_acquire_within_the_timeout_succeeds() -> None:
    with Limiter([(1, 0.1)]) as lim:
        lim.acquire()
        lim.acquire(timeout=1.0)


def test_pause_holds_every_caller() -> None:
    with Limiter([(100, 1)]) as lim:
        paused = time.monotonic()
        lim.pause("k", 0.5)
        assert not lim.try_acquire("k")
        assert lim.try_acquire("other")
        stats = lim.stats("k")
        assert stats["pauses"] == 1
        assert 0 < stats["paused_for"] <= 0.5
        lim.acquire("k")
        assert time.monotonic() - paused >= 0.49


def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    with Limiter([(100, 1)]) as lim:
        lim.pause("", 0.5)
        lim.pause("", 0.01)
        assert lim.stats()["paused_for"] > 0.4


def test_set_rates_gives_a_bucket_its_own_rates() -> None:
    with Limiter([(100, 1)]) as lim:
        lim.set_rates("strict", [(1, 10), (2, 60)])
        assert lim.try_acquire("strict")
        assert not lim.try_acquire("strict")
        assert lim.stats("strict")["windows"] == [
            {"used": 1, "calls": 1, "window": 10.0},
            {"used": 1, "calls": 2, "window": 60.0},
        ]
        assert lim.try_acquire("other")


def test_margin_widens_every_window() -> None:
    with Limiter([(1, 0.1)], margin=0.05) as lim:
        assert lim.stats()["windows"][0]["window"] == pytest.approx(0.15)


def test_max_buckets_refuses_new_keys_when_none_is_idle() -> None:
    with Limiter([(10, 60)], max_buckets=1) as lim:
        assert lim.try_acquire("a")
        with pytest.raises(quotagate.TooManyBucketsError):
            lim.try_acquire("b")


def test_stats_has_every_field() -> None:
    with Limiter([(1, 1)]) as lim:
        assert set(lim.stats()) == {
            "admitted_calls",
            "admitted_units",
            "waited_calls",
            "total_wait",
            "longest_wait",
            "timeouts",
            "cancellations",
            "refusals",
            "pauses",
            "paused_for",
            "queued",
            "in_flight",
            "expired_holds",
            "windows",
        }


def test_close_wakes_waiters_with_closed_error() -> None:
    lim = Limiter([(1, 60)])
    lim.acquire()
    errors: list = []

    def wait() -> None:
        try:
            lim.acquire()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    while lim.stats()["queued"] == 0:
        time.sleep(0.005)
    lim.close()
    t.join(2)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], quotagate.ClosedError)


def test_many_threads_never_exceed_the_rate() -> None:
    calls, window = 5, 0.2
    peak: list = []
    with Limiter([(calls, window)]) as lim:

        def work() -> None:
            for _ in range(3):
                lim.acquire()
                peak.append(lim.stats()["windows"][0]["used"])

        started = time.monotonic()
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert lim.stats()["admitted_calls"] == 24
    # 24 calls at 5 per window: the last five batches each waited for a new window.
    assert elapsed >= 4 * window - 0.01
    assert max(peak) <= calls


def test_repr_shows_rates_and_state() -> None:
    lim = Limiter([(100, 60)])
    assert repr(lim) == "<quotagate.Limiter rates=[(100, 60.0)] open>"
    lim.close()
    assert "closed" in repr(lim)
