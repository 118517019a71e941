#!/usr/bin/env bash
# One GPU loan, one script (the device tool's command is at most 2000 characters):
#   1. the independent airbench94 on the offline copy (calibration, 45000 training images);
#   2. the exp2 recipe sweep (bench/exp2_next_sweep.json: the configured recipe first);
#   3. the whole-programme timing check.
# At most ~9.5 minutes (the device tool's per-command limit is 10). Usage on the GPU machine, with the data carried in .gpu/ (cifar10-jpeg.npz + make_cifar10.py):
#   bash bench/gpu_session.sh .gpu/cifar10-jpeg.npz "$OUT"
set -euo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; data=/tmp/cifar
python "$(dirname "$npz")/make_cifar10.py" "$data"
timeout 90 python bench/airbench_reference.py --data-dir "$data" --n-train 45000 --out "$out/airbench_ref_45000.json" \
  > "$out/airbench_ref.log" 2>&1 || echo "reference failed or timed out"
timeout 240 python bench/gpu_sweep.py --data-dir "$data" --variants-file bench/exp2_next_sweep.json \
  --out "$out/sweep.json" --deadline 200 > "$out/sweep.log" 2>&1 || echo "sweep stopped early"
timeout 230 python bench/gpu_check.py --data-dir "$data" --out "$out/gpu_check.json" --deadline 200 \
  > "$out/gpu_check.log" 2>&1 || echo "gpu_check stopped early"
tail -n 3 "$out"/*.log
