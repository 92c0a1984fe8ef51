#!/usr/bin/env bash
# The quick-start rows of docs/reliability.md, rerun as a user would: each prints what `hsd train` says.
# usage: bash benchmarks/reliability_rows.sh [OUT_DIR]   (CPU, the cached testbed model; ~10 minutes on 2 cores)
set -u
OUT=${1:-/tmp/hsd-reliability}
rm -rf "$OUT" && mkdir -p "$OUT"
train() { hsd train --config configs/quickstart.yaml --report_to '[]' "$@"; }
loss_steps() { python -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print([x['step'] for x in r if 'loss' in x])" "$1"; }
losses() { python -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print({x['step']: x['loss'] for x in r if 'loss' in x and x['step'] > int(sys.argv[2])})" "$1" "$2"; }

echo "== SIGTERM at step 25, checkpoints every 10"
# not through the `train` function: a backgrounded function is a subshell, and $! would be that shell's pid
hsd train --config configs/quickstart.yaml --report_to '[]' --output_dir "$OUT/sigterm" 2>"$OUT/sigterm.err" >/dev/null &
pid=$!
until grep -q '"step": 25, "loss"' "$OUT/sigterm/metrics.jsonl" 2>/dev/null; do sleep 0.1; done
kill -TERM $pid; wait $pid; echo "exit status $?"; tail -n 1 "$OUT/sigterm.err" | tr '\r' '\n' | tail -n 1
ls "$OUT/sigterm" | grep checkpoint
train --output_dir "$OUT/sigterm" >/dev/null 2>&1; echo "rerun exit status $?"
echo "steps in metrics.jsonl: $(loss_steps "$OUT/sigterm/metrics.jsonl")"

echo "== resume from checkpoint-20 vs the uninterrupted run"
train --output_dir "$OUT/whole" >/dev/null 2>&1; echo "uninterrupted exit status $?"
cp -r "$OUT/whole" "$OUT/from20" && rm -rf "$OUT/from20/checkpoint-30" "$OUT/from20/final"
train --output_dir "$OUT/from20" >/dev/null 2>&1; echo "resumed exit status $?"
python - "$OUT" <<'EOF'
import json, sys
rows = lambda d: {r["step"]: r["loss"] for r in map(json.loads, open(f"{sys.argv[1]}/{d}/metrics.jsonl")) if "loss" in r}
whole, resumed = rows("whole"), rows("from20")
print(f"{sum(whole[s] == resumed[s] for s in range(21, 31))} of 10 later losses equal")
EOF

echo "== latest checkpoint with a truncated optimizer.pt"
cp -r "$OUT/whole" "$OUT/broken" && rm -rf "$OUT/broken/final"
f="$OUT/broken/checkpoint-30/optimizer.pt"; truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
train --output_dir "$OUT/broken" 2>&1 | grep -E "skipping|hsd train|Traceback"

echo "== disk full during a save (tmpfs as output_dir)"
size=$(du -sk "$OUT/whole/checkpoint-20" | cut -f1)
mkdir -p "$OUT/tmpfs" && mount -t tmpfs -o size=$(( size * 3 / 2 ))k tmpfs "$OUT/tmpfs"
train --output_dir "$OUT/tmpfs/run" --save_steps 2 --max_steps 6 2>&1 | grep -E "hsd train|Traceback"
echo "exit status ${PIPESTATUS[0]}; left: $(ls -A "$OUT/tmpfs/run" | tr '\n' ' ')"
cp -r "$OUT/tmpfs/run" "$OUT/roomy"; umount "$OUT/tmpfs"
train --output_dir "$OUT/roomy" --save_steps 2 --max_steps 6 >/dev/null 2>&1; echo "rerun on a disk with space: exit status $?, steps $(loss_steps "$OUT/roomy/metrics.jsonl")"

echo "== learning_rate 1e3"
train --output_dir "$OUT/lr" --learning_rate 1e3 --max_steps 8 --save_steps 1 2>&1 | grep -E "hsd train|Traceback"
python - "$OUT/lr" <<'EOF'
import glob, sys, torch
from safetensors.torch import load_file
bad = [p for p in glob.glob(f"{sys.argv[1]}/checkpoint-*/*.safetensors") if not all(torch.isfinite(t).all() for t in load_file(p).values())]
print(f"checkpoints with non-finite tensors: {len(bad)}")
EOF
