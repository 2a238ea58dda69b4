"""The argument checks every option shares: a finite positive number, a bounded int.

One place says what a duration or a byte count may be, so every option refuses NaN,
infinity, negatives and booleans the same way, up front, with one line naming the option.
"""

from __future__ import annotations

import math
from typing import TypeGuard

from peerflow.errors import ValidationError

__all__ = ["check_int", "check_seconds", "check_seconds_or_none"]


def check_seconds(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` as a finite number of seconds, > 0 (>= 0 with ``zero=True``).

    Args:
        value: what the caller passed.
        name: the option's name, for the message.
        zero: whether 0 is allowed.

    Returns:
        The value as a float.

    Raises:
        ValidationError: not an int or float (a bool is not a number here), NaN, infinite,
            negative, or 0 when ``zero`` is False.
    """
    if not _is_seconds(value, zero):
        bound = ">= 0" if zero else "> 0"
        raise ValidationError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def check_seconds_or_none(value: object, name: str, *, zero: bool = False) -> float | None:
    """:func:`check_seconds`, with None allowed (and returned).

    Raises:
        ValidationError: as :func:`check_seconds` (the message also allows None).
    """
    if value is None:
        return None
    if not _is_seconds(value, zero):
        bound = ">= 0" if zero else "> 0"
        raise ValidationError(f"{name} must be a number {bound} or None, got {value!r}")
    return float(value)


def _is_seconds(value: object, zero: bool) -> TypeGuard[int | float]:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 or (zero and value == 0))
    )


def check_int(value: object, name: str, *, minimum: int = 1, none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None when ``none`` allows it).

    Args:
        value: what the caller passed.
        name: the option's name, for the message.
        minimum: the smallest value allowed.
        none: whether None is allowed.

    Returns:
        The value (None only when allowed and given).

    Raises:
        ValidationError: not an int (a bool is not one here), or below ``minimum``.
    """
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        also = " or None" if none else ""
        raise ValidationError(f"{name} must be an int >= {minimum}{also}, got {value!r}")
    return value
