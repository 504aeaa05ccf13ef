"""Runs the library's blocking client calls so that Ctrl+C still works.

Python runs signal handlers only in the main thread and only between bytecodes, so a
main thread blocked inside a long native call (a quota wait, a retry) would ignore
Ctrl+C until the call returns. Here the main thread hands the call to a helper thread
and waits for it in 50 ms slices; on KeyboardInterrupt (or any exception) it asks the
library to cancel the call, waits for the helper to finish, and re-raises. Other
threads call the library directly: they never receive KeyboardInterrupt.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")

_SLICE_S = 0.05


class _Task(Generic[T]):
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the waiting thread
            self.error = e
        finally:
            self.done.set()


class _Runner:
    """One daemon helper thread for the main thread's calls, plus a fresh daemon thread
    for a call made while the helper is busy (a call from a signal handler)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._tasks: Optional["queue.SimpleQueue[_Task[object]]"] = None

    def _helper_loop(self, tasks: "queue.SimpleQueue[_Task[object]]") -> None:
        while True:
            tasks.get().run()

    def run(self, fn: Callable[[], T], cancel: Callable[[], object]) -> T:
        """Returns ``fn()``; in the main thread runs it on a helper thread and calls
        ``cancel()`` when the wait is interrupted. ``fn`` must read the library's
        thread-local error text itself (it runs on the helper thread)."""
        if threading.current_thread() is not threading.main_thread():
            return fn()
        task: _Task[T] = _Task(fn)
        with self._lock:
            shared = not self._busy
            if shared:
                self._busy = True
                if self._tasks is None:
                    self._tasks = queue.SimpleQueue()
                    threading.Thread(
                        target=self._helper_loop,
                        args=(self._tasks,),
                        name="quotagate-main-calls",
                        daemon=True,
                    ).start()
                tasks = self._tasks
        try:
            if shared:
                tasks.put(task)  # type: ignore[arg-type]
            else:
                threading.Thread(target=task.run, name="quotagate-call", daemon=True).start()
            try:
                while not task.done.wait(_SLICE_S):
                    pass
            except BaseException:
                cancel()
                while not task.done.is_set():
                    try:
                        task.done.wait(_SLICE_S)
                    except BaseException:  # a second Ctrl+C: the cancel is on its way
                        pass
                raise
        finally:
            if shared:
                with self._lock:
                    self._busy = False
        if task.error is not None:
            raise task.error
        return task.result  # type: ignore[return-value]


runner = _Runner()
