"""Shared fixtures. The tests import whichever quotagate is importable: the installed
package under scripts/test-python.sh (run from outside the source tree)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import quotagate
from quotagate import _native

#: The repository's header, when the tests run from a checkout.
HEADER = Path(__file__).resolve().parents[3] / "include" / "quotagate.h"

HAS_CLIENT = not {"qg_client_send", "qg_sim_start"} & set(_native.lib.missing)
requires_client = pytest.mark.skipif(
    not HAS_CLIENT, reason="the loaded library has no client or simulator ABI"
)


def header_text() -> str:
    if not HEADER.is_file():
        pytest.skip("include/quotagate.h is not available")
    return HEADER.read_text(encoding="utf-8")


def header_functions() -> List[str]:
    """The names of the functions the header declares (comments removed first)."""
    code = re.sub(r"/\*.*?\*/", "", header_text(), flags=re.S)
    code = re.sub(r"//[^\n]*", "", code)
    # Callback types (typedef qg_result (*qg_token_fn)(...)) are not functions.
    code = re.sub(r"\btypedef\b[^;]*;", "", code)
    return re.findall(r"\b(qg_\w+)\s*\(", code)


def header_defines() -> Dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^#define\s+(QG_\w+)\s+(\d+)\s*$", header_text(), re.M)
    }


def subprocess_env() -> Dict[str, str]:
    """An environment in which a child Python imports the same quotagate as this one."""
    env = dict(os.environ)
    package_parent = str(Path(quotagate.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def sim() -> Iterator["quotagate.testing.Simulator"]:
    if not HAS_CLIENT:
        pytest.skip("the loaded library has no simulator yet")
    from quotagate.testing import Simulator

    with Simulator() as s:
        yield s


PYTHON = sys.executable


def make_client(sim: "quotagate.testing.Simulator", **kwargs: Any) -> quotagate.Client:
    # A short attempt timeout: the simulator's HTTP server (tiny_http 0.12) can leave a
    # new connection of a burst unread until another connection closes; a GET stuck so
    # is then retried after 5 s instead of the default 300 s.
    kwargs.setdefault("timeout", 5)
    return quotagate.Client(
        sim.tenant_id,
        sim.client_id,
        sim.client_secret,
        base_url=sim.url,
        authority=sim.authority,
        **kwargs,
    )


@pytest.fixture
def client(sim: "quotagate.testing.Simulator") -> Iterator[quotagate.Client]:
    with make_client(sim) as c:
        yield c
