"""Tests for avalanche_balanced.data: loading, Split CIFAR-100 and batched augmentation."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

from avalanche_balanced import data as data_module
from avalanche_balanced.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CorruptDataError,
    cifar_augment,
    cifar_normalize,
    default_data_root,
    fine_to_coarse_table,
    load_cifar100,
    split_cifar100,
    with_test_subset,
)


def _checksums(images: torch.Tensor) -> list:
    """Order-free fingerprint of a uint8 image batch: one sorted int per image."""
    weights = torch.arange(1, images[0].numel() + 1, dtype=torch.long)
    return sorted((images.flatten(1).long() * weights).sum(1).tolist())


def _stream_arrays(stream):
    """One (x, y, t) batch per experience, holding all of its samples."""
    out = []
    for exp in stream:
        loader = torch.utils.data.DataLoader(exp.dataset, batch_size=len(exp.dataset))
        out.append(next(iter(loader)))
    return out


# ---------------------------------------------------------------- loading, real data


@pytest.fixture(scope="module")
def real_train(cifar_root):
    return load_cifar100(cifar_root, train=True)


@pytest.fixture(scope="module")
def real_test(cifar_root):
    return load_cifar100(cifar_root, train=False)


def test_real_shapes_dtypes_and_class_counts(real_train, real_test):
    for split, n in ((real_train, 50000), (real_test, 10000)):
        assert split.images.shape == (n, 3, 32, 32)
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.fine.dtype == split.coarse.dtype == torch.int64
        assert split.fine.shape == split.coarse.shape == (n,)
        assert torch.bincount(split.fine, minlength=100).eq(n // 100).all()
        assert torch.bincount(split.coarse, minlength=20).eq(n // 20).all()


def test_real_fine_to_coarse_matches_meta(cifar_root, real_train, real_test):
    meta_path = cifar_root / "cifar100_meta.json"
    if not meta_path.is_file():
        pytest.skip("no cifar100_meta.json")
    expected = torch.tensor(json.loads(meta_path.read_text())["fine_to_coarse"])
    assert torch.equal(fine_to_coarse_table(real_train.fine, real_train.coarse), expected)
    assert torch.equal(fine_to_coarse_table(real_test.fine, real_test.coarse), expected)


def test_real_images_are_chw_of_the_npz_hwc(cifar_root, real_train):
    npz_path = cifar_root / "cifar100_train.npz"
    if not npz_path.is_file():
        pytest.skip("real copy is not in the npz layout")
    with np.load(npz_path) as npz:
        first_hwc = torch.from_numpy(npz["x"][0])
    assert torch.equal(real_train.images[0], first_hwc.permute(2, 0, 1))
    assert torch.equal(real_train.images[0, :, 5, 7], first_hwc[5, 7])  # one pixel's RGB


# ------------------------------------------------------------ loading, synthetic data


@pytest.mark.parametrize("train", [True, False])
def test_both_layouts_give_identical_arrays(npz_cifar_dir, torchvision_cifar_dir, fake_cifar,
                                            train):
    x, fine, coarse = fake_cifar["train" if train else "test"]
    from_npz = load_cifar100(npz_cifar_dir, train=train)
    from_pickles = load_cifar100(torchvision_cifar_dir, train=train)
    from_inner = load_cifar100(torchvision_cifar_dir / "cifar-100-python", train=train)
    for arrays in (from_pickles, from_inner):
        for a, b in zip(from_npz, arrays):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(from_npz.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert torch.equal(from_npz.fine, torch.from_numpy(fine))
    assert torch.equal(from_npz.coarse, torch.from_numpy(coarse))


def test_missing_folder_names_path_and_layouts(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_cifar100(missing)
    message = str(info.value)
    for part in (str(missing), "cifar100_train.npz", "cifar-100-python", "download=True"):
        assert part in message


def test_missing_split_file(npz_cifar_dir):
    (npz_cifar_dir / "cifar100_test.npz").unlink()
    load_cifar100(npz_cifar_dir, train=True)
    with pytest.raises(FileNotFoundError, match="cifar100_test.npz"):
        load_cifar100(npz_cifar_dir, train=False)


def test_truncated_npz_names_the_file(npz_cifar_dir):
    path = npz_cifar_dir / "cifar100_train.npz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cifar100_train.npz") as info:
        load_cifar100(npz_cifar_dir)
    assert isinstance(info.value, CorruptDataError)


@pytest.mark.parametrize("arrays, problem", [
    ({"x": np.zeros((4, 32, 32), np.uint8), "y": np.zeros(4), "coarse": np.zeros(4)}, "'x'"),
    ({"x": np.zeros((4, 32, 32, 3), np.uint8), "y": np.zeros(4, np.int64)}, "coarse"),
    ({"x": np.zeros((4, 32, 32, 3), np.uint8), "y": np.zeros(3, np.int64),
      "coarse": np.zeros(4, np.int64)}, "fine labels"),
    ({"x": np.zeros((4, 32, 32, 3), np.uint8), "y": np.full(4, 100),
      "coarse": np.zeros(4, np.int64)}, "outside"),
])
def test_malformed_npz_names_file_and_problem(tmp_path, arrays, problem):
    np.savez(tmp_path / "cifar100_train.npz", **arrays)
    with pytest.raises(CorruptDataError) as info:
        load_cifar100(tmp_path)
    assert "cifar100_train.npz" in str(info.value) and problem in str(info.value)


def test_pickle_missing_key_names_the_file(torchvision_cifar_dir):
    path = torchvision_cifar_dir / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        entry = pickle.load(f)
    del entry[b"coarse_labels"]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match="coarse_labels") as info:
        load_cifar100(torchvision_cifar_dir)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_pickle_names_the_file(torchvision_cifar_dir, damage):
    path = torchvision_cifar_dir / "cifar-100-python" / "test"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else b"not a pickle" * 10)
    with pytest.raises(CorruptDataError, match=str(path)):
        load_cifar100(torchvision_cifar_dir, train=False)


def test_pickle_cannot_run_code(torchvision_cifar_dir, tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = torchvision_cifar_dir / "cifar-100-python" / "train"
    path.write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(CorruptDataError, match="refusing"):
        load_cifar100(torchvision_cifar_dir)
    assert not marker.exists()


def test_download_goes_through_torchvision(monkeypatch, tmp_path, torchvision_cifar_dir):
    import torchvision.datasets

    calls = []

    def fake_cifar100(root, train, download):
        calls.append((root, train, download))
        shutil.copytree(torchvision_cifar_dir / "cifar-100-python", f"{root}/cifar-100-python")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    root = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError):
        load_cifar100(root)  # no download without asking
    arrays = load_cifar100(root, train=False, download=True)
    assert calls == [(str(root), False, True)]
    assert torch.equal(arrays.images, load_cifar100(torchvision_cifar_dir, train=False).images)


def test_default_data_root(monkeypatch, tmp_path):
    from avalanche.benchmarks.datasets.dataset_utils import default_dataset_location

    monkeypatch.setenv("AVALANCHE_BALANCED_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("AVALANCHE_BALANCED_DATA")
    monkeypatch.setattr(data_module, "_SHARED_COPY", tmp_path)
    assert default_data_root() == tmp_path
    monkeypatch.setattr(data_module, "_SHARED_COPY", tmp_path / "absent")
    assert default_data_root() == default_dataset_location("cifar100")


def test_fine_to_coarse_table_validates():
    fine = torch.arange(100).repeat(2)
    coarse = fine // 5
    assert torch.equal(fine_to_coarse_table(fine, coarse), torch.arange(100) // 5)
    clashing = coarse.clone()
    clashing[150] = 19 - clashing[150]  # fine label 50 now has two superclasses
    with pytest.raises(ValueError, match="fine label 50"):
        fine_to_coarse_table(fine, clashing)
    with pytest.raises(ValueError, match="never occur"):
        fine_to_coarse_table(fine[fine != 7], coarse[fine != 7])
    with pytest.raises(ValueError, match="equal length"):
        fine_to_coarse_table(fine, coarse[:-1])


# ---------------------------------------------------------------- split_cifar100


@pytest.fixture(scope="module")
def real_bench(cifar_root):
    return split_cifar100(5, root=cifar_root, seed=0, per_class=10)


def test_split_partitions_classes(real_bench):
    assert len(real_bench.train_stream) == len(real_bench.test_stream) == 5
    order = list(real_bench.classes_order)
    assert sorted(order) == list(range(100))
    for i, exp in enumerate(real_bench.train_stream):
        assert set(exp.classes_in_this_experience) == set(order[20 * i: 20 * (i + 1)])
        assert exp.task_label == 0


def test_split_per_class_subset(real_bench, real_train):
    idx = real_bench.train_indices
    assert idx.shape == (1000,) and torch.equal(idx, idx.unique())
    assert torch.bincount(real_train.fine[idx], minlength=100).eq(10).all()
    batches = _stream_arrays(real_bench.train_stream)
    targets = torch.cat([y for _, y, _ in batches])
    assert torch.bincount(targets, minlength=100).eq(10).all()
    images = torch.cat([x for x, _, _ in batches])
    # The stream holds exactly the selected images (its own order groups them by class).
    assert _checksums(images.mul(255).round().to(torch.uint8)) == _checksums(
        real_train.images[idx])


def test_split_samples_are_unnormalised_floats(real_bench):
    x, _, _ = _stream_arrays([real_bench.train_stream[0]])[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5


def test_split_test_stream_is_full(real_bench, real_test):
    batches = _stream_arrays(real_bench.test_stream)
    targets = torch.cat([y for _, y, _ in batches])
    assert targets.numel() == 10000
    assert torch.bincount(targets, minlength=100).eq(100).all()
    for exp, (_, y, _) in zip(real_bench.test_stream, batches):
        assert set(y.tolist()) == set(exp.classes_in_this_experience)


def test_split_coarse_table_and_names(cifar_root, real_bench, real_train, real_test):
    table = real_bench.fine_to_coarse
    assert table.dtype == torch.int64 and table.shape == (100,)
    assert torch.equal(table[real_train.fine], real_train.coarse)
    assert torch.equal(table[real_test.fine], real_test.coarse)
    if (cifar_root / "cifar100_meta.json").is_file():
        assert real_bench.fine_label_names[0] == "apple"
        assert len(real_bench.coarse_label_names) == 20


@pytest.mark.long
def test_split_is_seeded_and_task_ids(cifar_root, real_bench):
    again = split_cifar100(5, root=cifar_root, seed=0, per_class=10, return_task_id=True)
    assert list(again.classes_order) == list(real_bench.classes_order)
    assert torch.equal(again.train_indices, real_bench.train_indices)
    assert [exp.task_label for exp in again.train_stream] == [0, 1, 2, 3, 4]
    for exp, (_, _, t) in zip(again.train_stream, _stream_arrays(again.train_stream)):
        assert t.eq(exp.current_experience).all()
    other = split_cifar100(5, root=cifar_root, seed=1, per_class=10)
    assert list(other.classes_order) != list(real_bench.classes_order)
    assert not torch.equal(other.train_indices, real_bench.train_indices)


@pytest.mark.parametrize("seed", [0, 3])
def test_split_class_order_matches_avalanche(npz_cifar_dir, fake_cifar, seed):
    ours = split_cifar100(4, root=npz_cifar_dir, seed=seed)
    x, fine, _ = fake_cifar["train"]
    xt, fine_t, _ = fake_cifar["test"]
    direct = nc_benchmark(
        _make_taskaware_tensor_classification_dataset(torch.zeros(len(x), 1),
                                                      torch.from_numpy(fine)),
        _make_taskaware_tensor_classification_dataset(torch.zeros(len(xt), 1),
                                                      torch.from_numpy(fine_t)),
        n_experiences=4, task_labels=False, seed=seed)
    assert list(ours.classes_order) == list(direct.classes_order)
    assert sum(len(exp.dataset) for exp in ours.train_stream) == 300  # per_class=None: all


def test_split_fixed_class_order_is_honoured(npz_cifar_dir):
    order = list(range(99, -1, -1))
    bench = split_cifar100(10, root=npz_cifar_dir, class_order=order, per_class=2)
    assert list(bench.classes_order) == order
    for i, exp in enumerate(bench.train_stream):
        assert set(exp.classes_in_this_experience) == set(order[10 * i: 10 * (i + 1)])
        assert len(exp.dataset) == 20


def test_split_natural_class_order_is_0_to_99(npz_cifar_dir):
    """SARL's authors train in the natural order 0..99, whatever the seed."""
    for seed in (0, 5):
        bench = split_cifar100(5, root=npz_cifar_dir, class_order="natural", per_class=2, seed=seed)
        assert list(bench.classes_order) == list(range(100))
        assert sorted(bench.train_stream[0].classes_in_this_experience) == list(range(20))


def test_split_per_class_larger_than_data(npz_cifar_dir):
    with pytest.raises(ValueError, match="only 3"):
        split_cifar100(root=npz_cifar_dir, per_class=4)


def test_split_leaves_the_global_rng_alone(npz_cifar_dir):
    """nc_benchmark re-seeds torch's global RNG; split_cifar100 must not pass that on to the run."""
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    split_cifar100(4, root=npz_cifar_dir, seed=7, per_class=2)
    with_test_subset(split_cifar100(4, root=npz_cifar_dir, seed=8), 1, seed=3)
    assert torch.equal(torch.rand(5), expected)


def test_validation_is_carved_from_training_images(npz_cifar_dir, fake_cifar):
    bench = split_cifar100(4, root=npz_cifar_dir, seed=5, per_class=1, validation_per_class=2)
    train_idx, val_idx = bench.train_indices, bench.validation_indices
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    x, fine, _ = fake_cifar["train"]
    assert sorted(fine[val_idx.numpy()].tolist()) == sorted(list(range(100)) * 2)
    assert sorted(fine[train_idx.numpy()].tolist()) == list(range(100))
    # the test stream holds exactly the validation images, as floats in [0, 1]
    _, ys, _ = zip(*_stream_arrays(bench.test_stream))
    xs = torch.cat([a for a, _, _ in _stream_arrays(bench.test_stream)])
    expected = torch.from_numpy(x[val_idx.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert sorted(map(tuple, xs.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
    # the class order does not depend on the validation split
    assert list(bench.classes_order) == list(split_cifar100(4, root=npz_cifar_dir, seed=5).classes_order)
    again = split_cifar100(4, root=npz_cifar_dir, seed=5, per_class=1, validation_per_class=2)
    assert torch.equal(again.validation_indices, val_idx) and torch.equal(again.train_indices, train_idx)


@pytest.mark.parametrize("kwargs, error", [
    ({"validation_per_class": 0}, "validation_per_class"),
    ({"validation_per_class": 500}, "validation_per_class"),
    ({"validation_per_class": 50, "per_class": 451}, "exceeds"),
    ({"validation_per_class": 5, "test_per_class": 5}, "test_per_class"),
])
def test_split_rejects_bad_validation(tmp_path, kwargs, error):
    with pytest.raises(ValueError, match=error):
        split_cifar100(root=tmp_path / "nowhere", **kwargs)


def _tensor_benchmark(seed):
    """10 classes, 4 training and 5 test images of 3 x 4 x 4 per class, in 5 experiences."""
    g = torch.Generator().manual_seed(0)

    def dataset(per_class):
        y = torch.arange(10).repeat_interleave(per_class)
        return _make_taskaware_tensor_classification_dataset(torch.rand(len(y), 3, 4, 4, generator=g), y)
    return nc_benchmark(dataset(4), dataset(5), n_experiences=5, task_labels=False, seed=seed)


def test_with_test_subset_keeps_the_experiences_and_subsets_each_test_experience():
    bench = _tensor_benchmark(seed=2)
    subset = with_test_subset(bench, 2, seed=7)
    assert subset.original_classes_in_exp == bench.original_classes_in_exp
    assert [e.current_experience for e in subset.test_stream] == list(range(5))
    for (x, y, _), (xs, ys, _) in zip(_stream_arrays(bench.train_stream), _stream_arrays(subset.train_stream)):
        assert torch.equal(x, xs) and torch.equal(y, ys)
    for exp, (x, y, _), (xs, ys, _) in zip(bench.test_stream, _stream_arrays(bench.test_stream),
                                           _stream_arrays(subset.test_stream)):
        assert sorted(ys.tolist()) == sorted(exp.classes_in_this_experience * 2)  # 2 of each class
        # every kept item is an item of the full test experience, with its label
        match = (xs.flatten(1)[:, None] == x.flatten(1)[None]).all(-1)
        assert match.any(1).all() and torch.equal(y[match.float().argmax(1)], ys)
        assert match.any(0).sum() == len(ys)  # no item kept twice


def test_with_test_subset_is_fixed_by_its_seed():
    bench = _tensor_benchmark(seed=2)
    first, again, other = (_stream_arrays(with_test_subset(bench, 2, seed=s).test_stream) for s in (7, 7, 8))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("per_class, error", [(0, "positive"), (True, "positive"), (1.5, "positive"),
                                              (6, "only 5")])
def test_with_test_subset_rejects_bad_per_class(per_class, error):
    with pytest.raises(ValueError, match=error):
        with_test_subset(_tensor_benchmark(seed=0), per_class)


@pytest.mark.parametrize("kwargs", [
    {"n_experiences": 3}, {"n_experiences": 0}, {"n_experiences": 2.0},
    {"n_experiences": True}, {"per_class": 0}, {"per_class": 501}, {"per_class": 2.5},
    {"class_order": list(range(99))}, {"class_order": [0] * 100},
    {"class_order": list(range(1, 101))}, {"class_order": [float(c) for c in range(100)]},
    {"class_order": "shuffled"},
])
def test_split_rejects_bad_arguments_before_loading(tmp_path, kwargs):
    # root does not exist: a ValueError proves validation runs before any file access.
    with pytest.raises(ValueError):
        split_cifar100(root=tmp_path / "nowhere", **kwargs)


# ------------------------------------------------------------------- augmentation


def _denormalize(x):
    mean = torch.tensor(CIFAR100_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return x * std + mean


def test_augment_is_a_padded_crop_and_flip_of_each_input():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    raw = _denormalize(cifar_augment(x, generator=torch.Generator().manual_seed(1)))
    # Every 32x32 window of the zero-padded input: B x 3 x 9 x 9 x 32 x 32.
    windows = torch.nn.functional.pad(x, (4,) * 4).unfold(2, 32, 1).unfold(3, 32, 1)
    target = raw[:, :, None, None]
    plain = (windows - target).abs().amax(dim=(1, 4, 5)) < 1e-5  # B x 9 x 9
    flipped = (windows.flip(-1) - target).abs().amax(dim=(1, 4, 5)) < 1e-5
    matches = torch.stack([plain, flipped], 1).flatten(1)  # B x 162
    assert matches.any(1).all(), "some output is not a crop (+flip) of its input"
    # Draws vary across the batch: both flip states and many offsets occur.
    chosen = matches.float().argmax(1)
    assert flipped.flatten(1).any(1).any() and plain.flatten(1).any(1).any()
    assert chosen.unique().numel() > 10


def test_augment_deterministic_with_generator():
    x = torch.rand(8, 3, 32, 32)
    a = cifar_augment(x, generator=torch.Generator().manual_seed(5))
    b = cifar_augment(x, generator=torch.Generator().manual_seed(5))
    c = cifar_augment(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, cifar_normalize(x))  # pixels really moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_keeps_shape_dtype_and_layout(dtype):
    x = torch.rand(4, 3, 32, 32, dtype=dtype)
    out = cifar_augment(x)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    out_cl = cifar_augment(x.contiguous(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert cifar_normalize(x).dtype == dtype


def test_normalize_centres_real_data(real_train):
    x = real_train.images[::10].float() / 255  # 5000 images spread over the set
    z = cifar_normalize(x)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.02
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.02


@pytest.mark.parametrize("fn", [cifar_augment, cifar_normalize])
@pytest.mark.parametrize("bad", [
    torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 32, 32, 3),
    torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
])
def test_augment_rejects_bad_input(fn, bad):
    with pytest.raises(ValueError, match="expects"):
        fn(bad)


# ------------------------------------------------------------ long-tailed streams (issue 12)
def test_long_tailed_split_on_synthetic_data(npz_cifar_dir):
    from avalanche_balanced.long_tail import long_tail_counts
    bench = split_cifar100(5, root=npz_cifar_dir, seed=4, per_class=3, imbalance_ratio=0.34,
                           imbalance_order="ordered")
    order = list(bench.classes_order)
    assert torch.equal(bench.class_counts, long_tail_counts(order, 3, 0.34, "ordered"))
    seen = torch.cat([torch.as_tensor(list(exp.dataset.targets)) for exp in bench.train_stream])
    assert torch.equal(torch.bincount(seen, minlength=100), bench.class_counts)  # the kept images
    first, last = bench.train_stream[0].classes_in_this_experience, bench.train_stream[4].classes_in_this_experience
    assert bench.class_counts[first].min() >= bench.class_counts[last].max()  # head first
    assert sum(len(e.dataset) for e in bench.test_stream) == 100  # the test set stays balanced (1 per class)
    assert (bench.imbalance_ratio, bench.imbalance_order, bench.n_max) == (0.34, "ordered", 3)
    again = split_cifar100(5, root=npz_cifar_dir, seed=4, per_class=3, imbalance_ratio=0.34,
                           imbalance_order="ordered")
    assert torch.equal(again.train_indices, bench.train_indices)  # the seed decides the images
    shuffled = split_cifar100(5, root=npz_cifar_dir, seed=4, per_class=3, imbalance_ratio=0.34)
    assert sorted(shuffled.class_counts.tolist()) == sorted(bench.class_counts.tolist())
    assert not torch.equal(shuffled.class_counts, bench.class_counts)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        split_cifar100(5, root=npz_cifar_dir, imbalance_ratio=2.0)
    with pytest.raises(ValueError, match="imbalance_order"):
        split_cifar100(5, root=npz_cifar_dir, imbalance_ratio=0.1, imbalance_order="reversed")


@pytest.mark.long
def test_long_tailed_split_on_cifar100(cifar_root):
    for order in ("shuffled", "ordered"):
        bench = split_cifar100(5, root=cifar_root, seed=0, imbalance_ratio=0.01, imbalance_order=order,
                               test_per_class=2)
        counts = bench.class_counts
        assert int(counts.max()) == 500 and int(counts.min()) == 5
        assert 10_500 < int(counts.sum()) < 11_000 and sum(len(e.dataset) for e in bench.train_stream) == counts.sum()
        assert sum(len(e.dataset) for e in bench.test_stream) == 200  # balanced: 2 per class


def test_long_tailed_split_with_validation_images(cifar_root):
    """split_cifar100(validation_per_class=50, imbalance_ratio=0.01) raised: the head class asked
    for 500 of the 450 images left. The cap now shrinks by the held-out count."""
    bench = split_cifar100(5, root=cifar_root, seed=0, validation_per_class=50, imbalance_ratio=0.01,
                           imbalance_order="ordered")
    assert bench.n_max == 450 and int(bench.class_counts.max()) == 450 and int(bench.class_counts.min()) == 4
    train = set(bench.train_indices.tolist())
    assert not train & set(bench.validation_indices.tolist())  # validation images are never trained on
    assert sum(len(e.dataset) for e in bench.test_stream) == 100 * 50  # the validation stream is balanced


@pytest.mark.parametrize("seed", [0, 1])
def test_superclass_skew_keeps_crowded_superclasses_whole_and_one_class_of_the_others(npz_cifar_dir, seed):
    bench = split_cifar100(5, root=npz_cifar_dir, seed=seed, superclass_skew=10)
    kept, crowded, table = bench.classes_kept, bench.crowded_classes, bench.fine_to_coarse
    assert kept.numel() == 5 * 10 + (20 - 10) == 60
    per_superclass = torch.bincount(table[kept], minlength=20)
    assert sorted(per_superclass.tolist()) == [1] * 10 + [5] * 10
    assert torch.equal(crowded, per_superclass[table] == 5)  # crowded: the superclasses kept whole
    counts = bench.class_counts
    assert bool((counts[kept] == 3).all()) and int(counts.sum()) == 3 * 60  # equal images per kept class
    seen = sorted(c for e in bench.train_stream for c in e.classes_in_this_experience)
    assert seen == kept.tolist() and all(len(e.classes_in_this_experience) == 12 for e in bench.train_stream)
    tested = {int(y) for e in bench.test_stream for y in e.dataset.targets}
    assert tested == set(kept.tolist())
    again = split_cifar100(5, root=npz_cifar_dir, seed=seed, superclass_skew=10)
    assert torch.equal(again.classes_kept, kept) and torch.equal(again.train_indices, bench.train_indices)


def test_superclass_skew_differs_by_seed_and_keeps_validation_apart(npz_cifar_dir):
    a = split_cifar100(5, root=npz_cifar_dir, seed=0, superclass_skew=10)
    b = split_cifar100(5, root=npz_cifar_dir, seed=1, superclass_skew=10)
    assert not torch.equal(a.crowded_classes, b.crowded_classes)
    v = split_cifar100(5, root=npz_cifar_dir, seed=0, superclass_skew=10, validation_per_class=1)
    assert torch.equal(v.classes_kept, a.classes_kept)
    assert not set(v.train_indices.tolist()) & set(v.validation_indices.tolist())
    assert sum(len(e.dataset) for e in v.test_stream) == 60  # one held-out image per kept class
    plain = split_cifar100(5, root=npz_cifar_dir, seed=0)
    assert plain.classes_kept is None and plain.crowded_classes is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(superclass_skew=0), r"superclass_skew .* \[1, 19\], got 0"),
    (dict(superclass_skew=20), r"superclass_skew .* got 20"),
    (dict(superclass_skew=True), r"superclass_skew .* got True"),
    (dict(superclass_skew=3), r"n_experiences \(5\) must divide the 32 classes"),
    (dict(superclass_skew=10, imbalance_ratio=0.1), "superclass_skew and imbalance_ratio"),
])
def test_superclass_skew_bad_arguments_are_named(npz_cifar_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_cifar100(5, root=npz_cifar_dir, seed=0, **kwargs)
