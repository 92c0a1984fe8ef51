"""Method presets fill the fields a user left unset and never override a user's value (HSDConfig), on every
route: Python, TRL's HfArgumentParser, and `hsd train`'s recipe and command line."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import HfArgumentParser

from hsd import HSDConfig
from hsd.core.contexts import CONTEXT_MODES
from hsd.core.methods import METHODS
from hsd.trainer.cli import build_trainer, load_recipe, write_recipe
from hsd.trainer.config import PRESET_FIELDS, method_preset

# every (method, field, value) of the preset table
PRESETS = [(method, name, value) for method in METHODS for name, value in method_preset(method).items()]
CHOICES = {
    "context": CONTEXT_MODES,
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo"),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
}


def _other(name: str, value):
    """A valid value of field `name` that is not the preset's `value`."""
    if name in CHOICES:
        return next(choice for choice in CHOICES[name] if choice != value)
    if isinstance(value, bool):
        return not value
    return round(value + 0.25, 6)


def _config(**values) -> HSDConfig:
    return HSDConfig(output_dir="unused", use_cpu=True, report_to=[], **values)


def test_the_preset_table_covers_every_preset_field():
    assert {name for _, name, _ in PRESETS} == set(PRESET_FIELDS)


@pytest.mark.parametrize("method, name, preset", PRESETS)
def test_a_user_value_survives_the_preset(method, name, preset):
    mine = _other(name, preset)
    config = _config(method=method, **{name: mine})
    assert getattr(config, name) == mine
    assert name not in config.filled_by_preset


@pytest.mark.parametrize("method, name, preset", PRESETS)
def test_an_unset_field_takes_the_preset(method, name, preset):
    config = _config(method=method)
    assert getattr(config, name) == preset
    assert config.filled_by_preset[name] == preset


def test_a_user_value_equal_to_trls_default_is_still_the_users():
    config = _config(method="gspo", loss_type="dapo", epsilon=0.2)  # TRL's defaults; gspo's are grpo, 3e-4
    assert (config.loss_type, config.epsilon, config.epsilon_high) == ("dapo", 0.2, 4e-4)
    assert config.filled_by_preset["epsilon_high"] == 4e-4 and "epsilon" not in config.filled_by_preset


def test_a_trl_field_no_preset_sets_keeps_trls_default():
    config = _config(method="hsd")
    assert (config.loss_type, config.epsilon, config.epsilon_high, config.mask_truncated_completions) == (
        "dapo",
        0.2,
        None,
        False,
    )
    assert not {"loss_type", "epsilon"} & set(config.filled_by_preset)


def test_presets_fill_through_trls_argument_parser():
    # HfArgumentParser hands every field to the constructor, defaults included
    argv = ["--output_dir", "unused", "--use_cpu", "true", "--method", "dapo", "--epsilon_high", "0.3"]
    (config,) = HfArgumentParser((HSDConfig,)).parse_args_into_dataclasses(argv)
    assert (config.epsilon_high, config.epsilon, config.mask_truncated_completions) == (0.3, 0.2, True)


def test_dapo_with_epsilon_high_0_3_trains_with_0_3(tiny_model_dir, tmp_path):
    """`method: dapo` + `epsilon_high: 0.3` in a recipe: the trainer clips with 0.3, and recipe.json says the
    preset filled epsilon (0.2) but not epsilon_high."""
    recipe = tmp_path / "dapo.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"model": str(tiny_model_dir), "dataset": "testbed:chain?variant=single&n=8&split=train",
             "method": "dapo", "epsilon_high": 0.3, "use_cpu": True, "report_to": [], "num_generations": 4,
             "per_device_train_batch_size": 4, "max_completion_length": 16, "output_dir": str(tmp_path / "run")}
        )
    )  # fmt: skip
    script, args = load_recipe(recipe, ["--scale_rewards", "none"])
    trainer = build_trainer(script, args)
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.loss_type) == (0.2, 0.3, "dapo")
    assert trainer.scale_rewards == "none"  # the command line's value, not the preset's group
    written = json.loads(write_recipe(tmp_path, script, args).read_text())
    assert written["config"]["epsilon_high"] == 0.3 and written["config"]["scale_rewards"] == "none"
    assert written["filled_by_preset"]["epsilon"] == 0.2
    assert not {"epsilon_high", "scale_rewards"} & set(written["filled_by_preset"])
    trainer.run_lock.release()
