"""A local simulator of the Defender for Endpoint API, for offline tests and demos.

It serves the API and its token endpoint on 127.0.0.1, enforces quotas like the real
service (429 with Retry-After), issues tokens that expire, and can inject faults::

    from quotagate import Client
    from quotagate.testing import Simulator

    with Simulator(limit=10, window=1.0) as sim:
        client = Client(sim.tenant_id, sim.client_id, sim.client_secret,
                        base_url=sim.url, authority=sim.authority, rates=[(10, 1.0)])
        machines = list(client.paginate("/api/machines"))
"""

from __future__ import annotations

import json
import math
import numbers
import os
import ctypes
from ctypes import byref, c_size_t, c_void_p
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _builder, _convert
from ._errors import check, error_from, require_feature
from ._handle import NativeHandle
from ._limiter import Rate
from ._native import (
    QG_ERR_BUFFER_TOO_SMALL,
    QG_OK,
    QG_SIM_AUTHORITY,
    QG_SIM_CLIENT_ID,
    QG_SIM_CLIENT_SECRET,
    QG_SIM_RETRY_AFTER_BODY_ONLY,
    QG_SIM_RETRY_AFTER_HTTP_DATE,
    QG_SIM_RETRY_AFTER_MS,
    QG_SIM_RETRY_AFTER_NONE,
    QG_SIM_RETRY_AFTER_SECONDS,
    QG_SIM_RETRY_AFTER_X_MS,
    QG_SIM_TENANT_ID,
    QG_SIM_URL,
    lib,
    read_text,
    take_string,
)

__all__ = ["RETRY_AFTER_STYLES", "Simulator"]

#: How 429 answers tell the wait: ``retry_after=`` of :class:`Simulator`.
RETRY_AFTER_STYLES = {
    "seconds": QG_SIM_RETRY_AFTER_SECONDS,  # Retry-After: 12
    "http-date": QG_SIM_RETRY_AFTER_HTTP_DATE,  # Retry-After: <HTTP-date>
    "ms": QG_SIM_RETRY_AFTER_MS,  # retry-after-ms only
    "x-ms": QG_SIM_RETRY_AFTER_X_MS,  # x-ms-retry-after-ms only
    "body-only": QG_SIM_RETRY_AFTER_BODY_ONLY,  # no header; the body states the limit
    "none": QG_SIM_RETRY_AFTER_NONE,  # no hint at all
}

# The simulator's default class, when only one of limit and window is given.
_DEFAULT_LIMIT = 100
_DEFAULT_WINDOW = 60.0


class Simulator(NativeHandle):
    """Starts the simulator; :meth:`stop` (or leaving the ``with`` block) stops it.

    :param limit: calls per ``window`` of the default endpoint class (given alone, the
        other one is 100 calls or 60 s); None keeps the simulator's built-in limits.
    :param window: seconds of that window (simulated time, see ``time_scale``).
    :param limits: more limits per endpoint class, e.g. ``{"hunting": [(45, 60)]}``;
        the first rate of a class replaces its built-in limits.
    :param machines: how many machines the API lists.
    :param time_scale: real seconds per simulated second (0.01: a 60 s window lasts
        0.6 s).
    :param token_lifetime: seconds a token lives (None: the simulator's default).
    :param error_rate: share of calls answered with 503.
    :param reset_rate: share of calls whose connection is reset.
    :param latency: seconds added to every answer.
    :param inbound_jitter: the most seconds (real time, at most 10) a request waits on
        its way in, before it is counted: each request, token requests included, waits a
        delay drawn uniformly from 0 to ``inbound_jitter``, as a real server counts a call
        when it arrives. So a call sent exactly one window after another can arrive
        inside the same window, and a client that paces by its send instants meets
        429s. Every run draws the same delays; ``requests()`` shows each one as
        ``inbound_delay_ms``.
    :param port: TCP port on 127.0.0.1 (0: any free one).
    :param certificate_clients: applications that sign in with a certificate,
        ``{client_id: certificate}`` where the certificate is a PEM file's path or PEM
        text; the main ``client_id`` may be one of them.
    :param live_response_delay: seconds (simulated) that live response calls take.
    :param retry_after: how 429 answers tell the wait, one of
        :data:`RETRY_AFTER_STYLES` (``"seconds"``, ``"http-date"``, ``"ms"``,
        ``"x-ms"``, ``"body-only"``, ``"none"``).

    Attributes: ``url`` (the API's base URL), ``authority``, ``tenant_id``,
    ``client_id`` and ``client_secret`` (credentials the simulator accepts).
    """

    _kind = "simulator"
    _share_hint = "give the other process its url, authority and credentials instead"

    def __init__(
        self,
        limit: Optional[int] = None,
        window: Optional[Union[int, float]] = None,
        machines: int = 250,
        time_scale: Union[int, float] = 1.0,
        token_lifetime: Optional[Union[int, float]] = None,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        latency: Union[int, float] = 0.0,
        port: int = 0,
        *,
        limits: Optional[Mapping[str, Sequence[Rate]]] = None,
        retry_after: str = "seconds",
        certificate_clients: Optional[Mapping[str, Union[str, "os.PathLike[str]"]]] = None,
        live_response_delay: Union[int, float] = 0.0,
        inbound_jitter: Union[int, float] = 0.0,
    ) -> None:
        # The keywords by name for the table of configuration options, taken before any
        # other local variable exists.
        values: Dict[str, Any] = dict(locals())
        super().__init__()
        require_feature("sim", "quotagate.testing.Simulator")
        # Options that the library takes together.
        values["limits"] = (limit, window, limits)
        values["faults"] = (error_rate, reset_rate, latency)
        settings = _builder.calls(_OPTIONS, values)
        port = _convert.integer(port, "port", 0, 65535)
        new, start, free = lib.qg_sim_config_new, lib.qg_sim_start, lib.qg_sim_config_free
        sim = _builder.build(new, settings, start, (port,), free, check)
        self._adopt(sim)
        self.url: str = self._info(QG_SIM_URL)
        self.authority: str = self._info(QG_SIM_AUTHORITY)
        self.tenant_id: str = self._info(QG_SIM_TENANT_ID)
        self.client_id: str = self._info(QG_SIM_CLIENT_ID)
        self.client_secret: str = self._info(QG_SIM_CLIENT_SECRET)

    def _native_close(self, ptr: c_void_p) -> None:
        lib.qg_sim_stop(ptr)

    def _native_free(self, ptr: c_void_p) -> None:
        lib.qg_sim_free(ptr)

    def _info(self, field: int) -> str:
        text = read_text(lib.qg_sim_info, self._handle(), field)
        if text is None:
            raise RuntimeError(f"the simulator did not tell its field {field}")
        return text

    def __repr__(self) -> str:
        state = "stopped" if self._closed else "running"
        return f"<quotagate.testing.Simulator {getattr(self, 'url', '?')} {state}>"

    def stop(self) -> None:
        """Stops the simulator; calling it again does nothing."""
        self.close()

    def issue_token(self, client_id: Optional[str] = None) -> str:
        """A bearer token the simulator accepts for ``client_id`` (default: the main
        client id), valid for the token lifetime from now, without a token request: for
        tests of ``token_provider``."""
        name = self.client_id if client_id is None else client_id
        key = _convert.text(name, "client_id")
        sim = self._handle()
        written = c_size_t(0)
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            rc = lib.qg_sim_issue_token(sim, key, buf, size, byref(written))
            if rc == QG_OK:
                return buf.raw[: written.value].decode("utf-8")
            if rc == QG_ERR_BUFFER_TOO_SMALL and written.value + 1 > size:
                size = written.value + 1
                continue
            raise error_from(rc)

    def requests(self) -> List[Dict[str, Any]]:
        """Every request the simulator answered, in the order decided: dicts with
        ``at_ms`` (when it was counted, since the start), ``inbound_delay_ms`` (what it
        waited on its way in), ``method``, ``path``, ``status``, ``class``,
        ``client_id``, ``reset``, ``counted`` and ``retry_after_ms``."""
        out = c_void_p()
        check(lib.qg_sim_log_json(self._handle(), byref(out)))
        result: List[Dict[str, Any]] = json.loads(take_string(out))
        return result

    def stats(self) -> Dict[str, Any]:
        """Counters: ``requests``, ``throttled``, ``token_requests``, ``resets``,
        ``errors_503``, ``by_status`` and ``max_in_window`` per endpoint class."""
        out = c_void_p()
        check(lib.qg_sim_stats_json(self._handle(), byref(out)))
        result: Dict[str, Any] = json.loads(take_string(out))
        return result


def _certificate_pem(value: Any, name: str) -> bytes:
    """A certificate given as PEM text, or read from the PEM file at a path."""
    if isinstance(value, str) and "-----BEGIN" in value:
        return _convert.text(value, name)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a path or PEM text, not {type(value).__name__}")
    with open(value, "rb") as f:
        data = f.read()
    if b"\0" in data:
        raise ValueError(f"{name}: {value} is not a PEM file")
    return data


def _fraction(value: Any, name: str, *, positive: bool = False, at_most_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or (at_most_one and v > 1):
        bound = "between 0 and 1" if at_most_one else ("above 0" if positive else ">= 0")
        raise ValueError(f"{name} must be {bound}, not {value!r}")
    return v


# -- the configuration's options ---------------------------------------------------------


def _class_limits(value: Tuple[Any, Any, Any], name: str) -> List[_builder.Args]:
    """``(limit, window, limits)`` as ``(endpoint class, calls, window ms)`` each."""
    limit, window, limits = value
    class_limits: Dict[bytes, List[_convert.NativeRate]] = {}
    if limit is not None or window is not None:
        calls = _DEFAULT_LIMIT if limit is None else limit
        seconds = _DEFAULT_WINDOW if window is None else window
        class_limits[b"default"] = _convert.rates([(calls, seconds)], "limit/window")
    if limits is not None:
        if not isinstance(limits, Mapping):
            raise TypeError("limits must be a mapping of endpoint class to rates")
        for class_name, rates in limits.items():
            key = _convert.text(class_name, "limits key")
            class_limits.setdefault(key, [])
            class_limits[key] += _convert.rates(rates, f"limits[{class_name!r}]")
    return [
        (endpoint_class, calls, window_ms)
        for endpoint_class, class_rates in class_limits.items()
        for calls, window_ms in class_rates
    ]


def _faults(value: Tuple[Any, Any, Any], name: str) -> List[_builder.Args]:
    """``(error_rate, reset_rate, latency)`` as the library takes them."""
    error_rate, reset_rate, latency = value
    errors = _fraction(error_rate, "error_rate", at_most_one=True)
    resets = _fraction(reset_rate, "reset_rate", at_most_one=True)
    return [(errors, resets, _convert.seconds_to_ms(latency, "latency"))]


def _machines(value: Any, name: str) -> int:
    return _convert.integer(value, name, 0, _convert.U32_MAX)


def _time_scale(value: Any, name: str) -> float:
    return _fraction(value, name, positive=True)


def _lifetime(value: Any, name: str) -> int:
    return _convert.seconds_to_ms(value, name, minimum_ms=1)


def _live_response_delay(value: Any, name: str) -> List[_builder.Args]:
    """The delay in milliseconds; none for 0, the library's default."""
    ms = _convert.seconds_to_ms(value, name)
    return [(ms,)] if ms else []


def _certificate_clients(value: Any, name: str) -> List[_builder.Args]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of client id to certificate")
    return [
        (_convert.text(client_id, f"{name} key"), _certificate_pem(cert, f"{name}[{client_id!r}]"))
        for client_id, cert in value.items()
    ]


def _retry_after(value: Any, name: str) -> int:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if value not in RETRY_AFTER_STYLES:
        choices = ", ".join(RETRY_AFTER_STYLES)
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")
    return RETRY_AFTER_STYLES[value]


#: Every keyword of :class:`Simulator` that its configuration takes, with the function
#: that takes it and how its value becomes that function's arguments, in the order
#: checked; ``limits`` stands for limit, window and limits, ``faults`` for error_rate,
#: reset_rate and latency.
_OPTIONS: Tuple[_builder.Option, ...] = (
    ("limits", lib.qg_sim_config_set_limit_ms, _class_limits),
    ("machines", lib.qg_sim_config_set_machines, _builder.required(_machines)),
    ("time_scale", lib.qg_sim_config_set_time_scale, _builder.required(_time_scale)),
    ("token_lifetime", lib.qg_sim_config_set_token_lifetime_ms, _builder.optional(_lifetime)),
    ("faults", lib.qg_sim_config_set_faults, _faults),
    (
        "inbound_jitter",
        lib.qg_sim_config_set_inbound_jitter_ms,
        _builder.required(_convert.seconds_to_ms),
    ),
    ("live_response_delay", lib.qg_sim_config_set_live_response_delay_ms, _live_response_delay),
    ("certificate_clients", lib.qg_sim_config_add_certificate_client, _certificate_clients),
    ("retry_after", lib.qg_sim_config_set_retry_after_style, _builder.required(_retry_after)),
)
