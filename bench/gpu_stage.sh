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
#
# Issue #17's reproduce in three device calls (the wheels of bench/gpu_wheels.sh need room too, so
# the data goes in five parts of 27.3 MiB: PARTS=5 at split; `plan` prints the sizes and checks them):
#   here:  bash bench/gpu_wheels.sh && PARTS=5 bash bench/gpu_stage.sh split && bash bench/gpu_stage.sh plan
#   call 1 (carry .gpu/cifar10-lossless.npz.part0 .gpu/make_cifar10.py .gpu/SHA256SUMS .gpu/PARTS .gpu/wheels):
#          bash bench/gpu_stage.sh stage 0 && bash bench/gpu_stage.sh wheels
#   call 2 (carry .gpu/cifar10-lossless.npz.part1 .gpu/cifar10-lossless.npz.part2):  bash bench/gpu_stage.sh stage 1 2
#   call 3 (carry .gpu/cifar10-lossless.npz.part3 .gpu/cifar10-lossless.npz.part4):  bash bench/gpu_stage.sh reproduce "$OUT"
#   call 4 (carry nothing; only if call 3 was cut and the machine is still warm):  bash bench/gpu_stage.sh reproduce "$OUT"
#          (reproduce continues its own run: what finished is skipped, what was cut resumes)
#   here:  bash bench/gpu_stage.sh rehearse-reproduce   # all three on the CPU, smoke size on fake data, 2 workers
# reproduce: `python3 -m entrypoints.reproduce --seeds 42,43,44` on the unpacked data, into the default
# store ./mlflow.db, under a hard timeout that ends BUDGET_S (default 570) seconds after the call's
# start less RECORD_S (45) for bench/reproduce_record.py, which records whatever the store holds then
# (a run cut short ends KILLED with its end time); $OUT gets the record, answers.md, the log's tail,
# and the store (gzipped, when it fits in 15 MiB).
set -euo pipefail
cmd=${1:?usage: gpu_stage.sh split [NPZ] | stage N... | cuda-tests OUT | bar OUT | rehearse | plan | wheels | reproduce OUT | rehearse-reproduce}
GPU=${GPU_DIR:-.gpu}; STAGE=${STAGE_DIR:-/tmp/stage}; DATA=${DATA_DIR:-/tmp/cifar}; SITE=${SITE_DIR:-/tmp/site}
NAME=cifar10-lossless.npz; PARTS=${PARTS:-3}; py=${PYTHON:-python3}

split_npz() {  # here: the parts, the unpacker and the checksum into $GPU (git-ignored)
  local npz=${1:-../shared/data/$NAME}
  [ -f "$npz" ] || npz=/work/shared/data/$NAME
  mkdir -p "$GPU"; rm -f "$GPU/$NAME".part*
  local size; size=$(stat -c %s "$npz")
  split -b $(( (size + PARTS - 1) / PARTS )) -d -a 1 "$npz" "$GPU/$NAME.part"
  cp "$(dirname "$npz")/make_cifar10.py" "$GPU/"
  (cd "$(dirname "$npz")" && sha256sum "$NAME") > "$GPU/SHA256SUMS"
  echo "$PARTS" > "$GPU/PARTS"
  ls -l "$GPU"
}

stage() {  # there: keep the carried parts (and the unpacker, the checksum, the count) in $STAGE
  mkdir -p "$STAGE"
  local i f
  for i in "$@"; do cp "$GPU/$NAME.part$i" "$STAGE/"; done
  for f in make_cifar10.py SHA256SUMS PARTS; do [ -f "$GPU/$f" ] && cp "$GPU/$f" "$STAGE/"; done
  ls -l "$STAGE"
}

stage_carried() {  # there: every part this call carried (the last call's, before assembling)
  local f
  for f in "$GPU/$NAME".part*; do [ -f "$f" ] && stage "${f##*.part}" > /dev/null; done
  return 0
}

cuda_tests() {  # the CUDA-only tests (graphed steps, on-device loader); no MLflow on the GPU image
  nvidia-smi -L || true
  timeout 90 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda_graph.py tests/test_cifar.py \
    -k "cuda or graph" > "$1/cuda_tests.log" 2>&1 && echo "CUDA tests passed" || echo "CUDA tests FAILED: see cuda_tests.log"
  tail -n 2 "$1/cuda_tests.log"
}

assemble() {  # there: all parts present, reassembled, checked, unpacked into $DATA
  local i
  [ -f "$STAGE/PARTS" ] && PARTS=$(cat "$STAGE/PARTS")
  for i in $(seq 0 $((PARTS - 1))); do
    [ -f "$STAGE/$NAME.part$i" ] || { echo "part $i missing from $STAGE (machine went cold?): redo the calls from the one carrying it"; exit 3; }
  done
  cat $(for i in $(seq 0 $((PARTS - 1))); do echo "$STAGE/$NAME.part$i"; done) > "$STAGE/$NAME"
  (cd "$STAGE" && sha256sum -c SHA256SUMS) || { echo "checksum mismatch: redo all the calls"; exit 4; }
  "$py" "$STAGE/make_cifar10.py" "$DATA"
}

bar() {  # there, call 3: the whole measurement in BUDGET_S seconds, the JSON into $1
  local out=$1 smoke=${SMOKE:+--smoke} data=$DATA
  stage_carried
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

mib() { du -cb "$@" 2>/dev/null | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }

plan() {  # here: the reproduce flow's calls, what each carries and its size against the 64 MiB limit
  local n i repo total carry files
  n=$(cat "$GPU/PARTS"); repo=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb | tail -1 | cut -f1)
  [ -d "$GPU/wheels" ] || { echo "no $GPU/wheels: run bench/gpu_wheels.sh first"; exit 2; }
  echo "repo (tracked + untracked, travels each call): $(awk "BEGIN {printf \"%.1f\", $repo / 1048576}") MiB"
  for ((i = -1; i < n; i += 2)); do
    if ((i < 0)); then files="$GPU/$NAME.part0 $GPU/make_cifar10.py $GPU/SHA256SUMS $GPU/PARTS $GPU/wheels"
    else files="$GPU/$NAME.part$i"; ((i + 1 < n)) && files="$files $GPU/$NAME.part$((i + 1))"; fi
    # shellcheck disable=SC2086
    total=$(( $(du -cb $files | tail -1 | cut -f1) + repo ))
    carry=$(printf '"%s", ' $files); carry="[${carry%, }]"
    if ((i < 0)); then cmd='bash bench/gpu_stage.sh stage 0 && bash bench/gpu_stage.sh wheels'
    elif ((i + 2 >= n)); then cmd='bash bench/gpu_stage.sh reproduce "$OUT"'
    else cmd="bash bench/gpu_stage.sh stage $i $((i + 1))"; fi
    printf 'call %d: %5.1f MiB  carry %s\n        command: %s\n' $(( (i + 3) / 2 )) "$(awk "BEGIN {print $total / 1048576}")" "$carry" "$cmd"
    ((total <= 63 * 1048576)) || { echo "call $(( (i + 3) / 2 )) is over 63 MiB: split in more parts (PARTS=N ... split)"; exit 1; }
  done
}

wheels() {  # there (call 1): the carried wheels into $SITE; mlflow, its sqlite store and its server checked
  ls "$GPU"/wheels/*.whl > /dev/null || { echo "no wheels carried in $GPU/wheels"; exit 5; }
  if [ -n "${REHEARSE:-}" ]; then  # a CPU rehearsal: the set installs for the image's Python (no install here)
    "$py" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --target "$SITE" "$GPU"/wheels/*.whl && echo "wheels: $(ls "$GPU"/wheels | wc -l) install for cp312"
    return 0
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$GPU"/wheels/*.whl
  PYTHONPATH=$SITE:$PWD timeout 120 "$py" - <<'PY'
import tempfile, mlflow
from training.tracking.server import start_server
root = tempfile.mkdtemp()
with start_server(f"sqlite:///{root}/check.db", state_dir=f"{root}/state", default_artifact_root=f"{root}/art") as server:
    mlflow.set_tracking_uri(server.uri)
    with mlflow.start_run():
        mlflow.log_metric("ok", 1)
    print("mlflow", mlflow.__version__, "installed; its server over sqlite answered and logged a run")
PY
}

use_site() {  # there: mlflow from $SITE (installed by call 1; installed now when the wheels came along)
  if ! PYTHONPATH=$SITE "$py" -c "import mlflow" 2> /dev/null; then
    ls "$GPU"/wheels/*.whl > /dev/null 2>&1 || { echo "mlflow missing and no wheels here: redo call 1"; exit 5; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$GPU"/wheels/*.whl
  fi
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
}

smoke_inputs() {  # a CPU rehearsal: fake CIFAR files and Part 1 at its smallest; echoes reproduce's extra options
  local fake=$STAGE/fake
  PYTHONPATH=tests:. "$py" -c "from cifar_fixtures import write_fake_cifar10 as w; w('$fake', 40, 40)"
  "$py" -c "
import yaml; from training.config import load_config
cfg = load_config('part1'); cfg['first_classifier']['epochs'] = 2
cfg['mlp_grid'].update(depths=[1], widths=[8], epochs=2)
open('$STAGE/part1_smoke.yaml', 'w').write(yaml.safe_dump(cfg))"
  echo "--data-dir $fake --part1-config $STAGE/part1_smoke.yaml --allow-cpu true --allow-small true --n-train 64" \
       "--n-valid 32 --bs-train 32 --epochs 1 --grids test_run,exp1_3 --workers 2"  # 2: the private server, as on the GPU
}

reproduce() {  # there, the last call: data, wheels, the programme under a hard timeout, its record into $1
  local out=$1 repo=$PWD run=${RUN_DIR:-$PWD} args tag left rc=0
  stage_carried; assemble; use_site
  args="--data-dir $DATA"
  [ -n "${SMOKE:-}" ] && args=$(smoke_inputs)
  tag=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null || true) | head -1 | awk '{print tolower($NF)}')
  left=$(( ${BUDGET_S:-570} - SECONDS - ${RECORD_S:-45} )); ((left > 60)) || left=60
  echo "reproduce: ${left} s left for it on ${tag:-cpu} ($( (nvidia-smi -L 2> /dev/null || echo no GPU) | head -1))"
  mkdir -p "$run"
  # shellcheck disable=SC2086
  (cd "$run" && PYTHONUNBUFFERED=1 timeout -k 15 "$left" "$py" -m entrypoints.reproduce --seeds "${SEEDS:-42,43,44}" \
     --out "$run/reports" $args ${REPRODUCE_ARGS:-} > "$STAGE/reproduce.log" 2>&1) || rc=$?
  ((rc == 0)) || echo "reproduce exited with rc $rc (124: cut at its ${left} s); recording what the store holds"
  grep -v '^\*\*\*' "$STAGE/reproduce.log" | tail -n 8
  "$py" "$repo/bench/reproduce_record.py" "sqlite:///$run/mlflow.db" --check \
    --out "$out/reproduce_${tag:-cpu}_$(date +%F).json" || rc=$?
  keep_outputs "$out" "$run"
  return "$rc"
}

keep_outputs() {  # the answers, the log (its tail when huge) and the store (gzipped, when small enough) into $1
  local out=$1 run=$2
  [ -f "$run/reports/answers.md" ] && cp "$run/reports/answers.md" "$out/"
  tail -c 15000000 "$STAGE/reproduce.log" > "$out/reproduce.log"
  gzip -c "$run/mlflow.db" > "$STAGE/mlflow.db.gz" && (($(stat -c %s "$STAGE/mlflow.db.gz") < 15 * 1048576)) \
    && cp "$STAGE/mlflow.db.gz" "$out/"
  ls -l "$out"
}

rehearse_reproduce() {  # here: the three calls in a row on the CPU, in temporary folders, smoke size
  # REHEARSE= (empty) with PYTHON=a Python holding only the image's packages and WHEELS_FROM=the same
  # set built for it (PY_VERSION=3.11 WHEEL_DIR=... bench/gpu_wheels.sh) installs the wheels for real
  local tmp; tmp=$(mktemp -d)
  [ -d "${WHEELS_FROM:-$GPU/wheels}" ] && cp -r "${WHEELS_FROM:-$GPU/wheels}" "$tmp/wheels"
  export GPU_DIR=$tmp/.gpu STAGE_DIR=$tmp/stage DATA_DIR=$tmp/cifar SITE_DIR=$tmp/site RUN_DIR=$tmp/run SMOKE=1 \
    REHEARSE=${REHEARSE-1} PARTS=5 SEEDS=${SEEDS:-42,43} PYTHON=${PYTHON:-$PWD/.venv/bin/python}
  mkdir -p "$tmp/out"
  bash "$0" split "${1:-}" && { [ -d "$tmp/wheels" ] && mv "$tmp/wheels" "$GPU_DIR/" || true; } && bash "$0" plan \
    && bash "$0" stage 0 && { [ -d "$GPU_DIR/wheels" ] && bash "$0" wheels || echo "no wheels to check"; } \
    && bash "$0" stage 1 2 && bash "$0" reproduce "$tmp/out"
  echo "rehearsal folder: $tmp"
}

case "$cmd" in
  split) split_npz "${2:-}";;
  stage) shift; stage "${@:?part numbers}";;
  cuda-tests) cuda_tests "${2:?output folder}";;
  bar) bar "${2:?output folder}";;
  rehearse) rehearse "${2:-}";;
  plan) plan;;
  wheels) wheels;;
  reproduce) reproduce "${2:?output folder}";;
  rehearse-reproduce) rehearse_reproduce "${2:-}";;
  *) echo "unknown command $cmd"; exit 2;;
esac
