"""Shared plumbing for runs: seeding, the standard evaluator, and reading final results."""
import random
from typing import Dict, List, Optional

import numpy as np
import torch
from avalanche.evaluation.metrics import (
    accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics,
)
from avalanche.logging import InteractiveLogger, TensorboardLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin

__all__ = ["seed_everything", "build_evaluator", "final_results", "ACC", "FORGETTING", "BWT"]

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
    random.seed(seed)
    np.random.seed(seed)
    RNGManager.set_random_seeds(seed)
    torch.manual_seed(seed)
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
