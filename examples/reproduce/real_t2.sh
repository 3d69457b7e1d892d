#!/usr/bin/env bash
# Detectors for real scans: GFL-MobileNetV2 from random weights with a randomised-phantom recipe
# (RECIPE: cpu-random, cpu-crop on the randomised phantom; cpu-random-wide, on its
# wide-geometry thin-disc data; cpu-random-mix, cpu-random-wide's optimisation on that data
# with half the images left at the default phantom's; cpu-random-mixgeo, the same with the disc
# geometry drawn in every image; cpu-random-mixiso, mixgeo with 60 % of the randomised images'
# discs iso-intense with the marrow on a dark rim; cpu-wide-v2, cpu-random-wide's optimisation on
# 800 images of the default phantom, the "same recipe on v2 alone" that the randomised recipes'
# synthetic score is held against), three seeds, plus the ablation (each randomisation
# family off in turn, seed 0); each run scored on the synthetic v2 test split and on the
# hand-labelled real slices (spacing-aware and fixed-size pre-processing). The table in
# docs/data.md ("Randomised training for real scans") is filled from the summary it prints.
#
#   bash examples/reproduce/real_t2.sh              # from the repository root
#   ROOT=runs/real-t2 SEEDS="0 1 2" JOBS=2 VOLUMES=../shared/data/real-mri \
#     V2_RUNS="runs/v2-s0 runs/v2-s1" bash examples/reproduce/real_t2.sh
#   SEEDS= FAMILIES= V2_RUNS="..." bash examples/reproduce/real_t2.sh   # score V2_RUNS only
#   RECIPE=cpu-random-wide FAMILIES= bash examples/reproduce/real_t2.sh  # its three seeds
#
# Resumable: a step whose output exists is skipped; a training stopped half-way (no `done`
# marker beside its last.pt) continues with --resume. Each training is ~70 min (cpu-random) or
# ~2 h (cpu-random-wide) of one core (OMP_NUM_THREADS=1); JOBS trainings run at a time. V2_RUNS: run folders of cpu-crop trained
# on the default phantom, scored on the real slices as well (the rows to compare against),
# also spacing-aware at the v2 training set's pixel size when their checkpoints do not record
# it (`check-real --input-spacing`).
# SYNTH_FLAGS / TRAIN_FLAGS are appended to every `data synth` / `pretrain-teacher` (a smoke run:
# SYNTH_FLAGS="--num-train 8 --num-val 2 --num-test 2 --size 128"
# TRAIN_FLAGS="--max-iters 2 --epochs 1 --img-size 128 --batch-size 2" SEEDS=0 FAMILIES=fov).
set -u
ROOT=${ROOT:-runs/real-t2}; SEEDS=${SEEDS-"0 1 2"}; JOBS=${JOBS:-1}; RECIPE=${RECIPE:-cpu-random}
VOLUMES=${VOLUMES:-../shared/data/real-mri}; V2_RUNS=${V2_RUNS:-}
SYNTH_FLAGS=${SYNTH_FLAGS:-}; TRAIN_FLAGS=${TRAIN_FLAGS:-}
FAMILIES=${FAMILIES-"contrast gamma bias blur noise disc fov spacing"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
M="python -m meddet"
# the recipe's data set (SET, made with RFLAGS) names its runs: SET-sS, SET-no-F-s0
CONFIG=$RECIPE
WIDE=(--phantom random --disc-thickness 0.25,1.25 --geometry wide --num-train 800)
case $RECIPE in
  cpu-random) SET=random; RFLAGS=(--phantom random) ;;
  cpu-random-wide) SET=random-wide; RFLAGS=("${WIDE[@]}") ;;
  cpu-random-mix) SET=random-mix; CONFIG=cpu-random-wide
    RFLAGS=("${WIDE[@]}" --random-fraction 0.5) ;;
  cpu-random-mixgeo) SET=random-mixgeo; CONFIG=cpu-random-wide
    RFLAGS=("${WIDE[@]}" --random-fraction 0.5 --random-always disc) ;;
  cpu-random-mixiso) SET=random-mixiso; CONFIG=cpu-random-wide
    RFLAGS=("${WIDE[@]}" --random-fraction 0.5 --random-always disc --iso-discs 0.6) ;;
  cpu-wide-v2) SET=v2-800; CONFIG=cpu-random-wide; RFLAGS=(--num-train 800) ;;
  *) echo "RECIPE must be cpu-random, cpu-random-wide, cpu-random-mix, cpu-random-mixgeo," \
    "cpu-random-mixiso or cpu-wide-v2, got '$RECIPE'" >&2
    exit 2 ;;
esac
# the default phantom has no randomisation families to switch off
[ "$RECIPE" = cpu-wide-v2 ] && FAMILIES=
mkdir -p "$ROOT"

# 1. data: the default phantom (its test split is the synthetic benchmark), the randomised
#    phantom, and one randomised set per family switched off; same seed, so the ablation sets
#    differ from the full one only in that family.
synth() {  # synth NAME [FLAGS...]
  local out=$ROOT/data/$1; shift
  [ -f "$out/annotations/test.json" ] || $M data synth "$out" --seed 0 "$@" $SYNTH_FLAGS \
    >/dev/null || exit 3
}
synth v2
[ -n "$SEEDS" ] && synth "$SET" "${RFLAGS[@]}"
for f in $FAMILIES; do synth "$SET-no-$f" "${RFLAGS[@]}" --random-off "$f"; done

# 2. trainings: "<run name> <data set> <seed>", JOBS at a time, each resumed if interrupted.
train() {  # train RUN DATA SEED
  local run=$ROOT/runs/$1 log=$ROOT/runs/$1.log
  [ -f "$run/done" ] && return 0
  if [ -f "$run/last.pt" ]; then
    $M pretrain-teacher --resume "$run" >>"$log" 2>&1
  else
    $M pretrain-teacher --model gfl_mbv2 --config "$CONFIG" --data "$ROOT/data/$2" \
      --seed "$3" --out "$run" $TRAIN_FLAGS >"$log" 2>&1
  fi && touch "$run/done" || echo "FAILED $1 (see $log)"
}
mkdir -p "$ROOT/runs"
jobs_list=()
for s in $SEEDS; do jobs_list+=("$SET-s$s $SET $s"); done
for f in $FAMILIES; do jobs_list+=("$SET-no-$f-s0 $SET-no-$f 0"); done
for job in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  train $job &
done
wait

# 3. scores: v2 test mAP50 and the real slices (auto = spacing-aware, and fixed), per run.
score() {  # score RUN_DIR
  local run=$1 ck=$1/last.pt
  [ -f "$ck" ] || { echo "no checkpoint in $run"; return; }
  [ -f "$run/v2-test.json" ] || $M eval "$ck" --data "$ROOT/data/v2" --split test \
    --json "$run/v2-test.json" --out "$run/eval-v2" >/dev/null 2>&1
  for mode in auto fixed; do
    [ -f "$run/real-$mode.json" ] || $M check-real "$ck" --volumes "$VOLUMES" \
      --resample $mode --out "$run/check-real-$mode" --json "$run/real-$mode.json" >/dev/null 2>&1
  done
  if [ -n "${2:-}" ] && [ ! -f "$run/real-spacing.json" ]; then
    $M check-real "$ck" --volumes "$VOLUMES" --resample spacing --input-spacing "$2" \
      --out "$run/check-real-spacing" --json "$run/real-spacing.json" >/dev/null 2>&1
  fi
}
runs=()
for job in "${jobs_list[@]}"; do runs+=("$ROOT/runs/${job%% *}"); done
# Only finished trainings are scored (a stopped one is resumed and scored on the next call).
for r in "${runs[@]}"; do
  if [ -f "$r/done" ]; then score "$r"; else echo "not finished: $r"; fi
done
# The v2 training set's input pixel size at 256 px (cpu-crop's size; what a v2 checkpoint written
# today records).
V2_MM=$(python -c "from meddet.data import CocoDetection; from meddet.engine.checkpoint \
import spacing_meta; print(spacing_meta(CocoDetection('$ROOT/data/v2', 'train'), 256)\
['input_spacing_mm'])")
for r in $V2_RUNS; do runs+=("$r"); score "$r" "$V2_MM"; done

# 4. the table rows: synthetic v2 test mAP50, then per volume found at IoU 0.1 / 0.3 / 0.5
#    (T2 of 12, T1w of 20) and AP50, spacing-aware (auto) and fixed-size.
python - "${runs[@]}" <<'EOF'
import json, sys
from pathlib import Path

def load(p):
    return json.loads(p.read_text()) if p.is_file() else None

print("| run | v2 test mAP50 | resample | T2 found @0.1 / 0.3 / 0.5 | T1w found @0.1 / 0.3 / 0.5 "
      "| AP50 T2, T1w | height, width ratio T2 | T2 edges beyond the label, px (sup / inf / ant / post) |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for run in map(Path, sys.argv[1:]):
    ev = load(run / "v2-test.json")
    m = "not measured" if ev is None else f"{ev['mAP50']:.3f}"
    for mode in ("auto", "fixed", "spacing"):
        real = load(run / f"real-{mode}.json")
        if real is None and mode == "spacing":
            continue
        if real is None:
            print(f"| {run.name} | {m} | {mode} | not measured | | | | |")
            continue
        vol = {v["volume"].split("_")[1]: v for v in real["volumes"]}
        t2, t1 = vol["t2"], vol["t1w"]
        f = lambda v: " / ".join(str(v["found_at"][k]) for k in ("0.1", "0.3", "0.5"))
        r = lambda x: "-" if x is None else f"{x:.2f}"
        e = lambda d: "-" if not d else " / ".join(f"{x:+.1f}" for x in d.values())
        print(f"| {run.name} | {m} | {mode} | {f(t2)} of 12 | {f(t1)} of 20 "
              f"| {t2['ap50']:.3f}, {t1['ap50']:.3f} "
              f"| {r(t2['median_height_ratio'])}, {r(t2['median_width_ratio'])} "
              f"| {e(t2.get('median_edge_offsets_px'))} |")
EOF
