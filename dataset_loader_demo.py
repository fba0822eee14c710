"""Datasets and DataLoaders: five kinds of data, batching, sampling, collation and throughput.

Lesson 5 of the course. Run `python dataset_loader_demo.py` (add `--quick` for a smoke run).
It builds Datasets for tabular, image, time-series, text and memory-mapped data; shows the
DataLoader's batching, seeded shuffling, workers, padding collation, weighted and distributed
sampling; and measures where loading time goes and how a batched fast path removes it.
Figures: plots/dataset_loader_analysis.png, plots/digits_samples.png.
"""

from __future__ import annotations

import os
import random
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
)

from lesson_harness import (
    LessonContext,
    finish,
    fmt_seconds,
    fmt_timing,
    new_figure,
    print_section,
    print_table,
    run_lesson,
    save_figure,
    time_median,
)


@dataclass(frozen=True)
class Config:
    n_samples: int = 2_000  # rows in the synthetic tabular dataset
    n_features: int = 8  # its columns
    n_classes: int = 4  # its classes
    throughput_samples: int = 10_000  # rows loaded per epoch in the throughput benchmark
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256)  # batch sizes in the throughput benchmark
    worker_counts: tuple[int, ...] = (0, 2)  # num_workers values for the default DataLoader
    memmap_rows: int = 20_000  # rows written to the memory-mapped file
    min_run_time: float = 0.15  # seconds per throughput measurement


FULL = Config()
QUICK = Config(n_samples=400, throughput_samples=1_000, batch_sizes=(32, 128), memmap_rows=2_000, min_run_time=0.01)
LOADER_TIMEOUT_S = 60  # a worker that produces no batch for this long has hung: fail instead of waiting
SAMPLE_TEXT = (  # for the character-level dataset; includes non-ASCII so Unicode is exercised
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune. Naïve café owners in Zürich say «ça va» — "
    "and in 東京 they say こんにちは. 🚀 "
)


def _check_index(index: int, length: int) -> int:
    """Sequence-style indexing: negative counts from the end; out of range raises IndexError."""
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for a dataset of length {length}")
    return index % length


# %% [markdown]
# ## Tabular data, and transforms fitted on the training split
#
# A map-style Dataset needs `__len__` and `__getitem__(i)`. A transform is any callable applied
# per sample. Statistics for standardisation must come from the training split only: computing
# them on all the data leaks information about the validation set into training.

# %%
class SyntheticDataset(Dataset):
    """Gaussian class clusters (scikit-learn's make_classification): float32 features, int64 labels."""

    def __init__(self, n_samples: int, n_features: int, n_classes: int, transform: Callable | None = None,
                 seed: int = 0, class_weights: Sequence[float] | None = None):
        from sklearn.datasets import make_classification

        if n_samples < n_classes or n_classes < 2 or n_features < 2:
            raise ValueError(f"need n_samples ≥ n_classes ≥ 2 and n_features ≥ 2, got n_samples={n_samples}, "
                             f"n_features={n_features}, n_classes={n_classes}")
        X, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_features,
                                   n_redundant=0, n_classes=n_classes, n_clusters_per_class=1,
                                   weights=class_weights, random_state=seed)
        self.features = torch.from_numpy(X.astype(np.float32) * 3 + 5)  # (n, f), off-centre: worth standardising
        self.targets = torch.from_numpy(y.astype(np.int64))  # (n,)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = _check_index(index, len(self))
        x = self.features[index]
        return (self.transform(x) if self.transform else x), self.targets[index]


class Standardize:
    """(x − mean) / std with statistics fitted on the rows given to `fit` (the training split)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std.clamp_min(1e-12)

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardize:
        return cls(features.mean(dim=0), features.std(dim=0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class AddGaussianNoise:
    """Additive N(0, std²) noise, drawn from torch's RNG (which DataLoader seeds in every worker)."""

    def __init__(self, std: float):
        if std < 0:
            raise ValueError(f"noise std={std} must be non-negative")
        self.std = std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


class Compose:
    def __init__(self, *transforms: Callable):
        self.transforms = transforms

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


def split_indices(n: int, val_fraction: float, generator: torch.Generator | None = None) -> tuple[list, list]:
    order = torch.randperm(n, generator=generator).tolist()
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


# %% [markdown]
# ## Images: scikit-learn's 8×8 digits
#
# Images are (channels, height, width) float tensors, scaled to [0, 1]. Augmentations make new
# training images from old ones; they must keep shape and value range.

# %%
class DigitsDataset(Dataset):
    """1 797 handwritten digits shipped with scikit-learn: ((1, 8, 8) float32 in [0, 1], int64 label)."""

    def __init__(self, transform: Callable | None = None):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (n, 1, 8, 8)
        self.targets = torch.from_numpy(digits.target.astype(np.int64))  # (n,)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = _check_index(index, len(self))
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


class RandomShift:
    """Shift an image by up to `max_shift` pixels in each direction, filling with zeros."""

    def __init__(self, max_shift: int = 1):
        self.max_shift = max_shift

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        padded = torch.nn.functional.pad(image, (self.max_shift,) * 4)  # (1, 8 + 2m, 8 + 2m)
        m, h, w = self.max_shift, image.shape[-2], image.shape[-1]
        return padded[..., m - dy:m - dy + h, m - dx:m - dx + w]


class ClampedNoise:
    """Gaussian pixel noise, clamped back into [0, 1]."""

    def __init__(self, std: float = 0.05):
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image + self.std * torch.randn_like(image)).clamp(0.0, 1.0)


# %% [markdown]
# ## Time series: sliding windows
#
# Item i is a window of past values and the `horizon` values that follow it. The dataset holds
# one copy of the series; windows are views into it, made on demand.

# %%
class TimeSeriesDataset(Dataset):
    def __init__(self, series, window: int, horizon: int = 1):
        self.series = torch.as_tensor(np.asarray(series), dtype=torch.float32)
        if self.series.ndim != 1:
            raise ValueError(f"series must be 1-D, got shape {tuple(self.series.shape)}")
        if window < 1 or horizon < 1:
            raise ValueError(f"window={window} and horizon={horizon} must both be positive")
        if window + horizon > len(self.series):
            raise ValueError(f"window={window} + horizon={horizon} is longer than the series "
                             f"(length {len(self.series)})")
        self.window, self.horizon = window, horizon

    def __len__(self) -> int:
        return len(self.series) - self.window - self.horizon + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = _check_index(index, len(self))
        end = i + self.window
        return self.series[i:end], self.series[end:end + self.horizon]  # (window,), (horizon,)


def make_series(length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two sines and noise: something with structure for the windows to capture."""
    t = torch.arange(length, dtype=torch.float32)
    return torch.sin(t / 8) + 0.5 * torch.sin(t / 3) + 0.1 * torch.randn(length, generator=generator)


# %% [markdown]
# ## Text: character-level tokens
#
# The vocabulary is the set of characters in the text (Python strings are sequences of Unicode
# code points, so é, 東 and 🚀 are one token each). Item i is a sequence of `seq_len` tokens and
# the same sequence shifted by one: at every position the target is the next character.

# %%
class CharTextDataset(Dataset):
    def __init__(self, text: str, seq_len: int):
        if not 1 <= seq_len < len(text):
            raise ValueError(f"seq_len={seq_len} must be between 1 and len(text) - 1 = {len(text) - 1}")
        self.vocab = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.seq_len = seq_len
        self.data = self.encode(text)  # (len(text),)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown!r}")
        return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in tokens.tolist())

    def __len__(self) -> int:
        return len(self.data) - self.seq_len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = _check_index(index, len(self))
        return self.data[i:i + self.seq_len], self.data[i + 1:i + self.seq_len + 1]  # x, next-character targets


# %% [markdown]
# ## Memory-mapped data
#
# For data larger than memory, write it once as a raw float32 file and map it: `numpy.memmap`
# reads a row's bytes from disk (or the OS page cache) only when indexed. The dataset opens the
# map lazily, so each DataLoader worker opens its own instead of pickling the data.

# %%
def write_memmap(path: str | os.PathLike, array) -> Path:
    """Write a 2-D array as raw little-endian float32 rows."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"array must be 2-D (rows, features), got shape {array.shape}")
    array.astype("<f4").tofile(path)
    return Path(path)


class MemmapDataset(Dataset):
    def __init__(self, path: str | os.PathLike, n_features: int):
        self.path = Path(path)
        if n_features < 1:
            raise ValueError(f"n_features={n_features} must be positive")
        row_bytes = 4 * n_features
        size = self.path.stat().st_size
        if size % row_bytes:
            raise ValueError(f"{self.path} has {size} bytes, not a whole number of {n_features}-feature float32 "
                             f"rows ({row_bytes} bytes each)")
        self.n_features, self.n_rows = n_features, size // row_bytes
        self._rows: np.memmap | None = None  # opened on first access, in whichever process reads

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, index: int) -> torch.Tensor:
        index = _check_index(index, self.n_rows)
        if self._rows is None:
            # mode "c" (copy-on-write) gives writable arrays, which torch.from_numpy wants, and never
            # writes back to the file.
            self._rows = np.memmap(self.path, dtype="<f4", mode="c", shape=(self.n_rows, self.n_features))
        return torch.from_numpy(self._rows[index])  # shares the mapped row: no copy until collate

    def __getstate__(self):  # workers get the path, not an open map
        return {**self.__dict__, "_rows": None}


# %% [markdown]
# ## Collation: padding variable-length sequences
#
# `default_collate` stacks samples into a batch, which needs equal shapes. Sequences of
# different lengths must be padded to the longest in the batch; keep the true lengths so the
# model can ignore the padding (e.g. `pack_padded_sequence` or an attention mask).

# %%
def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(sequence (T_i, ...), target)] → (padded (B, T_max, ...), lengths (B,), targets (B, ...))."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    sequences, targets = zip(*batch)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return pad_sequence(list(sequences), batch_first=True, padding_value=0.0), lengths, default_collate(targets)


class VariableLengthDataset(Dataset):
    """Sequences of random length 3..12 with the sequence sum as the target."""

    def __init__(self, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 13, (n,), generator=gen).tolist()
        self.sequences = [torch.randn(length, generator=gen) for length in lengths]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int):
        sequence = self.sequences[_check_index(index, len(self))]
        return sequence, sequence.sum()


# %% [markdown]
# ## Sampling: balancing classes, sharding for distributed training
#
# A `WeightedRandomSampler` draws index i with probability ∝ weight[i]. Weighting each sample by
# 1 / (count of its class) makes every class equally likely: an imbalanced dataset is drawn
# balanced (with replacement, so minority samples repeat). `DistributedSampler` splits an epoch
# into one shard per process; `set_epoch` reshuffles, identically on every rank.

# %%
def make_weighted_sampler(targets, num_samples: int | None = None,
                          generator: torch.Generator | None = None) -> WeightedRandomSampler:
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or len(targets) == 0 or targets.is_floating_point():
        raise ValueError(f"targets must be a non-empty 1-D integer tensor, got shape {tuple(targets.shape)} "
                         f"and dtype {targets.dtype}")
    counts = torch.bincount(targets)
    weights = 1.0 / counts[targets].double()  # (n,): rarer class, larger weight
    return WeightedRandomSampler(weights, num_samples or len(targets), replacement=True, generator=generator)


def distributed_shards(n: int, num_replicas: int, epoch: int = 0, seed: int = 0) -> list[list[int]]:
    """The indices each rank gets in `epoch`, without any process group."""
    shards = []
    for rank in range(num_replicas):
        sampler = DistributedSampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards


# %% [markdown]
# ## DataLoader: seeds and workers
#
# `shuffle=True` draws the order from `generator=`: same seed, same order. With `num_workers>0`
# each worker is a separate process; DataLoader seeds torch in each from the generator, and
# `seed_worker` seeds NumPy and `random` too. On macOS and Windows workers are started with
# spawn, which re-imports this script: that is why all work sits under
# `if __name__ == "__main__":`. `pin_memory=True` only helps when copying to a GPU (and warns
# without one); `timeout=` makes a hung worker an error instead of a hang.

# %%
def seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32  # DataLoader already set torch's seed for this worker
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                generator: torch.Generator | None = None, device: torch.device | None = None, **kwargs) -> DataLoader:
    """A DataLoader with the safe defaults: seeded, seeded workers, a timeout, pinning only for CUDA."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator,
        worker_init_fn=seed_worker if num_workers else None, persistent_workers=num_workers > 0,
        timeout=LOADER_TIMEOUT_S if num_workers else 0,
        pin_memory=device is not None and device.type == "cuda", **kwargs,
    )


# %% [markdown]
# ## Throughput: where loading time goes, and the fast path
#
# The default DataLoader calls `__getitem__` once per sample and then `default_collate` stacks
# the samples: Python overhead per sample, not copying bytes, dominates. When the data is
# already a tensor in memory, index the whole batch at once: one `X[idx]` gather per batch.
# Workers help when `__getitem__` is expensive (decoding, augmentation); for cheap in-memory
# samples they add inter-process copying.

# %%
class FastBatchLoader:
    """Batches of in-memory tensors by one index operation each; every sample once per epoch."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                 generator: torch.Generator | None = None):
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.X, self.y, self.batch_size, self.shuffle, self.generator = X, y, batch_size, shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.X) // self.batch_size)  # ceil: the last batch may be short

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.X)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.X[idx], self.y[idx]  # (batch, f), (batch,)


def fast_batch_loader(X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                      generator: torch.Generator | None = None) -> FastBatchLoader:
    return FastBatchLoader(X, y, batch_size, shuffle, generator)


def batch_sampler_loader(dataset: TensorDataset, batch_size: int, generator: torch.Generator | None = None):
    """The middle road: a DataLoader whose sampler yields whole index lists, one __getitem__ per batch."""
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def loader_throughput(loader, min_run_time: float = 0.1) -> float:
    """Samples per second over full epochs (median of Timer runs)."""
    samples = sum(len(batch[0]) for batch in loader)  # one warm-up epoch that also counts the samples

    def epoch() -> None:
        for _ in loader:
            pass

    return samples / time_median(epoch, "cpu", min_run_time)


def throughput_table(n_samples: int, n_features: int, batch_sizes, worker_counts, min_run_time: float,
                     seed: int = 0) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, n_features, generator=gen)
    y = torch.randint(0, 4, (n_samples,), generator=gen)
    dataset = TensorDataset(X, y)
    rows = []
    factories = [(f"default, {w} workers", partial(make_loader, dataset, num_workers=w, generator=gen))
                 for w in worker_counts]
    factories += [("BatchSampler, batch_size=None", partial(batch_sampler_loader, dataset, generator=gen)),
                  ("fast path (X[idx])", partial(fast_batch_loader, X, y, generator=gen))]
    for batch_size in batch_sizes:
        for name, factory in factories:
            loader = factory(batch_size=batch_size)
            rows.append({"batch_size": batch_size, "loader": name,
                         "samples_per_s": loader_throughput(loader, min_run_time)})
            del loader  # shuts persistent workers down before anything else is measured
    return rows


def time_breakdown(n_samples: int, n_features: int, batch_size: int, min_run_time: float) -> dict[str, float]:
    """Seconds per sample spent in __getitem__ and in default_collate, vs one batched index."""
    X, y = torch.randn(n_samples, n_features), torch.randint(0, 4, (n_samples,))
    dataset = TensorDataset(X, y)
    samples = [dataset[i] for i in range(batch_size)]
    idx = torch.arange(batch_size)
    return {
        "__getitem__ per sample": time_median(lambda: [dataset[i] for i in range(batch_size)], "cpu",
                                              min_run_time) / batch_size,
        "default_collate per sample": time_median(lambda: default_collate(samples), "cpu", min_run_time) / batch_size,
        "X[idx], y[idx] per sample": time_median(lambda: (X[idx], y[idx]), "cpu", min_run_time) / batch_size,
    }


def memmap_footprint(path: Path, n_features: int) -> dict[str, int]:
    """Peak heap bytes (tracemalloc) to load the file into memory vs to read every row through the map."""
    tracemalloc.start()
    try:
        in_memory = np.fromfile(path, dtype="<f4").reshape(-1, n_features)
        _, loaded_peak = tracemalloc.get_traced_memory()
        del in_memory
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        dataset = MemmapDataset(path, n_features)
        checksum = 0.0
        for i in range(len(dataset)):
            checksum += float(dataset[i][0])
        _, mapped_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"in-memory array": loaded_peak, "memory-mapped dataset": max(mapped_peak - baseline, 0),
            "file on disk": path.stat().st_size}


# %% [markdown]
# ## Figures

# %%
def plot_analysis(synthetic, train_idx, standardize, series, window, horizon, class_counts, throughput, footprint):
    from matplotlib.ticker import NullLocator

    fig, axes = new_figure(2, 3, "Datasets and DataLoaders: data, transforms, sampling, throughput and memory")
    ax_classes, ax_stats, ax_series, ax_sampler, ax_speed, ax_memory = axes.flat

    counts = torch.bincount(synthetic.targets).tolist()
    bars = ax_classes.bar(range(len(counts)), counts, color="tab:blue")
    ax_classes.bar_label(bars)
    ax_classes.set(title="Synthetic data: samples per class", xlabel="class", ylabel="samples",
                   xticks=range(len(counts)))

    raw = synthetic.features[train_idx].numpy()
    standardized = standardize(synthetic.features[train_idx]).numpy()
    features = np.arange(raw.shape[1])
    ax_stats.errorbar(features - 0.15, raw.mean(0), yerr=raw.std(0), fmt="o", capsize=3, label="raw")
    ax_stats.errorbar(features + 0.15, standardized.mean(0), yerr=standardized.std(0), fmt="s", capsize=3,
                      label="standardised (train statistics)")
    ax_stats.set(title="Feature mean ± std, before and after the transform", xlabel="feature", ylabel="value",
                 xticks=features, ylim=(min(-3.0, float((raw.mean(0) - raw.std(0)).min()) - 1),
                                        float((raw.mean(0) + raw.std(0)).max()) + 5))
    ax_stats.legend(fontsize=8, loc="upper center", ncols=2)

    t = np.arange(len(series))
    ax_series.plot(t, series, color="grey", linewidth=1, label="series")
    for k, (start, color) in enumerate([(20, "tab:blue"), (60, "tab:orange")]):
        ax_series.axvspan(start, start + window, color=color, alpha=0.2, label=f"window of item {start}")
        ax_series.plot(range(start + window, start + window + horizon),
                       series[start + window:start + window + horizon], "o", color=color,
                       label=f"its {horizon} target(s)" if k == 0 else None)
    ax_series.set(title=f"Time series: window {window}, horizon {horizon}", xlabel="time step", ylabel="value",
                  xlim=(0, min(len(series), 150)), ylim=(float(series.min()) - 0.2, float(series.max()) + 1.2))
    ax_series.legend(fontsize=7, loc="upper center", ncols=2)

    classes = np.arange(len(class_counts["dataset"]))
    for offset, (name, values) in zip((-0.2, 0.2), class_counts.items()):
        ax_sampler.bar(classes + offset, np.array(values) / sum(values), 0.4, label=name)
    ax_sampler.axhline(1 / len(classes), color="black", linestyle="--", linewidth=1, label="balanced")
    ax_sampler.set(title="Imbalanced data: class frequencies", xlabel="class", ylabel="fraction of samples",
                   xticks=classes)
    ax_sampler.legend(fontsize=8)

    for loader in dict.fromkeys(r["loader"] for r in throughput):
        mine = [r for r in throughput if r["loader"] == loader]
        ax_speed.plot([r["batch_size"] for r in mine], [r["samples_per_s"] for r in mine], "o-", label=loader)
    ax_speed.set(xscale="log", yscale="log", title="Loader throughput (in-memory tensors)", xlabel="batch size",
                 ylabel="samples per second (log)")
    batch_sizes = sorted({r["batch_size"] for r in throughput})
    ax_speed.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax_speed.xaxis.set_minor_locator(NullLocator())
    rates = [r["samples_per_s"] for r in throughput]
    ax_speed.set_ylim(min(rates) / 2, max(rates) * 30)  # headroom for the legend above the lines
    ax_speed.legend(fontsize=7, loc="upper left", ncols=2)

    names = list(footprint)
    bars = ax_memory.bar(range(len(names)), [footprint[n] / 2**20 for n in names],
                         color=["tab:red", "tab:green", "tab:grey"])
    ax_memory.bar_label(bars, labels=[f"{footprint[n] / 2**20:.2f} MiB" for n in names], fontsize=8)
    ax_memory.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names])
    ax_memory.set(title="Memory: load everything vs map the file", ylabel="peak heap (MiB, tracemalloc)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig


def digit_mosaic(rows: Sequence[Sequence[torch.Tensor]], gap: int = 1) -> np.ndarray:
    """Tile (1, 8, 8) images into one array, NaN between tiles (drawn as background)."""
    h, w = rows[0][0].shape[-2:]
    mosaic = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (w + gap) - gap), np.nan, dtype=np.float32)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image.squeeze(0).numpy()
    return mosaic


def plot_digits(dataset: DigitsDataset, augmented: DigitsDataset):
    fig, axes = new_figure(1, 2, "scikit-learn digits: samples, augmentations and class counts", figsize=(15, 4.2),
                           width_ratios=[2.3, 1])
    ax_images, ax_counts = axes[0]
    first = [int((dataset.targets == digit).nonzero()[0]) for digit in range(10)]  # one sample per class
    rows = [[dataset[i][0] for i in first], [augmented[i][0] for i in first], [augmented[i][0] for i in first]]
    from matplotlib import colormaps

    cmap = colormaps["gray_r"].with_extremes(bad="#5b8fd1")  # NaN gaps between tiles show as blue lines
    ax_images.imshow(digit_mosaic(rows), cmap=cmap, vmin=0, vmax=1)
    ax_images.set_xticks([4 + 9 * c for c in range(10)], [f"label {dataset.targets[i].item()}" for i in first],
                         fontsize=8)
    ax_images.set_yticks([4 + 9 * r for r in range(3)], ["original", "shift + noise", "again (new draw)"])
    ax_images.tick_params(length=0)
    ax_images.set_title("Each image is (1, 8, 8) float32 in [0, 1]; augmentations keep shape and range")
    counts = torch.bincount(dataset.targets).tolist()
    ax_counts.bar(range(10), counts, color="tab:blue")
    ax_counts.set(title=f"Samples per class ({len(dataset)} images)", xlabel="digit", ylabel="images",
                  xticks=range(10))
    ax_counts.grid(True, axis="y", alpha=0.3)
    return fig


# %% [markdown]
# ## Putting it together

# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)

    print_section("Tabular data with a transform fitted on the training split")
    raw = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=ctx.seed)
    train_idx, val_idx = split_indices(len(raw), 0.2, ctx.generator)
    standardize = Standardize.fit(raw.features[train_idx])
    train = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=ctx.seed,
                             transform=Compose(standardize, AddGaussianNoise(0.05)))
    x0, y0 = train[train_idx[0]]
    print(f"{len(raw)} samples, {cfg.n_features} features, {cfg.n_classes} classes; item 0: x {tuple(x0.shape)} "
          f"{x0.dtype}, y {y0.item()} ({y0.dtype})")
    after = standardize(raw.features[train_idx])
    print(f"train feature means {raw.features[train_idx].mean(0).abs().max().item():.2f} (max |mean|) → "
          f"{after.mean(0).abs().max().item():.1e} after standardising; validation rows never seen by fit()")

    print_section("DataLoader basics")
    loader = make_loader(raw, batch_size=64, generator=torch.Generator().manual_seed(ctx.seed), device=ctx.device)
    xb, yb = next(iter(loader))
    print(f"batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}; {len(loader)} batches per epoch "
          f"(last one {len(raw) % 64 or 64} rows); drop_last=True gives {len(raw) // 64}")
    orders = [next(iter(make_loader(raw, 8, generator=torch.Generator().manual_seed(s))))[1].tolist()
              for s in (ctx.seed, ctx.seed, ctx.seed + 1)]
    print(f"first labels, seed {ctx.seed}: {orders[0]}; again: {orders[1]}; seed {ctx.seed + 1}: {orders[2]}")
    print(f"pin_memory: {loader.pin_memory} (only when the device is CUDA: {ctx.device.type})")

    digits = DigitsDataset()
    augmented = DigitsDataset(transform=Compose(RandomShift(1), ClampedNoise(0.05)))
    image, label = digits[0]
    print(f"\ndigits: {len(digits)} images, item 0 is {tuple(image.shape)} {image.dtype} in "
          f"[{image.min().item():.1f}, {image.max().item():.1f}], label {label.item()}")
    worker_loader = make_loader(augmented, 256, num_workers=2, generator=torch.Generator().manual_seed(ctx.seed))
    epoch_a = [b[0].sum().item() for b in worker_loader]
    worker_loader = make_loader(augmented, 256, num_workers=2, generator=torch.Generator().manual_seed(ctx.seed))
    epoch_b = [b[0].sum().item() for b in worker_loader]
    del worker_loader
    print(f"2 seeded workers, random augmentation: two runs with one seed identical: {epoch_a == epoch_b}")

    print_section("Time series and text")
    series = make_series(500, ctx.generator)
    windows = TimeSeriesDataset(series, window=24, horizon=4)
    wx, wy = windows[10]
    print(f"series of {len(series)}, window 24, horizon 4 → {len(windows)} items; item 10: x {tuple(wx.shape)}, "
          f"y {tuple(wy.shape)}")
    text = CharTextDataset(SAMPLE_TEXT, seq_len=32)
    tx, ty = text[0]
    print(f"text: {len(SAMPLE_TEXT)} characters, vocabulary {len(text.vocab)}, {len(text)} items")
    print(f"item 0  x: {text.decode(tx)!r}\n        y: {text.decode(ty)!r}")
    sample = "café 東京 🚀"
    print(f"decode(encode({sample!r})) == {sample!r}: {text.decode(text.encode(sample)) == sample}")
    try:
        text.encode("Ω")
    except ValueError as err:
        print(f"encode('Ω'): ValueError: {err}")

    print_section("Collation of variable-length sequences")
    variable = VariableLengthDataset(64, ctx.seed)
    try:
        next(iter(DataLoader(variable, batch_size=4)))
    except RuntimeError as err:
        print(f"default_collate: RuntimeError: {str(err).splitlines()[0]}")
    padded, lengths, targets = next(iter(DataLoader(variable, batch_size=4, collate_fn=pad_collate)))
    print(f"pad_collate: padded {tuple(padded.shape)}, lengths {lengths.tolist()}, targets {tuple(targets.shape)}")

    print_section("Weighted sampling of an imbalanced dataset")
    imbalanced = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=ctx.seed,
                                  class_weights=[0.7, 0.2, 0.07, 0.03])
    sampler = make_weighted_sampler(imbalanced.targets, generator=torch.Generator().manual_seed(ctx.seed))
    drawn = imbalanced.targets[torch.tensor(list(sampler))]
    class_counts = {"dataset": torch.bincount(imbalanced.targets, minlength=cfg.n_classes).tolist(),
                    "weighted sampler": torch.bincount(drawn, minlength=cfg.n_classes).tolist()}
    print_table("Class frequencies", ["class", "in the dataset", "drawn by the sampler"],
                [[c, f"{class_counts['dataset'][c] / len(imbalanced):.3f}",
                  f"{class_counts['weighted sampler'][c] / len(drawn):.3f}"] for c in range(cfg.n_classes)])

    print_section("DistributedSampler without a process group")
    shards = distributed_shards(12, num_replicas=3, epoch=0, seed=ctx.seed)
    print(f"12 indices on 3 ranks, epoch 0: {shards}")
    print(f"epoch 1: {distributed_shards(12, 3, epoch=1, seed=ctx.seed)}")
    print(f"disjoint and complete: {sorted(i for s in shards for i in s) == list(range(12))}")

    print_section("Memory-mapped data")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_memmap(Path(tmp) / "rows.f32", torch.randn(cfg.memmap_rows, 16, generator=ctx.generator).numpy())
        mapped = MemmapDataset(path, 16)
        reference = np.fromfile(path, dtype="<f4").reshape(-1, 16)
        loaded = torch.cat(list(make_loader(mapped, 512, shuffle=False, num_workers=2)))
        print(f"{len(mapped)} rows via 2 workers equal the in-memory array: "
              f"{torch.equal(loaded, torch.from_numpy(reference))}")
        footprint = memmap_footprint(path, 16)
    print_table("Peak heap while loading vs while reading every row (tracemalloc)", ["approach", "MiB"],
                [[name, f"{value / 2**20:.2f}"] for name, value in footprint.items()])

    print_section("Throughput")
    breakdown = time_breakdown(cfg.throughput_samples, cfg.n_features, 128, cfg.min_run_time)
    print_table("Where the time goes at batch 128", ["step", "per sample"],
                [[name, fmt_seconds(seconds)] for name, seconds in breakdown.items()])
    throughput = throughput_table(cfg.throughput_samples, cfg.n_features, cfg.batch_sizes, cfg.worker_counts,
                                  cfg.min_run_time, ctx.seed)
    default = {r["batch_size"]: r["samples_per_s"] for r in throughput if r["loader"] == "default, 0 workers"}
    print_table(f"{cfg.throughput_samples:,} in-memory samples per epoch (median of Timer runs)",
                ["batch", "loader", "samples/s", "vs default"],
                [[r["batch_size"], r["loader"], fmt_timing(r["samples_per_s"], ",.0f"),
                  fmt_timing(r["samples_per_s"] / default[r["batch_size"]], ".1f", "×")] for r in throughput])

    print_section("Figures")
    fig = plot_analysis(raw, train_idx, standardize, series.numpy(), 24, 4, class_counts, throughput, footprint)
    save_figure(fig, "dataset_loader_analysis.png", ctx.plots_dir)
    save_figure(plot_digits(digits, augmented), "digits_samples.png", ctx.plots_dir)


def main(argv: list[str] | None = None) -> int:
    return run_lesson("dataset_loader_demo.py", __doc__, "Lesson 5: datasets and data loaders", run, argv)


if __name__ == "__main__":
    finish(main())
