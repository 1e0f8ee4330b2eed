#!/usr/bin/env bash
# DSB2018 at the full size of condinst_r18_cpu_dsb.yaml (531 train / 133 val images, short edge 320-384,
# M0 900 iterations, steps of 300) on one CUDA GPU, every run side by side (an R-18 at this size leaves a big GPU
# mostly idle, so a dozen small trainings share it). Two benchmarks, with the config's gradient clipping (norm 5):
#   1. bench/bench_supervision.py: full masks, boxes + 1 point + box terms, boxes only (BoxInst) for every seed,
#      each followed by bench/bench_mask_quality.py on its model (all val images);
#   2. bench/bench_label_efficiency.py: entropy vs random for every seed, 3 steps; a seed's random run starts as
#      soon as its entropy run has finished M0, and reuses P0 and M0 from it; then bench/bench_mask_quality.py on
#      every step's model of both.
# Every run resumes and keeps what it finished, so DEADLINE (seconds, 0 = none) can stop everything early and a
# later call carries on. Logs go to $RUNS/logs, each piece's record to $RUNS/records; once every run has finished,
# the records of the whole benchmark go to $RECORDS (supervision_dsb_gpu.json, label_efficiency_dsb_gpu.json) for
# bench/tables.py.
#
#   DSB=../shared/data/dsb2018_nuclei RUNS=runs/dsb_gpu bench/dsb_gpu.sh [key=value ...]
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), DSB, RUNS, DEADLINE, SEEDS ("0 1 2"),
# DEVICE (cuda), RECORDS (results). Extra key=value arguments go to every run (e.g. a tiny schedule for a CPU smoke
# run); a data.num_workers among them replaces the script's own choice of data workers per job.
set -uo pipefail
set -m  # every background job in its own process group, so that the deadline stops its data workers too
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DSB=${DSB:-../shared/data/dsb2018_nuclei}
RUNS=${RUNS:-runs/dsb_gpu}
DEADLINE=${DEADLINE:-0}
SEEDS=${SEEDS:-0 1 2}
RECORDS=${RECORDS:-results}
CONFIG=condinst_r18_cpu_dsb.yaml
COMMON=("device=${DEVICE:-cuda}" "data.train_json=$DSB/annotations/train.json"
        "data.val_json=$DSB/annotations/val.json")
EXTRA=("$@")
workers() {  # the data workers of a job, unless the caller set data.num_workers (a key is given once)
    local arg
    for arg in "${EXTRA[@]}"; do [[ $arg == data.num_workers=* ]] && return 0; done
    echo "data.num_workers=$1"
}
# A bad key or value is named once, before any job starts (each job would otherwise fail on it on its own).
"$PYTHON" - "$CONFIG" "${COMMON[@]}" "${EXTRA[@]}" <<'CHECK' || exit 2
import sys

from apis.config import ConfigError
from apis.config_loading import load_config

try:
    load_config(sys.argv[1], sys.argv[2:])
except ConfigError as error:
    sys.exit(f"dsb_gpu: {error}")
CHECK
mkdir -p "$RUNS/logs" "$RUNS/records"
start=$(date +%s)

supervision() {  # row, folder name bench_supervision gives it, seed, data workers
    local log="$RUNS/logs/supervision_$2_seed$3.log"
    "$PYTHON" bench/bench_supervision.py --config "$CONFIG" --seeds "$3" --out "$RUNS/supervision" \
        --record "$RUNS/records/supervision_$2_seed$3.json" "${COMMON[@]}" $(workers "$4") "${EXTRA[@]}" --rows "$1" \
        >"$log" 2>&1 &&
        "$PYTHON" bench/bench_mask_quality.py "$RUNS/supervision/$2/seed$3" --images 100000 \
            --record "$RUNS/records/mask_quality_$2_seed$3.json" >"$RUNS/logs/mask_quality_$2_seed$3.md" 2>>"$log"
}

label_efficiency() {  # seed
    local entropy="$RUNS/label_efficiency/entropy_seed$1"
    "$PYTHON" bench/bench_label_efficiency.py --config "$CONFIG" --seeds "$1" --strategies entropy \
        --out "$RUNS/label_efficiency" --record "$RUNS/records/le_entropy_seed$1.json" "${COMMON[@]}" \
        $(workers 2) "${EXTRA[@]}" >"$RUNS/logs/le_entropy_seed$1.log" 2>&1 &
    local pid=$!
    while [ ! -f "$entropy/step_000/metrics.json" ] && kill -0 "$pid" 2>/dev/null; do sleep 5; done
    [ -f "$entropy/step_000/metrics.json" ] &&
        "$PYTHON" bench/bench_label_efficiency.py --config "$CONFIG" --seeds "$1" --strategies random \
            --m0-from "$RUNS/label_efficiency" --out "$RUNS/label_efficiency" \
            --record "$RUNS/records/le_random_seed$1.json" "${COMMON[@]}" $(workers 2) \
            "${EXTRA[@]}" >"$RUNS/logs/le_random_seed$1.log" 2>&1
    wait "$pid" &&
        "$PYTHON" bench/bench_mask_quality.py "$entropy" "$RUNS/label_efficiency/random_seed$1" --images 100000 \
            --record "$RUNS/records/mask_quality_le_seed$1.json" >"$RUNS/logs/mask_quality_le_seed$1.md" \
            2>>"$RUNS/logs/le_entropy_seed$1.log"
}

jobs_started=()
for seed in $SEEDS; do
    # Full masks read every instance's mask (~0.13 s per image on one core): more data workers.
    supervision "full masks" full_masks "$seed" 4 & jobs_started+=($!)
    supervision "boxes + 1 point + box terms" boxes_plus_1_point_plus_box_terms "$seed" 2 & jobs_started+=($!)
    supervision "boxes only (BoxInst)" boxes_only_BoxInst "$seed" 2 & jobs_started+=($!)
    label_efficiency "$seed" & jobs_started+=($!)
done

alive() { for pid in "${jobs_started[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
last_report=0
stopped=0
while alive; do
    elapsed=$(( $(date +%s) - start ))
    if [ "$DEADLINE" -gt 0 ] && [ "$elapsed" -ge "$DEADLINE" ]; then
        echo "dsb_gpu: deadline of $DEADLINE s reached; stopping the runs still going (they resume when run again)"
        for pid in "${jobs_started[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
        sleep 5
        for pid in "${jobs_started[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
        stopped=1
        break
    fi
    if [ $(( elapsed - last_report )) -ge 60 ]; then
        last_report=$elapsed
        echo "dsb_gpu: ${elapsed} s: $(find "$RUNS/supervision" -name eval.json 2>/dev/null | wc -l) supervision runs" \
             "done, $(find "$RUNS/label_efficiency" -path '*/step_*/metrics.json' 2>/dev/null | wc -l) loop steps done"
    fi
    sleep 5
done
failed=0
for pid in "${jobs_started[@]}"; do wait "$pid" || failed=$((failed + 1)); done

echo "dsb_gpu: $(( $(date +%s) - start )) s in all"
if [ "$stopped" = 0 ] && [ "$failed" = 0 ]; then summary_record="$RECORDS"; else summary_record="$RUNS/records"; fi
"$PYTHON" bench/bench_supervision.py --config "$CONFIG" --seeds $SEEDS --out "$RUNS/supervision" --report-only \
    --rows "full masks" "boxes + 1 point + box terms" "boxes only (BoxInst)" \
    --record "$summary_record/supervision_dsb_gpu.json" "${COMMON[@]}" "${EXTRA[@]}" | tee "$RUNS/supervision.md"
if [ "$stopped" = 0 ] && [ "$failed" = 0 ]; then
    "$PYTHON" bench/bench_label_efficiency.py --config "$CONFIG" --seeds $SEEDS --out "$RUNS/label_efficiency" \
        --collect --record "$RECORDS/label_efficiency_dsb_gpu.json" "${COMMON[@]}" "${EXTRA[@]}" >"$RUNS/label_efficiency.md"
fi
for table in "$RUNS"/logs/mask_quality_*.md; do  # one table per model, titled by its row and seed
    if [ -f "$table" ]; then printf '\n%s\n\n' "$(basename "$table" .md)"; cat "$table"; fi
done | tee "$RUNS/mask_quality.md"
if [ "$stopped" = 0 ] && [ "$failed" -gt 0 ]; then
    echo "dsb_gpu: $failed of ${#jobs_started[@]} jobs failed; the last lines of each log that holds an error:" >&2
    grep -l "Error" "$RUNS"/logs/*.log | while read -r log; do echo "== $log" >&2; tail -n 3 "$log" >&2; done
    exit 1
fi
