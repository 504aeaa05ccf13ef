"""The library's log reaches logging.getLogger("quotagate"); nothing raises into C."""

from __future__ import annotations

import logging
import subprocess

import pytest

import quotagate
from quotagate import _logging, _native

from conftest import PYTHON, requires_client, subprocess_env


def test_levels_map_to_python_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(quotagate.TRACE, logger="quotagate")
    for level in (
        _native.QG_LOG_ERROR,
        _native.QG_LOG_WARN,
        _native.QG_LOG_INFO,
        _native.QG_LOG_DEBUG,
        _native.QG_LOG_TRACE,
    ):
        _logging._forward(level, f"message {level}".encode(), None)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [
        ("quotagate", logging.ERROR, "message 1"),
        ("quotagate", logging.WARNING, "message 2"),
        ("quotagate", logging.INFO, "message 3"),
        ("quotagate", logging.DEBUG, "message 4"),
        ("quotagate", quotagate.TRACE, "message 5"),
    ]


def test_invalid_utf8_and_null_messages_are_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="quotagate")
    _logging._forward(_native.QG_LOG_INFO, b"bad \xff byte", None)
    _logging._forward(_native.QG_LOG_INFO, None, None)
    assert [r.getMessage() for r in caplog.records] == ["bad \ufffd byte", ""]


def test_a_failing_handler_never_raises_into_the_library() -> None:
    class Explode(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("boom")

    logger = logging.getLogger("quotagate")
    f = Explode()
    logger.addFilter(f)
    try:
        _logging._forward(_native.QG_LOG_ERROR, b"x", None)  # returns normally
    finally:
        logger.removeFilter(f)


def test_set_log_level() -> None:
    if "qg_set_logger" in _native.lib.missing:
        pytest.skip("the loaded library has no logging ABI")
    try:
        quotagate.set_log_level(None)
        quotagate.set_log_level(logging.WARNING)
        quotagate.set_log_level(quotagate.TRACE)
        with pytest.raises(TypeError):
            quotagate.set_log_level("DEBUG")  # type: ignore[arg-type]
    finally:
        quotagate.set_log_level(logging.DEBUG)


def test_native_levels_for_python_levels() -> None:
    assert _logging._native_level(logging.DEBUG) == _native.QG_LOG_DEBUG
    assert _logging._native_level(logging.INFO) == _native.QG_LOG_INFO
    assert _logging._native_level(logging.WARNING) == _native.QG_LOG_WARN
    assert _logging._native_level(logging.CRITICAL) == _native.QG_LOG_ERROR
    assert _logging._native_level(1) == _native.QG_LOG_TRACE


def test_without_logging_configured_nothing_reaches_stderr() -> None:
    code = (
        "from quotagate import _logging, _native\n"
        "_logging._forward(_native.QG_LOG_WARN, b'adopting that limit', None)\n"
        "_logging._forward(_native.QG_LOG_ERROR, b'an error', None)\n"
    )
    done = subprocess.run([PYTHON, "-c", code], env=subprocess_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""


@requires_client
def test_trace_adds_a_record_per_attempt(client: quotagate.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(quotagate.TRACE, logger="quotagate")
    quotagate.set_log_level(quotagate.TRACE)
    try:
        client.get("/api/machines", params={"$top": 1})
    finally:
        quotagate.set_log_level(logging.DEBUG)
    traces = [r.getMessage() for r in caplog.records if r.levelno == quotagate.TRACE]
    assert any("GET /api/machines: attempt 1 answered 200" in m for m in traces), traces
