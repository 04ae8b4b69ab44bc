"""Seconds and bytes per iteration of Naive + BalancedReplayPlugin under torch DDP (gloo, CPU processes).

    python -m benchmarks.distributed                 # 1, 2 and 4 processes, both insertion timings
    python -m benchmarks.distributed --worlds 1 2 --iterations 40

Every run trains the reduced GELU ResNet-18 (nf 20) on a synthetic 3 x 32 x 32 stream of 20
classes in 2 experiences, global batch 32 current + 32 replayed, buffer 500, for
``--iterations`` iterations of the second experience (the first fills the buffer); each
process uses one thread. Bytes are counted where the library communicates, by wrapping
torch.distributed's Python collectives (``all_gather``, ``all_gather_object``,
``broadcast``, ``broadcast_object_list``) in every rank: the payload each rank sends. DDP's
own gradient all-reduce runs in C++ and is not seen there; it is given on paper as the
parameter bytes (a ring all-reduce sends ``2 (W - 1) / W`` times them per rank).
Prints a table; ratios against one process are what carries over between machines.
"""
import argparse
import os
import pickle
import time

import torch
import torch.multiprocessing as mp


def _count_bytes(counter: dict) -> None:
    """Wrap torch.distributed's Python collectives to add each call's payload to ``counter``."""
    import torch.distributed as dist
    import avalanche.distributed.distributed_helper as helper

    def nbytes(x):
        return x.numel() * x.element_size() if torch.is_tensor(x) else len(pickle.dumps(x))

    def wrap(name, payload):
        original = getattr(dist, name)

        def counted(*args, **kwargs):
            counter["bytes"] += payload(*args, **kwargs)
            counter["calls"] += 1
            return original(*args, **kwargs)
        setattr(dist, name, counted)
        if hasattr(helper, name):
            setattr(helper, name, counted)
    wrap("all_gather", lambda out, t, *a, **k: nbytes(t))
    wrap("all_gather_object", lambda out, obj, *a, **k: nbytes(obj))
    wrap("broadcast", lambda t, *a, **k: nbytes(t) if dist.get_rank() == k.get("src", a[0] if a else 0) else 0)
    wrap("broadcast_object_list", lambda objs, *a, **k: sum(nbytes(o) for o in objs)
         if dist.get_rank() == k.get("src", a[0] if a else 0) else 0)


def worker(rank, world, port, timing, iterations, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.core import SupervisedPlugin
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche_balanced import BalancedReplayPlugin, gelu_resnet18
    from avalanche_balanced.distributed import DataParallelPlugin, init_distributed

    if world > 1:
        init_distributed(seed=0, backend="gloo")
    counter = {"bytes": 0, "calls": 0}
    _count_bytes(counter)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(20).repeat_interleave(40)
    ds = _make_taskaware_tensor_classification_dataset(torch.rand(len(y), 3, 32, 32, generator=g), y)
    bm = nc_benchmark(ds, ds, n_experiences=2, task_labels=False, seed=0)

    class Timer(SupervisedPlugin, supports_distributed=True):

        def __init__(self):
            super().__init__()
            self.count, self.start, self.bytes_at_start, self.seconds = 0, None, 0, None

        def after_training_iteration(self, strategy, **kwargs):
            if strategy.experience.current_experience != 1:
                return
            self.count += 1
            if self.count == 3:  # after a short warm-up
                self.start, self.bytes_at_start = time.perf_counter(), counter["bytes"]
            elif self.count == 3 + iterations:
                self.seconds = (time.perf_counter() - self.start) / iterations
                self.bytes = (counter["bytes"] - self.bytes_at_start) / iterations
                strategy.stop_training()

    torch.manual_seed(0)
    model = gelu_resnet18(20, nf=20)
    timer = Timer()
    replay = BalancedReplayPlugin(mem_size=500, batch_size_mem=32, insertion_timing=timing, seed=0)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.03), train_mb_size=32 // world,
                     train_epochs=50, plugins=[DataParallelPlugin(), replay, timer],
                     evaluator=EvaluationPlugin(loggers=[]))
    strategy.train_epochs = 1
    strategy.train(bm.train_stream[0])
    experience_bytes = counter["bytes"]
    strategy.train_epochs = 50
    strategy.train(bm.train_stream[1])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if rank == 0:
        torch.save(dict(seconds=timer.seconds, bytes=timer.bytes, experience_bytes=experience_bytes,
                        param_bytes=params, sample_bytes=sum(replay.buffer.bytes_per_sample().values())), out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--out", default="/tmp/avalanche_balanced_distributed.pt")
    args = p.parse_args(argv)
    from avalanche_balanced.distributed import free_port
    rows = []
    for timing in ("after_experience", "online"):
        for world in args.worlds:
            mp.spawn(worker, args=(world, free_port(), timing, args.iterations, args.out), nprocs=world, join=True)
            r = torch.load(args.out, weights_only=False)
            rows.append((timing, world, r))
    base = {timing: r["seconds"] for timing, world, r in rows if world == 1}
    print(f"Naive + BalancedReplayPlugin, reduced GELU ResNet-18 ({rows[0][2]['param_bytes'] / 1e6:.2f} MB of "
          f"parameters), global batch 32 + 32, buffer 500 ({rows[0][2]['sample_bytes']} bytes per stored sample), "
          "gloo on CPU processes of one thread each\n")
    print("| insertion | processes | s / iteration | vs 1 process | library bytes sent / iteration / rank | "
          "first experience's bytes / rank | DDP all-reduce bytes / iteration / rank (on paper) |")
    print("|---|---|---|---|---|---|---|")
    for timing, world, r in rows:
        ddp = 2 * (world - 1) / world * r["param_bytes"]
        print(f"| {timing} | {world} | {r['seconds']:.3f} | {r['seconds'] / base[timing]:.2f} | "
              f"{r['bytes']:,.0f} | {r['experience_bytes']:,.0f} | {ddp:,.0f} |")


if __name__ == "__main__":
    main()
