"""Limiter.hold: a call counts from admission, in flight, until its block exits, and from
then on; guarding plain HTTP calls made by another library, it keeps them clear of 429s
when the server counts each call on arrival, after a delay that varies."""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from typing import List

import pytest

import quotagate
from quotagate import Limiter
from quotagate.testing import Simulator

from conftest import requires_client


def test_a_hold_counts_in_flight_then_from_its_exit() -> None:
    with Limiter([(2, 0.2)]) as lim:
        with lim.hold("k") as h:
            assert h.held
            assert lim.stats("k")["in_flight"] == 1
            assert lim.try_acquire("k")
            assert not lim.try_acquire("k"), "the hold counts in the window"
            time.sleep(0.25)
            assert lim.try_acquire("k"), "the plain call left the window"
            assert not lim.try_acquire("k"), "the hold still counts after a whole window"
        assert not h.held
        stats = lim.stats("k")
        assert stats["in_flight"] == 0
        assert stats["windows"][0]["used"] == 2, "the hold counts from its exit now"
        assert not lim.try_acquire("k")
        time.sleep(0.21)
        assert lim.try_acquire("k")


def test_a_hold_that_cannot_be_admitted_in_time_raises_timeout() -> None:
    with Limiter([(1, 10)]) as lim:
        assert lim.try_acquire("k")
        started = time.monotonic()
        with pytest.raises(quotagate.TimeoutError):
            with lim.hold("k", timeout=0.5):
                pytest.fail("admitted past the quota")
        assert time.monotonic() - started < 0.4, "an unmeetable deadline fails at once"
        assert lim.stats("k")["timeouts"] == 1
        assert lim.stats("k")["in_flight"] == 0


def test_release_is_idempotent_and_a_hold_is_entered_once() -> None:
    with Limiter([(5, 1)]) as lim:
        h = lim.hold("k", cost=2)
        assert not h.held and "waiting to enter" in repr(h)
        with h:
            assert lim.stats("k")["in_flight"] == 2
            h.release()
            h.release()
            assert lim.stats("k")["in_flight"] == 0
        assert "released" in repr(h)
        with pytest.raises(RuntimeError):
            with h:
                pass
        with pytest.raises(TypeError):
            copy.copy(lim.hold("k"))
        with pytest.raises(ValueError):
            with lim.hold("k", cost=0):
                pass


def test_an_exception_in_the_block_releases_the_hold() -> None:
    with Limiter([(3, 1)]) as lim:
        with pytest.raises(ValueError):
            with lim.hold("k"):
                raise ValueError("the call failed")
        assert lim.stats("k")["in_flight"] == 0
        assert lim.stats("k")["windows"][0]["used"] == 1


def test_a_hold_not_released_within_its_lease_counts_from_the_lease_end() -> None:
    with Limiter([(1, 0.2)], hold_lease=0.3) as lim:
        h = lim.hold("k")
        h.__enter__()
        time.sleep(0.35)
        assert lim.stats("k")["expired_holds"] == 1
        assert lim.stats("k")["in_flight"] == 0
        h.release()
    with pytest.raises(quotagate.InvalidArgumentError):
        Limiter([(1, 1)], hold_lease=7200)


@requires_client
def test_holds_guard_urllib_calls_against_a_jittery_server_without_a_429() -> None:
    # The server counts each call when it arrives, 0-60 ms after it was sent.
    with Simulator(limit=10, window=1, inbound_jitter=0.06) as sim:
        token = sim.issue_token()
        lim = Limiter([(10, 1)])
        statuses: List[int] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(10):
                request = urllib.request.Request(
                    sim.url + "/api/machines?$top=1",
                    headers={"Authorization": f"Bearer {token}"},
                )
                with lim.hold("machines", timeout=30):
                    try:
                        with urllib.request.urlopen(request, timeout=10) as answer:
                            json.load(answer)
                            status = answer.status
                    except urllib.error.HTTPError as e:
                        status = e.code
                with lock:
                    statuses.append(status)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        lim.close()
        assert statuses.count(429) == 0, statuses
        assert statuses.count(200) == 80
        assert sim.stats()["throttled"] == 0
        # 80 calls at 10 per second: at least seven windows.
        assert took >= 7.0, took
