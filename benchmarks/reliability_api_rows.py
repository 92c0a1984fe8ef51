"""The Python-API rows of docs/reliability.md on the quick-start recipe: a reward function returning +inf (HSD
and GRPO), and weights made NaN by a callback after step 3; each prints how the run ended and what is on disk.

usage: python benchmarks/reliability_api_rows.py [OUT_DIR]      (CPU, the cached testbed model; ~1 minute)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hsd.trainer.cli import build_trainer, load_recipe
from hsd.trainer.guards import RunStopped

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def infinite_reward(prompts, completions, **kwargs):
    return [math.inf] * len(completions)


class NaNAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)


def run(out: Path, name: str, callbacks=(), reward=None, **fields) -> None:
    values = dict(output_dir=str(out / name), report_to=[], max_steps=8, save_steps=1, **fields)
    script, args = load_recipe(RECIPE, values)
    trainer = build_trainer(script, args, callbacks=list(callbacks))
    if reward is not None:  # the recipe's verifier replaced by `reward`
        trainer.reward_funcs[0] = reward
        trainer.reward_func_names[0] = reward.__name__
    try:
        trainer.train()
        ended = f"finished at step {trainer.state.global_step}"
    except RunStopped as stopped:
        ended = f"stopped: {stopped}"
    files = sorted((out / name).glob("checkpoint-*/*.safetensors"))
    bad = [f for f in files if not all(torch.isfinite(t).all() for t in load_file(f).values())]
    print(
        f"{name}: {ended}\n  checkpoints: {len({f.parent for f in files})}, with non-finite tensors: {len(bad)}"
    )


def main(out: Path) -> None:
    run(out, "hsd-reward-inf", reward=infinite_reward)
    run(out, "grpo-reward-inf", reward=infinite_reward, method="grpo")
    run(out, "nan-after-step-3", callbacks=[NaNAfterStep(3)])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hsd-reliability-api"))
