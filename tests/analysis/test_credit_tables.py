"""The credit tables on constructed rollouts whose log-probs are known, checked against hand-computed values;
and the model side: per-token log-probs and the teacher sequences match an independent full forward."""

from __future__ import annotations

import math

import pytest
import torch

from hsd.analysis.credit import (
    FailedRollout,
    GroupOutcome,
    credit_tables,
    random_positions,
    score_rollouts,
)
from hsd.core.tau import NO_TAU
from hsd.tasks.problem import Problem
from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE


def _constructed():
    """Two failed rollouts with known log-probs (so A_t = teacher - student is known).

    a: tau = 2 (shares two tokens with its peer); A_hsd = [0, -.2, -2, -.4, 0], A_opsd = [0, 0, -.5, 0, 0]
    b: tau = 0; A_hsd = [-2, 0, 1], A_opsd = [1, 0, -.5]
    """
    a = FailedRollout(
        problem_id="a", rollout=0, peer=1, pass_rate=0.25,
        completion_ids=[1, 2, 3, 4, 5], peer_ids=[1, 2, 9, 9],
        student_logps=[-1.0] * 5,
        teacher_logps={"opsd": [-1.0, -1.0, -1.5, -1.0, -1.0], "hsd": [-1.0, -1.2, -3.0, -1.4, -1.0]},
        reference_ids=[1, 2, 3, 0], tau=2,
    )  # fmt: skip
    b = FailedRollout(
        problem_id="b", rollout=2, peer=0, pass_rate=0.75,
        completion_ids=[7, 8, 9], peer_ids=[6, 8, 9],
        student_logps=[-2.0] * 3,
        teacher_logps={"opsd": [-1.0, -2.0, -2.5], "hsd": [-4.0, -2.0, -1.0]}, tau=0,
    )  # fmt: skip
    groups = [GroupOutcome("a", 4, 1), GroupOutcome("b", 4, 3), GroupOutcome("c", 4, 0)]
    return [a, b], groups


@pytest.fixture(scope="module")
def tables():
    rollouts, groups = _constructed()
    return credit_tables(rollouts, groups, widths=(0, 1, 2), window=2, bins=2)


def test_credit_is_teacher_minus_student_logprob():
    (a, b), _ = _constructed()
    assert a.credit("hsd") == pytest.approx([0, -0.2, -2, -0.4, 0])
    assert b.credit("opsd") == pytest.approx([1, 0, -0.5])


def test_mass_within_matches_hand_computed_shares(tables):
    # hsd: |A| sums 2.6 (a) + 3 (b) = 5.6; within w=0: 2 + 2; w=1: 2.6 + 2; w=2: everything
    assert tables["mass_within"]["hsd"] == pytest.approx({"0": 4 / 5.6, "1": 4.6 / 5.6, "2": 1.0})
    # opsd: sums .5 + 1.5 = 2; within w=0 and w=1: .5 + 1
    assert tables["mass_within"]["opsd"] == pytest.approx({"0": 0.75, "1": 0.75, "2": 1.0})
    assert tables["contexts"] == ["opsd", "hsd"]  # no rollout has a reference context scored


def test_tau_positive_subset_keeps_only_rollouts_that_share_a_prefix(tables):
    assert tables["n_tau_pos"] == 1
    assert tables["mass_within_tau_pos"]["hsd"] == pytest.approx({"0": 2 / 2.6, "1": 1.0, "2": 1.0})
    assert tables["mass_within_tau_pos"]["opsd"] == pytest.approx({"0": 1.0, "1": 1.0, "2": 1.0})
    assert tables["median_tau"] == 1.0
    assert tables["tau_zero_share"] == 0.5


def test_magnitude_at_tau_and_elsewhere(tables):
    assert tables["abs_credit_at_tau"]["hsd"] == pytest.approx(2.0)
    assert tables["abs_credit_elsewhere"]["hsd"] == pytest.approx((0.2 + 0.4 + 1.0) / 6)
    assert tables["abs_credit_at_tau"]["opsd"] == pytest.approx(0.75)
    assert tables["abs_credit_elsewhere"]["opsd"] == pytest.approx(0.5 / 6)
    # profile at offsets -2..2 for hsd: 0, .2, 2, (.4 + 0) / 2, (0 + 1) / 2
    assert tables["credit_profile"]["hsd"]["mean_abs"] == pytest.approx([0, 0.2, 2, 0.2, 0.5])
    assert tables["peak_credit_at_tau"]["hsd"] == {"at_tau": pytest.approx(2.0), "peak": pytest.approx(2.0),
                                                   "peak_offset": 0}  # fmt: skip
    assert tables["by_difficulty"]["medium"]["abs_credit_at_tau"]["hsd"] == pytest.approx(2.0)
    assert tables["by_difficulty"]["easy"]["median_tau"] == 0
    assert tables["by_difficulty"]["hard"]["n_rollouts"] == 0


def test_silence_curve_bins_by_relative_position(tables):
    # a's tokens sit at .1 .3 | .5 .7 .9, b's at .17 | .5 .83
    assert tables["silence_curve"]["bins"] == [0.25, 0.75]
    assert tables["silence_curve"]["hsd"] == pytest.approx([(0 + 0.2 + 2) / 3, (2 + 0.4 + 0 + 0 + 1) / 5])


def test_shared_prefix_with_peer_and_reference(tables):
    assert tables["shared_prefix"]["peer"] == {"n": 2, "median": 1.0, "mean": 1.0, "zero_share": 0.5}
    assert tables["shared_prefix"]["reference"] == {"n": 1, "median": 3.0, "mean": 3.0, "zero_share": 0.0}


def test_coverage_by_difficulty_against_formula(tables):
    buckets = tables["coverage"]["buckets"]
    # p = .25: three failures see the one success; f(.25, 4) = .75 (1 - .75^3)
    assert buckets["medium"] == {"n_problems": 1, "mean_pass_rate": 0.25, "empirical": 0.75,
                                 "formula": pytest.approx(0.75 * (1 - 0.75**3))}  # fmt: skip
    assert buckets["easy"]["empirical"] == pytest.approx(0.25)
    assert buckets["hard"]["empirical"] == 0.0
    assert buckets["all"]["empirical"] == pytest.approx(4 / 12)
    assert tables["coverage"]["p_star"] == pytest.approx(1 - 4 ** (-1 / 3))


def test_counts(tables):
    assert tables["counts"] == {
        "problems": 3, "rollouts": 12, "successes": 4, "failures": 8, "uncomputed": 0,
        "failed_with_peer": 4, "analysed": 2, "tau_none": 0, "groups_no_success": 1, "groups_all_success": 0,
        "tokens": 8,
    }  # fmt: skip


def test_a_rollout_identical_to_its_peer_has_no_tau_and_is_counted_so():
    (a, b), groups = _constructed()
    same = FailedRollout("s", 1, 0, 0.5, [5, 6], [5, 6], student_logps=[-1.0] * 2,
                         teacher_logps={"hsd": [-1.0, -3.0]}, tau=NO_TAU)  # fmt: skip
    tables = credit_tables([a, b, same], groups, widths=(0,))
    assert tables["counts"]["tau_none"] == 1 and tables["median_tau"] == 1.0  # a's 2 and b's 0
    assert tables["mass_within"]["hsd"] == pytest.approx({"0": 4 / 5.6})  # NO_TAU is skipped
    old_record = {**same.to_json(), "tau": None}  # credit.json rollouts written before NO_TAU
    assert FailedRollout.from_json(old_record).tau == NO_TAU


def test_random_control_equals_tau_table_when_every_position_is_tau():
    rollouts = [
        FailedRollout(
            "p", 0, 1, 0.5, [3], [4], student_logps=[-1.0], teacher_logps={"hsd": [-1.0 - k]}, tau=0
        )
        for k in range(1, 4)
    ]
    tables = credit_tables(rollouts, [GroupOutcome("p", 4, 2)], widths=(0, 2))
    assert tables["mass_within_random"]["hsd"] == tables["mass_within"]["hsd"] == {"0": 1.0, "2": 1.0}


def test_random_positions_are_seeded_in_range_and_roughly_uniform():
    rollouts = [FailedRollout("p", 0, 1, 0.5, list(range(10)), [99], tau=0) for _ in range(2000)]
    first, again, other = (random_positions(rollouts, s) for s in (0, 0, 1))
    assert first == again and first != other
    assert all(0 <= p < 10 for p in first)
    counts = [first.count(p) for p in range(10)]
    assert min(counts) > 150 and max(counts) < 250  # 200 expected per position


def test_credit_json_has_no_nan():
    rollouts, groups = _constructed()
    tables = credit_tables(rollouts, groups)  # w = 2..32 on 5-token rollouts: profile offsets mostly empty
    assert None in tables["credit_profile"]["hsd"]["mean_abs"]  # NaN became None
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in tables["mass_within"]["hsd"].values())
    assert set(tables["mass_within"]["hsd"]) == {"2", "4", "8", "16", "32"}


# ------------------------------------------------------------------------ the model side, on a tiny model
def _full_logprobs(model, ids: list[int], n_completion: int, temperature: float = 1.0) -> list[float]:
    """log p of the last n_completion tokens from one unpadded forward (independent of the batched code)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float() / temperature
    logps = torch.log_softmax(logits, dim=-1)
    start = len(ids) - n_completion
    return [float(logps[t - 1, ids[t]]) for t in range(start, len(ids))]


def test_score_rollouts_uses_the_trained_teachers_sequences(tiny_model_dir):
    from hsd.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    problem = Problem("q1", "What is 2 + 3?", "5", reference="2 + 3 = 5")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    completion, peer = encode("2+3=6") + [tokenizer.eos_token_id], encode("2+3=5") + [tokenizer.eos_token_id]
    rollouts = [
        FailedRollout("q1", 0, 1, 0.5, completion, peer, tau=4),
        FailedRollout("q1", 2, 1, 0.5, completion[:3], peer, tau=3),
    ]
    score_rollouts(model, tokenizer, rollouts, {"q1": problem}, ("opsd", "hsd", "reference"), batch_tokens=40)

    def chat(text):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]  # fmt: skip

    peer_text = "2+3=5"
    render = DEFAULT_TEACHER_TEMPLATE.render
    teacher_text = {
        "opsd": render(problem.prompt, answer="5"),
        "hsd": render(problem.prompt, answer="5", peer=peer_text),
        "reference": render(problem.prompt, reference="2 + 3 = 5"),
    }
    assert "2+3=5" in teacher_text["hsd"] and "5" in teacher_text["opsd"]
    for r in rollouts:
        ids = r.completion_ids
        assert r.student_logps == pytest.approx(
            _full_logprobs(model, chat(problem.prompt) + ids, len(ids)), abs=1e-5
        )
        for context, text in teacher_text.items():
            expected = _full_logprobs(model, chat(text) + ids, len(ids))
            assert r.teacher_logps[context] == pytest.approx(expected, abs=1e-5), context
            a = r.credit(context)
            assert len(a) == len(ids) and all(math.isfinite(x) for x in a)


def test_shared_prompt_passes_equal_whole_sequence_passes(tiny_model_dir):
    from hsd.analysis.credit import completion_logprobs
    from hsd.models import load_model

    model = load_model(str(tiny_model_dir))
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, 90, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(7), ids(12)]
    sequences = [(prompts[k % 2], ids(1 + 3 * k)) for k in range(7)] + [(ids(5), ids(4)), (prompts[0], [])]
    shared = completion_logprobs(model, sequences, batch_tokens=40, temperature=0.7)
    whole = completion_logprobs(model, sequences, batch_tokens=40, temperature=0.7, share_prompts=False)
    assert [len(x) for x in shared] == [len(c) for _, c in sequences]
    for a, b, (prompt, completion) in zip(shared, whole, sequences):
        assert a == pytest.approx(b, abs=1e-5)
        if completion:
            assert a == pytest.approx(
                _full_logprobs(model, prompt + completion, len(completion), 0.7), abs=1e-5
            )


def test_tables_aligned_at_the_true_error_when_the_verifier_knows_it():
    (a, b), groups = _constructed()
    a.error_position, b.error_position = 2, 1  # a: tau is the error; b: tau (0) comes before it
    tables = credit_tables([a, b], groups, widths=(0, 1, 2), window=2, bins=2)
    errors = tables["error_position"]
    assert (
        errors["n"] == 2
        and errors["tau_equals_error_share"] == 0.5
        and errors["tau_before_error_share"] == 0.5
    )
    # hsd |A|: a = [0, .2, 2, .4, 0] at 2; b = [2, 0, 1] at 1 -> w=0: 2 + 0; w=1: 2.6 + 3
    assert errors["mass_within"]["hsd"] == pytest.approx({"0": 2 / 5.6, "1": 5.6 / 5.6, "2": 1.0})
    assert errors["abs_credit_at_error"]["hsd"] == pytest.approx(1.0)
    assert credit_tables(*_constructed(), widths=(0,))["error_position"] is None


def test_error_token_maps_the_first_wrong_character_to_its_token():
    from hsd.analysis.credit import error_token
    from hsd.tasks.problem import Verdict

    tokens = ["12", "+3", "=", "16", ""]  # the last one: eos, invisible
    wrong = Verdict(0.0, "wrong", extra={"error_char": 6})  # "12+3=1|6"
    assert error_token(wrong, tokens, "12+3=16") == 3
    stopped = Verdict(0.0, "no_answer", extra={"error_char": 7})  # ended where "\nAnswer..." was due
    assert error_token(stopped, tokens, "12+3=16") == 4
    assert error_token(stopped, tokens[:4], "12+3=16") is None  # cut off: the wrong token was never sampled
    assert error_token(Verdict(0.0, "wrong"), tokens, "12+3=16") is None
    assert error_token(wrong, tokens, "12 + 3 = 16") is None  # tokens do not spell the text
