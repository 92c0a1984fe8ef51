"""Teacher contexts as data: Eq. 9 for HSD, its fallback, and the ablation and baseline modes."""

from __future__ import annotations

import dataclasses

import pytest

from hsd.core.contexts import CONTEXT_MODES, TeacherContext, build_contexts

# group 0: rollouts 0 and 2 succeed; group 1: no success
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
PEERS = [2, 0, 0, None, None, None]
ANSWERS = ["7", "12"]  # one per group
REFERENCES = ["x = 7 because ...", "y = 12 because ..."]


def contexts(mode="hsd", **options):
    options.setdefault("answers", ANSWERS)
    return build_contexts(REWARDS, 3, PEERS, mode, **options)


def test_hsd_gives_answer_and_peer_then_falls_back_to_the_answer():  # Eq. 9
    assert contexts("hsd") == [
        TeacherContext(answer="7", peer=2),
        TeacherContext(answer="7", peer=0),
        TeacherContext(answer="7", peer=0),
        TeacherContext(answer="12", fallback=True),
        TeacherContext(answer="12", fallback=True),
        TeacherContext(answer="12", fallback=True),
    ]


def test_hsd_without_fallback_skips_rollouts_without_a_peer():
    result = contexts("hsd", fallback=False)
    assert [c is None for c in result] == [False, False, False, True, True, True]


def test_opsd_gives_the_answer_only():
    assert [c.kind for c in contexts("opsd")] == ["answer"] * 6
    assert [c.answer for c in contexts("opsd")] == ["7", "7", "7", "12", "12", "12"]


def test_peer_mode_gives_the_peer_only_and_never_falls_back():
    result = contexts("peer", fallback=True)
    assert result[:3] == [TeacherContext(peer=2), TeacherContext(peer=0), TeacherContext(peer=0)]
    assert result[3:] == [None, None, None]


def test_reference_mode_gives_the_reference_solution():
    result = contexts("reference", references=REFERENCES)
    assert [c.reference for c in result] == [REFERENCES[0]] * 3 + [REFERENCES[1]] * 3
    assert {c.kind for c in result} == {"reference"}


def test_none_mode_is_an_empty_context_for_every_rollout():
    assert contexts("none") == [TeacherContext(None, None, None, False)] * 6
    assert {c.kind for c in contexts("none")} == {"none"}


def test_successes_can_be_left_out_of_distillation():
    for mode in CONTEXT_MODES:
        result = contexts(mode, references=REFERENCES, distill_successes=False)
        assert result[0] is None and result[2] is None, mode
    assert contexts("opsd", distill_successes=False)[1] == TeacherContext(answer="7")


def test_answers_per_rollout_are_used_as_given():
    answers = ["a", "b", "c", "d", "e", "f"]
    assert [c.answer for c in contexts("opsd", answers=answers)] == answers


def test_kind_names_the_parts_present():
    assert TeacherContext(answer="1", peer=3).kind == "answer+peer"
    assert TeacherContext(answer="1").kind == "answer"
    assert TeacherContext(peer=0).kind == "peer"  # index 0 is a peer, not "no peer"
    assert TeacherContext(reference="r").kind == "reference"
    assert TeacherContext(answer="", fallback=True).kind == "answer"
    assert TeacherContext().kind == "none"


def test_context_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TeacherContext(answer="1").answer = "2"


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: contexts("teacher"), "context"),
        (lambda: contexts(answers=["7", "12", "0"]), "answers"),
        (lambda: contexts(answers="7"), "answers"),
        (lambda: contexts(answers=["7", None]), "answers"),
        (lambda: contexts("reference"), "references"),
        (lambda: contexts("reference", references=["r", None]), "references"),
        (lambda: build_contexts(REWARDS, 4, PEERS, answers=ANSWERS), "group_size"),
        (lambda: build_contexts(REWARDS, 3, PEERS[:5], answers=ANSWERS), "peers"),
        (lambda: build_contexts(REWARDS, 3, [0, 0, 0, None, None, None], answers=ANSWERS), "peers"),  # itself
        (
            lambda: build_contexts(REWARDS, 3, [2, 0, 0, 0, None, None], answers=ANSWERS),
            "peers",
        ),  # other group
        (
            lambda: build_contexts(REWARDS, 3, [2, 0, 1, None, None, None], answers=ANSWERS),
            "peers",
        ),  # a failure
        (lambda: build_contexts(REWARDS, 3, [2.0, 0, 0, None, None, None], answers=ANSWERS), "peers"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=named):
        call()
