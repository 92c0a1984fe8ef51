"""Sharded training on two CPU processes (gloo) with the shipped accelerate configs: FSDP2, DeepSpeed ZeRO-3
and ZeRO-2 each train every teacher kind for 2 steps, split the parameters for real, and log the losses,
gradient norms and peers of a 1-process run on the same batch and seed.

The launch configs are configs/accelerate/*.yaml with only the device settings changed for this machine
(2 processes, no bf16, DeepSpeed on CPU); the `paper` run is configs/qwen3-8b-paper.yaml's trainer fields
(beta 1e-3, its AdamW, gradient checkpointing) on the tiny model; `lora_*` train a LoRA adapter with each
teacher kind (`lora_beta`: the KL reference is the adapter switched off). engine_run.py trains the runs in
sequence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_fsdp import cpu_config

HERE = Path(__file__).parent
CONFIGS = HERE.parents[1] / "configs" / "accelerate"
RUN = HERE / "engine_run.py"
LORA_RUNS = ["lora_live", "lora_frozen", "lora_ema", "lora_beta"]
ALL_RUNS = ["grpo", "live", "frozen", "ema", "paper", *LORA_RUNS]

# engine -> (shipped config, its deepspeed_config changes, runs, engine name)
ENGINES = {
    "fsdp2": ("fsdp2.yaml", {}, ALL_RUNS, "FSDP2"),
    "zero3": ("deepspeed_zero3.yaml", {}, ["live", "frozen", "ema", "paper", *LORA_RUNS], "DeepSpeed ZeRO-3"),
    "zero2": (
        "deepspeed_zero3.yaml",
        {"zero_stage": 2, "zero3_init_flag": False},
        ["live", *LORA_RUNS],
        "DeepSpeed ZeRO-2",
    ),
}


def launch(model_dir, out: Path, per_device: int, runs: list[str], config: Path | None, ok: bool = True):
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    layout = (
        ["--config_file", str(config)]
        if config
        else ["--cpu", "--num_processes", "1", "--mixed_precision", "no"]
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *layout, str(RUN), str(model_dir), str(out)]
    result = subprocess.run(
        [*cmd, str(per_device), *runs], env=env, capture_output=True, text=True, timeout=900
    )
    if not ok:
        return result
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory) -> dict:
    return launch(tiny_model_dir, tmp_path_factory.mktemp("one") / "one.json", 16, ALL_RUNS, None)


def test_one_process_reference_is_sensitive(one_process):
    """The runs differ where their teachers differ, so agreeing with them below means something."""
    assert all(run["engine"] == "no engine" for run in one_process.values())
    frozen, ema, live = (one_process[k]["loss"][1] for k in ("frozen", "ema", "live"))
    assert len({frozen, ema, live}) == 3
    assert one_process["paper"]["beta"] == 1e-3 and one_process["paper"]["copy_values"] is not None
    lora = [one_process[k]["loss"][1] for k in LORA_RUNS]
    assert len(set(lora)) == 4 and all(one_process[k]["copy_values"] is None for k in LORA_RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_sharded_processes_match_one_process(engine, one_process, tiny_model_dir, tmp_path):
    shipped, deepspeed, runs, name = ENGINES[engine]
    config = cpu_config(CONFIGS / shipped, tmp_path / f"{engine}.yaml", **deepspeed)
    two = launch(tiny_model_dir, tmp_path / "two.json", 8, runs, config)
    for run in runs:
        got, want = two[run], one_process[run]
        assert (got["engine"], got["processes"]) == (name, 2), run
        assert got["distributed_type"] == (
            "DistributedType.FSDP" if engine == "fsdp2" else "DistributedType.DEEPSPEED"
        )
        local, full = got["policy_values"]
        assert local < full, (run, "policy not split")  # ZeRO-2: its optimizer state is what is split
        if got["copy_values"] is not None and engine != "zero2":  # ZeRO-2's copies are whole (stage 0)
            assert got["copy_values"][0] < got["copy_values"][1], (run, "teacher / reference not split")
        assert (got["copy_values"] is None) == (want["copy_values"] is None), run
        assert got["peers"] == want["peers"], run
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3), run
        # GRPO's loss on scripted on-policy rollouts is ~1e-8 (advantages cancel): compare it absolutely.
        tolerance = dict(abs=1e-6) if run == "grpo" else dict(rel=1e-3)
        assert got["loss"] == pytest.approx(want["loss"], **tolerance), run
        if run == "lora_ema":  # the EMA adapter, as this process holds it: real values, updated
            ema = got["ema_adapter"]
            assert 0 < ema["values"], run
            assert ema["values"] < want["ema_adapter"]["values"] or engine == "zero2", (run, "not split")
            assert ema["differs_from_trained"] and ema["moved"], run


def test_fsdp_config_that_would_not_run_fsdp_fails_at_start(tiny_model_dir, tmp_path):
    """use_cpu=True under an FSDP launch: accelerate would silently train with DDP; hsd refuses, naming both."""
    config = cpu_config(CONFIGS / "fsdp2.yaml", tmp_path / "fsdp2.yaml")
    result = launch(tiny_model_dir, tmp_path / "out.json", 8, ["use_cpu"], config, ok=False)
    assert result.returncode != 0
    message = "launched with an FSDP config, but the run would train with DDP (use_cpu=True)"
    assert message in result.stderr, result.stderr[-3000:]
