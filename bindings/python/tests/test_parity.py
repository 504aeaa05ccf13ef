"""Every option of the C client builder has a Python keyword: the header's
``qg_client_builder_set_*``/``add_*`` functions against what the binding calls."""

from __future__ import annotations

import inspect
import re

import pytest

import quotagate
from quotagate import _client, testing
from quotagate.testing import Simulator

from conftest import header_functions, make_client, requires_client

#: Builder functions that are not options: the builder's life cycle, and the older
#: forms of an option that a newer function covers whole (the certificate file of
#: either kind; the token source's sink rather than a buffer).
NOT_OPTIONS = {
    "qg_client_builder_new",
    "qg_client_builder_build",
    "qg_client_builder_free",
    "qg_client_builder_set_certificate_pem_files",
    "qg_client_builder_set_certificate_pfx_file",
    "qg_client_builder_set_token_provider",
}


def test_every_builder_option_has_a_keyword() -> None:
    options = {
        f
        for f in header_functions()
        if re.match(r"qg_client_builder_(set|add)_", f) and f not in NOT_OPTIONS
    }
    assert options, "the header declares builder options"
    called = set(re.findall(r"lib\.(qg_client_builder_\w+)", inspect.getsource(_client)))
    assert options - called == set(), "builder options with no Python keyword"


@requires_client
def test_the_new_keywords_are_checked_and_accepted(sim: Simulator) -> None:
    with make_client(
        sim,
        max_in_flight=[("GET", "/api/machines", 1)],
        hunting_run_time=(0.001, 0),
        hunting_budget_policy="fail",
    ) as api:
        assert api.get("/api/machines", params={"$top": 1}).status_code == 200
        assert len(api.hunt("DeviceInfo | take 1")) == 1
    with pytest.raises(ValueError, match="hunting_budget_policy"):
        make_client(sim, hunting_budget_policy="later")
    with pytest.raises(TypeError, match="max_in_flight"):
        make_client(sim, max_in_flight=[("GET", "/api/machines")])
    with pytest.raises(TypeError, match="hunting_run_time"):
        make_client(sim, hunting_run_time=600)
    with pytest.raises(quotagate.InvalidArgumentError):
        make_client(sim, max_in_flight=[("GET", "", 1)])


def test_every_client_keyword_reaches_the_builder() -> None:
    # A keyword missing from the table would be accepted and silently ignored.
    keywords = set(inspect.signature(_client.Client).parameters)
    # credential becomes token_provider; private_key and password go with certificate.
    taken_with_others = {"credential", "private_key", "password"}
    rows = [row[0] for row in _client._OPTIONS]
    assert len(rows) == len(set(rows)), "a keyword with two rows"
    assert set(rows) == keywords - taken_with_others


def test_every_simulator_keyword_reaches_the_configuration() -> None:
    keywords = set(inspect.signature(Simulator).parameters)
    # Rows that stand for several keywords, and the port, which starts the simulator.
    groups = {
        "limits": {"limit", "window", "limits"},
        "faults": {"error_rate", "reset_rate", "latency"},
    }
    covered = {"port"}
    for name, _setter, _convert in testing._OPTIONS:
        covered |= groups.get(name, {name})
    assert covered == keywords
