"""The asyncio client: :class:`Client`'s calls, awaited without blocking the loop."""

from __future__ import annotations

import json as _json
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Mapping, Optional, Type, Union

from ._client import Body, Client, Params, Response, _Method, _Prepared
from ._hunting import HUNTING_PATH, HuntingResult
from ._pool import Pool
from ._stats import ClientStats

#: Threads per client that run its calls; more tasks than this wait for a thread in
#: FIFO order, as they would in the quota's queue.
WORKERS = 32

Seconds = Union[int, float]


class AsyncClient:
    """:class:`Client` for asyncio: the same arguments, the same quota, awaitable calls.

    ``async with AsyncClient(...) as api: r = await api.get("/api/machines")``.

    Calls run on a few threads of the client's own, which sleep in the library's waits,
    so the event loop is never blocked and many tasks share the quota exactly as threads
    do. Cancelling a task that waits for quota gives up its place in the queue at once;
    cancelling one during an exchange abandons that exchange (it ends on its thread at
    the timeout) without holding up the loop or its shutdown.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = Client(*args, **kwargs)
        self._pool = Pool(WORKERS, "quotagate-async")

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._client.closed

    @property
    def sync(self) -> Client:
        """The blocking :class:`Client` underneath (the same quota and token cache)."""
        return self._client

    def close(self) -> None:
        """Closes the client: calls still waiting fail with :class:`ClosedError`."""
        self._client.close()
        self._pool.stop()

    async def aclose(self) -> None:
        """``close()``, awaitable."""
        self.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._client).replace("<quotagate.Client", "<quotagate.AsyncClient", 1)

    # -- requests -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        params: Optional[Params] = None,
        json: Any = None,
        data: Optional[Body] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        deadline: Optional[Seconds] = None,
    ) -> Response:
        """:meth:`Client.request`, awaited."""
        exchange = self._client._exchange(method, path, params, json, data, headers, deadline)
        send, cancel, shared = exchange
        try:
            return await self._pool.run(send, cancel, shared)
        finally:
            shared.release()

    get = _Method[Awaitable[Response]]("GET")
    post = _Method[Awaitable[Response]]("POST")
    put = _Method[Awaitable[Response]]("PUT")
    patch = _Method[Awaitable[Response]]("PATCH")
    delete = _Method[Awaitable[Response]]("DELETE")

    async def hunt(
        self,
        query: str,
        *,
        path: str = HUNTING_PATH,
        deadline: Optional[Seconds] = None,
    ) -> HuntingResult:
        """:meth:`Client.hunt`, awaited."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        r = await self.post(path, json={"Query": query}, deadline=deadline)
        return HuntingResult(r.raise_for_status().json())

    async def paginate(
        self,
        path: str,
        params: Optional[Params] = None,
        *,
        deadline: Optional[Seconds] = None,
    ) -> AsyncIterator[Any]:
        """``async for item in api.paginate(path)``: :meth:`Client.paginate`, awaited.
        ``deadline`` (seconds) bounds all the pages together."""
        client = self._client
        prepared = _Prepared("GET", path, params, deadline=deadline)
        take, cancel, shared = client._walk(client._handle(), prepared, client._next_item)
        try:
            while (text := await self._pool.run(take, cancel, shared)) is not None:
                yield _json.loads(text)
        finally:
            shared.release()

    def stats(self) -> ClientStats:
        """:meth:`Client.stats` (it never waits)."""
        return self._client.stats()
