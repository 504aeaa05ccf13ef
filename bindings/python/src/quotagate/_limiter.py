"""The limiter: exact rolling windows, FIFO waiting, pauses, by key."""

from __future__ import annotations

import threading
from ctypes import byref, c_char_p, c_size_t, c_uint32, c_uint64, c_void_p
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union, cast

from . import _convert
from ._errors import check, error_from
from ._handle import NativeHandle
from ._native import (
    QG_ERR_TOO_MANY_BUCKETS,
    QG_ERR_WOULD_BLOCK,
    QG_OK,
    QG_PENDING,
    QG_STAT_ADMITTED_CALLS,
    QG_STAT_ADMITTED_UNITS,
    QG_STAT_CANCELLATIONS,
    QG_STAT_EXPIRED_HOLDS,
    QG_STAT_IN_FLIGHT,
    QG_STAT_LONGEST_WAIT_US,
    QG_STAT_PAUSED_FOR_MS,
    QG_STAT_PAUSES,
    QG_STAT_QUEUED,
    QG_STAT_REFUSALS,
    QG_STAT_TIMEOUTS,
    QG_STAT_TOTAL_WAIT_US,
    QG_STAT_WAITED_CALLS,
    lib,
)
from ._pool import limiter_pool
from ._runner import Shared
from ._stats import LimiterStats

#: ``(calls, seconds)``: at most ``calls`` units in any rolling window of ``seconds``.
Rate = Tuple[int, Union[int, float]]

# The main thread waits in short slices so that Ctrl+C interrupts it within 200 ms;
# other threads never receive KeyboardInterrupt and wake up less often.
_MAIN_SLICE_MS = 50
_THREAD_SLICE_MS = 1000
_KEY_CACHE_SIZE = 4096

# QG_STAT_* field -> (name in stats(), divisor to seconds or None for a count)
_STAT_FIELDS: List[Tuple[int, str, Optional[float]]] = [
    (QG_STAT_ADMITTED_CALLS, "admitted_calls", None),
    (QG_STAT_ADMITTED_UNITS, "admitted_units", None),
    (QG_STAT_WAITED_CALLS, "waited_calls", None),
    (QG_STAT_TOTAL_WAIT_US, "total_wait", 1e6),
    (QG_STAT_LONGEST_WAIT_US, "longest_wait", 1e6),
    (QG_STAT_TIMEOUTS, "timeouts", None),
    (QG_STAT_CANCELLATIONS, "cancellations", None),
    (QG_STAT_REFUSALS, "refusals", None),
    (QG_STAT_PAUSES, "pauses", None),
    (QG_STAT_PAUSED_FOR_MS, "paused_for", 1e3),
    (QG_STAT_QUEUED, "queued", None),
    (QG_STAT_IN_FLIGHT, "in_flight", None),
    (QG_STAT_EXPIRED_HOLDS, "expired_holds", None),
]

_try_acquire = lib.qg_limiter_try_acquire
_bind = lib.qg_limiter_bind
_binding_free = lib.qg_binding_free
# Called only with a Binding's prepared argument, which ctypes passes as it is.
_binding_try_acquire = lib.unconverted("qg_binding_try_acquire")
_main_thread = threading.main_thread()

# The most (key, cost) pairs a limiter keeps bound. Each binding keeps its bucket
# (counted in max_buckets), so the cache stays small; the oldest binding goes first.
_BOUND_CACHE_SIZE = 256
_ONE = 1


def _refused(rc: int) -> bool:
    """The answer of a try_acquire that did not admit: False, or the error."""
    if rc == QG_ERR_WOULD_BLOCK:
        return False
    raise error_from(rc)


class Limiter(NativeHandle):
    """A thread-safe limiter of calls by key.

    Each key has a bucket; every rate of a bucket applies at once, as an exact rolling
    window (a call is admitted only if, for every ``(calls, seconds)`` rate, the units
    admitted in the last ``seconds`` plus its cost stay within ``calls``). Callers that
    must wait queue in FIFO order.

    :param rates: the default rates of every bucket, e.g. ``[(100, 60), (1500, 3600)]``.
    :param margin: seconds added to every window (0 by default). :meth:`hold` already
        counts a call until its answer, which is exact as the server sees it; a margin is
        for servers whose clocks run differently.
    :param hold_lease: seconds a :meth:`hold` may stay unreleased before its units count
        from the lease's end (330 by default, at most 3600), so that a caller that never
        releases, or a process that dies holding units of a shared store, delays the
        others by one lease at most.
    :param max_buckets: the most buckets held at once (idle ones are dropped to make room).
    :param store: share every bucket with all processes that open the same store:
        ``"file:///var/lib/quotagate/tenant.q"`` (the processes of one host) or
        ``"redis://host:6379/0?prefix=qg"`` (many hosts; ``rediss://`` for TLS;
        ``redis+cluster://h1:6379,h2:6379/`` for a Redis Cluster). All
        take ``on_unavailable=wait|fail``. ``None`` keeps the buckets in this process.
        A malformed URL raises :class:`~quotagate.InvalidArgumentError`, a store that
        cannot be opened :class:`~quotagate.StoreError`.

    Use it from any number of threads. ``close()`` wakes every waiter with
    :class:`~quotagate.ClosedError`; it is also a context manager.
    """

    _kind = "limiter"
    _share_hint = (
        "to share a quota between processes, give each process its own "
        "Limiter(rates, store='file:///path/state.q') (or a redis:// store)"
    )

    def __init__(
        self,
        rates: Sequence[Rate],
        *,
        margin: Union[int, float] = 0.0,
        max_buckets: Optional[int] = None,
        store: Optional[str] = None,
        hold_lease: Optional[Union[int, float]] = None,
    ) -> None:
        super().__init__()
        # try_acquire's bindings: of cost 1 by key, of other costs by (key, cost); and
        # the pairs seen once (bound on their second call, so that keys used once never
        # pay for a binding). A forked child inherits them with the in-memory buckets
        # they point to, both copies.
        self._bound_one: Dict[str, Binding] = {}
        self._bound_pairs: Dict[Tuple[str, int], Binding] = {}
        self._seen: Dict[Tuple[str, int], None] = {}
        self._bind_lock = threading.Lock()
        native_rates = _convert.rates(rates)
        store_url = None if store is None else _convert.text(store, "store")
        margin_ms = _convert.seconds_to_ms(margin, "margin")
        lease_ms = None if hold_lease is None else _convert.seconds_to_ms(hold_lease, "hold_lease")
        if max_buckets is not None:
            max_buckets = _convert.integer(max_buckets, "max_buckets", 1, 2**63 - 1)
        builder = c_void_p()
        check(lib.qg_limiter_builder_new(byref(builder)))
        try:
            for calls, window_ms in native_rates:
                check(lib.qg_limiter_builder_add_rate(builder, calls, window_ms))
            check(lib.qg_limiter_builder_set_margin_ms(builder, margin_ms))
            if lease_ms is not None:
                check(lib.qg_limiter_builder_set_hold_lease_ms(builder, lease_ms))
            if max_buckets is not None:
                check(lib.qg_limiter_builder_set_max_buckets(builder, max_buckets))
            if store_url is not None:
                check(lib.qg_limiter_builder_set_store(builder, store_url))
            limiter = c_void_p()
            check(lib.qg_limiter_builder_build(builder, byref(limiter)))
        finally:
            lib.qg_limiter_builder_free(builder)
        self._adopt(limiter)
        self._rates = [(calls, ms / 1000.0) for calls, ms in native_rates]
        self._keys: Dict[str, Optional[c_char_p]] = {"": None}

    def _native_close(self, ptr: c_void_p) -> None:
        lib.qg_limiter_close(ptr)
        self._drop_bindings()

    def _unpinned(self, call: Callable[[], int]) -> int:
        """Runs a call that may create a bucket; if the limiter is full while bindings
        keep buckets, drops the bindings (so that idle buckets can make room, as they
        could without them) and runs it again. A full limiter has done nothing."""
        rc = call()
        if rc == QG_ERR_TOO_MANY_BUCKETS and (self._bound_one or self._bound_pairs):
            self._drop_bindings()
            rc = call()
        return rc

    def _drop_bindings(self) -> None:
        """Forgets every binding; each is freed once no call in flight holds it."""
        self._bound_one = {}
        self._bound_pairs = {}
        self._seen = {}

    def _native_free(self, ptr: c_void_p) -> None:
        lib.qg_limiter_free(ptr)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<quotagate.Limiter rates={self._rates!r} {state}>"

    def _key(self, key: Any) -> Optional[c_char_p]:
        """The key as the library takes it (None: the default bucket), cached so that
        the hot path does one dict lookup."""
        try:
            return self._keys[key]
        except (KeyError, TypeError):
            pass
        encoded = c_char_p(_convert.text(key, "key"))
        if len(self._keys) >= _KEY_CACHE_SIZE:
            self._keys = {"": None}
        self._keys[key] = encoded
        return encoded

    def try_acquire(self, key: str = "", cost: int = 1) -> bool:
        """Admits a call of ``cost`` units on ``key``'s bucket now if every window allows
        it and nobody waits before it; never blocks.

        Returns True when admitted (the permit is taken), False when not.

        A (key, cost) pair called more than once is bound natively (see :meth:`bind`),
        so that a repeated call passes one prepared handle. The last 256 pairs stay
        bound; each binding keeps its bucket (which then counts towards
        ``max_buckets``, and is not dropped as idle) until it leaves that cache or the
        limiter is closed. A full limiter drops them all.
        """
        # Cost 1 (the int itself: True and 1.0 are not costs) is looked up by the key
        # alone, other costs by the pair; a miss takes the general road.
        try:
            if cost is _ONE:
                binding = self._bound_one[key]
            elif type(cost) is int:
                binding = self._bound_pairs[key, cost]
            else:
                return self._try_acquire_unbound(key, cost)
        except (KeyError, TypeError):
            return self._try_acquire_unbound(key, cost)
        rc = _binding_try_acquire(binding._arg)
        if rc == QG_OK:
            return True
        return _refused(rc)

    def _try_acquire_unbound(self, key: Any, cost: Any) -> bool:
        """try_acquire by key, binding the pair on its second call."""
        k = self._key(key)
        c = _convert.cost(cost)
        ptr = self._handle()
        binding = None
        if type(key) is str and type(cost) is int:
            binding = self._binding(key, k, c, ptr)
        if binding is not None:
            rc = _binding_try_acquire(binding._arg)
        else:
            rc = self._unpinned(lambda: _try_acquire(ptr, k, c, None))
        if rc == QG_OK:
            return True
        return _refused(rc)

    def _binding(
        self, key: str, k: Optional[c_char_p], cost: int, ptr: c_void_p
    ) -> Optional[Binding]:
        """The pair's binding, made on its second call; None on its first, or when
        the library cannot bind it (the call by key then reports why)."""
        pair = (key, cost)
        entry: Any = key if cost == 1 else pair
        # Never waits: while another thread binds (or held the lock when this process
        # forked, which would leave it held in the child for ever), the call goes by key.
        if not self._bind_lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            table: Dict[Any, Binding] = self._bound_one if cost == 1 else self._bound_pairs
            binding = table.get(entry)
            if binding is not None:
                return binding
            if pair not in self._seen:
                if len(self._seen) >= _KEY_CACHE_SIZE:
                    self._seen = {}
                self._seen[pair] = None
                return None
            self._seen.pop(pair, None)
            native = c_void_p()
            if _bind(ptr, k, cost, byref(native)) != QG_OK:
                return None
            binding = Binding(native, key, cost)
            if len(self._bound_one) + len(self._bound_pairs) >= _BOUND_CACHE_SIZE:
                # The oldest binding of the same table goes, else of the other one.
                other: Dict[Any, Binding] = (
                    self._bound_pairs if table is self._bound_one else self._bound_one
                )
                victim = table if table else other
                del victim[next(iter(victim))]
            table[entry] = binding
            return binding
        finally:
            self._bind_lock.release()

    def bind(self, key: str = "", cost: int = 1) -> "Binding":
        """Binds ``key`` and ``cost`` once, for a loop that repeats them: the
        :class:`Binding`'s :meth:`~Binding.try_acquire` is ``try_acquire(key, cost)``
        (the same admissions, statistics and errors) with one prepared argument.

        For a limiter without a store the bucket is made now, and the binding keeps it
        until the binding is closed or collected: it counts towards ``max_buckets`` and
        is never dropped as idle meanwhile.

        :raises quotagate.InvalidArgumentError: ``cost`` exceeds the bucket's smallest rate.
        :raises quotagate.TooManyBucketsError: the limiter is full.
        """
        k = self._key(key)
        c = _convert.cost(cost)
        ptr = self._handle()
        native = c_void_p()
        check(self._unpinned(lambda: _bind(ptr, k, c, byref(native))))
        return Binding(native, key, c)

    def wait_time(self, key: str = "", cost: int = 1) -> float:
        """How long a call of ``cost`` units on ``key`` would wait now, in seconds
        (behind the calls already queued), rounded up to whole milliseconds. ``0.0`` when
        :meth:`try_acquire` would admit it. Takes nothing."""
        k = self._key(key)
        cost = _convert.cost(cost)
        wait_ms = c_uint64(0)
        ptr = self._handle()
        check(self._unpinned(lambda: lib.qg_limiter_wait_time(ptr, k, cost, byref(wait_ms))))
        return wait_ms.value / 1000.0

    def acquire(
        self, key: str = "", cost: int = 1, timeout: Optional[Union[int, float]] = None
    ) -> None:
        """Waits in FIFO order until ``key``'s bucket admits a call of ``cost`` units.

        :param timeout: seconds to wait at most (None: no deadline). A deadline that
            cannot be met fails at once.
        :raises quotagate.TimeoutError: the deadline passed or cannot be met.
        :raises quotagate.ClosedError: the limiter is or gets closed.

        The wait is interruptible: Ctrl+C in the main thread raises
        :class:`KeyboardInterrupt` within about 50 ms, and the place in the queue is
        given up without disturbing the order of the others.
        """
        self._wait(lib.qg_limiter_enqueue, key, cost, timeout, None)

    async def acquire_async(
        self, key: str = "", cost: int = 1, timeout: Optional[Union[int, float]] = None
    ) -> None:
        """:meth:`acquire` for asyncio: awaits the admission without blocking the event
        loop (the wait runs on a worker thread, asleep in the library's queue).
        Cancelling the awaiting task gives up the place in the queue at once.

        :raises quotagate.TimeoutError: the deadline passed or cannot be met.
        :raises quotagate.ClosedError: the limiter is or gets closed.
        """
        k = self._key(key)
        cost = _convert.cost(cost)
        deadline_ms = _convert.timeout_ms(timeout)
        ticket = c_void_p()
        ptr = self._handle()
        rc = self._unpinned(lambda: lib.qg_limiter_enqueue(ptr, k, cost, deadline_ms, byref(ticket)))
        if rc != QG_OK:
            raise error_from(rc)
        shared = Shared(lambda: lib.qg_ticket_free(ticket))

        def wait() -> None:
            rc = lib.qg_ticket_wait(ticket, -1)
            if rc != QG_OK:
                raise error_from(rc)

        try:
            if lib.qg_ticket_wait(ticket, 0) == QG_OK:  # admitted at once
                return
            await limiter_pool.run(wait, lambda: lib.qg_ticket_cancel(ticket), shared)
        finally:
            shared.release()

    def _wait(
        self,
        enqueue: Any,
        key: str,
        cost: int,
        timeout: Optional[Union[int, float]],
        take: Optional[Any],
    ) -> Optional[c_void_p]:
        """Takes a place with ``enqueue`` and waits in slices until admitted; then runs
        ``take(ticket)`` (to take a hold) before the ticket is freed."""
        k = self._key(key)
        cost = _convert.cost(cost)
        deadline_ms = _convert.timeout_ms(timeout)
        ticket = c_void_p()
        ptr = self._handle()
        rc = self._unpinned(lambda: enqueue(ptr, k, cost, deadline_ms, byref(ticket)))
        if rc != QG_OK:
            raise error_from(rc)
        main = threading.current_thread() is _main_thread
        slice_ms = _MAIN_SLICE_MS if main else _THREAD_SLICE_MS
        try:
            while True:
                rc = lib.qg_ticket_wait(ticket, slice_ms)
                if rc == QG_PENDING:
                    continue
                if rc == QG_OK:
                    return None if take is None else take(ticket)
                raise error_from(rc)
        except BaseException:
            # Leave the queue (QG_ERR_NOT_WAITING if admitted meanwhile: freeing the
            # ticket then releases an untaken hold).
            lib.qg_ticket_cancel(ticket)
            raise
        finally:
            lib.qg_ticket_free(ticket)

    def hold(
        self, key: str = "", cost: int = 1, timeout: Optional[Union[int, float]] = None
    ) -> "Hold":
        """A context manager that admits a call as a *hold*: it waits on enter, like
        :meth:`acquire`, and the call's units count in every window from admission on,
        in flight, and from the instant it exits on::

            with limiter.hold("machines", timeout=30):
                requests.get(url, headers=headers)

        A server counts a call when it arrives, between the send and the answer; a slot
        that frees one window after the answer therefore never meets the server's count,
        whatever the network's delays. Make the call inside the block. The block may also
        end with :meth:`Hold.release`.

        :raises quotagate.TimeoutError: on enter, the deadline passed or cannot be met.
        :raises quotagate.ClosedError: on enter, the limiter is or gets closed.
        """
        return Hold(self, key, cost, timeout)

    def _take_hold(self, key: str, cost: int, timeout: Optional[Union[int, float]]) -> c_void_p:
        def take(ticket: c_void_p) -> c_void_p:
            hold = c_void_p()
            check(lib.qg_ticket_take_hold(ticket, byref(hold)))
            return hold

        hold = self._wait(lib.qg_limiter_enqueue_hold, key, cost, timeout, take)
        assert hold is not None
        return hold

    def pause(self, key: str, seconds: Union[int, float]) -> None:
        """Makes every caller of ``key``'s bucket wait ``seconds`` from now. A longer
        pause already in force is never shortened."""
        k = self._key(key)
        ms = _convert.seconds_to_ms(seconds, "seconds")
        ptr = self._handle()
        check(self._unpinned(lambda: lib.qg_limiter_pause(ptr, k, ms)))

    def set_rates(self, key: str, rates: Sequence[Rate]) -> None:
        """Gives ``key``'s bucket its own rates instead of the default ones; calls
        already admitted stay counted."""
        k = self._key(key)
        native = _convert.rates(rates)
        n = len(native)
        calls = (c_uint32 * n)(*(c for c, _ in native))
        windows = (c_uint64 * n)(*(w for _, w in native))
        ptr = self._handle()
        check(self._unpinned(lambda: lib.qg_limiter_set_rates(ptr, k, calls, windows, n)))

    def stats(self, key: str = "") -> LimiterStats:
        """A snapshot of ``key``'s bucket.

        Counts: ``admitted_calls``, ``admitted_units``, ``waited_calls``, ``timeouts``,
        ``cancellations``, ``refusals`` (try_acquire refused), ``pauses``, ``queued``
        (waiting now), ``in_flight`` (units of holds not yet released, counted in every
        window), ``expired_holds`` (holds not released within their lease). Seconds (float): ``total_wait``, ``longest_wait`` (of admitted
        calls), ``paused_for`` (pause left). ``windows``: one dict per rate, in order,
        with ``used`` (units inside the window now), ``calls`` and ``window`` (seconds,
        margin included).
        """
        k = self._key(key)
        snapshot = c_void_p()
        check(lib.qg_limiter_stats(self._handle(), k, byref(snapshot)))
        try:
            result: Dict[str, Any] = {}
            value = c_uint64()
            for field, name, divisor in _STAT_FIELDS:
                check(lib.qg_bucket_stats_get(snapshot, field, byref(value)))
                result[name] = value.value if divisor is None else value.value / divisor
            count = c_size_t()
            check(lib.qg_bucket_stats_window_count(snapshot, byref(count)))
            used, calls, window_ms = c_uint64(), c_uint64(), c_uint64()
            windows = []
            for i in range(count.value):
                check(
                    lib.qg_bucket_stats_window(
                        snapshot, i, byref(used), byref(calls), byref(window_ms)
                    )
                )
                windows.append(
                    {"used": used.value, "calls": calls.value, "window": window_ms.value / 1000.0}
                )
            result["windows"] = windows
            return cast(LimiterStats, result)
        finally:
            lib.qg_bucket_stats_free(snapshot)


class Hold:
    """A call admitted by :meth:`Limiter.hold`: a context manager whose units count in
    flight from ``__enter__`` and from its exit (or :meth:`release`) on.

    Not reusable: enter it once. A hold that is never released counts from its lease's
    end; one that is garbage-collected unreleased is released then.
    """

    __slots__ = ("_limiter", "_key", "_cost", "_timeout", "_ptr", "_entered")

    def __init__(
        self, limiter: Limiter, key: str, cost: int, timeout: Optional[Union[int, float]]
    ) -> None:
        self._limiter = limiter
        self._key = key
        self._cost = cost
        self._timeout = timeout
        self._ptr: Optional[c_void_p] = None
        self._entered = False

    def __enter__(self) -> "Hold":
        if self._entered:
            raise RuntimeError("a quotagate hold is entered once; call limiter.hold() again")
        self._entered = True
        self._ptr = self._limiter._take_hold(self._key, self._cost, self._timeout)
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """True between admission and release."""
        return self._ptr is not None

    def release(self) -> None:
        """Ends the hold now: its units count from now on. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib.qg_hold_release(ptr)

    def __copy__(self) -> "Hold":
        raise TypeError("a quotagate hold cannot be copied: it is released once")

    def __deepcopy__(self, memo: Any) -> "Hold":
        return self.__copy__()

    def __reduce__(self) -> Any:
        raise TypeError("a quotagate hold cannot be pickled: it belongs to this process")

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    def __repr__(self) -> str:
        state = "held" if self.held else ("released" if self._entered else "waiting to enter")
        return f"<quotagate.Hold key={self._key!r} cost={self._cost} {state}>"


class Binding(NativeHandle):
    """A key and a cost of a :class:`Limiter` bound once by :meth:`Limiter.bind`.

    :meth:`try_acquire` is ``limiter.try_acquire(key, cost)`` with one prepared
    argument. The binding keeps its limiter's native object alive and, for a limiter
    without a store, its bucket, until it is closed or collected; once the limiter is
    closed (or collected, which closes it), :meth:`try_acquire` raises
    :class:`~quotagate.ClosedError`. Use it from any number of threads; :meth:`close`
    frees it once no call is using it.
    """

    _kind = "binding"
    _share_hint = "bind the key again with each process's own Limiter"

    def __init__(self, native: c_void_p, key: str, cost: int) -> None:
        super().__init__()
        self._adopt(native)
        # The argument made once: ctypes passes it to C as it is, with nothing to
        # allocate or convert (a c_void_p would be wrapped anew on every call).
        self._arg = c_void_p.from_param(native.value)
        self.key = key
        self.cost = cost

    def _native_free(self, ptr: c_void_p) -> None:
        _binding_free(ptr)

    def try_acquire(self) -> bool:
        """Admits a call of the bound cost on the bound key now if every window allows
        it and nobody waits before it; never blocks. True when admitted, False when not.

        :raises quotagate.ClosedError: the binding or its limiter is closed.
        """
        if self._closed:
            self._handle()
        rc = _binding_try_acquire(self._arg)
        if rc == QG_OK:
            return True
        return _refused(rc)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<quotagate.Binding key={self.key!r} cost={self.cost} {state}>"
