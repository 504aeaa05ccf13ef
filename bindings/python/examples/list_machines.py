"""Lists the tenant's machines page by page, inside the API quota.

With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set (an app
registration with Machine.Read.All), it talks to the real API; without them it starts
the local simulator, so it runs anywhere:

    python list_machines.py [--top 100]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter

from quotagate import Client, Limiter
from quotagate.testing import Simulator


def connect(stack: contextlib.ExitStack) -> Client:
    """A client for the real tenant when credentials are set, else for a simulator."""
    env = [os.environ.get(f"QUOTAGATE_{n}") for n in ("TENANT_ID", "CLIENT_ID", "CLIENT_SECRET")]
    if all(env):
        tenant_id, client_id, secret = env
        return stack.enter_context(Client(tenant_id, client_id, secret))
    scale = 0.01  # the simulator's minute lasts 0.6 s; the client's quotas shrink alike
    sim = stack.enter_context(Simulator(time_scale=scale))
    print(f"(no QUOTAGATE_* credentials: using the simulator at {sim.url})", file=sys.stderr)
    rates = [(100, 60 * scale), (1500, 3600 * scale)]
    # At this scale the time between admission here and the count in the simulator is a
    # noticeable part of a window: 50 ms of margin absorb it.
    limiter = Limiter(rates, margin=0.05)
    return stack.enter_context(
        Client(
            sim.tenant_id, sim.client_id, sim.client_secret,
            base_url=sim.url, authority=sim.authority,
            rates=rates, limiter=limiter,
            timeout=5,  # seconds per attempt: the simulator is local
        )
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="List the tenant's machines.")
    parser.add_argument("--top", type=int, default=100, help="machines per page")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        client = connect(stack)
        platforms: Counter[str] = Counter()
        for n, machine in enumerate(client.paginate("/api/machines", {"$top": args.top}), 1):
            platforms[machine.get("osPlatform") or "unknown"] += 1
            if n <= 5:
                print(f"{machine['id']}  {machine.get('computerDnsName')}")
        print(f"{sum(platforms.values())} machines: " + ", ".join(
            f"{count} {name}" for name, count in platforms.most_common()
        ))  # fmt: skip
        stats = client.stats()
        print(f"{stats['requests']} requests, {stats['throttled']} throttled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
