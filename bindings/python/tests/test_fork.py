"""Handles have one owner (no copies, no pickles), and a forked child can use the
library: what it inherits is documented and checked here."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest

import quotagate
from quotagate import Client, Limiter
from quotagate.testing import Simulator

from conftest import requires_client

fork_only = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork"
)


def handles() -> List[Tuple[str, Callable[[], Any]]]:
    made: List[Tuple[str, Callable[[], Any]]] = [("Limiter", lambda: Limiter([(5, 1)]))]
    if "qg_client_send" not in quotagate._native.lib.missing:
        made.append(("Client", lambda: Client(access_token="a-token", base_url="http://127.0.0.1:9")))
        made.append(("Simulator", Simulator))
    return made


@pytest.mark.parametrize("name, make", handles())
def test_a_handle_cannot_be_copied_or_pickled(name: str, make: Callable[[], Any]) -> None:
    # A copy used to share the native handle, and deleting both freed it twice.
    with make() as original:
        for duplicate in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError) as info:
                duplicate(original)
            assert "cannot be copied" in str(info.value)
        with pytest.raises(TypeError) as info:
            pickle.dumps(original)
        text = str(info.value)
        assert f"quotagate.{name} cannot be pickled" in text, text
        if name != "Simulator":
            assert "store=" in text, text
        assert not original.closed
    if name == "Limiter":
        lim = make()
        assert lim.try_acquire("k")
        lim.close()


def call_from_a_child(url: str, authority: str, ids: Tuple[str, str, str]) -> int:
    """A pool worker: a new client (not the parent's), one call from the main thread."""
    tenant, client_id, secret = ids
    with Client(tenant, client_id, secret, base_url=url, authority=authority, timeout=5) as c:
        return c.get("/api/machines", params={"$top": 1}).status_code


@fork_only
@requires_client
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_pool_calls_after_the_parents_main_thread_did() -> None:
    with Simulator() as sim:
        ids = (sim.tenant_id, sim.client_id, sim.client_secret)
        # A call from this main thread starts the helper thread that runs such calls; a
        # forked child inherits its queue but not the thread, and every call from the
        # child's main thread waited for ever.
        with Client(*ids, base_url=sim.url, authority=sim.authority, timeout=5) as parent:
            assert parent.get("/api/machines", params={"$top": 1}).status_code == 200
        with multiprocessing.get_context("fork").Pool(2) as pool:
            result = pool.starmap_async(call_from_a_child, [(sim.url, sim.authority, ids)] * 4)
            assert result.get(timeout=60) == [200] * 4


#: The limiter a forked child inherits (a pool's arguments are pickled; a handle is not).
_inherited: List[Limiter] = []


def acquire_three(store: Optional[str]) -> List[bool]:
    """A pool worker: three tries on the inherited limiter, or on a new one over a store."""
    limiter = _inherited[0] if store is None else Limiter([(3, 3600)], store=store)
    return [limiter.try_acquire("k") for _ in range(3)]


@fork_only
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_inherits_a_copy_of_an_in_memory_limiter_and_shares_a_store(
    tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("fork")
    inherited = Limiter([(3, 3600)])
    _inherited[:] = [inherited]
    assert inherited.try_acquire("k")
    try:
        # One task per worker: each a child forked from this process as it is now.
        with ctx.Pool(2, maxtasksperchild=1) as pool:
            got = pool.map_async(acquire_three, [None, None], chunksize=1).get(timeout=60)
    finally:
        _inherited.clear()
    # Each child counts alone, from the parent's count at the fork.
    assert got == [[True, True, False]] * 2
    assert inherited.try_acquire("k") and inherited.try_acquire("k")

    store = (tmp_path / "quota.q").as_uri()
    assert Limiter([(3, 3600)], store=store).try_acquire("k")
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        got = pool.map_async(acquire_three, [store, store], chunksize=1).get(timeout=60)
    # Every process opened the store: one quota for all of them.
    assert sum(sum(g) for g in got) == 2
