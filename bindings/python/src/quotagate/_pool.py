"""Runs the library's blocking calls for asyncio without blocking the event loop.

A few daemon threads (at most ``size``, started when there is work for them) take calls
from a queue; each call's outcome is handed to its future on the loop's thread. The
library waits in its own FIFO queues, so the threads sleep in native waits: nothing
polls. When the awaiting task is cancelled, ``cancel`` (``qg_request_cancel``,
``qg_ticket_cancel``) makes the call give up its place at once; a call still in the
queue here is never run. A call already on the wire is abandoned: the loop does not
wait for it, and since the threads are daemons, neither does the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, Optional, TypeVar

from ._runner import Shared

T = TypeVar("T")


def _settle(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Job:
    __slots__ = ("fn", "future", "loop", "shared")

    def __init__(
        self,
        fn: Callable[[], Any],
        future: "asyncio.Future[Any]",
        loop: asyncio.AbstractEventLoop,
        shared: Optional[Shared],
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.shared = shared

    def run(self) -> None:
        result: Any = None
        error: Optional[BaseException] = None
        try:
            if self.future.cancelled():
                return
            try:
                result = self.fn()
            except BaseException as e:  # handed to the awaiting task
                error = e
            try:
                self.loop.call_soon_threadsafe(_settle, self.future, result, error)
            except RuntimeError:  # the loop is closed: nobody awaits this call any more
                pass
        finally:
            if self.shared is not None:
                self.shared.release()


class Pool:
    """At most ``size`` daemon threads that run blocking calls for event loops."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: "queue.SimpleQueue[Optional[_Job]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0
        self._stopped = False

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.run()
            finally:
                with self._lock:
                    self._busy -= 1

    async def run(
        self,
        fn: Callable[[], T],
        cancel: Callable[[], object],
        shared: Optional[Shared] = None,
    ) -> T:
        """Returns ``fn()`` run on a pool thread. If the awaiting task is cancelled,
        calls ``cancel()`` and raises at once, leaving the call to end on its thread.
        ``fn`` must read the library's thread-local error text itself, and every native
        object it uses must be in ``shared`` (or outlive the call by other means)."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[T]" = loop.create_future()
        if shared is not None:
            shared.hold()
        with self._lock:
            if self._stopped:
                if shared is not None:
                    shared.release()
                raise RuntimeError("the worker pool is stopped")
            self._busy += 1
            start = self._busy > self._threads and self._threads < self._size
            if start:
                self._threads += 1
            self._jobs.put(_Job(fn, future, loop, shared))
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()
        try:
            return await future
        except asyncio.CancelledError:
            cancel()
            raise

    def stop(self) -> None:
        """Ends the threads once the calls queued before have run."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)


#: The pool of :meth:`Limiter.acquire_async`.
limiter_pool = Pool(16, "quotagate-async-acquire")
