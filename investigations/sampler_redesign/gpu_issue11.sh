#!/usr/bin/env bash
# Issue 11's evidence on a lent GPU, in one call of at most 10 minutes (quick protocol, H100):
#   core:  sarl_uniform, sarl_balanced, plugin_uniform, plugin_balanced, seeds 0-4;
#   fixes: the pre-issue-11 sampler (sarl_legacy, plugin_legacy), each fix alone on top of it,
#          and the three future-work options on top of the new default, seeds 0-2;
#   check: would the new balanced designs pick another learning rate on held-out training images?
# Balanced runs train at their uniform counterpart's validated rate (results/quick_gpu/lr_selection.json).
#
#   bash investigations/sampler_redesign/gpu_issue11.sh OUT [BUDGET=540] [DEVICE=cuda]
#
# Results come back as OUT/results.tgz (results/quick_gpu_v2*/) and the logs.
set -uo pipefail
out=${1:?usage: gpu_issue11.sh OUT [BUDGET] [DEVICE]}; budget=${2:-540}; device=${3:-cuda}
here=$(cd "$(dirname "$0")/../.." && pwd); cd "$here"; mkdir -p "$out"
source benchmarks/use_staged_data.sh
py=${PYTHON:-python3}
start=$(date +%s)
compare() { timeout "$budget" "$py" -m benchmarks.compare --protocol quick --device "$device" "$@"; }
compare --out results/quick_gpu_v2 --lr_selection results/quick_gpu/lr_selection.json --seeds 0 1 2 3 4 \
    --methods sarl_uniform sarl_balanced plugin_uniform plugin_balanced --jobs 8 > "$out/core.log" 2>&1 &
compare --out results/quick_gpu_v2_fixes --lr_selection results/quick_gpu/lr_selection.json --seeds 0 1 2 \
    --methods sarl_legacy sarl_legacy_share sarl_legacy_groups sarl_legacy_bounded sarl_legacy_fresh \
              sarl_auto_weight sarl_hierarchical sarl_difficulty plugin_legacy --jobs 8 > "$out/fixes.log" 2>&1 &
compare --select_lr --methods sarl_balanced plugin_balanced --lr_selection results/quick_gpu_v2/lr_check.json \
    --jobs 3 > "$out/lr_check.log" 2>&1 &
wait
echo "issue 11 runs: done after $(( $(date +%s) - start )) s"
tar czf "$out/results.tgz" results/quick_gpu_v2*
grep -h "runs in\|selection in" "$out"/*.log
