"""The one type check: a bool is never an int or a number to hsd, and the callers keep their messages."""

from __future__ import annotations

import pytest

from hsd.core.checks import is_int, is_number
from hsd.core.peers import check_group_size


def test_bools_are_neither_ints_nor_numbers():
    assert is_int(3) and is_int(-1) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number(None)


def test_a_bool_setting_is_refused_with_its_name():
    assert check_group_size(8, 4) == 2
    with pytest.raises(ValueError, match="group_size must be a positive integer, got True"):
        check_group_size(8, True)
