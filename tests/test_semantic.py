"""Semantic components: prototypes, the learned similarity, the adaptive threshold, grouping."""
import pytest
import torch
import torch.nn.functional as F

from avalanche_balanced import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from avalanche_balanced.semantic import average_linkage


def test_prototypes_equal_mean_of_normalised_features():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    protos = ClassPrototypes(4, 5)
    present = protos.set_from_features(feats, labels)
    for c in range(3):
        expected = F.normalize(feats[labels == c], dim=1).mean(0)
        torch.testing.assert_close(protos.prototypes[c], expected)
    assert present.tolist() == [True, True, True, False] and protos.valid.tolist() == present.tolist()


def test_prototype_update_blends_with_momentum():
    protos = ClassPrototypes(2, 2)
    protos.set_from_features(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    protos.update_from_features(torch.tensor([[0.0, 2.0], [3.0, 0.0]]), torch.tensor([0, 1]), momentum=0.5)
    torch.testing.assert_close(protos.prototypes, torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    cos = protos.cosine_to_own(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]), centered=False)
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0]))
    # centred: measured from the mean of the unit prototypes, a feature along its prototype still scores 1
    cos = protos.cosine_to_own(torch.tensor([[2.0, 2.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    c = (torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]) + torch.tensor([1.0, 0.0])) / 2
    expected = F.cosine_similarity((torch.tensor([0.0, 1.0]) - c).unsqueeze(0), (torch.tensor([1.0, 0.0]) - c)
                                   .unsqueeze(0))
    torch.testing.assert_close(cos, torch.cat([torch.ones(1), expected]))


def test_prototype_errors():
    protos = ClassPrototypes(3, 4)
    with pytest.raises(ValueError, match="shape"):
        protos.set_from_features(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        protos.set_from_features(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        protos.set_from_features(torch.full((2, 4), float("inf")), torch.tensor([0, 1]))


def test_missing_prototype_gives_neutral_similarity():
    protos = ClassPrototypes(3, 2)
    protos.set_from_features(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    cos = protos.cosine_to_own(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 2]))
    torch.testing.assert_close(cos, torch.tensor([0.0, 1.0]))


def _separable(n_classes=4, per_class=16, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_semantic_similarity_learns_to_separate_pairs():
    torch.manual_seed(0)
    feats, labels = _separable()
    net = SemanticSimilarity(16, sim_lr=1e-2, target="binary")
    first = net.train_step(feats, labels).item()
    for _ in range(80):
        last = net.train_step(feats, labels).item()
    assert last < 0.3 * first
    with torch.no_grad():
        scores = net.pairwise(feats)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    off = ~torch.eye(len(labels), dtype=torch.bool)
    assert scores[same & off].mean() > 0.8 and scores[~same].mean() < 0.2
    assert scores[same & off].min() > scores[~same].max() - 0.5
    torch.testing.assert_close(scores, scores.T)  # symmetrised


def test_semantic_similarity_all_pairs_equal_the_mlp_on_concatenated_pairs():
    torch.manual_seed(1)
    net = SemanticSimilarity(5, target="binary")
    x, labels = torch.randn(7, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3])
    a, b = x.unsqueeze(1).expand(7, 7, 5), x.unsqueeze(0).expand(7, 7, 5)
    torch.testing.assert_close(net.pairwise(x), net(a, b))
    # the loss (and so every gradient) is that of the plain formula: MLP on [a, b] and [b, a]
    plain = SemanticSimilarity(5, target="binary")
    plain.load_state_dict(net.state_dict())
    logits = plain._logits(a, b)[~torch.eye(7, dtype=torch.bool)]
    target = (labels.unsqueeze(0) == labels.unsqueeze(1))[~torch.eye(7, dtype=torch.bool)].float()
    pos_weight = (target.numel() - target.sum()) / target.sum()
    F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight).backward()
    net.pair_loss(x, labels).backward()
    for fast, ref in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(fast.grad, ref.grad)
    with pytest.raises(ValueError, match="N x 5"):
        net.pairwise(torch.randn(3, 4))


def test_semantic_similarity_does_not_touch_feature_gradients():
    feats = torch.randn(8, 4, requires_grad=True)
    SemanticSimilarity(4).train_step(feats, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert feats.grad is None


def test_semantic_similarity_state_includes_optimizer():
    feats, labels = _separable(dim=6)
    net = SemanticSimilarity(6)
    net.train_step(feats, labels)
    clone = SemanticSimilarity(6)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(net.train_step(feats, labels), clone.train_step(feats, labels))


def test_adaptive_threshold_follows_score_distribution():
    thr = AdaptiveThreshold(init=0.8, quantile=0.5, momentum=0.5)
    assert thr.value.item() == pytest.approx(0.8)
    thr.update(torch.full((100,), 0.2))
    assert thr.value.item() == pytest.approx(0.2)  # the first update lands at its target
    thr.update(torch.full((100,), 0.6))
    assert thr.value.item() == pytest.approx(0.4)  # later ones move halfway (momentum 0.5)
    for _ in range(20):
        thr.update(torch.linspace(0.0, 0.4, 101))
    assert thr.value.item() == pytest.approx(0.2, abs=1e-4)
    for _ in range(20):
        thr.update(torch.linspace(0.6, 1.0, 101))
    assert thr.value.item() == pytest.approx(0.8, abs=1e-4)
    assert thr(torch.tensor([0.79, 0.81])).tolist() == [False, True]
    before = thr.value.clone()
    thr.update(torch.tensor([float("nan")]))
    assert torch.equal(thr.value, before)


def test_average_linkage_does_not_chain():
    # A chain 0-1-2-3 of strong neighbours with weak ends: components would merge all four.
    scores = torch.full((6, 6), 0.1)
    for i, j, v in ((0, 1, 0.9), (1, 2, 0.85), (2, 3, 0.9), (4, 5, 0.95)):
        scores[i, j] = scores[j, i] = v
    labels = average_linkage(scores, torch.ones(6, dtype=torch.bool), torch.tensor(0.5))
    assert labels.tolist() == [0, 0, 2, 2, 4, 4]
    # a lower threshold merges the two pairs of the chain: their mean score is 0.2875 > 0.25
    labels = average_linkage(scores, torch.ones(6, dtype=torch.bool), torch.tensor(0.25))
    assert labels.tolist() == [0, 0, 0, 0, 4, 4]
    # inactive nodes stay alone
    active = torch.tensor([True, True, True, True, False, False])
    assert average_linkage(scores, active, torch.tensor(0.5)).tolist() == [0, 0, 2, 2, 4, 5]


def test_class_groups_stay_small_on_unstructured_prototypes():
    """Random prototypes have no semantic structure: no giant group may form."""
    from avalanche_balanced import BalancedBuffer
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(100, 160, generator=g)
    y = torch.arange(100).repeat(5)
    buf = BalancedBuffer(500)
    buf.add_data(torch.zeros(500, 1), y, torch.zeros(500, 100), centres[y] + 0.1 * torch.randn(500, 160, generator=g))
    buf.refresh_prototypes()
    for _ in range(5):
        buf.regroup()
    sizes = torch.bincount(buf.class_group)
    sizes = sizes[sizes > 0]
    # no giant group, and no lone class (min_group_classes=2 merges it into its nearest group)
    assert sizes.max() <= 10 and sizes.min() >= 2 and sizes.numel() >= 25


# ------------------------------------------------------------ issue 11: groups with meaning
def _hierarchy(seed, n_super=20, per_super=5, dim=64, per_class=5, class_spread=1.2, noise=1.5, offset=3.0):
    """Gaussian features: superclass centre + class offset + sample noise, plus a common offset
    (penultimate GELU features share a large positive mean)."""
    g = torch.Generator().manual_seed(seed)
    supers = torch.randn(n_super, dim, generator=g)
    classes = supers.repeat_interleave(per_super, 0) + class_spread * torch.randn(n_super * per_super, dim,
                                                                                 generator=g)
    y = torch.arange(n_super * per_super).repeat(per_class)
    feats = classes[y] + noise * torch.randn(len(y), dim, generator=g) + offset
    return feats, y, torch.arange(n_super).repeat_interleave(per_super)


def _grouping_ari(seed, **buffer_kwargs):
    from avalanche_balanced import BalancedBuffer
    from avalanche_balanced.metrics import group_agreement
    feats, y, f2c = _hierarchy(seed)
    buf = BalancedBuffer(len(y), **buffer_kwargs)
    buf.add_data(torch.zeros(len(y), 1), y, torch.zeros(len(y), 100), feats)
    buf.refresh_prototypes()
    buf.regroup()
    classes, groups = buf.class_groups()
    return float(group_agreement(classes, groups, f2c))


def test_groups_recover_a_synthetic_superclass_hierarchy():
    """20 superclasses of 5 classes: the default grouping finds them (ARI >= 0.8) after one regroup."""
    new = [_grouping_ari(seed) for seed in range(3)]
    assert min(new) >= 0.8, new
    # raw cosines of mostly-positive features blur the structure: centring is what recovers it
    raw = [_grouping_ari(seed, centered=False, min_group_classes=1) for seed in range(3)]
    assert sum(new) / 3 > sum(raw) / 3 + 0.1, (new, raw)


def test_graded_targets_are_class_geometry():
    protos = ClassPrototypes(4, 3)
    protos.set_from_features(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0]]), torch.tensor([0, 1, 2]))
    net = SemanticSimilarity(3)
    feats, labels = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]]), torch.tensor([0, 0, 1, 3])
    target = net.pair_targets(feats, labels, protos)
    assert target[0, 1].item() == 1.0  # same class
    unit, c = protos.unit(), protos.center()
    expected = (F.cosine_similarity((unit[0] - c).unsqueeze(0), (unit[1] - c).unsqueeze(0)) + 1) / 2
    assert target[0, 2].item() == pytest.approx(expected.item(), abs=1e-6)  # two old classes: prototypes
    assert target[0, 2] > target[0, 3]  # class 3 has no prototype: its batch mean stands in
    torch.testing.assert_close(target, target.T)
    assert torch.equal(SemanticSimilarity(3, target="binary").pair_targets(feats, labels, protos),
                       (labels.unsqueeze(0) == labels.unsqueeze(1)).float())
    with pytest.raises(ValueError, match="target"):
        SemanticSimilarity(3, target="soft")


def test_graded_similarity_answers_how_similar_two_classes_are():
    """Trained on sample pairs, the graded network's score for two *prototypes* tracks their
    centred cosine (what grouping and the semantic term ask); the binary rule's answer for two
    different classes is pushed toward 0 and off that scale."""
    from avalanche_balanced.importance import cosine_to_unit
    feats, y, f2c = _hierarchy(0, n_super=4, per_super=3, dim=16, per_class=20, class_spread=1.2, noise=1.5)
    protos = ClassPrototypes(12, 16)
    protos.set_from_features(feats, y)
    off = ~torch.eye(12, dtype=torch.bool)
    truth = cosine_to_unit(protos.cosine_matrix(centered=True))[off]
    fit = {}
    for target in ("graded", "binary"):
        torch.manual_seed(0)
        net = SemanticSimilarity(16, sim_lr=3e-3, target=target)
        g = torch.Generator().manual_seed(1)
        for _ in range(150):
            idx = torch.randint(len(y), (64,), generator=g)
            net.train_step(feats[idx], y[idx], protos)
        with torch.no_grad():
            scores = net.pairwise(protos.prototypes)[off]
        fit[target] = (torch.corrcoef(torch.stack([scores, truth]))[0, 1].item(),
                       (scores - truth).abs().mean().item())
    assert fit["graded"][0] > 0.9 and fit["graded"][1] < 0.1, fit  # measured: r 0.95, error 0.05
    assert fit["binary"][1] > 0.2 and fit["binary"][0] < fit["graded"][0], fit  # measured: r 0.81, error 0.30


def test_min_size_merges_lone_classes_into_their_nearest_group():
    scores = torch.full((5, 5), 0.1)
    for i, j, v in ((0, 1, 0.9), (2, 3, 0.9), (4, 2, 0.4), (4, 3, 0.3)):
        scores[i, j] = scores[j, i] = v
    active = torch.ones(5, dtype=torch.bool)
    assert average_linkage(scores, active, torch.tensor(0.5)).tolist() == [0, 0, 2, 2, 4]
    # class 4 is alone; its mean score to {2, 3} (0.35) beats {0, 1} (0.1)
    assert average_linkage(scores, active, torch.tensor(0.5), min_size=2).tolist() == [0, 0, 2, 2, 2]
    # a lone inactive (unseen) class stays alone
    active[4] = False
    assert average_linkage(scores, active, torch.tensor(0.5), min_size=2).tolist() == [0, 0, 2, 2, 4]


def test_threshold_first_update_can_average_as_before():
    thr = AdaptiveThreshold(init=0.8, quantile=0.5, momentum=0.5, first_update="average")
    thr.update(torch.full((10,), 0.2))
    assert thr.value.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="first_update"):
        AdaptiveThreshold(first_update="jump")
