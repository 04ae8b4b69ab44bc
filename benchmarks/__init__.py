"""The lab tools: comparisons, reports and measurements of avalanche_balanced (not installed with it).

Run them from the repository root as modules, ``python -m benchmarks.<tool> [options]`` (for
instance ``python -m benchmarks.compare --protocol quick``); they import each other as
``benchmarks.<module>``, never through the script folder.

- ``compare``: balanced vs uniform replay beside Avalanche's replay strategies on Split CIFAR-100 (the table).
- ``methods``: the comparison's registry of methods, each a function building an Avalanche strategy.
- ``tables``: the tables, plots and paired differences of comparison results (used by compare and report).
- ``report``: paired differences and per-experience replay diagnostics across comparison folders.
- ``online``: online replay, this library's plugin against Avalanche's own, Avalanche's reference setup.
- ``iteration_time``: seconds per training iteration, our plugin against Avalanche's ``ReplayPlugin``.
- ``sampler``: speed of balanced vs uniform replay draws and of a training iteration with the plugin.
- ``memory``: bytes per stored sample of ``BalancedBuffer``, float32 vs float16 features.
- ``k_winners``: speed of SARL's k-winners-take-all threshold, ``topk`` against ``kthvalue``.
- ``syncs``: device-to-host synchronisations per training iteration (plugin and SARL-GELU).
- ``same_runs``: do two comparison folders hold the same numbers (a refactor must not change results)?
- ``stage_data``: stage CIFAR-100 as small parts for a machine that sees only the repository.
- ``gpu_paper``: SARL, SARL-GELU and SARL-GELU balanced at the authors' protocol inside a time budget.
- ``long_run``: 100,000 insertions and balanced draws of the buffer, invariants and memory.
- ``distributed``: seconds and bytes per iteration of the plugin under torch DDP.

Shell scripts (``bash benchmarks/<script>.sh``; each runs the tools above from the repository root):

- ``gpu_all.sh``: everything measured on a lent GPU in one call (quick comparison, then gpu_paper.sh).
- ``gpu_paper.sh``: ``benchmarks.gpu_paper`` with the staged data joined first.
- ``sarl_evidence.sh``: SARL against SARL-GELU and the ablations on the CPU's quick protocol.
- ``use_staged_data.sh``: sourced by the GPU scripts: joins the staged CIFAR-100 parts and uses them.
"""
