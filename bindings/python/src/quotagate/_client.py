"""The client of the Defender for Endpoint API: requests wait for the quota instead of
collecting 429s; tokens, retries and paging are the library's work."""

from __future__ import annotations

import functools
import json as _json
import math
import numbers
import os
import time
from ctypes import byref, c_size_t, c_uint16, c_uint32, c_void_p
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from . import _builder, _convert
from ._errors import DETAIL_FIELDS, AuthError, Error, HTTPError, error_from
from ._handle import NativeHandle
from ._hunting import HUNTING_PATH, HuntingResult
from ._limiter import Limiter, Rate
from ._native import (
    QG_ASSERTION_PS256,
    QG_ASSERTION_RS256,
    QG_DONE,
    QG_ERR_AUTH,
    QG_HUNTING_BUDGET_FAIL,
    QG_HUNTING_BUDGET_WAIT,
    QG_OK,
    TOKEN_SOURCE_FN,
    borrowed_bytes,
    cloud_names,
    lib,
    read_text,
    take_string,
)
from ._runner import Shared, runner
from ._stats import ClientStats, client_stats

#: ``(method or None for any, path pattern, [(calls, seconds), ...])``, e.g.
#: ``("POST", "/api/machines/{id}/isolate", [(100, 60)])``.
Route = Tuple[Optional[str], str, Sequence[Rate]]
#: Query parameters: a mapping or a sequence of pairs; a list value repeats the name.
Params = Union[Mapping[str, Any], Sequence[Tuple[str, Any]]]
#: A raw body: bytes as they are, str as UTF-8.
Body = Union[bytes, bytearray, str]
#: A certificate or key file: a path (str or os.PathLike), or PEM text.
PathOrPem = Union[str, "os.PathLike[str]"]
#: A token provider: returns ``(access_token, expires_in_seconds)``.
TokenProvider = Callable[[], Tuple[str, Union[int, float]]]


class AccessTokenLike(Protocol):
    """What a credential's ``get_token`` returns (azure-identity's ``AccessToken``)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> Union[int, float]:
        """The instant the token expires, in seconds since the epoch."""
        ...


class TokenCredential(Protocol):
    """azure-identity's ``TokenCredential`` protocol (``DefaultAzureCredential``,
    ``ClientSecretCredential``, ...): ``get_token(*scopes)``."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...

#: ``(method or None for any, path pattern, most calls under way at once)``, e.g.
#: ``("POST", "/api/machines/{id}/runliveresponse", 10)``; 0 lifts a cap.
InFlightCap = Tuple[Optional[str], str, int]
#: What a hunting query does while the run-time budget is spent.
HUNTING_BUDGET_POLICIES = {"wait": QG_HUNTING_BUDGET_WAIT, "fail": QG_HUNTING_BUDGET_FAIL}

#: The names ``cloud=`` takes (case-insensitive), as the library lists them.
CLOUDS = cloud_names()
#: The values ``assertion_algorithm=`` takes.
ASSERTION_ALGORITHMS = {"PS256": QG_ASSERTION_PS256, "RS256": QG_ASSERTION_RS256}

DEFAULT_BASE_URL = "https://api.securitycenter.microsoft.com"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"


class Headers(Mapping[str, str]):
    """The headers of a response: a read-only mapping with case-insensitive names.
    A header sent several times gives its values joined by ``", "``;
    :meth:`get_all` gives them one by one."""

    def __init__(self, pairs: Iterable[Tuple[str, str]]) -> None:
        self._pairs = list(pairs)
        self._joined: Dict[str, Tuple[str, str]] = {}
        for name, value in self._pairs:
            key = name.lower()
            if key in self._joined:
                first, before = self._joined[key]
                self._joined[key] = (first, f"{before}, {value}")
            else:
                self._joined[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._joined[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._joined.values())

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> List[str]:
        """Every value of the header ``name``, in the order received."""
        key = name.lower()
        return [v for n, v in self._pairs if n.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class Response:
    """A final HTTP answer (after the library's waits and retries).

    Any status is a response; :meth:`raise_for_status` turns an error status into
    :class:`~quotagate.HTTPError`.
    """

    def __init__(
        self,
        status_code: int,
        headers: Headers,
        content: bytes,
        attempts: int,
        *,
        method: str = "",
        path: str = "",
        details: Optional[Mapping[str, str]] = None,
    ) -> None:
        #: The HTTP status code.
        self.status_code = status_code
        #: The headers, case-insensitive.
        self.headers = headers
        #: The body, as bytes.
        self.content = content
        #: How many attempts the library made for this answer (retries included).
        self.attempts = attempts
        #: The request's method and path, for messages.
        self.method = method
        self.path = path
        self._details: Dict[str, str] = dict(details or {})

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status_code < 400

    @property
    def text(self) -> str:
        """The body decoded with the charset of its Content-Type (UTF-8 by default)."""
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, "replace")
        except LookupError:
            return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.content)

    def raise_for_status(self) -> "Response":
        """Raises :class:`~quotagate.HTTPError` for a status of 400 or more, with the
        server's error code, message, target and request id; returns self otherwise."""
        if self.ok:
            return self
        details = dict(self._details)
        details.setdefault("status", str(self.status_code))
        details.setdefault("attempts", str(self.attempts))
        # The library words the message (status, server code and message, target).
        text = details.get("summary") or f"the server answered HTTP {self.status_code}"
        if self.method or self.path:
            text += f" ({self.method} {self.path})"
        raise HTTPError(text, result=0, details=details)

    def __repr__(self) -> str:
        return f"<quotagate.Response [{self.status_code}]>"


_T = TypeVar("_T")
_U = TypeVar("_U")
_R_co = TypeVar("_R_co", covariant=True)

#: A blocking native call made interruptible: the call, what cancels it, and the
#: :class:`Shared` that frees its native objects (``runner.run(*call)``).
_Call = Tuple[Callable[[], _T], Callable[[], object], Shared]


class _Send(Protocol[_R_co]):
    """``get``, ``post``, ... of a client: its ``request`` with the HTTP method given."""

    def __call__(
        self,
        path: str,
        params: Optional[Params] = None,
        json: Any = None,
        data: Optional[Body] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        deadline: Optional[Union[int, float]] = None,
    ) -> _R_co: ...


class _Method(Generic[_R_co]):
    """``get = _Method[Response]("GET")``: the client's ``request`` with that method,
    ``client.get(path, params, json, data, headers, deadline=...)``; ``_R_co`` is what
    ``request`` returns."""

    def __init__(self, method: str) -> None:
        self._method = method
        self.__doc__ = f'``request("{method}", ...)``.'

    @overload
    def __get__(self, client: None, owner: type) -> "_Method[_R_co]": ...

    @overload
    def __get__(self, client: object, owner: type) -> _Send[_R_co]: ...

    def __get__(self, client: Any, owner: Any) -> Any:
        if client is None:
            return self
        send = functools.partial(client.request, self._method)
        send.__doc__ = self.__doc__
        return send

    def __call__(self, client: Any, *args: Any, **kwargs: Any) -> _R_co:
        """``Client.get(client, path, ...)``, as a method called through its class."""
        result: _R_co = client.request(self._method, *args, **kwargs)
        return result


class Client(NativeHandle):
    """A client of the Defender for Endpoint API that stays inside its quotas.

    Give ``tenant_id`` and ``client_id`` with ``client_secret`` or ``certificate`` (an
    app registration: the library gets and refreshes the tokens), or ``access_token``
    (a fixed token), or ``token_provider`` (a function that hands out tokens).

    :param cloud: the cloud by name: ``"commercial"`` (the default), a commercial region
        (``"us"``, ``"eu"``, ``"uk"``, ``"au"``, ``"swa"``, ``"ina"``, ``"aea"``) or a US
        government cloud (``"gcc"``, ``"gcc-high"``, ``"dod"``); it sets the login
        authority, the API base URL and the token scope, which ``authority``,
        ``base_url``, ``scope`` and ``resource`` override.
    :param allow_insecure_http: accept ``http://`` for a ``base_url`` or ``authority``
        that is not a loopback host (default False). Plain HTTP sends the client secret
        and every token unencrypted over the network, so the library refuses it unless
        this is set (for instance behind a TLS-terminating proxy on a network you trust);
        ``http://`` to ``localhost``, 127.0.0.0/8 or ``::1`` is always accepted. A URL
        with a ``user:password@`` is always refused.
    :param certificate: certificate credentials: a ``.pfx``/``.p12`` file (opened with
        ``password``), or a PEM file (with ``private_key``, a PEM key file, unless it
        holds the key as well), or PEM text (``private_key`` then PEM text too).
    :param assertion_algorithm: how certificate assertions are signed, ``"PS256"``
        (the default) or ``"RS256"``.
    :param credential: an object with ``get_token(*scopes)`` returning ``.token`` and
        ``.expires_on`` (seconds since the epoch): azure-identity's credentials, such as
        ``DefaultAzureCredential()``. The client asks it for a token of its scope
        (``https://api.securitycenter.microsoft.com/.default`` by default) when it needs
        one, and caches it like any other.
    :param token_provider: a function of no arguments returning
        ``(access_token, expires_in_seconds)``; the client calls it when it needs a
        token, from whichever thread sends a call, one call at a time. It must not use
        the library (this client, another, a limiter): such a call raises
        :class:`ReentrantCallError` inside it instead of waiting for itself. An exception
        from it fails that call with :class:`AuthError`.

    :param rates: the default quota of every endpoint, ``[(calls, seconds), ...]``
        (the library's default: 100 per 60 s and 1500 per hour).
    :param routes: quotas of particular endpoints,
        ``[(method or None, "/api/machines/{id}/isolate", [(calls, seconds)]), ...]``.
    :param limiter: a :class:`Limiter` to share quotas between clients.
    :param timeout: seconds per HTTP attempt.
    :param max_attempts: attempts per call at most, retries included.
    :param max_quota_wait: the longest a call waits for the quota, in seconds.
    :param margin: seconds that widen every window of the client's own limiter, to absorb
        the latency between admission and the server's count (not with ``limiter``).
    :param proxy: proxy URL (default: from ``HTTPS_PROXY``/``NO_PROXY``).
    :param max_pages: the most pages one :meth:`paginate` or :meth:`pages` run follows
        (the library's default: 100,000); past it the run raises :class:`PagingError`, as
        it does at once when a next link leads back to a page already fetched.
    :param max_in_flight: caps on calls under way at once,
        ``[(method or None, "/api/machines/{id}/runliveresponse", 10), ...]``: a call
        beyond a cap waits its turn (live response is capped at 25 by default; 0 lifts
        a cap).
    :param hunting_run_time: the tenant's advanced hunting run-time budget,
        ``(seconds per rolling hour, seconds per rolling day)`` (default ``(600, 10800)``;
        0 turns a window off).
    :param hunting_budget_policy: ``"wait"`` (the default) holds hunting queries back
        while the budget is spent; ``"fail"`` raises :class:`ThrottledError` at once.
    :param store: share the quotas with every process that opens the same store,
        ``"file:///path/to/state.q"`` or ``"redis://host:6379/0?prefix=qg"`` (see
        :class:`Limiter`; not with ``limiter``).

    Use one client from any number of threads. Blocking calls are interruptible by
    Ctrl+C in the main thread.
    """

    _kind = "client"
    _share_hint = (
        "to share a quota between processes, give each process its own "
        "Client(..., store='file:///path/state.q') (or a redis:// store)"
    )

    def __init__(
        self,
        tenant_id: Optional[str] = None,
        client_id: Optional[str] = None,
        client_secret: Optional[str] = None,
        *,
        access_token: Optional[str] = None,
        base_url: Optional[str] = None,
        authority: Optional[str] = None,
        cloud: Optional[str] = None,
        allow_insecure_http: bool = False,
        certificate: Optional[PathOrPem] = None,
        private_key: Optional[PathOrPem] = None,
        password: Optional[str] = None,
        assertion_algorithm: Optional[str] = None,
        token_provider: Optional[TokenProvider] = None,
        credential: Optional[TokenCredential] = None,
        rates: Optional[Sequence[Rate]] = None,
        routes: Optional[Sequence[Route]] = None,
        limiter: Optional[Limiter] = None,
        timeout: Union[int, float] = 300,
        max_attempts: Optional[int] = None,
        max_quota_wait: Optional[Union[int, float]] = None,
        proxy: Optional[str] = None,
        scope: Optional[str] = None,
        resource: Optional[str] = None,
        connect_timeout: Optional[Union[int, float]] = None,
        max_body_bytes: Optional[int] = None,
        margin: Optional[Union[int, float]] = None,
        store: Optional[str] = None,
        max_pages: Optional[int] = None,
        max_in_flight: Optional[Sequence[InFlightCap]] = None,
        hunting_run_time: Optional[Tuple[Union[int, float], Union[int, float]]] = None,
        hunting_budget_policy: Optional[str] = None,
    ) -> None:
        # The keywords by name for the table of builder options, taken before any other
        # local variable exists.
        values: Dict[str, Any] = dict(locals())
        super().__init__()
        self._cloud = cloud
        if base_url is None and cloud is None:
            base_url = values["base_url"] = DEFAULT_BASE_URL
        if authority is None and cloud is None:
            values["authority"] = DEFAULT_AUTHORITY
        self._base_url = base_url
        self._scope = ""
        if credential is not None:
            if token_provider is not None:
                raise ValueError("give credential or token_provider, not both")
            if not callable(getattr(credential, "get_token", None)):
                kind = type(credential).__name__
                raise TypeError(
                    f"credential must have get_token(*scopes), as azure-identity's credentials"
                    f" do; {kind} has none"
                )
            values["token_provider"] = self._credential_provider(credential)
            self._auth = f"credential {type(credential).__name__}"
        elif token_provider is not None:
            self._auth = "token provider"
        elif certificate is not None:
            self._auth = "certificate"
        elif access_token is not None:
            self._auth = "access token"
        else:
            self._auth = "client secret"
        self._tenant_id = tenant_id
        pem_key = private_key if _is_pem(certificate) else None
        self._secrets = tuple(
            s
            for s in (client_secret, access_token, password, pem_key)
            if isinstance(s, str) and s
        )
        self._token_provider: Optional[_TokenCallback] = None
        # Which builder function takes the certificate depends on its key and password.
        values["certificate"] = (certificate, private_key, password)
        settings = _builder.calls(_OPTIONS, values)
        # The callback object must live as long as the native client: kept on self, whose
        # native memory is freed only when self is collected.
        self._token_provider = next(
            (args[0] for setter, args in settings if setter is _set_token_provider), None
        )
        # Keeps the Python object (and so the native handle) alive as long as the client.
        self._limiter = limiter
        client = _builder.build(
            lib.qg_client_builder_new,
            settings,
            lib.qg_client_builder_build,
            (),
            lib.qg_client_builder_free,
            self._check,
        )
        self._adopt(client)
        self._scope = read_text(lib.qg_client_token_scope, client) or ""

    def _credential_provider(self, credential: TokenCredential) -> TokenProvider:
        """A token provider over a credential: asks it for the client's scope (known once
        the client is built, before any token is needed)."""

        def provider() -> Tuple[str, float]:
            access = credential.get_token(self._scope)
            return access.token, float(access.expires_on) - time.time()

        return provider

    def _native_close(self, ptr: c_void_p) -> None:
        lib.qg_client_close(ptr)

    def _native_free(self, ptr: c_void_p) -> None:
        lib.qg_client_free(ptr)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        where = repr(self._base_url) if self._base_url is not None else f"cloud={self._cloud!r}"
        tenant = f" tenant_id={self._tenant_id!r}" if self._tenant_id else ""
        return f"<quotagate.Client {where}{tenant} auth={self._auth} {state}>"

    # -- errors ---------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _failure(self, code: int) -> Error:
        """The exception for a failed client call; call on the thread that failed."""
        error = error_from(code, with_details=True, redact=self._redact)
        provider = self._token_provider
        if isinstance(error, AuthError) and provider is not None and provider.failure is not None:
            # The provider's own exception, for the traceback; the library never saw it.
            # Only its type joins the text: its message may quote a token.
            kind = type(provider.failure).__name__
            error = AuthError(
                f"{error}: the token provider raised {kind}",
                result=error.result,
                details=error.details,
            )
            error.__cause__ = provider.failure
        return error

    def _check(self, code: int) -> None:
        if code != QG_OK:
            raise self._failure(code)

    # -- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: Optional[Params] = None,
        json: Any = None,
        data: Optional[Body] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        deadline: Optional[Union[int, float]] = None,
    ) -> Response:
        """Sends a request and returns the final answer, whatever its status.

        ``path`` is relative to ``base_url`` (``"/api/machines"``) or an absolute URL.
        ``json`` is sent as JSON, ``data`` as given (str as UTF-8); not both. The call
        waits for the quota, refreshes the token, and retries 429, 5xx and transport
        failures where that is safe.

        ``deadline`` (seconds) bounds everything the call does: the quota wait, the token
        fetch, every attempt, retries and backoff (``timeout`` bounds one attempt). When
        it passes, or a wait could not end before it, the call raises
        :class:`TimeoutError`.

        :raises ThrottledError: the server kept throttling beyond the allowed wait.
        :raises AuthError: no token could be obtained.
        :raises TransportError: the connection failed.
        :raises TimeoutError: the call's time ran out.
        """
        send, cancel, shared = self._exchange(method, path, params, json, data, headers, deadline)
        try:
            return runner.run(send, cancel, shared)
        finally:
            shared.release()

    get = _Method[Response]("GET")
    post = _Method[Response]("POST")
    put = _Method[Response]("PUT")
    patch = _Method[Response]("PATCH")
    delete = _Method[Response]("DELETE")

    def _exchange(
        self,
        method: str,
        path: str,
        params: Optional[Params],
        json: Any,
        data: Optional[Body],
        headers: Optional[Mapping[str, str]],
        deadline: Optional[Union[int, float]],
    ) -> _Call[Response]:
        """A request's native objects, for :func:`runner.run` or the asyncio pool."""
        prepared = _Prepared(method, path, params, json, data, headers, deadline)
        client = self._handle()
        req = self._new_request(prepared)
        return (
            lambda: self._send(client, req, method, path),
            lambda: lib.qg_request_cancel(req),
            Shared(lambda: lib.qg_request_free(req)),
        )

    def _send(self, client: c_void_p, req: c_void_p, method: str, path: str) -> Response:
        """Sends a native request (blocking); run on the thread that reads the error."""
        resp = c_void_p()
        code = lib.qg_client_send(client, req, byref(resp))
        if code != QG_OK:
            raise self._failure(code)
        return _take_response(resp, method, path)

    def _next(
        self, pages: c_void_p, next_fn: Callable[..., int], take: Callable[[c_void_p], _T]
    ) -> Optional[_T]:
        """The next element of a paged run, ``next_fn(pages, &out)`` taken by ``take``, or
        None after the last (blocking)."""
        out = c_void_p()
        code = next_fn(pages, byref(out))
        if code == QG_DONE:
            return None
        if code != QG_OK:
            raise self._failure(code)
        return take(out)

    def _next_item(self, pages: c_void_p) -> Optional[str]:
        """The next item's JSON text, or None after the last (blocking)."""
        return self._next(pages, lib.qg_pages_next_item, take_string)

    def hunt(
        self,
        query: str,
        *,
        path: str = HUNTING_PATH,
        deadline: Optional[Union[int, float]] = None,
    ) -> HuntingResult:
        """Runs an advanced hunting query and returns its rows, schema and statistics.
        The call goes through the hunting quota and the tenant's run-time budget like
        any hunting call.

        :raises HTTPError: the query was refused (a syntax error, a result too large).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        r = self.post(path, json={"Query": query}, deadline=deadline).raise_for_status()
        return HuntingResult(r.json())

    # -- paging ---------------------------------------------------------------------

    def paginate(
        self,
        path: str,
        params: Optional[Params] = None,
        *,
        deadline: Optional[Union[int, float]] = None,
    ) -> Iterator[Any]:
        """Yields the items of ``"value"`` of every page of a GET, following
        ``@odata.nextLink``; every page goes through the quota. ``deadline`` (seconds)
        bounds all the pages together, from the first page's request.

        :raises HTTPError: a page was answered with an error status.
        :raises PagingError: a next link led back to a page already fetched, or the list
            had more pages than ``max_pages``.
        :raises TimeoutError: the deadline passed.
        """
        prepared = _Prepared("GET", path, params, deadline=deadline)
        return self._iterate(self._handle(), prepared, self._next_item, _json.loads)

    def pages(
        self,
        path: str,
        params: Optional[Params] = None,
        *,
        deadline: Optional[Union[int, float]] = None,
    ) -> Iterator[Response]:
        """Yields every page of a GET as a :class:`Response`, following
        ``@odata.nextLink``. ``deadline`` (seconds) bounds all the pages together.

        :raises HTTPError: a page was answered with an error status.
        :raises TimeoutError: the deadline passed.
        """
        prepared = _Prepared("GET", path, params, deadline=deadline)

        def next_page(pages: c_void_p) -> Optional[Response]:
            return self._next(pages, lib.qg_pages_next, lambda r: _take_response(r, "GET", path))

        return self._iterate(self._handle(), prepared, next_page, lambda page: page)

    def _iterate(
        self,
        client: c_void_p,
        prepared: _Prepared,
        step: Callable[[c_void_p], Optional[_T]],
        convert: Callable[[_T], _U],
    ) -> Iterator[_U]:
        """The elements of a paged run: ``step`` takes the next one from the native pages
        (blocking, so run interruptibly), ``convert`` turns it into what is yielded."""
        # The native objects are made on the first next(): a generator never started
        # never runs its finally clauses.
        take, cancel, shared = self._walk(client, prepared, step)
        try:
            for found in iter(lambda: runner.run(take, cancel, shared), None):
                yield convert(found)
        finally:
            shared.release()

    def _walk(
        self, client: c_void_p, prepared: _Prepared, step: Callable[[c_void_p], Optional[_T]]
    ) -> _Call[Optional[_T]]:
        """A paged run's native objects, for :func:`runner.run` or the asyncio pool: the
        call that takes the next element, the call that cancels it, and what frees them."""
        req = self._new_request(prepared)
        pages = c_void_p()
        try:
            self._check(lib.qg_client_pages(client, req, byref(pages)))
        except BaseException:
            lib.qg_request_free(req)
            raise
        # One Shared frees the pages and the request.
        shared = Shared(lambda: lib.qg_pages_free(pages), lambda: lib.qg_request_free(req))
        return (lambda: step(pages)), (lambda: lib.qg_request_cancel(req)), shared

    # -- the rest -------------------------------------------------------------------

    def stats(self) -> ClientStats:
        """The client's counters: ``requests``, ``retries``, ``throttled``,
        ``token_requests`` and, per bucket, admissions, waits (``total_wait`` and
        ``longest_wait``), pauses and windows (``window``); durations in seconds, as
        :meth:`Limiter.stats` gives them."""
        out = c_void_p()
        self._check(lib.qg_client_stats_json(self._handle(), byref(out)))
        return client_stats(_json.loads(take_string(out)))

    def _new_request(self, prepared: "_Prepared") -> c_void_p:
        """A native request from checked arguments; the caller frees it."""
        req = c_void_p()
        self._check(lib.qg_request_new(prepared.method, prepared.path, byref(req)))
        try:
            for name, value in prepared.query:
                self._check(lib.qg_request_add_query(req, name, value))
            for name, value in prepared.headers:
                self._check(lib.qg_request_set_header(req, name, value))
            if prepared.body is not None:
                body = prepared.body
                self._check(lib.qg_request_set_body(req, body, len(body), prepared.content_type))
            if prepared.deadline_ms >= 0:
                self._check(lib.qg_request_set_deadline_ms(req, prepared.deadline_ms))
        except BaseException:
            lib.qg_request_free(req)
            raise
        return req


class _Prepared:
    """A request's arguments, checked and encoded before anything reaches the library."""

    __slots__ = ("method", "path", "query", "headers", "body", "content_type", "deadline_ms")

    def __init__(
        self,
        method: str,
        path: str,
        params: Optional[Params] = None,
        json: Any = None,
        data: Optional[Body] = None,
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[Union[int, float]] = None,
    ) -> None:
        self.method = _convert.text(method, "method")
        if not method:
            raise ValueError("method must not be empty")
        self.path = _convert.text(path, "path")
        if not path:
            raise ValueError("path must not be empty")
        self.query = _params(params)
        self.deadline_ms = _convert.timeout_ms(deadline, "deadline")
        header_list = _headers(headers)
        self.body: Optional[bytes] = None
        self.content_type: Optional[bytes] = None
        if json is not None and data is not None:
            raise ValueError("give json or data, not both")
        if json is not None:
            try:
                text = _json.dumps(json, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except TypeError as e:
                raise TypeError(f"json is not serialisable as JSON: {e}") from None
            except ValueError as e:  # NaN, infinity, a circular reference
                raise ValueError(f"json is not valid JSON: {e}") from None
            self.body = text.encode("utf-8")
        elif data is not None:
            if isinstance(data, str):
                self.body = data.encode("utf-8")
                self.content_type = b"text/plain; charset=utf-8"
            elif isinstance(data, (bytes, bytearray)):
                self.body = bytes(data)
                self.content_type = b"application/octet-stream"
            else:
                raise TypeError(f"data must be bytes or str, not {type(data).__name__}")
        if self.body is not None:
            # The body's type travels with the body, not as a second header.
            for name, value in header_list:
                if name.lower() == b"content-type":
                    self.content_type = value
            header_list = [(n, v) for n, v in header_list if n.lower() != b"content-type"]
        self.headers = header_list


def _is_pem(value: Any) -> bool:
    return isinstance(value, str) and "-----BEGIN" in value


def _path(value: Any, name: str) -> bytes:
    """A file path (str or os.PathLike of str) as UTF-8 for the library."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return _convert.text(value, name)


def _certificate_setting(
    certificate: Any, private_key: Any, password: Any
) -> Tuple[Any, ...]:
    """The builder call for ``certificate=``: PEM text, or a file of either kind (the
    library tells PEM from PFX by its content)."""
    if _is_pem(certificate):
        if password is not None:
            raise ValueError("password goes with a .pfx or .p12 certificate, not PEM text")
        key = None if private_key is None else _secret(private_key, "private_key")
        return lib.qg_client_builder_set_certificate_pem, _secret(certificate, "certificate"), key
    path = _path(certificate, "certificate")
    key_path = None if private_key is None else _path(private_key, "private_key")
    pw = None if password is None else _secret(password, "password")
    return lib.qg_client_builder_set_certificate_file, path, key_path, pw


def _algorithm(value: Any, name: str) -> int:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        return ASSERTION_ALGORITHMS[value.upper()]
    except KeyError:
        names = ", ".join(ASSERTION_ALGORITHMS)
        raise ValueError(f"{name} must be one of {names}, not {value!r}") from None


class _TokenCallback:
    """Wraps a Python token provider as a ``qg_token_source_fn``.

    The library calls :attr:`native` from its threads (ctypes takes the GIL), one call
    at a time per client; it hands the token to the library's sink, which copies it.
    Nothing may propagate into C: every exception becomes a failure return (the library
    never quotes a token); the exception itself is kept in :attr:`failure` and chained
    to the :class:`AuthError` the call raises.
    """

    def __init__(self, fn: TokenProvider) -> None:
        self._fn = fn
        self.failure: Optional[BaseException] = None
        self.native = TOKEN_SOURCE_FN(self._call)

    def _call(self, _user_data: Optional[int], sink: Optional[int]) -> int:
        try:
            token, ms = _token_result(self._fn())
            _ok(lib.qg_token_sink_set(sink, token, len(token), ms))
            self.failure = None
            return QG_OK
        except BaseException as e:  # noqa: B036 - never unwind into C
            self.failure = e
            return QG_ERR_AUTH


def _token_result(value: Any) -> Tuple[bytes, int]:
    """A provider's ``(token, expires_in_seconds)`` as UTF-8 bytes and milliseconds; the
    library's sink decides which tokens it takes. The messages never quote the token."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError("the token provider must return (access_token, expires_in_seconds)")
    token, expires = value
    if not isinstance(token, str):
        raise TypeError(f"the access token must be a str, not {type(token).__name__}")
    if isinstance(expires, bool) or not isinstance(expires, numbers.Real):
        raise TypeError(f"expires_in_seconds must be a number, not {type(expires).__name__}")
    seconds = float(expires)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expires_in_seconds must be above 0")
    ms = max(1, min(int(seconds * 1000.0), _convert.U64_MAX))
    return token.encode("utf-8"), ms


def _secret(value: Any, name: str) -> bytes:
    # _convert.text's messages name the argument, never its value.
    return _convert.text(value, name)


def _routes(routes: Any) -> List[Tuple[Optional[bytes], bytes, List[_convert.NativeRate]]]:
    if routes is None:
        return []
    if isinstance(routes, (str, bytes)) or not isinstance(routes, (list, tuple)):
        raise TypeError("routes must be a list of (method or None, path pattern, rates)")
    result = []
    for i, route in enumerate(routes):
        if not isinstance(route, (list, tuple)) or len(route) != 3:
            raise TypeError(f"routes[{i}] must be a (method or None, path pattern, rates) triple")
        method, pattern, rates = route
        result.append(
            (
                _convert.optional_text(method, f"routes[{i}] method"),
                _convert.text(pattern, f"routes[{i}] path pattern"),
                _convert.rates(rates, f"routes[{i}] rates"),
            )
        )
    return result


def _in_flight_cap(cap: Any) -> Tuple[Optional[bytes], bytes, int]:
    if isinstance(cap, (str, bytes)) or not isinstance(cap, (tuple, list)) or len(cap) != 3:
        raise TypeError("max_in_flight must be a list of (method or None, pattern, max) triples")
    method, pattern, most = cap
    m = None if method is None else _convert.text(method, "max_in_flight method")
    p = _convert.text(pattern, "max_in_flight pattern")
    return m, p, _convert.integer(most, "max_in_flight max", 0, _convert.U32_MAX)


def _query_value(value: Any, name: str) -> bytes:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode("ascii")
    return _convert.text(value, f"params[{name!r}]")


def _params(params: Any) -> List[Tuple[bytes, bytes]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        pairs = list(params.items())
    elif isinstance(params, (list, tuple)):
        pairs = list(params)
    else:
        raise TypeError(f"params must be a mapping or a list of pairs, not {type(params).__name__}")
    result = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError("params must be a mapping or a list of (name, value) pairs")
        name, value = pair
        n = _convert.text(name, "params name")
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        result += [(n, _query_value(v, name)) for v in values if v is not None]
    return result


def _headers(headers: Any) -> List[Tuple[bytes, bytes]]:
    if headers is None:
        return []
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
    # What a header may hold (RFC 9110) the library decides, before anything is sent.
    return [
        (_convert.text(name, "header name"), _convert.text(value, f"header {name!r}"))
        for name, value in headers.items()
    ]


def _read_response(resp: c_void_p, method: str, path: str) -> Response:
    """Copies a native response into a :class:`Response` (the caller frees it)."""
    status = c_uint16()
    _ok(lib.qg_response_status(resp, byref(status)))
    data, size = c_void_p(), c_size_t()
    _ok(lib.qg_response_body(resp, byref(data), byref(size)))
    content = borrowed_bytes(data, size.value)
    count = c_size_t()
    _ok(lib.qg_response_header_count(resp, byref(count)))
    pairs = []
    name, name_len, value, value_len = c_void_p(), c_size_t(), c_void_p(), c_size_t()
    for i in range(count.value):
        _ok(
            lib.qg_response_header_at(
                resp, i, byref(name), byref(name_len), byref(value), byref(value_len)
            )
        )
        pairs.append(
            (
                borrowed_bytes(name, name_len.value).decode("latin-1"),
                borrowed_bytes(value, value_len.value).decode("latin-1"),
            )
        )
    attempts = c_uint32()
    _ok(lib.qg_response_attempts(resp, byref(attempts)))
    details: Dict[str, str] = {}
    if status.value >= 400:
        for field, key in DETAIL_FIELDS.items():
            text = read_text(lib.qg_response_error_detail, resp, field)
            if text:
                details[key] = text
    return Response(
        status.value,
        Headers(pairs),
        content,
        attempts.value,
        method=method.upper(),
        path=path,
        details=details,
    )


def _take_response(resp: c_void_p, method: str, path: str) -> Response:
    """:func:`_read_response`, then frees the native response."""
    try:
        return _read_response(resp, method, path)
    finally:
        lib.qg_response_free(resp)


def _ok(code: int) -> None:
    if code != QG_OK:
        raise error_from(code)


# -- the builder's options ---------------------------------------------------------------


def _flag(value: Any, name: str) -> int:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return int(value)


def _timeout(value: Any, name: str) -> int:
    return _convert.seconds_to_ms(value, name, minimum_ms=1)


def _count(high: int) -> Callable[[Any, str], int]:
    """An int from 1 to ``high``."""

    def count(value: Any, name: str) -> int:
        return _convert.integer(value, name, 1, high)

    return count


def _certificate(value: Tuple[Any, Any, Any], name: str) -> List[_builder.Args]:
    """``(certificate, private_key, password)`` as the builder function for the
    certificate's kind and its arguments (see :func:`_set_certificate`)."""
    certificate, private_key, password = value
    if certificate is None:
        if private_key is not None or password is not None:
            raise ValueError("private_key and password go with certificate")
        return []
    return [_certificate_setting(certificate, private_key, password)]


def _set_certificate(builder: c_void_p, setter: _builder.NativeCall, *args: Optional[bytes]) -> int:
    return setter(builder, *args)


def _token_provider(value: Any, name: str) -> List[_builder.Args]:
    if value is None:
        return []
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    return [(_TokenCallback(value),)]


def _set_token_provider(builder: c_void_p, callback: _TokenCallback) -> int:
    code: int = lib.qg_client_builder_set_token_source(builder, callback.native, None)
    return code


def _default_rates(value: Any, name: str) -> List[_builder.Args]:
    return [] if value is None else list(_convert.rates(value, name))


def _route_rates(value: Any, name: str) -> List[_builder.Args]:
    return [
        (method, pattern, calls, window_ms)
        for method, pattern, route_rates in _routes(value)
        for calls, window_ms in route_rates
    ]


def _in_flight_caps(value: Any, name: str) -> List[_builder.Args]:
    return [_in_flight_cap(cap) for cap in value or ()]


def _hunting_run_time(value: Any, name: str) -> List[_builder.Args]:
    if value is None:
        return []
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be (seconds per hour, seconds per day)")
    per_hour, per_day = value
    return [
        (
            _convert.seconds_to_ms(per_hour, f"{name} per hour"),
            _convert.seconds_to_ms(per_day, f"{name} per day"),
        )
    ]


def _hunting_budget_policy(value: Any, name: str) -> int:
    if value not in HUNTING_BUDGET_POLICIES:
        names = ", ".join(repr(n) for n in HUNTING_BUDGET_POLICIES)
        raise ValueError(f"{name} must be one of {names}, not {value!r}")
    return HUNTING_BUDGET_POLICIES[value]


def _limiter_handle(value: Any, name: str) -> c_void_p:
    if not isinstance(value, Limiter):
        raise TypeError(f"{name} must be a quotagate.Limiter, not {type(value).__name__}")
    return value._handle()


_text = _builder.optional(_convert.text)
_seconds = _builder.optional(_convert.seconds_to_ms)

#: Every keyword of :class:`Client` that the builder takes, with its builder function and
#: how its value becomes that function's arguments, in the order applied. The cloud
#: comes first: base_url, authority, scope and resource override its parts. Which
#: credentials are enough, and what they may contain, the library decides.
_OPTIONS: Tuple[_builder.Option, ...] = (
    ("cloud", lib.qg_client_builder_set_cloud, _text),
    ("base_url", lib.qg_client_builder_set_base_url, _text),
    ("authority", lib.qg_client_builder_set_authority, _text),
    (
        "allow_insecure_http",
        lib.qg_client_builder_set_allow_insecure_http,
        _builder.required(_flag),
    ),
    ("certificate", _set_certificate, _certificate),
    (
        "assertion_algorithm",
        lib.qg_client_builder_set_assertion_algorithm,
        _builder.optional(_algorithm),
    ),
    ("token_provider", _set_token_provider, _token_provider),
    ("access_token", lib.qg_client_builder_set_access_token, _builder.optional(_secret)),
    ("tenant_id", lib.qg_client_builder_set_tenant_id, _text),
    ("client_id", lib.qg_client_builder_set_client_id, _text),
    ("client_secret", lib.qg_client_builder_set_client_secret, _builder.optional(_secret)),
    ("scope", lib.qg_client_builder_set_scope, _text),
    ("resource", lib.qg_client_builder_set_resource, _text),
    ("timeout", lib.qg_client_builder_set_timeout_ms, _builder.required(_timeout)),
    ("connect_timeout", lib.qg_client_builder_set_connect_timeout_ms, _builder.optional(_timeout)),
    ("proxy", lib.qg_client_builder_set_proxy, _text),
    ("store", lib.qg_client_builder_set_store, _text),
    (
        "max_body_bytes",
        lib.qg_client_builder_set_max_body_bytes,
        _builder.optional(_count(_convert.U64_MAX)),
    ),
    (
        "max_attempts",
        lib.qg_client_builder_set_max_attempts,
        _builder.optional(_count(_convert.U32_MAX)),
    ),
    ("max_pages", lib.qg_client_builder_set_max_pages, _builder.optional(_count(_convert.U64_MAX))),
    ("max_quota_wait", lib.qg_client_builder_set_max_quota_wait_ms, _seconds),
    ("margin", lib.qg_client_builder_set_margin_ms, _seconds),
    ("rates", lib.qg_client_builder_add_default_rate, _default_rates),
    ("routes", lib.qg_client_builder_add_route, _route_rates),
    ("max_in_flight", lib.qg_client_builder_set_max_in_flight, _in_flight_caps),
    ("hunting_run_time", lib.qg_client_builder_set_hunting_budget_ms, _hunting_run_time),
    (
        "hunting_budget_policy",
        lib.qg_client_builder_set_hunting_budget_policy,
        _builder.optional(_hunting_budget_policy),
    ),
    ("limiter", lib.qg_client_builder_set_limiter, _builder.optional(_limiter_handle)),
)
