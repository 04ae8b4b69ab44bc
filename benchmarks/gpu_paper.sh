#!/usr/bin/env bash
# SARL, SARL-GELU and SARL-GELU with balanced draws, paper protocol (natural class order), on a GPU,
# inside a time budget; every seed's three runs go at once on the device.
#
#   bash benchmarks/gpu_paper.sh OUT [BUDGET_SECONDS] [--seeds 1 3 5] [--compile]   # budget 540 s by default
#
# Writes OUT/summary.json, OUT/summary.md and the runs' logs (see benchmarks/gpu_paper.py).
#
# Data: CIFAR-100 from $AVALANCHE_BALANCED_DATA, else from the staged parts in .stage/cifar100/.
# A lent GPU machine sees only the repository and at most 64 MiB carried beside it, not ../shared:
# on the machine with the data, `python -m benchmarks.stage_data` writes the npz files as parts of
# at most 28 MiB (five for the training set, one for the test set) with a manifest; carry two parts
# per call to the device, all of them ignored by git (earlier calls' parts stay on a warm machine),
# and this script joins them and checks their SHA-256 before the runs.
# Extra arguments after the budget go to gpu_paper.py (e.g. --device cpu --model reduced
# --per_class 4 --test_per_class 2 for the CPU smoke test).
set -euo pipefail
out=${1:?usage: gpu_paper.sh OUT [BUDGET_SECONDS] [gpu_paper.py options]}
budget=${2:-540}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"  # the tools run as modules of the benchmarks package, from the repository root
if [ -z "${AVALANCHE_BALANCED_DATA:-}" ] && [ -d "$here/.stage/cifar100" ]; then
    python3 -m benchmarks.stage_data --join "$here/.stage/cifar100"
    export AVALANCHE_BALANCED_DATA="$here/.stage/cifar100"
fi
exec "${PYTHON:-python3}" -m benchmarks.gpu_paper "$out" --budget "$budget" "$@"
