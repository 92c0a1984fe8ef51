#!/usr/bin/env bash
# The whole GPU check in one run: HSD's step, memory and distillation head on one CUDA device, against GRPO
# and TRL's SDPO, plus correctness in bf16 on CUDA, 30 quick-start steps and a kernel profile.
#
#   bash benchmarks/gpu/run.sh [--dry-run] [--only STEP,...] [--wheels DIR] [--budget SECONDS] [OUTDIR]
#
# OUTDIR defaults to $OUT. The steps, most important first, each under its own `timeout` and all within
# --budget seconds (default 470): install, step, vs-trl, head, correctness, profile, quickstart. Each step
# writes its file as it finishes, and summary.json is rewritten after every step, so a step that fails or
# runs out of time loses nothing of the others. Files written (8 at most): summary.json, env.json,
# step.json, vs_trl.json, head.json, profile.json, quickstart.json, run.log.
#
# install: the wheels in --wheels (default .whl; fetched by benchmarks/gpu/fetch_wheels.sh) go into
#   $HSD_GPU_SITE (default /tmp/hsd-gpu/site-packages) with `pip install --no-index --no-deps`, which then leads PYTHONPATH.
#   With --dry-run it is skipped when trl, datasets and math_verify already import.
# --dry-run: the same steps on the CPU with tiny shapes (a test runs it); the GPU shapes otherwise.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dry=0
only=""
wheels="$repo/.whl"
budget=470
out="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1; shift ;;
        --only) only="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --budget) budget="$2"; shift 2 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
if [ -z "$out" ]; then
    echo "run.sh: no output folder: give one as an argument or set OUT" >&2
    exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/run.log"
work=$(mktemp -d "${TMPDIR:-/tmp}/hsd-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
steps="$work/steps.tsv"
: >"$steps"
deadline=$(($(date +%s) + budget))
# a folder named site-packages: dill (datasets' fingerprints) pickles modules from elsewhere by value, and
# pyarrow's types do not pickle that way
site="${HSD_GPU_SITE:-/tmp/hsd-gpu/site-packages}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false

wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

summarize() { python3 "$repo/benchmarks/gpu/report.py" summary "$out" "$steps" "$work" >>"$log" 2>&1; }

# run_step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, its output into run.log (and stdout),
# and records NAME's exit status, seconds and whether it timed out.
run_step() {
    local name=$1 limit=$2
    shift 2
    local remaining=$((deadline - $(date +%s)))
    if [ "$remaining" -lt 15 ]; then
        printf '%s\tskipped\t0\tno time left in the budget\n' "$name" >>"$steps"
        summarize
        return 1
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log" "$work/$name.log"
    local rc=${PIPESTATUS[0]}
    local state=ok
    [ "$rc" -ne 0 ] && state=failed
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && state=timed_out
    printf '%s\t%s\t%s\trc=%s\n' "$name" "$state" "$((SECONDS - start))" "$rc" >>"$steps"
    echo "=== $name: $state (rc $rc, $((SECONDS - start)) s)" | tee -a "$log"
    summarize
    return "$rc"
}

install_wheels() {
    ls "$wheels"/*.whl >/dev/null || { echo "no wheels in $wheels: run benchmarks/gpu/fetch_wheels.sh"; return 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl
}

: >"$log"
echo "run.sh: output in $out, work files in $work, budget ${budget} s, dry run: $dry" | tee -a "$log"
start_install=$SECONDS
install_rc=0
if [ "$dry" -eq 1 ] && python3 -c "import trl, datasets, math_verify" 2>/dev/null; then
    echo "dry run: trl, datasets and math_verify import already; no wheels installed" | tee -a "$log"
else
    install_wheels 2>&1 | tee -a "$log"
    install_rc=${PIPESTATUS[0]}
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
printf 'install\t%s\t%s\trc=%s\n' "$([ "$install_rc" -eq 0 ] && echo ok || echo failed)" \
    "$((SECONDS - start_install))" "$install_rc" >>"$steps"
if [ -d "$repo/.cache/hsd/testbed" ]; then
    export HSD_CACHE_DIR="$repo/.cache/hsd"  # the built testbed model, carried with the tree
elif [ "$dry" -eq 0 ]; then
    echo "run.sh: no .cache/hsd/testbed carried: the quickstart step builds the testbed model first" | tee -a "$log"
fi
python3 "$repo/benchmarks/gpu/report.py" env "$out/env.json" 2>&1 | tee -a "$log"
summarize

tests="$repo/tests/bench/test_teacher_pass_equivalence.py"
if [ "$dry" -eq 1 ]; then
    device=cpu
    model="$work/micro"
    python3 "$repo/benchmarks/gpu/report.py" micro-config "$model"
    shape=(--model-config "$model" --random-init --batch 2 --group-size 4 --completion-len 12 --dtype bfloat16)
    timing=(--repeats 1 --warmup 0)
    fallback_lens=(8)
    head_shape=(--positions 256 --hidden 32 --vocab 1200 --repeats 1)
    test_env=(HSD_TEST_DEVICE=cpu HSD_TEST_DTYPE=bfloat16)
    tests=("$tests::test_all_optimisations_together_keep_loss_and_gradients"
        "$tests::test_chunked_head_matches_naive_full_logits_through_the_trainer[True-1024]")
    quick=(--use_cpu true --bf16 false --max_steps 2 --per_device_train_batch_size 8 --num_generations 4)
else
    device=cuda
    shape=(--model-config qwen3-1.7b --batch 4 --group-size 8 --completion-len 1024)
    timing=(--repeats 2 --warmup 1)
    fallback_lens=(512 256)
    head_shape=(--positions 32768 --hidden 2048 --vocab 151936 --repeats 3)
    test_env=(HSD_TEST_DEVICE=cuda HSD_TEST_DTYPE=bfloat16)
    quick=(--use_cpu false --bf16 true)
fi

# 1. HSD's update, step and peak memory against GRPO's (targets: update <= 1.5x, memory <= 1.15x)
wanted step && run_step step 150 python3 -m hsd bench step --device "$device" "${shape[@]}" "${timing[@]}" \
    --methods grpo,opsd,hsd,hsd:plain --out "$out/step.json"

# 2. An HSD step against TRL's SDPO step (target: no slower); shorter completions if SDPO does not fit
if wanted vs-trl; then
    if ! run_step vs-trl 110 python3 -m hsd bench vs-trl --device "$device" "${shape[@]}" "${timing[@]}" \
        --out "$out/vs_trl.json" && grep -q -E "OutOfMemoryError|out of memory" "$work/vs-trl.log"; then
        for len in "${fallback_lens[@]}"; do
            echo "vs-trl: out of memory; again with --completion-len $len" | tee -a "$log"
            args=("${shape[@]}")
            for i in "${!args[@]}"; do [ "${args[$i]}" = "--completion-len" ] && args[i + 1]=$len; done
            run_step "vs-trl-$len" 110 python3 -m hsd bench vs-trl --device "$device" "${args[@]}" \
                "${timing[@]}" --out "$out/vs_trl.json" && break
        done
    fi
fi

# 3. The distillation head alone: hsd's engine, TRL's ChunkedDivergenceFunction, Liger's fused linear JSD
wanted head && run_step head 60 python3 "$repo/benchmarks/gpu/head.py" --device "$device" "${head_shape[@]}" \
    --out "$out/head.json"

# 4. The teacher-pass equivalence tests and the trainer's loss against naive logits, on the device in bf16
wanted correctness && run_step correctness 60 env "${test_env[@]}" python3 -m pytest -q -p no:cacheprovider \
    "${tests[@]}" --junitxml="$work/correctness.xml"

# 5. Top kernels of one HSD step and one GRPO step
wanted profile && run_step profile 45 python3 "$repo/benchmarks/gpu/profile_step.py" --device "$device" \
    "${shape[@]}" --out "$out/profile.json"

# 6. The quick-start recipe on the device (30 steps of the testbed model; carry .cache/hsd with it built)
if wanted quickstart; then
    if [ "$dry" -eq 1 ]; then  # a testbed model pretrained for 2 steps stands in for the full build
        quick+=(--model "$(python3 -m hsd testbed build --knob train_steps=2 --knob batch_size=2 \
            --log-every 0 --cache-dir "$work/testbed" 2>>"$log")")
    fi
    run_step quickstart 45 python3 -m hsd train --config "$repo/configs/quickstart.yaml" "${quick[@]}" \
        --report_to none --save_steps 1000 --output_dir "$work/quickstart"
    python3 "$repo/benchmarks/gpu/report.py" quickstart "$work/quickstart" "$out/quickstart.json" >>"$log" 2>&1
fi

summarize
python3 "$repo/benchmarks/gpu/report.py" print "$out" | tee -a "$log"
failed=$(cut -f2 "$steps" | grep -c -v -x ok)
echo "run.sh: $(wc -l <"$steps") steps, $failed not ok; files in $out" | tee -a "$log"
[ "$failed" -eq 0 ]
