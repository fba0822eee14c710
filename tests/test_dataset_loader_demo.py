"""dataset_loader_demo: every Dataset against direct slicing, samplers against their definitions.

The quick end-to-end run of main() (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, default_collate

import dataset_loader_demo as dl


def test_synthetic_dataset_items_and_transform():
    raw = dl.SyntheticDataset(120, 5, 3, seed=1)
    assert len(raw) == 120
    x, y = raw[7]
    assert x.shape == (5,) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, raw.features[7], rtol=0, atol=0)
    assert set(raw.targets.tolist()) == {0, 1, 2}
    train_idx, val_idx = dl.split_indices(120, 0.25, torch.Generator().manual_seed(0))
    assert sorted(train_idx + val_idx) == list(range(120)) and len(val_idx) == 30
    standardize = dl.Standardize.fit(raw.features[train_idx])
    scaled = dl.SyntheticDataset(120, 5, 3, seed=1, transform=standardize)
    train_rows = torch.stack([scaled[i][0] for i in train_idx])
    torch.testing.assert_close(train_rows.mean(0), torch.zeros(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(train_rows.std(0), torch.ones(5), rtol=1e-5, atol=1e-5)
    assert raw[-1][1] == raw[119][1]
    with pytest.raises(IndexError, match="index 120"):
        raw[120]


def test_synthetic_dataset_respects_class_weights_and_rejects_bad_sizes():
    imbalanced = dl.SyntheticDataset(1000, 4, 2, seed=0, class_weights=[0.9, 0.1])
    assert abs((imbalanced.targets == 1).float().mean().item() - 0.1) < 0.03
    with pytest.raises(ValueError, match="n_classes=1"):
        dl.SyntheticDataset(10, 4, 1)


def test_digits_dataset_items_and_augmentations_keep_shape_and_range():
    digits = dl.DigitsDataset()
    assert len(digits) == 1797
    image, label = digits[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    from sklearn.datasets import load_digits
    np.testing.assert_allclose(digits[5][0].squeeze(0).numpy(), load_digits().images[5] / 16.0, rtol=0, atol=1e-7)
    torch.manual_seed(0)
    augmented = dl.DigitsDataset(transform=dl.Compose(dl.RandomShift(1), dl.ClampedNoise(0.1)))
    for i in range(50):
        img, _ = augmented[i]
        assert img.shape == (1, 8, 8) and 0.0 <= img.min().item() and img.max().item() <= 1.0


def test_random_shift_moves_pixels_by_at_most_the_shift():
    image = torch.zeros(1, 8, 8)
    image[0, 4, 4] = 1.0
    torch.manual_seed(0)
    for _ in range(30):
        (rows, cols) = dl.RandomShift(1)(image)[0].nonzero()[0].tolist()
        assert abs(rows - 4) <= 1 and abs(cols - 4) <= 1


def test_time_series_windows_match_sliding_window_view():
    series = np.arange(30, dtype=np.float32) ** 1.5
    dataset = dl.TimeSeriesDataset(series, window=5, horizon=3)
    assert len(dataset) == 30 - 5 - 3 + 1
    windows = sliding_window_view(series, 5 + 3)  # (items, window + horizon)
    for i in range(len(dataset)):
        x, y = dataset[i]
        np.testing.assert_array_equal(x.numpy(), windows[i, :5])
        np.testing.assert_array_equal(y.numpy(), windows[i, 5:])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@pytest.mark.parametrize(("window", "horizon", "message"), [
    (28, 3, r"window=28 \+ horizon=3 is longer than the series \(length 30\)"),
    (0, 1, "must both be positive"), (5, 0, "must both be positive"),
])
def test_time_series_rejects_windows_that_do_not_fit(window, horizon, message):
    with pytest.raises(ValueError, match=message):
        dl.TimeSeriesDataset(np.zeros(30), window, horizon)


def test_char_dataset_round_trips_and_shifts_targets():
    text = dl.SAMPLE_TEXT
    dataset = dl.CharTextDataset(text, seq_len=10)
    assert len(dataset) == len(text) - 10
    assert dataset.decode(dataset.encode(text)) == text
    assert dataset.decode(dataset.encode("東京 🚀 café")) == "東京 🚀 café"
    for i in (0, 17, len(dataset) - 1):
        x, y = dataset[i]
        assert dataset.decode(x) == text[i:i + 10]
        assert dataset.decode(y) == text[i + 1:i + 11]
        torch.testing.assert_close(x[1:], y[:-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="'Ω'"):
        dataset.encode("Ω")
    with pytest.raises(ValueError, match="seq_len"):
        dl.CharTextDataset("abc", seq_len=3)


def test_memmap_dataset_equals_the_array_with_and_without_workers(tmp_path):
    array = np.random.default_rng(0).standard_normal((257, 6)).astype(np.float32)
    path = dl.write_memmap(tmp_path / "rows.f32", array)
    dataset = dl.MemmapDataset(path, 6)
    assert len(dataset) == 257
    np.testing.assert_array_equal(dataset[100].numpy(), array[100])
    for workers in (0, 2):
        loaded = torch.cat(list(dl.make_loader(dataset, 64, shuffle=False, num_workers=workers)))
        np.testing.assert_array_equal(loaded.numpy(), array)


def test_memmap_rejects_a_partial_row(tmp_path):
    path = tmp_path / "bad.f32"
    path.write_bytes(b"\0" * (4 * 6 * 3 + 4))  # three rows and one stray float
    with pytest.raises(ValueError, match="not a whole number of 6-feature"):
        dl.MemmapDataset(path, 6)


def test_memmap_footprint_is_smaller_than_loading(tmp_path):
    path = dl.write_memmap(tmp_path / "rows.f32", np.zeros((5000, 8), dtype=np.float32))
    footprint = dl.memmap_footprint(path, 8)
    assert footprint["file on disk"] == 5000 * 8 * 4
    assert footprint["in-memory array"] >= footprint["file on disk"]
    assert footprint["memory-mapped dataset"] < footprint["file on disk"] / 10


def test_pad_collate_shapes_lengths_and_values():
    batch = [(torch.tensor([1.0, 2.0]), torch.tensor(0)), (torch.tensor([3.0, 4.0, 5.0, 6.0]), torch.tensor(1)),
             (torch.tensor([7.0]), torch.tensor(2))]
    padded, lengths, targets = dl.pad_collate(batch)
    assert padded.shape == (3, 4)
    assert lengths.tolist() == [2, 4, 1] and targets.tolist() == [0, 1, 2]
    torch.testing.assert_close(padded, torch.tensor([[1.0, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]]), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        default_collate(batch)
    dataset = dl.VariableLengthDataset(20)
    padded, lengths, targets = next(iter(DataLoader(dataset, batch_size=5, collate_fn=dl.pad_collate)))
    for row, length, target in zip(padded, lengths, targets):
        torch.testing.assert_close(row[:length].sum(), target, rtol=1e-6, atol=1e-6)
        assert torch.all(row[length:] == 0)


def test_weighted_sampler_balances_classes():
    targets = torch.tensor([0] * 900 + [1] * 80 + [2] * 20)
    sampler = dl.make_weighted_sampler(targets, num_samples=30_000, generator=torch.Generator().manual_seed(0))
    drawn = targets[torch.tensor(list(sampler))]
    fractions = torch.bincount(drawn, minlength=3).double() / len(drawn)
    # Each class has probability 1/3: binomial standard error sqrt(p(1-p)/n) ≈ 0.0027; allow 5 of them.
    tolerance = 5 * math.sqrt((1 / 3) * (2 / 3) / 30_000)
    torch.testing.assert_close(fractions, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="integer"):
        dl.make_weighted_sampler(torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize(("n", "replicas"), [(12, 3), (40, 4), (9, 1)])
def test_distributed_shards_are_disjoint_and_cover_everything(n, replicas):
    for epoch in (0, 1):
        shards = dl.distributed_shards(n, replicas, epoch=epoch, seed=3)
        assert len(shards) == replicas and all(len(s) == n // replicas for s in shards)
        assert sorted(i for s in shards for i in s) == list(range(n))
    if replicas > 1:
        assert dl.distributed_shards(n, replicas, epoch=0) != dl.distributed_shards(n, replicas, epoch=1)


def test_seeded_loaders_repeat_and_different_seeds_differ():
    dataset = dl.SyntheticDataset(200, 4, 2, seed=0)

    def order(seed: int) -> list[int]:
        loader = dl.make_loader(dataset, 16, generator=torch.Generator().manual_seed(seed))
        return torch.cat([y for _, y in loader]).tolist() + [float(x.sum()) for x, _ in loader]

    assert order(5) == order(5)
    assert order(5) != order(6)


def test_seeded_workers_repeat_random_augmentation():
    noisy = dl.SyntheticDataset(64, 4, 2, transform=dl.AddGaussianNoise(1.0))

    def epoch(seed: int) -> torch.Tensor:
        loader = dl.make_loader(noisy, 16, num_workers=2, generator=torch.Generator().manual_seed(seed))
        return torch.cat([x for x, _ in loader])

    torch.testing.assert_close(epoch(1), epoch(1), rtol=0, atol=0)
    assert not torch.equal(epoch(1), epoch(2))


def test_pin_memory_only_for_cuda():
    dataset = dl.SyntheticDataset(20, 4, 2)
    assert dl.make_loader(dataset, 4, device=torch.device("cpu")).pin_memory is False
    assert dl.make_loader(dataset, 4, device=torch.device("cuda")).pin_memory is True


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (5, 8)])
def test_fast_path_covers_every_sample_once_per_epoch(n, batch_size):
    X = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (n, 1): row i holds i
    y = torch.arange(n)
    loader = dl.fast_batch_loader(X, y, batch_size, generator=torch.Generator().manual_seed(0))
    assert len(loader) == math.ceil(n / batch_size)
    for _ in range(2):  # two epochs, two different orders, each complete
        seen = torch.cat([yb for _, yb in loader])
        assert sorted(seen.tolist()) == list(range(n))
        assert all(torch.equal(xb.squeeze(1), yb.float()) for xb, yb in loader)


def test_batch_sampler_loader_covers_every_sample():
    X = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    loader = dl.batch_sampler_loader(torch.utils.data.TensorDataset(X, torch.arange(50)), 16)
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == list(range(50))


def test_throughput_numbers_are_positive_and_finite():
    rows = dl.throughput_table(256, 4, [32], [0], min_run_time=0.005)
    assert [r["loader"] for r in rows] == ["default, 0 workers", "BatchSampler, batch_size=None",
                                           "fast path (X[idx])"]
    assert all(math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0 for r in rows)
    assert all(v > 0 for v in dl.time_breakdown(256, 4, 32, min_run_time=0.005).values())
