"""Datasets and DataLoaders: five kinds of data, batching, sampling, collation and throughput.

Lesson 5 of the course. Run `python dataset_loader_demo.py` (add `--quick` for a smoke run).
It builds Datasets for tabular, image, time-series, text and memory-mapped data; shows the
DataLoader's batching, seeded shuffling, workers, padding collation, weighted and distributed
sampling; and measures where loading time goes and how a batched fast path removes it.
It ends by training an MLP and a CNN on the digits with the complete loop (splits, losses,
AdamW, schedule, clipping, early stopping, exact checkpoint resume, profiling, evaluation).
Figures: plots/dataset_loader_analysis.png, plots/digits_samples.png, plots/digits_training.png.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.nn.utils.rnn import pad_sequence
from torch.profiler import record_function
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Subset,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
    random_split,
)

from lesson_harness import (
    LessonContext,
    as_device,
    finish,
    fmt_seconds,
    fmt_timing,
    new_figure,
    print_section,
    print_table,
    profile_events,
    run_lesson,
    save_figure,
    time_median,
    wall_seconds,
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
    min_run_time: float = 0.1  # seconds per throughput measurement
    digits_epochs: int = 10  # most epochs per capstone model (early stopping may end a run sooner)


FULL = Config()
# Quick mode starts a single worker (augmentation's; seeding from the loader needs one): under spawn each
# worker imports torch afresh, which takes seconds.
QUICK = Config(n_samples=400, throughput_samples=1_000, batch_sizes=(32, 128), worker_counts=(0,), augment_workers=1,
               memmap_workers=0, memmap_rows=2_000, min_run_time=0.01, digits_epochs=2)
LOADER_TIMEOUT_S = 60  # a worker that produces no batch for this long has hung: fail instead of waiting
VAL_FRACTION = 0.2  # share of the tabular rows held out for validation
IMBALANCED_CLASS_WEIGHTS = (0.7, 0.2, 0.07, 0.03)  # class shares of the imbalanced dataset (one per class)
BATCH_SIZE = 64  # batch size of the DataLoader basics
ORDER_BATCH = 8  # labels shown when comparing shuffled orders
AUGMENT_BATCH = 256  # batch size of the two-worker augmentation run over the digits
NOISE_STD = 0.05  # std of the Gaussian noise augmentations
SERIES_LENGTH = 500  # steps in the synthetic time series
SERIES_WINDOW = 24  # past steps each time-series item holds
SERIES_HORIZON = 4  # future steps it predicts
TEXT_SEQ_LEN = 32  # characters per text item
SHARD_INDICES, SHARD_REPLICAS = 12, 3  # a dataset size and rank count small enough to print the shards
MEMMAP_FEATURES = 16  # float32 columns of the memory-mapped file
FOOTPRINT_MIB = 40  # file in the memory measurement: > 32 MiB, so glibc's malloc maps fresh pages for the copy
FOOTPRINT_FEATURES = 4096  # its float32 columns: rows of 16 KiB
BREAKDOWN_BATCH = 128  # batch size of the per-step time breakdown
SAMPLE_TEXT = (  # for the character-level dataset; includes non-ASCII so Unicode is exercised
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune. Naïve café owners in Zürich say «ça va» — "
    "and in 東京 they say こんにちは. 🚀 "
)
# The capstone (a digit classifier); the number of epochs is Config.digits_epochs.
DIGITS_ARCHS = ("mlp", "cnn")  # the two models, chosen by name
DIGITS_SPLIT = (0.70, 0.15, 0.15)  # train / validation / test fractions for random_split
DIGITS_HIDDEN = 128  # width of the MLP's hidden layer
DIGITS_CHANNELS = (16, 32)  # output channels of the CNN's two 3×3 convolutions
DIGITS_DROPOUT = 0.1  # dropout probability before each model's last layer
DIGITS_BATCH_SIZE = 128  # training batch size: 10 optimizer steps per epoch
DIGITS_EVAL_BATCH_SIZE = 512  # evaluation batch size: no graph is kept, so large batches are cheap
DIGITS_PEAK_LR = 1e-2  # AdamW learning rate at the end of the warm-up
DIGITS_WARMUP_EPOCHS = 1  # linear warm-up over this many epochs, then cosine decay to 0
DIGITS_WEIGHT_DECAY = 0.05  # AdamW decoupled weight decay, on Linear and Conv weights only
DIGITS_LABEL_SMOOTHING = 0.1  # training target: 0.9 · one-hot + 0.1 · uniform
DIGITS_MAX_GRAD_NORM = 1.0  # clip_grad_norm_ threshold on the global gradient norm
DIGITS_PATIENCE = 3  # epochs without a lower validation loss before early stopping
DIGITS_THREADS = 1  # threads (torch intra-op, BLAS) for the capstone's tiny computations; see "Where the time goes"
RESUME_EPOCHS = 2  # the in-script resume check trains this many epochs, checkpointing halfway
LOGREG_MAX_ITER = 1_000  # L-BFGS iteration cap for the logistic-regression baseline (it converges well before)


def _check_index(index: int, length: int) -> int:
    """Sequence-style indexing: negative counts from the end; out of range raises IndexError."""
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for a dataset of length {length}")
    return index % length


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


# %% [markdown]
# ## Images: scikit-learn's 8×8 digits
#
# Images are (channels, height, width) float tensors, scaled to [0, 1]. Augmentations make new
# training images from old ones; they must keep shape and value range (hence noise clamped to [0, 1]).

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


# %% [markdown]
# ## DataLoader: seeds and workers
#
# `shuffle=True` draws a new order every epoch from `generator=`: the same seed repeats the
# sequence of orders, another seed gives others. With `num_workers>0` each worker is a separate
# process. Whenever it starts workers (each epoch, or once with `persistent_workers=True`),
# DataLoader draws a base seed from `generator=` and seeds torch, NumPy and `random` in worker k
# from that seed and k, so random augmentations differ between workers and repeat from run to
# run. (The `seed_worker` recipe of older tutorials has not been needed since torch 1.9, which
# seeds all three itself.) On macOS and Windows workers are started with spawn, which re-imports
# the script: that is why all work sits under `if __name__ == "__main__":` and every Dataset and
# transform is defined at the top level of this module. A notebook cannot be re-imported, so there
# import them from this module instead of defining them in a cell. `pin_memory=True` only helps
# when copying to a GPU (and warns without one); `timeout=` makes a hung worker an error instead
# of a hang.

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
    """Samples (not batches) per second over full epochs (median of Timer runs)."""
    samples = sum(len(batch[0]) for batch in loader)  # one warm-up epoch that also counts the samples

    def epoch() -> None:
        for _ in loader:
            pass

    return samples / time_median(epoch, "cpu", min_run_time)


DEFAULT_LOADER = "default, 0 workers"  # the reference every other loader is compared with


def throughput_table(n_samples: int, n_features: int, batch_sizes, worker_counts, min_run_time: float,
                     seed: int = 0) -> list[dict[str, object]]:
    """Samples/s of each loader at each batch size, and its ratio to the default loader at that batch size."""
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
    return add_speedups(rows)


def add_speedups(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each row with "vs default": its samples/s over the default loader's at the same batch size."""
    default = {r["batch_size"]: r["samples_per_s"] for r in rows if r["loader"] == DEFAULT_LOADER}
    return [{**r, "vs default": r["samples_per_s"] / default[r["batch_size"]]} for r in rows]


def time_breakdown(n_samples: int, n_features: int, batch_size: int, min_run_time: float,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """Seconds per sample spent in __getitem__ and in default_collate, vs one batched index."""
    X = torch.randn(n_samples, n_features, generator=generator)  # (n, f)
    y = torch.randint(0, 4, (n_samples,), generator=generator)  # (n,)
    dataset = TensorDataset(X, y)
    samples = [dataset[i] for i in range(batch_size)]
    idx = torch.arange(batch_size)
    return {
        "__getitem__ per sample": time_median(lambda: [dataset[i] for i in range(batch_size)], "cpu",
                                              min_run_time) / batch_size,
        "default_collate per sample": time_median(lambda: default_collate(samples), "cpu", min_run_time) / batch_size,
        "X[idx], y[idx] per sample": time_median(lambda: (X[idx], y[idx]), "cpu", min_run_time) / batch_size,
    }


# %% [markdown]
# ## The sections, one function each
#
# Each `show_*` function runs one section of the lesson: it calls the functions above, prints
# what they return, and hands back what the figures need.

# %%
def show_tabular(cfg: Config, seed: int, generator: torch.Generator) -> tuple[SyntheticDataset, dict]:
    print_section("Tabular data with a transform fitted on the training split")
    raw = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=seed)
    train_idx, _ = split_indices(len(raw), VAL_FRACTION, generator)
    standardize = Standardize.fit(raw.inputs[train_idx])
    train = raw.with_transform(Compose(standardize, AddGaussianNoise(NOISE_STD)))
    x, y = train[train_idx[0]]
    print(f"{len(raw)} samples, {cfg.n_features} features, {cfg.n_classes} classes; item {train_idx[0]}: "
          f"x {tuple(x.shape)} {x.dtype}, y {y.item()} ({y.dtype})")
    stats = standardisation_stats(raw.inputs, train_idx, standardize)
    print(f"train feature means {stats['raw max |mean|']:.2f} (max |mean|) → {stats['standardised max |mean|']:.1e} "
          f"after standardising; the {len(raw) - len(train_idx)} validation rows are never seen by fit()")
    return raw, stats


def show_loaders(dataset: Dataset, seed: int, device: torch.device) -> None:
    print_section("DataLoader basics")
    facts = batching_facts(dataset, BATCH_SIZE, seed)
    print(f"batch {BATCH_SIZE}: x {facts['x shape']}, y {facts['y shape']}; {facts['batches']} batches per epoch "
          f"(last one {facts['last batch']} rows); drop_last=True gives {facts['batches with drop_last']}")
    seeded, again, other = (first_batch_labels(dataset, ORDER_BATCH, s) for s in (seed, seed, seed + 1))  # 2 epochs
    print(f"first-batch labels, seed {seed}: epoch 1 {seeded[0]}, epoch 2 {seeded[1]}")
    print(f"a new loader with seed {seed} repeats both: {again == seeded}; seed {seed + 1}, epoch 1: {other[0]}")
    print(f"pin_memory: {make_loader(dataset, BATCH_SIZE, device=device).pin_memory} "
          f"(only when the device is CUDA: {device.type})")


def _workers(n: int) -> str:
    return f"{n} worker" + ("s" if n != 1 else "")


def show_digits(seed: int, workers: int) -> tuple[list[int], list[list[torch.Tensor]], list[int]]:
    digits = DigitsDataset()
    augmented = digits.with_transform(digits_augmentation())
    image, label = digits[0]
    print(f"\ndigits: {len(digits)} images, item 0 is {tuple(image.shape)} {image.dtype} in "
          f"[{image.min().item():.1f}, {image.max().item():.1f}], label {label.item()}")
    first, second = (augmented_epoch_checksums(augmented, AUGMENT_BATCH, workers, seed) for _ in range(2))
    print(f"{_workers(workers)}, seeded, random augmentation: two runs with one seed identical: {first == second}")
    return (*digit_examples(digits, augmented), class_counts(digits.targets, 10))


def show_series_and_text(generator: torch.Generator) -> torch.Tensor:
    print_section("Time series and text")
    series = make_series(SERIES_LENGTH, generator)
    windows = TimeSeriesDataset(series, SERIES_WINDOW, SERIES_HORIZON)
    wx, wy = windows[10]
    print(f"series of {len(series)}, window {SERIES_WINDOW}, horizon {SERIES_HORIZON} → {len(windows)} items; "
          f"item 10: x {tuple(wx.shape)}, y {tuple(wy.shape)}")
    text = CharTextDataset(SAMPLE_TEXT, TEXT_SEQ_LEN)
    tx, ty = text[0]
    print(f"text: {len(SAMPLE_TEXT)} characters, vocabulary {len(text.vocab)}, {len(text)} items")
    print(f"item 0  x: {text.decode(tx)!r}\n        y: {text.decode(ty)!r}")
    sample = "café 東京 🚀"
    print(f"decode(encode({sample!r})) == {sample!r}: {text.decode(text.encode(sample)) == sample}")
    try:
        text.encode("Ω")
    except ValueError as err:
        print(f"encode('Ω'): ValueError: {err}")
    return series


def show_collation(seed: int) -> None:
    print_section("Collation of variable-length sequences")
    variable = VariableLengthDataset(64, seed)
    print(f"default_collate: RuntimeError: {default_collate_error(variable, 4)}")
    padded, lengths, targets = next(iter(DataLoader(variable, batch_size=4, collate_fn=pad_collate)))
    print(f"pad_collate: padded {tuple(padded.shape)}, lengths {lengths.tolist()}, targets {tuple(targets.shape)}")


def show_sampling(cfg: Config, seed: int) -> dict[str, list[int]]:
    print_section("Weighted sampling of an imbalanced dataset")
    imbalanced = SyntheticDataset(cfg.n_samples, cfg.n_features, cfg.n_classes, seed=seed,
                                  class_weights=IMBALANCED_CLASS_WEIGHTS)
    counts = weighted_class_counts(imbalanced.targets, cfg.n_classes, seed)
    print_table("Class frequencies", ["class", "in the dataset", "drawn by the sampler"],
                [[c, f"{counts['dataset'][c] / len(imbalanced):.3f}",
                  f"{counts['weighted sampler'][c] / len(imbalanced):.3f}"] for c in range(cfg.n_classes)])

    print_section("DistributedSampler without a process group")
    shards = distributed_shards(SHARD_INDICES, SHARD_REPLICAS, epoch=0, seed=seed)
    print(f"{SHARD_INDICES} indices on {SHARD_REPLICAS} ranks, epoch 0: {shards}")
    print(f"epoch 1: {distributed_shards(SHARD_INDICES, SHARD_REPLICAS, epoch=1, seed=seed)}")
    print(f"disjoint and complete: {sorted(i for s in shards for i in s) == list(range(SHARD_INDICES))}")
    return counts


def show_memmap(cfg: Config, generator: torch.Generator) -> tuple[dict[str, dict[str, int]], int]:
    print_section("Memory-mapped data")
    with tempfile.TemporaryDirectory() as tmp:
        array = torch.randn(cfg.memmap_rows, MEMMAP_FEATURES, generator=generator).numpy()  # (rows, features)
        mapped = MemmapDataset(write_memmap(Path(tmp) / "rows.f32", array), MEMMAP_FEATURES)
        loaded = loaded_through_workers(mapped, 512, num_workers=cfg.memmap_workers)
        equal = torch.equal(loaded, torch.from_numpy(array))
        print(f"{len(mapped)} rows via {_workers(cfg.memmap_workers)} equal the array written: {equal}")
        big = np.zeros((FOOTPRINT_MIB * 2**20 // (4 * FOOTPRINT_FEATURES), FOOTPRINT_FEATURES), dtype=np.float32)
        path = write_memmap(Path(tmp) / "big.f32", big)
        footprint, file_bytes = memmap_footprint(path, FOOTPRINT_FEATURES), path.stat().st_size
    measures = list(footprint["in-memory copy"])
    print_table(f"MiB added while a {file_bytes / 2**20:.0f} MiB file is in use (to the nearest MiB; other "
                "allocations add up to a few hundred KiB)", ["approach", *measures],
                [[name, *(f"{v / 2**20:.0f}" for v in values.values())] for name, values in footprint.items()])
    return footprint, file_bytes


def show_throughput(cfg: Config, seed: int, generator: torch.Generator) -> list[dict[str, object]]:
    print_section("Throughput")
    breakdown = time_breakdown(cfg.throughput_samples, cfg.n_features, BREAKDOWN_BATCH, cfg.min_run_time, generator)
    print_table(f"Where the time goes at batch {BREAKDOWN_BATCH}", ["step", "per sample"],
                [[name, fmt_seconds(seconds)] for name, seconds in breakdown.items()])
    throughput = throughput_table(cfg.throughput_samples, cfg.n_features, cfg.batch_sizes, cfg.worker_counts,
                                  cfg.min_run_time, seed)
    print_table(f"{cfg.throughput_samples:,} in-memory samples per epoch (median of Timer runs)",
                ["batch", "loader", "samples/s", "vs default"],
                [[r["batch_size"], r["loader"], fmt_timing(r["samples_per_s"], ",.0f"),
                  fmt_timing(r["vs default"], ".1f", "×")] for r in throughput])
    return throughput


# %% [markdown]
# ## Figures
#
# The plot functions draw what the sections returned; they compute nothing, so a figure cannot
# disagree with the printed tables.

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
                 ylabel="samples per second (log)")
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


# %% [markdown]
# ## Putting it together: a digit classifier
# Everything above prepares data; this section trains on it. Two small networks, an MLP and a
# CNN, learn the 8×8 digits with the complete loop a real project needs: a seeded split scaled
# with training statistics only, a numerically stable loss, AdamW with parameter groups, a
# warm-up and cosine learning-rate schedule, gradient clipping, `train()` and `eval()` modes,
# early stopping on the validation loss, a checkpoint that resumes bit for bit, a profile of
# where an epoch's time goes, and one final measurement on a test split that no decision has
# seen. scikit-learn's logistic regression on the same split is the baseline to beat.

# %% [markdown]
# ### Data: one seeded split, scaled with training statistics
# `random_split` with a seeded generator cuts the 1,797 images into about 70/15/15 % once: the
# same seed gives the same split, another seed another. One mean and one standard deviation
# (the images have one channel) come from the training images only and are applied to all
# three splits. The data is 1,797 × 64 floats already in memory, so batches come from the fast
# path above (one index operation per batch with a seeded `randperm`) instead of a DataLoader
# calling `__getitem__` once per image and collating. With CUDA each batch is copied into pinned
# (page-locked) memory, so `.to(device, non_blocking=True)` returns before the copy ends; on
# other devices pinning would only add a copy, and `pin_memory` warns without an accelerator.

# %%
@cache
def _digits() -> DigitsDataset:
    """Read once per process: every training run below starts from the same images (and never modifies them)."""
    return DigitsDataset()


def make_digits_splits(seed: int) -> tuple[Subset, Subset, Subset]:
    """(train, val, test) Subsets of (image (1, 8, 8) float32, label int64), standardised with train statistics."""
    digits = _digits()
    train, val, test = random_split(digits, DIGITS_SPLIT, generator=torch.Generator().manual_seed(seed))
    train_images = digits.inputs[train.indices]  # (n_train, 1, 8, 8), pixels in [0, 1]
    mean, std = train_images.mean(), train_images.std()  # one channel: one mean, one std
    scaled = TensorDataset((digits.inputs - mean) / std, digits.targets.clone())  # new tensors: the cache stays intact
    return Subset(scaled, train.indices), Subset(scaled, val.indices), Subset(scaled, test.indices)


def subset_tensors(subset: Subset) -> tuple[torch.Tensor, torch.Tensor]:
    """A Subset of a TensorDataset as two tensors, gathered with one index each."""
    images, labels = subset.dataset.tensors
    idx = torch.as_tensor(subset.indices, dtype=torch.long)
    return images[idx], labels[idx]  # (n, 1, 8, 8), (n,)


def split_summary(splits: Sequence[Subset]) -> list[dict[str, object]]:
    """Size, share and pixel statistics of each split: the training split has mean 0 and std 1 by construction."""
    total = sum(len(s) for s in splits)
    rows = []
    for name, subset in zip(("train", "validation", "test"), splits):
        images, labels = subset_tensors(subset)
        rows.append({"split": name, "images": len(subset), "share": len(subset) / total,
                     "pixel mean": images.mean().item(), "pixel std": images.std().item(),
                     "classes present": int(labels.unique().numel())})
    return rows


class PinnedBatchLoader(FastBatchLoader):
    """FastBatchLoader whose batches sit in pinned memory, so a non_blocking copy to CUDA is asynchronous."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in super().__iter__():
            yield images.pin_memory(), labels.pin_memory()


def make_digits_loader(subset: Subset, batch_size: int, device: torch.device, shuffle: bool = False,
                       generator: torch.Generator | None = None) -> FastBatchLoader:
    images, labels = subset_tensors(subset)
    loader_class = PinnedBatchLoader if device.type == "cuda" else FastBatchLoader
    return loader_class(images, labels, batch_size, shuffle=shuffle, generator=generator)


# %% [markdown]
# ### Two models, chosen by name
# The MLP sees 64 numbers and no geometry. The CNN applies the same 3×3 filters at every
# position, so a stroke detector learned in one place works everywhere, with few weights. The
# convolutions have no bias because the BatchNorm after each one subtracts the batch mean,
# which would cancel any bias. Both have dropout before their last layer, so training mode and
# evaluation mode compute different functions.

# %%
def make_digits_model(arch: str) -> nn.Module:
    """'mlp' or 'cnn': (batch, 1, 8, 8) images → (batch, 10) logits."""
    if arch == "mlp":
        return nn.Sequential(
            nn.Flatten(),  # (batch, 64)
            nn.Linear(64, DIGITS_HIDDEN), nn.ReLU(),  # (batch, hidden)
            nn.Dropout(DIGITS_DROPOUT),
            nn.Linear(DIGITS_HIDDEN, 10),  # (batch, 10)
        )
    if arch == "cnn":
        c1, c2 = DIGITS_CHANNELS
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),  # (batch, c1, 8, 8)
            nn.MaxPool2d(2),  # (batch, c1, 4, 4)
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),  # (batch, c2, 4, 4)
            nn.MaxPool2d(2),  # (batch, c2, 2, 2)
            nn.Flatten(), nn.Dropout(DIGITS_DROPOUT),  # (batch, 4 * c2)
            nn.Linear(4 * c2, 10),  # (batch, 10)
        )
    raise ValueError(f"arch={arch!r} is not one of {', '.join(map(repr, DIGITS_ARCHS))}")


def parameter_counts(archs: Sequence[str] = DIGITS_ARCHS) -> dict[str, int]:
    return {arch: sum(p.numel() for p in make_digits_model(arch).parameters()) for arch in archs}


# %% [markdown]
# ### Losses: cross-entropy on logits, and label smoothing as a module
# `nn.CrossEntropyLoss` takes logits and computes log-softmax with the log-sum-exp trick: it
# never takes the log of a rounded probability. Doing it by hand fails at large logits: `exp(1000)` is `inf`
# in float32, so exp-normalise-log gives `nan`; even a stable softmax rounds `exp(-1000)` to 0
# and its log is `-inf`. Label smoothing trains against (1 − s)·one-hot + s/10 instead of the
# one-hot target, which keeps the model from driving logits apart without bound. Written as
# an `nn.Module`, it equals `F.cross_entropy(..., label_smoothing=s)` in value and gradient.
# Its lowest possible value is not 0 but the entropy of the smoothed target.

# %%
def softmax_then_log_failure(logits: Sequence[float] = (1000.0, 0.0, -1000.0)) -> dict[str, list[float]]:
    """The loss of one float32 sample for every possible target, computed three ways."""
    z = torch.tensor([list(logits)], dtype=torch.float32)  # (1, classes)
    exp = torch.exp(z)  # exp(1000) overflows to inf
    by_hand = -torch.log(exp / exp.sum(dim=1, keepdim=True))  # inf / inf = nan
    softmax_log = -torch.log(torch.softmax(z, dim=1))  # exp(-1000) underflows to 0, log(0) = -inf
    targets = torch.arange(z.shape[1])
    stable = F.cross_entropy(z.expand(len(targets), -1), targets, reduction="none")
    return {name: (losses + 0.0).tolist() for name, losses in  # + 0.0: print -log(1) as 0, not -0
            (("exp, normalise, log", by_hand[0]), ("softmax, then log", softmax_log[0]), ("F.cross_entropy", stable))}


class LabelSmoothingCrossEntropy(nn.Module):
    """Mean cross-entropy against the target (1 − s)·one-hot + s/classes, from logits."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing={smoothing} must be in [0, 1]")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(f"expected logits (batch, classes) and target (batch,), got {tuple(logits.shape)} "
                             f"and {tuple(target.shape)}")
        log_probs = F.log_softmax(logits, dim=1)  # (batch, classes), log-sum-exp inside: finite for any logits
        true_class = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (batch,)
        uniform = -log_probs.mean(dim=1)  # (batch,): cross-entropy against the uniform target
        return ((1.0 - self.smoothing) * true_class + self.smoothing * uniform).mean()

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


def smoothed_loss_floor(smoothing: float, n_classes: int = 10) -> float:
    """Entropy of the smoothed target: the loss of a model that predicts that target exactly."""
    target = torch.full((n_classes,), smoothing / n_classes, dtype=torch.float64)
    target[0] += 1.0 - smoothing
    return -torch.special.xlogy(target, target).sum().item() + 0.0  # xlogy: 0 · log 0 = 0; + 0.0 turns -0 into 0


def label_smoothing_gap(smoothing: float, seed: int, scale: float = 1.0) -> dict[str, float]:
    """Relative difference of the loss, and largest absolute difference of the gradient, vs F.cross_entropy."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(64, 10, generator=gen)).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=gen)
    mine = LabelSmoothingCrossEntropy(smoothing)(logits, target)
    (grad_mine,) = torch.autograd.grad(mine, logits)
    reference = F.cross_entropy(logits, target, label_smoothing=smoothing)
    (grad_reference,) = torch.autograd.grad(reference, logits)
    return {"value": ((mine - reference).abs() / reference.abs()).item(),
            "gradient": (grad_mine - grad_reference).abs().max().item()}


# %% [markdown]
# ### Optimisation: parameter groups, a schedule, gradient clipping
# AdamW multiplies each decayed weight by (1 − lr × weight_decay) every step, separately from
# the gradient step: a regulariser on the size of the linear maps that Linear and Conv weights
# hold. Biases only shift activations, and a normalisation layer's weight and bias set the scale
# and shift of its output; pulling those towards 0 does not make the function simpler (a gain
# of 0 silences a channel), so the usual practice is no decay for them. Every parameter goes
# in exactly one group.
# The learning rate rises linearly over the first epoch (Adam's moment estimates are noisy in
# the first steps) and then follows a cosine down to 0; `LambdaLR` applies it per optimizer
# step. `clip_grad_norm_` rescales the gradient when its norm exceeds a threshold and returns
# the norm before clipping, which is what to log.

# %%
DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)  # the layers whose .weight gets weight decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: `weight_decay` on Linear and Conv weights, 0 on everything else."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be non-negative")
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, DECAYED_LAYERS)}
    decay, no_decay = [], []
    for p in model.parameters():  # a shared parameter is listed once
        (decay if id(p) in decayed else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def param_group_rows(model: nn.Module, groups: Sequence[dict]) -> list[dict[str, object]]:
    """Per group: weight decay, tensor and element counts, and the parameters' names."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [{"weight_decay": g["weight_decay"], "tensors": len(g["params"]),
             "elements": sum(p.numel() for p in g["params"]), "names": [names[id(p)] for p in g["params"]]}
            for g in groups]


class WarmupCosine:
    """Learning-rate factor at optimizer step t (from 0): linear warm-up to 1, then a cosine down to 0.

    A callable object rather than a function, so LambdaLR's state_dict (and the checkpoint) keeps it.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 ≤ warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # the first step already moves: factor 1/warmup, not 0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# %% [markdown]
# ### The loop: train, evaluate, stop early
# `model.train()` turns dropout on and makes BatchNorm normalise with the batch's statistics
# (and update its running averages); `model.eval()` turns dropout off and uses the running
# averages. Evaluation runs under `torch.no_grad()`: no graph is recorded, so it is faster and
# uses less memory. The `record_function` labels name the four phases of a step for the
# profiler below; without a profiler running each costs a few microseconds. Early
# stopping ends training when the validation loss has not improved on its best for `patience`
# epochs in a row, and the model returned is the one from the best epoch.

# %%
def _batches_on(loader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    iterator = iter(loader)
    while True:
        with record_function("data loading"):
            batch = next(iterator, None)
            if batch is None:
                return
            images, labels = (t.to(device, non_blocking=True) for t in batch)
        yield images, labels


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                    max_grad_norm: float = DIGITS_MAX_GRAD_NORM) -> dict[str, object]:
    """One pass over `loader`: mean training loss, and per step the gradient norm before clipping and the lr."""
    model.train()
    optimizer.zero_grad(set_to_none=True)  # nothing left over from code that ran before this epoch
    loss_sum, n_samples, grad_norms, lrs = torch.zeros((), device=device), 0, [], []
    for images, labels in _batches_on(loader, device):
        with record_function("forward"):
            loss = loss_fn(model(images), labels)
        with record_function("backward"):
            loss.backward()  # gradients are None here (zeroed after the previous step): they are set, not added
        with record_function("optimizer step"):
            grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * len(labels)  # stays on the device: no synchronisation per step
        n_samples += len(labels)
    return {"loss": (loss_sum / n_samples).item(), "grad_norms": torch.stack(grad_norms).tolist(), "lrs": lrs}


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module, device: torch.device) -> dict[str, float]:
    """Mean loss (`loss_fn` must average over its batch) and accuracy over every sample of `loader`."""
    model.eval()
    loss_sum, correct, n_samples = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for images, labels in _batches_on(loader, device):
        logits = model(images)  # (batch, 10)
        loss_sum += loss_fn(logits, labels) * len(labels)  # weight by batch size: the last batch may be short
        correct += (logits.argmax(dim=1) == labels).sum()
        n_samples += len(labels)
    return {"loss": (loss_sum / n_samples).item(), "accuracy": (correct / n_samples).item()}


class EarlyStopping:
    """Signals a stop once the loss has not beaten its best by more than `min_delta` for `patience` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience={patience} must be at least 1")
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0

    def step(self, loss: float, epoch: int) -> bool:
        """Record `epoch`'s validation loss; True means stop now."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.best_loss, self.best_epoch, self.bad_epochs = state["best_loss"], state["best_epoch"], state["bad_epochs"]


# %% [markdown]
# ### The driver, and a checkpoint that resumes exactly
# `fit_digits` derives every random choice from `seed`: the split, the batch order (a generator
# of its own), initialisation and dropout (torch's global generators, seeded inside the call and
# restored afterwards, as is the number of threads: the caller's settings are left as they were).
# A checkpoint holds what the rest of training depends on: model, optimizer (Adam's moment
# estimates) and scheduler state, the early-stopping counters and best weights, the history, and
# the states of the batch-order generator and of the global generators that dropout draws from.
# Leave any one out and the resumed run differs from the uninterrupted one. It contains only
# tensors, numbers, strings, lists and dicts, so it loads with `torch.load(..., weights_only=True)`,
# which refuses to run code stored in the file. It is written to a temporary file and renamed, so
# a crash during the write leaves the previous checkpoint intact.

# %%
@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Within the block torch's CPU generator (and `device`'s) start from `seed`; afterwards they are restored."""
    cpu_state, device_state = torch.get_rng_state(), _device_rng_state(device)
    try:
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        yield
    finally:
        torch.set_rng_state(cpu_state)
        _set_device_rng_state(device, device_state)


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads (torch.set_num_threads), then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The state of the generator that dropout on `device` draws from (None on the CPU: that one is separate)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def _set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


@dataclass
class DigitsTraining:
    """Everything one training run mutates, built the same way for a fresh start and for a resume."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batch_order: torch.Generator
    train_loader: FastBatchLoader
    val_loader: FastBatchLoader
    test_loader: FastBatchLoader


def build_digits_training(arch: str, epochs: int, seed: int, device: torch.device,
                          peak_lr: float = DIGITS_PEAK_LR) -> DigitsTraining:
    """Model, loss, AdamW, schedule and loaders; call inside seeded_global_rng so initialisation is seeded."""
    train, val, test = make_digits_splits(seed)
    model = make_digits_model(arch).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, DIGITS_WEIGHT_DECAY), lr=peak_lr)
    steps_per_epoch = math.ceil(len(train) / DIGITS_BATCH_SIZE)
    schedule = WarmupCosine(min(DIGITS_WARMUP_EPOCHS * steps_per_epoch, epochs * steps_per_epoch - 1),
                            epochs * steps_per_epoch)
    batch_order = torch.Generator().manual_seed(seed + 1)  # not `seed`: a different stream from the split's
    return DigitsTraining(
        model=model, loss_fn=LabelSmoothingCrossEntropy(DIGITS_LABEL_SMOOTHING), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), batch_order=batch_order,
        train_loader=make_digits_loader(train, DIGITS_BATCH_SIZE, device, shuffle=True, generator=batch_order),
        val_loader=make_digits_loader(val, DIGITS_EVAL_BATCH_SIZE, device),
        test_loader=make_digits_loader(test, DIGITS_EVAL_BATCH_SIZE, device))


@dataclass
class DigitsRun:
    """The result of fit_digits."""

    arch: str
    model: nn.Module  # weights of the epoch with the lowest validation loss (after stop_after: the latest)
    history: list[dict[str, float]]  # one dict per epoch
    test_accuracy: float | None  # measured once, after training; None when stopped for a checkpoint
    best_epoch: int
    step_lrs: list[float]  # learning rate of every optimizer step
    grad_norms: list[float]  # gradient norm of every step, before clipping
    seconds: float  # wall-clock time of this call


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    partial_path = path.with_name(path.name + ".partial")
    torch.save(state, partial_path)
    os.replace(partial_path, path)  # atomic: the file at `path` is always a complete checkpoint


def fit_digits(arch: str, epochs: int = FULL.digits_epochs, seed: int = 0, device: torch.device | str = "cpu",
               checkpoint_path: str | os.PathLike | None = None, stop_after: int | None = None,
               resume_from: str | os.PathLike | None = None, *, peak_lr: float = DIGITS_PEAK_LR,
               patience: int = DIGITS_PATIENCE) -> DigitsRun:
    """Train `arch` on the digits with early stopping; checkpoint after `stop_after` epochs or resume from one."""
    run, seconds = wall_seconds(lambda: _fit_digits(arch, epochs, seed, device, checkpoint_path, stop_after,
                                                    resume_from, peak_lr, patience), device)
    return replace(run, seconds=seconds)


def _fit_digits(arch: str, epochs: int, seed: int, device: torch.device | str,
                checkpoint_path: str | os.PathLike | None, stop_after: int | None,
                resume_from: str | os.PathLike | None, peak_lr: float, patience: int) -> DigitsRun:
    """fit_digits without the stopwatch (`seconds` is 0 here)."""
    device = as_device(device)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be at least 1")
    if stop_after is not None and (checkpoint_path is None or not 1 <= stop_after < epochs):
        raise ValueError(f"stop_after={stop_after} needs a checkpoint_path (got {checkpoint_path!r}) and must be "
                         f"between 1 and epochs - 1 = {epochs - 1}")
    settings = {"arch": arch, "seed": seed, "epochs": epochs, "peak_lr": peak_lr, "patience": patience}
    # + 2: a different stream from the split and the batch order
    with seeded_global_rng(seed + 2, device), intra_op_threads(DIGITS_THREADS):
        parts = build_digits_training(arch, epochs, seed, device, peak_lr)
        stopper = EarlyStopping(patience)
        log = {"history": [], "step_lrs": [], "grad_norms": [], "best_model": _state_copy(parts.model)}
        first_epoch = 1
        if resume_from is not None:
            first_epoch = _restore_checkpoint(resume_from, settings, parts, stopper, log, device) + 1
        for epoch in range(first_epoch, epochs + 1):
            trained = train_one_epoch(parts.model, parts.train_loader, parts.loss_fn, parts.optimizer,
                                      parts.scheduler, device)
            validated = evaluate(parts.model, parts.val_loader, parts.loss_fn, device)
            log["history"].append({"epoch": epoch, "train_loss": trained["loss"], "val_loss": validated["loss"],
                                   "val_accuracy": validated["accuracy"], "lr": trained["lrs"][-1],
                                   "max_grad_norm": max(trained["grad_norms"])})
            log["step_lrs"] += trained["lrs"]
            log["grad_norms"] += trained["grad_norms"]
            stop = stopper.step(validated["loss"], epoch)
            if stopper.best_epoch == epoch:
                log["best_model"] = _state_copy(parts.model)
            if stop:
                break
            if epoch == stop_after:
                save_checkpoint({**settings, **log, "epoch": epoch, "model": parts.model.state_dict(),
                                 "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                                 "early_stopping": stopper.state_dict(),
                                 "rng": {"batch_order": parts.batch_order.get_state(), "cpu": torch.get_rng_state(),
                                         "device": _device_rng_state(device)}}, checkpoint_path)
                return DigitsRun(arch, parts.model, log["history"], None, stopper.best_epoch, log["step_lrs"],
                                 log["grad_norms"], 0.0)
        parts.model.load_state_dict(log["best_model"])
        test_accuracy = evaluate(parts.model, parts.test_loader, parts.loss_fn, device)["accuracy"]
    return DigitsRun(arch, parts.model, log["history"], test_accuracy, stopper.best_epoch, log["step_lrs"],
                     log["grad_norms"], 0.0)


def _restore_checkpoint(path: str | os.PathLike, settings: dict, parts: DigitsTraining, stopper: EarlyStopping,
                        log: dict, device: torch.device) -> int:
    """Load everything fit_digits saved into freshly built objects; return the last completed epoch."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    found = {key: checkpoint.get(key) for key in settings}
    if found != settings:
        raise ValueError(f"resume_from={str(path)!r} was written with {found}, not {settings}")
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    stopper.load_state_dict(checkpoint["early_stopping"])
    log.update({key: checkpoint[key] for key in log})
    parts.batch_order.set_state(checkpoint["rng"]["batch_order"])
    torch.set_rng_state(checkpoint["rng"]["cpu"])
    _set_device_rng_state(device, checkpoint["rng"]["device"])
    return checkpoint["epoch"]


def resume_check(arch: str, epochs: int, stop_after: int, seed: int, device: torch.device) -> dict[str, object]:
    """Train `stop_after` epochs, checkpoint, resume into fresh objects, compare with an uninterrupted run."""
    uninterrupted = fit_digits(arch, epochs, seed, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.pt"
        fit_digits(arch, epochs, seed, device, checkpoint_path=path, stop_after=stop_after)
        size = path.stat().st_size
        resumed = fit_digits(arch, epochs, seed, device, resume_from=path)
    pairs = list(zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values()))
    return {"checkpoint_bytes": size, "tensors": len(pairs),
            "bit_identical": all(torch.equal(a, b) for a, b in pairs) and resumed.history == uninterrupted.history}


# %% [markdown]
# ### Where the time goes
# `torch.profiler` records every operator of one MLP epoch (after a warm-up epoch, so one-off
# initialisation is not counted). Each operator's self time is credited to the phase whose
# `record_function` label encloses it; a phase's total also holds the time inside its label
# that no aten operator accounts for: Python (module calls, the optimizer's loop over its
# parameters) and the autograd engine. With models this small every operator is tiny, so the
# cost per call (Python, dispatch, allocating the output), not arithmetic, sets the time. The
# default AdamW on the CPU updates one parameter tensor at a time with a dozen or more operators
# each, and `clip_grad_norm_` adds more: the optimizer step launches about as many aten
# operators as forward and backward together and spends most of its time outside them. On the
# 2-core test machine it was the largest of the four phases, about a third of the epoch;
# `torch.optim.AdamW(..., foreach=True)` or `fused=True` batch those calls. Data loading, one
# index operation per batch, was about 5 %.
#
# Threads: each operator here works on a few thousand numbers, so a second intra-op thread has
# little to do and costs a synchronisation per operator; when other programs share the cores, a
# thread can also wait a whole time slice for its partner. On the 2-core test machine, two
# threads trained the CNN about a quarter faster than one while the machine was otherwise
# quiet (the MLP gained nothing), and several times slower while other programs were running.
# One thread is the predictable choice for models this small, so the capstone's training,
# profiling and baseline run with `DIGITS_THREADS = 1` (restored afterwards). Models whose
# operators take milliseconds do gain from more threads.

# %%
PROFILE_PHASES = ("data loading", "forward", "backward", "optimizer step")  # record_function labels of a step


def profile_phases(events, phases: Sequence[str] = PROFILE_PHASES, top: int = 3) -> list[dict[str, object]]:
    """Self time (µs) of profiler events summed per enclosing phase label, with each phase's costliest aten operators.

    Events that are not aten operators (the phase label itself, the autograd engine's and the optimizer's own
    labels, CUDA runtime calls) are Python and framework time: counted in the phase's total and in "other us".
    """
    rows = {phase: {"phase": phase, "aten calls": 0, "self cpu us": 0.0, "other us": 0.0, "self device us": 0.0,
                    "operators": Counter()} for phase in (*phases, "other")}
    for event in events:
        if event.device_type != DeviceType.CPU:
            continue  # device-side records: their time is credited to the CPU operator that launched them
        phase, ancestor = "other", event
        while ancestor is not None:
            if ancestor.name in phases:
                phase = ancestor.name
                break
            if ancestor.name.startswith("autograd::engine::evaluate_function"):
                phase = "backward"  # backward of CUDA tensors runs in the device's own autograd thread
            ancestor = ancestor.cpu_parent
        row = rows[phase]
        row["self cpu us"] += event.self_cpu_time_total
        row["self device us"] += event.self_device_time_total
        if event.name.startswith("aten::"):
            row["aten calls"] += 1
            row["operators"][event.name] += event.self_cpu_time_total
        else:
            row["other us"] += event.self_cpu_time_total
    total = sum(row["self cpu us"] for row in rows.values()) or 1.0
    for row in rows.values():
        row["share"] = row["self cpu us"] / total
        row["top operators"] = [name for name, _ in row.pop("operators").most_common(top)]
    return [row for row in rows.values() if row["phase"] != "other" or row["self cpu us"]]


def profile_table(phases: Sequence[dict[str, object]], device: torch.device) -> tuple[list[str], list[list]]:
    """Headers and rows for printing; times, shares and the time-ranked operator names are timing-derived."""
    cuda = device.type == "cuda"
    headers = ["phase", "aten calls", "self CPU time", "share", "outside aten ops", "top aten ops by self time"]
    rows = [[r["phase"], r["aten calls"], fmt_seconds(r["self cpu us"] * 1e-6),
             fmt_timing(100 * r["share"], ".0f", " %"), fmt_seconds(r["other us"] * 1e-6),
             ", ".join(fmt_timing(name, "s") for name in r["top operators"])]
            + ([fmt_seconds(r["self device us"] * 1e-6)] if cuda else []) for r in phases]
    return headers + (["self CUDA time"] if cuda else []), rows


def profile_training_epoch(arch: str, seed: int, device: torch.device) -> list[dict[str, object]]:
    """Profile the second training epoch of a fresh `arch` run and group its operators by phase."""
    with seeded_global_rng(seed + 2, device), intra_op_threads(DIGITS_THREADS):
        parts = build_digits_training(arch, 2, seed, device)
        epoch = partial(train_one_epoch, parts.model, parts.train_loader, parts.loss_fn, parts.optimizer,
                        parts.scheduler, device)
        epoch()  # warm-up
        events = profile_events(epoch, device)
    return profile_phases(events)


# %% [markdown]
# ### What forgetting `model.eval()` does
# Evaluate a copy of a trained model twice in each mode on the validation split. In eval mode
# the two passes agree exactly. In training mode dropout zeroes a different random tenth of
# the activations on every pass, so the predictions change between passes, and BatchNorm
# normalises with the statistics of the batch at hand and overwrites its running averages:
# a forgotten `eval()` during validation quietly changes the model it measures.

# %%
def train_vs_eval(model: nn.Module, subset: Subset, device: torch.device, seed: int) -> dict[str, object]:
    """Accuracy of a copy of `model` on `subset`, twice in eval mode and twice in train mode, under no_grad."""
    probe = copy.deepcopy(model)
    images, labels = (t.to(device) for t in subset_tensors(subset))
    norms = [m for m in probe.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)]
    before = [m.running_mean.clone() for m in norms]
    results: dict[str, object] = {}
    with torch.no_grad(), seeded_global_rng(seed, device), intra_op_threads(DIGITS_THREADS):
        for mode in ("eval", "train"):
            probe.train(mode == "train")
            first, second = probe(images), probe(images)  # (n, 10) each
            results[mode] = {"accuracy": [(out.argmax(1) == labels).float().mean().item() for out in (first, second)],
                             "identical": torch.equal(first, second)}
    results["running stats changed"] = (any(not torch.equal(m.running_mean, b) for m, b in zip(norms, before))
                                        if norms else None)
    return results


# %% [markdown]
# ### Results
# The test split is used once per model, after training, and never for a choice: the model
# whose figure panels show its errors is the one with the lower validation loss. Logistic
# regression (one linear layer, fitted to convergence by L-BFGS) on the same standardised
# pixels is the independent baseline.

# %%
def logistic_regression_baseline(splits: Sequence[Subset]) -> dict[str, float]:
    """scikit-learn's LogisticRegression on the flattened, standardised pixels of the same split."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    (X_train, y_train), (X_val, y_val), (X_test, y_test) = (
        (images.flatten(1).numpy(), labels.numpy()) for images, labels in map(subset_tensors, splits))
    with threadpool_limits(DIGITS_THREADS):  # BLAS threads: tiny matrices again (see "Where the time goes")
        classifier = LogisticRegression(max_iter=LOGREG_MAX_ITER).fit(X_train, y_train)
    return {"val_accuracy": classifier.score(X_val, y_val), "test_accuracy": classifier.score(X_test, y_test),
            "parameters": classifier.coef_.size + classifier.intercept_.size, "iterations": int(classifier.n_iter_[0])}


def choose_by_validation(runs: dict[str, DigitsRun]) -> str:
    """The arch whose best epoch has the lowest validation loss."""
    return min(runs, key=lambda arch: min(h["val_loss"] for h in runs[arch].history))


@torch.no_grad()
def predict_proba(model: nn.Module, subset: Subset, device: torch.device) -> torch.Tensor:
    model.eval()
    images, _ = subset_tensors(subset)
    return torch.softmax(model(images.to(device)), dim=1).cpu()  # (n, 10)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """counts[i, j]: samples of true class i predicted as class j."""
    return torch.bincount(labels * n_classes + predictions, minlength=n_classes**2).reshape(n_classes, n_classes)


def most_confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, k: int) -> list[dict[str, object]]:
    """The k misclassified samples with the highest predicted probability, most confident first."""
    confidence, predicted = probs.max(dim=1)  # (n,), (n,)
    wrong = (predicted != labels).nonzero().squeeze(1)
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:k]
    return [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": confidence[i].item()} for i in wrong[order]]


def clipping_summary(grad_norms: Sequence[float], max_norm: float) -> dict[str, float | int]:
    """Median and largest gradient norm before clipping, and how many steps clip_grad_norm_ rescaled."""
    norms = torch.tensor(grad_norms, dtype=torch.float64)
    return {"median": norms.median().item(), "max": norms.max().item(), "clipped": int((norms > max_norm).sum()),
            "steps": len(norms)}


def results_rows(runs: dict[str, DigitsRun], baseline: dict[str, float], counts: dict[str, int]) -> list[list]:
    rows = [[arch, counts[arch], len(run.history), run.best_epoch,
             f"{100 * run.history[run.best_epoch - 1]['val_accuracy']:.1f} %", f"{100 * run.test_accuracy:.1f} %",
             fmt_seconds(run.seconds)] for arch, run in runs.items()]
    rows.append(["logistic regression (scikit-learn)", baseline["parameters"], "-", "-",
                 f"{100 * baseline['val_accuracy']:.1f} %", f"{100 * baseline['test_accuracy']:.1f} %", "-"])
    return rows


def plot_digits_training(runs: dict[str, DigitsRun], baseline: dict[str, float], loss_floor: float,
                         max_grad_norm: float, shown: str, confusion: torch.Tensor, mistakes: list[dict[str, object]],
                         mistake_images: list[torch.Tensor]):
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(2, 3, "Training a digit classifier: curves, schedule, gradients and errors")
    ax_loss, ax_acc, ax_lr, ax_grad, ax_confusion, ax_mistakes = axes.flat
    colors = dict(zip(runs, ("tab:blue", "tab:orange")))
    for arch, run in runs.items():
        epochs = [h["epoch"] for h in run.history]
        ax_loss.plot(epochs, [h["train_loss"] for h in run.history], "-", color=colors[arch], label=f"{arch} train")
        ax_loss.plot(epochs, [h["val_loss"] for h in run.history], "--", color=colors[arch],
                     label=f"{arch} validation")
        ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in run.history], "o-", markersize=3, color=colors[arch],
                    label=arch)
        ax_acc.axvline(run.best_epoch, color=colors[arch], linestyle=":", linewidth=1)
        steps = np.arange(1, len(run.step_lrs) + 1)
        ax_lr.plot(steps, run.step_lrs, color=colors[arch], label=arch, linewidth=3 if arch == "mlp" else 1.5)
        ax_grad.plot(steps, run.grad_norms, color=colors[arch], linewidth=0.8, label=arch)
    ax_loss.axhline(loss_floor, color="grey", linestyle=":", label="floor: entropy of the smoothed target")
    ax_loss.set(title="Loss per epoch (training: mean over the epoch's batches)", xlabel="epoch",
                ylabel="label-smoothed cross-entropy (nats)")
    ax_loss.legend(fontsize=8)
    ax_acc.axhline(100 * baseline["val_accuracy"], color="grey", linestyle="--",
                   label="logistic regression, same split")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set(title="Validation accuracy (dotted: epoch kept)", xlabel="epoch", ylabel="accuracy (%)",
               ylim=(max(0.0, min(100 * h["val_accuracy"] for r in runs.values() for h in r.history) - 2), 100.5))
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_lr.set(title="Learning rate per optimizer step (warm-up, cosine)", xlabel="optimizer step",
              ylabel="learning rate")
    ax_lr.legend(fontsize=8)
    ax_grad.axhline(max_grad_norm, color="black", linestyle="--", linewidth=1, label="clipping threshold")
    ax_grad.set(title="Gradient norm before clipping", xlabel="optimizer step", ylabel="global L2 norm",
                ylim=(0, 1.1 * max(max(max(run.grad_norms) for run in runs.values()), max_grad_norm)))
    ax_grad.legend(fontsize=8)
    for ax in (ax_loss, ax_acc, ax_lr, ax_grad):
        ax.grid(True, alpha=0.3)

    n = confusion.shape[0]
    ax_confusion.imshow(confusion.numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            count = int(confusion[i, j])
            if count:
                ax_confusion.text(j, i, count, ha="center", va="center", fontsize=7,
                                  color="white" if count > confusion.max() / 2 else "black")
    ax_confusion.set(title=f"{shown}: test-split confusion matrix (counts)", xlabel="predicted digit",
                     ylabel="true digit", xticks=range(n), yticks=range(n))

    ax_mistakes.set_axis_off()
    if mistakes:
        from matplotlib import colormaps

        columns, tile = 4, 8 + 3  # 8 pixels of image, 3 of white band for the label below it
        mosaic = digit_mosaic([mistake_images[i:i + columns] for i in range(0, len(mistakes), columns)], gap=3)
        mosaic = np.pad(mosaic, ((0, 3), (0, 0)), constant_values=np.nan)  # a label band under the last row too
        ax_mistakes.imshow(mosaic, cmap=colormaps["gray_r"].with_extremes(bad="white"), vmin=0, vmax=1)
        for k, mistake in enumerate(mistakes):
            row, col = divmod(k, columns)
            ax_mistakes.text(col * tile + 3.5, row * tile + 9.5, f"{mistake['label']}→{mistake['predicted']}, "
                             f"{100 * mistake['confidence']:.0f} %", ha="center", va="center", fontsize=8)
    ax_mistakes.set_title(f"{shown}: most confident test mistakes" + (
        "\n(true digit→predicted digit, confidence)" if mistakes else ": none"))
    return fig

# %% [markdown]
# ## Running the lesson
#
# `show_digit_classifier` runs the capstone: it trains both models, prints every table and
# returns what the figure needs. `run` only wires: each `show_*` section prints its results and
# returns what the figures need. In a notebook, the last cell runs the lesson with the flags in
# `LESSON_ARGS`.

# %%
def show_digit_classifier(cfg: Config, seed: int, device: torch.device) -> dict[str, object]:
    """The capstone section: train both models, print every table, return what the figure needs."""
    splits = make_digits_splits(seed)
    print_table(f"The digits split by random_split (seed {seed}), standardised with training statistics",
                ["split", "images", "share", "pixel mean", "pixel std", "classes present"],
                [[r["split"], r["images"], f"{r['share']:.3f}", f"{r['pixel mean']:+.3f}", f"{r['pixel std']:.3f}",
                  r["classes present"]] for r in split_summary(splits)])
    counts = parameter_counts()
    print(f"\nparameters: {', '.join(f'{arch} {n:,}' for arch, n in counts.items())}")
    overflow = softmax_then_log_failure()
    print_table("Loss of one float32 sample with logits (1000, 0, -1000), for each target",
                ["method", "target 0", "target 1", "target 2"], [[name, *losses] for name, losses in overflow.items()])
    print_table("LabelSmoothingCrossEntropy vs F.cross_entropy(label_smoothing=s), logits ~ N(0, 100²)",
                ["s", "relative Δ loss", "max |Δ gradient|", "lowest loss (entropy of the target)"],
                [[s, f"{gap['value']:.1e}", f"{gap['gradient']:.1e}", f"{smoothed_loss_floor(s):.4f}"]
                 for s, gap in ((s, label_smoothing_gap(s, seed, scale=100.0)) for s in (0.0, 0.1, 0.3))])
    cnn = make_digits_model("cnn")
    # Building the first optimizer of a process also imports torch._dynamo (about a second here): pay it now, so
    # the training times below measure training.
    adamw = torch.optim.AdamW(param_groups(cnn, DIGITS_WEIGHT_DECAY), lr=DIGITS_PEAK_LR)
    print_table("The CNN's parameter groups, as AdamW holds them",
                ["weight decay", "tensors", "elements", "parameters"],
                [[r["weight_decay"], r["tensors"], r["elements"], ", ".join(r["names"])]
                 for r in param_group_rows(cnn, adamw.param_groups)])

    runs = {arch: fit_digits(arch, cfg.digits_epochs, seed, device) for arch in DIGITS_ARCHS}
    lrs = runs["mlp"].step_lrs
    print(f"\nlearning rate, steps 1-12 of {len(lrs)}: {', '.join(f'{lr:.2e}' for lr in lrs[:12])}")
    for arch, run in runs.items():
        print_table(f"{arch}: one row per epoch (losses are label-smoothed cross-entropy)",
                    ["epoch", "train loss", "val loss", "val accuracy", "last lr", "max grad norm"],
                    [[h["epoch"], f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{100 * h['val_accuracy']:.1f} %",
                      f"{h['lr']:.2e}", f"{h['max_grad_norm']:.2f}"] for h in run.history])
        clipped = clipping_summary(run.grad_norms, DIGITS_MAX_GRAD_NORM)
        print(f"{arch}: gradient norm before clipping median {clipped['median']:.3f}, max {clipped['max']:.3f}; "
              f"clipped in {clipped['clipped']} of {clipped['steps']} steps; best epoch {run.best_epoch} of "
              f"{len(run.history)}" + (" (stopped early)" if len(run.history) < cfg.digits_epochs else ""))
    baseline = logistic_regression_baseline(splits)
    print_table("Test accuracy, measured once after training (validation accuracy at the epoch kept)",
                ["model", "parameters", "epochs", "kept", "val accuracy", "test accuracy", "fit_digits time"],
                results_rows(runs, baseline, counts))
    print(f"logistic regression: L-BFGS converged in {baseline['iterations']} iterations")

    modes = {arch: train_vs_eval(run.model, splits[1], device, seed) for arch, run in runs.items()}
    print_table("A copy of each model on the validation split, two passes per mode (no_grad)",
                ["model", "eval: accuracy", "identical", "train: accuracy", "identical", "BatchNorm stats changed"],
                [[arch, " / ".join(f"{100 * a:.1f} %" for a in m["eval"]["accuracy"]), m["eval"]["identical"],
                  " / ".join(f"{100 * a:.1f} %" for a in m["train"]["accuracy"]), m["train"]["identical"],
                  "no BatchNorm" if m["running stats changed"] is None else m["running stats changed"]]
                 for arch, m in modes.items()])

    resumed = resume_check("mlp", RESUME_EPOCHS, RESUME_EPOCHS // 2, seed, device)
    print(f"\nmlp: train {RESUME_EPOCHS // 2} of {RESUME_EPOCHS} epochs, save a checkpoint "
          f"({resumed['checkpoint_bytes'] / 1024:.0f} KiB), load it with weights_only=True into fresh objects, train "
          f"the rest: {resumed['tensors']} state tensors and the history bit-identical to the uninterrupted run: "
          f"{resumed['bit_identical']}")

    print_table("mlp: one training epoch under torch.profiler, self time grouped by phase",
                *profile_table(profile_training_epoch("mlp", seed, device), device))

    shown = choose_by_validation(runs)
    _, test_labels = subset_tensors(splits[2])
    probs = predict_proba(runs[shown].model, splits[2], device)
    confusion = confusion_matrix(test_labels, probs.argmax(dim=1))
    mistakes = most_confident_mistakes(probs, test_labels, 8)
    print(f"\n{shown} (lower validation loss): {int(confusion.trace())} of {len(test_labels)} test images right; "
          f"most confident mistakes (true→predicted, confidence): "
          + ", ".join(f"{m['label']}→{m['predicted']} {100 * m['confidence']:.0f} %" for m in mistakes))
    return {"runs": runs, "baseline": baseline, "loss_floor": smoothed_loss_floor(DIGITS_LABEL_SMOOTHING),
            "max_grad_norm": DIGITS_MAX_GRAD_NORM, "shown": shown, "confusion": confusion, "mistakes": mistakes,
            "mistake_images": [_digits()[splits[2].indices[m["index"]]][0] for m in mistakes]}


# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)
    raw, stats = show_tabular(cfg, ctx.seed, ctx.generator)
    show_loaders(raw, ctx.seed, ctx.device)
    digit_labels, digit_rows, digit_counts = show_digits(ctx.seed, cfg.augment_workers)
    series = show_series_and_text(ctx.generator)
    show_collation(ctx.seed)
    class_balance = show_sampling(cfg, ctx.seed)
    footprint, file_bytes = show_memmap(cfg, ctx.generator)
    throughput = show_throughput(cfg, ctx.seed, ctx.generator)

    print_section("Figures")
    fig = plot_analysis(class_counts(raw.targets, cfg.n_classes), stats, series.numpy(), class_balance, throughput,
                        footprint, file_bytes)
    save_figure(fig, "dataset_loader_analysis.png", ctx.plots_dir)
    save_figure(plot_digits(digit_labels, digit_rows, digit_counts), "digits_samples.png", ctx.plots_dir)

    print_section("Putting it together: a digit classifier")
    save_figure(plot_digits_training(**show_digit_classifier(cfg, ctx.seed, ctx.device)), "digits_training.png",
                ctx.plots_dir)


def main(argv: list[str] | None = None) -> int:
    return run_lesson("dataset_loader_demo.py", __doc__, "Lesson 5: datasets and data loaders", run, argv)


if __name__ == "__main__":
    finish(main())
