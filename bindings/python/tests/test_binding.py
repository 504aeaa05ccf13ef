"""Bindings: Limiter.bind, and the bindings Limiter.try_acquire keeps for repeated pairs."""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

import quotagate
from quotagate import Limiter


def test_a_repeated_pair_is_bound_and_counts_like_the_call_by_key() -> None:
    with Limiter([(3, 60)]) as bound, Limiter([(3, 60)]) as by_key:
        got = [bound.try_acquire("k", 1) for _ in range(5)]
        assert "k" in bound._bound_one, "bound on its second call"
        # The same answers as calls that are never bound (a new key each round).
        expected = []
        for _ in range(5):
            expected.append(by_key.try_acquire("k", 1))
            by_key._drop_bindings()
        assert got == expected == [True, True, True, False, False]
        assert bound.stats("k") == by_key.stats("k")
        assert bound.stats("k")["refusals"] == 2


@pytest.mark.parametrize("cost, error", [(True, TypeError), (1.0, TypeError), (0, ValueError)])
def test_a_bound_pair_still_refuses_what_is_not_a_cost(cost: object, error: type) -> None:
    with Limiter([(10, 60)]) as lim:
        assert lim.try_acquire("k", 1) and lim.try_acquire("k", 1)
        assert "k" in lim._bound_one
        with pytest.raises(error):
            lim.try_acquire("k", cost)  # type: ignore[arg-type]
        assert lim.stats("k")["admitted_calls"] == 2


def test_other_costs_are_bound_by_pair_and_share_the_bound() -> None:
    with Limiter([(10, 60)]) as lim:
        assert lim.try_acquire("k", 2) and lim.try_acquire("k", 2)
        assert ("k", 2) in lim._bound_pairs and not lim._bound_one
        # A key that equals a pair is no str: refused as before, nothing taken.
        with pytest.raises(TypeError, match="key must be a str"):
            lim.try_acquire(("k", 2))  # type: ignore[arg-type]
        assert lim.stats("k")["admitted_units"] == 4
        for i in range(300):
            assert lim.try_acquire(f"one{i}") and lim.try_acquire(f"one{i}")
        assert len(lim._bound_one) + len(lim._bound_pairs) == 256
        assert lim.try_acquire("k", 2) and lim.stats("k")["admitted_units"] == 6


def test_a_cost_above_the_rate_fails_as_before_on_every_call() -> None:
    with Limiter([(2, 60)]) as lim:
        for _ in range(3):
            with pytest.raises(quotagate.InvalidArgumentError, match="smallest rate"):
                lim.try_acquire("k", 3)
        assert ("k", 3) not in lim._bound_pairs


def test_the_bindings_are_bounded_and_every_call_counted() -> None:
    with Limiter([(10, 60)]) as lim:
        for i in range(300):
            assert lim.try_acquire(f"k{i}") and lim.try_acquire(f"k{i}")
        assert len(lim._bound_one) == 256
        assert "k299" in lim._bound_one and "k0" not in lim._bound_one, "oldest first"
        assert lim.try_acquire("k0")
        assert lim.stats("k0")["admitted_calls"] == 3


def test_bindings_never_keep_a_full_limiter_from_making_room() -> None:
    with Limiter([(1, 0.05)], max_buckets=2) as lim:
        for key in ("a", "b"):
            assert lim.try_acquire(key) and not lim.try_acquire(key)
        assert len(lim._bound_one) == 2
        time.sleep(0.07)
        # "a" and "b" are idle: one of them makes room, as it would without bindings.
        assert lim.try_acquire("c")
        assert lim.try_acquire("a") or lim.try_acquire("b")


def test_close_drops_the_bindings_and_raises_as_before() -> None:
    lim = Limiter([(10, 60)])
    assert lim.try_acquire("k") and lim.try_acquire("k")
    lim.close()
    assert lim._bound_one == {}
    with pytest.raises(quotagate.ClosedError, match="the limiter is closed"):
        lim.try_acquire("k")


def test_threads_share_bindings_while_others_evict_them() -> None:
    # Evicting a binding that another thread is calling must not free it under that
    # call: four threads call one pair while a fifth cycles 600 pairs through the cache.
    with Limiter([(1000, 60)]) as lim:
        admitted: List[int] = []
        errors: List[BaseException] = []

        def hammer() -> None:
            try:
                admitted.append(sum(lim.try_acquire("hot") for _ in range(2000)))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        def churn() -> None:
            try:
                for round_ in range(3):
                    for i in range(600):
                        lim.try_acquire(f"churn{i}", 1 + round_)
                        lim.try_acquire(f"churn{i}", 1 + round_)  # bound, evicting
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        threads.append(threading.Thread(target=churn))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(admitted) == 1000
        stats = lim.stats("hot")
        assert (stats["admitted_calls"], stats["refusals"]) == (1000, 7000)


def test_limiter_bind() -> None:
    with Limiter([(2, 60)]) as lim:
        b = lim.bind("k", 1)
        assert (b.key, b.cost) == ("k", 1)
        assert repr(b) == "<quotagate.Binding key='k' cost=1 open>"
        assert [b.try_acquire() for _ in range(3)] == [True, True, False]
        assert not lim.try_acquire("k"), "one bucket"
        assert lim.stats("k")["refusals"] == 2
        for dup in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="quotagate.Binding cannot be"):
                dup(b)
        with pytest.raises(ValueError):
            lim.bind("k", 0)
        with pytest.raises(TypeError):
            lim.bind("k", True)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            lim.bind(b"k")  # type: ignore[arg-type]
        with pytest.raises(quotagate.InvalidArgumentError, match="smallest rate"):
            lim.bind("k", 3)
        b.close()
        with pytest.raises(quotagate.ClosedError, match="the binding is closed"):
            b.try_acquire()
        other = lim.bind("other")
    with pytest.raises(quotagate.ClosedError, match="the limiter is closed"):
        other.try_acquire()
    with pytest.raises(quotagate.ClosedError):
        lim.bind("k")


def test_a_binding_keeps_its_bucket_and_outlives_its_limiter_object() -> None:
    lim = Limiter([(1, 0.05)], max_buckets=1)
    b = lim.bind("kept")
    assert b.try_acquire()
    time.sleep(0.07)
    with pytest.raises(quotagate.TooManyBucketsError):
        lim.try_acquire("other")
    assert b.try_acquire() and not b.try_acquire()
    assert lim.stats("kept")["admitted_calls"] == 2, "the same bucket all along"
    del lim
    gc.collect()
    # A collected limiter is closed; its native object stays valid for the binding.
    with pytest.raises(quotagate.ClosedError, match="the limiter is closed"):
        b.try_acquire()
    b.close()


def test_a_binding_over_a_store_shares_the_quota(tmp_path: Path) -> None:
    store = (tmp_path / "quota.q").as_uri()
    with Limiter([(3, 3600)], store=store) as a, Limiter([(3, 3600)], store=store) as b:
        bound = a.bind("k")
        assert bound.try_acquire()
        assert b.try_acquire("k") and b.try_acquire("k")
        assert not bound.try_acquire()
        assert not a.try_acquire("k") and not a.try_acquire("k")
        assert a.stats("k")["refusals"] == 3


def bind_in_a_forked_child(lim: Limiter) -> None:
    """A forked child's work: new pairs, bound or not, then close."""
    assert lim.try_acquire("new") and lim.try_acquire("new") and lim.try_acquire("new")
    assert lim.stats("new")["admitted_calls"] == 3
    lim.close()


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_forked_while_a_thread_binds_neither_waits_nor_miscounts() -> None:
    with Limiter([(10, 60)]) as lim:
        assert lim.try_acquire("k") and lim.try_acquire("k")
        # As if another thread were binding at the fork: the child inherits the lock held.
        assert lim._bind_lock.acquire()
        try:
            child = multiprocessing.get_context("fork").Process(
                target=bind_in_a_forked_child, args=(lim,)
            )
            child.start()
            child.join(30)
            assert child.exitcode == 0
        finally:
            lim._bind_lock.release()
        assert "new" not in lim._bound_one and lim.try_acquire("k")
        assert lim.stats("k")["admitted_calls"] == 3
