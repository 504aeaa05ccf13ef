"""Wrong types raise TypeError and impossible values ValueError before anything
reaches the library; a closed handle raises ClosedError and never crashes."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest

import quotagate
from quotagate import Limiter


@pytest.mark.parametrize(
    "rates, error",
    [
        (None, TypeError),
        ("100/60", TypeError),
        ((100, 60), TypeError),  # one pair instead of a list of pairs
        ([], ValueError),
        ([100, 60, 1], TypeError),
        ([(100,)], ValueError),
        ([(100, 60, 1)], ValueError),
        ([(0, 60)], ValueError),
        ([(-1, 60)], ValueError),
        ([(2**32, 60)], ValueError),
        ([(1.5, 60)], TypeError),
        ([(True, 60)], TypeError),
        ([("100", 60)], TypeError),
        ([(100, "60")], TypeError),
        ([(100, None)], TypeError),
        ([(100, 0)], ValueError),
        ([(100, -1)], ValueError),
        ([(100, math.nan)], ValueError),
        ([(100, math.inf)], ValueError),
        ([{100: 60}], TypeError),
    ],
)
def test_bad_rates(rates: Any, error: type) -> None:
    with pytest.raises(error):
        Limiter(rates)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"margin": -1}, ValueError),
        ({"margin": "1"}, TypeError),
        ({"margin": math.nan}, ValueError),
        ({"max_buckets": 0}, ValueError),
        ({"max_buckets": 1.5}, TypeError),
        ({"max_buckets": True}, TypeError),
    ],
)
def test_bad_limiter_options(kwargs: Any, error: type) -> None:
    with pytest.raises(error):
        Limiter([(1, 1)], **kwargs)


BAD_KEYS = [
    (1, TypeError),
    (None, TypeError),
    (b"key", TypeError),
    (["k"], TypeError),
    ("a\0b", ValueError),
    ("\ud800", ValueError),
]
BAD_COSTS = [
    (0, ValueError),
    (-1, ValueError),
    (2**32, ValueError),
    (1.0, TypeError),
    ("1", TypeError),
    (True, TypeError),
    (None, TypeError),
]


@pytest.fixture
def lim() -> Limiter:
    return Limiter([(10, 1)])


@pytest.mark.parametrize("key, error", BAD_KEYS)
@pytest.mark.parametrize("method", ["try_acquire", "wait_time", "acquire", "stats"])
def test_bad_keys(lim: Limiter, method: str, key: Any, error: type) -> None:
    with pytest.raises(error):
        getattr(lim, method)(key)


@pytest.mark.parametrize("key, error", BAD_KEYS)
def test_bad_keys_of_pause_and_set_rates(lim: Limiter, key: Any, error: type) -> None:
    with pytest.raises(error):
        lim.pause(key, 1)
    with pytest.raises(error):
        lim.set_rates(key, [(1, 1)])


@pytest.mark.parametrize("cost, error", BAD_COSTS)
@pytest.mark.parametrize("method", ["try_acquire", "wait_time", "acquire"])
def test_bad_costs(lim: Limiter, method: str, cost: Any, error: type) -> None:
    with pytest.raises(error):
        getattr(lim, method)("", cost)
    assert lim.stats()["admitted_calls"] == 0


@pytest.mark.parametrize(
    "timeout, error",
    [
        (-1, ValueError),
        ("1", TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (True, TypeError),
    ],
)
def test_bad_timeouts(lim: Limiter, timeout: Any, error: type) -> None:
    with pytest.raises(error):
        lim.acquire("", 1, timeout)


@pytest.mark.parametrize(
    "seconds, error", [(-0.5, ValueError), ("1", TypeError), (None, TypeError)]
)
def test_bad_pauses(lim: Limiter, seconds: Any, error: type) -> None:
    with pytest.raises(error):
        lim.pause("", seconds)


@pytest.mark.parametrize(
    "rates, error", [([], ValueError), ((1, 1), TypeError), ([(0, 1)], ValueError)]
)
def test_bad_set_rates(lim: Limiter, rates: Any, error: type) -> None:
    with pytest.raises(error):
        lim.set_rates("k", rates)


CALLS: list[Callable[[Limiter], Any]] = [
    lambda lim: lim.try_acquire(),
    lambda lim: lim.try_acquire("k", 2),
    lambda lim: lim.wait_time(),
    lambda lim: lim.acquire(),
    lambda lim: lim.acquire(timeout=0),
    lambda lim: lim.pause("", 1),
    lambda lim: lim.set_rates("", [(1, 1)]),
    lambda lim: lim.stats(),
    lambda lim: lim.__enter__(),
]


@pytest.mark.parametrize("call", CALLS)
def test_every_method_of_a_closed_limiter_raises_closed_error(
    call: Callable[[Limiter], Any],
) -> None:
    lim = Limiter([(10, 1)])
    lim.close()
    assert lim.closed
    with pytest.raises(quotagate.ClosedError, match="closed"):
        call(lim)


def test_close_is_idempotent_and_the_context_manager_closes() -> None:
    with Limiter([(10, 1)]) as lim:
        assert not lim.closed
    assert lim.closed
    lim.close()
    lim.close()
    with pytest.raises(quotagate.ClosedError):
        lim.try_acquire()


def test_errors_are_one_hierarchy() -> None:
    for cls in (
        quotagate.TimeoutError,
        quotagate.ThrottledError,
        quotagate.HTTPError,
        quotagate.AuthError,
        quotagate.TransportError,
        quotagate.ClosedError,
        quotagate.CancelledError,
        quotagate.InvalidArgumentError,
        quotagate.TooManyBucketsError,
        quotagate.BodyTooLargeError,
        quotagate.NativeIOError,
    ):
        assert issubclass(cls, quotagate.Error)
    assert issubclass(quotagate.TimeoutError, TimeoutError)
    assert issubclass(quotagate.NativeIOError, OSError)
    assert issubclass(quotagate.InvalidArgumentError, ValueError)


def test_errors_pickle_with_their_details() -> None:
    import pickle

    e = quotagate.HTTPError(
        "404 Not Found", result=300, details={"status": "404", "code": "NotFound"}
    )
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is quotagate.HTTPError
    assert (str(again), again.result, again.status, again.code) == (
        "404 Not Found",
        300,
        404,
        "NotFound",
    )
