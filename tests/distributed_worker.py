"""Worker of tests/test_distributed.py: one rank of a torch DDP run (gloo, CPU), spawned by the test."""
import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from avalanche.core import SupervisedPlugin


def run(rank: int, world: int, port: int, out: str, scenario: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = {}
    try:
        from avalanche_balanced.distributed import init_distributed
        init_distributed(seed=0, backend="gloo", timeout_s=20 if scenario == "consistency" else 3)
        SCENARIOS[scenario](rank, result, Path(out))
    except Exception as error:  # the test reads what each rank saw
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
    finally:
        torch.save(result, Path(out) / f"{scenario}_rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()


def _strategy(plugins, seed=0, evaluator=None):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 6))
    return model, Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                        train_epochs=1, eval_mb_size=64, plugins=plugins, evaluator=evaluator or EvaluationPlugin(loggers=[]))


def consistency(rank, out, folder):
    from synthetic import SEMANTIC, blobs_benchmark
    from avalanche_balanced import BalancedReplayPlugin
    from avalanche_balanced.distributed import DataParallelPlugin, buffer_fingerprint, check_same_buffer
    bm = blobs_benchmark(6, 8, n_per_class=24, n_experiences=3, seed=0)
    for timing in ("after_experience", "online"):
        replay = BalancedReplayPlugin(**SEMANTIC, mem_size=24, batch_size_mem=8, insertion_timing=timing,
                                      regroup_every=5, seed=0)
        draws, original = [], replay.draw

        def recorded():
            batch = original()
            draws.append((replay._global_indices.clone(), batch.indices.clone()))
            return batch
        replay.draw = recorded
        model, strategy = _strategy([DataParallelPlugin(), replay])
        fingerprints = []
        for exp in bm.train_stream:
            strategy.train(exp)
            check_same_buffer(replay.buffer)  # raises if the ranks' buffers differ
            fingerprints.append(buffer_fingerprint(replay.buffer))
        state = replay.buffer.state_dict()
        replay.draw()  # one more global draw, from that state
        out[timing] = dict(fingerprints=fingerprints, draws=draws, state=state, next_draw=replay._global_indices,
                           params=[p.detach().clone() for p in model.parameters()])


def data_order(rank, out, folder):
    """The first minibatch of each epoch, two epochs of one experience, for run seeds 0 and 1,
    and every sample this rank trained on in the first epoch."""
    from avalanche.core import SupervisedPlugin
    from avalanche_balanced.distributed import DataParallelPlugin
    from synthetic import blobs_benchmark
    bm = blobs_benchmark(6, 8, n_per_class=8, n_experiences=1, seed=0)

    class Record(SupervisedPlugin, supports_distributed=True):
        def __init__(self):
            super().__init__()
            self.first, self.seen = [], []

        def before_training_epoch(self, strategy, **kwargs):
            self.first.append(None)

        def after_training_iteration(self, strategy, **kwargs):
            if self.first[-1] is None:
                self.first[-1] = strategy.mb_x.clone()
            if len(self.first) == 1:
                self.seen.append(strategy.mb_x.clone())
    for seed in (0, 1):
        record = Record()
        _, strategy = _strategy([DataParallelPlugin(seed=seed), record])
        strategy.train_epochs = 2
        strategy.train(bm.train_stream[0])
        out[seed] = dict(first=record.first, seen=torch.cat(record.seen),
                         dataset=torch.stack([x for x, *_ in bm.train_stream[0].dataset]))


def bad_configurations(rank, out, folder):
    """Ranks with other buffer settings (each rank sees the error), then a rank that fails
    before a collective (the other must stop at the timeout)."""
    from avalanche_balanced import BalancedReplayPlugin
    from avalanche_balanced.distributed import gather_rows
    from synthetic import SEMANTIC, blobs_benchmark
    bm = blobs_benchmark(6, 8, n_per_class=8, n_experiences=3, seed=0)
    replay = BalancedReplayPlugin(**SEMANTIC, mem_size=24, batch_size_mem=8, eps=0.1 if rank == 0 else 0.2, seed=0)
    _, strategy = _strategy([replay])
    try:
        strategy.train(bm.train_stream[0])
    except ValueError as error:
        out["mismatch"] = str(error)
    if rank == 1:
        raise RuntimeError("rank 1 fails before the collective")
    gather_rows(torch.ones(3))  # rank 0 waits for rank 1, which never comes: the timeout ends it


def resume(rank, out, folder):
    """An uninterrupted 3-experience DDP run, and the same run stopped after experience 2 (a
    checkpoint written by rank 0) and resumed in fresh strategies on both ranks."""
    from avalanche_balanced import BalancedReplayPlugin
    from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_balanced.distributed import DataParallelPlugin, buffer_fingerprint
    from synthetic import SEMANTIC, blobs_benchmark
    bm = blobs_benchmark(6, 8, n_per_class=24, n_experiences=3, seed=0)
    name = "Top1_Acc_Stream/eval_phase/test_stream/Task000"

    counter = EvaluatedSamples()

    def build():
        from avalanche.evaluation.metrics import accuracy_metrics
        from avalanche.training.plugins import EvaluationPlugin
        replay = BalancedReplayPlugin(**SEMANTIC, mem_size=24, batch_size_mem=8, seed=0)
        model, strategy = _strategy([DataParallelPlugin(), replay, counter],
                                    evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
        return model, strategy, replay

    def summary(model, metrics, replay):
        x, y = (torch.cat(t) for t in zip(*[(x, y) for e in bm.test_stream for x, y, *_ in
                                             torch.utils.data.DataLoader(e.dataset, batch_size=1000)]))
        with torch.no_grad():
            direct = (model(x).argmax(1) == y).float().mean().item()  # the whole test stream, this rank's model
        return dict(accuracy=metrics[name], direct_accuracy=direct, evaluated=counter.seen, test_size=len(y),
                    fingerprint=buffer_fingerprint(replay.buffer), params=[p.detach().clone() for p in model.parameters()])
    model, strategy, replay = build()
    for exp in bm.train_stream:
        strategy.train(exp)
        metrics = strategy.eval(bm.test_stream)
    out["full"] = summary(model, metrics, replay)
    model, strategy, replay = build()
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
        strategy.eval(bm.test_stream)
        save_checkpoint(folder / "checkpoint.pt", strategy)
    out["files"] = sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint"))
    model, strategy, replay = build()  # a fresh process would start here
    load_checkpoint(folder / "checkpoint.pt", strategy)
    strategy.train(bm.train_stream[2])
    out["resumed"] = summary(model, strategy.eval(bm.test_stream), replay)


class EvaluatedSamples(SupervisedPlugin, supports_distributed=True):
    """Counts the samples of the latest ``eval`` call on this rank."""

    seen = 0

    def before_eval(self, strategy, **kwargs):
        self.seen = 0

    def after_eval_iteration(self, strategy, **kwargs):
        self.seen += len(strategy.mb_y)


def sarl(rank, out, folder):
    """SARL-GELU on 2 ranks: buffer, prototypes, similarity network and teacher end identical."""
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche_balanced import SARLGelu
    from avalanche_balanced.distributed import DataParallelPlugin, buffer_fingerprint
    from synthetic import blobs_benchmark
    bm = blobs_benchmark(6, 8, n_per_class=24, n_experiences=3, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 6))
    strategy = SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=24,
                        batch_size_mem=8, train_mb_size=8, train_epochs=2, warmup_epochs=1, regroup_every=5,
                        plugins=[DataParallelPlugin()], evaluator=EvaluationPlugin(loggers=[]))
    for exp in bm.train_stream:
        strategy.train(exp)
    out.update(fingerprint=buffer_fingerprint(strategy.buffer),
               similarity_net=[p.detach().clone() for p in strategy.similarity_net.parameters()],
               prototypes=strategy.prototypes.prototypes.clone(),
               teacher=[p.detach().clone() for p in strategy.old_model.parameters()],
               model=[p.detach().clone() for p in model.parameters()], seen=strategy.buffer.num_seen)


def every_scenario(rank, out, folder):
    """Every scenario in one process group (one spawn: the ranks' start-up is paid once). The
    healthy ones first; the bad configurations last, since their failing rank ends the group."""
    for name, scenario in (("consistency", consistency), ("resume", resume), ("sarl", sarl),
                           ("data_order", data_order)):
        out[name] = {}
        scenario(rank, out[name], folder)
    out["bad_configurations"] = bad = {}
    try:
        bad_configurations(rank, bad, folder)
    except Exception as error:  # expected: the test reads what each rank saw
        bad["error"] = f"{type(error).__name__}: {error}"


SCENARIOS = dict(every_scenario=every_scenario)
