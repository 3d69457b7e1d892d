#!/usr/bin/env bash
# `meddet demo` on one GPU (the `gpu` plan), timed, for docs/demo.md.
#   OUT=<folder that comes back>  LIMIT_S=<seconds before the run is stopped>
#   bash examples/reproduce/gpu_demo.sh
# Writes OUT/demo.log (progress, tables, /usr/bin/time), and the run's results.md,
# results.json, curves.png and preview.png (no weights). A run stopped by LIMIT_S leaves its
# finished steps' run directories' results.csv files in OUT/partial.tgz.
set -u
OUT=${OUT:-/tmp/out}; LIMIT_S=${LIMIT_S:-560}; D=${D:-/tmp/demo_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, meddet; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'meddet', meddet.__version__)" || exit 3
rm -rf "$D"
timeout "$LIMIT_S" /usr/bin/time -v python3 -m meddet demo --device cuda --out "$D" \
  >"$OUT/demo.log" 2>&1
echo "demo exit code: $?" | tee -a "$OUT/demo.log"
for f in results.md results.json curves.png preview.png; do cp "$D/$f" "$OUT/" 2>/dev/null; done
tar czf "$OUT/partial.tgz" -C "$D" --exclude='*.pt' --exclude=data . 2>/dev/null
grep -E "^done|finished|Elapsed" "$OUT/demo.log"
