"""Datasets and DataLoaders: five kinds of data, streams, batching, sampling, collation and throughput.

Run `python dataset_loader_demo.py` (add `--quick` for a smoke run). It builds Datasets for
tabular, image, time-series, text and memory-mapped data, and a stream split across workers;
shows the DataLoader's batching, seeded shuffling, workers, padding collation, weighted and
distributed sampling; and measures where loading time goes and what a batched fast path changes. Lesson 6
(`digits_classifier.py`) trains on the digits with the Dataset and fast loader built here.
Figures: plots/digits_samples.png, plots/dataset_loader_analysis.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
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
    IterableDataset,
    RandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
    get_worker_info,
)

from lesson_harness import (
    BENCHMARK_THREADS,
    NOISY_MARK,
    TIMING_HEADERS,
    Timing,
    benchmark,
    new_figure,
    print_pairs,
    print_table,
    save_figure,
    share_notebook_with_workers,
    start_lesson,
    timing_cells,
    timing_note,
)


@dataclass(frozen=True)
class Config:
    n_samples: int = 2_000  # rows in the synthetic tabular dataset
    n_features: int = 8  # its columns
    n_classes: int = 4  # its classes
    throughput_samples: int = 5_000  # rows loaded per epoch in the throughput benchmark
    batch_sizes: tuple[int, ...] = (32, 128, 512)  # batch sizes in the throughput benchmark (a factor 4 apart)
    worker_counts: tuple[int, ...] = (0, 2)  # num_workers values for the default DataLoader
    augment_workers: int = 2  # workers in the seeded-augmentation demo
    memmap_workers: int = 2  # workers reading the memory-mapped file
    memmap_rows: int = 20_000  # rows written to the memory-mapped file read by workers
    stream_worker_counts: tuple[int, ...] = (0, 2)  # num_workers for the naive and the sharded stream
    init_fn_workers: int = 2  # workers of the stream configured by worker_init_fn (and prefetching ahead)
    min_run_time: float = 0.1  # seconds per throughput measurement


FULL = Config()
# Quick mode starts few workers: under spawn each worker imports torch afresh, which takes seconds. Seeding
# from the loader needs one (augmentation's), and the stream section starts one (worker_init_fn's); the
# naive stream's duplicates need two or more workers, so only the full run shows them.
QUICK = Config(n_samples=400, throughput_samples=1_000, batch_sizes=(32, 128), worker_counts=(0,), augment_workers=1,
               memmap_workers=0, memmap_rows=2_000, stream_worker_counts=(0,), init_fn_workers=1, min_run_time=0.01)
LOADER_TIMEOUT_S = 60  # a worker that produces no batch for this long has hung: fail instead of waiting
VAL_FRACTION = 0.2  # share of the tabular rows held out for validation
IMBALANCED_CLASS_WEIGHTS = (0.7, 0.2, 0.07, 0.03)  # class shares of the imbalanced dataset (one per class)
BATCH_SIZE = 64  # batch size of the DataLoader basics
ORDER_BATCH = 8  # labels shown when comparing shuffled orders
AUGMENT_BATCH = 256  # batch size of the seeded augmentation run over the digits, through workers
NOISE_STD = 0.05  # std of the Gaussian noise augmentations
SERIES_LENGTH = 500  # steps in the synthetic time series
SERIES_WINDOW = 24  # past steps each time-series item holds
SERIES_HORIZON = 4  # future steps it predicts
TEXT_SEQ_LEN = 32  # characters per text item
SHARD_INDICES, SHARD_REPLICAS = 12, 3  # a dataset size and rank count small enough to print the shards
MEMMAP_FEATURES = 16  # float32 columns of the memory-mapped file
STREAM_ROWS, STREAM_FEATURES = 12, 3  # the stream: row i holds 3i, 3i + 1, 3i + 2 (small enough to print)
STREAM_BATCH = 2  # batch size when reading the stream
STREAM_PREFETCH = 4  # prefetch_factor of the worker_init_fn loader: batches each worker loads ahead
FOOTPRINT_MIB = 40  # file in the memory measurement: > 32 MiB, so glibc's malloc maps fresh pages for the copy
FOOTPRINT_FEATURES = 4096  # its float32 columns: rows of 16 KiB
BREAKDOWN_BATCH = 128  # batch size of the per-step time breakdown
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


def _workers(n: int) -> str:
    return f"{n} worker" + ("s" if n != 1 else "")


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python dataset_loader_demo.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them.

# %%
if __name__ == "__main__":
    ctx = start_lesson("dataset_loader_demo")
    cfg = ctx.config(FULL, QUICK)


# %% [markdown]
# ## Tabular data, and transforms fitted on the training split
#
# A map-style Dataset needs `__len__` and `__getitem__(i)`. A transform is any callable applied
# per sample. One class serves the tabular data and the images below: inputs, targets and a transform.
# Statistics for standardisation must come from the training split only: computing them on all
# the data leaks information about the validation set into training.

# %%
class LabelledTensorDataset(Dataset):
    """Row i of `inputs` (transformed, if a transform is given) with `targets[i]`."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, transform: Callable | None = None):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs has {len(inputs)} rows but targets has {len(targets)}")
        self.inputs, self.targets, self.transform = inputs, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = _check_index(index, len(self))
        x = self.inputs[index]
        return (self.transform(x) if self.transform else x), self.targets[index]

    def with_transform(self, transform: Callable | None) -> LabelledTensorDataset:
        """The same tensors (shared, not copied) with another transform."""
        return LabelledTensorDataset(self.inputs, self.targets, transform)


class SyntheticDataset(LabelledTensorDataset):
    """Gaussian class clusters (scikit-learn's make_classification): float32 features, int64 labels."""

    def __init__(self, n_samples: int, n_features: int, n_classes: int, transform: Callable | None = None,
                 seed: int = 0, class_weights: Sequence[float] | None = None):
        from sklearn.datasets import make_classification

        if n_samples < n_classes or n_classes < 2 or n_features < 2:
            raise ValueError(f"need n_samples ≥ n_classes ≥ 2 and n_features ≥ 2, got n_samples={n_samples}, "
                             f"n_features={n_features}, n_classes={n_classes}")
        X, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_features,
                                   n_redundant=0, n_classes=n_classes, n_clusters_per_class=1,
                                   weights=None if class_weights is None else list(class_weights), random_state=seed)
        features = torch.from_numpy(X.astype(np.float32) * 3 + 5)  # (n, f), off-centre: worth standardising
        super().__init__(features, torch.from_numpy(y.astype(np.int64)), transform)  # targets (n,)


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
    """Additive N(0, std²) noise from torch's RNG (which DataLoader seeds in every worker), optionally clamped."""

    def __init__(self, std: float, clamp: tuple[float, float] | None = None):
        if std < 0:
            raise ValueError(f"noise std={std} must be non-negative")
        if clamp is not None and not clamp[0] < clamp[1]:
            raise ValueError(f"clamp={clamp} must be a (low, high) pair with low < high")
        self.std, self.clamp = std, clamp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.std * torch.randn_like(x)
        return noisy if self.clamp is None else noisy.clamp(*self.clamp)


class Compose:
    def __init__(self, *transforms: Callable):
        self.transforms = transforms

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


def split_indices(n: int, val_fraction: float, generator: torch.Generator | None = None) -> tuple[list, list]:
    """A random (train, validation) split of range(n); round(n · val_fraction) rows go to validation."""
    order = torch.randperm(n, generator=generator).tolist()
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def standardisation_stats(features: torch.Tensor, train_idx: Sequence[int],
                          standardize: Standardize) -> dict[str, object]:
    """Per-feature mean and std of the training rows before and after `standardize`, and the largest |mean|s."""
    raw, after = features[train_idx].double(), standardize(features[train_idx]).double()  # (n_train, f)
    stats = {"raw mean": raw.mean(0).numpy(), "raw std": raw.std(0).numpy(),
             "standardised mean": after.mean(0).numpy(), "standardised std": after.std(0).numpy()}
    return {**stats, "raw max |mean|": float(np.abs(stats["raw mean"]).max()),
            "standardised max |mean|": float(np.abs(stats["standardised mean"]).max())}


def class_counts(targets: torch.Tensor, n_classes: int) -> list[int]:
    """Samples per class 0..n_classes-1."""
    return torch.bincount(targets, minlength=n_classes).tolist()

# %%
if __name__ == "__main__":
    raw = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=ctx.seed)
    train_idx, _ = split_indices(len(raw), VAL_FRACTION, ctx.generator)
    standardize = Standardize.fit(raw.inputs[train_idx])  # statistics of the training rows only
    train = raw.with_transform(Compose(standardize, AddGaussianNoise(NOISE_STD)))
    x, y = train[train_idx[0]]
    stats = standardisation_stats(raw.inputs, train_idx, standardize)
    print_pairs("Tabular data with a transform fitted on the training split", {
        "dataset": f"{len(raw)} samples, {cfg.n_features} features, {cfg.n_classes} classes",
        f"item {train_idx[0]} (transformed)": f"x {tuple(x.shape)} {x.dtype}, y {y.item()} ({y.dtype})",
        "training features, max |mean|": f"{stats['raw max |mean|']:.2f} → {stats['standardised max |mean|']:.1e} "
                                         "after standardising",
        "validation rows seen by fit()": f"none of {len(raw) - len(train_idx)}",
    })


# %% [markdown]
# ## DataLoader: seeds and workers
#
# `shuffle=True` draws a new order every epoch from `generator=`: the same seed repeats the
# sequence of orders, another seed gives others. With `num_workers>0` each worker is a separate
# process. Whenever it starts workers (each epoch, or once with `persistent_workers=True`),
# DataLoader draws a base seed from `generator=` and seeds torch, NumPy and `random` in worker k
# from that seed and k, so random augmentations differ between workers and repeat from run to
# run. (The `seed_worker` recipe of older tutorials has not been needed since torch 1.9, which
# seeds all three itself.) On macOS and Windows workers start as fresh interpreters (spawn), and
# from Python 3.14 Linux forks them from a clean server process (forkserver): either way each
# worker imports the module that defines the Dataset again. A
# script is imported again as `__mp_main__`, which is why every section's work sits under
# `if __name__ == "__main__":`. A notebook cannot be imported at all, so before a cell starts
# workers, `share_notebook_with_workers` re-homes the notebook's classes under this lesson's
# module name (outside a notebook it does nothing). `pin_memory=True` only helps when copying
# to a GPU (and warns without one); `timeout=` makes a hung worker an error instead of a hang.

# %%
def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                generator: torch.Generator | None = None, device: torch.device | None = None, **kwargs) -> DataLoader:
    """A DataLoader with the safe defaults: seeded, persistent workers, a timeout, pinning only for CUDA."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator,
        persistent_workers=num_workers > 0, timeout=LOADER_TIMEOUT_S if num_workers else 0,
        pin_memory=device is not None and device.type == "cuda", **kwargs,
    )


def batching_facts(dataset: Dataset, batch_size: int, seed: int) -> dict[str, object]:
    """Shapes of the first batch, batches per epoch, rows in the last one, and batches with drop_last=True."""
    loader = make_loader(dataset, batch_size, generator=torch.Generator().manual_seed(seed))
    batches = list(loader)
    sizes, (xb, yb) = [len(y) for _, y in batches], batches[0]
    dropping = make_loader(dataset, batch_size, generator=torch.Generator().manual_seed(seed), drop_last=True)
    return {"x shape": tuple(xb.shape), "y shape": tuple(yb.shape), "batches": len(sizes), "last batch": sizes[-1],
            "batches with drop_last": sum(1 for _ in dropping)}


def first_batch_labels(dataset: Dataset, batch_size: int, seed: int, epochs: int = 2) -> list[list[int]]:
    """Labels of the first batch in each of `epochs` epochs of one loader shuffled by `seed`."""
    loader = make_loader(dataset, batch_size, generator=torch.Generator().manual_seed(seed))
    return [next(iter(loader))[1].tolist() for _ in range(epochs)]


def augmented_epoch_checksums(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> list[float]:
    """Sum of each batch's inputs over one epoch with `num_workers` workers: a fingerprint of the epoch's data."""
    loader = make_loader(dataset, batch_size, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    sums = [batch[0].sum().item() for batch in loader]
    del loader  # shuts the persistent workers down
    return sums

# %%
if __name__ == "__main__":
    facts = batching_facts(raw, BATCH_SIZE, ctx.seed)
    seeded, again, other = (first_batch_labels(raw, ORDER_BATCH, s) for s in (ctx.seed, ctx.seed, ctx.seed + 1))
    print_pairs("DataLoader: batches and seeded shuffling", {
        f"batch {BATCH_SIZE}": f"x {facts['x shape']}, y {facts['y shape']}",
        "batches per epoch": f"{facts['batches']} (last one {facts['last batch']} rows); drop_last=True gives "
                             f"{facts['batches with drop_last']}",
        f"first-batch labels, seed {ctx.seed}": f"epoch 1 {seeded[0]}, epoch 2 {seeded[1]}",
        f"a new loader with seed {ctx.seed}": f"repeats both: {again == seeded}",
        f"seed {ctx.seed + 1}, epoch 1": other[0],
        "pin_memory": f"{make_loader(raw, BATCH_SIZE, device=ctx.device).pin_memory} (only when the device is CUDA: "
                      f"{ctx.device.type})",
    })


# %% [markdown]
# ## Images: scikit-learn's 8×8 digits
#
# Images are (channels, height, width) float tensors, scaled to [0, 1]. Augmentations make new
# training images from old ones; they must keep shape and value range (hence noise clamped to [0, 1]).
# A random augmentation in a worker draws from that worker's generator, which DataLoader seeds
# from `generator=`: two runs with one seed see the same augmented epoch, image for image.

# %%
class DigitsDataset(LabelledTensorDataset):
    """1 797 handwritten digits shipped with scikit-learn: ((1, 8, 8) float32 in [0, 1], int64 label)."""

    def __init__(self, transform: Callable | None = None):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (n, 1, 8, 8)
        super().__init__(images, torch.from_numpy(digits.target.astype(np.int64)), transform)  # targets (n,)


class RandomShift:
    """Shift an image by up to `max_shift` pixels in each direction, filling with zeros."""

    def __init__(self, max_shift: int = 1):
        self.max_shift = max_shift

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        padded = torch.nn.functional.pad(image, (self.max_shift,) * 4)  # (1, 8 + 2m, 8 + 2m)
        m, h, w = self.max_shift, image.shape[-2], image.shape[-1]
        return padded[..., m - dy:m - dy + h, m - dx:m - dx + w]


def digits_augmentation() -> Compose:
    """Shift by up to one pixel, then add pixel noise clamped back into [0, 1]."""
    return Compose(RandomShift(1), AddGaussianNoise(NOISE_STD, clamp=(0.0, 1.0)))


def digit_examples(dataset: LabelledTensorDataset, augmented: LabelledTensorDataset,
                   draws: int = 2) -> tuple[list[int], list[list[torch.Tensor]]]:
    """The first image of each digit: labels, and rows [originals, then `draws` augmented versions]."""
    first = [int((dataset.targets == digit).nonzero()[0]) for digit in range(10)]  # one sample per class
    rows = [[dataset[i][0] for i in first]] + [[augmented[i][0] for i in first] for _ in range(draws)]
    return [dataset.targets[i].item() for i in first], rows


def digit_mosaic(rows: Sequence[Sequence[torch.Tensor]], gap: int = 1) -> np.ndarray:
    """Tile (1, 8, 8) images into one array, NaN between tiles (drawn as background)."""
    h, w = rows[0][0].shape[-2:]
    mosaic = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (w + gap) - gap), np.nan, dtype=np.float32)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image.squeeze(0).numpy()
    return mosaic


def plot_digits(labels: Sequence[int], rows: Sequence[Sequence[torch.Tensor]], counts: Sequence[int]):
    fig, axes = new_figure(1, 2, "scikit-learn digits: samples, augmentations and class counts", figsize=(15, 4.2),
                           width_ratios=[2.3, 1])
    ax_images, ax_counts = axes[0]
    from matplotlib import colormaps

    cmap = colormaps["gray_r"].with_extremes(bad="#5b8fd1")  # NaN gaps between tiles show as blue lines
    ax_images.imshow(digit_mosaic(rows), cmap=cmap, vmin=0, vmax=1)
    ax_images.set_xticks([4 + 9 * c for c in range(len(labels))], [f"label {label}" for label in labels], fontsize=8)
    ax_images.set_yticks([4 + 9 * r for r in range(len(rows))],
                         ["original", "shift + noise"] + ["again (new draw)"] * (len(rows) - 2))
    ax_images.tick_params(length=0)
    ax_images.set_title("Each image is (1, 8, 8) float32 in [0, 1]; augmentations keep shape and range")
    ax_counts.bar(range(len(counts)), counts, color="tab:blue")
    ax_counts.set(title=f"Samples per class ({sum(counts)} images)", xlabel="digit", ylabel="images",
                  xticks=range(len(counts)))
    ax_counts.grid(True, axis="y", alpha=0.3)
    return fig

# %%
if __name__ == "__main__":
    digits = DigitsDataset()
    augmented = digits.with_transform(digits_augmentation())
    image, label = digits[0]
    share_notebook_with_workers("dataset_loader_demo")  # in a notebook, spawned workers must find DigitsDataset
    first, second = (augmented_epoch_checksums(augmented, AUGMENT_BATCH, cfg.augment_workers, ctx.seed)
                     for _ in range(2))  # one epoch each, two loaders seeded alike
    print_pairs("Images: the digits", {
        "digits": f"{len(digits)} images, item 0 is {tuple(image.shape)} {image.dtype} in "
                  f"[{image.min().item():.1f}, {image.max().item():.1f}], label {label.item()}",
        f"{_workers(cfg.augment_workers)}, seeded, random augmentation":
            f"two runs with one seed identical: {first == second}",
    })
    save_figure(plot_digits(*digit_examples(digits, augmented), class_counts(digits.targets, 10)), "digits_samples.png",
                ctx.plots_dir)


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

# %%
if __name__ == "__main__":
    series = make_series(SERIES_LENGTH, ctx.generator)
    windows = TimeSeriesDataset(series, SERIES_WINDOW, SERIES_HORIZON)
    wx, wy = windows[10]
    print_pairs("Time series", {
        "windows": f"series of {len(series)}, window {SERIES_WINDOW}, horizon {SERIES_HORIZON} → {len(windows)} items",
        "item 10": f"x {tuple(wx.shape)}, y {tuple(wy.shape)}",
    })


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

# %%
if __name__ == "__main__":
    text = CharTextDataset(SAMPLE_TEXT, TEXT_SEQ_LEN)
    tx, ty = text[0]
    sample = "café 東京 🚀"
    try:
        text.encode("Ω")
    except ValueError as err:
        unknown = f"ValueError: {err}"
    print_pairs("Text", {
        "dataset": f"{len(SAMPLE_TEXT)} characters, vocabulary {len(text.vocab)}, {len(text)} items",
        "item 0, x": repr(text.decode(tx)),
        "item 0, y": repr(text.decode(ty)),
        f"decode(encode({sample!r})) == {sample!r}": text.decode(text.encode(sample)) == sample,
        "encode('Ω')": unknown,
    })


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


def default_collate_error(dataset: Dataset, batch_size: int) -> str:
    """The first line of the error `default_collate` raises on the first batch ('' if it stacks)."""
    try:
        next(iter(DataLoader(dataset, batch_size=batch_size)))
    except RuntimeError as err:
        return str(err).splitlines()[0]
    return ""

# %%
if __name__ == "__main__":
    variable = VariableLengthDataset(64, ctx.seed)
    padded, lengths, targets = next(iter(DataLoader(variable, batch_size=4, collate_fn=pad_collate)))
    print_pairs("Collation of variable-length sequences", {
        "default_collate": f"RuntimeError: {default_collate_error(variable, 4)}",
        "pad_collate": f"padded {tuple(padded.shape)}, lengths {lengths.tolist()}, targets {tuple(targets.shape)}",
    })


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


def weighted_class_counts(targets: torch.Tensor, n_classes: int, seed: int) -> dict[str, list[int]]:
    """Samples per class in the dataset, and in one epoch drawn by the class-balancing sampler."""
    sampler = make_weighted_sampler(targets, generator=torch.Generator().manual_seed(seed))
    drawn = targets[torch.tensor(list(sampler))]  # (len(targets),) labels of the drawn samples
    return {"dataset": class_counts(targets, n_classes), "weighted sampler": class_counts(drawn, n_classes)}


def distributed_shards(n: int, num_replicas: int, epoch: int = 0, seed: int = 0) -> list[list[int]]:
    """The indices each rank gets in `epoch`, without any process group."""
    shards = []
    for rank in range(num_replicas):
        sampler = DistributedSampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards

# %%
if __name__ == "__main__":
    imbalanced = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=ctx.seed,
                                  class_weights=IMBALANCED_CLASS_WEIGHTS)
    class_balance = weighted_class_counts(imbalanced.targets, cfg.n_classes, ctx.seed)
    print_table("Weighted sampling of an imbalanced dataset: class frequencies",
                ["class", "in the dataset", "drawn by the sampler"],
                [[c, f"{class_balance['dataset'][c] / len(imbalanced):.3f}",
                  f"{class_balance['weighted sampler'][c] / len(imbalanced):.3f}"] for c in range(cfg.n_classes)])
    shards = distributed_shards(SHARD_INDICES, SHARD_REPLICAS, epoch=0, seed=ctx.seed)
    print_pairs("DistributedSampler without a process group", {
        f"{SHARD_INDICES} indices on {SHARD_REPLICAS} ranks, epoch 0": shards,
        "epoch 1": distributed_shards(SHARD_INDICES, SHARD_REPLICAS, epoch=1, seed=ctx.seed),
        "disjoint and complete": sorted(i for s in shards for i in s) == list(range(SHARD_INDICES)),
    })


# %% [markdown]
# ## Memory-mapped data
#
# For data larger than memory, write it once as a raw float32 file and map it: `numpy.memmap`
# reads a row's bytes from disk (or the OS page cache) only when indexed. The dataset opens the
# map lazily, so each DataLoader worker opens its own instead of pickling the data.
#
# Mapping is not free. `tracemalloc` counts memory allocated through Python's allocators (NumPy
# reports its array buffers there too), so it sees the in-memory copy but not the mapped pages.
# The resident set size (RSS) sees both: once every row has been read, the whole file is
# resident. The difference is the kind of memory: mapped pages are file-backed page cache that
# the kernel can drop under pressure and read again from the file, while the copy is anonymous
# memory that can only go to swap. On Linux `/proc/self/status` splits RSS into the two kinds
# (`RssAnon`; `RssFile`, plus `RssShmem` for a file on tmpfs); elsewhere this lesson falls back to
# `resource.getrusage`, whose `ru_maxrss` is only the peak of the whole resident set.

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


def loaded_through_workers(dataset: MemmapDataset, batch_size: int, num_workers: int) -> torch.Tensor:
    """Every row of `dataset`, in order, read by `num_workers` worker processes."""
    return torch.cat(list(make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)))


def resident_memory() -> dict[str, int]:
    """This process's resident memory in bytes, by kind (see the section's text for the sources)."""
    try:
        with open("/proc/self/status") as status:
            fields = {key: int(value.split()[0]) * 1024 for key, _, value in (line.partition(":") for line in status)
                      if key in ("RssAnon", "RssFile", "RssShmem")}  # the file gives kB
    except OSError:
        fields = {}
    if "RssAnon" in fields and "RssFile" in fields:
        return {"anonymous": fields["RssAnon"], "file-backed": fields["RssFile"] + fields.get("RssShmem", 0)}
    try:
        import resource
    except ImportError:  # Windows
        return {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return {"peak (getrusage)": peak if sys.platform == "darwin" else peak * 1024}


def _copy_into_memory(path: Path, n_features: int, probe: Callable[[], object]) -> object:
    copy = np.fromfile(path, dtype="<f4").reshape(-1, n_features)  # (rows, features), read into anonymous memory
    result = probe()  # while the copy is alive
    del copy
    return result


def _read_every_mapped_row(path: Path, n_features: int, probe: Callable[[], object]) -> object:
    dataset = MemmapDataset(path, n_features)
    for i in range(len(dataset)):
        dataset[i].sum()  # touches every byte of row i
    return probe()  # while the map is open


def memmap_footprint(path: Path, n_features: int) -> dict[str, dict[str, int]]:
    """Bytes added by loading the file into memory vs by reading every row through the map.

    Per approach: the peak of Python's heap ("tracemalloc peak") and the growth of each kind of resident memory
    ("RSS ...", see `resident_memory`) while the data is in use. Growth is what a fresh process like this
    script sees; a long-lived one that has freed memory before may get the copy from pages already resident.
    """
    warm_up = MemmapDataset(path, n_features)
    warm_up[0].sum()  # the first map pays for code pages (file-backed too): keep them out of the measurement
    del warm_up
    footprint = {}
    for name, approach in (("in-memory copy", _copy_into_memory), ("memory map", _read_every_mapped_row)):
        tracemalloc.start()  # traces allocations from here on: its peak is what this approach adds
        try:
            before = resident_memory()
            after = approach(path, n_features, resident_memory)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        footprint[name] = {"tracemalloc peak": peak,
                           **{f"RSS {kind}": after[kind] - before[kind] for kind in before}}
    return footprint


def print_footprint(footprint: dict[str, dict[str, int]], file_bytes: int) -> None:
    measures = list(footprint["in-memory copy"])
    print_table(f"MiB added while a {file_bytes / 2**20:.0f} MiB file is in use (to the nearest MiB; other "
                "allocations add up to a few hundred KiB)", ["approach", *measures],
                [[name, *(f"{v / 2**20:.0f}" for v in values.values())] for name, values in footprint.items()])

# %%
if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        array = torch.randn(cfg.memmap_rows, MEMMAP_FEATURES, generator=ctx.generator).numpy()  # (rows, features)
        mapped = MemmapDataset(write_memmap(Path(tmp) / "rows.f32", array), MEMMAP_FEATURES)
        share_notebook_with_workers("dataset_loader_demo")  # in a notebook, spawned workers must find MemmapDataset
        loaded = loaded_through_workers(mapped, 512, num_workers=cfg.memmap_workers)
        print(f"\n{len(mapped)} rows via {_workers(cfg.memmap_workers)} equal the array written: "
              f"{torch.equal(loaded, torch.from_numpy(array))}")
        big = np.zeros((FOOTPRINT_MIB * 2**20 // (4 * FOOTPRINT_FEATURES), FOOTPRINT_FEATURES), dtype=np.float32)
        path = write_memmap(Path(tmp) / "big.f32", big)
        footprint, file_bytes = memmap_footprint(path, FOOTPRINT_FEATURES), path.stat().st_size
    print_footprint(footprint, file_bytes)


# %% [markdown]
# ## Streams: an IterableDataset read once across workers
#
# Some data has no index: records arriving on a socket, a log that keeps growing, lines decoded
# from a compressed archive. An `IterableDataset` defines `__iter__` instead of `__len__` and
# `__getitem__`, and the DataLoader batches whatever it yields. There is no sampler to split the
# work: with `num_workers=k` every worker gets its own copy of the dataset and iterates it, so a
# naive stream is read k times and every row arrives k times. Each worker must read only its share.
# `torch.utils.data.get_worker_info()` returns `None` in the main process and, in a worker, its `id`,
# `num_workers`, `seed` and `dataset` (that worker's copy): taking rows `id::num_workers` (or one
# contiguous block per worker) gives every row to exactly one worker, whatever k is. With two or more
# workers the rows then arrive once each but not in stream order, since each batch holds one worker's
# rows and the loader takes batches from the workers in turn.
#
# `worker_init_fn` is called once in each new worker with the worker's id, after DataLoader has seeded
# it and before the worker loads anything: the place to seed a library DataLoader does not seed, open
# a file or connection per worker, or, as below, configure the worker's copy of a dataset whose class
# you cannot change. `prefetch_factor` is how many batches each worker loads ahead (2 unless set), so up
# to `num_workers × prefetch_factor` batches are requested before the first is used; it exists only
# with workers, and DataLoader rejects it with `num_workers=0`. `--quick` starts a single worker here:
# the duplicates need two or more, so the full run shows them with two.

# %%
class StreamDataset(IterableDataset):
    """The rows of a tensor as a stream, in order: rows[start::step], which is every row unless configured."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows  # (n, features)
        self.start, self.step = 0, 1  # a worker_init_fn may set these in a worker's copy

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.rows[self.start::self.step]  # every worker that iterates a copy reads all of it


class ShardedStreamDataset(StreamDataset):
    """The same stream, split by the reading process: rows[id::num_workers] in worker `id`, all rows without workers."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()  # None in the main process
        shard = self.rows if info is None else self.rows[info.id::info.num_workers]
        yield from shard[self.start::self.step]


def shard_stream_in_worker(worker_id: int) -> None:
    """A worker_init_fn: DataLoader calls it with the worker's id; it sets this worker's copy to rows[id::workers]."""
    info = get_worker_info()  # inside worker_init_fn too: id, num_workers, seed and this worker's dataset copy
    info.dataset.start, info.dataset.step = worker_id, info.num_workers


def arrival_order(delivered: torch.Tensor, rows: torch.Tensor) -> list[int]:
    """The index in `rows` of each delivered row, in delivery order (the rows must be distinct)."""
    if len(torch.unique(rows, dim=0)) < len(rows):
        raise ValueError("the stream's rows must be distinct to tell which one arrived")
    matches = (delivered.unsqueeze(1) == rows.unsqueeze(0)).all(dim=-1)  # (delivered, rows)
    if not matches.any(dim=1).all():
        raise ValueError("a delivered row is not a row of the stream")
    return matches.int().argmax(dim=1).tolist()


def read_stream(dataset: StreamDataset, batch_size: int, num_workers: int, **loader_kwargs) -> dict[str, object]:
    """One epoch of `dataset` through a DataLoader: which row arrived in what order, and how often each did."""
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, **loader_kwargs)
    delivered = torch.cat(list(loader))  # (rows delivered, features)
    del loader  # shuts the persistent workers down
    order = arrival_order(delivered, dataset.rows)
    return {"order": order, "arrivals": torch.bincount(torch.tensor(order), minlength=len(dataset.rows)).tolist()}


def stream_reads(rows: torch.Tensor, batch_size: int, worker_counts: Sequence[int], init_fn_workers: int,
                 prefetch_factor: int) -> list[dict[str, object]]:
    """The naive and the sharded stream at each worker count, then the naive class sharded by worker_init_fn."""
    reads = [{"dataset": cls.__name__, "workers": workers, **read_stream(cls(rows), batch_size, workers)}
             for cls in (StreamDataset, ShardedStreamDataset) for workers in worker_counts]
    configured = read_stream(StreamDataset(rows), batch_size, init_fn_workers, worker_init_fn=shard_stream_in_worker,
                             prefetch_factor=prefetch_factor)
    return reads + [{"dataset": "StreamDataset + worker_init_fn", "workers": init_fn_workers, **configured}]


def prefetch_without_workers_error() -> str:
    """The first sentence of the error DataLoader raises for prefetch_factor with num_workers=0."""
    try:
        DataLoader(range(4), num_workers=0, prefetch_factor=2)
    except ValueError as err:
        return str(err).split(".")[0] + "."
    return ""


def print_stream_reads(reads: list[dict[str, object]], n_rows: int) -> None:
    def times(arrivals: list[int]) -> str:
        low, high = min(arrivals), max(arrivals)
        return f"{low} (every row)" if low == high else f"{low} to {high}"

    print_table(f"A stream of {n_rows} rows read through DataLoader workers",
                ["dataset", "workers", "rows delivered", "times each row arrived"],
                [[r["dataset"], r["workers"], sum(r["arrivals"]), times(r["arrivals"])] for r in reads])

# %%
if __name__ == "__main__":
    stream = torch.arange(STREAM_ROWS * STREAM_FEATURES).reshape(STREAM_ROWS, STREAM_FEATURES)  # (rows, features)
    share_notebook_with_workers("dataset_loader_demo")  # in a notebook, spawned workers must find the stream classes
    reads = stream_reads(stream, STREAM_BATCH, cfg.stream_worker_counts, cfg.init_fn_workers, STREAM_PREFETCH)
    print_stream_reads(reads, STREAM_ROWS)
    sharded = [r for r in reads if r["dataset"] == "ShardedStreamDataset"][-1]
    print_pairs("Sharding, worker_init_fn and prefetch_factor", {
        f"ShardedStreamDataset, {_workers(sharded['workers'])}, arrival order (row index)": sharded["order"],
        "worker_init_fn": "called once in each new worker with its id; here it set that worker's copy to read "
                          "rows[id::num_workers]",
        f"prefetch_factor={STREAM_PREFETCH}": f"each worker loads up to {STREAM_PREFETCH} batches ahead, "
                                              f"{cfg.init_fn_workers * STREAM_PREFETCH} in all with "
                                              f"{_workers(cfg.init_fn_workers)}",
        "prefetch_factor with num_workers=0": f"ValueError: {prefetch_without_workers_error()}",
    })


# %% [markdown]
# ## Throughput: where loading time goes, and the fast path
#
# The default DataLoader calls `__getitem__` once per sample and then `default_collate` stacks the
# samples: Python work paid for every sample, whatever the batch size. When the data is already a
# tensor in memory, one `X[idx]` gather per batch does that work in a single call per batch. The
# first table times those steps at one batch size, per sample; compare the per-sample cost of the
# two default steps with that of the gather. The second table measures whole epochs. Read each
# loader's rate across the batch sizes together with its IQR (a change smaller than the spread is
# noise, and `!` marks a row that is as much noise as signal): the default loader still calls
# `__getitem__` once for every sample at any batch size, while the fast path shares one gather among
# more samples, and "vs default" shows how far apart they are at each size. Workers help when `__getitem__` is expensive
# (decoding, augmentation); for cheap in-memory samples, look at whether they earn back the
# inter-process copying they add. Every benchmark runs on one thread, and DataLoader gives each worker
# process one thread of its own.

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


def batch_sampler_loader(dataset: TensorDataset, batch_size: int, generator: torch.Generator | None = None):
    """The middle road: a DataLoader whose sampler yields whole index lists, one __getitem__ per batch."""
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def loader_throughput(loader, min_run_time: float = 0.1, threads: int = BENCHMARK_THREADS) -> tuple[int, Timing]:
    """Samples per epoch, and the Timing of a full epoch: samples/s is samples / timing.median."""
    samples = sum(len(batch[0]) for batch in loader)  # one warm-up epoch that also counts the samples

    def epoch() -> None:
        for _ in loader:
            pass

    return samples, benchmark(epoch, "cpu", min_run_time, threads=threads)


DEFAULT_LOADER = "default, 0 workers"  # the reference every other loader is compared with


def throughput_table(n_samples: int, n_features: int, batch_sizes, worker_counts, min_run_time: float,
                     seed: int = 0, threads: int = BENCHMARK_THREADS) -> list[dict[str, object]]:
    """Each loader at each batch size: its epoch Timing, samples/s from the median, and "vs default"."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, n_features, generator=gen)
    y = torch.randint(0, 4, (n_samples,), generator=gen)
    dataset = TensorDataset(X, y)
    rows = []
    factories = [(f"default, {w} workers", w, partial(make_loader, dataset, num_workers=w, generator=gen))
                 for w in worker_counts]
    factories += [("BatchSampler, batch_size=None", 0, partial(batch_sampler_loader, dataset, generator=gen)),
                  ("fast path (X[idx])", 0, partial(FastBatchLoader, X, y, generator=gen))]
    for batch_size in batch_sizes:
        for name, workers, factory in factories:
            loader = factory(batch_size=batch_size)
            samples, epoch = loader_throughput(loader, min_run_time, threads)
            rows.append({"batch_size": batch_size, "loader": name, "workers": workers, "samples": samples,
                         "epoch": epoch, "samples_per_s": samples / epoch.median})
            del loader  # shuts persistent workers down before anything else is measured
    return add_speedups(rows)


def add_speedups(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each row with "vs default": its samples/s over the default loader's at the same batch size, from the two
    median epoch times of this run; "vs default noisy" where either of the two timings is."""
    default = {r["batch_size"]: r for r in rows if r["loader"] == DEFAULT_LOADER}
    return [{**r, "vs default": r["samples_per_s"] / default[r["batch_size"]]["samples_per_s"],
             "vs default noisy": r["epoch"].noisy or default[r["batch_size"]]["epoch"].noisy} for r in rows]


def per_sample(timing: Timing, batch_size: int) -> Timing:
    """A batch's Timing as a per-sample one: median and IQR divided by the batch size (the IQR's share is kept)."""
    return replace(timing, median=timing.median / batch_size, iqr=timing.iqr / batch_size)


def time_breakdown(n_samples: int, n_features: int, batch_size: int, min_run_time: float,
                   generator: torch.Generator | None = None, threads: int = BENCHMARK_THREADS) -> dict[str, Timing]:
    """Per-sample Timings of __getitem__ and of default_collate, vs one batched index, at `batch_size`."""
    X = torch.randn(n_samples, n_features, generator=generator)  # (n, f)
    y = torch.randint(0, 4, (n_samples,), generator=generator)  # (n,)
    dataset = TensorDataset(X, y)
    samples = [dataset[i] for i in range(batch_size)]
    idx = torch.arange(batch_size)
    steps = {
        "__getitem__ per sample": lambda: [dataset[i] for i in range(batch_size)],
        "default_collate per sample": lambda: default_collate(samples),
        "X[idx], y[idx] per sample": lambda: (X[idx], y[idx]),
    }
    return {name: per_sample(benchmark(step, "cpu", min_run_time, threads=threads), batch_size)
            for name, step in steps.items()}


def print_breakdown(breakdown: dict[str, Timing], batch_size: int) -> None:
    print_table(f"Where the time goes at batch {batch_size}, per sample", ["step", *TIMING_HEADERS],
                [[name, *timing_cells(timing)] for name, timing in breakdown.items()])
    print(timing_note(next(iter(breakdown.values())).threads))


def print_throughput(rows: list[dict[str, object]], n_samples: int) -> None:
    def ratio(r: dict[str, object]) -> str:
        return f"{r['vs default']:.1f}×" + (f" {NOISY_MARK}" if r["vs default noisy"] else "")

    print_table(f"{n_samples:,} in-memory samples per epoch: samples/s from the median epoch time",
                ["batch", "loader", "samples/s", f"epoch {TIMING_HEADERS[1]}", "vs default"],
                [[r["batch_size"], r["loader"], f"{r['samples_per_s']:,.0f}", timing_cells(r["epoch"])[1], ratio(r)]
                 for r in rows])
    print(timing_note(rows[0]["epoch"].threads))
    if any(r["workers"] for r in rows):
        print("A loader with workers reads in worker processes, each on one thread (DataLoader sets it).")

# %%
if __name__ == "__main__":
    breakdown = time_breakdown(cfg.throughput_samples, cfg.n_features, BREAKDOWN_BATCH, cfg.min_run_time, ctx.generator)
    print_breakdown(breakdown, BREAKDOWN_BATCH)
    throughput = throughput_table(cfg.throughput_samples, cfg.n_features, cfg.batch_sizes, cfg.worker_counts,
                                  cfg.min_run_time, ctx.seed)
    print_throughput(throughput, cfg.throughput_samples)


# %% [markdown]
# ## Summary figure
#
# One picture of the sections above: the synthetic classes, the training features before and
# after standardising, the sliding windows, the sampler's class balance, loader throughput and
# the memory a file costs as a copy and through a map. `plot_analysis` only draws what the
# sections kept; it computes nothing, so it cannot disagree with the printed tables.

# %%
def plot_analysis(counts, stats, series, class_balance, throughput, footprint, file_bytes):
    from matplotlib.ticker import NullLocator

    fig, axes = new_figure(2, 3, "Datasets and DataLoaders: data, transforms, sampling, throughput and memory")
    ax_classes, ax_stats, ax_series, ax_sampler, ax_speed, ax_memory = axes.flat

    bars = ax_classes.bar(range(len(counts)), counts, color="tab:blue")
    ax_classes.bar_label(bars)
    ax_classes.set(title="Synthetic data: samples per class", xlabel="class", ylabel="samples",
                   xticks=range(len(counts)))

    raw_mean, raw_std = stats["raw mean"], stats["raw std"]
    features = np.arange(len(raw_mean))
    ax_stats.errorbar(features - 0.15, raw_mean, yerr=raw_std, fmt="o", capsize=3, label="raw")
    ax_stats.errorbar(features + 0.15, stats["standardised mean"], yerr=stats["standardised std"], fmt="s",
                      capsize=3, label="standardised (train statistics)")
    ax_stats.set(title="Training features: mean ± std, before and after", xlabel="feature", ylabel="value",
                 xticks=features, ylim=(min(-3.0, float((raw_mean - raw_std).min()) - 1),
                                        float((raw_mean + raw_std).max()) + 5))
    ax_stats.legend(fontsize=8, loc="upper center", ncols=2)

    window, horizon = SERIES_WINDOW, SERIES_HORIZON
    ax_series.plot(np.arange(len(series)), series, color="grey", linewidth=1, label="series")
    for k, (start, color) in enumerate([(20, "tab:blue"), (60, "tab:orange")]):
        ax_series.axvspan(start, start + window, color=color, alpha=0.2, label=f"window of item {start}")
        ax_series.plot(range(start + window, start + window + horizon),
                       series[start + window:start + window + horizon], "o", color=color,
                       label=f"its {horizon} target(s)" if k == 0 else None)
    ax_series.set(title=f"Time series: window {window}, horizon {horizon}", xlabel="time step", ylabel="value",
                  xlim=(0, min(len(series), 150)), ylim=(float(series.min()) - 0.2, float(series.max()) + 1.2))
    ax_series.legend(fontsize=7, loc="upper center", ncols=2)

    classes = np.arange(len(class_balance["dataset"]))
    for offset, (name, values) in zip((-0.2, 0.2), class_balance.items()):
        ax_sampler.bar(classes + offset, np.array(values) / sum(values), 0.4, label=name)
    ax_sampler.axhline(1 / len(classes), color="black", linestyle="--", linewidth=1, label="balanced")
    ax_sampler.set(title="Imbalanced data: class frequencies", xlabel="class", ylabel="fraction of samples",
                   xticks=classes)
    ax_sampler.legend(fontsize=8)

    for loader in dict.fromkeys(r["loader"] for r in throughput):
        mine = [r for r in throughput if r["loader"] == loader]
        ax_speed.plot([r["batch_size"] for r in mine], [r["samples_per_s"] for r in mine], "o-", label=loader)
    ax_speed.set(xscale="log", yscale="log", title="Loader throughput (in-memory tensors)", xlabel="batch size",
                 ylabel="samples per second (from the median; log)")
    batch_sizes = sorted({r["batch_size"] for r in throughput})
    ax_speed.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax_speed.xaxis.set_minor_locator(NullLocator())
    rates = [r["samples_per_s"] for r in throughput]
    ax_speed.set_ylim(min(rates) / 2, max(rates) * 30)  # headroom for the legend above the lines
    ax_speed.legend(fontsize=7, loc="upper left", ncols=2)

    approaches = list(footprint)
    measures = list(footprint[approaches[0]])
    width = 0.8 / len(measures)
    for k, measure in enumerate(measures):
        values = [footprint[a][measure] / 2**20 for a in approaches]
        bars = ax_memory.bar(np.arange(len(approaches)) + (k - (len(measures) - 1) / 2) * width, values, width,
                             label=measure)
        ax_memory.bar_label(bars, fmt="%.0f", fontsize=7)
    ax_memory.axhline(file_bytes / 2**20, color="black", linestyle="--", linewidth=1,
                      label=f"file size ({file_bytes / 2**20:.0f} MiB)")
    ax_memory.set_xticks(range(len(approaches)), ["load a copy", "read every row\nthrough the map"])
    ax_memory.set(title="Memory added while the data is in use", ylabel="MiB added",
                  ylim=(0, file_bytes / 2**20 * 1.6))
    ax_memory.legend(fontsize=7, loc="upper center", ncols=2)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig

# %%
if __name__ == "__main__":
    fig = plot_analysis(class_counts(raw.targets, cfg.n_classes), stats, series.numpy(), class_balance, throughput,
                        footprint, file_bytes)
    save_figure(fig, "dataset_loader_analysis.png", ctx.plots_dir)
