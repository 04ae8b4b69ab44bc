"""MixedPrecisionPlugin: the model and the loss run under autocast, backward and updates outside it."""
import torch
from avalanche.core import SupervisedPlugin
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark

from avalanche_balanced import SARLGelu, cifar_augment, cifar_normalize, gelu_resnet18
from avalanche_balanced.precision import MixedPrecisionPlugin


class DtypeRecorder(SupervisedPlugin):
    """Records the logits' dtype and whether autocast is on at the loss and at the backward pass."""

    def __init__(self):
        super().__init__()
        self.logits, self.autocast_at_loss, self.autocast_at_backward, self.eval_logits = [], [], [], []

    def after_forward(self, strategy, **kwargs):
        self.logits.append(strategy.mb_output.dtype)
        self.autocast_at_loss.append(torch.is_autocast_enabled("cpu"))

    def after_backward(self, strategy, **kwargs):
        self.autocast_at_backward.append(torch.is_autocast_enabled("cpu"))

    def after_eval_forward(self, strategy, **kwargs):
        self.eval_logits.append(strategy.mb_output.dtype)


def image_benchmark():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(12)
    x = (0.5 * torch.rand(4, 3, 1, 1, generator=g)[y] + 0.5 * torch.rand(len(y), 3, 8, 8, generator=g))
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    return nc_benchmark(ds, ds, n_experiences=2, task_labels=False, seed=0)


def sarl(plugins, seed=0):
    torch.manual_seed(seed)
    model = gelu_resnet18(num_classes=4, nf=8)
    return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=16,
                    batch_size_mem=4, warmup_epochs=0, transform=cifar_augment, eval_transform=cifar_normalize,
                    train_mb_size=8, train_epochs=2, eval_mb_size=16, plugins=plugins, evaluator=None,
                    teacher_ratio=None)  # a 2-epoch model on 8 images is below the teacher check


def test_sarl_trains_in_bfloat16_with_every_loss_term():
    rec = DtypeRecorder()
    strategy = sarl([MixedPrecisionPlugin(device_type="cpu"), rec])
    bm = image_benchmark()
    for exp in bm.train_stream:
        strategy.train(exp)
    strategy.eval(bm.test_stream)
    assert set(rec.logits) == {torch.bfloat16} and all(rec.autocast_at_loss)
    assert not any(rec.autocast_at_backward)  # backward and optimiser step in full precision
    assert set(rec.eval_logits) == {torch.bfloat16}
    assert not torch.is_autocast_enabled("cpu")  # nothing left open
    # second experience past the warm-up: the distillation and semantic terms ran in mixed precision
    assert {"ce", "replay_ce", "replay_mse", "distill", "semantic", "similarity"} <= set(strategy.loss_terms)
    assert all(torch.isfinite(v).all() for v in strategy.loss_terms.values())
    assert all(p.dtype == torch.float32 for p in strategy.model.parameters())
    assert strategy.buffer.features.dtype == torch.float32 and torch.isfinite(strategy.buffer.features).all()


def test_without_the_plugin_nothing_runs_under_autocast():
    rec = DtypeRecorder()
    strategy = sarl([rec])
    strategy.train(image_benchmark().train_stream[0])
    assert set(rec.logits) == {torch.float32} and not any(rec.autocast_at_loss)
