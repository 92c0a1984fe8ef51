#!/usr/bin/env bash
# Runs `hsd compare` with every (method, seed) pair as its own process, in parallel (for a many-core
# machine), then once more over all pairs: finished runs are skipped, so that last call only aggregates.
#   bash benchmarks/compare_parallel.sh CONFIG OUT METHODS SEEDS [--field value ...]
set -euo pipefail
config=$1 out=$2 methods=$3 seeds=$4
shift 4
held_out="testbed:chain?variant=multi&n=128&split=test"
pids=()
for method in ${methods//,/ }; do
  for seed in $(seq 0 $((seeds - 1))); do
    OMP_NUM_THREADS=1 python3 -m hsd compare --config "$config" --methods "$method" --seeds "$seed," \
      --out "$out" --eval-dataset "$held_out" "$@" > "$out.$method.$seed.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
python3 -m hsd compare --config "$config" --methods "$methods" --seeds "$seeds" --out "$out" \
  --eval-dataset "$held_out" "$@"
exit $status
