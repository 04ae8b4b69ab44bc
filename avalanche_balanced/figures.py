"""Per-experience figures (buffer group sizes, accuracy matrix) for TensorBoard and PNG files.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state, no
GUI backend): they are saved with the Agg renderer and published to the
strategy's ``EvaluationPlugin``, whose ``TensorboardLogger`` writes a
``Figure`` value with ``add_figure``.
"""
import math
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import LoggingType, MetricValue

from .experiment import accuracy_matrix
from .metrics import find_balanced_buffer, group_agreement

__all__ = ["group_sizes_figure", "accuracy_matrix_figure", "FigureLoggerPlugin"]


def group_sizes_figure(group_counts, title: Optional[str] = None) -> Figure:
    """Bar chart of the stored samples per non-empty group.

    Args:
        group_counts: 1-D counts indexed by group id (``BalancedBuffer.group_counts``).
        title: defaults to ``"<groups> groups, <samples> samples"``.
    """
    counts = torch.as_tensor(group_counts).detach().flatten().long().cpu()
    ids = torch.nonzero(counts > 0).flatten()
    sizes = counts[ids]
    fig = Figure(figsize=(min(4 + 0.25 * ids.numel(), 16), 3.2))
    ax = fig.add_subplot()
    positions = np.arange(ids.numel())
    ax.bar(positions, sizes.numpy(), color="tab:blue")
    step = max(1, math.ceil(ids.numel() / 40))  # at most ~40 tick labels
    ax.set_xticks(positions[::step], [str(i) for i in ids[::step].tolist()])
    ax.set_xlabel("group id")
    ax.set_ylabel("stored samples")
    ax.set_title(title if title is not None else f"{ids.numel()} groups, {int(sizes.sum())} samples")
    fig.tight_layout()
    return fig


def accuracy_matrix_figure(matrix, title: str = "accuracy") -> Figure:
    """Heat map of an accuracy matrix.

    ``matrix[i, j]`` is the accuracy on experience ``j`` after training
    experience ``i``; NaN cells (not evaluated) are left blank. Cells are
    annotated with their value when the matrix is at most 20 x 20.
    """
    m = np.asarray(torch.as_tensor(matrix, dtype=torch.float64).cpu())
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    fig = Figure(figsize=(2 + 0.6 * m.shape[1], 1.5 + 0.5 * m.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax)
    if max(m.shape) <= 20:
        for i, j in zip(*np.nonzero(np.isfinite(m))):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                    color="black" if m[i, j] > 0.5 else "white", fontsize=8)
    ax.set_xticks(np.arange(m.shape[1]))
    ax.set_yticks(np.arange(m.shape[0]))
    ax.set_xlabel("evaluated experience")
    ax.set_ylabel("after training experience")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _experience_id(strategy) -> int:
    exp = strategy.experience
    with exp.no_attribute_masking():  # the id is masked in train/eval mode
        return exp.current_experience


class FigureLoggerPlugin(SupervisedPlugin, supports_distributed=True):
    """Per training experience, a group-size bar chart and the accuracy matrix,
    as PNG files in ``log_dir`` and as figures for the strategy's loggers.

    Used as a strategy plugin: at the first evaluation after training
    experience ``k`` finished, it calls :meth:`log` with ``step=k``, the
    accuracy matrix read from the evaluator's history of the ``stream_name``
    stream (:func:`~avalanche_balanced.experiment.accuracy_matrix`; needs
    Avalanche's experience accuracy in the evaluator) and the group counts of
    the buffer the strategy replays from
    (:func:`~avalanche_balanced.metrics.find_balanced_buffer`; no chart without
    one). With ``fine_to_coarse`` the group chart's title shows the groups' ARI
    against the superclasses.

    :meth:`log` may also be called directly.
    """

    def __init__(self, log_dir: Union[str, Path], fine_to_coarse=None, stream_name: str = "test"):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.fine_to_coarse = None if fine_to_coarse is None else torch.as_tensor(fine_to_coarse).long()
        self.stream_name = stream_name
        self._pending: Optional[int] = None  # experience trained and not yet logged

    def log(self, target, step: int, group_counts=None, acc_matrix=None,
            group_title: Optional[str] = None, flush: bool = False) -> List[Path]:
        """Write ``group_sizes_exp{step}.png`` / ``accuracy_matrix_exp{step}.png`` and publish the figures.

        Args:
            target: a strategy (its ``evaluator`` is used), an ``EvaluationPlugin``,
                or None (PNG files only).
            step: experience index, used in the file names and as the plot's x position.
            group_counts, acc_matrix: data of each figure; a figure is skipped when None.
            flush: hand the figures to the evaluator's loggers now. Avalanche only
                passes published values to its loggers at the evaluator's next
                callback: that is what happens inside a strategy callback (this
                plugin's own use), but a direct call after the last ``eval``
                needs ``flush=True`` to reach TensorBoard.

        Returns:
            The PNG paths written.
        """
        figures = {}
        if group_counts is not None:
            figures["group_sizes"] = group_sizes_figure(group_counts, group_title)
        if acc_matrix is not None:
            figures["accuracy_matrix"] = accuracy_matrix_figure(acc_matrix, f"accuracy after experience {step}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        evaluator = getattr(target, "evaluator", target)
        paths, values = [], []
        for name, fig in figures.items():
            path = self.log_dir / f"{name}_exp{step}.png"
            fig.savefig(path, dpi=100)
            paths.append(path)
            if evaluator is not None:
                values.append(MetricValue(self, f"Figures/{name}", fig, step, logging_type=LoggingType.FIGURE))
        if flush:  # straight to the loggers, not through the evaluator's queue (it would log them again)
            for logger in getattr(evaluator, "loggers", []) if values else []:
                logger.log_metrics(values)
        else:
            for value in values:
                evaluator.publish_metric_value(value)
        return paths

    # ----------------------------------------------------------------- hooks
    def after_training_exp(self, strategy, **kwargs):
        self._pending = _experience_id(strategy)

    def after_eval(self, strategy, **kwargs):
        matrix = accuracy_matrix(strategy.evaluator, f"{self.stream_name}_stream")
        if self._pending is None or matrix.numel() == 0:
            return
        counts, title = None, None
        buffer = find_balanced_buffer(strategy)
        if buffer is not None:
            counts = buffer.group_counts
            if self.fine_to_coarse is not None and len(buffer):
                classes, groups = buffer.class_groups()
                ari = float(group_agreement(classes, groups, self.fine_to_coarse.to(classes.device)))
                title = f"{int((counts > 0).sum())} groups, {len(buffer)} samples, ARI vs superclasses {ari:.2f}"
        self.log(strategy, self._pending, counts, matrix, group_title=title)
        self._pending = None
