#!/usr/bin/env bash
# The reproduction study on one GPU (how the GPU rows of the first study, docs/archive/results-v1.md, were made).
#   OUT=<folder that comes back>  DATA=<synthetic set>  DEADLINE_MIN=<study minutes>
#   bash examples/reproduce/gpu_run.sh
# 1. a 40-second CUDA smoke test of every command (stops early, with logs, if one fails);
# 2. the study at the cpu-small schedule, 14 rows at a time, most important rows first,
#    stopped at DEADLINE_MIN (rows cut there are simply missing from the report);
# 3. meddet bench on the GPU alone (Table II's FPS);
# 4. results.md, the rows' JSON/CSV/logs (no weights) packed into OUT.
set -u
OUT=${OUT:-/tmp/out}; DATA=${DATA:-.whl/data}; DEADLINE_MIN=${DEADLINE_MIN:-7}
JOBS=${JOBS:-14}; DEV=${DEV:-cuda}; S=${S:-/tmp/study}; mkdir -p "$OUT" "$S"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
M="python3 -m meddet"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, meddet; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'meddet', meddet.__version__)" || exit 3

# 1. smoke
T0=$(date +%s); SM=${SM:-/tmp/smoke}; rm -rf $SM; mkdir -p $SM
$M data synth $SM/data --num-train 8 --num-val 4 --num-test 4 --size 128 --seed 0 >/dev/null
for t in gfl_mbv2 gfl_shufflenetv2; do
  $M pretrain-teacher --model $t --data $SM/data --config cpu-small --max-iters 2 --epochs 1 \
    --img-size 128 --batch-size 2 --device $DEV --out $SM/$t >$SM/$t.log 2>&1 &
done; wait
fail=0
for m in meddet mgd ld fgd none; do
  $M distill --teachers $SM/gfl_mbv2/best.pt,$SM/gfl_shufflenetv2/best.pt --data $SM/data \
    --method $m --student meddet_lite --config cpu-small --max-iters 2 --epochs 1 --img-size 128 \
    --batch-size 2 --device $DEV --out $SM/d_$m >$SM/d_$m.log 2>&1 &
done; wait
for m in meddet mgd ld fgd none; do [ -f $SM/d_$m/student.pt ] || { fail=1; echo "SMOKE FAIL $m"; tail -25 $SM/d_$m.log; }; done
$M eval $SM/d_meddet/student.pt --data $SM/data --split test --device $DEV --json $SM/e.json --out $SM/e >$SM/e.log 2>&1 || { fail=1; tail -20 $SM/e.log; }
for t in gfl_mbv2 gfl_shufflenetv2; do [ -f $SM/$t/best.pt ] || { fail=1; tail -25 $SM/$t.log; }; done
echo "smoke: fail=$fail in $(( $(date +%s) - T0 ))s"
tar czf $OUT/smoke_logs.tgz -C $SM --exclude='*.pt' --exclude=data . 2>/dev/null
[ $fail = 0 ] || exit 4

# 2. the study
$M study run --out $S --data "$DATA" --config cpu-small --device $DEV \
  --jobs $JOBS --tables 1,3,4,5,noise,lite,sweep --deadline-min $DEADLINE_MIN \
  --report $S/results.md ${EXTRA:+--extra "$EXTRA"} 2>&1 | tee $OUT/study.log | grep -E "FAIL|STOP|skip" | head -30
# 3. GPU FPS (batch 1 and 32), alone on the card
$M study run --out $S --data "$DATA" --config cpu-small --device $DEV \
  --jobs 1 --tables 2 --only bench-cuda-b1,bench-cuda-b32 --bench-iters ${BENCH_ITERS:-50} --deadline-min 1.5 \
  --report $S/results.md 2>&1 | tail -3
# 4. pack
cp $S/results.md $OUT/ 2>/dev/null; cp -r $S/img $OUT/ 2>/dev/null
tar czf $OUT/study.tgz -C $S --exclude='*.pt' --exclude='*.png' --exclude=data runs logs study.json
grep -c '"id"' $S/runs/*/row.json | wc -l | xargs echo "rows finished:"
grep -E "^\| (GFL|MedDet|\*\*MedDet|MGD|LD|FGD|KD|\+)" $S/results.md | cut -c1-120 | head -30
