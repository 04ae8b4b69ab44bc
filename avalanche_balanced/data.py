"""CIFAR-100 loading, the class-incremental Split CIFAR-100 benchmark, and batched augmentation.

Two on-disk layouts are read, both yielding uint8 images in N x 3 x 32 x 32 (CHW) order:

* npz: ``cifar100_train.npz`` / ``cifar100_test.npz`` with ``x`` (N, 32, 32, 3) uint8 HWC,
  ``y`` fine labels and ``coarse`` superclass labels (+ optional ``cifar100_meta.json``);
* torchvision: a ``cifar-100-python/`` folder with the official ``train`` / ``test`` pickles.

Benchmark samples are float images in [0, 1] without any per-sample transform; augmentation
and normalisation run on whole batches on the training device (:func:`cifar_augment`,
:func:`cifar_normalize`), which is far cheaper than PIL transforms in DataLoader workers.
"""
import json
import os
from contextlib import contextmanager
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from avalanche.benchmarks import NCScenario, nc_benchmark
from avalanche.benchmarks.datasets.dataset_utils import default_dataset_location
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from .insertion import keep_per_class
from .long_tail import long_tail_counts
from .superclass_skew import skewed_classes
# The batched CIFAR transforms live in transforms.py; imported here for existing callers.
from .transforms import CIFAR100_MEAN, CIFAR100_STD, cifar_augment, cifar_normalize  # noqa: F401

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR100Arrays", "CorruptDataError", "cifar_augment",
    "cifar_normalize", "default_data_root", "fine_to_coarse_table", "load_cifar100",
    "preserved_global_rng", "split_cifar100", "with_test_subset",
]

N_FINE, N_COARSE, TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 20, 500, 100
DATA_ENV_VAR = "AVALANCHE_BALANCED_DATA"
_TV_DIR = "cifar-100-python"
# Read-only copy shared next to the repository: <repo>/../shared/data/cifar100.
_SHARED_COPY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar100"


class CorruptDataError(ValueError):
    """A CIFAR-100 file exists but is damaged or does not hold the expected arrays."""


class CIFAR100Arrays(NamedTuple):
    """One split: ``images`` uint8 N x 3 x 32 x 32 (contiguous); int64 ``fine``, ``coarse``."""

    images: Tensor
    fine: Tensor
    coarse: Tensor


def default_data_root() -> Path:
    """Folder used when no ``root`` is given.

    In order: the ``AVALANCHE_BALANCED_DATA`` environment variable if set; the shared copy
    ``<repo>/../shared/data/cifar100`` if it exists; otherwise Avalanche's dataset location
    for ``cifar100`` (``~/.avalanche/data/cifar100`` unless changed in Avalanche's config),
    which is where ``download=True`` puts torchvision's copy.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    if _SHARED_COPY.is_dir():
        return _SHARED_COPY
    return Path(default_dataset_location("cifar100"))


def _torchvision_dir(root: Path) -> Path:
    return root if root.name == _TV_DIR else root / _TV_DIR


def _find_split_file(root: Path, split: str) -> Optional[Path]:
    for candidate in (root / f"cifar100_{split}.npz", _torchvision_dir(root) / split):
        if candidate.is_file():
            return candidate
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only what the CIFAR pickles contain (dicts, lists, bytes, numpy arrays).

    Refusing every other global means a tampered file cannot run code when it is loaded.
    """

    _NUMPY_NAMES = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module, name):
        if (module.split(".")[0] == "numpy" and name in self._NUMPY_NAMES) or (
            module, name) == ("_codecs", "encode"):  # protocol-2 pickles of bytes use it
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing unexpected global {module}.{name}")


def _unpickle_dict(path: Path) -> dict:
    with open(path, "rb") as f:
        # latin1 decodes the Python 2 strings of the official release, as torchvision does.
        raw = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


# What numpy, zipfile and pickle raise on truncated, damaged or mis-structured files.
_READ_ERRORS = (EOFError, ValueError, KeyError, TypeError, AttributeError,
                IndexError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def _corrupt(path: Path, err: Exception) -> CorruptDataError:
    reason = f"missing key {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
    return CorruptDataError(f"cannot read CIFAR-100 file {path} ({reason})")


def _read_split(path: Path) -> CIFAR100Arrays:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                x, fine, coarse = npz["x"], npz["y"], npz["coarse"]
            if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
                raise CorruptDataError(f"{path}: 'x' should be uint8 (N, 32, 32, 3), "
                                       f"got {x.dtype} {x.shape}")
            images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        else:
            entry = _unpickle_dict(path)
            data = np.asarray(entry["data"])
            fine, coarse = entry["fine_labels"], entry["coarse_labels"]
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
                raise CorruptDataError(f"{path}: 'data' should be uint8 (N, 3072), "
                                       f"got {data.dtype} {data.shape}")
            # Rows are already channel-major (CHW), so a reshape is the whole conversion.
            images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    except CorruptDataError:
        raise
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err
    n = images.shape[0]
    return CIFAR100Arrays(images, _check_labels(path, "fine", fine, n, N_FINE),
                          _check_labels(path, "coarse", coarse, n, N_COARSE))


def _check_labels(path: Path, name: str, values, n: int, n_classes: int) -> Tensor:
    arr = np.asarray(values)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise CorruptDataError(f"{path}: {name} labels should be {n} integers to match the "
                               f"images, got {arr.dtype} {arr.shape}")
    if n and (arr.min() < 0 or arr.max() >= n_classes):
        raise CorruptDataError(f"{path}: {name} labels outside [0, {n_classes})")
    return torch.from_numpy(arr.astype(np.int64, copy=False))


def load_cifar100(root: Union[str, Path], train: bool = True,
                  download: bool = False) -> CIFAR100Arrays:
    """Load one CIFAR-100 split from ``root`` (npz or torchvision layout, see module docs).

    ``root`` may also be the ``cifar-100-python`` folder itself. With ``download=True`` and
    no data found, torchvision downloads its copy into ``root``. Raises FileNotFoundError
    when no layout is present and :class:`CorruptDataError` (a ValueError) naming the file
    when it is damaged or holds arrays of the wrong shape.
    """
    root = Path(root).expanduser()
    split = "train" if train else "test"
    path = _find_split_file(root, split)
    if path is None and download:
        from torchvision.datasets import CIFAR100  # only needed here; keeps imports light

        # torchvision always creates <target>/cifar-100-python itself.
        target = root.parent if root.name == _TV_DIR else root
        CIFAR100(str(target), train=train, download=True)
        path = _find_split_file(root, split)
    if path is None:
        raise FileNotFoundError(
            f"no CIFAR-100 {split} split under {root}: expected either "
            f"{root / f'cifar100_{split}.npz'} (npz layout) or "
            f"{_torchvision_dir(root) / split} (torchvision 'cifar-100-python' layout); "
            "pass download=True to fetch it with torchvision")
    return _read_split(path)


def fine_to_coarse_table(fine: Tensor, coarse: Tensor) -> Tensor:
    """LongTensor[100] mapping each fine label to its superclass, read off paired labels.

    Raises ValueError if the label tensors do not pair up, a fine label never occurs (its
    superclass would be unknown), or a fine label occurs with two different coarse labels.
    """
    fine, coarse = torch.as_tensor(fine).long(), torch.as_tensor(coarse).long()
    if fine.ndim != 1 or fine.shape != coarse.shape:
        raise ValueError(f"fine and coarse must be 1-D of equal length, got "
                         f"{tuple(fine.shape)} and {tuple(coarse.shape)}")
    if fine.numel() and (fine.min() < 0 or fine.max() >= N_FINE):
        raise ValueError(f"fine labels must lie in [0, {N_FINE})")
    table = torch.full((N_FINE,), -1, dtype=torch.long)
    table[fine] = coarse  # with duplicate indices any one write wins; checked just below
    clash = table[fine] != coarse
    if clash.any():
        label = int(fine[clash][0])
        seen = torch.unique(coarse[fine == label]).tolist()
        raise ValueError(f"fine label {label} occurs with several coarse labels {seen}")
    missing = (table < 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"fine labels {missing} never occur, so their superclass is unknown")
    return table


def _balanced_subset(labels: Tensor, per_class: Union[int, Tensor],
                     generator: Optional[torch.Generator]) -> Tensor:
    """Sorted indices of a uniform random subset with exactly ``per_class`` items per label
    (an int, or a tensor of per-label quotas indexed by label)."""
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    quota = torch.as_tensor(per_class)
    if quota.dim() == 0:
        if present.numel() and int(quota) > int(present.min()):
            raise ValueError(f"per_class={int(quota)} but the smallest class has only "
                             f"{int(present.min())} images")
    elif bool((quota[: counts.numel()] > counts[: quota.numel()]).any()):
        raise ValueError("a class has fewer images than its quota")
    return torch.nonzero(keep_per_class(labels, quota, generator)).squeeze(1)


def _label_names(root: Path) -> dict:
    """Label names from ``cifar100_meta.json`` or torchvision's ``meta`` pickle; {} if neither."""
    keys = ("fine_label_names", "coarse_label_names")
    json_meta, tv_meta = root / "cifar100_meta.json", _torchvision_dir(root) / "meta"
    path = json_meta if json_meta.is_file() else tv_meta if tv_meta.is_file() else None
    if path is None:
        return {}
    try:
        meta = json.loads(path.read_text()) if path.suffix == ".json" else _unpickle_dict(path)
        return {k: list(meta[k]) for k in keys if k in meta}
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err


@contextmanager
def preserved_global_rng():
    """Run a block without changing torch's global RNG state (CPU, and CUDA where available).

    Avalanche's ``nc_benchmark(seed=...)`` calls ``torch.random.manual_seed``: built after a
    run was seeded, a benchmark would otherwise reset the run's initial weights, data order
    and augmentation to values fixed by the class-order seed.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


def split_cifar100(n_experiences: int = 5, *, root: Union[str, Path, None] = None,
                   seed: Optional[int] = 0, class_order: Union[Sequence[int], str, None] = None,
                   per_class: Optional[int] = None, return_task_id: bool = False,
                   download: bool = False, test_per_class: Optional[int] = None,
                   validation_per_class: Optional[int] = None,
                   imbalance_ratio: Optional[float] = None, imbalance_order: str = "shuffled",
                   superclass_skew: Optional[int] = None) -> NCScenario:
    """Class-incremental Split CIFAR-100, built with Avalanche's ``nc_benchmark``.

    The class order follows Avalanche's ``SplitCIFAR100``: ``class_order`` (a permutation of
    0..99, or ``"natural"`` for 0..99 as SARL's authors train) is used as given, otherwise it is
    drawn from ``seed``. Original class ids are kept.
    ``seed`` is the *benchmark's* seed (class order, training subset, validation and test
    subsets) and nothing else: unlike ``nc_benchmark``, this function leaves torch's global
    RNG as it found it, so a run seeded before or after building the benchmark keeps its own
    initial weights, data order and augmentation.

    ``validation_per_class`` carves a validation set out of the *training* images: that many
    images per class, drawn from ``seed`` and disjoint from the training data, become the
    test stream (for choosing hyperparameters without touching the test set).

    Samples are float32 3 x 32 x 32 in [0, 1], neither normalised nor augmented: apply
    :func:`cifar_augment` (training) or :func:`cifar_normalize` (evaluation) to batches on
    the device. ``per_class`` keeps a ``seed``-determined random subset of that many
    training images per class; the test stream covers the full test set unless
    ``test_per_class`` asks for a seeded subset of that many test images per class
    (for fast smoke runs; report results on the full test set).

    ``imbalance_ratio`` makes the training stream long-tailed (CIFAR-100-LT): the class of
    frequency rank ``r`` keeps ``n_max * imbalance_ratio ** (r / 99)`` images, ``n_max`` being
    ``per_class`` when given, else 500 minus ``validation_per_class`` (the validation images are
    carved out first, from every class alike); ``imbalance_order="ordered"`` gives the most frequent
    classes to the first experiences, ``"shuffled"`` assigns frequencies at random (the two
    orders of Liu et al., ECCV 2022). Counts and images follow ``seed``; the test stream
    stays balanced. The counts are ``class_counts`` (LongTensor[100]) on the result, with
    ``imbalance_ratio``, ``imbalance_order`` and ``n_max``; without imbalance
    ``class_counts`` holds the balanced counts and ``imbalance_ratio`` is None.

    ``superclass_skew=k`` keeps all five classes of ``k`` "crowded" superclasses and one class
    of each other, "lone", superclass (``20 + 4k`` classes, equal images per class; the rule in
    :mod:`~avalanche_balanced.superclass_skew`): semantically similar classes over-represented.
    ``seed`` picks the crowded superclasses and the lone classes (before anything else it
    draws); a ``class_order`` is filtered to the kept classes; the test (or validation) stream
    covers the kept classes only; ``n_experiences`` must divide the number kept. The result
    has ``classes_kept`` (sorted ids) and ``crowded_classes`` (bool[100]); both are None
    without skew. It cannot be combined with ``imbalance_ratio``.

    Extra attributes on the result: ``fine_to_coarse`` (LongTensor[100]), ``train_indices``
    (the training-set indices used), ``validation_indices`` (None without validation), and ``fine_label_names`` / ``coarse_label_names`` when
    the data folder has label names. ``root`` defaults to :func:`default_data_root`.
    """
    if isinstance(n_experiences, bool) or not isinstance(n_experiences, int) \
            or n_experiences < 1 or (superclass_skew is None and N_FINE % n_experiences):
        raise ValueError(f"n_experiences must be a positive divisor of {N_FINE}, "
                         f"got {n_experiences!r}")
    if superclass_skew is not None and imbalance_ratio is not None:
        raise ValueError("superclass_skew and imbalance_ratio cannot be combined; pass one of them")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int)
                                  or not 0 < per_class <= TRAIN_PER_CLASS):
        raise ValueError(f"per_class must be an int in (0, {TRAIN_PER_CLASS}], got {per_class!r}")
    if test_per_class is not None and (isinstance(test_per_class, bool) or not isinstance(test_per_class, int)
                                       or not 0 < test_per_class <= TEST_PER_CLASS):
        raise ValueError(f"test_per_class must be an int in (0, {TEST_PER_CLASS}], got {test_per_class!r}")
    if validation_per_class is not None:
        if isinstance(validation_per_class, bool) or not isinstance(validation_per_class, int) \
                or not 0 < validation_per_class < TRAIN_PER_CLASS:
            raise ValueError(f"validation_per_class must be an int in (0, {TRAIN_PER_CLASS}), "
                             f"got {validation_per_class!r}")
        if test_per_class is not None:
            raise ValueError("validation_per_class replaces the test stream; do not pass test_per_class too")
        if (per_class or 0) + validation_per_class > TRAIN_PER_CLASS:
            raise ValueError(f"per_class ({per_class}) + validation_per_class ({validation_per_class}) "
                             f"exceeds the {TRAIN_PER_CLASS} training images per class")
    if imbalance_ratio is not None:
        long_tail_counts(range(N_FINE), 1, imbalance_ratio, imbalance_order)  # argument checks
    if isinstance(class_order, str):
        if class_order != "natural":
            raise ValueError(f"class_order must be a permutation of 0..{N_FINE - 1} or \"natural\", "
                             f"got {class_order!r}")
        class_order = range(N_FINE)  # 0..99, the order SARL's authors train in
    if class_order is not None:
        order = torch.as_tensor(list(class_order))
        if order.dtype.is_floating_point or order.ndim != 1 or order.numel() != N_FINE \
                or not torch.equal(order.sort().values, torch.arange(N_FINE)):
            raise ValueError(f"class_order must be a permutation of 0..{N_FINE - 1}")
        class_order = order.tolist()

    root = default_data_root() if root is None else Path(root).expanduser()
    train = load_cifar100(root, train=True, download=download)
    test = load_cifar100(root, train=False, download=download)
    table = fine_to_coarse_table(train.fine, train.coarse)
    if not torch.equal(table[test.fine], test.coarse):
        raise CorruptDataError(f"test labels under {root} disagree with the training "
                               "fine-to-coarse table")

    # Like the class order, seed=None means "not reproducible": use the global RNG.
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    pool = torch.arange(train.fine.numel())
    kept, crowded = None, None
    if superclass_skew is not None:
        kept, crowded = skewed_classes(table, superclass_skew, gen)
        if kept.numel() % n_experiences:
            raise ValueError(f"n_experiences ({n_experiences}) must divide the {kept.numel()} classes that "
                             f"superclass_skew={superclass_skew} keeps")
        pool = pool[torch.isin(train.fine, kept)]
        if class_order is not None:
            class_order = [c for c in class_order if c in set(kept.tolist())]
    validation = None
    if validation_per_class is not None:
        validation = _balanced_subset(train.fine[pool], validation_per_class, gen)
        validation = pool[validation]
        pool = pool[~torch.isin(pool, validation)]
    # Held-out images leave fewer per class: the long-tailed cap shrinks by them (450 with 50 held out).
    n_max = per_class if per_class is not None else TRAIN_PER_CLASS - (validation_per_class or 0)
    counts = None
    if imbalance_ratio is not None:
        # The class order must be known before frequencies can follow it: draw it here.
        if class_order is None:
            class_order = torch.randperm(N_FINE, generator=gen).tolist()
        counts = long_tail_counts(class_order, n_max, imbalance_ratio, imbalance_order, gen)
        indices = pool[_balanced_subset(train.fine[pool], counts, gen)]
    else:
        indices = pool if per_class is None else pool[_balanced_subset(train.fine[pool], per_class, gen)]
    # Convert only the kept images: the full training set is ~600 MB as float32.
    train_ds = _make_taskaware_tensor_classification_dataset(
        train.images[indices].float().div_(255), train.fine[indices])
    if validation is not None:
        test_images, test_fine = train.images[validation], train.fine[validation]
    else:
        test_pool = torch.arange(test.fine.numel()) if kept is None else torch.nonzero(
            torch.isin(test.fine, kept)).squeeze(1)
        if test_per_class is not None:
            keep = _balanced_subset(test.fine[test_pool], test_per_class, torch.Generator().manual_seed(seed or 0))
            test_pool = test_pool[keep]
        test_images, test_fine = test.images[test_pool], test.fine[test_pool]
    test_ds = _make_taskaware_tensor_classification_dataset(test_images.float().div_(255), test_fine)

    with preserved_global_rng():
        benchmark = nc_benchmark(train_ds, test_ds, n_experiences=n_experiences,
                                 task_labels=return_task_id, seed=seed,
                                 fixed_class_order=class_order, shuffle=True)
    benchmark.fine_to_coarse = table
    benchmark.train_indices = indices
    benchmark.validation_indices = validation
    benchmark.class_counts = torch.bincount(train.fine[indices], minlength=N_FINE)
    benchmark.imbalance_ratio, benchmark.imbalance_order, benchmark.n_max = imbalance_ratio, imbalance_order, n_max
    benchmark.superclass_skew, benchmark.classes_kept, benchmark.crowded_classes = superclass_skew, kept, crowded
    for key, names in _label_names(root).items():
        setattr(benchmark, key, names)
    return benchmark


def with_test_subset(benchmark: NCScenario, per_class: int, seed: int = 0) -> NCScenario:
    """``benchmark`` again, with a fixed class-balanced subset of its test set.

    For cheap evaluations between experiences: the training data, class order and
    experiences are ``benchmark``'s, and the test stream keeps ``per_class`` test
    items of every class, drawn once from ``seed``. Its test experiences carry the
    same ids and stream name, so Avalanche's metrics (forgetting, BWT) pair an
    evaluation on the subset with a later one on the full ``benchmark.test_stream``.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    test = benchmark.original_test_dataset
    keep = _balanced_subset(torch.as_tensor(list(test.targets)), per_class,
                            torch.Generator().manual_seed(seed))
    with preserved_global_rng():
        subset = nc_benchmark(benchmark.original_train_dataset, test.subset(keep.tolist()),
                              n_experiences=benchmark.n_experiences, task_labels=False,
                              fixed_class_order=benchmark.classes_order_original_ids,
                              class_ids_from_zero_in_each_exp=False)
    for name in ("fine_to_coarse", "train_indices", "validation_indices", "fine_label_names", "coarse_label_names"):
        if hasattr(benchmark, name):
            setattr(subset, name, getattr(benchmark, name))
    if subset.original_classes_in_exp != benchmark.original_classes_in_exp:
        raise ValueError("the test subset benchmark does not reproduce the experiences of "
                         "`benchmark` (was it built with task labels or remapped class ids?)")
    return subset
