"""Shared plumbing for runs: seeding, the standard evaluator, and reading results back from it."""
import math
from typing import Dict, List, Optional

import torch
from avalanche.evaluation.metrics import (
    accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics,
)
from avalanche.logging import InteractiveLogger, TensorboardLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin

__all__ = ["seed_everything", "build_evaluator", "final_results", "accuracy_matrix", "ACC", "FORGETTING", "BWT"]

ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) through Avalanche's RNG manager, and ask
    cuDNN for deterministic convolutions.

    Call it *after* building the benchmark when the benchmark comes from Avalanche's
    ``nc_benchmark(seed=...)`` directly, which re-seeds torch's global RNG
    (:func:`~avalanche_balanced.data.split_cifar100` leaves it alone).

    The library's own samplers hold their own ``torch.Generator`` seeded from
    the ``seed`` arguments of the buffer and strategy.
    """
    RNGManager.set_random_seeds(seed)  # Python, NumPy, torch CPU and CUDA
    # cuDNN's autotuner picks convolution algorithms by timing, so results could differ run to run.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def build_evaluator(log_dir: Optional[str] = None, *, extra_metrics=(), interactive: bool = True):
    """``EvaluationPlugin`` with accuracy, loss, forgetting and BWT (experience and stream).

    Returns ``(evaluator, loggers)``; close a ``TensorboardLogger`` with
    ``logger.writer.close()`` at the end so the last events reach the disk.
    """
    loggers: List = []
    if interactive:
        loggers.append(InteractiveLogger())
    if log_dir is not None:
        loggers.append(TensorboardLogger(tb_log_dir=log_dir))
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        *extra_metrics,
        loggers=loggers,
    )
    return evaluator, loggers


def final_results(metrics: Dict) -> Dict[str, float]:
    """Final average accuracy, average forgetting and BWT (in %) from ``strategy.eval``'s dict."""
    pick = {"accuracy": ACC, "forgetting": FORGETTING, "bwt": BWT}
    return {k: 100.0 * float(metrics[name]) for k, name in pick.items() if name in metrics}


def close_loggers(loggers) -> None:
    """Flush and close TensorBoard writers (Avalanche leaves that to garbage collection)."""
    for logger in loggers:
        writer = getattr(logger, "writer", None)
        if writer is not None:
            writer.close()


def accuracy_matrix(evaluator, stream: str = "test_stream") -> torch.Tensor:
    """The accuracy matrix, read from the evaluator's history of Avalanche's experience accuracy
    (``accuracy_metrics(experience=True)``, in :func:`build_evaluator`).

    Row ``i`` is the ``i``-th training step count at which ``stream`` was
    evaluated (one row per evaluation after each experience, as the example and
    the comparison evaluate), column ``j`` experience ``j``; accuracies in
    [0, 1], float64, NaN where an experience was not evaluated. Empty (0 x 0)
    before any evaluation.
    """
    prefix = f"Top1_Acc_Exp/eval_phase/{stream}/"
    cells = {}
    for name, (steps, values) in evaluator.get_all_metrics().items():
        if name.startswith(prefix):
            exp = int(name.rsplit("/Exp", 1)[1])
            cells.update({(step, exp): float(v) for step, v in zip(steps, values)})
    if not cells:
        return torch.empty(0, 0, dtype=torch.float64)
    rows = {step: i for i, step in enumerate(sorted({step for step, _ in cells}))}
    matrix = torch.full((len(rows), 1 + max(j for _, j in cells)), math.nan, dtype=torch.float64)
    for (step, j), value in cells.items():
        matrix[rows[step], j] = value
    return matrix
