"""Forwards the library's log (waits, retries, token refreshes) to the standard
:mod:`logging` module, as the logger ``"quotagate"``."""

from __future__ import annotations

import atexit
import logging
from typing import Any, List, Optional

from ._errors import Error, check
from ._native import (
    LOG_FN,
    QG_LOG_DEBUG,
    QG_LOG_ERROR,
    QG_LOG_INFO,
    QG_LOG_TRACE,
    QG_LOG_WARN,
    lib,
)

#: Python level of the library's trace messages (below ``logging.DEBUG``).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

logger = logging.getLogger("quotagate")
# A library's logger: shown where the application configures logging, silent elsewhere
# (without a handler, Python's last resort would print warnings on stderr).
logger.addHandler(logging.NullHandler())

_PYTHON_LEVELS = {
    QG_LOG_ERROR: logging.ERROR,
    QG_LOG_WARN: logging.WARNING,
    QG_LOG_INFO: logging.INFO,
    QG_LOG_DEBUG: logging.DEBUG,
    QG_LOG_TRACE: TRACE,
}

# Every callback ever registered stays referenced: the library may still be calling an
# old one on another thread while a new one replaces it.
_callbacks: List[Any] = []


def _forward(level: int, message: Optional[bytes], _user_data: Any) -> None:
    # Called by the library from any thread; an exception must never reach C.
    try:
        py_level = _PYTHON_LEVELS.get(level, logging.DEBUG)
        if logger.isEnabledFor(py_level):
            logger.log(py_level, "%s", (message or b"").decode("utf-8", "replace"))
    except BaseException:  # noqa: B036 - nothing may propagate into the library
        pass


def _native_level(py_level: int) -> int:
    if py_level <= TRACE:
        return QG_LOG_TRACE
    if py_level <= logging.DEBUG:
        return QG_LOG_DEBUG
    if py_level <= logging.INFO:
        return QG_LOG_INFO
    if py_level <= logging.WARNING:
        return QG_LOG_WARN
    return QG_LOG_ERROR


def set_log_level(level: Optional[int] = logging.DEBUG) -> None:
    """Sets the most detailed level of the library's messages that are forwarded to
    ``logging.getLogger("quotagate")`` (``logging.DEBUG`` by default, as at import;
    :data:`TRACE` for everything; None stops forwarding). The logger's own level and
    handlers still decide what is shown.

    :raises quotagate.InvalidArgumentError: the process already routes the library's
        log elsewhere (a Rust host with its own logger).
    """
    if level is None:
        check(lib.qg_set_logger(LOG_FN(), 0, None))
        return
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be a logging level (int) or None, not {type(level).__name__}")
    callback = LOG_FN(_forward)
    _callbacks.append(callback)
    check(lib.qg_set_logger(callback, _native_level(level), None))


def _install() -> None:
    try:
        set_log_level(logging.DEBUG)
    except (RuntimeError, Error):  # no logging part, or the host routes it elsewhere
        return
    # No calls into a finalizing interpreter: stop forwarding before it goes.
    atexit.register(_stop)


def _stop() -> None:
    try:
        set_log_level(None)
    except Exception:  # pragma: no cover
        pass
