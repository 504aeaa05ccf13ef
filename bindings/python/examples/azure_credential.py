"""Signs in with an azure-identity credential: ``Client(credential=...)`` takes any
object whose ``get_token(*scopes)`` returns ``.token`` and ``.expires_on``, such as
``DefaultAzureCredential()`` (environment, managed identity, Azure CLI, ...).

With azure-identity installed and QUOTAGATE_TENANT_ID set, it uses
DefaultAzureCredential against the real tenant; otherwise a stand-in credential gets
its tokens from the local simulator:

    python azure_credential.py
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from typing import Any, NamedTuple, Optional

import quotagate
import quotagate.testing

from _connect import simulator


class AccessToken(NamedTuple):
    """The shape of azure.core.credentials.AccessToken."""

    token: str
    expires_on: int


class SimulatorCredential:
    """A stand-in for DefaultAzureCredential: tokens from the simulator."""

    def __init__(self, sim: quotagate.testing.Simulator) -> None:
        self._sim = sim

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        print(f"(token asked for {', '.join(scopes)})", file=sys.stderr)
        return AccessToken(self._sim.issue_token(), int(time.time()) + 3600)


def azure_credential() -> Optional[quotagate.TokenCredential]:
    if not os.environ.get("QUOTAGATE_TENANT_ID"):
        return None
    try:
        identity = importlib.import_module("azure.identity")
    except ImportError:
        return None
    credential: quotagate.TokenCredential = identity.DefaultAzureCredential()
    return credential


def main() -> int:
    with contextlib.ExitStack() as stack:
        credential = azure_credential()
        if credential is not None:
            api = stack.enter_context(quotagate.Client(credential=credential))
        else:
            sim = simulator(stack)
            api = stack.enter_context(
                quotagate.Client(base_url=sim.url, credential=SimulatorCredential(sim), timeout=5)
            )
        machines = api.get("/api/machines", {"$top": 5}, deadline=60).raise_for_status()
        for machine in machines.json()["value"]:
            print(machine["computerDnsName"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
