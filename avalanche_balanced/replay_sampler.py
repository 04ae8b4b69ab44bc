"""``ReplaySampler``: how a buffer's stored samples are drawn for replay.

It owns the options of the replay distribution, the importance computed from them
(:mod:`~avalanche_balanced.importance`), the distribution cached until one of its inputs
changes, the draws (:mod:`~avalanche_balanced.draws`) and the position in a pass of uniform
draws. It holds no sample: the buffer hands it the stored similarities, groups, labels and
losses, and the generator of its storage.
"""
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .draws import draw_proportional, next_in_pass, uniform_indices
from .importance import group_share_weights, past_importance, replay_distribution, task_balanced_weights

__all__ = ["ReplaySampler", "ReplayBatch", "SHARES", "REPLAY_ORDERS"]

SHARES = ("sample", "group")
REPLAY_ORDERS = ("independent", "passes")  # of uniform draws


class ReplayBatch(NamedTuple):
    """A replay minibatch: inputs (after ``transform``), labels, stored logits (None from a plugin
    that stores none, see its ``store_logits``), the slots they came from, and task labels."""

    inputs: Tensor
    labels: Tensor
    logits: Tensor
    indices: Tensor
    task_labels: Tensor


def _number(value, name: str) -> float:
    """``value`` as a finite float, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class ReplaySampler:
    """The replay distribution and the draws from it.

    The current experience's samples keep their uniform share when ``protect_current``; the past
    samples share the rest. ``share="sample"``: in proportion to the importance
    ``(1 / (sim + eps)) * balance_factor ** balance_weight`` (``"auto"``: the largest weight whose
    Kish effective sample size reaches ``target_ess``), optionally two-level (``hierarchical``) or
    times the latest replay loss (``difficulty_weight``), each probability capped at ``max_ratio``
    times uniform. ``share="group"``: every group the same share, split inside by similarity.
    ``uniform_mix`` mixes the uniform distribution into proportional draws. Uniform draws are
    independent batches, or reshuffled passes over the buffer (``replay_order="passes"``).
    """

    def __init__(self, storage, *, balance_weight: Union[float, str] = 1.0, eps: float = 0.1, uniform_mix: float = 0.0,
                 max_ratio: Optional[float] = 4.0, protect_current: bool = True, hierarchical: bool = False,
                 difficulty_weight: float = 0.0, target_ess: float = 0.7, share: str = "sample",
                 replay_order: str = "independent"):
        if share not in SHARES:
            raise ValueError(f"unknown share {share!r}; choose one of {SHARES}")
        if replay_order not in REPLAY_ORDERS:
            raise ValueError(f"unknown replay_order {replay_order!r}; choose one of {REPLAY_ORDERS}")
        if balance_weight != "auto" and (isinstance(balance_weight, str) or _number(balance_weight, "balance_weight") < 0):
            raise ValueError(f"balance_weight must be >= 0 or 'auto', got {balance_weight!r}")
        if share == "group" and (balance_weight != 1.0 or hierarchical or difficulty_weight > 0):
            raise ValueError("share='group' balances groups exactly: it takes no balance_weight (other than 1), "
                             "hierarchical or difficulty_weight")
        if _number(eps, "eps") <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if max_ratio is not None and _number(max_ratio, "max_ratio") < 1:
            raise ValueError(f"max_ratio must be >= 1 (a cap below the mean is infeasible), got {max_ratio}")
        if _number(difficulty_weight, "difficulty_weight") < 0:
            raise ValueError(f"difficulty_weight must be >= 0, got {difficulty_weight}")
        if not 0 < _number(target_ess, "target_ess") <= 1:
            raise ValueError(f"target_ess must lie in (0, 1], got {target_ess}")
        if not 0 <= _number(uniform_mix, "uniform_mix") <= 1:
            raise ValueError(f"uniform_mix must lie in [0, 1], got {uniform_mix}")
        self.balance_weight = balance_weight if balance_weight == "auto" else float(balance_weight)
        self.eps, self.uniform_mix, self.max_ratio = float(eps), float(uniform_mix), max_ratio
        self.protect_current, self.hierarchical = protect_current, hierarchical
        self.difficulty_weight, self.target_ess = float(difficulty_weight), float(target_ess)
        self.share, self.replay_order = share, replay_order
        self.storage = storage  # read only: the stored labels, for the current experience's mask
        self._distribution: Optional[Tensor] = None  # cached until its key changes
        self._distribution_key: Optional[tuple] = None
        self._pass: tuple = (None, 0, None)  # passes: (order, position, contents it is for)
        self.current_class_ids: Optional[Tensor] = None  # classes of the experience being trained
        self.current_version = 0  # bumped at every change of the current classes

    def config(self) -> dict:
        """Every option that changes the distribution or the draws (checked when a state loads)."""
        return dict(eps=self.eps, max_ratio=self.max_ratio, protect_current=self.protect_current,
                    uniform_mix=self.uniform_mix, balance_weight=self.balance_weight, hierarchical=self.hierarchical,
                    difficulty_weight=self.difficulty_weight, target_ess=self.target_ess, share=self.share,
                    replay_order=self.replay_order)

    @property
    def reads_losses(self) -> bool:
        return self.difficulty_weight > 0

    def set_current_classes(self, classes) -> None:
        """Classes of the experience being trained (None: none); their stored samples keep a uniform
        share of balanced replay under ``protect_current``."""
        self.current_class_ids = (None if classes is None else torch.as_tensor(
            list(classes), dtype=torch.long, device=self.storage.device))
        self.current_version += 1

    def current_mask(self) -> Tensor:
        """Boolean mask of the stored samples whose class belongs to the current experience."""
        s, ids = self.storage, self.current_class_ids
        if not s.allocated:
            return torch.zeros(0, dtype=torch.bool, device=s.device)
        labels = s.labels[: s.size]
        if ids is None or ids.numel() == 0:
            return torch.zeros_like(labels, dtype=torch.bool)
        is_current = torch.zeros(s.num_classes + 1, dtype=torch.bool, device=s.device)
        is_current[ids.clamp(0, s.num_classes)] = True
        is_current[s.num_classes] = False  # ids beyond the classifier match no stored label
        return is_current[labels]

    def importance(self, similarity: Tensor, group_ids: Tensor, labels: Tensor, losses: Tensor,
                   current: Optional[Tensor], num_groups: int) -> Tensor:
        """Importance of every stored sample, computed over the past samples (all of them when
        ``current``, the mask of the current experience's samples, is None or not protected); the
        current samples get 0 here and their uniform share in :meth:`probabilities`."""
        if similarity.shape[0] == 0:
            return torch.zeros(0, device=similarity.device)
        past = ~current if self.protect_current and current is not None else None
        if self.share == "group":
            return group_share_weights(similarity, group_ids, torch.ones_like(labels, dtype=torch.bool)
                                       if past is None else past, num_groups=num_groups, eps=self.eps,
                                       max_ratio=self.max_ratio)
        return past_importance(similarity, group_ids, labels, losses, past, num_groups=num_groups, eps=self.eps,
                               balance_weight=self.balance_weight, hierarchical=self.hierarchical,
                               difficulty_weight=self.difficulty_weight, target_ess=self.target_ess)

    def probabilities(self, key: tuple, inputs: Callable[[], Tuple]) -> Tensor:
        """The replay distribution (sums to 1), recomputed only when ``key`` (host-side version
        counters of everything it depends on) changed; ``inputs()`` gives
        ``(similarity, group_ids, labels, losses, current mask or None, num_groups)``."""
        if self._distribution is None or self._distribution_key != key:
            similarity, group_ids, labels, losses, current, num_groups = inputs()
            protected = current if self.protect_current else None
            self._distribution = replay_distribution(  # share="group" caps within each group already
                self.importance(similarity, group_ids, labels, losses, current, num_groups), protected,
                max_ratio=None if self.share == "group" else self.max_ratio)
            self._distribution_key = key
        return self._distribution

    def uniform(self, n: int, k: int, contents: tuple, generator: torch.Generator, device) -> Tensor:
        """``min(k, n)`` distinct indices: an independent batch, or the next ones of the pass over
        these ``contents`` (a pass restarts whenever the contents change)."""
        if self.replay_order == "independent":
            return uniform_indices(n, k, generator=generator, device=device)
        order, position, for_contents = self._pass
        idx, order, position = next_in_pass(order if for_contents == contents else None, position, n, k,
                                            generator=generator, device=device)
        self._pass = (order, position, contents)
        return idx

    def proportional(self, probabilities: Tensor, k: int, generator: torch.Generator) -> Tensor:
        return draw_proportional(probabilities, k, generator=generator, uniform_mix=self.uniform_mix)

    @staticmethod
    def task_balanced(base: Tensor, task_labels: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Draws in which every task label has the same expected share; ``base`` within a task."""
        return draw_proportional(task_balanced_weights(base, task_labels), k, generator=generator)

    def invalidate(self) -> None:
        self._distribution = None

    def to(self, device) -> None:
        """To ``device``, where the buffer's storage has a new generator: the next uniform draw
        starts a new pass."""
        if self.current_class_ids is not None:
            self.current_class_ids = self.current_class_ids.to(device)
        self._pass, self._distribution = (None, 0, None), None

    def state_dict(self) -> dict:
        return dict(replay_pass=self._pass, current_classes=self.current_class_ids)

    def load_state_dict(self, state: dict) -> None:
        device = self.storage.device
        order, position, contents = state.get("replay_pass", (None, 0, None))
        self._pass = (None if order is None else order.to(device), position, contents)
        current = state.get("current_classes")
        self.current_class_ids = None if current is None else current.to(device)
        self._distribution = None
