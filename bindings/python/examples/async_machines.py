"""Lists machines and reads each one's details from 20 asyncio tasks on one
AsyncClient: the tasks share the quota as threads would, the event loop is never
blocked, and each call has a deadline that bounds its waits and retries.

With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set, it reads
the real tenant; without them it starts the local simulator:

    python async_machines.py [how many machines]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, Dict, List

import quotagate

from _connect import client_arguments


async def main(limit: int) -> int:
    with contextlib.ExitStack() as stack:
        async with quotagate.AsyncClient(**client_arguments(stack, time_scale=0.01)) as api:
            ids: List[str] = []
            async for machine in api.paginate("/api/machines", {"$top": 50}, deadline=60):
                ids.append(machine["id"])
                if len(ids) == limit:
                    break
            details: Dict[str, Any] = {}

            async def read(machine_id: str) -> None:
                try:
                    r = await api.get(f"/api/machines/{machine_id}", deadline=30)
                    details[machine_id] = r.raise_for_status().json()
                except quotagate.TimeoutError as e:
                    print(f"{machine_id}: {e}", file=sys.stderr)

            queue = list(ids)

            async def worker() -> None:
                while queue:
                    await read(queue.pop())

            await asyncio.gather(*(worker() for _ in range(20)))
            for machine_id in ids:
                if machine_id in details:
                    print(f"{details[machine_id]['computerDnsName']}: {details[machine_id]['healthStatus']}")
            print(f"({len(details)} of {len(ids)} machines; {api.stats()['throttled']} throttled)")
            return 0 if len(details) == len(ids) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 120)))
