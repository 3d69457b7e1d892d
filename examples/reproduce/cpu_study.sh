#!/usr/bin/env bash
# The paper's claims on a 2-core CPU, resumable over as many sittings as it takes
# (docs/results.md). Every row uses the study recipe (cpu-crop, 2,000 iterations of batch 8 on
# 128 px crops) with bfloat16 autocast (EXTRA, default --cpu-amp), and one set of teachers
# trained with the teacher recipe (cpu-crop for 160 epochs). Stages, most informative first:
#   1. Table I at SEEDS: MedDet, the MedDet student alone, MGD, LD, FGD, the plain student
#   2. Table III (cumulative ablation) and Table IV's head-vs-none at SEEDS
#   3. single seed: Table V (LWFF vs sum vs concat), Table IV's backbone / FPN placements,
#      the other Table I backbones, the sigma / tau sweep
# The noise claim comes with the rows it needs (their evaluation sweeps Rician noise).
# JOBS rows at a time, one thread each; DEADLINE_MIN (0: none) stops the whole script
# resumably: run it again and finished rows are kept, cut ones resume from their last.pt.
#
#   S=runs/study-cpu bash examples/reproduce/cpu_study.sh
#   TEACHERS_FROM=runs/teachers DATA=data/cdh bash examples/reproduce/cpu_study.sh
#
# TEACHERS_FROM: a folder holding finished gfl_r50/ gfl_r101/ gfl_r152/ runs of the teacher
# recipe on DATA; they are linked in as the teacher rows (their own config.yaml says how they
# were trained, and the rows record it) instead of being trained here. A run that has not
# reached its config's epochs stops the script: the study would resume it beside its own
# training process. DATA defaults to S/data (the default phantom,
# made here when missing).
set -u
S=${S:-runs/study-cpu}; DATA=${DATA:-$S/data}; JOBS=${JOBS:-2}; SEEDS=${SEEDS:-0,1,2}
DEADLINE_MIN=${DEADLINE_MIN:-0}; TEACHERS_FROM=${TEACHERS_FROM:-}; EXTRA=${EXTRA---cpu-amp}
export PYTHONUNBUFFERED=1
mkdir -p "$S/runs"
[ -d "$DATA/annotations" ] || python -m meddet data synth "$DATA" --seed 0 >/dev/null || exit 3
if [ -n "$TEACHERS_FROM" ]; then
  for t in gfl_r50 gfl_r101 gfl_r152; do
    d=$TEACHERS_FROM/$t
    [ -f "$d/last.pt" ] || { echo "no teacher run (last.pt) in $d"; exit 2; }
    # a run still training must not be resumed by the study beside its own process
    done_ep=$(tail -n 1 "$d/results.csv" 2>/dev/null | cut -d, -f1)
    want_ep=$(awk '/^  epochs:/ {print $2; exit}' "$d/config.yaml")
    [ "$done_ep" = "$want_ep" ] || { echo "the teacher run in $d is not finished (epoch" \
      "${done_ep:-0} of $want_ep): finish it first (meddet pretrain-teacher --resume $d)"; exit 2; }
    [ -e "$S/runs/teacher-$t" ] || ln -s "$(cd "$TEACHERS_FROM/$t" && pwd)" "$S/runs/teacher-$t"
  done
fi
END=$(( $(date +%s) + ${DEADLINE_MIN%.*} * 60 ))
rows() {  # rows PREFIX... -> the ids of those rows at every seed of SEEDS
  local out="" p s
  for p in "$@"; do for s in ${SEEDS//,/ }; do out="$out,$p-s$s"; done; done
  echo "${out#,}"
}
stage() {  # stage TABLES SEEDS ROWS
  local left=""
  if [ "${DEADLINE_MIN%.*}" -gt 0 ]; then
    left=$(( (END - $(date +%s)) / 60 ))
    [ "$left" -ge 1 ] || { echo "deadline reached; run again to continue"; exit 0; }
  fi
  python -m meddet study run --out "$S" --data "$DATA" --config cpu-crop --device cpu \
    --teacher-epochs 160 --tables "$1" --seeds "$2" --jobs "$JOBS" --threads-per-job 1 \
    --only "$3" ${left:+--deadline-min "$left"} ${EXTRA:+--extra "$EXTRA"} \
    --report "$S/results.md" 2>&1 | grep -E "done|STOP|FAIL|skip"
}
T=teacher-gfl_r50,teacher-gfl_r101,teacher-gfl_r152
stage 1 "$SEEDS" "$T,$(rows meddet alone-meddet mgd ld fgd plain-gfl_mbv2)"
stage 3,4 "$SEEDS" "$T,$(rows abl-base abl-nmode abl-lwff meddet)"
S0=${SEEDS%%,*}
stage 1,4,5,sweep "$S0" "$T,fusion-sum,fusion-concat,nmode-backbone,nmode-fpn,$(SEEDS=$S0 rows \
  plain-gfl_mbv2_1.4 plain-gfl_effb0 plain-gfl_effb1 plain-gfl_shufflenet plain-gfl_shufflenetv2),\
sweep-sigma0.7-tau0.2,sweep-sigma0.3-tau0.5,sweep-sigma0.8-tau0.1,sweep-sigma0.4-tau0.2"
echo "report: $S/results.md"
