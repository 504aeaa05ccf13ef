"""Secrets never show: not in reprs, not in exception texts."""

from __future__ import annotations

import pytest

import quotagate
from quotagate import Client

from conftest import requires_client

SECRET = "s3cr3t-Value-That-Must-Not-Leak"
TOKEN = "eyJ0eXAiOiJKV1Qi.token-that-must-not-leak"


@requires_client
def test_client_repr_shows_no_secret_nor_token() -> None:
    with Client("tenant-1", "client-1", SECRET, base_url="http://127.0.0.1:9") as c:
        assert SECRET not in repr(c) and SECRET not in str(c)
        assert "tenant-1" in repr(c)
    with Client(access_token=TOKEN, base_url="http://127.0.0.1:9") as c:
        assert TOKEN not in repr(c) and TOKEN not in str(c)
        assert "access token" in repr(c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_secret": SECRET + "\0"},
        {"access_token": TOKEN + "\0"},
        {"client_secret": SECRET, "base_url": "not a url"},
        {"access_token": TOKEN, "timeout": -1},
        {"client_secret": SECRET, "rates": "100/60"},
    ],
)
def test_bad_arguments_never_echo_a_secret(kwargs: dict) -> None:  # type: ignore[type-arg]
    args = {"tenant_id": "t", "client_id": "c", **kwargs}
    with pytest.raises((TypeError, ValueError, RuntimeError)) as info:
        Client(**args)
    text = str(info.value) + repr(info.value)
    assert SECRET not in text and TOKEN not in text


def test_a_secret_of_the_wrong_type_is_not_shown() -> None:
    with pytest.raises(TypeError) as info:
        Client("t", "c", b"bytes-" + SECRET.encode())  # type: ignore[arg-type]
    assert SECRET not in str(info.value)


@requires_client
def test_failed_calls_never_show_the_secret() -> None:
    with Client(
        "tenant", "client", SECRET, base_url="http://127.0.0.1:9",
        authority="http://127.0.0.1:9", max_attempts=1,
    ) as c:  # fmt: skip
        with pytest.raises(quotagate.Error) as info:
            c.get("/api/machines")
        e = info.value
        assert SECRET not in str(e) + repr(e) + repr(e.details) + repr(e.args)


@requires_client
def test_the_client_redacts_its_secrets_from_library_texts() -> None:
    with Client("t", "c", SECRET, base_url="http://127.0.0.1:9") as c:
        assert c._redact(f"token request with {SECRET} failed") == "token request with *** failed"


@requires_client
@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "http://api.example.com"},
        {"base_url": "https://api.example.com", "authority": "http://login.example.com"},
    ],
)
def test_plain_http_off_loopback_needs_allow_insecure_http(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(quotagate.InvalidArgumentError) as info:
        Client("t", "c", SECRET, **kwargs)
    text = str(info.value)
    assert "not a loopback host" in text and "allow_insecure_http" in text, text
    with Client("t", "c", SECRET, allow_insecure_http=True, **kwargs) as c:
        assert not c.closed
    with pytest.raises(TypeError):
        Client("t", "c", SECRET, allow_insecure_http=1, **kwargs)  # type: ignore[arg-type]


@requires_client
@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "https://admin:hunter2@api.example.com"},
        {"base_url": "http://admin:hunter2@127.0.0.1:9"},
        {"authority": "https://admin:hun/ter2@login.example.com"},
    ],
)
def test_user_information_in_urls_is_refused_and_never_shown(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(quotagate.InvalidArgumentError) as info:
        Client("t", "c", SECRET, **kwargs)
    text = str(info.value) + repr(info.value)
    assert "user name or password" in text, text
    assert "hunter2" not in text and "ter2" not in text and "admin" not in text, text
