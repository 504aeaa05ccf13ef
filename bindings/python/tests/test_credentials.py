"""Clouds, certificate credentials and token providers, against the local simulator.

The certificates are the repository's test-only ones (tests/data, made by
tests/data/make-certs.sh), the same the Rust tests use."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

import quotagate
from quotagate import Client, _native
from quotagate._client import CLOUDS
from quotagate.testing import Simulator

from conftest import HEADER, requires_client

pytestmark = requires_client

DATA = HEADER.parents[1] / "tests" / "data"
TOKEN_SECRET_PART = "tok-must-not-leak"


def data(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available (not in a checkout)")
    return path


@pytest.fixture
def cert_sim() -> Iterator[Simulator]:
    with Simulator(certificate_clients={"cert-app": data("app.crt")}) as s:
        yield s


def cert_client(sim: Simulator, client_id: str = "cert-app", **kwargs: Any) -> Client:
    kwargs.setdefault("timeout", 5)
    return Client(sim.tenant_id, client_id, base_url=sim.url, authority=sim.authority, **kwargs)


def key_material() -> List[str]:
    """Lines of the test keys' PEM bodies: none may show in any text."""
    lines = []
    for name in ("app.key", "other.key"):
        text = data(name).read_text(encoding="ascii")
        lines += [line for line in text.splitlines() if line and not line.startswith("-----")]
    return lines


# -- clouds -----------------------------------------------------------------------


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_cloud_name_builds_a_client(cloud: str) -> None:
    with Client(access_token="t", cloud=cloud) as c:
        assert repr(c).startswith("<quotagate.Client ")
        assert cloud in repr(c) and "auth=access token open>" in repr(c)
    with Client(access_token="t", cloud=cloud.upper()):
        pass


def test_an_unknown_cloud_is_a_value_error_listing_the_names() -> None:
    with pytest.raises(ValueError) as info:
        Client(access_token="t", cloud="mars")
    assert isinstance(info.value, quotagate.InvalidArgumentError)
    for name in ("commercial", "gcc-high", "dod", "eu"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match="cloud"):
        Client(access_token="t", cloud=1)  # type: ignore[arg-type]


def test_base_url_and_authority_override_the_cloud(sim: Simulator) -> None:
    with Client(
        sim.tenant_id,
        sim.client_id,
        sim.client_secret,
        cloud="gcc-high",
        base_url=sim.url,
        authority=sim.authority,
        scope=sim.url + "/.default",
        timeout=5,
    ) as c:
        assert c.get("/api/machines", params={"$top": 1}).status_code == 200
        assert sim.url in repr(c)


# -- certificates -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"certificate": "app.crt", "private_key": "app.key"},
        {"certificate": "app.crt", "private_key": "app-pkcs1.key"},
        {"certificate": "app.pem"},
        {"certificate": "app.pfx", "password": "quotagate"},
        {"certificate": "app-3des.pfx", "password": "quotagate"},
        {"certificate": "app.pem", "assertion_algorithm": "RS256"},
        {"certificate": "app.pem", "assertion_algorithm": "ps256"},
    ],
)
def test_a_certificate_client_gets_data(cert_sim: Simulator, kwargs: Any) -> None:
    args = dict(kwargs)
    args["certificate"] = data(args["certificate"])
    if "private_key" in args:
        args["private_key"] = str(data(args["private_key"]))
    with cert_client(cert_sim, **args) as c:
        assert c.get("/api/machines", params={"$top": 1}).status_code == 200
        assert "auth=certificate" in repr(c)
        assert "quotagate'" not in repr(c)  # the password
    assert cert_sim.stats()["token_requests"] == 1


def test_a_certificate_as_pem_text(cert_sim: Simulator) -> None:
    cert = data("app.crt").read_text(encoding="ascii")
    key = data("app.key").read_text(encoding="ascii")
    with cert_client(cert_sim, certificate=cert, private_key=key) as c:
        assert c.get("/api/machines", params={"$top": 1}).status_code == 200
        for line in key_material():
            assert line not in repr(c)


def test_a_key_the_simulator_does_not_know_is_refused(cert_sim: Simulator) -> None:
    with cert_client(
        cert_sim, certificate=data("other.crt"), private_key=data("other.key"), max_attempts=2
    ) as c:
        with pytest.raises(quotagate.AuthError) as info:
            c.get("/api/machines")
    e = info.value
    assert e.status == 401
    text = str(e) + repr(e) + repr(e.details) + repr(e.args)
    for line in key_material():
        assert line not in text


def test_a_key_that_is_not_the_certificates_is_caught_when_building() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        Client("t", "c", certificate=data("app.crt"), private_key=data("other.key"))
    with pytest.raises(ValueError):
        Client("t", "c", certificate=data("app.crt"))  # no key
    with pytest.raises(ValueError):
        Client("t", "c", certificate=DATA / "missing.crt", private_key=data("app.key"))


def test_a_wrong_pfx_password_shows_nowhere() -> None:
    wrong = "Wrong-Pfx-Password-1234"
    with pytest.raises(ValueError) as info:
        Client("t", "c", certificate=data("app.pfx"), password=wrong)
    assert wrong not in str(info.value) + repr(info.value)


def test_certificate_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="password"):
        Client("t", "c", certificate=data("app.pem"), password="x")
    # The library tells a PFX file by its content, whatever its name, and refuses a
    # separate key for it.
    with pytest.raises(ValueError, match="holds its key: give no key path"):
        Client("t", "c", certificate=data("app.pfx"), private_key=data("app.key"))
    with pytest.raises(ValueError, match="certificate"):
        Client("t", "c", private_key=data("app.key"))
    with pytest.raises(TypeError, match="certificate"):
        Client("t", "c", certificate=b"app.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PS256, RS256"):
        Client("t", "c", certificate=data("app.pem"), assertion_algorithm="HS256")


# -- token providers --------------------------------------------------------------


def test_a_token_provider_is_called_once_across_threads(sim: Simulator) -> None:
    calls = []
    lock = threading.Lock()

    def provider() -> Tuple[str, float]:
        with lock:
            calls.append(threading.get_ident())
        return sim.issue_token(), 3600

    with Client(sim.tenant_id, sim.client_id, token_provider=provider, base_url=sim.url) as c:
        assert "auth=token provider" in repr(c)
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda _: c.get("/api/machines", params={"$top": 1}).status_code, range(16))
            )
        assert codes == [200] * 16
        assert c.stats()["token_requests"] in (0, 1)
    assert len(calls) == 1
    assert sim.stats()["token_requests"] == 0


def test_a_provider_that_raises_gives_an_auth_error_without_the_token(sim: Simulator) -> None:
    token = sim.issue_token()

    def provider() -> Tuple[str, float]:
        raise RuntimeError(f"refusing to hand out {token}")

    with Client(token_provider=provider, base_url=sim.url) as c:
        with pytest.raises(quotagate.AuthError) as info:
            c.get("/api/machines")
    e = info.value
    text = str(e) + repr(e) + repr(e.details) + repr(e.args)
    assert token not in text
    assert "RuntimeError" in str(e)
    assert isinstance(e.__cause__, RuntimeError)


@pytest.mark.parametrize(
    "answer",
    [None, ("t",), (TOKEN_SECRET_PART, 0), (TOKEN_SECRET_PART, "60"), (b"x", 60), ("", 60)],
)
def test_a_provider_with_a_wrong_answer_gives_an_auth_error(sim: Simulator, answer: Any) -> None:
    with Client(token_provider=lambda: answer, base_url=sim.url) as c:
        with pytest.raises(quotagate.AuthError) as info:
            c.get("/api/machines")
    assert TOKEN_SECRET_PART not in str(info.value) + repr(info.value)


def test_a_provider_token_refused_by_the_api_is_asked_again(sim: Simulator) -> None:
    bad = "not-a-token-" + TOKEN_SECRET_PART
    calls = []

    def provider() -> Tuple[str, float]:
        calls.append(1)
        return bad, 60

    with Client(token_provider=provider, base_url=sim.url, max_attempts=3) as c:
        r = c.get("/api/machines")
        assert r.status_code == 401
        with pytest.raises(quotagate.HTTPError) as info:
            r.raise_for_status()
    assert len(calls) >= 2, calls
    assert bad not in str(info.value) + repr(info.value) + repr(info.value.details)


def test_the_callback_hands_the_token_to_the_library_s_sink(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quotagate import _client
    from quotagate._client import _TokenCallback

    calls = []
    long_token = "x" * 5000 + "é"
    handed: List[Tuple[Any, bytes, int, int]] = []

    def provider() -> Tuple[str, float]:
        calls.append(1)
        return long_token, 1.5

    def sink_set(sink: Any, token: bytes, n: int, ms: int) -> int:
        handed.append((sink, token, n, ms))
        return _native.QG_OK

    monkeypatch.setattr(_client.lib, "qg_token_sink_set", sink_set)
    cb = _TokenCallback(provider)
    assert cb.native(None, 1234) == _native.QG_OK
    need = len(long_token.encode("utf-8"))
    assert handed == [(1234, long_token.encode("utf-8"), need, 1500)]
    assert len(calls) == 1 and cb.failure is None

    # A token the sink refuses fails the callback; the reason stays on this side.
    monkeypatch.setattr(
        _client.lib, "qg_token_sink_set", lambda *_: _native.QG_ERR_INVALID_ARGUMENT
    )
    assert cb.native(None, 1234) == _native.QG_ERR_AUTH
    assert isinstance(cb.failure, quotagate.Error)


def test_token_provider_must_be_callable() -> None:
    with pytest.raises(TypeError, match="token_provider"):
        Client(token_provider="token")  # type: ignore[arg-type]


# -- the simulator ----------------------------------------------------------------


def test_issue_token_fails_once_stopped() -> None:
    s = Simulator()
    assert s.issue_token()
    s.stop()
    with pytest.raises(quotagate.ClosedError):
        s.issue_token()


def test_a_provider_that_uses_its_own_client_fails_instead_of_hanging(sim: Simulator) -> None:
    clients: List[Client] = []

    def provider() -> Tuple[str, float]:
        clients[0].get("/api/machines")  # would wait for the token being fetched
        return sim.issue_token(), 60

    with Client(token_provider=provider, base_url=sim.url, timeout=5) as c:
        clients.append(c)
        started = time.monotonic()
        with pytest.raises(quotagate.AuthError) as info:
            c.get("/api/machines")
        assert time.monotonic() - started < 5
    assert isinstance(info.value.__cause__, quotagate.ReentrantCallError)
    assert "ReentrantCallError" in str(info.value)

