"""dataset_loader_demo: every Dataset against direct slicing, samplers against their definitions.

The quick end-to-end run of the script (figures, exact repeat with one seed) is in test_reliability.py.
"""

from __future__ import annotations

import collections
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, clean_env, readme_quotes, run_script, unprinted_quotes
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, Dataset

import dataset_loader_demo as dl
from lesson_harness import BENCHMARK_THREADS, NOISY_MARK, TIMING_HEADERS, Timing, timing_note


class WorkerDraws(Dataset):
    """Item i: (the id of the worker that made it, a draw from torch's, NumPy's and Python's global RNG)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int):
        info = torch.utils.data.get_worker_info()
        return (torch.tensor(-1 if info is None else info.id), torch.rand(()), torch.tensor(np.random.rand()),
                torch.tensor(random.random()))


def test_labelled_tensor_dataset_items_transform_and_bad_sizes():
    inputs, targets = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    dataset = dl.LabelledTensorDataset(inputs, targets)
    assert len(dataset) == 6
    for i in (0, 3, -1):
        x, y = dataset[i]
        torch.testing.assert_close(x, inputs[i], rtol=0, atol=0)
        assert y.item() == targets[i].item()
    with pytest.raises(IndexError, match="index 6 is out of range for a dataset of length 6"):
        dataset[6]
    doubled = dataset.with_transform(lambda x: 2 * x)
    assert doubled.inputs.data_ptr() == inputs.data_ptr()  # shared, not copied
    torch.testing.assert_close(doubled[4][0], 2 * inputs[4], rtol=0, atol=0)
    torch.testing.assert_close(dataset[4][0], inputs[4], rtol=0, atol=0)  # the original keeps no transform
    with pytest.raises(ValueError, match="inputs has 6 rows but targets has 5"):
        dl.LabelledTensorDataset(inputs, targets[:5])


def test_synthetic_dataset_items_and_split():
    raw = dl.SyntheticDataset(120, 5, 3, seed=1)
    assert len(raw) == 120
    x, y = raw[7]
    assert x.shape == (5,) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(raw.targets.tolist()) == {0, 1, 2}
    train_idx, val_idx = dl.split_indices(120, 0.25, torch.Generator().manual_seed(0))
    assert sorted(train_idx + val_idx) == list(range(120)) and len(val_idx) == 30
    assert len(dl.split_indices(10, 0.25)[1]) == round(10 * 0.25)
    assert dl.split_indices(50, 0.2, torch.Generator().manual_seed(0)) != dl.split_indices(
        50, 0.2, torch.Generator().manual_seed(1))
    assert dl.split_indices(50, 0.2, torch.Generator().manual_seed(0)) == dl.split_indices(
        50, 0.2, torch.Generator().manual_seed(0))  # the split follows the generator, not the global seed


def test_synthetic_dataset_respects_class_weights_and_rejects_bad_sizes():
    imbalanced = dl.SyntheticDataset(1000, 4, 2, seed=0, class_weights=(0.9, 0.1))
    assert abs((imbalanced.targets == 1).float().mean().item() - 0.1) < 0.03
    with pytest.raises(ValueError, match="n_classes=1"):
        dl.SyntheticDataset(10, 4, 1)


def test_standardize_uses_the_training_rows_only():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(50, 3, generator=gen) * torch.tensor([1.0, 2.0, 3.0]) + 4
    features[40:] += 100  # validation rows far off: statistics over all rows would differ a lot
    train_idx = list(range(40))
    standardize = dl.Standardize.fit(features[train_idx])
    train = features[:40].double().numpy()
    stats = dl.standardisation_stats(features, train_idx, standardize)
    np.testing.assert_allclose(stats["raw mean"], train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["raw std"], train.std(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(stats["standardised mean"], 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["standardised std"], 1.0, rtol=1e-6)
    assert stats["raw max |mean|"] == pytest.approx(np.abs(train.mean(0)).max(), rel=1e-6)
    assert stats["standardised max |mean|"] < 1e-6
    scaled = standardize(features[45]).double().numpy()
    np.testing.assert_allclose(scaled, (features[45].double().numpy() - train.mean(0)) / train.std(0, ddof=1),
                               rtol=1e-5)


def test_standardisation_stats_report_the_largest_absolute_mean():
    features = torch.tensor([[-6.0, 1.0], [-4.0, 3.0], [-5.0, 2.0]])  # column means -5 and 2
    identity = dl.Standardize(torch.zeros(2), torch.ones(2))
    stats = dl.standardisation_stats(features, [0, 1, 2], identity)
    assert stats["raw max |mean|"] == stats["standardised max |mean|"] == pytest.approx(5.0, rel=1e-12)


def test_standardize_fitted_on_the_training_split_centres_those_rows_only():
    raw = dl.SyntheticDataset(dl.QUICK.n_samples, dl.QUICK.n_features, dl.QUICK.n_classes, seed=0)
    train_idx, val_idx = dl.split_indices(len(raw), dl.VAL_FRACTION, torch.Generator().manual_seed(0))
    assert len(val_idx) == round(dl.QUICK.n_samples * dl.VAL_FRACTION) and not set(train_idx) & set(val_idx)
    standardize = dl.Standardize.fit(raw.inputs[train_idx])
    stats = dl.standardisation_stats(raw.inputs, train_idx, standardize)
    assert stats["standardised max |mean|"] < 1e-6  # fitted on all rows, the train means would be ~1e-2
    np.testing.assert_allclose(stats["standardised std"], 1.0, rtol=1e-5)
    everything = dl.standardisation_stats(raw.inputs, train_idx, dl.Standardize.fit(raw.inputs))
    assert everything["standardised max |mean|"] > 1e-3  # statistics of all rows do not centre the training rows


def test_gaussian_noise_has_the_stated_std_and_optional_clamp():
    torch.manual_seed(0)
    x = torch.full((200_000,), 0.5)
    noise = dl.AddGaussianNoise(0.2)(x) - x
    # standard error of a std estimate from n samples: std / sqrt(2n) ≈ 3e-4; allow 5 of them
    assert noise.std().item() == pytest.approx(0.2, abs=5 * 0.2 / math.sqrt(4e5))
    assert abs(noise.mean().item()) < 5 * 0.2 / math.sqrt(2e5)
    clamped = dl.AddGaussianNoise(0.5, clamp=(0.0, 1.0))(x)
    assert clamped.min().item() == 0.0 and clamped.max().item() == 1.0  # 0.5 ± 0.5 is crossed often
    # P(0.5 + 0.5 Z < 0) = Φ(-1) ≈ 0.1587: that share lands exactly on the lower bound
    assert (clamped == 0).double().mean().item() == pytest.approx(0.1587, abs=0.005)
    torch.manual_seed(1)
    clamped = dl.AddGaussianNoise(0.5, clamp=(0.0, 1.0))(x)
    torch.manual_seed(1)
    torch.testing.assert_close(clamped, dl.AddGaussianNoise(0.5)(x).clamp(0.0, 1.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="std=-1"):
        dl.AddGaussianNoise(-1)
    with pytest.raises(ValueError, match=r"clamp=\(1.0, 0.0\)"):
        dl.AddGaussianNoise(0.1, clamp=(1.0, 0.0))


def test_digits_dataset_items_and_augmentations_keep_shape_and_range():
    from sklearn.datasets import load_digits

    digits = dl.DigitsDataset()
    reference = load_digits()
    assert len(digits) == 1797
    image, label = digits[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
    np.testing.assert_allclose(digits[5][0].squeeze(0).numpy(), reference.images[5] / 16.0, rtol=0, atol=1e-7)
    assert dl.class_counts(digits.targets, 10) == np.bincount(reference.target, minlength=10).tolist()
    torch.manual_seed(0)
    augmented = digits.with_transform(dl.digits_augmentation())
    changed = 0
    for i in range(50):
        img, _ = augmented[i]
        assert img.shape == (1, 8, 8) and 0.0 <= img.min().item() and img.max().item() <= 1.0
        changed += not torch.equal(img, digits[i][0])
    assert changed == 50
    labels, rows = dl.digit_examples(digits, augmented, draws=2)
    assert labels == list(range(10)) and len(rows) == 3
    assert all(torch.equal(image, digits.inputs[reference.target.tolist().index(d)]) for d, image in enumerate(rows[0]))
    assert not torch.equal(rows[1][0], rows[2][0])  # two draws of the augmentation differ


def test_random_shift_moves_pixels_by_at_most_the_shift():
    image = torch.zeros(1, 8, 8)
    image[0, 4, 4] = 1.0
    torch.manual_seed(0)
    moves = set()
    for _ in range(60):
        (row, col) = dl.RandomShift(1)(image)[0].nonzero()[0].tolist()
        moves.add((row - 4, col - 4))
    assert moves == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_time_series_windows_match_sliding_window_view():
    series = np.arange(30, dtype=np.float32) ** 1.5
    dataset = dl.TimeSeriesDataset(series, window=5, horizon=3)
    assert len(dataset) == 30 - 5 - 3 + 1
    windows = sliding_window_view(series, 5 + 3)  # (items, window + horizon)
    assert len(windows) == len(dataset)
    for i in range(-len(dataset), len(dataset)):  # negative indices count from the end, as in NumPy
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
    assert dataset.vocab == sorted(set(text))  # sorted: token ids do not depend on PYTHONHASHSEED
    assert dataset.decode(dataset.encode(text)) == text
    assert dataset.decode(dataset.encode("東京 🚀 café")) == "東京 🚀 café"
    for i in (0, 17, len(dataset) - 1):
        x, y = dataset[i]
        assert dataset.decode(x) == text[i:i + 10]
        assert dataset.decode(y) == text[i + 1:i + 11]
    x, y = dataset[-1]  # negative indices count from the end, as in a list
    assert dataset.decode(x) == text[-11:-1] and dataset.decode(y) == text[-10:]
    with pytest.raises(ValueError, match="'Ω'"):
        dataset.encode("Ω")
    with pytest.raises(ValueError, match="seq_len"):
        dl.CharTextDataset("abc", seq_len=3)


def test_memmap_dataset_equals_the_array_with_and_without_workers(tmp_path):
    array = np.random.default_rng(0).standard_normal((257, 6)).astype(np.float32)
    path = dl.write_memmap(tmp_path / "rows.f32", array)
    assert path.stat().st_size == array.nbytes
    dataset = dl.MemmapDataset(path, 6)
    assert len(dataset) == 257
    np.testing.assert_array_equal(dataset[100].numpy(), array[100])
    for workers in (0, 2):
        np.testing.assert_array_equal(dl.loaded_through_workers(dataset, 64, workers).numpy(), array)


def test_memmap_rejects_a_partial_row(tmp_path):
    path = tmp_path / "bad.f32"
    path.write_bytes(b"\0" * (4 * 6 * 3 + 4))  # three rows and one stray float
    with pytest.raises(ValueError, match="not a whole number of 6-feature"):
        dl.MemmapDataset(path, 6)


def _proc_status_kib(*keys: str) -> dict[str, int] | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE))
    return {key: int(found[key]) for key in keys} if all(key in found for key in keys) else None


def test_resident_memory_reads_proc_status_in_bytes():
    fields = _proc_status_kib("VmRSS", "RssAnon", "RssFile", "RssShmem")
    if fields is None:
        pytest.skip("/proc/self/status has no RssAnon/RssFile here")
    resident = dl.resident_memory()
    vm_rss = fields["VmRSS"] * 1024  # VmRSS = RssAnon + RssFile + RssShmem
    assert set(resident) == {"anonymous", "file-backed"}
    assert abs(resident["anonymous"] + resident["file-backed"] - vm_rss) < 4 * 2**20
    assert abs(resident["anonymous"] - fields["RssAnon"] * 1024) < 4 * 2**20


_FOOTPRINT_IN_A_FRESH_PROCESS = """
import json, sys
import dataset_loader_demo as dl
print(json.dumps(dl.memmap_footprint(sys.argv[1], int(sys.argv[2]))))
"""


def test_memmap_footprint_resident_memory_vs_heap(tmp_path):
    """Measured in a fresh process, as the lesson runs: a test worker that has freed memory before may hand
    the copy pages that are already resident, and then resident memory does not grow (seen under xdist)."""
    rows, features = 36 * 2**20 // (4 * 4096), 4096  # 36 MiB: above glibc's 32 MiB mmap threshold
    path = dl.write_memmap(tmp_path / "rows.f32", np.ones((rows, features), dtype=np.float32))
    size = path.stat().st_size
    done = subprocess.run([sys.executable, "-c", _FOOTPRINT_IN_A_FRESH_PROCESS, str(path), str(features)],
                          capture_output=True, text=True, timeout=120, env=clean_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    footprint = json.loads(done.stdout)
    copy, mapped = footprint["in-memory copy"], footprint["memory map"]
    assert size <= copy["tracemalloc peak"] < 1.05 * size  # tracemalloc sees the copy...
    assert mapped["tracemalloc peak"] < size / 100  # ...but not the mapped pages
    if _proc_status_kib("RssAnon", "RssFile") is None:
        pytest.skip("/proc/self/status has no RssAnon/RssFile here")
    # Generous bounds for other allocations; 0.98 fails if only part of each row is read (the kernel maps the
    # neighbours of a touched page, so touching one value per 16 KiB row already makes ~94% resident).
    assert 0.98 * size < copy["RSS anonymous"] < 1.05 * size, footprint
    assert abs(copy["RSS file-backed"]) < 0.02 * size, footprint
    assert 0.98 * size < mapped["RSS file-backed"] < 1.05 * size, footprint  # every row read: all resident
    assert abs(mapped["RSS anonymous"]) < 0.02 * size, footprint


def test_a_mapped_file_on_tmpfs_counts_as_file_backed():
    shm = Path("/dev/shm")
    if _proc_status_kib("RssAnon", "RssFile", "RssShmem") is None or not shm.is_dir():
        pytest.skip("needs /proc/self/status with RssShmem and a tmpfs at /dev/shm")
    path = shm / f"dataset_loader_test_{id(shm)}.f32"
    try:
        dl.write_memmap(path, np.ones((512, 4096), dtype=np.float32))  # 8 MiB
        footprint = dl.memmap_footprint(path, 4096)
    finally:
        path.unlink(missing_ok=True)
    assert 0.98 * 8 * 2**20 < footprint["memory map"]["RSS file-backed"] < 1.05 * 8 * 2**20  # as RssShmem


def test_pad_collate_matches_hand_padding_and_default_collate_fails():
    batch = [(torch.tensor([1.0, 2.0]), torch.tensor(0)), (torch.tensor([3.0, 4.0, 5.0, 6.0]), torch.tensor(1)),
             (torch.tensor([7.0]), torch.tensor(2))]
    padded, lengths, targets = dl.pad_collate(batch)
    assert lengths.tolist() == [2, 4, 1] and targets.tolist() == [0, 1, 2]
    torch.testing.assert_close(padded, torch.tensor([[1.0, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="empty batch"):
        dl.pad_collate([])
    dataset = dl.VariableLengthDataset(20, seed=3)
    items = [dataset[i] for i in range(5)]
    padded, lengths, targets = next(iter(DataLoader(dataset, batch_size=5, collate_fn=dl.pad_collate)))
    expected = torch.zeros(5, max(len(s) for s, _ in items))
    for row, (sequence, _) in enumerate(items):
        expected[row, :len(sequence)] = sequence
    torch.testing.assert_close(padded, expected, rtol=0, atol=0)
    assert lengths.tolist() == [len(s) for s, _ in items]
    torch.testing.assert_close(targets, torch.stack([s.sum() for s, _ in items]), rtol=0, atol=0)
    assert {len(s) for s in dl.VariableLengthDataset(300).sequences} == set(range(3, 13))  # lengths 3..12
    assert dl.default_collate_error(dataset, 5).startswith("stack expects each tensor to be equal size")
    assert dl.default_collate_error(dl.LabelledTensorDataset(torch.zeros(4, 2), torch.zeros(4)), 2) == ""


def test_class_counts_match_numpy_bincount():
    targets = torch.tensor([2, 0, 2, 2, 1, 0, 2])
    assert dl.class_counts(targets, 4) == np.bincount(targets.numpy(), minlength=4).tolist() == [2, 1, 4, 0]


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


def test_weighted_class_counts_against_bincount_and_the_balanced_expectation():
    targets = torch.tensor([0] * 1400 + [1] * 400 + [2] * 140 + [3] * 60)
    counts = dl.weighted_class_counts(targets, 4, seed=0)
    assert counts["dataset"] == np.bincount(targets.numpy()).tolist()
    n = len(targets)
    assert sum(counts["weighted sampler"]) == n  # one epoch: as many draws as samples
    tolerance = 5 * math.sqrt(0.25 * 0.75 * n)  # binomial(n, 1/4) counts, 5 standard deviations
    assert all(abs(c - n / 4) < tolerance for c in counts["weighted sampler"])
    assert dl.weighted_class_counts(targets, 4, seed=0) == counts
    assert dl.weighted_class_counts(targets, 4, seed=1) != counts


@pytest.mark.parametrize(("n", "replicas"), [(12, 3), (40, 4), (10, 3), (9, 1)])
def test_distributed_shards_follow_the_documented_algorithm(n, replicas):
    per_rank = math.ceil(n / replicas)
    for epoch in (0, 1):
        shards = dl.distributed_shards(n, replicas, epoch=epoch, seed=3)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        order += order[:per_rank * replicas - n]  # an uneven split repeats the first indices
        assert shards == [order[rank::replicas] for rank in range(replicas)]
        assert sorted(set(i for s in shards for i in s)) == list(range(n))
    if replicas > 1:
        assert dl.distributed_shards(n, replicas, epoch=0) != dl.distributed_shards(n, replicas, epoch=1)


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (5, 8)])
def test_batching_facts_match_the_arithmetic(n, batch_size):
    dataset = dl.LabelledTensorDataset(torch.zeros(n, 3), torch.arange(n))
    facts = dl.batching_facts(dataset, batch_size, seed=0)
    assert facts["x shape"] == (min(batch_size, n), 3) and facts["y shape"] == (min(batch_size, n),)
    assert facts["batches"] == math.ceil(n / batch_size)
    assert facts["last batch"] == n - (math.ceil(n / batch_size) - 1) * batch_size
    assert facts["batches with drop_last"] == n // batch_size


def test_shuffled_orders_differ_across_epochs_and_repeat_with_the_seed():
    n = 40
    dataset = dl.LabelledTensorDataset(torch.zeros(n, 1), torch.arange(n))  # label = index
    orders = dl.first_batch_labels(dataset, n, seed=5, epochs=3)  # one batch = the whole epoch's order
    assert all(sorted(order) == list(range(n)) for order in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert dl.first_batch_labels(dataset, n, seed=5, epochs=3) == orders
    assert dl.first_batch_labels(dataset, n, seed=6, epochs=3)[0] != orders[0]


def _worker_draws(seed: int) -> dict[int, torch.Tensor]:
    loader = dl.make_loader(WorkerDraws(), 2, shuffle=False, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
    batches = [torch.stack(batch, dim=1) for batch in loader]  # (2, 4): worker id, torch, NumPy, random
    del loader
    draws = torch.cat(batches)
    return {worker: draws[draws[:, 0] == worker, 1:] for worker in (0, 1)}


def test_worker_rng_streams_differ_across_workers_and_repeat_across_runs():
    first, again, other = _worker_draws(7), _worker_draws(7), _worker_draws(8)
    for column in range(3):  # torch, NumPy and Python's random: each seeded per worker by DataLoader
        assert not torch.equal(first[0][:, column], first[1][:, column])
        assert not torch.equal(first[0][:, column], other[0][:, column])
    for worker in (0, 1):
        torch.testing.assert_close(first[worker], again[worker], rtol=0, atol=0)


def test_seeded_workers_repeat_random_augmentation():
    noisy = dl.LabelledTensorDataset(torch.zeros(64, 4), torch.zeros(64), dl.AddGaussianNoise(1.0))
    first = dl.augmented_epoch_checksums(noisy, 16, 2, seed=1)
    assert len(first) == 4
    assert dl.augmented_epoch_checksums(noisy, 16, 2, seed=1) == first
    assert dl.augmented_epoch_checksums(noisy, 16, 2, seed=2) != first


def test_what_spawned_workers_unpickle_is_small_and_lives_in_this_module(tmp_path):
    """A spawn or forkserver worker unpickles its dataset: the augmented digits and the memory map (quick mode
    reads the map without workers) must refer to classes this module defines, never to __main__, and the
    map must travel as its path, not as the array it has opened."""
    import pickle

    augmented = dl.DigitsDataset().with_transform(dl.digits_augmentation())
    payload = pickle.dumps(augmented)
    assert b"__main__" not in payload and b"dataset_loader_demo" in payload
    torch.manual_seed(0)
    first = augmented[5][0]
    torch.manual_seed(0)
    torch.testing.assert_close(pickle.loads(payload)[5][0], first, rtol=0, atol=0)

    array = np.arange(4_000, dtype=np.float32).reshape(1_000, 4)
    mapped = dl.MemmapDataset(dl.write_memmap(tmp_path / "rows.f32", array), 4)
    assert mapped[3].tolist() == array[3].tolist()  # the map is open now
    payload = pickle.dumps(mapped)
    assert len(payload) < 1_000 < array.nbytes and b"__main__" not in payload
    np.testing.assert_array_equal(pickle.loads(payload)[999].numpy(), array[999])
    # Seeded random augmentation repeats only through seeded workers (without any it draws from torch's
    # global generator), so both modes start at least one.
    assert dl.QUICK.augment_workers >= 1 and dl.FULL.augment_workers >= 1


def test_pin_memory_only_for_cuda():
    dataset = dl.LabelledTensorDataset(torch.zeros(20, 4), torch.zeros(20))
    assert dl.make_loader(dataset, 4, device=torch.device("cpu")).pin_memory is False
    assert dl.make_loader(dataset, 4, device=torch.device("cuda")).pin_memory is True
    assert dl.make_loader(dataset, 4, num_workers=2).timeout == dl.LOADER_TIMEOUT_S


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (5, 8)])
def test_fast_path_covers_every_sample_once_per_epoch(n, batch_size):
    X = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (n, 1): row i holds i
    y = torch.arange(n)
    loader = dl.FastBatchLoader(X, y, batch_size, generator=torch.Generator().manual_seed(0))
    assert len(loader) == math.ceil(n / batch_size)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(yb) <= batch_size for _, yb in batches)
        assert all(torch.equal(xb.squeeze(1), yb.float()) for xb, yb in batches)
        epochs.append(torch.cat([yb for _, yb in batches]).tolist())
        assert sorted(epochs[-1]) == list(range(n))
    if n > 5:
        assert epochs[0] != epochs[1] and epochs[0] != list(range(n))  # shuffled, differently each epoch
    ordered = dl.FastBatchLoader(X, y, batch_size, shuffle=False)
    assert torch.cat([yb for _, yb in ordered]).tolist() == list(range(n))


def test_batch_sampler_loader_covers_every_sample():
    X = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    loader = dl.batch_sampler_loader(torch.utils.data.TensorDataset(X, torch.arange(50)), 16)
    assert [len(y) for _, y in loader] == [16, 16, 16, 2]
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == list(range(50))


def _fake_benchmark(*timings: Timing):
    """A stand-in for benchmark that runs fn once and returns the given Timings in turn (the last repeats).

    The threads each call asked for are kept in `fake.threads`."""
    remaining = list(timings)

    def fake(fn, device="cpu", min_run_time=0.2, threads=BENCHMARK_THREADS) -> Timing:
        fn()
        fake.threads.append(threads)
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    fake.threads = []
    return fake


def _timing(median: float, iqr: float = 0.0, noisy: bool = False) -> Timing:
    return Timing(median, iqr, BENCHMARK_THREADS, noisy)


def test_loader_throughput_counts_samples_and_returns_the_epoch_timing(monkeypatch):
    epoch = _timing(0.01, 5e-4)
    fake = _fake_benchmark(epoch)
    monkeypatch.setattr(dl, "benchmark", fake)
    loader = dl.FastBatchLoader(torch.zeros(100, 2), torch.zeros(100), 32)  # 4 batches
    assert dl.loader_throughput(loader) == (100, epoch)  # samples, not batches
    assert fake.threads == [BENCHMARK_THREADS] == [1]


def test_time_breakdown_divides_median_and_iqr_by_the_batch_size(monkeypatch):
    fake = _fake_benchmark(_timing(2e-3, 1e-4, noisy=True))
    monkeypatch.setattr(dl, "benchmark", fake)
    breakdown = dl.time_breakdown(256, 4, 32, min_run_time=0.01)
    assert list(breakdown) == ["__getitem__ per sample", "default_collate per sample", "X[idx], y[idx] per sample"]
    for timing in breakdown.values():
        assert timing.median == pytest.approx(2e-3 / 32, rel=1e-12) and timing.iqr == pytest.approx(1e-4 / 32)
        assert timing.noisy and timing.threads == 1  # the mark and the thread count survive the division
    assert fake.threads == [1, 1, 1]


def test_throughput_table_rates_and_speedups_are_ratios_of_medians(monkeypatch):
    # per batch size, in the table's order: default, BatchSampler, fast path; the default at batch 128 is noisy
    medians = (0.04, 0.01, 0.001, 0.02, 0.004, 0.0005)
    timings = [_timing(m, m / 50, noisy=(i == 3)) for i, m in enumerate(medians)]
    fake = _fake_benchmark(*timings)
    monkeypatch.setattr(dl, "benchmark", fake)
    rows = dl.throughput_table(256, 4, [32, 128], [0], min_run_time=0.01)
    assert [(r["batch_size"], r["loader"]) for r in rows] == [
        (b, name) for b in (32, 128) for name in ("default, 0 workers", "BatchSampler, batch_size=None",
                                                  "fast path (X[idx])")]
    assert [r["epoch"] for r in rows] == timings
    assert [r["samples_per_s"] for r in rows] == pytest.approx([256 / m for m in medians], rel=1e-12)
    default = [medians[0]] * 3 + [medians[3]] * 3
    assert [r["vs default"] for r in rows] == pytest.approx([d / m for d, m in zip(default, medians)], rel=1e-12)
    # a ratio is as noisy as either of its two timings: the noisy default marks its whole batch size
    assert [r["vs default noisy"] for r in rows] == [False, False, False, True, True, True]
    assert fake.threads == [BENCHMARK_THREADS] * 6


def test_printed_timing_tables_show_the_spread_the_mark_and_the_thread_note(capsys):
    quiet, noisy = _timing(1e-6, 2e-8), _timing(2e-6, 4e-7, noisy=True)
    dl.print_breakdown({"__getitem__ per sample": quiet, "default_collate per sample": noisy}, 128)
    lines = capsys.readouterr().out.strip().splitlines()  # title, headers, rule, rows, note
    assert re.split(r"\s{2,}", lines[1]) == ["step", *TIMING_HEADERS]
    getitem, collate = (next(line for line in lines if line.startswith(name)) for name in ("__get", "default"))
    assert getitem.split()[-2:] == ["2", "%"] and collate.split()[-3:] == ["20", "%", NOISY_MARK]
    assert timing_note(1) in lines
    rows = [{"batch_size": 32, "loader": dl.DEFAULT_LOADER, "workers": 0, "samples": 100, "epoch": quiet,
             "samples_per_s": 100 / quiet.median},
            {"batch_size": 32, "loader": "fast path (X[idx])", "workers": 0, "samples": 100, "epoch": noisy,
             "samples_per_s": 100 / noisy.median}]
    dl.print_throughput(dl.add_speedups(rows), 100)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.split(r"\s{2,}", lines[1]) == ["batch", "loader", "samples/s", f"epoch {TIMING_HEADERS[1]}",
                                             "vs default"]
    default_line, fast_line = lines[3], lines[4]
    assert default_line.split()[-3:] == ["2", "%", "1.0×"] and "100,000,000" in default_line
    assert fast_line.split()[-5:] == ["20", "%", NOISY_MARK, "0.5×", NOISY_MARK] and "50,000,000" in fast_line
    assert timing_note(1) in lines
    assert not any("worker processes" in line for line in lines)  # no loader with workers, no note about them
    dl.print_throughput(dl.add_speedups([*rows, {**rows[1], "loader": "default, 2 workers", "workers": 2}]), 100)
    assert "each on one thread" in capsys.readouterr().out


def test_the_throughput_cell_prints_spreads_and_thread_notes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dl, "benchmark", _fake_benchmark(_timing(1e-3, 2e-5)))  # what run_script's cells call
    assert run_script("dataset_loader_demo", ["--quick", "--device", "cpu", "--plots-dir", str(tmp_path)],
                      only=("time_breakdown(",)) == 0
    out = capsys.readouterr().out
    assert out.count(timing_note(BENCHMARK_THREADS)) == 2  # under the breakdown and under the throughput table
    assert "epoch IQR" in out and "Where the time goes at batch" in out
    assert "2 %" in out  # the fake's IQR, as a share of its median


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows[rows[:, 0].argsort()]  # the first column is distinct in these tests


def _stream_rows(n: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.randperm(n, generator=gen).unsqueeze(1).float(), torch.randn(n, 2, generator=gen)], 1)


def test_stream_dataset_yields_the_rows_in_order():
    rows = _stream_rows()
    streamed = list(dl.StreamDataset(rows))
    assert len(streamed) == len(rows) and all(torch.equal(a, b) for a, b in zip(streamed, rows))
    assert not hasattr(dl.StreamDataset(rows), "__len__")  # a DataLoader would warn when workers exceed a length


MANY_WORKERS = pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # 2 cores here


def test_what_spawned_stream_workers_unpickle_lives_in_this_module():
    import pickle

    for thing in (dl.StreamDataset(_stream_rows()), dl.ShardedStreamDataset(_stream_rows()), dl.shard_stream_in_worker):
        payload = pickle.dumps(thing)
        assert b"__main__" not in payload and b"dataset_loader_demo" in payload


@MANY_WORKERS
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_a_sharded_stream_delivers_every_row_exactly_once(workers):
    rows = _stream_rows(10)  # 10 rows: three workers get uneven shards
    for dataset, init_fn in ((dl.ShardedStreamDataset(rows), None), (dl.StreamDataset(rows),
                                                                    dl.shard_stream_in_worker)):
        loader = DataLoader(dataset, batch_size=3, num_workers=workers, worker_init_fn=init_fn)
        delivered = torch.cat(list(loader))
        torch.testing.assert_close(_sorted_rows(delivered), _sorted_rows(rows), rtol=0, atol=0)


@MANY_WORKERS
def test_the_naive_stream_delivers_each_row_once_per_worker():
    rows = _stream_rows(10)
    delivered = torch.cat(list(DataLoader(dl.StreamDataset(rows), batch_size=3, num_workers=3)))
    assert len(delivered) == 30
    torch.testing.assert_close(_sorted_rows(delivered), _sorted_rows(rows).repeat_interleave(3, dim=0), rtol=0, atol=0)
    assert collections.Counter(delivered[:, 0].tolist()) == {float(i): 3 for i in range(10)}


@MANY_WORKERS
def test_read_stream_counts_arrivals_and_batches_come_from_the_workers_in_turn():
    n, k, batch = 12, 3, 2
    rows = torch.arange(n * 3).reshape(n, 3)
    assert dl.read_stream(dl.StreamDataset(rows), batch, 2)["arrivals"] == [2] * n
    sharded = dl.read_stream(dl.ShardedStreamDataset(rows), batch, k)
    assert sharded["arrivals"] == [1] * n
    # each worker's batches are chunks of rows[id::k]; the loader takes one batch from each worker in turn
    chunks = [[list(range(w, n, k))[i:i + batch] for i in range(0, len(range(w, n, k)), batch)] for w in range(k)]
    expected = [i for round_ in zip(*chunks) for chunk in round_ for i in chunk]
    assert sharded["order"] == expected and expected != list(range(n))
    configured = dl.read_stream(dl.StreamDataset(rows), batch, k, worker_init_fn=dl.shard_stream_in_worker,
                                prefetch_factor=dl.STREAM_PREFETCH)
    assert configured["order"] == expected  # the same shards, set from outside the class


def test_arrival_order_against_a_dictionary_of_rows():
    rows = _stream_rows(6)
    picks = [4, 0, 4, 5, 1]
    index = {tuple(row.tolist()): i for i, row in enumerate(rows)}
    assert dl.arrival_order(rows[picks], rows) == [index[tuple(r.tolist())] for r in rows[picks]] == picks
    with pytest.raises(ValueError, match="distinct"):
        dl.arrival_order(rows[:2], torch.cat([rows, rows[:1]]))
    with pytest.raises(ValueError, match="not a row of the stream"):
        dl.arrival_order(rows[:2] + 100, rows)


class _CountingSampler(torch.utils.data.Sampler):
    """range(n), counting the indices handed out so far."""

    def __init__(self, n: int):
        self.n, self.handed_out = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.handed_out += 1
            yield i


def test_prefetch_factor_requests_batches_ahead_and_needs_workers():
    sampler = _CountingSampler(100)
    loader = DataLoader(range(100), batch_size=2, sampler=sampler, num_workers=2, prefetch_factor=3)
    iterator = iter(loader)
    assert sampler.handed_out == 2 * 3 * 2  # num_workers × prefetch_factor batches of 2, before any is used
    next(iterator)
    assert sampler.handed_out == (2 * 3 + 1) * 2  # one used, one more requested
    del iterator
    assert DataLoader(range(4), num_workers=2).prefetch_factor == 2 and DataLoader(range(4)).prefetch_factor is None
    assert dl.prefetch_without_workers_error().startswith("prefetch_factor")
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(range(4), num_workers=0, prefetch_factor=2)


def test_quick_mode_starts_one_stream_worker_and_the_full_run_shows_the_duplicates():
    assert sum(dl.QUICK.stream_worker_counts) * 2 + dl.QUICK.init_fn_workers <= 1  # each a process under spawn
    assert max(dl.FULL.stream_worker_counts) >= 2 and 0 in dl.FULL.stream_worker_counts


def test_the_stream_cell_shows_the_duplicates_and_the_fix(tmp_path, capsys):
    assert run_script("dataset_loader_demo", ["--device", "cpu", "--plots-dir", str(tmp_path)],
                      only=("stream_reads(",)) == 0
    table = {tuple(re.split(r"\s{2,}", line.strip())[:2]): re.split(r"\s{2,}", line.strip())[2:]
             for line in capsys.readouterr().out.splitlines()}
    k = max(dl.FULL.stream_worker_counts)
    n = dl.STREAM_ROWS
    assert table["StreamDataset", str(k)] == [str(k * n), f"{k} (every row)"]
    assert table["ShardedStreamDataset", str(k)] == [str(n), "1 (every row)"]
    assert table["StreamDataset + worker_init_fn", str(dl.FULL.init_fn_workers)] == [str(n), "1 (every row)"]


def test_readme_numbers_match_the_full_run(tmp_path, capsys, monkeypatch):
    """The sampling lines the README quotes are what a full run's sampling section prints. (Its memory lines are
    checked against the committed notebook by test_readme; the memory test above runs in a fresh process.)"""
    monkeypatch.setattr(dl, "save_figure", lambda fig, name, plots_dir: None)
    assert run_script("dataset_loader_demo", ["--device", "cpu", "--plots-dir", str(tmp_path)],
                      only=("weighted_class_counts(",)) == 0
    memory = ("approach ", "in-memory copy ", "memory map ")
    quotes = [quote for quote in readme_quotes("dataset_loader_demo") if not quote.startswith(memory)]
    assert len(quotes) >= 3 and not unprinted_quotes(quotes, capsys.readouterr().out)


def test_worker_counts_are_printed_in_words():
    assert [dl._workers(n) for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
