"""Finds and loads libquotagate, and declares every C function the package calls.

The library is looked up, in order:

1. the file named by the ``QUOTAGATE_LIBRARY`` environment variable (and nothing else);
2. next to this module, where ``pip install`` puts it;
3. in a development checkout, ``$CARGO_TARGET_DIR/{release,debug}`` and then the
   repository's ``target/{release,debug}``.

It is loaded with plain :class:`ctypes.CDLL`, so the GIL is released during every call.
Every function gets its ``argtypes`` and ``restype`` from :data:`SIGNATURES`, the one
table of the C ABI on the Python side; calling a function missing from it is an error.
"""

from __future__ import annotations

import ctypes
import os
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    byref,
    c_char,
    c_char_p,
    c_double,
    c_int64,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Callable, FrozenSet, List, Optional, Sequence, Tuple

from ._version import __version__

#: Environment variable naming the library file to load instead of searching.
ENV_LIBRARY = "QUOTAGATE_LIBRARY"

# Result codes (include/quotagate.h); never renumbered.
QG_OK = 0
QG_ERR_NULL_ARGUMENT = 100
QG_ERR_INVALID_ARGUMENT = 101
QG_ERR_BUFFER_TOO_SMALL = 102
QG_ERR_PANIC = 103
QG_ERR_NOT_FOUND = 104
QG_DONE = 105
QG_ERR_VERSION_MISMATCH = 106
QG_ERR_REENTRANT_CALL = 107
QG_ERR_TIMEOUT = 200
QG_ERR_WOULD_BLOCK = 201
QG_ERR_CANCELLED = 202
QG_ERR_CLOSED = 203
QG_ERR_TOO_MANY_BUCKETS = 204
QG_PENDING = 205
QG_ERR_NOT_WAITING = 206
QG_ERR_STORE = 207
QG_ERR_HTTP_STATUS = 300
QG_ERR_TRANSPORT = 301
QG_ERR_THROTTLED = 302
QG_ERR_AUTH = 303
QG_ERR_BODY_TOO_LARGE = 304
QG_ERR_PAGING = 305
QG_ERR_IO = 400

# Bits of qg_features.
QG_FEATURE_BIT_SIM = 1
QG_FEATURE_BIT_PFX = 2
QG_FEATURE_BIT_REDIS = 4

# Fields of qg_bucket_stats_get.
QG_STAT_ADMITTED_CALLS = 0
QG_STAT_ADMITTED_UNITS = 1
QG_STAT_WAITED_CALLS = 2
QG_STAT_TOTAL_WAIT_US = 3
QG_STAT_LONGEST_WAIT_US = 4
QG_STAT_TIMEOUTS = 5
QG_STAT_CANCELLATIONS = 6
QG_STAT_REFUSALS = 7
QG_STAT_PAUSES = 8
QG_STAT_PAUSED_FOR_MS = 9
QG_STAT_QUEUED = 10
QG_STAT_IN_FLIGHT = 11
QG_STAT_EXPIRED_HOLDS = 12

# Fields of qg_last_error_detail and qg_response_error_detail.
QG_DETAIL_HTTP_STATUS = 0
QG_DETAIL_SERVER_CODE = 1
QG_DETAIL_SERVER_MESSAGE = 2
QG_DETAIL_TARGET = 3
QG_DETAIL_REQUEST_ID = 4
QG_DETAIL_RETRY_AFTER_MS = 5
QG_DETAIL_ATTEMPTS = 6
QG_DETAIL_SUMMARY = 7

# Algorithms of qg_client_builder_set_assertion_algorithm.
QG_ASSERTION_PS256 = 0
QG_ASSERTION_RS256 = 1

# Policies of qg_client_builder_set_hunting_budget_policy.
QG_HUNTING_BUDGET_WAIT = 0
QG_HUNTING_BUDGET_FAIL = 1

# qg_default_value: which default
QG_DEFAULT_HUNTING_BUDGET_PER_HOUR_MS = 1
QG_DEFAULT_HUNTING_BUDGET_PER_DAY_MS = 2
QG_DEFAULT_MAX_PAGES = 3
QG_DEFAULT_HOLD_LEASE_MS = 4
QG_DEFAULT_MAX_HOLD_LEASE_MS = 5
QG_DEFAULT_MAX_BUCKETS = 6
QG_DEFAULT_MAX_CALLS = 7
QG_DEFAULT_ATTEMPT_TIMEOUT_MS = 8
QG_DEFAULT_CONNECT_TIMEOUT_MS = 9
QG_DEFAULT_MAX_ATTEMPTS = 10
QG_DEFAULT_MAX_QUOTA_WAIT_MS = 11
QG_DEFAULT_MAX_BODY_BYTES = 12

# Log levels of qg_set_logger.
QG_LOG_ERROR = 1
QG_LOG_WARN = 2
QG_LOG_INFO = 3
QG_LOG_DEBUG = 4
QG_LOG_TRACE = 5

# Fields of qg_sim_info.
QG_SIM_URL = 0
QG_SIM_AUTHORITY = 1
QG_SIM_TENANT_ID = 2
QG_SIM_CLIENT_ID = 3
QG_SIM_CLIENT_SECRET = 4

# Styles of qg_sim_config_set_retry_after_style.
QG_SIM_RETRY_AFTER_SECONDS = 0
QG_SIM_RETRY_AFTER_HTTP_DATE = 1
QG_SIM_RETRY_AFTER_MS = 2
QG_SIM_RETRY_AFTER_X_MS = 3
QG_SIM_RETRY_AFTER_BODY_ONLY = 4
QG_SIM_RETRY_AFTER_NONE = 5

#: ``void (*qg_log_fn)(uint32_t level, const char *message, void *user_data)``
LOG_FN = CFUNCTYPE(None, c_uint32, c_char_p, c_void_p)

#: ``qg_result (*qg_token_fn)(void *user_data, char *token_buf, size_t token_len,
#: size_t *token_written, uint64_t *expires_in_ms)``; the buffer is a plain address
#: (c_void_p) so that the callback writes into the library's memory itself.
TOKEN_FN = CFUNCTYPE(c_uint32, c_void_p, c_void_p, c_size_t, POINTER(c_size_t), POINTER(c_uint64))

#: ``qg_result (*qg_token_source_fn)(void *user_data, qg_token_sink *sink)``
TOKEN_SOURCE_FN = CFUNCTYPE(c_uint32, c_void_p, c_void_p)

# Shorthands for the table. Handles are opaque: c_void_p in, POINTER(c_void_p) out.
_R = c_uint32  # qg_result
_H = c_void_p  # any handle
_OUT = POINTER(c_void_p)  # handle, char * or const uint8_t * out-parameter
_S = c_char_p  # NUL-terminated UTF-8 in
_BUF = POINTER(c_char)  # caller's text buffer
_PSIZE = POINTER(c_size_t)
_PU64 = POINTER(c_uint64)
_TEXT = [_BUF, c_size_t, _PSIZE]  # the (buf, len, written) tail of text getters

Signature = Tuple[str, Any, Sequence[Any]]

#: name, restype, argtypes of every C function the package may call.
SIGNATURES: List[Signature] = [
    # errors and version
    ("qg_last_error_message", _R, _TEXT),
    ("qg_last_error_detail", _R, [c_uint32, *_TEXT]),
    ("qg_result_str", c_char_p, [_R]),
    ("qg_version", c_char_p, []),
    ("qg_version_number", c_uint32, []),
    ("qg_version_compatible", _R, [c_uint32]),
    ("qg_features", c_uint32, []),
    ("qg_feature_name", c_char_p, [c_uint32]),
    ("qg_cloud_name", c_char_p, [c_size_t]),
    ("qg_default_value", _R, [c_uint32, POINTER(c_uint64)]),
    ("qg_string_free", None, [c_void_p]),
    ("qg_set_logger", _R, [LOG_FN, c_uint32, c_void_p]),
    # limiter
    ("qg_limiter_builder_new", _R, [_OUT]),
    ("qg_limiter_builder_add_rate", _R, [_H, c_uint32, c_uint64]),
    ("qg_limiter_builder_set_margin_ms", _R, [_H, c_uint64]),
    ("qg_limiter_builder_set_margin", _R, [_H, c_uint64]),
    ("qg_limiter_builder_set_hold_lease_ms", _R, [_H, c_uint64]),
    ("qg_limiter_builder_set_max_buckets", _R, [_H, c_size_t]),
    ("qg_limiter_builder_set_store", _R, [_H, _S]),
    ("qg_limiter_builder_build", _R, [_H, _OUT]),
    ("qg_limiter_builder_free", None, [_H]),
    ("qg_limiter_acquire", _R, [_H, _S, c_uint32, c_int64]),
    ("qg_limiter_try_acquire", _R, [_H, _S, c_uint32, _PU64]),
    ("qg_limiter_wait_time", _R, [_H, _S, c_uint32, _PU64]),
    ("qg_limiter_enqueue", _R, [_H, _S, c_uint32, c_int64, _OUT]),
    ("qg_ticket_wait", _R, [_H, c_int64]),
    ("qg_ticket_cancel", _R, [_H]),
    ("qg_ticket_free", None, [_H]),
    ("qg_limiter_hold", _R, [_H, _S, c_uint32, c_int64, _OUT]),
    ("qg_limiter_try_hold", _R, [_H, _S, c_uint32, _PU64, _OUT]),
    ("qg_limiter_enqueue_hold", _R, [_H, _S, c_uint32, c_int64, _OUT]),
    ("qg_ticket_take_hold", _R, [_H, _OUT]),
    ("qg_hold_release", None, [_H]),
    ("qg_limiter_pause", _R, [_H, _S, c_uint64]),
    ("qg_limiter_set_rates", _R, [_H, _S, POINTER(c_uint32), _PU64, c_size_t]),
    ("qg_limiter_stats", _R, [_H, _S, _OUT]),
    ("qg_limiter_bind", _R, [_H, _S, c_uint32, _OUT]),
    ("qg_binding_try_acquire", _R, [_H]),
    ("qg_binding_free", None, [_H]),
    ("qg_limiter_close", _R, [_H]),
    ("qg_limiter_free", None, [_H]),
    ("qg_bucket_stats_get", _R, [_H, c_uint32, _PU64]),
    ("qg_bucket_stats_window_count", _R, [_H, _PSIZE]),
    ("qg_bucket_stats_window", _R, [_H, c_size_t, _PU64, _PU64, _PU64]),
    ("qg_bucket_stats_free", None, [_H]),
    # client builder
    ("qg_client_builder_new", _R, [_OUT]),
    ("qg_client_builder_set_base_url", _R, [_H, _S]),
    ("qg_client_builder_set_authority", _R, [_H, _S]),
    ("qg_client_builder_set_allow_insecure_http", _R, [_H, c_uint32]),
    ("qg_client_builder_set_tenant_id", _R, [_H, _S]),
    ("qg_client_builder_set_client_id", _R, [_H, _S]),
    ("qg_client_builder_set_client_secret", _R, [_H, _S]),
    ("qg_client_builder_set_cloud", _R, [_H, _S]),
    ("qg_client_builder_set_certificate_file", _R, [_H, _S, _S, _S]),
    ("qg_client_builder_set_certificate_pem_files", _R, [_H, _S, _S]),
    ("qg_client_builder_set_certificate_pem", _R, [_H, _S, _S]),
    ("qg_client_builder_set_certificate_pfx_file", _R, [_H, _S, _S]),
    ("qg_client_builder_set_assertion_algorithm", _R, [_H, c_uint32]),
    ("qg_client_builder_set_token_provider", _R, [_H, TOKEN_FN, c_void_p]),
    ("qg_client_builder_set_token_source", _R, [_H, TOKEN_SOURCE_FN, c_void_p]),
    ("qg_token_sink_set", _R, [_H, c_char_p, c_size_t, c_uint64]),
    ("qg_client_builder_set_access_token", _R, [_H, _S]),
    ("qg_client_builder_set_scope", _R, [_H, _S]),
    ("qg_client_builder_set_resource", _R, [_H, _S]),
    ("qg_client_builder_set_timeout_ms", _R, [_H, c_uint64]),
    ("qg_client_builder_set_connect_timeout_ms", _R, [_H, c_uint64]),
    ("qg_client_builder_set_proxy", _R, [_H, _S]),
    ("qg_client_builder_set_store", _R, [_H, _S]),
    ("qg_client_builder_set_max_body_bytes", _R, [_H, c_uint64]),
    ("qg_client_builder_set_max_attempts", _R, [_H, c_uint32]),
    ("qg_client_builder_set_max_pages", _R, [_H, c_uint64]),
    ("qg_client_builder_set_max_quota_wait_ms", _R, [_H, c_uint64]),
    ("qg_client_builder_set_margin_ms", _R, [_H, c_uint64]),
    ("qg_client_builder_add_default_rate", _R, [_H, c_uint32, c_uint64]),
    ("qg_client_builder_add_route", _R, [_H, _S, _S, c_uint32, c_uint64]),
    ("qg_client_builder_set_max_in_flight", _R, [_H, _S, _S, c_uint32]),
    ("qg_client_builder_set_hunting_budget_ms", _R, [_H, c_uint64, c_uint64]),
    ("qg_client_builder_set_hunting_budget_policy", _R, [_H, c_uint32]),
    ("qg_client_builder_set_limiter", _R, [_H, _H]),
    ("qg_client_builder_build", _R, [_H, _OUT]),
    ("qg_client_builder_free", None, [_H]),
    # requests and responses
    ("qg_request_new", _R, [_S, _S, _OUT]),
    ("qg_request_add_query", _R, [_H, _S, _S]),
    ("qg_request_set_header", _R, [_H, _S, _S]),
    ("qg_request_set_body", _R, [_H, c_void_p, c_size_t, _S]),
    ("qg_request_set_deadline_ms", _R, [_H, c_int64]),
    ("qg_request_cancel", _R, [_H]),
    ("qg_request_free", None, [_H]),
    ("qg_client_send", _R, [_H, _H, _OUT]),
    ("qg_response_status", _R, [_H, POINTER(c_uint16)]),
    ("qg_response_body", _R, [_H, _OUT, _PSIZE]),
    ("qg_response_header", _R, [_H, _S, _OUT, _PSIZE]),
    ("qg_response_header_count", _R, [_H, _PSIZE]),
    ("qg_response_header_at", _R, [_H, c_size_t, _OUT, _PSIZE, _OUT, _PSIZE]),
    ("qg_response_attempts", _R, [_H, POINTER(c_uint32)]),
    ("qg_response_error_detail", _R, [_H, c_uint32, *_TEXT]),
    ("qg_response_free", None, [_H]),
    # paging
    ("qg_client_pages", _R, [_H, _H, _OUT]),
    ("qg_pages_next", _R, [_H, _OUT]),
    ("qg_pages_next_item", _R, [_H, _OUT]),
    ("qg_pages_free", None, [_H]),
    # client
    ("qg_client_stats_json", _R, [_H, _OUT]),
    ("qg_client_token_scope", _R, [_H, *_TEXT]),
    ("qg_client_close", _R, [_H]),
    ("qg_client_free", None, [_H]),
    # simulator
    ("qg_sim_config_new", _R, [_OUT]),
    ("qg_sim_config_set_machines", _R, [_H, c_uint32]),
    ("qg_sim_config_set_limit_ms", _R, [_H, _S, c_uint32, c_uint64]),
    ("qg_sim_config_set_limit", _R, [_H, _S, c_uint32, c_double]),
    ("qg_sim_config_set_time_scale", _R, [_H, c_double]),
    ("qg_sim_config_set_token_lifetime_ms", _R, [_H, c_uint64]),
    ("qg_sim_config_set_faults", _R, [_H, c_double, c_double, c_uint64]),
    ("qg_sim_config_set_inbound_jitter_ms", _R, [_H, c_uint64]),
    ("qg_sim_config_set_retry_after_style", _R, [_H, c_uint32]),
    ("qg_sim_config_add_certificate_client", _R, [_H, _S, _S]),
    ("qg_sim_config_set_live_response_delay_ms", _R, [_H, c_uint64]),
    ("qg_sim_config_free", None, [_H]),
    ("qg_sim_start", _R, [_H, c_uint16, _OUT]),
    ("qg_sim_info", _R, [_H, c_uint32, *_TEXT]),
    ("qg_sim_issue_token", _R, [_H, _S, *_TEXT]),
    ("qg_sim_log_json", _R, [_H, _OUT]),
    ("qg_sim_stats_json", _R, [_H, _OUT]),
    ("qg_sim_stop", _R, [_H]),
    ("qg_sim_free", None, [_H]),
]


def library_name() -> str:
    """The file name of the shared library on this platform."""
    if sys.platform == "win32":
        return "quotagate.dll"
    if sys.platform == "darwin":
        return "libquotagate.dylib"
    return "libquotagate.so"


def _checkout_root(package_dir: Path) -> Optional[Path]:
    """The repository root when this package runs from its source tree, else None."""
    # bindings/python/src/quotagate -> the repository is four levels up.
    if len(package_dir.parents) < 4:
        return None
    root = package_dir.parents[3]
    if (root / "Cargo.toml").is_file() and (root / "include" / "quotagate.h").is_file():
        return root
    return None


def candidate_paths() -> List[Path]:
    """Every path where the library is looked for, in order."""
    override = os.environ.get(ENV_LIBRARY)
    if override:
        return [Path(override)]
    name = library_name()
    here = Path(__file__).resolve().parent
    paths = [here / name]
    root = _checkout_root(here)
    if root is not None:
        targets: List[Path] = []
        cargo_target = os.environ.get("CARGO_TARGET_DIR")
        if cargo_target:
            t = Path(cargo_target)
            targets.append(t if t.is_absolute() else root / t)
        targets.append(root / "target")
        for target in dict.fromkeys(targets):
            paths += [target / "release" / name, target / "debug" / name]
    return paths


def _load() -> Tuple[ctypes.CDLL, Path]:
    tried: List[str] = []
    for path in candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (not found)")
            continue
        try:
            return ctypes.CDLL(str(path)), path
        except OSError as e:
            tried.append(f"{path} ({e})")
    raise ImportError(
        "quotagate cannot find its native library "
        f"{library_name()}; tried:\n  " + "\n  ".join(tried) + "\n"
        f"Reinstall the package on a machine with a Rust toolchain (pip runs cargo), "
        f"or set {ENV_LIBRARY} to the library's path."
    )


class NativeLibrary:
    """The loaded library: one attribute per C function in :data:`SIGNATURES`.

    A function the loaded library does not export (an older build of the library) is
    replaced by a stub that raises :class:`RuntimeError` naming it, so the parts that
    do exist stay usable; :attr:`missing` lists them.
    """

    def __init__(self, cdll: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.missing: List[str] = []
        self._cdll = cdll
        for name, restype, argtypes in SIGNATURES:
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.append(name)
                setattr(self, name, _missing(name, path))
                continue
            fn.restype = restype
            fn.argtypes = list(argtypes)
            setattr(self, name, fn)

    def unconverted(self, name: str) -> Any:
        """A second function object of ``name`` (which must be in :data:`SIGNATURES`),
        with its ``restype`` but without ``argtypes``, for a hot path that passes
        exactly the ctypes objects the C function takes (a handle as a ``c_void_p``):
        ctypes then converts nothing. Anything else passed reaches C unchecked."""
        restype = next(r for n, r, _ in SIGNATURES if n == name)
        if name in self.missing:
            return getattr(self, name)
        fn = self._cdll[name]
        fn.restype = restype
        return fn

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that __init__ did not set: not in the table.
        raise AttributeError(f"{name} is not declared in quotagate._native.SIGNATURES")


def _missing(name: str, path: Path) -> Callable[..., Any]:
    def stub(*_args: Any) -> Any:
        raise RuntimeError(
            f"the quotagate library at {path} does not export {name}; "
            "rebuild it from the same sources as this package"
        )

    return stub


def _version_number(version: str) -> int:
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return major * 1_000_000 + minor * 1000 + patch


#: The header version this package was written against (its own version, which the
#: build keeps equal to the crate's): what it passes to qg_version_compatible.
HEADER_VERSION_NUMBER = _version_number(__version__)

lib = NativeLibrary(*_load())


def _check_version() -> None:
    """The library decides whether it serves this package (docs/abi.md)."""
    found = lib.qg_version().decode("ascii", "replace")
    if "qg_version_compatible" in lib.missing:
        raise ImportError(
            f"quotagate {__version__} cannot use the older library {found} at {lib.path}; "
            "reinstall the package so that both come from the same build"
        )
    if lib.qg_version_compatible(HEADER_VERSION_NUMBER) != QG_OK:
        raise ImportError(
            f"{last_error_message()} (library at {lib.path}, Python package {__version__}); "
            "reinstall the package so that both come from the same build"
        )


def features() -> FrozenSet[str]:
    """The names of the optional parts the loaded library was built with."""
    mask: int = lib.qg_features()
    names = set()
    for shift in range(32):
        name = lib.qg_feature_name(1 << shift) if mask & (1 << shift) else None
        if name:
            names.add(name.decode("ascii"))
    return frozenset(names)


def cloud_names() -> Tuple[str, ...]:
    """The clouds the client builder takes, as the library lists them."""
    names: List[str] = []
    while True:
        name = lib.qg_cloud_name(len(names))
        if name is None:
            return tuple(names)
        names.append(name.decode("ascii"))


def default_value(which: int) -> int:
    """The library's default of one setting (``QG_DEFAULT_*``), in the unit its name says."""
    out = c_uint64()
    if lib.qg_default_value(which, byref(out)) != QG_OK:
        raise ValueError(last_error_message())
    return out.value


def result_str(code: int) -> str:
    """The library's static description of a result code."""
    text: bytes = lib.qg_result_str(code)
    return text.decode("utf-8", "replace")


def read_text(fn: Callable[..., int], *args: Any) -> Optional[str]:
    """Calls a text getter ``fn(*args, buf, len, &written)``; None when it fails
    (``QG_ERR_NOT_FOUND``, ...). Grows the buffer when the text does not fit."""
    written = c_size_t(0)
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        rc = fn(*args, buf, size, ctypes.byref(written))
        if rc == QG_OK:
            return buf.raw[: written.value].decode("utf-8", "replace")
        if rc == QG_ERR_BUFFER_TOO_SMALL and written.value + 1 > size:
            size = written.value + 1
            continue
        return None


def last_error_message() -> str:
    """The text of the calling thread's last failure in the library ("" if none)."""
    return read_text(lib.qg_last_error_message) or ""


def take_string(p: c_void_p) -> str:
    """Copies a ``char *`` the library handed out, then frees it with qg_string_free."""
    if not p.value:
        return ""
    try:
        return ctypes.string_at(p.value).decode("utf-8", "replace")
    finally:
        lib.qg_string_free(p)


def borrowed_bytes(p: c_void_p, n: int) -> bytes:
    """Copies ``n`` bytes the library lends (valid only until its owner is freed)."""
    if n == 0 or not p.value:
        return b""
    return ctypes.string_at(p.value, n)


_check_version()
