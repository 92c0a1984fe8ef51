"""Let accelerate's FSDP path run on CPU processes over gloo (a testing utility, never used in training).

accelerate only enables FSDP on an accelerator: on a CPU-only machine with `use_cpu` it silently runs plain
DDP, and without it every process trains alone. `enable()` makes a `torchrun`/`accelerate launch` process
look like one GPU rank whose device is the CPU, so that `fully_shard` really splits the parameters over
the processes (gloo). Call it before the first `Accelerator` (or `TrainingArguments`) is built.

usage as a launcher: accelerate launch --config_file CPU_FSDP.yaml tests/trainer/cpu_fsdp.py -m hsd.cli train ...
"""

from __future__ import annotations

import os
import runpy
import sys


def fsdp_launch() -> bool:
    """True in a process started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable() -> None:
    """Under an FSDP launch (ACCELERATE_USE_FSDP), a rank without CUDA joins a gloo group as a "GPU" whose
    device is the CPU; anything else is left alone."""
    if not fsdp_launch():
        return
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    prepare_backend = PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if int(os.environ.get("LOCAL_RANK", -1)) != -1 and not cpu and not torch.cuda.is_available():
            return "gloo", DistributedType.MULTI_GPU
        return prepare_backend(self, cpu, sagemaker_dp, backend)

    def set_device(self):
        if self.device is None:
            self.device = torch.device("cpu")

    PartialState._prepare_backend = _prepare_backend
    PartialState.set_device = set_device


if __name__ == "__main__":  # run a module (-m name) or a script with the patch in place
    enable()
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
