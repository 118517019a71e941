#!/usr/bin/env bash
# One GPU loan, one script (the device tool's command is at most 2000 characters; one call at most
# 10 minutes). Usage on the GPU machine, with the data carried in .gpu/ (cifar10-jpeg.npz + make_cifar10.py):
#   bash bench/gpu_session.sh .gpu/cifar10-jpeg.npz "$OUT" [programme|check]
# Both modes first run the CUDA-only tests (CUDA-graphed training steps against eager ones, the
# on-device loader; --noconftest because the GPU image has no MLflow, which these tests do not need).
#   programme (default): the CIFAR part of the whole programme, for real (bench/gpu_programme.py:
#     every configuration as configured, 4 workers sharing the GPU, no new one after 480 s): the
#     direct test of "the whole programme in <= 10 minutes".
#   check: the diagnostics (bench/gpu_check.py: every exp1 epoch time with CUDA graphs and three
#     of them eager, grid workers sharing the GPU, torch.compile, exp2), then the exp2 recipe sweep.
# The independent airbench94 calibration (bench/airbench_reference.py) is not rerun: its CPU figures stand.
# CUDA_GRAPHS=off trains the programme eagerly; left unset, it is auto, or off when the CUDA tests fail.
# SMOKE=1 rehearses the whole script on a CPU with tiny sizes (the plumbing, not the figures; the
# programme mode then trains test_run and exp1_3 only: a CPU tests the full 10000 images slowly).
set -euo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; mode=${3:-programme}; data=/tmp/cifar
py=${PYTHON:-python3}  # the GPU image's python3 holds PyTorch
smoke=${SMOKE:+--smoke}
"$py" "$(dirname "$npz")/make_cifar10.py" "$data"
graphs=${CUDA_GRAPHS:-auto}
if ! timeout 60 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda_graph.py tests/test_cifar.py -k "cuda or graph" \
  > "$out/cuda_tests.log" 2>&1; then
  # One loan is all there is: a failed graph test must not cost the programme's timing, so it runs eagerly.
  echo "CUDA tests failed or timed out (see cuda_tests.log)"; [ -n "${CUDA_GRAPHS:-}" ] || graphs=off
fi
echo "cuda_graphs=$graphs"
case "$mode" in
  programme)
    PYTHONUNBUFFERED=1 timeout 520 "$py" bench/gpu_programme.py --data-dir "$data" --workers 4 --deadline 480 \
      --out "$out/gpu_programme.json" --cuda-graphs "$graphs" ${smoke:+$smoke --grids test_run,exp1_3} \
      > "$out/gpu_programme.log" 2>&1 \
      || echo "programme stopped early";;
  check)
    timeout 300 "$py" bench/gpu_check.py --data-dir "$data" --out "$out/gpu_check.json" --deadline 270 $smoke \
      > "$out/gpu_check.log" 2>&1 || echo "gpu_check stopped early"
    [ -n "$smoke" ] || timeout 180 "$py" bench/gpu_sweep.py --data-dir "$data" --variants-file bench/exp2_next_sweep.json \
      --out "$out/sweep.json" --deadline 160 > "$out/sweep.log" 2>&1 || echo "sweep stopped early";;
  *) echo "mode must be programme or check, got $mode"; exit 2;;
esac
tail -n 3 "$out"/*.log
