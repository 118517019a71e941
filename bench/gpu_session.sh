#!/usr/bin/env bash
# One GPU loan, one script (the device tool's command is at most 2000 characters), most needed first:
#   1. the CUDA-only tests (CUDA-graphed training steps against eager ones, the on-device loader);
#      --noconftest because the GPU image has no MLflow (these tests need none);
#   2. the whole-programme timing check (bench/gpu_check.py: every exp1 epoch time with CUDA
#      graphs, the same eager, grid workers sharing the GPU, torch.compile, exp2);
#   3. the exp2 recipe sweep (bench/exp2_next_sweep.json: the configured recipe first).
# At most ~9 minutes (the device tool's per-command limit is 10). Usage on the GPU machine, with the data carried in .gpu/ (cifar10-jpeg.npz + make_cifar10.py):
#   bash bench/gpu_session.sh .gpu/cifar10-jpeg.npz "$OUT"
# The independent airbench94 calibration (bench/airbench_reference.py) is not rerun: its CPU figures stand.
set -euo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; data=/tmp/cifar
python "$(dirname "$npz")/make_cifar10.py" "$data"
timeout 90 python -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda_graph.py tests/test_cifar.py -k "cuda or graph" \
  > "$out/cuda_tests.log" 2>&1 || echo "CUDA tests failed or timed out"
timeout 300 python bench/gpu_check.py --data-dir "$data" --out "$out/gpu_check.json" --deadline 270 \
  > "$out/gpu_check.log" 2>&1 || echo "gpu_check stopped early"
timeout 130 python bench/gpu_sweep.py --data-dir "$data" --variants-file bench/exp2_next_sweep.json \
  --out "$out/sweep.json" --deadline 110 > "$out/sweep.log" 2>&1 || echo "sweep stopped early"
tail -n 3 "$out"/*.log
