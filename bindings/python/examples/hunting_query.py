"""Runs an advanced hunting query with ``hunt()``; the client applies the hunting
endpoint's own quota (45 calls per minute) and the tenant's run-time budget on top of
the API's. ``result.to_pandas()`` gives a DataFrame when pandas is installed.

With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set (an app
registration with AdvancedQuery.Read.All), it queries the real tenant; without them it
starts the local simulator:

    python hunting_query.py ["DeviceInfo | take 10"]
"""

from __future__ import annotations

import contextlib
import sys

import quotagate

from _connect import connect


DEFAULT_QUERY = "DeviceInfo | summarize arg_max(Timestamp, *) by DeviceId | take 10"


def main() -> int:
    query = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_QUERY
    with contextlib.ExitStack() as stack:
        client = connect(stack)
        try:
            result = client.hunt(query, deadline=120)
        except quotagate.HTTPError as e:
            print(f"the query failed: {e}", file=sys.stderr)
            return 1
        print(" | ".join(result.columns))
        for row in result:
            print(" | ".join(str(row.get(c, "")) for c in result.columns))
        rows = result.rows
        print(f"({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
