"""Ctrl+C interrupts a blocked wait quickly, without leaking a permit or disturbing
the others' order."""

from __future__ import annotations

import _thread
import signal
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from quotagate import Limiter

from conftest import requires_client, subprocess_env

BLOCKED_ACQUIRE = """
import sys, quotagate
lim = quotagate.Limiter([(1, 3600)])
lim.acquire()
print("waiting", flush=True)
try:
    lim.acquire()
except KeyboardInterrupt:
    stats = lim.stats()
    print("interrupted", stats["cancellations"], stats["queued"], flush=True)
    sys.exit(42)
sys.exit(1)
"""


BLOCKED_REQUEST = """
import sys, quotagate
from quotagate.testing import Simulator
sim = Simulator()
client = quotagate.Client(sim.tenant_id, sim.client_id, sim.client_secret,
                          base_url=sim.url, authority=sim.authority, rates=[(1, 600)])
client.get("/api/machines", params={"$top": 1})
print("waiting", flush=True)
try:
    client.get("/api/machines", params={"$top": 1})
except KeyboardInterrupt:
    print("interrupted", client.stats()["requests"], len(sim.requests()) > 0, flush=True)
    sys.exit(42)
sys.exit(1)
"""


def interrupt_child(script: str) -> tuple[int, str, str, float]:
    """Runs ``script``, sends SIGINT once it printed "waiting", returns its exit code,
    output and the seconds from the signal to its exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.2)  # surely blocked in the call by now
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=5)
        elapsed = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, out, err, elapsed


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_interrupts_acquire_in_a_child_process_within_a_second() -> None:
    code, out, err, elapsed = interrupt_child(BLOCKED_ACQUIRE)
    assert code == 42, err
    assert out.strip() == "interrupted 1 0"
    assert elapsed < 1.0


@requires_client
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_interrupts_a_client_call_waiting_for_quota_within_a_second() -> None:
    code, out, err, elapsed = interrupt_child(BLOCKED_REQUEST)
    assert code == 42, err
    assert out.strip() == "interrupted 1 True"
    assert elapsed < 1.0


def test_keyboard_interrupt_cancels_the_wait_and_the_next_waiter_is_admitted() -> None:
    admitted: List[float] = []
    with Limiter([(1, 0.4)]) as lim:
        assert lim.try_acquire()
        started = time.monotonic()

        def second_waiter() -> None:
            while lim.stats()["queued"] < 1:  # queue behind the main thread
                time.sleep(0.002)
            lim.acquire()
            admitted.append(time.monotonic())

        t = threading.Thread(target=second_waiter)
        t.start()
        interrupt = threading.Timer(0.1, _thread.interrupt_main)
        interrupt.start()
        with pytest.raises(KeyboardInterrupt):
            lim.acquire()  # first in the queue
        interrupted_after = time.monotonic() - started
        assert 0.09 < interrupted_after < 0.6  # ~50 ms after the signal; slack for load
        t.join(5)
        assert len(admitted) == 1
        assert 0.35 < admitted[0] - started < 1.0  # when the window allowed
        stats = lim.stats()
        assert stats["cancellations"] == 1
        assert stats["admitted_calls"] == 2
        assert stats["queued"] == 0
        # No permit leaked: one call (the second waiter's) is inside the window.
        assert stats["windows"][0]["used"] == 1
        time.sleep(0.45)
        assert lim.try_acquire()
