"""Adapter runs (peft: LoRA and the other adapters injected into the layers): teachers without a model copy.

An adapter run trains the adapter only; the base weights stay as loaded. So:

- the live teacher is the policy with its adapter on, as without an adapter;
- the initial policy is the base with the adapter switched off (`disable_adapter()`) when the adapter starts
  as the identity (LoRA's B = 0): a `frozen` teacher and the KL reference (beta > 0, TRL's own handling)
  cost no copy at all;
- otherwise a `frozen` teacher is a second adapter, `TEACHER_ADAPTER`, a copy of the initial adapter on the
  same base, and an `ema` teacher is always that second adapter, updated after each optimizer step from the
  trained adapter piece by piece (`engines.blend_params`). It is a parameter of the policy, so every engine
  splits it exactly as it splits the trained adapter.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from hsd.trainer.engines import blend_params, local_piece, release_gathered

TEACHER_ADAPTER = "hsd_teacher"


def is_adapter_model(model) -> bool:
    """Whether `model` is a peft `PeftModel` (False for a model's name, and without importing anything when
    peft is missing)."""
    from accelerate.utils import is_peft_model

    return not isinstance(model, str) and is_peft_model(model)


def check_adapter_supported(model) -> None:
    """Refuse adapters the teacher and student passes cannot run: they call the decoder stack directly, so
    an adapter must live in its layers (LoRA, DoRA, IA3, ...), not in extra tokens (prompt learning)."""
    config = model.peft_config[model.active_adapter]
    if config.is_prompt_learning:
        raise ValueError(
            f"peft_config {type(config).__name__} ({config.peft_type}) is not supported: the teacher and "
            "student passes call the decoder layers directly; use an adapter in the layers, e.g. LoraConfig"
        )


def adapter_parameters(model, adapter: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs of one adapter of `model` (`.<adapter>.` in the name), in model order."""
    key = f".{adapter}."
    return [(name, param) for name, param in model.named_parameters() if key in name]


def teacher_pairs(model) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(teacher adapter's parameters, the trained adapter's matching parameters), in the same order."""
    trained = f".{model.active_adapter}."
    teacher = adapter_parameters(model, TEACHER_ADAPTER)
    policy = [model.get_parameter(name.replace(f".{TEACHER_ADAPTER}.", trained)) for name, _ in teacher]
    return [param for _, param in teacher], policy


def starts_as_identity(model) -> bool:
    """Whether the active adapter changes nothing yet: plain LoRA (no DoRA, no modules_to_save) whose B
    matrices are all zero, as `LoraConfig`'s default initialisation makes them. Partitioned parameters are
    read piece by piece, every process's count summed."""
    config = model.peft_config[model.active_adapter]
    if type(config).__name__ != "LoraConfig" or config.use_dora or config.modules_to_save:
        return False
    named = adapter_parameters(model, model.active_adapter)
    b = [p for name, p in named if "lora_B" in name or "lora_embedding_B" in name]
    nonzero = torch.tensor(float(sum(int(local_piece(p).count_nonzero()) for p in b)))
    if any(hasattr(p, "ds_tensor") for p in b) and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            nonzero = nonzero.cuda()
        torch.distributed.all_reduce(nonzero)
    return bool(b) and nonzero.item() == 0


@torch.no_grad()
def add_teacher_adapter(model) -> None:
    """`TEACHER_ADAPTER`: a frozen copy of the active adapter (same config, weights and dtypes); the active
    adapter stays the trained one. Call before the engine prepares the model."""
    config = model.peft_config[model.active_adapter]
    model.add_adapter(TEACHER_ADAPTER, config)
    model.set_adapter(model.active_adapter)  # the trained adapter: active and trainable, the copy frozen
    teacher, policy = teacher_pairs(model)
    for t, s in zip(teacher, policy, strict=True):
        t.data = s.detach().clone()
        t.requires_grad_(False)


@contextmanager
def active_adapter(model, adapter: str | None):
    """`adapter` active inside (None: every adapter off); every `requires_grad` flag is as before after
    (peft's switches also set them, which the optimizer and the engine must not see)."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        if adapter is None:
            with model.disable_adapter():
                yield
        else:
            previous = model.active_adapter
            model.set_adapter(adapter, inference_mode=True)
            try:
                yield
            finally:
                model.set_adapter(previous)
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@dataclass(frozen=True)
class AdapterTeacher:
    """The teacher of an adapter run: the policy's own forward with `adapter` active (None: adapter off)."""

    adapter: str | None

    @classmethod
    def build(cls, model, teacher_weights: str) -> AdapterTeacher:
        """`frozen` with an identity adapter: the adapter off; `frozen` otherwise and `ema`: a teacher
        adapter (added to `model` here)."""
        if teacher_weights == "frozen" and starts_as_identity(model):
            return cls(None)
        add_teacher_adapter(model)
        return cls(TEACHER_ADAPTER)

    def active(self, model):
        """The context of the teacher pass on `model` (the unwrapped policy): the teacher's adapter on."""
        return active_adapter(model, self.adapter)

    def update_ema(self, model, decay: float) -> None:
        """teacher adapter <- decay * teacher adapter + (1 - decay) * trained adapter, on each process's
        shards of `model` (the unwrapped policy); nothing else changes."""
        release_gathered(model)
        blend_params(*teacher_pairs(model), decay=decay)

    def parameters(self, model) -> list[tuple[str, torch.nn.Parameter]] | None:
        """The teacher's own weights, to checkpoint (None: it has none, the adapter is off)."""
        return None if self.adapter is None else adapter_parameters(model, self.adapter)
