"""Checks and conversions of Python arguments before they reach the library, so that
wrong types raise TypeError and impossible values ValueError with the argument's name."""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Tuple

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
I64_MAX = 0x7FFF_FFFF_FFFF_FFFF

#: A rate as the library takes it: (calls, window in milliseconds).
NativeRate = Tuple[int, int]


def text(value: Any, name: str) -> bytes:
    """A str argument as NUL-terminated UTF-8 for the library."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not encodable as UTF-8 (lone surrogate)") from None


def optional_text(value: Any, name: str) -> Optional[bytes]:
    """Like :func:`text`, with None passed on as NULL."""
    return None if value is None else text(value, name)


def integer(value: Any, name: str, low: int, high: int) -> int:
    """An int argument (bool refused) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    v = int(value)
    if not low <= v <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {v}")
    return v


def cost(value: Any) -> int:
    """The cost of a call: an int from 1 to 2**32 - 1."""
    return integer(value, "cost", 1, U32_MAX)


def seconds_to_ms(value: Any, name: str, *, minimum_ms: int = 0, maximum_ms: int = U64_MAX) -> int:
    """Seconds (int or float, finite, not negative) as whole milliseconds, rounded up so
    that a wait is never shorter than asked (and 0.1 s stays 100 ms)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    ms = math.ceil(round(v * 1000.0, 6))
    if ms < minimum_ms:
        raise ValueError(f"{name} must be at least {minimum_ms / 1000.0:g} s, not {value!r}")
    if ms > maximum_ms:
        raise ValueError(f"{name} is too long: {value!r} s")
    return ms


def timeout_ms(value: Any, name: str = "timeout") -> int:
    """A timeout in seconds as the library's int64 milliseconds; None (wait forever) is -1."""
    if value is None:
        return -1
    return seconds_to_ms(value, name, maximum_ms=I64_MAX)


def rates(value: Any, name: str = "rates") -> List[NativeRate]:
    """``[(calls, seconds), ...]`` (at least one) as ``[(calls, window_ms), ...]``."""
    if isinstance(value, (str, bytes)) or not _is_sequence(value):
        raise TypeError(f"{name} must be a list of (calls, seconds) pairs, e.g. [(100, 60)]")
    items = list(value)
    if len(items) == 2 and all(isinstance(x, numbers.Real) for x in items):
        raise TypeError(
            f"{name} must be a list of (calls, seconds) pairs: write [{tuple(items)!r}]"
        )
    if not items:
        raise ValueError(f"{name} needs at least one (calls, seconds) pair")
    return [rate(item, f"{name}[{i}]") for i, item in enumerate(items)]


def rate(value: Any, name: str) -> NativeRate:
    """One ``(calls, seconds)`` pair as ``(calls, window_ms)``."""
    if isinstance(value, (str, bytes)) or not _is_sequence(value):
        raise TypeError(f"{name} must be a (calls, seconds) pair, not {type(value).__name__}")
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a (calls, seconds) pair, not {len(pair)} values")
    calls = integer(pair[0], f"{name} calls", 1, U32_MAX)
    window = seconds_to_ms(pair[1], f"{name} seconds", minimum_ms=1)
    # The library counts windows in whole milliseconds: a shorter one would be rounded
    # up to 1 ms, a different quota than asked for.
    if float(pair[1]) < 0.001:
        raise ValueError(f"{name} seconds must be at least 0.001 (1 ms), not {pair[1]!r}")
    return calls, window


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))
