"""Copies of the policy (reference, frozen or EMA teacher) under every training engine accelerate offers.

A copy gets the policy's weights when it is built (the policy is not prepared yet: ZeRO-3 parameters may
already be partitioned, which are gathered one at a time; under FSDP process 0's weights are broadcast),
and is prepared for the same engine as the policy, so its parameters are split the same way: under
DeepSpeed ZeRO-3 each parameter's local partition (`param.ds_tensor`), under FSDP2 each DTensor's local
shard, elsewhere (no engine, DDP, ZeRO-0/1/2) the full tensor. The EMA update is then elementwise on the
local pieces, with no gather:

    teacher_local <- decay * teacher_local + (1 - decay) * policy_local
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType

ZERO3 = "DeepSpeed ZeRO-3"


def engine_name(accelerator) -> str:
    """The engine that runs the model, as a user names it: 'FSDP2', 'DeepSpeed ZeRO-2', 'DDP', ..."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    if kind == DistributedType.NO:
        return "no engine"
    return "DDP"


def gathers_parameters(accelerator) -> bool:
    """True when engine hooks all-gather parameters around each forward (ZeRO-3, FSDP): the gathered buffers
    must not be created under torch.inference_mode, or the next forward with autograd fails on them."""
    name = engine_name(accelerator)
    return name == ZERO3 or name.startswith("FSDP")


def teacher_stop_gradient(accelerator, inference_mode: bool):
    """The context of the teacher pass: torch.inference_mode when asked and safe, else torch.no_grad."""
    return torch.inference_mode if inference_mode and not gathers_parameters(accelerator) else torch.no_grad


def check_engine_launched(accelerator, use_cpu: bool) -> None:
    """Raise when `accelerate launch` was given an FSDP config but FSDP is not what runs: accelerate enables
    FSDP only on GPUs (or other accelerators), and otherwise silently trains with DDP (use_cpu) or with each
    process alone."""
    import os

    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if launched and accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"accelerate was launched with an FSDP config, but the run would train with "
            f"{engine_name(accelerator)} (use_cpu={use_cpu}): accelerate runs FSDP only on GPUs or other "
            "accelerators; launch with a DDP config for CPU processes"
        )


def check_copy_supported(accelerator, field: str, value: str) -> None:
    """Raise, naming the engine and the field, where a sharded copy of the policy cannot be built."""
    name = engine_name(accelerator)
    if name == "FSDP1":
        raise ValueError(
            f"{field}={value!r} is not supported under FSDP1 (fsdp_version: 1 in the accelerate config): "
            "use fsdp_version: 2, or teacher_weights='live'"
        )


def local_piece(param: torch.nn.Parameter) -> torch.Tensor:
    """The locally held part of a parameter: the ZeRO-3 partition `ds_tensor`, the FSDP2 DTensor's local
    shard, or (no engine, DDP, ZeRO-0/1/2) the parameter itself."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    if hasattr(param, "to_local"):
        return param.to_local()
    return param.data


def local_pieces(module: torch.nn.Module) -> list[torch.Tensor]:
    """`local_piece` of each parameter, in `parameters()` order."""
    return [local_piece(param) for param in module.parameters()]


def release_gathered(module: torch.nn.Module) -> None:
    """FSDP2: drop unsharded parameters a forward left behind (reshard_after_forward: false), so the next
    forward gathers the updated shards."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def regather_zero3(params: list[torch.nn.Parameter]) -> None:
    """ZeRO-3: after partitions of `params` were written, free any gathered copy and rebuild the persistent
    (always gathered) parameters from their partitions, as DeepSpeed does after an optimizer step. Parameters
    that are not partitioned are left alone."""
    params = [p for p in params if hasattr(p, "ds_tensor")]
    if not params:
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [p for p in params if p.ds_status == ZeroParamStatus.AVAILABLE]
    if gathered:
        gathered[0].partition(gathered)
    persistent = [p for p in params if getattr(p, "ds_persist", False)]
    if persistent:
        persistent[0].all_gather(persistent)


@torch.no_grad()
def blend_into(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, on each process's local pieces (decay 0: a copy).

    Both modules must be the same architecture prepared by the same engine (identically split)."""
    release_gathered(target)
    blend_params(list(target.parameters()), list(source.parameters()), decay)


@torch.no_grad()
def blend_params(targets: list[torch.nn.Parameter], sources: list[torch.nn.Parameter], decay: float) -> None:
    """Each target <- decay * target + (1 - decay) * its source, on the local pieces; each pair must be
    split alike (one parameter of two identically prepared copies, or of two adapters of one model)."""
    target_pieces, source_pieces = [local_piece(p) for p in targets], [local_piece(p) for p in sources]
    if [t.shape for t in target_pieces] != [s.shape for s in source_pieces]:
        raise RuntimeError(
            "the copy of the policy is not split like the policy; cannot update it shard by shard"
        )
    for t, s in zip(target_pieces, source_pieces, strict=True):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)
    regather_zero3(targets)


@torch.no_grad()
def copy_weights(copy: torch.nn.Module, policy: torch.nn.Module) -> None:
    """Give an unprepared copy the policy's weights. ZeRO-3-partitioned parameters (loaded or built under
    `deepspeed.zero.Init`) are gathered one pair at a time, so no process ever holds a whole model twice."""
    params = list(copy.parameters()) + list(policy.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        copy.load_state_dict(policy.state_dict())
        return
    import deepspeed

    for t, s in zip(copy.parameters(), policy.parameters(), strict=True):
        with deepspeed.zero.GatheredParameters([t, s], modifier_rank=0):
            t.data.copy_(s.data.to(t.dtype))


def broadcast_from_rank0(prepared_copy: torch.nn.Module, policy: torch.nn.Module, accelerator) -> None:
    """FSDP: load process 0's full weights into the sharded copy. With `fsdp_cpu_ram_efficient_loading` only
    process 0 holds the real weights before the policy is prepared (the others get them then)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = policy.state_dict() if accelerator.is_main_process else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(prepared_copy, state, options=options)


def new_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """An untrained model of the policy's class, config and dtype, frozen for inference. Built through
    `_from_config` so that under ZeRO-3 it is created partitioned (`deepspeed.zero.Init`), never whole."""
    dtype = next(policy.parameters()).dtype
    return type(policy)._from_config(policy.config, dtype=dtype).eval().requires_grad_(False)


def prepare_copy(copy: torch.nn.Module, accelerator, is_deepspeed: bool, is_fsdp: bool):
    """Wrap a copy for the policy's engine, as TRL prepares its reference model."""
    from trl.models import prepare_deepspeed, prepare_fsdp

    if is_deepspeed:
        return prepare_deepspeed(copy, accelerator)
    if is_fsdp:
        return prepare_fsdp(copy, accelerator)
    return accelerator.prepare_model(copy, evaluation_mode=True)


def policy_copy(policy: torch.nn.Module, accelerator, prepare, *, is_deepspeed: bool, is_fsdp: bool):
    """A separate copy of the unwrapped `policy` (reference, frozen or EMA teacher) with its current weights,
    `prepare(copy)` applied, then wrapped for the policy's engine like TRL's reference model: gathered where
    partitioned, split like the policy."""
    copy = new_copy(policy)
    copy_weights(copy, policy)
    prepare(copy)
    copy = prepare_copy(copy, accelerator, is_deepspeed, is_fsdp)
    if is_fsdp:
        broadcast_from_rank0(copy, policy, accelerator)
    return copy
