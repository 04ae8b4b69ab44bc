"""Shared fixtures: the real CIFAR-100 copy (or a skip) and tiny synthetic CIFAR folders."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from once import computed_once

# One torch thread for the whole suite: the tests' networks are tiny, so intra-op threads only
# add overhead, and on a loaded machine (CI, or comparisons running beside the suite) two threads
# per test process oversubscribe the cores (a tiny comparison ran 5-8x slower on two threads).
# It also makes forking a test process safe: no OpenMP pool to copy half-alive (example_runs.py).
torch.set_num_threads(1)

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar100"
SHARED_FIXTURES = {"small_cifar_root", "full_comparison", "ddp_ranks"}  # built once per session (once.py)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` (whole runs, fresh processes) go first, those that build a shared
    fixture first of all: under pytest-xdist, handing out one test at a time (``--maxschedchunk
    1``, see the Makefile), a worker then seldom waits for a fixture the other is building, and
    the two end together instead of one finishing a long test alone at the end."""
    def order(item):
        long = item.get_closest_marker("long") is not None
        return not long, not (long and SHARED_FIXTURES & set(item.fixturenames))
    items.sort(key=order)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """Real CIFAR-100 folder (``AVALANCHE_BALANCED_DATA`` overrides the shared copy)."""
    root = Path(os.environ.get("AVALANCHE_BALANCED_DATA") or SHARED_CIFAR)
    if not any((root / f).is_file() for f in ("cifar100_train.npz", "cifar-100-python/train")):
        pytest.skip(f"no CIFAR-100 copy at {root}")
    return root


@pytest.fixture(scope="session")
def small_cifar_root(cifar_root, tmp_path_factory) -> Path:
    """A copy of real CIFAR-100 with the first 5 training and 2 test images of every class (original
    order kept), for the tests that start whole runs in fresh processes: each loads a small file
    instead of 170 MB. Skipped with the real copy."""
    from avalanche_balanced.data import load_cifar100

    def build(root):
        for split, keep, train in (("train", 5, True), ("test", 2, False)):
            data = load_cifar100(cifar_root, train=train)
            fine = data.fine.numpy()
            picked = np.sort(np.concatenate([np.nonzero(fine == c)[0][:keep] for c in range(100)]))
            np.savez(root / f"cifar100_{split}.npz", x=data.images[picked].permute(0, 2, 3, 1).numpy(),
                     y=fine[picked], coarse=data.coarse.numpy()[picked])
        meta = cifar_root / "cifar100_meta.json"
        if meta.is_file():
            (root / meta.name).write_text(meta.read_text())
    return computed_once(tmp_path_factory, "small_cifar", build)


@pytest.fixture(scope="session")
def fake_cifar():
    """{split: (x uint8 N x 32 x 32 x 3 HWC, fine, coarse)}, 3 train / 1 test image per class."""
    rng = np.random.default_rng(0)
    fine_to_coarse = rng.permutation(np.repeat(np.arange(20), 5))
    splits = {}
    for split, per_class in (("train", 3), ("test", 1)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        x = rng.integers(0, 256, size=(fine.size, 32, 32, 3), dtype=np.uint8)
        splits[split] = (x, fine, fine_to_coarse[fine])
    return splits


@pytest.fixture
def npz_cifar_dir(tmp_path, fake_cifar) -> Path:
    """A folder in the npz layout holding ``fake_cifar``."""
    root = tmp_path / "npz"
    root.mkdir()
    for split, (x, fine, coarse) in fake_cifar.items():
        np.savez_compressed(root / f"cifar100_{split}.npz", x=x, y=fine, coarse=coarse)
    return root


@pytest.fixture
def torchvision_cifar_dir(tmp_path, fake_cifar) -> Path:
    """A folder holding ``cifar-100-python/`` pickles of ``fake_cifar`` (official key layout)."""
    folder = tmp_path / "tv" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, (x, fine, coarse) in fake_cifar.items():
        entry = {
            b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),  # rows in CHW order
            b"fine_labels": fine.tolist(),
            b"coarse_labels": coarse.tolist(),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return folder.parent
