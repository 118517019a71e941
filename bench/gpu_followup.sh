#!/usr/bin/env bash
# The second call of a GPU loan, after gpu_session.sh's programme run (same data carried in .gpu/):
#   bash bench/gpu_followup.sh .gpu/cifar10-jpeg.npz "$OUT"
# 1. test_run, exp1_1 and exp1_3 eager (cuda_graphs=off): the programme run's accuracies without graphs
#    (do the configurations stuck at 10 % fail because of the graphs, or because they are too deep to train?);
# 2. the best YourCNN configuration tested after every epoch: time to 90 / 93 / 94 % test accuracy;
# 3. the same three grids graphed again, on this machine: the baseline for step 1's timings.
set -uo pipefail
npz=${1:?path to cifar10-jpeg.npz}; out=${2:-.}; data=/tmp/cifar
py=${PYTHON:-python3}; smoke=${SMOKE:+--smoke}
"$py" "$(dirname "$npz")/make_cifar10.py" "$data"
prog() { PYTHONUNBUFFERED=1 timeout "$1" "$py" bench/gpu_programme.py --data-dir "$data" $smoke "${@:2}"; }
prog 150 --grids test_run,exp1_1,exp1_3 --workers 4 --deadline 110 --cuda-graphs off --out "$out/eager.json" > "$out/eager.log" 2>&1
prog 80 --grids exp2 --only exp2_L3_K32-64-128 --workers 1 --test-each-epoch --out "$out/exp2_tta.json" > "$out/exp2_tta.log" 2>&1
prog 110 --grids test_run,exp1_1,exp1_3 --workers 4 --deadline 80 --out "$out/graphed.json" > "$out/graphed.log" 2>&1
tail -n 2 "$out"/*.log
