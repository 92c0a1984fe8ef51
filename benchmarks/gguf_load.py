"""Loading SmolLM2-135M (model and tokenizer) from its GGUF file against the checkpoint folder hsd converts
it into on first use (`hsd.models.convert_gguf`), in one run on this machine.

    python benchmarks/gguf_load.py [--repeats 2]

Each repeat loads both ways, alternating, in a fresh process each (so no import or file cache of one load
helps the next more than the other). Prints the median seconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

LOAD = """
import sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer
where, gguf = sys.argv[1], sys.argv[2] or None
kwargs = {"gguf_file": gguf} if gguf else {}
start = time.perf_counter()
AutoTokenizer.from_pretrained(where, **kwargs)
AutoModelForCausalLM.from_pretrained(where, **kwargs)
print(time.perf_counter() - start)
"""


def timed_load(where: str, gguf: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, where, gguf], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from hsd.models import load_model, resolve_model, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HSD_CACHE_DIR"] = cache
        load_model("smollm2")  # converts into the temporary cache
        folder = resolve_model("smollm2").pretrained
        times = {"gguf": [], "folder": []}
        for _ in range(args.repeats):
            times["gguf"].append(timed_load(str(gguf.parent), gguf.name))
            times["folder"].append(timed_load(folder, ""))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(
            f"{name:>7}: {value:6.1f} s  (model + tokenizer; runs {', '.join(f'{v:.1f}' for v in times[name])})"
        )
    print(f"  ratio: GGUF / converted folder = {medians['gguf'] / medians['folder']:.1f}x")


if __name__ == "__main__":
    main()
