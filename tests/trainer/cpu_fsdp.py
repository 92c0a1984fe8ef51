"""Run the shipped accelerate configs on CPU processes over gloo (a testing utility, never used in training).

accelerate only enables FSDP on an accelerator: on a CPU-only machine with `use_cpu` it silently runs plain
DDP, and without it every process trains alone. `enable()` makes a process started by `accelerate launch`
with an FSDP config look like one GPU rank whose device is the CPU, so that `fully_shard` really splits the
parameters over the processes (gloo). DeepSpeed and DDP need no patch, only `use_cpu: true`.

    python tests/trainer/cpu_fsdp.py --cpu-config configs/accelerate/fsdp2.yaml /tmp/fsdp2-cpu.yaml
    accelerate launch --config_file /tmp/fsdp2-cpu.yaml tests/trainer/cpu_fsdp.py -m hsd.cli train ...
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def fsdp_launch() -> bool:
    """True in a process started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def free_port() -> int:
    """A TCP port free now, for a launch's rendezvous (a fixed port collides with a concurrent test run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_config(shipped: Path, out: Path, *, processes: int = 2, port: int | None = None, **deepspeed) -> Path:
    """A shipped accelerate config with only the device settings changed: `processes` CPU processes, fp32,
    `use_cpu` except for FSDP (which runs through `enable()`); `deepspeed` updates its deepspeed_config."""
    import yaml

    config = yaml.safe_load(Path(shipped).read_text())
    config.update(num_processes=processes, mixed_precision="no", main_process_port=port or free_port())
    config["use_cpu"] = config["distributed_type"] != "FSDP"
    config.get("deepspeed_config", {}).update(deepspeed)
    Path(out).write_text(yaml.safe_dump(config))
    return Path(out)


def enable() -> None:
    """Under an FSDP launch, a rank without CUDA joins a gloo group as a "GPU" whose device is the CPU; any
    other process is left alone. Call it before the first `Accelerator` (or `TrainingArguments`)."""
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


if __name__ == "__main__":
    if sys.argv[1] == "--cpu-config":  # --cpu-config SHIPPED OUT
        print(cpu_config(Path(sys.argv[2]), Path(sys.argv[3])))
        sys.exit(0)
    enable()  # then run a module (-m name ...) or a script (path ...) with the patch in place
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
