"""Messages that say what happened (each once misled: see the test names)."""

from __future__ import annotations

import socket

import pytest

import quotagate
from quotagate import Client, Limiter
from quotagate.testing import Simulator

from conftest import make_client, requires_client


def test_a_window_under_a_millisecond_is_refused_not_rounded_up() -> None:
    with pytest.raises(ValueError, match="at least 0.001"):
        Limiter([(10, 0.0005)])
    Limiter([(10, 0.001)]).close()


@requires_client
def test_a_closed_shared_limiter_is_named_and_the_client_stays_open(sim: Simulator) -> None:
    limiter = Limiter([(100, 60)])
    with make_client(sim, limiter=limiter) as api:
        api.get("/api/machines", params={"$top": 1})
        limiter.close()
        with pytest.raises(quotagate.ClosedError, match="limiter") as e:
            api.get("/api/machines", params={"$top": 1})
        assert "the client is closed" not in str(e.value)
        assert not api.closed


@requires_client
def test_a_token_providers_exception_is_named_without_an_internal_code(sim: Simulator) -> None:
    def provider() -> tuple[str, int]:
        raise ValueError("vault is down")

    with Client(base_url=sim.url, token_provider=provider) as api:
        with pytest.raises(quotagate.AuthError) as e:
            api.get("/api/machines")
    message = str(e.value)
    assert "raised ValueError" in message and "returned" not in message, message
    assert isinstance(e.value.__cause__, ValueError)


@requires_client
def test_an_unreachable_token_endpoint_is_a_transport_error(sim: Simulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connections are refused
    with Client(
        sim.tenant_id,
        sim.client_id,
        sim.client_secret,
        base_url=sim.url,
        authority=f"http://127.0.0.1:{port}",
        max_attempts=2,
    ) as api:
        with pytest.raises(quotagate.TransportError, match="token endpoint is unreachable") as e:
            api.get("/api/machines")
    assert not isinstance(e.value, quotagate.AuthError)
