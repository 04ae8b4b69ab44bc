"""Training guards for any Avalanche strategy: fail fast on a non-finite loss, clip the
gradient norm, and publish what a diverging run looks like (per-epoch maximum gradient
norm and largest logit) so that a collapse shows itself in TensorBoard.

Why: SGD at the top of a validated rate grid can spike (one large gradient), and a
continual learner then distils to, replays the logits of and takes prototypes from the
spiked model; the run ends near chance with no error. The authors' code raises on a
NaN loss; here the same check names the loss term, the experience and the iteration,
and stops *before* the backward pass, so nothing non-finite reaches the weights, the
buffer, the prototypes or a checkpoint.

All per-iteration bookkeeping stays on the device (running maxima and counts as
tensors); the finite-loss check is the one host synchronisation per iteration.
"""
import contextlib
from typing import Dict, Optional

import torch
from torch import Tensor
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue

__all__ = ["NonFiniteLossError", "TrainingGuardPlugin", "gradient_norm", "first_non_finite", "explain_non_finite",
           "ramp_factor", "teacher_collapsed"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; raised before the backward pass of that iteration."""

    def __init__(self, term: str, experience: int, iteration: int, value: float):
        self.term, self.experience, self.iteration, self.value = term, experience, iteration, value
        super().__init__(
            f"non-finite loss term {term!r} ({value}) in experience {experience}, iteration {iteration} "
            f"of the experience: training stopped before the update, so the weights, the buffer and the "
            f"last checkpoint hold no NaN. Resume from the last checkpoint with a lower learning rate or "
            f"with gradient clipping (clip_grad_norm).")


def first_non_finite(terms: Dict[str, Tensor]) -> Optional[str]:
    """Name of the first term (in insertion order) holding a NaN or inf, or None.

    Called only once the total loss is known to be non-finite, so its host syncs
    cost nothing in a healthy run."""
    for name, value in terms.items():
        if not bool(torch.isfinite(value).all()):
            return name
    return None


@torch.no_grad()
def gradient_norm(parameters) -> Tensor:
    """The global L2 norm of the gradients (a 0-d tensor on their device; 0 if none)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class TrainingGuardPlugin(SupervisedPlugin, supports_distributed=True):
    """Fail-fast finite-loss check, optional gradient-norm clipping, and a divergence monitor.

    * ``before_backward``: a non-finite ``strategy.loss`` raises
      :class:`NonFiniteLossError`, naming the offending term when the strategy
      keeps its terms in ``loss_terms`` (SARL-GELU does), else ``"loss"``.
    * ``before_update``: the global gradient norm is measured (and clipped to
      ``clip_grad_norm`` when set, :func:`torch.nn.utils.clip_grad_norm_`); the
      epoch's largest norm, largest absolute logit and number of clipped steps
      are kept on the device.
    * ``after_training_epoch``: those three are published to the strategy's
      evaluator (``Guard/max_grad_norm``, ``Guard/max_logit``,
      ``Guard/clipped_steps``), hence to TensorBoard. ``clipped_per_experience``
      lists the clipped steps of each finished experience.

    Clipping is off by default here; SARL-GELU sets its own default. Use one
    guard per strategy, after plugins that change the loss or the gradients.
    """

    def __init__(self, clip_grad_norm: Optional[float] = None, check_finite: bool = True):
        super().__init__()
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")
        self.clip_grad_norm = clip_grad_norm
        self.check_finite = check_finite
        self.clipped_per_experience = []
        self._epoch: Optional[Tensor] = None  # [max grad norm, max |logit|, clipped steps]
        self._experience_clipped: Optional[Tensor] = None
        self._iteration = 0

    def before_training_exp(self, strategy, **kwargs):
        self._experience_clipped = torch.zeros((), device=strategy.device)
        self._iteration = 0

    def before_training_epoch(self, strategy, **kwargs):
        self._epoch = torch.zeros(3, device=strategy.device)

    def before_backward(self, strategy, **kwargs):
        self._iteration += 1
        if self.check_finite and not bool(torch.isfinite(strategy.loss).all()):
            terms = getattr(strategy, "loss_terms", None) or {}
            name = first_non_finite(terms) or "loss"
            value = terms[name] if name in terms else strategy.loss
            raise NonFiniteLossError(name, strategy.clock.train_exp_counter, self._iteration,
                                     float(value.detach().float().reshape(-1)[0]))

    @torch.no_grad()
    def before_update(self, strategy, **kwargs):
        params = [p for p in strategy.model.parameters() if p.grad is not None]
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        else:
            norm = gradient_norm(params)
        if self._epoch is None:  # a strategy that updates outside an epoch (defensive)
            self._epoch = torch.zeros(3, device=strategy.device)
        logit = strategy.mb_output.detach().abs().amax().float() if strategy.mb_output is not None \
            else torch.zeros((), device=strategy.device)
        clipped = (norm > self.clip_grad_norm).float() if self.clip_grad_norm is not None \
            else torch.zeros((), device=strategy.device)
        self._epoch = torch.stack([torch.maximum(self._epoch[0], norm.float().to(self._epoch.device)),
                                   torch.maximum(self._epoch[1], logit.to(self._epoch.device)),
                                   self._epoch[2] + clipped.to(self._epoch.device)])
        if self._experience_clipped is not None:
            self._experience_clipped = self._experience_clipped + clipped.to(self._experience_clipped.device)

    def after_training_epoch(self, strategy, **kwargs):
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None or self._epoch is None:
            return
        step = strategy.clock.train_iterations
        max_norm, max_logit, clipped = self._epoch.tolist()  # one transfer per epoch
        for name, value in (("max_grad_norm", max_norm), ("max_logit", max_logit), ("clipped_steps", clipped)):
            evaluator.publish_metric_value(MetricValue(self, f"Guard/{name}", value, step))

    def after_training_exp(self, strategy, **kwargs):
        if self._experience_clipped is not None:
            self.clipped_per_experience.append(int(self._experience_clipped))


@contextlib.contextmanager
def explain_non_finite(strategy, step: str, who: str = "BalancedReplayPlugin"):
    """Re-raise a buffer's refusal of non-finite values with where they came from: the model's
    weights turned non-finite (another plugin's penalty or the optimiser step), or its outputs."""
    try:
        yield
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        bad = [name for name, p in strategy.model.named_parameters() if not bool(torch.isfinite(p).all())]
        exp = getattr(strategy.experience, "current_experience", "?")
        cause = (f"the model's weights are non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): an "
                 f"update produced them, from the loss of the strategy or of a plugin "
                 f"({', '.join(type(p).__name__ for p in strategy.plugins)}); TrainingGuardPlugin stops at the "
                 f"first non-finite loss" if bad else "the model's outputs are non-finite for finite weights")
        raise ValueError(f"{who}, experience {exp}, {step}: {err}; {cause}") from err


def ramp_factor(iterations_past_warmup: int, ramp_iterations: int) -> float:
    """Weight of the post-warm-up terms at the ``iterations_past_warmup``-th iteration
    (0-based) after the warm-up: a linear ramp ``(k + 1) / ramp_iterations`` up to 1;
    1 at once when ``ramp_iterations`` is 0 (SARL's switch)."""
    if ramp_iterations <= 0:
        return 1.0
    return min(1.0, (iterations_past_warmup + 1) / ramp_iterations)


def teacher_collapsed(candidate_accuracy: float, previous_accuracy: Optional[float], majority_share: float,
                      ratio: float = 0.5) -> bool:
    """The teacher-sanity criterion of :class:`SARLGelu`.

    A candidate teacher (the model at the end of an experience) has collapsed
    when its accuracy on the buffer is no better than always predicting the
    buffer's most frequent class (``majority_share``, the share of that class
    among the stored samples), or below ``ratio`` times the accuracy the
    teacher in place has on the same samples. The buffer holds samples the
    model was just trained to fit (the current experience's among them), so a
    healthy model is far above both bounds; a diverged one predicts a few
    classes and falls to about the first.
    """
    if candidate_accuracy <= majority_share:
        return True
    return previous_accuracy is not None and candidate_accuracy < ratio * previous_accuracy
