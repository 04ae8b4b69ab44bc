#!/usr/bin/env bash
# SARL (the authors' method) against SARL-GELU, uniform and balanced draws, and the two ablations, on
# the CPU's quick protocol; docs/results.md, "SARL, SARL-GELU and the variant's parts".
#
#   bash benchmarks/sarl_evidence.sh            # ~3 h on 2 cores; re-runs skip finished runs
#
# Each configuration trains at its own rate, chosen on held-out training images (seed 0, buffer 500);
# sarl_gelu_balanced takes sarl_gelu's (the pair differs in the draws only), the ablations take sarl's
# (each differs from it in one part). Runs go seed by seed, so an interrupted run leaves whole pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
lr=results/quick_cpu_sarl/lr_selection.json
main="sarl sarl_gelu sarl_gelu_balanced"
run() { "$py" -m benchmarks.compare --protocol quick --jobs 2 --threads 1 --lr_selection "$lr" "$@"; }
run --select_lr --methods sarl sarl_gelu
run --methods $main --seeds 0 1 2 3 4 --out results/quick_cpu_sarl
run --methods sarl_with_gelu sarl_with_learned_similarity --seeds 0 1 2 --out results/quick_cpu_sarl
run --methods $main --seeds 0 1 2 --buffer_size 200 --out results/quick_cpu_sarl_b200
run --methods sarl --seeds 0 1 2 --class_order natural --out results/quick_cpu_sarl_natural
run --methods $main --seeds 3 4 --buffer_size 200 --out results/quick_cpu_sarl_b200
