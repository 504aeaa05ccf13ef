"""The client against the local simulator: the whole API, quota fidelity, throttling,
tokens, paging, faults, error details and statistics."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

import pytest

import quotagate
from quotagate import Client, Limiter

from quotagate.testing import Simulator

from conftest import make_client, requires_client

pytestmark = requires_client


def first_machine_id(client: Client) -> str:
    machine_id: str = client.get("/api/machines", params={"$top": 1}).json()["value"][0]["id"]
    return machine_id


def test_get_returns_a_response(client: Client) -> None:
    r = client.get("/api/machines", params={"$top": 10})
    assert r.status_code == 200 and r.ok
    assert r.attempts == 1
    body = r.json()
    assert len(body["value"]) == 10
    assert "@odata.nextLink" in body
    assert "application/json" in r.headers["Content-Type"]
    assert r.headers["content-type"] == r.headers["CONTENT-TYPE"]
    assert "content-type" in r.headers
    assert r.text.startswith("{")
    assert r.raise_for_status() is r
    assert repr(r) == "<quotagate.Response [200]>"


def test_one_machine_and_the_request_verbs(client: Client) -> None:
    machine_id = first_machine_id(client)
    assert client.get(f"/api/machines/{machine_id}").json()["id"] == machine_id
    r = client.post(f"/api/machines/{machine_id}/tags", json={"Value": "py-test", "Action": "Add"})
    assert r.status_code == 200
    assert "py-test" in r.json()["machineTags"]
    r = client.request(
        "POST",
        f"/api/machines/{machine_id}/isolate",
        json={"Comment": "isolated by a test", "IsolationType": "Selective"},
    )
    assert r.status_code == 201
    assert r.json()["type"] == "Isolate"


def test_a_route_gets_its_own_quota(sim: Simulator) -> None:
    routes = [("POST", "/api/machines/{id}/tags", [(2, 0.5)])]
    with make_client(sim, routes=routes) as client:
        machine_id = first_machine_id(client)
        started = time.monotonic()
        for _ in range(3):
            client.post(
                f"/api/machines/{machine_id}/tags", json={"Value": "r", "Action": "Add"}
            ).raise_for_status()
        assert time.monotonic() - started >= 0.45  # the third waited for the route's window
        windows = [b["windows"] for b in client.stats()["buckets"].values()]
        assert any(w[0]["calls"] == 2 and w[0]["window"] == 0.5 for w in windows)


def test_raw_data_body_with_its_content_type(client: Client) -> None:
    machine_id = first_machine_id(client)
    r = client.post(
        f"/api/machines/{machine_id}/tags",
        data='{"Value": "raw", "Action": "Add"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert "raw" in r.json()["machineTags"]


def test_hunting_query(client: Client) -> None:
    r = client.post("/api/advancedqueries/run", json={"Query": "DeviceInfo | take 5"})
    r.raise_for_status()
    assert len(r.json()["Results"]) == 5


def test_paginate_follows_every_page() -> None:
    with Simulator(machines=123) as sim, make_client(sim) as client:
        items = list(client.paginate("/api/machines", params={"$top": 50}))
        assert len(items) == 123
        assert len({m["id"] for m in items}) == 123
        listed = [e for e in sim.requests() if e["path"].startswith("/api/machines")]
        assert len(listed) == 3


def test_pages_yield_responses() -> None:
    with Simulator(machines=123) as sim, make_client(sim) as client:
        pages = list(client.pages("/api/machines", params={"$top": 50}))
        assert [len(p.json()["value"]) for p in pages] == [50, 50, 23]
        assert all(p.status_code == 200 for p in pages)


def test_the_page_limit_ends_a_run_with_paging_error() -> None:
    with Simulator(machines=123) as sim, make_client(sim, max_pages=3) as client:
        items = []
        with pytest.raises(quotagate.PagingError) as info:
            for item in client.paginate("/api/machines", params={"$top": 10}):
                items.append(item)
        assert len(items) == 30
        assert "more than 3 pages" in str(info.value)
        assert info.value.result == quotagate._native.QG_ERR_PAGING
    with pytest.raises(ValueError):
        Client(access_token="t", base_url="http://127.0.0.1:9", max_pages=0)


def test_a_next_link_to_the_same_page_raises_instead_of_looping() -> None:
    import http.server
    import json

    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host, port = self.server.server_address[:2]
            body = json.dumps(
                {"value": [1], "@odata.nextLink": f"http://{host}:{port}/api/machines"}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with Client(access_token="a-token", base_url=url, timeout=5) as client:
            pages = client.pages("/api/machines")
            assert next(pages).status_code == 200
            with pytest.raises(quotagate.PagingError) as info:
                next(pages)
            assert "already fetched" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_an_abandoned_generator_frees_its_pages(client: Client) -> None:
    items = client.paginate("/api/machines", params={"$top": 5})
    assert next(items)["id"]
    del items  # closed by the garbage collector
    never_started = client.paginate("/api/machines")
    del never_started


def test_http_error_details(client: Client) -> None:
    r = client.get("/api/machines/no-such-machine")
    assert r.status_code == 404 and not r.ok
    with pytest.raises(quotagate.HTTPError) as info:
        r.raise_for_status()
    e = info.value
    assert e.status == 404
    assert e.code == "ResourceNotFound"
    assert e.message and "no-such-machine" in e.message
    assert e.request_id
    assert e.attempts == 1
    assert "404" in str(e) and "ResourceNotFound" in str(e)


def test_an_error_status_while_paging_raises_http_error(client: Client) -> None:
    with pytest.raises(quotagate.HTTPError) as info:
        list(client.paginate("/api/machines", params={"$top": "many"}))
    assert info.value.status == 400
    assert info.value.result == quotagate._native.QG_ERR_HTTP_STATUS
    assert str(info.value)


def test_quota_fidelity_from_many_threads() -> None:
    # The server allows 20 calls per 0.6 s; the client is configured the same, with a
    # margin for the time between admission here and the count there (a sixth of the
    # scaled window; on the real 60 s windows a far smaller share).
    with Simulator(limit=20, window=60, time_scale=0.01) as sim:
        limiter = Limiter([(20, 0.6)], margin=0.1)
        with make_client(sim, rates=[(20, 0.6)], limiter=limiter) as client:
            machine_id = first_machine_id(client)

            def call(_: int) -> int:
                return client.get(f"/api/machines/{machine_id}").status_code

            started = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(call, range(80)))
            elapsed = time.monotonic() - started
            assert statuses == [200] * 80
            stats = sim.stats()
            assert stats["throttled"] == 0, stats
            assert elapsed > 3 * 0.6  # 81 calls need at least four windows
            assert client.stats()["throttled"] == 0


def test_a_stricter_server_gives_a_few_429s_then_the_client_learns() -> None:
    with Simulator(limit=10, window=60, time_scale=0.01) as sim:
        # The client believes in 100 per 0.6 s; the server allows 10.
        with make_client(sim, rates=[(100, 0.6)]) as client:
            machine_id = first_machine_id(client)

            def call(_: int) -> int:
                return client.get(f"/api/machines/{machine_id}").status_code

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(call, range(40)))
            assert statuses == [200] * 40
            throttled = sim.stats()["throttled"]
            # A few: the first burst, then a few at window edges (no margin here).
            assert 0 < throttled <= 20
            stats = client.stats()
            assert stats["throttled"] == throttled
            assert stats["learned_limits"] >= 1
            assert stats["retries"] >= throttled


@pytest.mark.parametrize("style", ["http-date", "ms", "x-ms", "body-only", "none"])
def test_every_retry_after_style_ends_in_success(style: str) -> None:
    with Simulator(limit=5, window=60, time_scale=0.01, retry_after=style) as sim:
        with make_client(sim, rates=[(50, 0.6)]) as client:
            machine_id = first_machine_id(client)
            for _ in range(12):
                assert client.get(f"/api/machines/{machine_id}").status_code == 200
            assert sim.stats()["throttled"] > 0


def test_throttled_error_when_the_quota_wait_runs_out() -> None:
    with Simulator(limit=1, window=3600) as sim:
        with make_client(sim, rates=[(100, 60)], max_quota_wait=0.2) as client:
            machine_id = first_machine_id(client)
            with pytest.raises(quotagate.ThrottledError) as info:
                client.get(f"/api/machines/{machine_id}")
            e = info.value
            assert e.result == quotagate._native.QG_ERR_THROTTLED
            assert e.status == 429
            assert e.retry_after is not None and e.retry_after > 1


def test_token_refresh() -> None:
    # Tokens live 6 s of API time = 0.06 s here; the client refreshes them as needed.
    with Simulator(time_scale=0.01, token_lifetime=6) as sim:
        with make_client(sim) as client:
            for _ in range(5):
                client.get("/api/machines", params={"$top": 1}).raise_for_status()
                time.sleep(0.08)
            assert client.stats()["token_requests"] >= 3
            assert sim.stats()["token_requests"] == client.stats()["token_requests"]


def test_access_token_instead_of_credentials(sim: Simulator) -> None:
    with Client(access_token="not-a-valid-token", base_url=sim.url) as client:
        r = client.get("/api/machines")
        assert r.status_code == 401


def test_wrong_secret_gives_auth_error_without_the_secret(sim: Simulator) -> None:
    secret = "wrong-secret-value-0123456789"
    with Client(
        sim.tenant_id, sim.client_id, secret, base_url=sim.url, authority=sim.authority
    ) as client:
        with pytest.raises(quotagate.AuthError) as info:
            client.get("/api/machines")
        text = str(info.value) + repr(info.value) + repr(info.value.details)
        assert secret not in text
        assert secret not in repr(client)


def test_faults_503_are_retried() -> None:
    with Simulator(error_rate=0.3, time_scale=0.01) as sim:
        with make_client(sim, max_attempts=10) as client:
            machine_id = first_machine_id(client)
            for _ in range(20):
                assert client.get(f"/api/machines/{machine_id}").status_code == 200
            assert sim.stats()["errors_503"] > 0
            assert client.stats()["retries"] >= sim.stats()["errors_503"]


def test_transport_error_names_no_secret() -> None:
    secret = "transport-secret-value-987"
    client = Client(
        "tenant",
        "client",
        secret,
        base_url="http://127.0.0.1:9",
        authority="http://127.0.0.1:9",
        max_attempts=1,
    )
    with pytest.raises((quotagate.TransportError, quotagate.AuthError)) as info:
        client.get("/api/machines")
    assert secret not in str(info.value) + repr(info.value.details)
    client.close()


def test_stats_has_every_counter(client: Client) -> None:
    client.get("/api/machines", params={"$top": 1})
    stats = client.stats()
    for key in ("requests", "retries", "throttled", "token_requests", "buckets"):
        assert key in stats
    assert stats["requests"] >= 1
    bucket = next(iter(stats["buckets"].values()))
    assert bucket["admitted_calls"] >= 1
    assert bucket["windows"]


def test_simulator_log_and_stats(sim: Simulator) -> None:
    with make_client(sim) as client:
        client.get("/api/machines", params={"$top": 2})
    log = sim.requests()
    api = [e for e in log if e["path"].startswith("/api/")]
    assert api and api[0]["method"] == "GET" and api[0]["status"] == 200
    assert {"at_ms", "class", "client_id", "reset"} <= set(api[0])
    stats = sim.stats()
    assert stats["requests"] >= 1 and "by_status" in stats


def test_inbound_jitter_delays_every_request_before_it_is_counted() -> None:
    with Simulator(inbound_jitter=0.05) as sim, make_client(sim) as client:
        for _ in range(5):
            client.get("/api/machines", params={"$top": 1})
        delays = [e["inbound_delay_ms"] for e in sim.requests()]
    assert len(delays) == 6, delays  # the token request waits too
    assert all(0 <= d <= 50 for d in delays), delays
    assert len(set(delays)) == len(delays), delays


def test_a_closed_client_raises_closed_error(sim: Simulator) -> None:
    client = make_client(sim)
    client.close()
    client.close()
    for call in (
        lambda: client.get("/api/machines"),
        lambda: client.stats(),
        lambda: client.paginate("/api/machines"),
        lambda: client.pages("/api/machines"),
    ):
        with pytest.raises(quotagate.ClosedError):
            call()


def test_close_ends_a_call_waiting_for_quota() -> None:
    with Simulator() as sim, make_client(sim, rates=[(1, 600)]) as client:
        first_machine_id(client)
        outcome: List[BaseException] = []

        def blocked() -> None:
            try:
                client.get("/api/machines")
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.2)
        client.close()
        t.join(2)
        assert not t.is_alive()
        assert isinstance(outcome[0], quotagate.ClosedError)


def test_stopped_simulator(sim: Simulator) -> None:
    url = sim.url
    sim.stop()
    sim.stop()
    assert sim.closed
    with pytest.raises(quotagate.ClosedError):
        sim.requests()
    assert url in repr(sim) and "stopped" in repr(sim)


def test_the_library_log_reaches_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="quotagate")
    with Simulator(limit=1, window=60, time_scale=0.01) as sim:
        with make_client(sim, rates=[(100, 0.6)]) as client:
            machine_id = first_machine_id(client)
            client.get(f"/api/machines/{machine_id}")
    records = [r for r in caplog.records if r.name == "quotagate"]
    assert any("429" in r.getMessage() for r in records), [r.getMessage() for r in records]


def test_client_and_limiter_stats_share_one_unit(client: Client) -> None:
    client.get("/api/machines", params={"$top": 1})
    stats = client.stats()
    (bucket,) = stats["buckets"].values()
    assert set(bucket) >= {"total_wait", "longest_wait", "windows"}
    assert not any(k.endswith("_ms") or "_ms_" in k for k in [*stats, *bucket])
    assert isinstance(bucket["total_wait"], float)
    assert bucket["windows"][0] == {"used": 1, "calls": 100, "window": 60.0}
    assert isinstance(stats["hunting_run_hour"], float)
    limiter_stats = Limiter([(100, 60)]).stats()
    assert set(limiter_stats["windows"][0]) == set(bucket["windows"][0])
