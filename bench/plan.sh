#!/usr/bin/env bash
# The label-efficiency experiments behind docs/results.md on the synthetic data, each one command that runs in
# resumable pieces (one seed per process, JOBS processes at a time, one thread each) and ends with its record:
#
#   bench/plan.sh EXPERIMENT            # run (or resume) every seed, then write results/<record>.json
#   python bench/tables.py              # then the docs' tables
#
# Power (entropy vs random at P3, 6 seeds, 450 validation images so that the paired interval is narrow):
#   power_recipe   condinst_r18_cpu_synth.yaml              -> results/label_efficiency_synth_recipe.json
#   power_paper    condinst_r18_cpu_synth_paper.yaml        -> results/label_efficiency_synth_paper.json
# The paper's analyses (3 seeds; every arm of a seed starts from the M0 of power_recipe's entropy run of that
# seed, trained first where $RUNS/power_recipe lacks it; sets, boxinst_init and departures train their own):
#   strategies     random, entropy, variance, least-entropy, max-error, least-error (Fig. 2a, Table 1, Fig. 5)
#   sets           entropy over anchors / models / scales against random (Fig. 2a)
#   schedules      entropy and random with the paper's three fine-tuning schedules scaled by 1/150 (Fig. 2b):
#                  10k at lr 1e-4 -> 67 iterations; 30k at 0.01, decays every 10k -> 200; 90k -> 600
#   long_loop      entropy to P7 against random to P10 (Table 2)
#   afis           APIS entropy against AFIS (instance level, min. detection loss) at equal seconds (Fig. 6)
#   boxinst_init   P'_s: entropy and random from a box-only M0 (Fig. 3b)
#   transfer       Mask R-CNN trained on CondInst's entropy points (from strategies) against its own entropy and
#                  random (Fig. 3, "transfer")
#   departures     the recipe against the paper's setting, one departure at a time (each arm its own M0)
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), JOBS (processes at a time, default 2:
# one per core), SEEDS (default: 6 for power_*, 3 otherwise; SEEDS="4 5" runs only those, and the record waits for
# every planned seed), RUNS (default runs/plan), RECORDS (default results; each seed's piece in results/pieces/<record>/),
# DATA (default data/synth_power: made here, 150 train / 450 val images), EXTRA (key=value for every run).
# Disk: a run keeps about 0.5 GB of checkpoints (95 MB each) while it runs, so an experiment of 12-24 runs needs
# 6-14 GB until it ends; PRUNE=1 (the default) then deletes every checkpoint but each run's M0 (the record holds
# the metrics), leaving about 0.1 GB per run. PRUNE=0 keeps them all.
# SMOKE=1: a tiny schedule on 8 images of 64 px and 2 seeds, records in $RUNS/records: only checks that the
# experiment runs. Every run resumes: stop at any time (kill the script's process group) and run it again.
set -euo pipefail
set -f  # no globbing: overrides such as "loop.finetune_steps=[67,133]" are passed as written
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
EXPERIMENT=${1:-}
JOBS=${JOBS:-2}
RUNS=${RUNS:-runs/plan}
RECORDS=${RECORDS:-results}
DATA=${DATA:-data/synth_power}
RECIPE=condinst_r18_cpu_synth.yaml
PAPER=condinst_r18_cpu_synth_paper.yaml
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
EXPERIMENTS="power_recipe power_paper strategies sets schedules long_loop afis boxinst_init transfer departures"
if [[ " $EXPERIMENTS " != *" $EXPERIMENT "* || -z "$EXPERIMENT" ]]; then
    echo "usage: bench/plan.sh EXPERIMENT (one of: $EXPERIMENTS)" >&2
    exit 2
fi

if [ "${SMOKE:-0}" = 1 ]; then
    SEEDS=${SEEDS:-0 1}; RECORDS="$RUNS/records"
    "$PYTHON" -m apis.cli data synth "$DATA" --images 8 --size 64 --seed 0 --val-fraction 0.25 >/dev/null
    EXTRA_ARGS+=(model.backbone_weights=none model.fpn_channels=16 model.mask_branch_channels=16 model.head_convs=1
                 "data.min_size_train=[64]" data.min_size_test=64 data.max_size=96 solver.batch_size=2
                 solver.max_iter=2 "solver.steps=[1]" solver.warmup_iters=1 solver.checkpoint_period=1
                 loss.pairwise_warmup_iters=1 loop.finetune_iters=1 "loop.finetune_steps=[]" "selection.scales=[64]"
                 "selection.ensemble_seeds=[1]")
    SCHEDULES=(1 1 2)
else
    "$PYTHON" -m apis.cli data synth "$DATA" --images 600 --size 128 --seed 0 --val-fraction 0.75 >/dev/null
    SCHEDULES=(67 200 600)
fi
DATA_ARGS=("data.train_json=$DATA/annotations/train.json" "data.val_json=$DATA/annotations/val.json"
           data.num_workers=0)

# experiment <name> <record> <default seeds> <bench_label_efficiency.py arguments...>: every seed not yet done in its
# own process (JOBS at a time), each writing its piece, $RECORDS/pieces/<record>/seed<N>.json (committed: a seed done
# is never run again, in this session or a later one); once every seed has its piece, one --pieces over them all
# writes the record. The overrides follow "--", so that an option taking several values (--strategies, --arm) does
# not swallow them.
experiment() {
    local name=$1 record=$2 seeds=${SEEDS:-$3} planned=$3
    shift 3
    [ "${SMOKE:-0}" = 1 ] && planned=$seeds  # a smoke run's record is of the seeds it ran
    local out="$RUNS/$name" pieces="$RECORDS/pieces/$record" todo=() seed
    mkdir -p "$out/logs" "$pieces"
    for seed in $seeds; do [ -f "$pieces/seed$seed.json" ] || todo+=("$seed"); done
    echo "plan: $name, seeds $seeds (to run: ${todo[*]:-none}), $JOBS at a time; logs in $out/logs"
    if [ "${#todo[@]}" -gt 0 ]; then
        printf '%s\n' "${todo[@]}" | xargs -P "$JOBS" -I{} sh -c '"$@" >"$0/logs/seed{}.log" 2>&1 || {
            echo "plan: seed {} failed; the end of its log:" >&2; tail -n 5 "$0/logs/seed{}.log" >&2; exit 1; }' \
            "$out" "$PYTHON" bench/bench_label_efficiency.py --seeds {} --out "$out" --record "$pieces/seed{}.json" \
            "$@" -- "${DATA_ARGS[@]}" "${EXTRA_ARGS[@]}"
    fi
    local records=() missing=()
    for seed in $planned $seeds; do
        if [ -f "$pieces/seed$seed.json" ]; then
            [[ " ${records[*]} " == *" $pieces/seed$seed.json "* ]] || records+=("$pieces/seed$seed.json")
        else missing+=("$seed"); fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "plan: $name: the record waits for seeds ${missing[*]} (bench/plan.sh $EXPERIMENT runs them)"
        return 0
    fi
    "$PYTHON" bench/bench_label_efficiency.py --out "$out" --pieces "${records[@]}" --record "$RECORDS/$record.json" \
        "$@" -- "${DATA_ARGS[@]}" "${EXTRA_ARGS[@]}"
    if [ "${PRUNE:-1}" = 1 ] && [ -d "$out" ]; then  # the pieces hold the metrics; keep each run's M0 for later
        find "$out" -name '*.pth' ! -path '*/step_000/train/model_final.pth' -delete
        echo "plan: $name: checkpoints other than each run's M0 deleted; $(du -sh "$out" | cut -f1) left"
    fi
}

SHARED=(--m0-from "$RUNS/power_recipe" --m0-arm entropy --config "$RECIPE")
# shared_m0s: the M0 of power_recipe's entropy run of every seed the analyses run, trained (step 0 only, into
# $RUNS/power_recipe, JOBS at a time) where it is missing, e.g. when the power runs were made in another checkout:
# the same config, data and seed train the same M0 that power_recipe's runs resume from.
shared_m0s() {
    local seed todo=()
    for seed in ${SEEDS:-0 1 2}; do
        [ -f "$RUNS/power_recipe/entropy_seed$seed/step_000/metrics.json" ] || todo+=("$seed")
    done
    [ "${#todo[@]}" -eq 0 ] && return 0
    echo "plan: the analyses' M0s of seeds ${todo[*]} are missing; training them into $RUNS/power_recipe"
    mkdir -p "$RUNS/power_recipe/logs"
    printf '%s\n' "${todo[@]}" | xargs -P "$JOBS" -I{} sh -c '"$@" >"$0/logs/m0_seed{}.log" 2>&1 || {
        echo "plan: the M0 of seed {} failed; the end of its log:" >&2; tail -n 5 "$0/logs/m0_seed{}.log" >&2; exit 1; }' \
        "$RUNS/power_recipe" "$PYTHON" bench/bench_label_efficiency.py --seeds {} --strategies entropy --steps 0 \
        --out "$RUNS/power_recipe" --record "$RUNS/power_recipe/logs/m0_seed{}.json" --config "$RECIPE" \
        -- "${DATA_ARGS[@]}" "${EXTRA_ARGS[@]}"
}
case "$EXPERIMENT" in strategies|schedules|long_loop|afis) shared_m0s ;; esac
schedule_arms() {  # iterations lr steps: one entropy and one random arm at that fine-tuning schedule
    echo --arm "entropy-$1" selection.metric=entropy "loop.finetune_iters=$1" "loop.finetune_lr=$2" "loop.finetune_steps=$3"
    echo --arm "random-$1" selection.metric=random "loop.finetune_iters=$1" "loop.finetune_lr=$2" "loop.finetune_steps=$3"
}

case "$EXPERIMENT" in
    power_recipe) experiment power_recipe label_efficiency_synth_recipe "0 1 2 3 4 5" --config "$RECIPE" ;;
    power_paper) experiment power_paper label_efficiency_synth_paper "0 1 2 3 4 5" --config "$PAPER" ;;
    strategies)
        experiment strategies analyses_synth_strategies "0 1 2" "${SHARED[@]}" \
            --strategies entropy random variance least-entropy max-error least-error ;;
    sets)
        # "models" first: its M0 step trains the ensemble's members too, and the other arms reuse its M0.
        experiment sets analyses_synth_sets "0 1 2" --config "$RECIPE" \
            --arm models selection.metric=entropy "selection.sets=[models]" \
            --arm anchors selection.metric=entropy "selection.sets=[anchors]" \
            --arm scales selection.metric=entropy "selection.sets=[scales]" \
            --arm random selection.metric=random ;;
    schedules)
        short=${SCHEDULES[0]} default=${SCHEDULES[1]} long=${SCHEDULES[2]}
        for schedule in "short $short 0.0001 []" "default $default 0.01 [$((default / 3)),$((2 * default / 3))]" \
                        "long $long 0.01 [$((long * 2 / 3)),$((long * 8 / 9))]"; do
            read -r label iters lr steps <<< "$schedule"
            experiment "schedule_$label" "analyses_synth_schedule_$label" "0 1 2" "${SHARED[@]}" \
                --baseline "random-$iters" $(schedule_arms "$iters" "$lr" "$steps")
        done ;;
    long_loop)
        experiment long_loop analyses_synth_long_loop "0 1 2" "${SHARED[@]}" \
            --arm entropy selection.metric=entropy loop.steps=7 --arm random selection.metric=random loop.steps=10 ;;
    afis)
        experiment afis analyses_synth_afis "0 1 2" "${SHARED[@]}" --baseline afis \
            --arm entropy selection.metric=entropy \
            --arm afis afis.level=instance afis.scorer=min-det-loss loss.full=1 "loop.initial_run=" ;;
    boxinst_init)
        experiment boxinst_init analyses_synth_boxinst_init "0 1 2" --config "$RECIPE" --baseline random \
            --arm entropy selection.metric=entropy loop.init=boxinst \
            --arm random selection.metric=random loop.init=boxinst ;;
    transfer)
        experiment transfer analyses_synth_transfer "0 1 2" --config maskrcnn_r18_cpu_synth.yaml \
            --arm transfer "loop.points_from=$RUNS/strategies/entropy_seed{seed}" \
            --arm entropy selection.metric=entropy --arm random selection.metric=random ;;
    departures)
        experiment departures analyses_synth_departures "0 1 2" --config "$PAPER" --baseline paper \
            --arm recipe "loop.initial_run=" selection.metric=entropy loss.box=1.0 loss.point_normalisation=instance \
                model.dynamic_activation=leaky_relu model.dynamic_init=fan_in solver.clip_grad_norm=5.0 \
                loop.finetune.points=0.1 model.mask_feature_stride=4 model.mask_head_window=true \
                model.refinement.method=colour_crf \
            --arm paper "loop.initial_run=" selection.metric=entropy \
            --arm box-terms "loop.initial_run=" selection.metric=entropy loss.box=1.0 \
            --arm instance-norm "loop.initial_run=" selection.metric=entropy loss.point_normalisation=instance \
            --arm leaky-relu "loop.initial_run=" selection.metric=entropy model.dynamic_activation=leaky_relu \
            --arm fan-in-init "loop.initial_run=" selection.metric=entropy model.dynamic_init=fan_in \
            --arm clip "loop.initial_run=" selection.metric=entropy solver.clip_grad_norm=5.0 \
            --arm finetune-weight "loop.initial_run=" selection.metric=entropy loop.finetune.points=0.1 \
            --arm sharp-masks "loop.initial_run=" selection.metric=entropy model.mask_feature_stride=4 \
                model.mask_head_window=true model.refinement.method=colour_crf ;;
esac
