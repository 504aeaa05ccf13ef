"""Runs the library's blocking client calls so that Ctrl+C still works.

Python runs signal handlers only in the main thread and only between bytecodes, so a
main thread blocked inside a long native call (a quota wait, a retry) would ignore
Ctrl+C until the call returns. Here the main thread hands the call to a helper thread
and waits for it in 50 ms slices; on KeyboardInterrupt (or any exception) it asks the
library to cancel the call, waits for the helper to finish, and re-raises. Other
threads call the library directly: they never receive KeyboardInterrupt.

After ``os.fork()`` the child has none of the parent's threads: the runner forgets the
parent's helper (``os.register_at_fork``), so the child's main thread starts its own.

The library ends a cancelled wait within about 50 ms, but an HTTP exchange already on
the wire only at its timeout. So the main thread waits at most :data:`CANCEL_GRACE_S`
for the helper; past that it re-raises anyway and leaves the call to finish on the
helper thread. Native objects that such a call uses are held by a :class:`Shared`,
freed by whichever of the two lets go last, so nothing is freed while in use.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")

#: Seconds between checks for Ctrl+C while the helper works.
SLICE_S = 0.05
#: Seconds the main thread waits for a cancelled call before leaving it behind.
CANCEL_GRACE_S = 0.5


class Shared:
    """Native objects used by the caller and possibly by a call on a helper thread:
    ``frees`` run (in order) when the last holder releases them."""

    def __init__(self, *frees: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._holders = 1  # the creator
        self._frees = frees

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                raise RuntimeError("native objects used after they were freed")
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            for free in self._frees:
                free()


class _Task(Generic[T]):
    __slots__ = ("fn", "shared", "done", "result", "error")

    def __init__(self, fn: Callable[[], T], shared: Optional[Shared]) -> None:
        self.fn = fn
        self.shared = shared
        self.done = threading.Event()
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the waiting thread
            self.error = e
        finally:
            if self.shared is not None:
                self.shared.release()
            self.done.set()


class _Runner:
    """One daemon helper thread for the main thread's calls, plus a fresh daemon thread
    for a call made while the helper is busy (a call left behind after Ctrl+C, or one
    made from a signal handler)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Forgets the helper thread (and a lock a parent's thread may have held)."""
        self._lock = threading.Lock()
        self._busy = False
        self._tasks: Optional["queue.SimpleQueue[_Task[object]]"] = None

    def _helper(self, tasks: "queue.SimpleQueue[_Task[object]]") -> None:
        while True:
            task = tasks.get()
            task.run()
            with self._lock:
                self._busy = False

    def _start(self, task: "_Task[object]") -> None:
        with self._lock:
            shared_helper = not self._busy
            if shared_helper:
                self._busy = True
                if self._tasks is None:
                    self._tasks = queue.SimpleQueue()
                    threading.Thread(
                        target=self._helper,
                        args=(self._tasks,),
                        name="quotagate-main-calls",
                        daemon=True,
                    ).start()
                self._tasks.put(task)
        if not shared_helper:
            threading.Thread(target=task.run, name="quotagate-call", daemon=True).start()

    def run(
        self, fn: Callable[[], T], cancel: Callable[[], object], shared: Optional[Shared] = None
    ) -> T:
        """Returns ``fn()``. In the main thread, runs it on a helper thread and calls
        ``cancel()`` when the wait is interrupted. ``fn`` must read the library's
        thread-local error text itself (it may run on the helper thread), and every
        native object it uses must be in ``shared`` (or outlive it by other means)."""
        if threading.current_thread() is not threading.main_thread():
            return fn()
        if shared is not None:
            shared.hold()
        task: _Task[T] = _Task(fn, shared)
        try:
            self._start(task)  # type: ignore[arg-type]
        except BaseException:
            if shared is not None:
                shared.release()
            raise
        try:
            while not task.done.wait(SLICE_S):
                pass
        except BaseException:
            cancel()
            try:
                task.done.wait(CANCEL_GRACE_S)
            except BaseException:  # a second Ctrl+C: stop waiting
                pass
            raise
        if task.error is not None:
            raise task.error
        return task.result  # type: ignore[return-value]


runner = _Runner()

if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    # A child inherits the helper's queue but not the helper: every call from its main
    # thread would wait for ever.
    os.register_at_fork(after_in_child=runner._reset)
