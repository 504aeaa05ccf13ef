"""Limiter(store=...) and Client(store=...): buckets shared between processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

import quotagate
import quotagate.testing
from quotagate import Limiter

from conftest import requires_client, subprocess_env


@pytest.fixture()
def state_url(tmp_path: Path) -> Iterator[str]:
    yield (tmp_path / "tenant.q").as_uri()


def redis_url(name: str) -> str:
    url = os.environ.get("QUOTAGATE_TEST_REDIS_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the Redis tests: set QUOTAGATE_TEST_REDIS_URL")
        pytest.skip("QUOTAGATE_TEST_REDIS_URL is not set")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}prefix=qgpy-{name}-{os.getpid()}"


def test_two_limiters_on_one_state_file_share_the_bucket(state_url: str) -> None:
    with Limiter([(3, 60)], store=state_url) as a, Limiter([(3, 60)], store=state_url) as b:
        assert a.try_acquire("tenant")
        assert b.try_acquire("tenant")
        assert a.try_acquire("tenant")
        assert not b.try_acquire("tenant")
        assert b.wait_time("tenant") > 50
        assert b.stats("tenant")["windows"][0]["used"] == 3


def test_another_process_sees_the_same_quota(state_url: str) -> None:
    child = textwrap.dedent(
        f"""
        import quotagate
        with quotagate.Limiter([(2, 60)], store={state_url!r}) as lim:
            print(lim.try_acquire("k"), lim.try_acquire("k"), lim.try_acquire("k"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert out.stdout.split() == ["True", "True", "False"]
    with Limiter([(2, 60)], store=state_url) as lim:
        assert not lim.try_acquire("k"), "the quota the other process spent is still spent"


def test_a_pause_is_shared(state_url: str) -> None:
    with Limiter([(5, 60)], store=state_url) as a, Limiter([(5, 60)], store=state_url) as b:
        a.pause("k", 30)
        assert not b.try_acquire("k")
        assert b.stats("k")["paused_for"] > 25


def test_bad_store_urls_are_clear_errors(tmp_path: Path) -> None:
    schemes = r"file://, redis://, rediss://, redis\+cluster:// or rediss\+cluster://"
    with pytest.raises(quotagate.InvalidArgumentError, match=schemes):
        Limiter([(1, 1)], store="ftp://example/x")
    with pytest.raises(quotagate.InvalidArgumentError, match="absolute path"):
        Limiter([(1, 1)], store="file://relative/x")
    with pytest.raises(TypeError):
        Limiter([(1, 1)], store=42)  # type: ignore[arg-type]
    damaged = tmp_path / "damaged.q"
    damaged.write_bytes(b"not a quotagate state file" * 10)
    with pytest.raises(quotagate.StoreError, match=str(damaged)):
        Limiter([(1, 1)], store=damaged.as_uri()).try_acquire()


def test_an_unreachable_redis_fails_at_once_with_on_unavailable_fail() -> None:
    url = "redis://:hunter2@127.0.0.1:1/0?timeout_ms=200&on_unavailable=fail"
    with pytest.raises(quotagate.StoreError) as caught:
        with Limiter([(1, 1)], store=url) as lim:
            lim.try_acquire()
    assert "hunter2" not in str(caught.value)


def test_two_limiters_on_redis_share_the_bucket() -> None:
    url = redis_url("share")
    with Limiter([(2, 60)], store=url) as a, Limiter([(2, 60)], store=url) as b:
        assert a.try_acquire("k")
        assert b.try_acquire("k")
        assert not a.try_acquire("k")
        assert not b.try_acquire("k")


@requires_client
def test_a_client_takes_a_store_but_not_with_a_limiter(
    sim: "quotagate.testing.Simulator", state_url: str
) -> None:
    creds = dict(
        tenant_id=sim.tenant_id,
        client_id=sim.client_id,
        client_secret=sim.client_secret,
        base_url=sim.url,
        authority=sim.authority,
    )
    with quotagate.Client(**creds, store=state_url) as c:
        assert c.get("/api/machines").status_code == 200
    with Limiter([(1, 1)]) as lim:
        with pytest.raises(quotagate.InvalidArgumentError, match="not both"):
            quotagate.Client(**creds, limiter=lim, store=state_url)


@requires_client
def test_a_python_process_and_a_rust_process_share_one_state_file(
    sim: "quotagate.testing.Simulator", state_url: str, tmp_path: Path
) -> None:
    cli = os.environ.get("QUOTAGATE_TEST_CLI", "")
    if not cli:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the cross-language store test: set QUOTAGATE_TEST_CLI")
        pytest.skip("QUOTAGATE_TEST_CLI (the quotagate command) is not set")
    env = dict(
        os.environ,
        QUOTAGATE_TENANT_ID=sim.tenant_id,
        QUOTAGATE_CLIENT_ID=sim.client_id,
        QUOTAGATE_CLIENT_SECRET=sim.client_secret,
        QUOTAGATE_BASE_URL=sim.url,
        QUOTAGATE_AUTHORITY=sim.authority,
    )

    def call(store: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, "call", "GET", "/api/machines", "--query", "$top=1"]
            + ["--store", store, "--max-wait", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # This process spends the minute's 100 calls of the published limit...
    with quotagate.Client(
        tenant_id=sim.tenant_id,
        client_id=sim.client_id,
        client_secret=sim.client_secret,
        base_url=sim.url,
        authority=sim.authority,
        store=state_url,
    ) as client:
        for _ in range(100):
            assert client.get("/api/machines", params={"$top": "1"}).status_code == 200
    # ...so the Rust process on the same state file does not send a 101st: it gives up
    # after its second of waiting (exit code 3), and the server saw no 429.
    shared = call(state_url)
    assert shared.returncode == 3, shared.stderr
    assert "quota would not admit" in shared.stderr
    assert sim.stats()["throttled"] == 0
    # One on a state file of its own counts alone, sends, and collects the 429.
    alone = call((tmp_path / "other.q").as_uri())
    assert alone.returncode == 3, alone.stderr
    assert sim.stats()["throttled"] >= 1
