"""The result of an advanced hunting query."""

from __future__ import annotations

import importlib
from typing import Any, Dict, Iterator, List, Mapping

#: The Defender for Endpoint API's hunting endpoint (Graph's is
#: ``/v1.0/security/runHuntingQuery``, which ``hunt(path=...)`` takes as well).
HUNTING_PATH = "/api/advancedqueries/run"


class HuntingResult:
    """The rows of an advanced hunting query: iterate over it, or read ``.rows`` (a list
    of dicts, one per row), ``.schema`` (``[{"Name": ..., "Type": ...}, ...]``) and
    ``.stats`` (the server's statistics, such as ``ExecutionTime``)."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        # Defender for Endpoint answers Results/Schema/Stats; Graph results/schema.
        def field(name: str, default: Any) -> Any:
            return body.get(name, body.get(name.lower(), default))

        self.rows: List[Dict[str, Any]] = list(field("Results", []))
        self.schema: List[Dict[str, Any]] = list(field("Schema", []))
        self.stats: Dict[str, Any] = dict(field("Stats", {}))

    @property
    def columns(self) -> List[str]:
        """The column names, in the schema's order."""
        return [str(c.get("Name", c.get("name", ""))) for c in self.schema]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<quotagate.HuntingResult {len(self.rows)} rows, {len(self.schema)} columns>"

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` with the schema's columns in order.
        Needs pandas, which quotagate does not install."""
        try:
            pandas = importlib.import_module("pandas")
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.rows, columns=self.columns or None)
