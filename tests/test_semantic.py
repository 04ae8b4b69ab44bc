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
    cos = protos.cosine_to_own(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0]))


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
    net = SemanticSimilarity(16, sim_lr=1e-2)
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
    net = SemanticSimilarity(5)
    x, labels = torch.randn(7, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3])
    a, b = x.unsqueeze(1).expand(7, 7, 5), x.unsqueeze(0).expand(7, 7, 5)
    torch.testing.assert_close(net.pairwise(x), net(a, b))
    # the loss (and so every gradient) is that of the plain formula: MLP on [a, b] and [b, a]
    plain = SemanticSimilarity(5)
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
    assert thr.value.item() == pytest.approx(0.5)
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
    assert sizes.max() <= 10 and int((sizes > 0).sum()) >= 50
