#!/usr/bin/env bash
# One GPU loan, one script (the device tool's command is at most 2000 characters), most needed first:
#   1. the whole-programme timing check (bench/gpu_check.py: exp2 L=3/6, every exp1 epoch time,
#      torch.compile, grid workers sharing the GPU);
#   2. the exp2 recipe sweep (bench/exp2_next_sweep.json: the configured recipe first);
#   3. the independent airbench94 on the offline copy, if time is left (the CPU calibration exists).
# At most ~9.5 minutes (the device tool's per-command limit is 10). Usage on the GPU machine, with the data carried in .gpu/ (cifar10-jpeg.npz + make_cifar10.py):
#   bash bench/gpu_session.sh .gpu/cifar10-jpeg.npz "$OUT"
set -euo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; data=/tmp/cifar
python "$(dirname "$npz")/make_cifar10.py" "$data"
timeout 300 python bench/gpu_check.py --data-dir "$data" --out "$out/gpu_check.json" --deadline 270 \
  > "$out/gpu_check.log" 2>&1 || echo "gpu_check stopped early"
timeout 180 python bench/gpu_sweep.py --data-dir "$data" --variants-file bench/exp2_next_sweep.json \
  --out "$out/sweep.json" --deadline 150 > "$out/sweep.log" 2>&1 || echo "sweep stopped early"
timeout 60 python bench/airbench_reference.py --data-dir "$data" --n-train 45000 --out "$out/airbench_ref_45000.json" \
  > "$out/airbench_ref.log" 2>&1 || echo "reference failed or timed out"
tail -n 3 "$out"/*.log
