"""The statistics of limiters and clients, typed; every duration in seconds (float)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, TypedDict


class WindowStats(TypedDict):
    """One rate of a bucket: ``used`` units inside the window now, of ``calls``, per
    ``window`` seconds (margin included)."""

    used: int
    calls: int
    window: float


class LimiterStats(TypedDict):
    """:meth:`Limiter.stats`: a snapshot of one bucket."""

    admitted_calls: int
    admitted_units: int
    waited_calls: int
    total_wait: float
    longest_wait: float
    timeouts: int
    cancellations: int
    refusals: int
    pauses: int
    paused_for: float
    queued: int
    in_flight: int
    expired_holds: int
    windows: List[WindowStats]


class BucketStats(TypedDict):
    """One bucket a client used, in :class:`ClientStats`."""

    admitted_calls: int
    waited_calls: int
    total_wait: float
    longest_wait: float
    pauses: int
    windows: List[WindowStats]


class ClientStats(TypedDict):
    """:meth:`Client.stats`: the client's counters, and its buckets by key."""

    requests: int
    retries: int
    throttled: int
    token_requests: int
    transport_failures: int
    learned_limits: int
    buckets: Dict[str, BucketStats]
    in_flight_peaks: Dict[str, int]
    hunting_run_hour: float
    hunting_run_day: float


def _seconds(value: Any) -> Any:
    """The library's JSON with every ``*_ms`` key (``hunting_run_ms_hour`` too) as the
    key without it, in seconds."""
    if isinstance(value, list):
        return [_seconds(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    out: Dict[str, Any] = {}
    for key, v in value.items():
        if key.endswith("_ms") and isinstance(v, (int, float)):
            out[key[:-3]] = v / 1000.0
        elif "_ms_" in key and isinstance(v, (int, float)):
            out[key.replace("_ms_", "_")] = v / 1000.0
        elif key == "buckets" or key == "in_flight_peaks":
            out[key] = {k: _seconds(b) for k, b in v.items()}
        else:
            out[key] = _seconds(v)
    return out


def client_stats(raw: Mapping[str, Any]) -> ClientStats:
    """The client's statistics from the library's JSON, durations in seconds."""
    result: ClientStats = _seconds(raw)
    return result
