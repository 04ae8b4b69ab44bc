"""Semantic components: class prototypes, a learned pair similarity, an adaptive
threshold, and the grouping rules that turn them into semantic groups.

All three components are ``nn.Module``s so that ``.to(device)``,
``state_dict()`` and ``load_state_dict()`` come from PyTorch.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .importance import cosine_to_unit
from .validation import as_labels, check_finite, check_labels_in_range, check_rows

__all__ = [
    "ClassPrototypes",
    "SemanticSimilarity",
    "AdaptiveThreshold",
    "average_linkage",
    "class_groups_from_similarity",
]

def _check_features(features: Tensor, labels: Tensor, num_feats: int, num_classes: int) -> None:
    check_rows(features, "features", width=num_feats)
    as_labels(labels, "labels", n=features.shape[0])
    check_labels_in_range(labels, num_classes)
    check_finite(features, "features")


class ClassPrototypes(nn.Module):
    """One prototype per class: the mean of the class's L2-normalised features.

    ``prototypes[c]`` is meaningful only where ``valid[c]`` is true. SARL sets
    prototypes once per task from a full pass over the task's data
    (:meth:`set_from_features`); the replay plugin refreshes them from buffer
    features (:meth:`update_from_features`).
    """

    def __init__(self, num_classes: int, num_feats: int):
        super().__init__()
        if num_classes < 1 or num_feats < 1:
            raise ValueError(f"num_classes and num_feats must be >= 1, got {num_classes}, {num_feats}")
        self.num_classes = num_classes
        self.num_feats = num_feats
        self.register_buffer("prototypes", torch.zeros(num_classes, num_feats))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.version = 0  # bumped on every change, so caches of similarities know when to refresh

    @torch.no_grad()
    def grow(self, num_classes: int) -> None:
        """Widen to ``num_classes`` (a growing classifier head): new classes have no prototype yet."""
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        self.prototypes = torch.cat([self.prototypes, self.prototypes.new_zeros(extra, self.num_feats)])
        self.valid = torch.cat([self.valid, self.valid.new_zeros(extra)])
        self.num_classes = num_classes
        self.version += 1

    @staticmethod
    def class_means(features: Tensor, labels: Tensor, num_classes: int):
        """Per-class mean of L2-normalised features and per-class counts (vectorised)."""
        normed = F.normalize(features.float(), dim=1)
        sums = normed.new_zeros(num_classes, normed.shape[1]).index_add_(0, labels, normed)
        counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device).index_add_(
            0, labels, torch.ones_like(labels))  # fixed width, no host sync (bincount has one)
        means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        return means, counts

    @torch.no_grad()
    def set_from_features(self, features: Tensor, labels: Tensor) -> Tensor:
        """Set the prototypes of the classes present in ``labels``; others are kept.

        Returns the boolean mask of the classes that were set.
        """
        _check_features(features, labels, self.num_feats, self.num_classes)
        means, counts = self.class_means(features, labels, self.num_classes)
        present = counts > 0
        self.prototypes[present] = means[present].to(self.prototypes.dtype)
        self.valid |= present
        self.version += 1
        return present

    @torch.no_grad()
    def update_from_features(self, features: Tensor, labels: Tensor, momentum: float = 0.0) -> Tensor:
        """Blend new class means into the prototypes of the classes present.

        ``new = momentum * old + (1 - momentum) * mean`` for classes that already
        have a prototype; classes seen for the first time take the mean.
        """
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        _check_features(features, labels, self.num_feats, self.num_classes)
        means, counts = self.class_means(features, labels, self.num_classes)
        present = counts > 0
        keep = (present & self.valid).unsqueeze(1) * momentum
        blended = keep * self.prototypes + (1 - keep) * means.to(self.prototypes.dtype)
        self.prototypes.copy_(torch.where(present.unsqueeze(1), blended, self.prototypes))
        self.valid |= present
        self.version += 1
        return present

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.version += 1

    def unit(self) -> Tensor:
        """The prototypes scaled to unit length (a mean of unit vectors is shorter than 1)."""
        return F.normalize(self.prototypes.float(), dim=1)

    def center(self) -> Tensor:
        """Mean of the valid unit-length prototypes (zeros while fewer than two exist).

        Penultimate features after GELU and average pooling are mostly
        positive, so raw cosines between any two classes sit high (about 0.66
        for a reduced ResNet-18 on CIFAR-100) and differ little; measured from
        the classes' common mean, the geometry that tells classes apart shows.
        """
        valid = self.valid
        count = valid.sum()
        mean = (self.unit() * valid.unsqueeze(1)).sum(0) / count.clamp_min(1)
        return torch.where(count >= 2, mean, torch.zeros_like(mean))

    def cosine_to_own(self, features: Tensor, labels: Tensor, centered: bool = True) -> Tensor:
        """Cosine similarity of each feature row to the prototype of its label.

        Features and prototypes are scaled to unit length; with ``centered``
        both are then measured from :meth:`center`, so a feature pointing the
        way of its prototype still scores 1. Rows whose class has no prototype
        yet get similarity 1 (no evidence that the sample is atypical, so the
        similarity term stays neutral).
        """
        feats, protos = F.normalize(features.float(), dim=1), self.unit()[labels]
        if centered:
            c = self.center()
            feats, protos = feats - c, protos - c
        cos = F.cosine_similarity(feats, protos, dim=1, eps=1e-8)
        return torch.where(self.valid[labels], cos, torch.ones_like(cos))

    def cosine_matrix(self, centered: bool = False) -> Tensor:
        """Cosine similarity between all pairs of prototypes (C x C), optionally from :meth:`center`."""
        protos = self.unit() - self.center() if centered else self.prototypes
        normed = F.normalize(protos, dim=1)
        return normed @ normed.T


class SemanticSimilarity(nn.Module):
    """Learned similarity of two feature vectors, in (0, 1).

    An MLP on the concatenation ``[a, b]`` of L2-normalised features
    (``2*num_feats -> 128 -> 64 -> 1``, sigmoid), trained by :meth:`train_step`
    on all pairs of a batch with its own Adam optimiser at ``sim_lr``. Scores
    are symmetrised (``(s(a, b) + s(b, a)) / 2``) since concatenation is ordered.

    Training targets (``target``):

    * ``"graded"`` (default): the similarity of the two samples' *classes*,
      ``(cos + 1) / 2`` of the centred cosine between their class means
      (prototypes where they exist, batch means otherwise; 1 for the same
      class). The network is asked how similar two different classes are
      (grouping, SARL's semantic term), so that is what it learns.
    * ``"binary"``: same class -> 1, different class -> 0 (SARL's rule, an
      ablation), with positives re-weighted to balance the rare same-class
      pairs. It pushes every answer about two different classes toward 0.

    ``version`` grows with every update, so caches of its scores know when to refresh.
    """

    TARGETS = ("graded", "binary")

    def __init__(self, num_feats: int, hidden: Sequence[int] = (128, 64), sim_lr: float = 1e-3,
                 target: str = "graded"):
        super().__init__()
        if num_feats < 1:
            raise ValueError(f"num_feats must be >= 1, got {num_feats}")
        if sim_lr <= 0:
            raise ValueError(f"sim_lr must be positive, got {sim_lr}")
        if target not in self.TARGETS:
            raise ValueError(f"unknown similarity target {target!r}; choose one of {self.TARGETS}")
        self.num_feats = num_feats
        self.target = target
        self.version = 0
        layers, width = [], 2 * num_feats
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.sim_lr = sim_lr
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=sim_lr)

    def _logits(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
        forward = self.mlp(torch.cat([a, b], dim=-1))
        backward = self.mlp(torch.cat([b, a], dim=-1))
        return 0.5 * (forward + backward).squeeze(-1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Similarity of rows of ``a`` and ``b`` (same leading shape), in (0, 1)."""
        if a.shape[-1] != self.num_feats or b.shape[-1] != self.num_feats:
            raise ValueError(
                f"features must have {self.num_feats} dims, got {a.shape[-1]} and {b.shape[-1]}"
            )
        return torch.sigmoid(self._logits(a, b))

    def _all_pair_logits(self, x: Tensor) -> Tensor:
        """Symmetrised logits of all pairs of rows of ``x`` (N x N), equal to ``_logits`` on them.

        The first layer is linear in the concatenation, ``W [a, b] = W_a a + W_b b``, so it
        runs on N rows and is broadcast over the N x N pairs instead of on N^2 rows of
        width 2D; and the score of (b, a) is the transpose, so each ordered pair is
        scored once. Together that is about 10x fewer operations for a batch of 64.
        """
        x = F.normalize(x.float(), dim=-1)
        first, rest = self.mlp[0], self.mlp[1:]
        w_a, w_b = first.weight.split(self.num_feats, dim=1)
        hidden = (x @ w_a.T + first.bias).unsqueeze(1) + (x @ w_b.T).unsqueeze(0)
        ordered = rest(hidden).squeeze(-1)  # [i, j] = f(x_i, x_j)
        return 0.5 * (ordered + ordered.T)

    def pairwise(self, x: Tensor) -> Tensor:
        """Similarity between all pairs of rows of ``x`` (N x N), e.g. class prototypes."""
        if x.ndim != 2 or x.shape[-1] != self.num_feats:
            raise ValueError(f"pairwise expects N x {self.num_feats} features, got shape {tuple(x.shape)}")
        return torch.sigmoid(self._all_pair_logits(x))

    def pair_targets(self, features: Tensor, labels: Tensor,
                     prototypes: Optional["ClassPrototypes"] = None) -> Tensor:
        """Target similarity of every pair of rows (N x N) under the ``target`` rule."""
        same = (labels.unsqueeze(0) == labels.unsqueeze(1)).float()
        if self.target == "binary":
            return same
        num_classes = int(labels.max()) + 1 if prototypes is None else prototypes.num_classes
        means, _ = ClassPrototypes.class_means(features.detach(), labels, num_classes)
        means = F.normalize(means, dim=1)
        center = means[labels].mean(0)
        if prototypes is not None:
            means = torch.where(prototypes.valid.unsqueeze(1), prototypes.unit(), means)
            center = torch.where(prototypes.valid.sum() >= 2, prototypes.center(), center)
        rows = F.normalize(means[labels] - center, dim=1)
        graded = cosine_to_unit(rows @ rows.T)
        return torch.where(same > 0, same, graded)

    def pair_loss(self, features: Tensor, labels: Tensor,
                  prototypes: Optional["ClassPrototypes"] = None) -> Tensor:
        """BCE over all ordered pairs of distinct rows of a batch, against :meth:`pair_targets`.

        Same-class pairs are rare (about 1 in #classes): under the binary rule
        they are weighted up to half the loss.
        """
        n = features.shape[0]
        logits = self._all_pair_logits(features.detach())
        target = self.pair_targets(features, labels, prototypes)
        # Off-diagonal pairs by weight, not by boolean indexing (no host sync): a mean over n(n-1).
        off_diag = 1.0 - torch.eye(n, device=features.device)
        pos_weight = None
        if self.target == "binary":
            n_pos = (target * off_diag).sum()
            pos_weight = ((n * (n - 1) - n_pos) / n_pos.clamp_min(1)).clamp_min(1.0)
        losses = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return (losses * off_diag).sum() / (n * (n - 1))

    def train_step(self, features: Tensor, labels: Tensor,
                   prototypes: Optional["ClassPrototypes"] = None) -> Tensor:
        """One Adam step on the pairs of a batch; returns the (detached) loss.

        The features are detached: this network learns *about* the backbone's
        features without sending gradients into the backbone. ``prototypes``
        supply the class geometry of the graded targets.
        """
        if features.shape[0] < 2:
            return features.new_zeros(())
        features = features.float()  # mixed-precision features meet float32 weights
        with torch.enable_grad():
            loss = self.pair_loss(features, labels, prototypes)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.version += 1
        return loss.detach()

    def state_dict(self, *args, **kwargs):
        # The optimiser's state travels with the network, so a resumed run continues identically.
        state = super().state_dict(*args, **kwargs)
        state["_optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict, strict: bool = True):
        state = dict(state_dict)
        opt_state = state.pop("_optimizer", None)
        result = super().load_state_dict(state, strict=strict)
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        self.version += 1
        return result


class AdaptiveThreshold(nn.Module):
    """A similarity threshold that follows the observed score distribution.

    ``value`` starts at ``init`` (SARL's ``sim_thresh``). The first call to
    :meth:`update` sets it to the ``quantile`` of the scores it is shown (by
    default the pairwise similarities between class prototypes): ``init`` is a
    guess made before any score was seen and need not lie on their scale. Later
    calls move it by an exponential moving average (``momentum``) toward the
    quantile, so it follows slowly drifting features without jumping.
    ``first_update="average"`` averages from ``init`` at the first update too
    (the earlier behaviour, an ablation). With ``quantile=0.96`` about 4% of class pairs
    end above the threshold, as many as CIFAR-100's same-superclass pairs
    (4 of 99 other classes).
    """

    FIRST_UPDATES = ("target", "average")

    def __init__(self, init: float = 0.8, quantile: float = 0.96, momentum: float = 0.5,
                 first_update: str = "target"):
        super().__init__()
        if first_update not in self.FIRST_UPDATES:
            raise ValueError(f"first_update must be one of {self.FIRST_UPDATES}, got {first_update!r}")
        self.first_update = first_update
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"init must lie in [0, 1], got {init}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.quantile = quantile
        self.momentum = momentum
        self.register_buffer("value", torch.tensor(float(init)))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, scores: Tensor) -> Tensor:
        """Move the threshold toward the quantile of ``scores``; returns the new value."""
        scores = scores.detach().flatten().float()
        scores = scores[torch.isfinite(scores)]
        if scores.numel() == 0:  # nothing observed: keep the current value
            return self.value
        target = torch.quantile(scores, self.quantile)
        keep = self.momentum if int(self.updates) > 0 or self.first_update == "average" else 0.0
        self.value.mul_(keep).add_((1 - keep) * target)
        self.updates += 1
        return self.value

    def forward(self, scores: Tensor) -> Tensor:
        """Membership: ``scores > threshold`` (bool, same shape)."""
        return scores > self.value


def average_linkage(scores: Tensor, active: Tensor, threshold: Tensor, min_size: int = 1) -> Tensor:
    """Cluster of every node by average-linkage agglomeration, stopping at ``threshold``.

    Repeatedly merges the two clusters whose *mean* pairwise score is highest,
    while it exceeds ``threshold``. Unlike connected components of
    ``scores > threshold``, a chain of pairwise links does not merge two
    dissimilar classes: a threshold at a high quantile of random-looking scores
    gives many small groups instead of one giant component. Then, while an
    active cluster has fewer than ``min_size`` nodes (and more than one cluster
    is left), the smallest such cluster joins the cluster it is most similar to
    on average: a lone class must not become a group of its own that balanced
    replay would then draw as often as a group of many classes. Inactive nodes
    stay singletons. Returns, per node, the smallest node index of its cluster.

    At most ``n - 1`` merges of ``O(n)`` vector work each (Lance-Williams
    update), for graphs of classes.
    """
    n = scores.shape[0]
    sim = scores.detach().double().clone()
    sim[~active] = float("-inf")
    sim[:, ~active] = float("-inf")
    sim.fill_diagonal_(float("-inf"))
    size = torch.where(active, 1.0, 0.0).to(sim)
    labels = torch.arange(n, device=sim.device)

    def merge(i: int, j: int) -> None:
        keep, gone = min(i, j), max(i, j)  # the kept index stays the smallest of its cluster
        merged = (size[keep] * sim[keep] + size[gone] * sim[gone]) / (size[keep] + size[gone])
        sim[keep], sim[:, keep] = merged, merged
        sim[gone], sim[:, gone] = float("-inf"), float("-inf")
        sim[keep, keep] = float("-inf")
        size[keep] += size[gone]
        size[gone] = 0
        labels[labels == gone] = keep

    for _ in range(max(int(active.sum()) - 1, 0)):
        best = torch.argmax(sim)
        if not bool(sim.view(-1)[best] > threshold):
            break
        merge(*divmod(int(best), n))
    while True:
        alive = size > 0
        small = alive & (size < min_size)
        if int(alive.sum()) < 2 or not bool(small.any()):
            break
        i = int(torch.argmin(torch.where(small, size, torch.full_like(size, float("inf")))))
        merge(i, int(torch.argmax(sim[i])))
    return labels


def class_groups_from_similarity(scores: Tensor, seen: Tensor, threshold: Tensor, min_size: int = 1) -> Tensor:
    """Group of every class: average-linkage clusters of the seen classes at ``threshold``,
    none smaller than ``min_size`` classes (see :func:`average_linkage`).

    Unseen classes form singleton groups (their own index), so a class that
    appears later starts alone until its prototype exists. The agglomeration
    reads a value on the host at every merge, so it runs on a CPU copy: one
    transfer per regrouping on an accelerator.
    """
    device = scores.device
    return average_linkage(scores.cpu(), seen.cpu(), threshold.cpu(), min_size=min_size).to(device)
