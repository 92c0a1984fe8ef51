"""`hsd bench`: the fixed batch, the turn-taking of trainers, and the commands' JSON on a tiny CPU model."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading

import pytest

from hsd.bench import cli, fixtures, meter, step, vs_trl
from hsd.errors import UserError


def test_tokenizer_round_trips_random_ids_one_token_per_character():
    tokenizer = fixtures.build_tokenizer(3000)
    assert len(tokenizer) == 3000
    batch = fixtures.fixed_batch(tokenizer, 3, 4, 20, seed=1)
    for ids in batch.completions:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[:-1]  # the eos is special


def test_fixed_batch_has_groups_with_and_without_success():
    tokenizer = fixtures.build_tokenizer(1000)
    batch = fixtures.fixed_batch(tokenizer, 5, 8, 16, seed=0)
    assert len(batch.completions) == 40 and {len(c) for c in batch.completions} == {16}
    counts = batch.success_counts
    assert 0 in counts and any(c > 0 for c in counts)
    assert batch == fixtures.fixed_batch(tokenizer, 5, 8, 16, seed=0)  # the same batch for every method


def test_scripted_rollouts_give_each_question_its_group_in_any_order():
    tokenizer = fixtures.build_tokenizer(1000)
    batch = fixtures.fixed_batch(tokenizer, 2, 3, 6, seed=0)
    rollout = fixtures.scripted_rollouts(batch, tokenizer)
    prompts = [batch.rows[1]["prompt"]] * 3 + [batch.rows[0]["prompt"]] * 3
    out = rollout(prompts, trainer=None)
    assert out["completion_ids"] == batch.completions[3:6] + batch.completions[0:3]
    reward = fixtures.table_reward(batch)
    assert reward(None, None, out["completion_ids"]) == batch.rewards[3:6] + batch.rewards[0:3]


def test_turn_table_runs_one_step_at_a_time_in_rotating_rounds():
    names, steps = ["a", "b", "c"], 3
    table = meter.TurnTable(names, steps)
    order, active = [], []

    def train(name):
        for k in range(steps):
            table.begin_step(name, k)
            active.append(name)
            assert len(active) == 1  # nobody else is inside a step
            order.append((k, name))
            active.remove(name)
        table.finish(name)

    threads = [threading.Thread(target=train, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert order == table.slots
    assert [n for _, n in order[:3]] == ["a", "b", "c"] and [n for _, n in order[3:6]] == ["b", "c", "a"]


def test_turn_table_stops_waiting_trainers_when_one_fails():
    table = meter.TurnTable(["a", "b"], 2)
    failed = []

    def b():
        try:
            table.begin_step("b", 0)
        except RuntimeError as error:
            failed.append(error)

    thread = threading.Thread(target=b)
    thread.start()
    table.finish("a", ValueError("boom"))
    thread.join(timeout=30)
    assert failed and isinstance(failed[0].__cause__, ValueError)


def _args(**overrides):
    """The arguments as `hsd bench step ...` parses them: other `--field value` pairs go to args.overrides."""
    assert cli.ACCEPTS_OVERRIDES
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    args, args.overrides = parser.parse_known_args(["step", *overrides.pop("argv", [])])
    return args


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--model-config"):
        cli.main(_args(argv=["--model-config", "no-such-shape"]))
    with pytest.raises(UserError, match="'no_such_field'"):
        cli.main(_args(argv=["--no_such_field", "1"]))
    with pytest.raises(ValueError, match="--completion-len"):
        cli.main(_args(argv=["--completion-len", "0"]))
    with pytest.raises(ValueError, match="--methods"):
        cli.main(_args(argv=["--methods", "ppo"]))


def test_each_option_sets_the_bench_setup_field_of_its_name():
    argv = ["--model-config", "qwen3-0.6b", "--random-init", "--batch", "2", "--group-size", "3",
            "--completion-len", "9", "--repeats", "5", "--warmup", "0", "--device", "cuda", "--dtype", "bfloat16",
            "--seed", "7", "--no-gradient-checkpointing", "--beta", "0.1"]  # fmt: skip
    setup = cli.setup_from_args(_args(argv=argv))
    assert setup == step.BenchSetup(
        "qwen3-0.6b", True, 2, 3, 9, 5, 0, "cuda", "bfloat16", 7, False, {"beta": 0.1}
    )
    assert cli.setup_from_args(_args()) == step.BenchSetup()


def test_a_misspelt_field_stops_hsd_bench_with_one_line(capsys):
    from hsd import cli as hsd_cli

    assert hsd_cli.main(["bench", "step", "--teacher_prefix_cahe", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'teacher_prefix_cache'" in err and len(err.splitlines()) == 1


def test_plain_switches_every_teacher_pass_optimisation_off():
    overrides = cli.config_overrides(_args(argv=["--plain", "--teacher_prefix_cache", "true"]))
    assert overrides["teacher_prefix_cache"] is True  # an explicit field wins
    assert overrides["skip_undistilled_teacher"] is False and overrides["analytic_distill_head"] is False


def test_field_values_are_read_as_hsd_train_reads_them(capsys):
    argv = ["--learning_rate", "1e-3", "--batch", "2", "--beta=0", "--divergence", "jsd"]
    overrides = cli.config_overrides(_args(argv=argv))
    assert overrides == {"learning_rate": 0.001, "beta": 0, "divergence": "jsd"}  # 1e-3 a number, not a str
    deprecated = cli.config_overrides(_args(argv=["--set", "learning_rate=1e-3", "--set", "beta=0"]))
    assert deprecated == {"learning_rate": 0.001, "beta": 0}
    assert "--set FIELD=VALUE is deprecated" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_step_on_the_tiny_config_writes_phases_and_ratios(tmp_path):
    out = tmp_path / "step.json"
    command = [sys.executable, "-m", "hsd", "bench", "step", "--model-config", "tiny", "--random-init"]
    command += [
        "--batch",
        "2",
        "--group-size",
        "4",
        "--completion-len",
        "8",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ]
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "update_time:" in proc.stdout
    report = json.loads(out.read_text())
    for metric in ("update_time", "step_time", "peak_memory"):
        for key in ("hsd_over_grpo", "opsd_over_grpo"):
            assert math.isfinite(report["ratios"][metric][key]) and report["ratios"][metric][key] > 0
    assert report["setup"]["vocab_size"] == 49_152 and report["setup"]["rollouts"] == 8
    methods = report["methods"]
    assert methods["hsd"]["median_s"]["teacher"] > 0 and methods["grpo"]["median_s"]["teacher"] == 0
    for result in methods.values():
        median = result["median_s"]
        assert median["update"] == pytest.approx(
            median["teacher"] + median["student_forward_backward"] + median["optimizer"]
        )
        assert median["step"] >= median["update"] and result["peak_memory_bytes"] > 0


@pytest.mark.slow
def test_bench_vs_trl_times_hsd_sdpo_and_grpo_in_one_run():
    setup = step.BenchSetup(batch=2, group_size=4, completion_len=8, repeats=1, warmup=0)
    report = vs_trl.run_vs_trl(setup)
    assert set(report["methods"]) == {"hsd", "sdpo", "grpo"}
    for metric in ("update_time", "step_time", "peak_memory"):
        for key in ("hsd_over_sdpo", "sdpo_over_grpo", "hsd_over_grpo"):
            assert report["ratios"][metric][key] > 0
    assert report["setup"]["sdpo"]["distillation_mode"] == "full_logits"
