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
