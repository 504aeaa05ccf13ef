"""How the examples get a client: the real tenant when QUOTAGATE_TENANT_ID,
QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET are set, else the library's simulator."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Dict

from quotagate import Client
from quotagate.testing import Simulator


def client_arguments(stack: contextlib.ExitStack, time_scale: float = 1.0) -> Dict[str, Any]:
    """The arguments of a client (:class:`Client` or :class:`AsyncClient`) for the real
    tenant when credentials are set, else for a simulator whose windows last
    ``time_scale`` of the real ones (the client's quotas shrink alike)."""
    env = [os.environ.get(f"QUOTAGATE_{n}") for n in ("TENANT_ID", "CLIENT_ID", "CLIENT_SECRET")]
    if all(env):
        tenant_id, client_id, secret = env
        return {"tenant_id": tenant_id, "client_id": client_id, "client_secret": secret}
    sim = simulator(stack, time_scale)
    return dict(
        tenant_id=sim.tenant_id, client_id=sim.client_id, client_secret=sim.client_secret,
        base_url=sim.url, authority=sim.authority,
        rates=[(100, 60 * time_scale), (1500, 3600 * time_scale)],
        # At a small scale the time between admission here and the simulator's count
        # is a noticeable part of a window: 50 ms of margin absorb it.
        margin=0.05,
        timeout=5,  # seconds per attempt: the simulator is local
    )  # fmt: skip


def simulator(stack: contextlib.ExitStack, time_scale: float = 1.0) -> Simulator:
    """A simulator that lives as long as ``stack``."""
    sim = stack.enter_context(Simulator(time_scale=time_scale))
    print(f"(no QUOTAGATE_* credentials: using the simulator at {sim.url})", file=sys.stderr)
    return sim


def connect(stack: contextlib.ExitStack, time_scale: float = 1.0) -> Client:
    """A :class:`Client` with :func:`client_arguments`, closed with ``stack``."""
    return stack.enter_context(Client(**client_arguments(stack, time_scale)))
