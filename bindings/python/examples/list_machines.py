"""Lists the tenant's machines page by page, inside the API quota.

With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set (an app
registration with Machine.Read.All), it talks to the real API; without them it starts
the local simulator, so it runs anywhere:

    python list_machines.py [--top 100]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter

from _connect import connect


def main() -> int:
    parser = argparse.ArgumentParser(description="List the tenant's machines.")
    parser.add_argument("--top", type=int, default=100, help="machines per page")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        client = connect(stack, time_scale=0.01)
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
