"""The compiled training step equals the eager one (Dynamo traced, AOT autograd; the backend that
generates kernels is the GPU script's business: here 'aot_eager' keeps the test fast)."""
import pytest
import torch
from torch import nn
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced import SARLGelu
from avalanche_balanced.compiled import compile_model, train_kwargs
from avalanche_balanced.experiment import seed_everything
from synthetic import blobs_benchmark

C, D = 6, 8


def run(compiled: bool, steps: int = 12):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.GELU(), nn.Linear(32, C))
    if compiled:
        compile_model(model, backend="aot_eager")
    losses = []

    class Record(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            losses.append(float(strategy.loss))
            if len(losses) >= steps:
                strategy.stop_training()

    strategy = SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=30,
                        batch_size_mem=8, warmup_epochs=0, train_mb_size=16, train_epochs=2,
                        plugins=[Record()], evaluator=EvaluationPlugin(loggers=[]))
    bm = blobs_benchmark(C, D, seed=0)
    for exp in bm.train_stream[:2]:
        strategy.train(exp, **train_kwargs("reduce-overhead"))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.long
def test_compiled_step_matches_eager_losses_and_parameters():
    eager_losses, eager_params = run(False)
    compiled_losses, compiled_params = run(True)
    assert len(eager_losses) == len(compiled_losses) >= 12
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    assert eager_params.keys() == compiled_params.keys()  # same module, same checkpoint keys
    for name in eager_params:
        torch.testing.assert_close(compiled_params[name], eager_params[name], rtol=1e-4, atol=1e-5)
