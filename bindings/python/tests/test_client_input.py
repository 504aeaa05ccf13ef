"""Bad arguments to Client and Simulator raise TypeError or ValueError before anything
is sent; the library's own refusals are InvalidArgumentError (a ValueError)."""

from __future__ import annotations

import math
import socket
from typing import Any, Dict, Iterator

import pytest

import quotagate
from quotagate import Client, Limiter
from quotagate._native import lib

pytestmark = pytest.mark.skipif(
    "qg_client_send" in lib.missing, reason="the loaded library has no client ABI"
)

NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(access_token="token", base_url=NOWHERE, authority=NOWHERE) as c:
        yield c


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, ValueError),  # no credentials: the library says what is missing
        ({"tenant_id": "t", "client_id": "c"}, ValueError),
        ({"access_token": ""}, ValueError),
        ({"access_token": 1}, TypeError),
        ({"access_token": "t", "base_url": "ftp://host"}, ValueError),
        ({"access_token": "t", "base_url": 1}, TypeError),
        ({"access_token": "t", "timeout": 0}, ValueError),
        ({"access_token": "t", "timeout": "5"}, TypeError),
        ({"access_token": "t", "timeout": math.inf}, ValueError),
        ({"access_token": "t", "max_attempts": 0}, ValueError),
        ({"access_token": "t", "max_attempts": 1.5}, TypeError),
        ({"access_token": "t", "max_quota_wait": -1}, ValueError),
        ({"access_token": "t", "rates": []}, ValueError),
        ({"access_token": "t", "rates": (100, 60)}, TypeError),
        ({"access_token": "t", "routes": [("GET", "/api/x")]}, TypeError),
        ({"access_token": "t", "routes": [(1, "/api/x", [(1, 1)])]}, TypeError),
        ({"access_token": "t", "routes": [("GET", "/api/x", [])]}, ValueError),
        ({"access_token": "t", "routes": "GET /api/x"}, TypeError),
        ({"access_token": "t", "limiter": "shared"}, TypeError),
        ({"access_token": "t", "proxy": "not a proxy url"}, ValueError),
    ],
)
def test_bad_client_arguments(kwargs: Dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        Client(**kwargs)


def test_a_closed_limiter_cannot_be_shared() -> None:
    lim = Limiter([(1, 1)])
    lim.close()
    with pytest.raises(quotagate.ClosedError):
        Client(access_token="t", base_url=NOWHERE, limiter=lim)


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((1, "/api/machines"), {}, TypeError),
        (("", "/api/machines"), {}, ValueError),
        (("GET", ""), {}, ValueError),
        (("GET", b"/api/machines"), {}, TypeError),
        (("GET", "/api/\0machines"), {}, ValueError),
        (("GET", "/api/machines"), {"params": "a=b"}, TypeError),
        (("GET", "/api/machines"), {"params": {"a": object()}}, TypeError),
        (("GET", "/api/machines"), {"params": {1: "b"}}, TypeError),
        (("GET", "/api/machines"), {"params": [("a",)]}, TypeError),
        (("GET", "/api/machines"), {"headers": [("a", "b")]}, TypeError),
        (("GET", "/api/machines"), {"headers": {"a": 1}}, TypeError),
        (("GET", "/api/machines"), {"headers": {"a:b": "c"}}, ValueError),
        (("GET", "/api/machines"), {"headers": {"a": "b\r\nc: d"}}, ValueError),
        (("GET", "/api/machines"), {"headers": {"X(A": "c"}}, quotagate.InvalidArgumentError),
        (("GET", "/api/machines"), {"headers": {"a": "b\x01c"}}, quotagate.InvalidArgumentError),
        (("GET", "/api/machines"), {"headers": {"a": "b\x7fc"}}, quotagate.InvalidArgumentError),
        (("GET", "/api/machines#x"), {"params": {"$top": 1}}, quotagate.InvalidArgumentError),
        (("POST", "/api/x"), {"json": {"a": 1}, "data": b"x"}, ValueError),
        (("POST", "/api/x"), {"json": {"a": object()}}, TypeError),
        (("POST", "/api/x"), {"json": math.nan}, ValueError),
        (("POST", "/api/x"), {"data": 12}, TypeError),
    ],
)
def test_bad_request_arguments(
    client: Client, args: Any, kwargs: Dict[str, Any], error: type
) -> None:
    with pytest.raises(error):
        client.request(*args, **kwargs)


def test_bad_paging_arguments(client: Client) -> None:
    with pytest.raises(TypeError):
        client.paginate("/api/machines", params="$top=5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.pages(1)  # type: ignore[arg-type]


@pytest.mark.skipif("qg_sim_start" in lib.missing, reason="no simulator ABI")
@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"limit": 0}, ValueError),
        ({"limit": "10"}, TypeError),
        ({"window": 0}, ValueError),
        ({"machines": -1}, ValueError),
        ({"time_scale": 0}, ValueError),
        ({"time_scale": math.nan}, ValueError),
        ({"token_lifetime": 0}, ValueError),
        ({"error_rate": 1.5}, ValueError),
        ({"reset_rate": -0.1}, ValueError),
        ({"latency": -1}, ValueError),
        ({"inbound_jitter": -0.1}, ValueError),
        ({"inbound_jitter": math.inf}, ValueError),
        ({"inbound_jitter": "0.1"}, TypeError),
        ({"inbound_jitter": 10.001}, quotagate.InvalidArgumentError),
        ({"port": 70000}, ValueError),
        ({"limits": [("hunting", [(1, 1)])]}, TypeError),
        ({"limits": {"hunting": [(0, 1)]}}, ValueError),
        ({"retry_after": "minutes"}, ValueError),
        ({"retry_after": 0}, TypeError),
    ],
)
def test_bad_simulator_arguments(kwargs: Dict[str, Any], error: type) -> None:
    from quotagate.testing import Simulator

    with pytest.raises(error):
        Simulator(**kwargs)


@pytest.mark.skipif("qg_sim_start" in lib.missing, reason="no simulator ABI")
def test_the_library_names_an_inbound_jitter_above_its_maximum() -> None:
    from quotagate.testing import Simulator

    with pytest.raises(quotagate.InvalidArgumentError, match="inbound_jitter must be at most 10s"):
        Simulator(inbound_jitter=11)
    Simulator(inbound_jitter=10).close()


@pytest.mark.skipif("qg_sim_start" in lib.missing, reason="no simulator ABI")
def test_a_taken_port_is_an_os_error() -> None:
    from quotagate.testing import Simulator

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(quotagate.NativeIOError) as info:
            Simulator(port=taken.getsockname()[1])
        assert isinstance(info.value, OSError)


@pytest.mark.parametrize(
    "headers", [{"X(A": "v"}, {"X-Test": "a\x01b"}, {"X-Test": "a\x7fb"}, {"X Test": "v"}]
)
def test_headers_the_wire_refuses_cost_no_quota(headers: Dict[str, str]) -> None:
    from quotagate.testing import Simulator

    with Simulator() as sim:
        with Client(
            sim.tenant_id, sim.client_id, sim.client_secret,
            base_url=sim.url, authority=sim.authority,
        ) as c:  # fmt: skip
            with pytest.raises(quotagate.InvalidArgumentError):
                c.get("/api/machines", headers=headers)
            assert c.stats()["requests"] == 0
        assert sim.stats()["requests"] == 0
