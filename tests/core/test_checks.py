"""The one type check: a bool is never an int or a number to hsd, and the callers keep their messages."""

from __future__ import annotations

import json

import pytest
import torch

from hsd.core.checks import is_int, is_number
from hsd.core.distill import distill_terms
from hsd.core.losses import aggregate, check_divergence_options, rlsd_advantages, rlsd_token_weights
from hsd.core.peers import check_group_size
from hsd.errors import UserError
from hsd.tasks.datasets import load_problems


def test_bools_are_neither_ints_nor_numbers():
    assert is_int(3) and is_int(-1) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number(None)


def test_a_bool_setting_is_refused_with_its_name():
    assert check_group_size(8, 4) == 2
    with pytest.raises(ValueError, match="group_size must be a positive integer, got True"):
        check_group_size(8, True)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: check_divergence_options("jsd", True, None, None),
            "alpha must be a number in [0, 1], got True",
        ),
        (
            lambda: check_divergence_options("topk", None, True, None),
            "kind 'topk' needs topk, a positive int",
        ),
        (lambda: check_divergence_options("jsd", None, None, True), "clip must be a positive number or None"),
        (
            lambda: aggregate(torch.zeros(1, 2), torch.zeros(1, 2), "fixed_length", max_length=True),
            "needs max_length",
        ),
        (
            lambda: rlsd_token_weights(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2), True),
            "eps must be a non-negative",
        ),
        (
            lambda: rlsd_advantages(torch.zeros(1), torch.zeros(1, 2), True),
            "lam must be a number in [0, 1], got True",
        ),
        (
            lambda: distill_terms(
                torch.zeros(1, 2),
                torch.zeros(1, 2),
                torch.zeros(1).long(),
                torch.zeros(3, 2),
                chunk_size=True,
            ),
            "chunk_size must be a positive int, got True",
        ),
    ],
)
def test_each_core_setting_refuses_a_bool_with_its_message(call, message):
    with pytest.raises(ValueError) as refused:
        call()
    assert message in str(refused.value)


def test_a_bool_answer_is_refused_as_a_dataset_row_field(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "1+1?", "answer": True}))
    with pytest.raises(UserError, match="answer.*expected a string or number, got bool"):
        load_problems(str(rows))
    rows.write_text(json.dumps({"question": "2+2?", "answer": 4}))
    assert load_problems(str(rows))[0].answer == "4"
