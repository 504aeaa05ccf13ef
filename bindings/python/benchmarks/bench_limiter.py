"""The cost of a permitted ``Limiter.try_acquire`` from Python, side by side with
pyrate-limiter and limits (moving window, in-memory storage), in one run.

    python bindings/python/benchmarks/bench_limiter.py [--rounds 9] [--calls 20000]

All limiters get the same rate, one that the benchmark never reaches (2**20 calls per
second, the most quotagate takes), so every measured call is admitted. Each round uses
a fresh key and makes ``--calls`` calls in a plain loop, the libraries taking turns
round by round; the figure is the median over the rounds, in nanoseconds per call.
More rows show where the time goes: a bare ctypes call with no arguments (``qg_version_number``, the floor
of any ctypes call), the raw ctypes call of ``qg_limiter_try_acquire`` with plain int
and bytes arguments, converted on every call, without the wrapper's checks, and the
same call through a function object without ``argtypes`` given ctypes objects made
once (what a call costs when ctypes converts nothing), a call with one argument
prepared the way a binding's handle is (``qg_version_compatible``, which does nothing:
the cost of passing one argument), ``qg_binding_try_acquire`` called the way
``Limiter.try_acquire`` calls it for a (key, cost) pair it has bound (the native call
alone; over the row before, the library's work), then ``Binding.try_acquire`` of
``Limiter.bind``.

The last column is each row's cost over the floor; the goal for
``Limiter.try_acquire`` is at most 2x.

Note: limits' moving window inserts at the front of a Python list, so its cost grows
with the calls already inside the window (here up to ``--calls``); pyrate-limiter's
default Limiter has a single bucket (its ``name`` does not select a bucket).
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import quotagate
from quotagate import _native

LIMIT = 1 << 20  # the largest rate quotagate accepts (MAX_CALLS); no round nears it
WINDOW_S = 1

#: The clock of the measurements (see --cpu-time).
clock = time.perf_counter_ns


def bench_floor_ctypes(_: int, n: int) -> int:
    fn = _native.lib.qg_version_number
    t0 = clock()
    for _ in range(n):
        fn()
    return clock() - t0


_qg_limiter = quotagate.Limiter([(LIMIT, WINDOW_S)])


def bench_raw_ctypes_try_acquire(r: int, n: int) -> int:
    fn = _native.lib.qg_limiter_try_acquire
    ptr = _qg_limiter._handle()
    key = f"raw-{r}".encode()
    t0 = clock()
    for _ in range(n):
        fn(ptr, key, 1, None)
    elapsed = clock() - t0
    assert _qg_limiter.stats(f"raw-{r}")["admitted_calls"] == n
    return elapsed


def bench_prepared_ctypes_try_acquire(r: int, n: int) -> int:
    # A function object of its own, without argtypes: ctypes passes the ctypes objects
    # below as they are, where declared argtypes convert every argument on every call.
    fn = ctypes.CDLL(str(_native.lib.path)).qg_limiter_try_acquire
    fn.restype = ctypes.c_uint32
    ptr = _qg_limiter._handle()
    key = f"prepared-{r}"
    c_key, cost = ctypes.c_char_p(key.encode()), ctypes.c_uint32(1)
    t0 = clock()
    for _ in range(n):
        fn(ptr, c_key, cost, None)
    elapsed = clock() - t0
    assert _qg_limiter.stats(key)["admitted_calls"] == n
    return elapsed


def bench_one_argument_ctypes(_: int, n: int) -> int:
    # What a call with one prepared argument costs: the shape an entry point that takes
    # one handle (limiter, key and cost made once) would have.
    fn = ctypes.CDLL(str(_native.lib.path)).qg_version_compatible
    fn.restype = ctypes.c_uint32
    # Prepared as Binding prepares its handle: a parameter object ctypes passes as it is.
    arg = ctypes.c_uint32.from_param(_native.HEADER_VERSION_NUMBER)
    t0 = clock()
    for _ in range(n):
        fn(arg)
    return clock() - t0


def bench_binding_ctypes(r: int, n: int) -> int:
    # The native call a bound Limiter.try_acquire makes, with nothing around it.
    fn = quotagate._limiter._binding_try_acquire
    binding = _qg_limiter.bind(f"binding-raw-{r}")
    arg = binding._arg
    t0 = clock()
    for _ in range(n):
        fn(arg)
    elapsed = clock() - t0
    assert _qg_limiter.stats(f"binding-raw-{r}")["admitted_calls"] == n
    binding.close()
    return elapsed


def bench_binding(r: int, n: int) -> int:
    binding = _qg_limiter.bind(f"binding-{r}")
    try_acquire = binding.try_acquire
    t0 = clock()
    for _ in range(n):
        try_acquire()
    elapsed = clock() - t0
    assert _qg_limiter.stats(f"binding-{r}")["admitted_calls"] == n
    binding.close()
    return elapsed


def bench_quotagate(r: int, n: int) -> int:
    try_acquire = _qg_limiter.try_acquire
    key = f"key-{r}"
    t0 = clock()
    for _ in range(n):
        try_acquire(key)
    elapsed = clock() - t0
    assert _qg_limiter.stats(key)["admitted_calls"] == n
    return elapsed


def make_pyrate() -> Optional[Callable[[int, int], int]]:
    try:
        import pyrate_limiter as pl
    except ImportError:
        return None
    limiter = pl.Limiter(pl.Rate(LIMIT, pl.Duration.SECOND * WINDOW_S))

    def bench(r: int, n: int) -> int:
        try_acquire = limiter.try_acquire
        key = f"key-{r}"
        t0 = clock()
        for _ in range(n):
            try_acquire(key, blocking=False)
        elapsed = clock() - t0
        assert try_acquire(key, blocking=False)
        return elapsed

    return bench


def make_limits() -> Optional[Callable[[int, int], int]]:
    try:
        import limits
    except ImportError:
        return None
    storage = limits.storage.MemoryStorage()
    limiter = limits.strategies.MovingWindowRateLimiter(storage)
    item = limits.RateLimitItemPerSecond(LIMIT, WINDOW_S)

    def bench(r: int, n: int) -> int:
        hit = limiter.hit
        key = f"key-{r}"
        t0 = clock()
        for _ in range(n):
            hit(item, key)
        elapsed = clock() - t0
        assert limiter.get_window_stats(item, key).remaining == LIMIT - n
        return elapsed

    return bench


def version_of(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="measure the thread's CPU time instead of wall time (steadier on a busy machine)",
    )
    args = parser.parse_args(argv)
    global clock
    if args.cpu_time:
        clock = time.thread_time_ns

    benches = [
        ("ctypes floor: qg_version_number()", bench_floor_ctypes),
        ("ctypes: raw qg_limiter_try_acquire", bench_raw_ctypes_try_acquire),
        ("ctypes: qg_limiter_try_acquire, no argtypes", bench_prepared_ctypes_try_acquire),
        ("ctypes: qg_version_compatible(n), prepared", bench_one_argument_ctypes),
        (f"quotagate {quotagate.__version__} Limiter.try_acquire", bench_quotagate),
        ("ctypes: qg_binding_try_acquire(b), prepared", bench_binding_ctypes),
        ("quotagate Binding.try_acquire (Limiter.bind)", bench_binding),
        (f"pyrate-limiter {version_of('pyrate-limiter')} try_acquire", make_pyrate()),
        (f"limits {version_of('limits')} moving window hit", make_limits()),
    ]
    # Rounds take turns, so that a burst of load on the machine hits every row alike.
    samples: Dict[str, List[float]] = {name: [] for name, bench in benches if bench}
    for name, bench in benches:
        if bench is not None:
            bench(-1, min(1000, args.calls))  # warm up, on a key of its own
    for r in range(args.rounds):
        for name, bench in benches:
            if bench is not None:
                samples[name].append(bench(r, args.calls) / args.calls)
    rows: Dict[str, Optional[float]] = {
        name: statistics.median(samples[name]) if bench else None for name, bench in benches
    }

    ours = rows[benches[4][0]]
    floor = rows[benches[0][0]]
    assert ours is not None and floor is not None
    print(
        f"Python {platform.python_version()} on {platform.machine()} {sys.platform}; "
        f"{args.rounds} rounds x {args.calls} permitted calls, median ns/call "
        f"({'thread CPU' if args.cpu_time else 'wall'} time)"
    )
    width = max(len(n) for n in rows)
    print(f"{'':{width}}  {'ns/call':>9}  {'x quotagate':>11}  {'x floor':>7}")
    for name, ns in rows.items():
        if ns is None:
            print(f"{name:{width}}  {'-':>9}  {'-':>11}  {'-':>7}")
        else:
            print(f"{name:{width}}  {ns:9.0f}  {ns / ours:11.2f}  {ns / floor:7.2f}")
    print(
        f"Limiter.try_acquire / bare ctypes call: {ours / floor:.2f}x (goal: at most 2x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
