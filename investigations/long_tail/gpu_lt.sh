#!/usr/bin/env bash
# Issue 12's comparison on a lent GPU, in one call of at most 10 minutes: long-tailed Split
# CIFAR-100 (ratio 0.01, cap 500), both orders, seeds 0-2, the methods a user would weigh.
#
#   bash investigations/long_tail/gpu_lt.sh OUT [BUDGET=550] [DEVICE=cuda]
#
# Results come back as OUT/results.tgz (results/quick_gpu_lt_*/) and the logs; finished runs are
# kept, and a re-run skips them.
set -uo pipefail
out=${1:?usage: gpu_lt.sh OUT [BUDGET] [DEVICE]}; budget=${2:-550}; device=${3:-cuda}
here=$(cd "$(dirname "$0")/../.." && pwd); cd "$here"; mkdir -p "$out"
source benchmarks/use_staged_data.sh
py=${PYTHON:-python3}
methods="er er_class_balanced er_ace plugin_uniform plugin_class_balanced plugin_balanced sarl_uniform sarl_balanced"
for order in shuffled ordered; do
    timeout "$budget" "$py" -m benchmarks.compare --protocol quick --device "$device" --scenario lt \
        --imbalance_order "$order" --seeds 0 1 2 --methods $methods --jobs 8 \
        --lr_selection results/quick_gpu/lr_selection.json --out "results/quick_gpu_lt_$order" \
        > "$out/lt_$order.log" 2>&1 &
done
wait
tar czf "$out/results.tgz" results/quick_gpu_lt_*
grep -h "runs in" "$out"/lt_*.log
