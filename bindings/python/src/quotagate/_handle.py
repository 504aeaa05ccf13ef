"""The base class of every object that owns a native handle."""

from __future__ import annotations

import abc
import threading
from ctypes import c_void_p
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Optional, Type, TypeVar

from ._errors import ClosedError
from ._native import QG_ERR_CLOSED

_Self = TypeVar("_Self", bound="NativeHandle")


class NativeHandle(abc.ABC):
    """Owns one native handle: :meth:`close` is idempotent and thread-safe, the object
    is a context manager, and ``__del__`` closes it when the program forgot to.

    Handles that threads share (limiter, client, simulator) are closed at once by
    :meth:`close` (waiters wake up with :class:`ClosedError`) but their memory is freed
    only when the Python object goes away, so that a call racing with ``close()`` on
    another thread never sees a freed pointer: it reaches the closed library object and
    gets :class:`ClosedError`. Any method used after ``close()`` raises
    :class:`ClosedError` without calling the library.

    A handle has one owner: ``copy.copy``, ``copy.deepcopy`` and ``pickle`` raise
    :class:`TypeError` (two owners of one native handle would free it twice). Share the
    object itself between threads; between processes, see :attr:`_share_hint`.
    """

    #: What the handle is, for messages ("limiter", "client", ...).
    _kind: ClassVar[str] = "handle"
    #: Keep the memory until the object is collected (handles shared by threads).
    _free_on_collect: ClassVar[bool] = True
    #: How to share what the handle does with another process, for the pickle error.
    _share_hint: ClassVar[str] = "create a new one in each process"

    _ptr: Optional[c_void_p] = None
    _closed: bool = True

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _adopt(self, ptr: c_void_p) -> None:
        """Takes ownership of a handle the library just created."""
        self._ptr = ptr
        self._closed = False

    def _native_close(self, ptr: c_void_p) -> None:
        """Releases what the handle holds (threads, sockets, waiters); it stays valid."""

    @abc.abstractmethod
    def _native_free(self, ptr: c_void_p) -> None:
        """Frees the handle's memory; never called twice. Each kind of handle calls its
        own free function."""

    def _handle(self) -> c_void_p:
        """The live handle, or :class:`ClosedError` once closed."""
        ptr = self._ptr
        if self._closed or ptr is None:
            raise ClosedError(f"the {self._kind} is closed", result=QG_ERR_CLOSED)
        return ptr

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Closes the object; calling it again does nothing. Thread-safe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ptr = self._ptr
            if ptr is None:
                return
            self._native_close(ptr)
            if not self._free_on_collect:
                self._ptr = None
                self._native_free(ptr)

    def __copy__(self) -> NoReturn:
        raise TypeError(
            f"a quotagate.{type(self).__name__} cannot be copied: it owns a native handle; "
            "share the object itself, it is safe to use from any number of threads"
        )

    def __deepcopy__(self, memo: Any) -> NoReturn:
        self.__copy__()

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(
            f"a quotagate.{type(self).__name__} cannot be pickled: its native handle lives "
            f"in this process only; {self._share_hint}"
        )

    def __enter__(self: _Self) -> _Self:
        self._handle()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __del__(self) -> None:
        ptr = self._ptr
        if ptr is None:
            return
        self._ptr = None
        try:
            if not self._closed:
                self._closed = True
                self._native_close(ptr)
            self._native_free(ptr)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
