"""``credential=``: any object with azure-identity's ``get_token(*scopes)``, and the
bound on a token provider's lifetime that catches an expiry instant passed as one."""

from __future__ import annotations

import time
from typing import Any, List, NamedTuple, Tuple

import pytest

import quotagate
from quotagate import Client
from quotagate.testing import Simulator

from conftest import requires_client

pytestmark = requires_client


class AccessToken(NamedTuple):  # the shape of azure.core.credentials.AccessToken
    token: str
    expires_on: int


class StandInCredential:
    """Stands in for DefaultAzureCredential: tokens from the simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.scopes: List[Tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.sim.issue_token(), int(time.time()) + 3600)


def test_a_credential_gives_the_tokens_for_the_clients_scope(sim: Simulator) -> None:
    credential = StandInCredential(sim)
    with Client(base_url=sim.url, credential=credential) as api:
        assert api.get("/api/machines", params={"$top": 1}).status_code == 200
        assert api.get("/api/machines", params={"$top": 1}).status_code == 200
        assert "credential StandInCredential" in repr(api)
    assert credential.scopes == [(f"{sim.url}/.default",)], "asked once, for the API's scope"


def test_a_v1_resource_is_asked_for_as_its_default_scope(sim: Simulator) -> None:
    credential = StandInCredential(sim)
    with Client(base_url=sim.url, credential=credential, resource="https://api.example/") as api:
        api.get("/api/machines", params={"$top": 1})
    assert credential.scopes == [("https://api.example/.default",)]


def test_a_credential_without_get_token_or_with_a_provider_is_refused(sim: Simulator) -> None:
    with pytest.raises(TypeError, match="get_token"):
        Client(base_url=sim.url, credential=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        Client(
            base_url=sim.url,
            credential=StandInCredential(sim),
            token_provider=lambda: ("t", 3600),
        )


def test_an_expiry_instant_given_as_a_lifetime_is_refused(sim: Simulator) -> None:
    token = sim.issue_token()
    with Client(base_url=sim.url, token_provider=lambda: (token, time.time() + 3600)) as api:
        with pytest.raises(quotagate.AuthError, match="expires_on") as e:
            api.get("/api/machines")
        assert token not in str(e.value)
    with Client(base_url=sim.url, token_provider=lambda: (token, 24 * 3600)) as api:
        assert api.get("/api/machines", params={"$top": 1}).status_code == 200
