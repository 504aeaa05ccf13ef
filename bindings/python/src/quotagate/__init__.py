"""quotagate keeps scripts inside the Microsoft Defender for Endpoint API quotas.

- :class:`Limiter`: an exact rolling-window rate limiter by key, with FIFO waiting.
- :class:`Client`: an HTTP client for the Defender API that waits its turn instead of
  collecting 429s, caches tokens, retries safely and follows pages;
  :class:`AsyncClient`: the same for asyncio.
- :mod:`quotagate.testing`: a local simulator of the API for offline tests.

The work is done by the native library ``libquotagate``; this package only translates.
"""

from __future__ import annotations

from typing import FrozenSet

from ._async import AsyncClient
from ._client import Client, Headers, Response, Route, TokenCredential
from ._errors import (
    AuthError,
    BodyTooLargeError,
    CancelledError,
    ClosedError,
    Error,
    FeatureError,
    HTTPError,
    InvalidArgumentError,
    NativeIOError,
    PagingError,
    ReentrantCallError,
    StoreError,
    ThrottledError,
    TimeoutError,
    TooManyBucketsError,
    TransportError,
)
from ._hunting import HuntingResult
from ._limiter import Binding, Hold, Limiter, Rate
from ._stats import BucketStats, ClientStats, LimiterStats, WindowStats
from ._logging import TRACE, set_log_level
from ._logging import _install as _install_logging
from ._native import features as _features
from ._native import lib as _lib
from ._version import __version__

__all__ = [
    "__version__",
    "AsyncClient",
    "AuthError",
    "Binding",
    "BodyTooLargeError",
    "BucketStats",
    "ClientStats",
    "CancelledError",
    "Client",
    "ClosedError",
    "Error",
    "FeatureError",
    "HTTPError",
    "Headers",
    "Hold",
    "HuntingResult",
    "InvalidArgumentError",
    "Limiter",
    "LimiterStats",
    "NativeIOError",
    "PagingError",
    "Rate",
    "ReentrantCallError",
    "Response",
    "Route",
    "StoreError",
    "ThrottledError",
    "TimeoutError",
    "TokenCredential",
    "TooManyBucketsError",
    "TransportError",
    "TRACE",
    "WindowStats",
    "features",
    "library_path",
    "library_version",
    "set_log_level",
]


def library_version() -> str:
    """The version of the loaded native library: of the same ABI series as
    :data:`__version__` and not older, which the library itself checked at import."""
    version: bytes = _lib.qg_version()
    return version.decode("ascii")


def library_path() -> str:
    """The path of the loaded native library."""
    return str(_lib.path)


def features() -> FrozenSet[str]:
    """The optional parts the loaded library was built with, by name: ``"sim"`` (the
    simulator of :mod:`quotagate.testing`), ``"pfx"`` (certificates from PFX files),
    ``"redis"`` (``redis://`` stores). A call that needs a missing part raises
    :class:`FeatureError` or an error whose message names the feature."""
    return _features()


# Public classes show as quotagate.X in reprs and tracebacks.
for _cls in (
    AsyncClient, AuthError, BodyTooLargeError, CancelledError, Client, ClosedError, Error,
    FeatureError, HTTPError, Headers, Hold, HuntingResult, InvalidArgumentError, Limiter,
    NativeIOError, PagingError, ReentrantCallError, Response, StoreError, ThrottledError,
    TimeoutError, TooManyBucketsError, TransportError,
):  # fmt: skip
    _cls.__module__ = __name__
del _cls

_install_logging()
