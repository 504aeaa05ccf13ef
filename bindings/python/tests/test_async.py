"""AsyncClient and Limiter.acquire_async: awaited calls that never block the event loop,
share the quota as threads do, and give up their place at once when cancelled."""

from __future__ import annotations

import asyncio
import time
from typing import Any, List

import pytest

import quotagate
from quotagate import AsyncClient, Limiter
from quotagate.testing import Simulator

from conftest import requires_client

pytestmark = requires_client


def make_async_client(sim: Simulator, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("timeout", 5)
    return AsyncClient(
        sim.tenant_id,
        sim.client_id,
        sim.client_secret,
        base_url=sim.url,
        authority=sim.authority,
        **kwargs,
    )


async def _queued(limiter: Limiter, key: str, count: int, within: float) -> float:
    """Seconds until ``key`` has ``count`` callers queued (fails after ``within``)."""
    started = time.monotonic()
    while limiter.stats(key)["queued"] != count:
        assert time.monotonic() - started < within, limiter.stats(key)
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def test_fifty_tasks_share_the_quota_without_a_429() -> None:
    # The server allows 20 calls per 0.6 s; the client is configured the same, with a
    # margin for the time between admission here and the count there.
    with Simulator(limit=20, window=60, time_scale=0.01) as sim:
        limiter = Limiter([(20, 0.6)], margin=0.1)

        async def main() -> List[int]:
            async with make_async_client(sim, rates=[(20, 0.6)], limiter=limiter) as api:
                queue: "asyncio.Queue[int]" = asyncio.Queue()
                for i in range(200):
                    queue.put_nowait(i)
                statuses: List[int] = []

                async def worker() -> None:
                    while not queue.empty():
                        queue.get_nowait()
                        statuses.append((await api.get("/api/machines", {"$top": 1})).status_code)

                ticks = 0

                async def ticker() -> None:  # the loop stays free while calls wait
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                tick = asyncio.create_task(ticker())
                started = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(50)))
                elapsed = time.monotonic() - started
                tick.cancel()
                assert ticks > elapsed / 0.01 / 4, (ticks, elapsed)
                assert api.stats()["throttled"] == 0
                return statuses

        statuses = asyncio.run(main())
        assert statuses == [200] * 200
        assert sim.stats()["throttled"] == 0


def test_a_cancelled_task_gives_up_its_place_and_run_returns_promptly(sim: Simulator) -> None:
    limiter = Limiter([(1, 60)])
    cancelled_at = 0.0

    async def main() -> None:
        nonlocal cancelled_at
        api = make_async_client(sim, rates=[(1, 60)], limiter=limiter)
        await api.get("/api/machines")
        (key,) = api.stats()["buckets"]
        waiting = asyncio.create_task(api.get("/api/machines"))
        await _queued(limiter, key, 1, within=5)
        cancelled_at = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await _queued(limiter, key, 0, within=0.1) < 0.1
        # A task left waiting when the loop ends is cancelled by asyncio.run: no hang.
        asyncio.get_running_loop().create_task(api.get("/api/machines"))
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert time.monotonic() - cancelled_at < 1.0


def test_cancelling_during_an_exchange_does_not_hold_up_the_loop() -> None:
    with Simulator(latency=3) as sim:
        api = make_async_client(sim)

        async def main() -> float:
            task = asyncio.create_task(api.get("/api/machines"))
            await asyncio.sleep(0.3)  # the token request is on the wire
            task.cancel()
            return time.monotonic()

        cancelled_at = asyncio.run(main())
        assert time.monotonic() - cancelled_at < 1.0
        api.close()


def test_a_deadline_raises_timeout_error_within_the_deadline(sim: Simulator) -> None:
    async def main() -> None:
        async with make_async_client(sim, rates=[(1, 10)]) as api:
            await api.get("/api/machines")
            started = time.monotonic()
            with pytest.raises(quotagate.TimeoutError):
                await api.get("/api/machines", deadline=1)
            assert time.monotonic() - started < 1.2

    asyncio.run(main())


def test_every_verb_and_paging(sim: Simulator) -> None:
    async def main() -> None:
        async with make_async_client(sim) as api:
            items = [m async for m in api.paginate("/api/machines", {"$top": 100})]
            assert len(items) == 250
            machine = items[0]["id"]
            r = await api.post(f"/api/machines/{machine}/tags", json={"Value": "a", "Action": "Add"})
            assert r.status_code == 200
            for verb in (api.put, api.patch, api.delete):
                await verb(f"/api/machines/{machine}/nothing")
            r = await api.request("GET", f"/api/machines/{machine}")
            assert r.json()["id"] == machine
            assert "AsyncClient" in repr(api)
        assert api.closed
        with pytest.raises(quotagate.ClosedError):
            await api.get("/api/machines")

    asyncio.run(main())
    methods = {r["method"] for r in sim.requests()}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods


def test_acquire_async_waits_without_blocking_and_cancels_at_once() -> None:
    limiter = Limiter([(1, 0.3)])

    async def main() -> None:
        await limiter.acquire_async()
        started = time.monotonic()
        await limiter.acquire_async("", 1, timeout=5)
        assert 0.2 < time.monotonic() - started < 2
        with pytest.raises(quotagate.TimeoutError):
            await limiter.acquire_async(timeout=0.01)
        slow = Limiter([(1, 60)])
        await slow.acquire_async("k")
        waiting = asyncio.create_task(slow.acquire_async("k"))
        await _queued(slow, "k", 1, within=5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await _queued(slow, "k", 0, within=0.1) < 0.1
        assert slow.stats("k")["cancellations"] == 1

    asyncio.run(main())
