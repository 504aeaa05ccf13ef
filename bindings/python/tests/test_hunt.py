"""``hunt(query)``: rows, schema and statistics, through the hunting quota."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any, Dict, List, Optional

import pytest

import quotagate
from quotagate import Client
from quotagate.testing import Simulator

from conftest import requires_client
from test_async import make_async_client

pytestmark = requires_client


def test_hunt_returns_rows_schema_and_stats(client: Client) -> None:
    result = client.hunt("DeviceInfo | take 5")
    assert len(result) == 5 and len(result.rows) == 5
    assert "DeviceId" in result.columns
    assert all(set(row) == set(result.columns) for row in result)
    assert "ExecutionTime" in result.stats
    assert repr(result) == f"<quotagate.HuntingResult 5 rows, {len(result.columns)} columns>"
    # The hunting endpoint's own bucket, not the default one.
    assert any(key.endswith("|hunting") for key in client.stats()["buckets"])


def test_a_refused_query_raises_http_error(client: Client) -> None:
    with pytest.raises(TypeError):
        client.hunt(42)  # type: ignore[arg-type]
    with pytest.raises(quotagate.HTTPError):
        client.hunt("DeviceInfo | take 5", path="/api/machines/nothing/hunt")


def test_to_pandas_builds_a_frame_or_names_the_missing_package(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = client.hunt("DeviceInfo | take 3")
    monkeypatch.setitem(sys.modules, "pandas", None)  # an import of pandas fails
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()
    made: Dict[str, Any] = {}

    def data_frame(rows: List[Dict[str, Any]], columns: Optional[List[str]]) -> str:
        made.update(rows=rows, columns=columns)
        return "frame"

    fake = types.ModuleType("pandas")
    fake.DataFrame = data_frame  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", fake)
    assert result.to_pandas() == "frame"
    assert made == {"rows": result.rows, "columns": result.columns}


def test_async_hunt(sim: Simulator) -> None:
    async def main() -> int:
        async with make_async_client(sim) as api:
            return len(await api.hunt("DeviceInfo | take 4"))

    assert asyncio.run(main()) == 4
