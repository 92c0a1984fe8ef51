#!/usr/bin/env bash
# The wheels that `benchmarks/gpu/run.sh` installs on a GPU machine without network: what `hsd bench`,
# `hsd train` and the head comparison import beyond the machine's torch / accelerate / safetensors stack.
#
#   bash benchmarks/gpu/fetch_wheels.sh [--python 3.12] [--dest .whl]
#
# Each package is pinned to the version the test suite runs with (pyproject.toml's tested versions) and
# fetched without its dependencies: every dependency the GPU image lacks is listed here by name.
# transformers is carried too, so the GPU run uses the tested 5.23 rather than the image's own.
# The folder is not part of the repository (add it to .git/info/exclude).
set -euo pipefail

python_version=3.12
dest=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version="$2"; shift 2 ;;
        --dest) dest="$2"; shift 2 ;;
        *) echo "fetch_wheels.sh: unknown argument $1 (expected --python X.Y or --dest DIR)" >&2; exit 2 ;;
    esac
done

PACKAGES=(
    trl==1.16.0                        # HSDTrainer's base; SDPOTrainer; ChunkedDivergenceFunction
    transformers==5.23.0               # the tested version (the image's may differ)
    datasets==5.2.0                    # imported by trl and by the bench's fixed batch
    dill==0.4.1                        # datasets
    multiprocess==0.70.19              # datasets
    math-verify==0.9.0                 # hsd.tasks.math (math rewards)
    latex2sympy2_extended==1.11.0      # math-verify
    antlr4-python3-runtime==4.13.2     # latex2sympy2_extended
    liger-kernel==0.8.5                # the fused linear JSD head the head comparison times (Triton)
)

mkdir -p "$dest"
for spec in "${PACKAGES[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest" "$spec"
done
ls -l "$dest"
du -sh "$dest"
