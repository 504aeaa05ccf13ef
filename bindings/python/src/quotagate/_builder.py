"""Native builders filled from keyword arguments through a table.

A table has one row per option: its keyword, the builder function that takes it, and
how its value becomes that function's arguments. Every value is checked and converted,
in the table's order, before anything reaches the library; then a builder is made, the
calls applied, and the object built.
"""

from __future__ import annotations

from ctypes import byref, c_void_p
from typing import Any, Callable, List, Mapping, Sequence, Tuple

#: A builder function's arguments after the builder itself.
Args = Tuple[Any, ...]
#: Checks one option's value (named in messages) and gives the arguments of each call
#: of its builder function: none (the option is left out), one, or several.
Convert = Callable[[Any, str], List[Args]]
#: A native function that returns a result code.
NativeCall = Callable[..., int]

#: A row of a table: a keyword, the builder function that takes its value, and how.
Option = Tuple[str, NativeCall, Convert]


def optional(convert: Callable[[Any, str], Any]) -> Convert:
    """One call with the converted value; none for None (the library's default)."""

    def arguments(value: Any, name: str) -> List[Args]:
        return [] if value is None else [(convert(value, name),)]

    return arguments


def required(convert: Callable[[Any, str], Any]) -> Convert:
    """One call with the converted value, which None is not."""

    def arguments(value: Any, name: str) -> List[Args]:
        return [(convert(value, name),)]

    return arguments


def calls(table: Sequence[Option], values: Mapping[str, Any]) -> List[Tuple[NativeCall, Args]]:
    """The builder calls for the values by keyword, each value checked in table order."""
    return [
        (setter, args) for name, setter, convert in table for args in convert(values[name], name)
    ]


def build(
    new: NativeCall,
    settings: Sequence[Tuple[NativeCall, Args]],
    make: NativeCall,
    make_args: Args,
    free: Callable[[c_void_p], Any],
    check: Callable[[int], None],
) -> c_void_p:
    """Makes a builder with ``new``, applies the calls, and returns the native object
    ``make(builder, *make_args, &out)`` gives; the builder is freed however it ends."""
    builder = c_void_p()
    check(new(byref(builder)))
    try:
        for setter, args in settings:
            check(setter(builder, *args))
        made = c_void_p()
        check(make(builder, *make_args, byref(made)))
    finally:
        free(builder)
    return made
