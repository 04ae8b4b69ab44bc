#!/usr/bin/env bash
# Everything this project measures on a lent GPU, in one call of at most 10 minutes:
#   1. the quick comparison on the GPU (learning-rate selection on held-out training images, then
#      the core table over seeds 0 1 2 and the fixed-class-order block), within QUICK_BUDGET s;
#   2. benchmarks/gpu_paper.sh with the time left (TOTAL_BUDGET in all).
# Results come back as OUT/results.tgz (results/quick_gpu*/) and OUT/paper/summary.*.
#
#   bash benchmarks/gpu_all.sh OUT [TOTAL_BUDGET=570] [QUICK_BUDGET=320] [JOBS=16] [DEVICE=cuda]
#
# Runs finished inside the budget are kept (compare.py writes each as it ends; a re-run skips them).
set -uo pipefail
out=${1:?usage: gpu_all.sh OUT [TOTAL_BUDGET] [QUICK_BUDGET] [JOBS] [DEVICE]}
total=${2:-570}; quick=${3:-320}; jobs=${4:-16}; device=${5:-cuda}
protocol=${PROTOCOL:-quick}; paper_args=${PAPER_ARGS:-}
start=$(date +%s)
here=$(cd "$(dirname "$0")/.." && pwd); cd "$here"; mkdir -p "$out"
source benchmarks/use_staged_data.sh
py=${PYTHON:-python3}
res=results/${protocol}_gpu; fixed=results/${protocol}_gpu_fixed_order
compare() { "$py" -m benchmarks.compare --protocol "$protocol" --device "$device" --lr_selection "$res/lr_selection.json" "$@"; }
timeout "$quick" bash -c "
    $(declare -f compare); py=$py protocol=$protocol device=$device res=$res
    compare --select_lr --jobs $jobs &&
    { compare --out $res --jobs $(( jobs * 2 / 3 )) & compare --out $fixed --class_order_seed 0 --seeds 0 1 2 \
          --methods er er_ace sarl_uniform sarl_balanced --jobs $(( jobs - jobs * 2 / 3 )) & wait; }
" > "$out/quick.log" 2>&1
echo "quick comparison: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/quick.log"
tar czf "$out/results.tgz" results/${protocol}_gpu* 2>/dev/null
left=$(( total - ($(date +%s) - start) ))
paper=$(mktemp -d)/paper
bash benchmarks/gpu_paper.sh "$paper" "$left" --device "$device" $paper_args > "$out/paper.log" 2>&1
echo "paper: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/paper.log"
cp "$paper/summary.md" "$out/paper_summary.md" 2>/dev/null
# at most 8 files come back from the device: the paper runs' logs and results go as one archive
tar czf "$out/paper.tgz" -C "$(dirname "$paper")" paper -C "$here" --exclude=checkpoint.pt runs/gpu_paper_run_uniform \
    runs/gpu_paper_run_balanced 2>/dev/null
cat "$out/paper_summary.md" 2>/dev/null
grep -h "runs in\|selection in" "$out/quick.log"
