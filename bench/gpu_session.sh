#!/usr/bin/env bash
# One GPU loan, one script (the device tool's command is at most 2000 characters):
#   1. the independent airbench94 on the offline copy (calibration: 45000 and 50000 training images);
#   2. the exp2 recipe sweep (bench/exp2_next_sweep.json: the configured recipe first);
#   3. the whole-programme timing check.
# Usage on the GPU machine, with the data carried in .gpu/ (cifar10-jpeg.npz + make_cifar10.py):
#   bash bench/gpu_session.sh .gpu/cifar10-jpeg.npz "$OUT"
set -euo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; data=/tmp/cifar
python "$(dirname "$npz")/make_cifar10.py" "$data"
for n in 45000 50000; do
  timeout 120 python bench/airbench_reference.py --data-dir "$data" --n-train "$n" --out "$out/airbench_ref_$n.json" \
    > "$out/airbench_ref_$n.log" 2>&1 || echo "reference n=$n failed or timed out"
done
timeout 330 python bench/gpu_sweep.py --data-dir "$data" --variants-file bench/exp2_next_sweep.json \
  --out "$out/sweep.json" --deadline 300 > "$out/sweep.log" 2>&1 || echo "sweep stopped early"
timeout 120 python bench/gpu_check.py --data-dir "$data" --out "$out/gpu_check.json" --deadline 100 \
  > "$out/gpu_check.log" 2>&1 || echo "gpu_check stopped early"
tail -n 3 "$out"/*.log
