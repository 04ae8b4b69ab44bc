# Sourced by the GPU scripts (from the repository root): when no data folder is set and the
# parts staged by benchmarks/stage_data.py travelled with the tree, join them and use them.
if [ -z "${AVALANCHE_BALANCED_DATA:-}" ] && [ -d .stage/cifar100 ]; then
    python3 -m benchmarks.stage_data --join .stage/cifar100 && export AVALANCHE_BALANCED_DATA=$PWD/.stage/cifar100
fi
