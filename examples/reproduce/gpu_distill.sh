#!/usr/bin/env bash
# The distillation table on one GPU, in slots of a few minutes:
#   the three teachers (trained once, on the students' schedule unless TEACHER_EPOCHS says
#   otherwise), the two students alone, then MGD, LD, FGD, MedDet and the sigma/tau sweep at
#   seed 0 once the teachers are done; JOBS rows share the card; everything stops at
#   DEADLINE_MIN; results.md and the rows' JSON/CSV/logs (no weights) are packed into OUT.
#   Before them, Table II's GPU timings (batch 1 and 32) run alone on the card.
#   Run again on a machine that kept S: finished rows are kept, cut ones resume from last.pt.
#   OUT=<folder that comes back> bash examples/reproduce/gpu_distill.sh
#   DATA: the data set (default: S/data, the default phantom, made here when missing)
#   CONFIG (default cpu-crop, the shipped recipe); CONFIG=cpu-small TEACHER_EPOCHS=40: the
#   recipe of the recorded study; CONFIG=paper: the paper's scale
set -u
OUT=${OUT:-/tmp/out}; S=${S:-/tmp/study}; DATA=${DATA:-$S/data}; DEV=${DEV:-cuda}
TEACHER_EPOCHS=${TEACHER_EPOCHS-}; CONFIG=${CONFIG:-cpu-crop}; DEADLINE_MIN=${DEADLINE_MIN:-8.3}; JOBS=${JOBS:-6}
mkdir -p "$OUT" "$S"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
[ -d "$DATA/annotations" ] || python3 -m meddet data synth "$DATA" --seed 0 >/dev/null || exit 3
# ROWS/SEEDS/TABLES pick another set, e.g. the MedDet-lite accuracy bar:
#   SEEDS=0,1,2 TABLES=1,lite ROWS=meddet-s0,meddet-s1,meddet-s2,lite-s0,lite-s1,lite-s2
SEEDS=${SEEDS:-0}; TABLES=${TABLES:-1,sweep}
T=teacher-gfl_r50,teacher-gfl_r101,teacher-gfl_r152
DEFAULT_ROWS=$T,plain-gfl_mbv2-s0,alone-meddet-s0,mgd-s0,ld-s0,fgd-s0,meddet-s0
DEFAULT_ROWS=$DEFAULT_ROWS,sweep-sigma0.7-tau0.2,sweep-sigma0.3-tau0.5,sweep-sigma0.8-tau0.1,sweep-sigma0.4-tau0.2
# The teachers are always included (a fresh machine has none; finished rows are not re-run).
ROWS=$T,${ROWS:-$DEFAULT_ROWS}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, meddet; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 3
# Table II's GPU timings first, alone on the card (BENCH=0 skips them; a finished row is kept).
if [ "${BENCH:-1}" = 1 ]; then
  python3 -m meddet study run --out $S --data $DATA --config $CONFIG --device $DEV --tables 2 \
    --jobs 1 --bench-iters 50 --only bench-cuda-b1,bench-cuda-b32 --report $S/results.md 2>&1 \
    | tee $OUT/bench.log | grep -E "done|FAIL" | tail -2
fi
# Rows start in plan order as their needs finish (distillation waits for the teachers).
python3 -m meddet study run --out $S --data $DATA --config $CONFIG --device $DEV \
  --seeds $SEEDS --tables $TABLES ${TEACHER_EPOCHS:+--teacher-epochs $TEACHER_EPOCHS} --report $S/results.md \
  --jobs $JOBS --deadline-min "$DEADLINE_MIN" --only $ROWS ${EXTRA:+--extra "$EXTRA"} 2>&1 | tee $OUT/study.log | grep -E "done|STOP|FAIL|skip" | tail -20
cp $S/results.md $OUT/ 2>/dev/null
# Only what the report and the docs read (no weights: the archive stays small).
(cd $S && tar czf $OUT/study.tgz study.json logs $(find runs \( -name row.json -o -name results.csv \
  -o -name test.json -o -name config.yaml -o -name train.log -o -name bench.json \)))
grep -E "^\| (GFL mbv2|MedDet student|MGD|LD|FGD|\*\*MedDet|GFL-R|σ)" $S/results.md | cut -c1-110
