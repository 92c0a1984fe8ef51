"""The one type check of a setting's value: a number or an int that is not a bool (True and False are ints to
Python, so `isinstance(True, int)` holds and a stray `true` would pass as 1). Callers add the range and
the message that names the setting.
"""

from __future__ import annotations


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)
