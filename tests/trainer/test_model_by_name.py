"""HSDTrainer takes a model by name, as TRL's trainers do: a checkpoint folder (or a hub id) is handed to
TRL as it is, and trains."""

from __future__ import annotations

from scripted import arithmetic_dataset

from hsd import HSDConfig, HSDTrainer


def test_a_model_folder_given_by_name_trains_one_step(tiny_model_dir, tmp_path):
    args = HSDConfig(output_dir=str(tmp_path), method="hsd", per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=8, max_steps=1, use_cpu=True, bf16=False, report_to=[],
                     save_strategy="no", logging_steps=1)  # fmt: skip
    trainer = HSDTrainer(str(tiny_model_dir), reward_funcs=lambda completions, **kw: [1.0] * len(completions),
                         args=args, train_dataset=arithmetic_dataset(4))  # fmt: skip
    assert trainer.model.name_or_path == str(tiny_model_dir)
    trainer.train()
    assert trainer.state.global_step == 1
