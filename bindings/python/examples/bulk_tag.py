"""Tags many machines from a thread pool; the client keeps every thread inside the
API quota, so no call collects a 429 and none is lost.

With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set (an app
registration with Machine.ReadWrite.All), it tags machines of the real tenant; without
them it starts the local simulator:

    python bulk_tag.py [--tag quotagate-demo] [--max-machines 250] [--remove]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from itertools import islice

import quotagate

from _connect import connect


def main() -> int:
    parser = argparse.ArgumentParser(description="Add (or remove) a tag on many machines.")
    parser.add_argument("--tag", default="quotagate-demo")
    parser.add_argument("--max-machines", type=int, default=250)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--remove", action="store_true", help="remove the tag instead")
    args = parser.parse_args()
    action = "Remove" if args.remove else "Add"

    with contextlib.ExitStack() as stack:
        client = connect(stack, time_scale=0.01)
        ids = [m["id"] for m in islice(client.paginate("/api/machines"), args.max_machines)]

        def tag(machine_id: str) -> str:
            path = f"/api/machines/{machine_id}/tags"
            body = {"Value": args.tag, "Action": action}
            try:
                r = client.post(path, json=body)
            except (quotagate.TransportError, quotagate.TimeoutError):
                # The library never repeats a POST whose outcome is unknown. Adding or
                # removing a tag twice does no harm, so this script may, once.
                r = client.post(path, json=body)
            r.raise_for_status()
            return machine_id

        started = time.monotonic()
        failed = 0
        with ThreadPoolExecutor(args.threads) as pool:
            for future in as_completed([pool.submit(tag, i) for i in ids]):
                try:
                    future.result()
                except quotagate.Error as e:
                    failed += 1
                    print(f"failed: {e}", file=sys.stderr)
        elapsed = time.monotonic() - started
        stats = client.stats()
        print(
            f"{action} tag {args.tag!r} on {len(ids) - failed} of {len(ids)} machines in "
            f"{elapsed:.1f} s with {args.threads} threads; {stats['throttled']} throttled, "
            f"{stats['retries']} retries"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
