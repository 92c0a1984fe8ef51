"""Helpers of benchmarks/gpu/run.sh: the environment, a micro model config for the dry run, the quick-start
run's metrics and the summary of every step (the three targets' ratios first).

    python benchmarks/gpu/report.py env OUT.json
    python benchmarks/gpu/report.py micro-config DIR
    python benchmarks/gpu/report.py quickstart RUN_DIR OUT.json
    python benchmarks/gpu/report.py summary OUTDIR STEPS.tsv WORKDIR
    python benchmarks/gpu/report.py print OUTDIR
"""

from __future__ import annotations

import json
import platform
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "torch",
    "triton",
    "transformers",
    "accelerate",
    "trl",
    "datasets",
    "pyarrow",
    "pandas",
    "numpy",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "liger-kernel",
    "math-verify",
    "pytest",
)
# The targets: HSD update / GRPO update, HSD peak memory / GRPO peak memory, HSD step / SDPO step.
TARGETS = {
    "update_hsd_over_grpo": ("step.json", ("ratios", "update_time", "hsd_over_grpo"), 1.5),
    "peak_memory_hsd_over_grpo": ("step.json", ("ratios", "peak_memory", "hsd_over_grpo"), 1.15),
    "step_hsd_over_sdpo": ("vs_trl.json", ("ratios", "step_time", "hsd_over_sdpo"), 1.0),
}


def environment() -> dict:
    """Python, the versions of the packages that matter, and the device."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": platform.python_version(), "executable": sys.executable, "packages": versions}
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
            env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
            env["cuda"] = torch.version.cuda
    except ImportError as error:
        env["torch_error"] = str(error)
    for module in ("trl", "datasets", "hsd.bench", "hsd.trainer.trainer", "liger_kernel"):
        try:
            __import__(module)
            env.setdefault("imports", {})[module] = "ok"
        except Exception as error:  # recorded, not raised: the steps that need it will fail visibly
            env.setdefault("imports", {})[module] = f"{type(error).__name__}: {error}"
    return env


def micro_config(directory: Path) -> None:
    """A Qwen3 config small enough for a CPU dry run (same model class as the qwen3-1.7b shape)."""
    from transformers import Qwen3Config

    Qwen3Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ).save_pretrained(directory)


def quickstart(run_dir: Path) -> dict:
    """Per-step metrics of an `hsd train` run (its metrics.jsonl) and the first / last rewards."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {"error": f"{path} was not written"}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rewards = [row["reward"] for row in rows if "reward" in row]
    recipe = run_dir / "recipe.json"
    return {
        "steps": len(rows),
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "final_model_written": (run_dir / "final").is_dir(),
        "recipe": json.loads(recipe.read_text())["config"] if recipe.is_file() else None,
        "metrics": rows,
    }


def dig(data, keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def junit(path: Path) -> dict | None:
    """Counts and failing test names of a pytest --junitxml file."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failing = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failing": failing}


def summary(out: Path, steps_tsv: Path, work: Path) -> dict:
    """Every step's state, the targets' ratios, the head's times and memory, the correctness counts."""
    steps = []
    for line in steps_tsv.read_text().splitlines():
        name, state, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        steps.append({"step": name, "state": state, "seconds": int(seconds or 0), "detail": detail})
    loaded = {}
    for name in ("step.json", "vs_trl.json", "head.json", "profile.json", "quickstart.json"):
        path = out / name
        loaded[name] = json.loads(path.read_text()) if path.is_file() else None
    targets = {}
    for key, (file, keys, limit) in TARGETS.items():
        value = dig(loaded[file], keys)
        targets[key] = {
            "ratio": value,
            "target": f"<= {limit}",
            "met": None if value is None else value <= limit,
        }
    head = loaded["head.json"]
    vs_trl = loaded["vs_trl.json"]
    return {
        "steps": steps,
        "targets": targets,
        "step_ratios": dig(loaded["step.json"], ("ratios",)),
        "vs_trl": None
        if vs_trl is None
        else {"completion_len": vs_trl["setup"]["completion_len"], "ratios": vs_trl["ratios"]},
        "head": None
        if head is None
        else {
            name: {
                k: v[k] for k in ("median_s", "time_over_hsd", "peak_memory_bytes", "max_abs_diff_vs_float32")
            }
            for name, v in head["variants"].items()
        },
        "head_skipped": None if head is None else head["skipped"],
        "correctness": junit(work / "correctness.xml"),
        "quickstart": None
        if loaded["quickstart.json"] is None
        else {k: loaded["quickstart.json"].get(k) for k in ("steps", "first_reward", "last_reward", "error")},
    }


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "env":
        Path(rest[0]).write_text(json.dumps(environment(), indent=2) + "\n")
        print(Path(rest[0]).read_text())
    elif command == "micro-config":
        micro_config(Path(rest[0]))
    elif command == "quickstart":
        Path(rest[1]).write_text(json.dumps(quickstart(Path(rest[0])), indent=2) + "\n")
    elif command == "summary":
        out = Path(rest[0])
        (out / "summary.json").write_text(
            json.dumps(summary(out, Path(rest[1]), Path(rest[2])), indent=2) + "\n"
        )
    elif command == "print":
        data = json.loads((Path(rest[0]) / "summary.json").read_text())
        for step in data["steps"]:
            print(f"{step['step']:<14} {step['state']:<10} {step['seconds']:>5} s  {step['detail']}")
        for key, value in data["targets"].items():
            print(f"{key:<28} {value['ratio']}  (target {value['target']}, met: {value['met']})")
        print(f"correctness: {data['correctness']}")
    else:
        raise SystemExit(f"report.py: unknown command {command!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
