"""Tests for avalanche_balanced.models: the GELU CIFAR ResNet-18."""
import pytest
import torch
from torch import nn
from avalanche.training.utils import get_last_fc_layer

from avalanche_balanced.models import GeluBasicBlock, GeluResNet, gelu_resnet18


@pytest.mark.parametrize("nf", [20, 64])
def test_shapes_and_features_from_same_pass(nf):
    torch.manual_seed(0)
    model = gelu_resnet18(nf=nf).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model(x, return_features=True)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 100)
        assert model.num_features == nf * 8 and feats.shape == (2, nf * 8)
        assert torch.allclose(model.linear(feats), logits2)
        assert torch.allclose(logits, logits2)
        assert torch.allclose(model.features(x), feats)


def test_architecture():
    model = gelu_resnet18()
    # Known size of the CIFAR ResNet-18 (kuangliu layout) with 100 classes.
    assert sum(p.numel() for p in model.parameters()) == 11_220_132
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    modules = list(model.modules())
    assert sum(isinstance(m, GeluBasicBlock) for m in modules) == 8
    assert sum(isinstance(m, nn.GELU) for m in modules) == 1 + 2 * 8
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in modules)
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [
        64, 128, 256, 512]


def test_num_classes_and_gradients():
    model = gelu_resnet18(num_classes=10, nf=20)
    x = torch.randn(4, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert model.conv1.weight.grad is not None and model.linear.weight.grad is not None


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = gelu_resnet18(nf=20).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, reference, atol=1e-4)


def test_avalanche_finds_linear_head():
    model = gelu_resnet18(nf=20)
    name, layer = get_last_fc_layer(model)
    assert name == "linear" and layer is model.linear


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"nf": 0}])
def test_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        gelu_resnet18(**kwargs)
    with pytest.raises(ValueError, match="num_blocks"):
        GeluResNet((2, 2, 2))


def test_k_winners_keep_90_percent_of_channels_at_every_location():
    """SARL's activation: per sample and location, the round(0.9 * C) largest channels survive
    (and only non-negative ones: ReLU first); everything else is 0."""
    from avalanche_balanced.models import KWinnersTakeAll

    torch.manual_seed(0)
    x = torch.randn(4, 20, 5, 5).abs() + 0.1  # all positive: exactly k survive
    out = KWinnersTakeAll(0.9)(x)
    assert torch.equal((out != 0).sum(1), torch.full((4, 5, 5), 18))
    kept_min = torch.where(out != 0, x, torch.full_like(x, float("inf"))).amin(1)
    dropped_max = torch.where(out == 0, x, torch.zeros_like(x)).amax(1)
    assert bool((kept_min > dropped_max).all())  # the winners are the largest
    assert torch.equal(out[out != 0], x[out != 0])  # winners keep their values
    signed = KWinnersTakeAll(0.9)(torch.randn(4, 20, 5, 5))
    assert bool((signed >= 0).all())  # ReLU: no negative value survives
    with pytest.raises(ValueError, match="percent_on"):
        KWinnersTakeAll(1.5)


def test_sparse_resnet18_places_k_winners_in_every_block():
    from avalanche_balanced.models import KWinnersTakeAll, sparse_resnet18

    net = sparse_resnet18(num_classes=10, nf=8)
    blocks = [m for m in net.modules() if isinstance(m, GeluBasicBlock)]
    assert len(blocks) == 8
    assert all(isinstance(b.act1, KWinnersTakeAll) and isinstance(b.act2, KWinnersTakeAll) for b in blocks)
    assert isinstance(net.act1, torch.nn.ReLU)  # the stem: plain ReLU, as the authors
    assert not any(isinstance(m, torch.nn.GELU) for m in net.modules())
    logits, feats = net(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, 64)
