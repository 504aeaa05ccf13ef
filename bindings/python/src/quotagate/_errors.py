"""The exceptions of quotagate, and the one place where result codes become them."""

from __future__ import annotations

import builtins
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type

from . import _native
from ._native import lib

__all__ = [
    "Error",
    "InvalidArgumentError",
    "TimeoutError",
    "CancelledError",
    "ClosedError",
    "TooManyBucketsError",
    "HTTPError",
    "ThrottledError",
    "AuthError",
    "TransportError",
    "BodyTooLargeError",
    "PagingError",
    "ReentrantCallError",
    "NativeIOError",
    "FeatureError",
    "require_feature",
]


class Error(Exception):
    """The root of every quotagate exception.

    ``str(e)`` is the library's message for the failure. :attr:`result` is the library's
    result code (``QG_ERR_*``), and :attr:`details` holds what the library knows about a
    failed HTTP call (empty for other failures), with keys ``status``, ``code``,
    ``message``, ``target``, ``request_id``, ``retry_after_ms``, ``attempts`` and
    ``summary`` (the library's whole message), each present when known.
    """

    def __init__(
        self, message: str, *, result: int = 0, details: Optional[Mapping[str, str]] = None
    ) -> None:
        super().__init__(message)
        self.result = result
        self.details: Dict[str, str] = dict(details or {})

    def __reduce__(self) -> Tuple[Callable[..., "Error"], Tuple[Any, ...]]:
        return (_rebuild, (type(self), str(self), self.result, self.details))


def _rebuild(cls: Type[Error], message: str, result: int, details: Dict[str, str]) -> Error:
    return cls(message, result=result, details=details)


class InvalidArgumentError(Error, ValueError):
    """The library refused an argument's value (also a :class:`ValueError`)."""


class TimeoutError(Error, builtins.TimeoutError):
    """A deadline passed, or could not be met, before the call was admitted or done
    (also the builtin :class:`TimeoutError`)."""


class CancelledError(Error):
    """The wait or request was cancelled."""


class ClosedError(Error):
    """The limiter, client or simulator is closed."""


class TooManyBucketsError(Error):
    """The limiter holds its maximum number of buckets, none of them idle."""


class StoreError(Error):
    """The shared quota store failed: unreachable until the call's deadline (at once with
    ``on_unavailable=fail``), a damaged or newer-format state file, or wrong settings.
    No call was admitted without it."""


class _HTTPDetails(Error):
    """Typed views of :attr:`Error.details` for failures that involve an HTTP answer."""

    @property
    def status(self) -> Optional[int]:
        """The HTTP status code, or None."""
        return _int(self.details.get("status"))

    @property
    def code(self) -> Optional[str]:
        """``error.code`` from the answer's body (e.g. ``"ResourceNotFound"``), or None."""
        return self.details.get("code") or None

    @property
    def message(self) -> Optional[str]:
        """``error.message`` from the answer's body, or None."""
        return self.details.get("message") or None

    @property
    def target(self) -> Optional[str]:
        """``error.target`` from the answer's body (a correlation id), or None."""
        return self.details.get("target") or None

    @property
    def request_id(self) -> Optional[str]:
        """The ``request-id`` header of the answer, or None."""
        return self.details.get("request_id") or None

    @property
    def retry_after(self) -> Optional[float]:
        """The last ``Retry-After`` the server sent, in seconds, or None."""
        ms = _int(self.details.get("retry_after_ms"))
        return None if ms is None else ms / 1000.0

    @property
    def attempts(self) -> Optional[int]:
        """How many attempts the library made, or None."""
        return _int(self.details.get("attempts"))


class HTTPError(_HTTPDetails):
    """The server answered with an error status (4xx or 5xx)."""


class ThrottledError(_HTTPDetails):
    """The server kept throttling (429) until the attempts or the longest quota wait
    the client allows ran out."""


class AuthError(_HTTPDetails):
    """No access token could be obtained (the token endpoint refused the credentials)."""


class TransportError(_HTTPDetails):
    """The connection failed (DNS, TCP, TLS, reset, I/O); an ambiguous POST is never
    silently repeated."""


class BodyTooLargeError(TransportError):
    """The answer's body was larger than the client allows."""


class PagingError(Error):
    """Paging stopped: a ``@odata.nextLink`` led back to a page already fetched (following
    it would never end), or the list had more pages than the client's ``max_pages``."""


class ReentrantCallError(Error):
    """A client or limiter was used from inside one of the library's callbacks (a token
    provider, a log handler) on the thread that runs it: the call would wait for itself.
    A token provider must get its token some other way than through its own client."""


class NativeIOError(Error, builtins.OSError):
    """An input/output operation of the library failed, such as starting the simulator
    on a port that is taken (also the builtin :class:`OSError`)."""


class FeatureError(Error):
    """The loaded library was built without an optional part that the call needs
    (see :func:`quotagate.features`)."""


def require_feature(name: str, what: str) -> None:
    """Raises :class:`FeatureError` unless the loaded library has the feature ``name``."""
    built = _native.features()
    if name not in built:
        raise FeatureError(
            f"{what} needs the feature {name!r}, which the library at {lib.path} was built "
            f"without (it has: {', '.join(sorted(built)) or 'none'}); use a build of "
            f"libquotagate with the feature (cargo build --release --features {name})"
        )


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text else None
    except ValueError:
        return None


#: Result code -> exception class. Codes not listed become a plain :class:`Error`.
_CLASSES: Dict[int, Type[Error]] = {
    _native.QG_ERR_INVALID_ARGUMENT: InvalidArgumentError,
    _native.QG_ERR_TIMEOUT: TimeoutError,
    _native.QG_ERR_CANCELLED: CancelledError,
    _native.QG_ERR_CLOSED: ClosedError,
    _native.QG_ERR_TOO_MANY_BUCKETS: TooManyBucketsError,
    _native.QG_ERR_STORE: StoreError,
    _native.QG_ERR_HTTP_STATUS: HTTPError,
    _native.QG_ERR_TRANSPORT: TransportError,
    _native.QG_ERR_THROTTLED: ThrottledError,
    _native.QG_ERR_AUTH: AuthError,
    _native.QG_ERR_BODY_TOO_LARGE: BodyTooLargeError,
    _native.QG_ERR_PAGING: PagingError,
    _native.QG_ERR_REENTRANT_CALL: ReentrantCallError,
    _native.QG_ERR_IO: NativeIOError,
}

#: QG_DETAIL_* field -> key in :attr:`Error.details`.
DETAIL_FIELDS: Dict[int, str] = {
    _native.QG_DETAIL_HTTP_STATUS: "status",
    _native.QG_DETAIL_SERVER_CODE: "code",
    _native.QG_DETAIL_SERVER_MESSAGE: "message",
    _native.QG_DETAIL_TARGET: "target",
    _native.QG_DETAIL_REQUEST_ID: "request_id",
    _native.QG_DETAIL_RETRY_AFTER_MS: "retry_after_ms",
    _native.QG_DETAIL_ATTEMPTS: "attempts",
    _native.QG_DETAIL_SUMMARY: "summary",
}


def last_error_details() -> Dict[str, str]:
    """The calling thread's details of its last failed client call (known fields only)."""
    details: Dict[str, str] = {}
    for field, name in DETAIL_FIELDS.items():
        try:
            value = _native.read_text(lib.qg_last_error_detail, field)
        except RuntimeError:  # a library without the client part
            return {}
        if value:
            details[name] = value
    return details


def error_from(
    code: int, *, with_details: bool = False, redact: Optional[Callable[[str], str]] = None
) -> Error:
    """The exception for a failed call's result code, with the calling thread's last
    error text (and client details when ``with_details``). Call it on the thread that
    made the failed call, right after it: the text is thread-local."""
    message = _native.last_error_message() or _native.result_str(code)
    details = last_error_details() if with_details else {}
    if redact is not None:
        message = redact(message)
        details = {k: redact(v) for k, v in details.items()}
    cls = _CLASSES.get(code, Error)
    return cls(message, result=code, details=details)


def check(code: int) -> None:
    """Raises the exception for ``code`` unless it is ``QG_OK``."""
    if code != _native.QG_OK:
        raise error_from(code)
