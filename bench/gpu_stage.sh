#!/usr/bin/env bash
# Issue #18's GPU loan in three device calls. Why three: the lossless CIFAR-10 copy (143 MB) cannot
# travel in one call (64 MiB each, the repo included), and ../shared does not travel at all. So it
# is split here into three parts of about 45.6 MiB in the git-ignored .gpu/, each call carries one,
# the machine keeps them in /tmp/stage while it stays warm (30 s after a call: make the next call
# at once), and the last call reassembles, checks the sha256, unpacks and runs bench/exp2_bar.py.
#   here:  bash bench/gpu_stage.sh split [NPZ]    # .gpu/: 3 parts, make_cifar10.py, SHA256SUMS
#   call 1 (carry part0 + make_cifar10.py + SHA256SUMS):  bash bench/gpu_stage.sh stage 0 && bash bench/gpu_stage.sh cuda-tests "$OUT"
#   call 2 (carry part1):                                 bash bench/gpu_stage.sh stage 1
#   call 3 (carry part2):                                 bash bench/gpu_stage.sh bar "$OUT"
#   here:  bash bench/gpu_stage.sh rehearse       # all of it on the CPU, exp2_bar.py --smoke on fake data
# bar: everything within BUDGET_S seconds (default 545) of its start: exp2_bar.py's --budget is what
# is left after unpacking, and a hard timeout 20 s later ends a job whose estimate was short (the
# JSON keeps every finished job). WORKERS (default 4) share the GPU in the depth phase.
set -euo pipefail
cmd=${1:?usage: gpu_stage.sh split [NPZ] | stage N | cuda-tests OUT | bar OUT | rehearse}
GPU=${GPU_DIR:-.gpu}; STAGE=${STAGE_DIR:-/tmp/stage}; DATA=${DATA_DIR:-/tmp/cifar}
NAME=cifar10-lossless.npz; PARTS=3; py=${PYTHON:-python3}

split_npz() {  # here: the parts, the unpacker and the checksum into $GPU (git-ignored)
  local npz=${1:-../shared/data/$NAME}
  [ -f "$npz" ] || npz=/work/shared/data/$NAME
  mkdir -p "$GPU"; rm -f "$GPU/$NAME".part*
  local size; size=$(stat -c %s "$npz")
  split -b $(( (size + PARTS - 1) / PARTS )) -d -a 1 "$npz" "$GPU/$NAME.part"
  cp "$(dirname "$npz")/make_cifar10.py" "$GPU/"
  (cd "$(dirname "$npz")" && sha256sum "$NAME") > "$GPU/SHA256SUMS"
  ls -l "$GPU"
}

stage() {  # there: keep the carried part (and the unpacker, the checksum) in $STAGE
  mkdir -p "$STAGE"
  cp "$GPU/$NAME.part$1" "$GPU/make_cifar10.py" "$GPU/SHA256SUMS" "$STAGE/"
  ls -l "$STAGE"
}

cuda_tests() {  # the CUDA-only tests (graphed steps, on-device loader); no MLflow on the GPU image
  nvidia-smi -L || true
  timeout 90 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda_graph.py tests/test_cifar.py \
    -k "cuda or graph" > "$1/cuda_tests.log" 2>&1 && echo "CUDA tests passed" || echo "CUDA tests FAILED: see cuda_tests.log"
  tail -n 2 "$1/cuda_tests.log"
}

assemble() {  # there: all parts present, reassembled, checked, unpacked into $DATA
  local i
  for i in $(seq 0 $((PARTS - 1))); do
    [ -f "$STAGE/$NAME.part$i" ] || { echo "part $i missing from $STAGE (machine went cold?): redo call $((i + 1))"; exit 3; }
  done
  cat $(for i in $(seq 0 $((PARTS - 1))); do echo "$STAGE/$NAME.part$i"; done) > "$STAGE/$NAME"
  (cd "$STAGE" && sha256sum -c SHA256SUMS) || { echo "checksum mismatch: redo all three calls"; exit 4; }
  "$py" "$STAGE/make_cifar10.py" "$DATA"
}

bar() {  # there, call 3: the whole measurement in BUDGET_S seconds, the JSON into $1
  local out=$1 smoke=${SMOKE:+--smoke} data=$DATA
  [ -f "$GPU/$NAME.part2" ] && stage 2 > /dev/null
  assemble
  if [ -n "$smoke" ]; then  # a CPU cannot test 10000 images quickly: the plumbing on fake data
    "$py" -c "from training.data.digest import *; d = cifar10_digest('$DATA'); print('unpacked:', data_kind(d), d)"
    data=$STAGE/fake; PYTHONPATH=tests:. "$py" -c "from cifar_fixtures import write_fake_cifar10 as w; w('$data', 40, 20)"
  fi
  local left=$(( ${BUDGET_S:-545} - SECONDS - 5 ))
  PYTHONUNBUFFERED=1 timeout $((left + 20)) "$py" bench/exp2_bar.py --data-dir "$data" --workers "${WORKERS:-4}" \
    --budget "$left" --out "$out" $smoke > "$out/exp2_bar.log" 2>&1 || echo "exp2_bar.py stopped early (rc $?)"
  grep -v '^\*\*\*' "$out/exp2_bar.log" | tail -n 25
}

rehearse() {  # here: the three calls in a row on the CPU, in temporary folders
  local tmp; tmp=$(mktemp -d)
  export GPU_DIR=$tmp/.gpu STAGE_DIR=$tmp/stage DATA_DIR=$tmp/cifar SMOKE=1 PYTHON=${PYTHON:-.venv/bin/python}
  mkdir -p "$tmp/out"
  bash "$0" split "${1:-}" && bash "$0" stage 0 && bash "$0" stage 1 && bash "$0" bar "$tmp/out"
  ls -l "$tmp/out"; echo "rehearsal folder: $tmp"
}

case "$cmd" in
  split) split_npz "${2:-}";;
  stage) stage "${2:?part number}";;
  cuda-tests) cuda_tests "${2:?output folder}";;
  bar) bar "${2:?output folder}";;
  rehearse) rehearse "${2:-}";;
  *) echo "unknown command $cmd"; exit 2;;
esac
