"""A call's ``deadline=``: one bound on the quota wait, the token fetch, every attempt
and the backoff between them (``timeout`` bounds one attempt)."""

from __future__ import annotations

import time

import pytest

import quotagate
from quotagate.testing import Simulator

from conftest import make_client, requires_client

pytestmark = requires_client


def test_a_deadline_shorter_than_the_quota_wait_raises_timeout_error(sim: Simulator) -> None:
    with make_client(sim, rates=[(1, 10)]) as api:
        api.get("/api/machines")
        started = time.monotonic()
        with pytest.raises(quotagate.TimeoutError, match="deadline of 1.000 s") as info:
            api.get("/api/machines", deadline=1)
        assert time.monotonic() - started < 1.2
        # ... and says when the quota frees a slot: about 10 s after the first call.
        seconds = float(str(info.value).split("frees a slot in ")[1].split(" s")[0])
        assert 8.5 < seconds <= 10.0, str(info.value)
        # Without a deadline the quota-wait budget decides, and says so.
    with make_client(sim, rates=[(1, 10)], max_quota_wait=0.2) as api:
        api.get("/api/machines", deadline=5)
        with pytest.raises(quotagate.ThrottledError):
            api.get("/api/machines")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_deadline_bounds_a_slow_token_endpoint(method: str) -> None:
    # Every answer, the token's included, takes 5 s; each attempt may take 10 s.
    with Simulator(latency=5) as sim, make_client(sim) as api:
        started = time.monotonic()
        with pytest.raises(quotagate.TimeoutError, match="deadline"):
            api.request(method, "/api/machines", json={} if method == "POST" else None, deadline=1)
        took = time.monotonic() - started
        assert 0.9 < took < 1.2 + 0.3, took


def test_one_deadline_bounds_every_page(sim: Simulator) -> None:
    with make_client(sim, rates=[(2, 60)]) as api:
        started = time.monotonic()
        items = api.paginate("/api/machines", {"$top": 10}, deadline=1)
        got = 0
        with pytest.raises(quotagate.TimeoutError):
            for _ in items:
                got += 1
        assert got == 20
        assert time.monotonic() - started < 1.2


def test_a_deadline_is_a_number_of_seconds(sim: Simulator) -> None:
    with make_client(sim) as api:
        with pytest.raises(ValueError, match="deadline"):
            api.get("/api/machines", deadline=-1)
        with pytest.raises(TypeError, match="deadline"):
            api.get("/api/machines", deadline="1")  # type: ignore[arg-type]
        assert api.get("/api/machines", params={"$top": 1}, deadline=30).status_code == 200


def test_put_sends_a_put(sim: Simulator) -> None:
    with make_client(sim) as api:
        api.put("/api/machines/x", json={"a": 1}, deadline=30)
    assert any(r["method"] == "PUT" for r in sim.requests())
