"""Training a digit classifier: the complete loop, from a seeded split to a measured test accuracy.

Run `python digits_classifier.py` (add `--quick` for a smoke run). Two small networks, an MLP
and a CNN, learn scikit-learn's 8×8 digits with everything a real training run needs: a seeded
split scaled with training statistics only, a numerically stable loss with label smoothing,
AdamW with parameter groups, a warm-up and cosine schedule, gradient clipping (and how it meets
a mixed-precision gradient scaler), `train()` and `eval()` modes, early stopping and how it
meets the schedule, a checkpoint that resumes bit for bit on the CPU, a profile of where an
epoch's time goes, and one final measurement on a test split with its uncertainty. Then the
model leaves training: a checkpoint for prediction and a command that uses it
(`python digits_classifier.py predict --checkpoint PATH IMAGE`), `torch.compile` measured
honestly, graph breaks and recompilation, and `torch.export` to ONNX, served by ONNX Runtime.
Figure: plots/digits_training.png.

The one import between lessons: the digits Dataset, the fast batch loader and the image mosaic
come from lesson 5 (`dataset_loader_demo.py`), where they are taught.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import record_function
from torch.utils.data import Subset, TensorDataset, random_split

from course import one_line
from dataset_loader_demo import DigitsDataset, FastBatchLoader, digit_mosaic
from lesson_harness import (
    TIMING_HEADERS,
    LessonError,
    as_device,
    benchmark,
    fmt_seconds,
    new_figure,
    print_pairs,
    print_table,
    profile_events,
    save_figure,
    start_lesson,
    stopwatch,
    timing_cells,
    timing_note,
)


@dataclass(frozen=True)
class Config:
    epochs: int = 10  # most epochs per model (early stopping may end a run sooner)


FULL = Config()
QUICK = Config(epochs=2)
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
DIGITS_SCHEDULES = ("cosine", "constant")  # after the warm-up: cosine decay to 0, or the peak rate held
STOPPING_LR = 0.1  # ten times DIGITS_PEAK_LR, held constant: too large to settle, so early stopping fires
STOPPING_EPOCHS = 30  # that run's cap, in --quick too: its epochs do not depend on it, and it stops sooner
DIGITS_THREADS = 1  # threads (torch intra-op, BLAS) for these tiny computations; see "Where the time goes"
RESUME_EPOCHS = 2  # the resume check trains this many epochs, checkpointing halfway
LOGREG_MAX_ITER = 1_000  # L-BFGS iteration cap for the logistic-regression baseline (it converges well before)
SMOOTHING_CHECKS = (0.0, 0.1, 0.3)  # label-smoothing strengths compared with F.cross_entropy
AMP_MAX_GRAD_NORM = 0.5  # clipping threshold of the mixed-precision demo: below its batch's gradient norm
AMP_LR = 1e-2  # SGD learning rate of that one step
AMP_INIT_SCALE = 2.0**16  # GradScaler's first scale (its default)
CONFIDENCE = 0.95  # coverage of the interval around each test accuracy
BASELINE = "logistic regression (scikit-learn)"  # the baseline's name in the results tables
SHOWN_MISTAKES = 8  # most confident test mistakes printed and drawn


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python digits_classifier.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them. `python digits_classifier.py predict
# ...` is not the lesson but the prediction command of its last sections: this cell hands over
# to `predict_main`, and no section runs.

# %%
if __name__ == "__main__":
    ctx = start_lesson("digits_classifier")
    cfg = ctx.config(FULL, QUICK)


# %% [markdown]
# ## The task
#
# Two small networks, an MLP and a CNN, learn the 8×8 digits with the complete loop a real
# project needs: a seeded split scaled with training statistics only, a numerically stable
# loss, AdamW with parameter groups, a warm-up and cosine learning-rate schedule, gradient
# clipping (and where it goes when a gradient scaler is used for mixed precision), `train()`
# and `eval()` modes, early stopping on the validation loss (and how it meets the schedule), a
# checkpoint that resumes bit for bit on the CPU, a profile of where an epoch's time goes, and
# one final measurement on a test split that no decision has seen. scikit-learn's logistic
# regression on the same split is the baseline to compare with; with a few hundred test
# images, the comparison comes with its uncertainty. The last sections take the trained model
# out of training: a checkpoint and a command for prediction, `torch.compile` with its costs,
# and an export to ONNX, served by ONNX Runtime.

# %% [markdown]
# ## Data: one seeded split, scaled with training statistics
# `random_split` with a seeded generator cuts the 1,797 images into about 70/15/15 % once: the
# same seed gives the same split, another seed another. One mean and one standard deviation
# (the images have one channel) come from the training images only and are applied to all
# three splits. The data is 1,797 × 64 float32 values (about 460 KB) already in memory, so
# batches come from lesson 5's fast path, `FastBatchLoader` (one index operation per batch with a
# seeded `randperm`), not a DataLoader calling `__getitem__` once per image and collating.
# A dataset this small fits on any accelerator many times over: on CUDA (and MPS) each split is
# copied to the device once, when its loader is made, and `DeviceBatchLoader` gathers every batch
# there. Per epoch only the shuffled order (1,258 int64 indices for the training split, about
# 10 KB) crosses to the device, not every batch, and no pinned memory is needed. The order comes
# from the same seeded CPU generator on every device, so a seed gives the same batches
# everywhere. Pinned memory and `.to(device, non_blocking=True)` are for data that cannot live on
# the device: batches decoded or augmented on the CPU by DataLoader workers
# (`DataLoader(..., pin_memory=True)`), copied while the device computes. On the CPU nothing
# moves and the loader is lesson 5's `FastBatchLoader`.

# %%
@cache
def _digits() -> DigitsDataset:
    """Read once per process: every training run below starts from the same images (and never modifies them)."""
    return DigitsDataset()


def _random_split(seed: int) -> list[Subset]:
    return random_split(_digits(), DIGITS_SPLIT, generator=torch.Generator().manual_seed(seed))


def training_statistics(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (0-dim float32) of the training split's pixels: every split, and every prediction, is scaled
    by these two numbers. One channel: one mean, one std."""
    train_images = _digits().inputs[_random_split(seed)[0].indices]  # (n_train, 1, 8, 8), pixels in [0, 1]
    return train_images.mean(), train_images.std()


def make_digits_splits(seed: int) -> tuple[Subset, Subset, Subset]:
    """(train, val, test) Subsets of (image (1, 8, 8) float32, label int64), standardised with train statistics."""
    digits = _digits()
    train, val, test = _random_split(seed)
    mean, std = training_statistics(seed)
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


class DeviceBatchLoader(FastBatchLoader):
    """FastBatchLoader over tensors that already live on an accelerator: batches are gathered there.

    The order is drawn on the CPU, from the same seeded generator as FastBatchLoader's (so the batches
    are the same on every device), and copied to the device once per epoch.
    """

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.X)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.X.device)  # one small copy per epoch (n indices), not one per batch
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.X[idx], self.y[idx]  # (batch, 1, 8, 8), (batch,), gathered on the device


def split_device(device: torch.device) -> torch.device:
    """Where a split's tensors live when training on `device`: on an accelerator itself, else on the CPU."""
    return device if device.type in ("cuda", "mps") else torch.device("cpu")


def make_digits_loader(subset: Subset, batch_size: int, device: torch.device, shuffle: bool = False,
                       generator: torch.Generator | None = None) -> FastBatchLoader:
    """Batches of `subset` for training on `device`: on an accelerator the split is moved there once."""
    images, labels = subset_tensors(subset)
    home = split_device(device)
    if home.type == "cpu":
        return FastBatchLoader(images, labels, batch_size, shuffle=shuffle, generator=generator)
    return DeviceBatchLoader(images.to(home), labels.to(home), batch_size, shuffle=shuffle, generator=generator)



def print_splits(rows: list[dict[str, object]], seed: int) -> None:
    print_table(f"The digits split by random_split (seed {seed}), standardised with training statistics",
                ["split", "images", "share", "pixel mean", "pixel std", "classes present"],
                [[r["split"], r["images"], f"{r['share']:.3f}", f"{r['pixel mean']:+.3f}", f"{r['pixel std']:.3f}",
                  r["classes present"]] for r in rows])


# %%
if __name__ == "__main__":
    splits = make_digits_splits(ctx.seed)  # (train, validation, test)
    print_splits(split_summary(splits), ctx.seed)

# %% [markdown]
# ## Two models, chosen by name
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



# %%
if __name__ == "__main__":
    counts = parameter_counts()
    print(f"\nparameters: {', '.join(f'{arch} {n:,}' for arch, n in counts.items())}")
    print(make_digits_model("cnn"))

# %% [markdown]
# ## Losses: cross-entropy on logits, and label smoothing as a module
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



def print_losses(overflow: dict[str, list[float]], gaps: dict[float, dict[str, float]]) -> None:
    print_table("Loss of one float32 sample with logits (1000, 0, -1000), for each target",
                ["method", "target 0", "target 1", "target 2"], [[name, *losses] for name, losses in overflow.items()])
    print_table("LabelSmoothingCrossEntropy vs F.cross_entropy(label_smoothing=s), logits ~ N(0, 100²)",
                ["s", "relative Δ loss", "max |Δ gradient|", "lowest loss (entropy of the target)"],
                [[s, f"{gap['value']:.1e}", f"{gap['gradient']:.1e}", f"{smoothed_loss_floor(s):.4f}"]
                 for s, gap in gaps.items()])


# %%
if __name__ == "__main__":
    print_losses(softmax_then_log_failure(),
                 {s: label_smoothing_gap(s, ctx.seed, scale=100.0) for s in SMOOTHING_CHECKS})

# %% [markdown]
# ## Optimisation: parameter groups, a schedule, gradient clipping
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


class WarmupConstant:
    """Learning-rate factor at optimizer step t: WarmupCosine's linear warm-up, then 1 for as long as training runs."""

    def __init__(self, warmup_steps: int):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be non-negative")
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0



def print_param_groups(rows: list[dict[str, object]]) -> None:
    print_table("The CNN's parameter groups, as AdamW holds them",
                ["weight decay", "tensors", "elements", "parameters"],
                [[r["weight_decay"], r["tensors"], r["elements"], ", ".join(r["names"])] for r in rows])


# %%
if __name__ == "__main__":
    cnn = make_digits_model("cnn")
    # Building a process's first optimizer also imports torch._dynamo (about a second here): paid now, so the
    # training times below measure training.
    adamw = torch.optim.AdamW(param_groups(cnn, DIGITS_WEIGHT_DECAY), lr=DIGITS_PEAK_LR)
    print_param_groups(param_group_rows(cnn, adamw.param_groups))
    schedule = WarmupCosine(warmup_steps=10, total_steps=100)
    print("WarmupCosine(10, 100) at steps 0, 4, 9, 10, 55, 99: "
          + ", ".join(f"{schedule(step):.3f}" for step in (0, 4, 9, 10, 55, 99)))

# %% [markdown]
# ## The loop: train, evaluate, stop early
# `model.train()` turns dropout on and makes BatchNorm normalise with the batch's statistics
# (and update its running averages); `model.eval()` turns dropout off and uses the running
# averages. Evaluation runs under `torch.no_grad()`: no graph is recorded, so it is faster and
# uses less memory. The `record_function` labels name the four phases of a step for the
# profiler below; without a profiler running, each does next to nothing. Early
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


def clipping_summary(grad_norms: Sequence[float], max_norm: float) -> dict[str, float | int]:
    """Median and largest gradient norm before clipping, and how many steps clip_grad_norm_ rescaled."""
    norms = torch.tensor(grad_norms, dtype=torch.float64)
    return {"median": norms.median().item(), "max": norms.max().item(), "clipped": int((norms > max_norm).sum()),
            "steps": len(norms)}


# %% [markdown]
# ## The driver, and a checkpoint that resumes exactly
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
#
# "Bit for bit" is a claim about this set-up: the CPU, the same number of threads
# (`DIGITS_THREADS`, set inside `fit_digits`), the same torch build and machine. A sum split
# over another number of threads adds in another order and rounds differently, and another
# build or processor may run other kernels, which round differently too. On a GPU three more
# things vary between runs of the same code, and each has a switch:
# cuDNN's autotuner (`torch.backends.cudnn.benchmark = True`) times several convolution
# algorithms and keeps the fastest, which can differ from run to run, so leave it `False` (the
# default); some CUDA kernels add with atomic operations in whatever order threads arrive
# (`index_add_`, `scatter_add_`, the backward of several pooling and interpolation layers), and
# `torch.use_deterministic_algorithms(True)` swaps in deterministic versions, raising an error
# where an operator has none; and cuBLAS needs a fixed workspace, `CUBLAS_WORKSPACE_CONFIG=:4096:8`
# in the environment before CUDA initialises (in the shell, or in the script's first lines
# before any CUDA call), or deterministic mode raises at the first matrix multiply:
#
# ```python
# import os
# os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA initialises
# import torch
# torch.use_deterministic_algorithms(True)
# torch.backends.cudnn.benchmark = False
# ```
#
# This lesson runs on the CPU in its tests and leaves these switches as they are; the resume
# check prints what they are in this run.
#
# The first cell below trains both models and prints one row per epoch; the second stops a run
# halfway, saves a checkpoint, resumes from it in fresh objects and compares with a run that
# never stopped.

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
                          peak_lr: float = DIGITS_PEAK_LR, schedule: str = "cosine") -> DigitsTraining:
    """Model, loss, AdamW, schedule and loaders; call inside seeded_global_rng so initialisation is seeded."""
    if schedule not in DIGITS_SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {', '.join(map(repr, DIGITS_SCHEDULES))}")
    train, val, test = make_digits_splits(seed)
    model = make_digits_model(arch).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, DIGITS_WEIGHT_DECAY), lr=peak_lr)
    steps_per_epoch = math.ceil(len(train) / DIGITS_BATCH_SIZE)
    warmup_steps = min(DIGITS_WARMUP_EPOCHS * steps_per_epoch, epochs * steps_per_epoch - 1)
    lr_factor = (WarmupCosine(warmup_steps, epochs * steps_per_epoch) if schedule == "cosine"
                 else WarmupConstant(warmup_steps))
    batch_order = torch.Generator().manual_seed(seed + 1)  # not `seed`: a different stream from the split's
    return DigitsTraining(
        model=model, loss_fn=LabelSmoothingCrossEntropy(DIGITS_LABEL_SMOOTHING), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor), batch_order=batch_order,
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
    seconds: float  # wall-clock time of this call: one run on DIGITS_THREADS threads


def normalization(seed: int) -> dict[str, float]:
    """The training statistics as plain floats, for a checkpoint: a prediction scales its image by them."""
    mean, std = training_statistics(seed)
    return {"mean": mean.item(), "std": std.item()}


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    partial_path = path.with_name(path.name + ".partial")
    torch.save(state, partial_path)
    os.replace(partial_path, path)  # atomic: the file at `path` is always a complete checkpoint


def fit_digits(arch: str, epochs: int = FULL.epochs, seed: int = 0, device: torch.device | str = "cpu",
               checkpoint_path: str | os.PathLike | None = None, stop_after: int | None = None,
               resume_from: str | os.PathLike | None = None, *, peak_lr: float = DIGITS_PEAK_LR,
               patience: int = DIGITS_PATIENCE, schedule: str = "cosine") -> DigitsRun:
    """Train `arch` on the digits with early stopping; checkpoint after `stop_after` epochs or resume from one.

    `schedule`: "cosine" (warm-up, then down to 0 at the last epoch) or "constant" (warm-up, then `peak_lr`).
    `checkpoint_path` without `stop_after`: when training ends, write the kept model there for prediction
    (its arch, weights and the training split's pixel mean and std); `predict_main` reads it.
    """
    device = as_device(device)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be at least 1")
    if stop_after is not None and (checkpoint_path is None or not 1 <= stop_after < epochs):
        raise ValueError(f"stop_after={stop_after} needs a checkpoint_path (got {checkpoint_path!r}) and must be "
                         f"between 1 and epochs - 1 = {epochs - 1}")
    settings = {"arch": arch, "seed": seed, "epochs": epochs, "peak_lr": peak_lr, "patience": patience,
                "schedule": schedule}
    # seed + 2: a different stream from the split's and the batch order's
    with stopwatch(device) as clock, seeded_global_rng(seed + 2, device), intra_op_threads(DIGITS_THREADS):
        parts = build_digits_training(arch, epochs, seed, device, peak_lr, schedule)
        stopper = EarlyStopping(patience)
        log = {"history": [], "step_lrs": [], "grad_norms": [], "best_model": _state_copy(parts.model)}
        first_epoch, checkpointed = 1, False
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
                save_checkpoint({**settings, **log, "kind": "resume", "epoch": epoch,
                                 "normalization": normalization(seed), "model": parts.model.state_dict(),
                                 "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                                 "early_stopping": stopper.state_dict(),
                                 "rng": {"batch_order": parts.batch_order.get_state(), "cpu": torch.get_rng_state(),
                                         "device": _device_rng_state(device)}}, checkpoint_path)
                checkpointed = True
                break
        test_accuracy = None  # after a checkpoint stop the model is the latest one, and the test split stays unseen
        if not checkpointed:
            parts.model.load_state_dict(log["best_model"])
            test_accuracy = evaluate(parts.model, parts.test_loader, parts.loss_fn, device)["accuracy"]
            if checkpoint_path is not None:  # the kept model and what a prediction needs: tensors, numbers, strings
                save_checkpoint({**settings, "kind": "model", "epoch": stopper.best_epoch,
                                 "model": parts.model.state_dict(), "normalization": normalization(seed),
                                 "test_accuracy": test_accuracy}, checkpoint_path)
    return DigitsRun(arch, parts.model, log["history"], test_accuracy, stopper.best_epoch, log["step_lrs"],
                     log["grad_norms"], clock.seconds)


def _restore_checkpoint(path: str | os.PathLike, settings: dict, parts: DigitsTraining, stopper: EarlyStopping,
                        log: dict, device: torch.device) -> int:
    """Load everything fit_digits saved into freshly built objects; return the last completed epoch."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("kind") != "resume":
        raise ValueError(f"resume_from={str(path)!r} holds a trained model for prediction, not a training state to "
                         "resume: write one with stop_after")
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


def reproducibility_settings(device: torch.device) -> dict[str, object]:
    """What a bit-for-bit result rests on in this process: the device, threads, and the GPU determinism switches."""
    return {"device": device.type, "intra-op threads in fit_digits": DIGITS_THREADS, "torch": torch.__version__,
            "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
            "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "not set")}



def print_history(run: DigitsRun, epochs: int, title: str | None = None) -> None:
    print_table(f"{title or run.arch}: one row per epoch (losses are label-smoothed cross-entropy)",
                ["epoch", "train loss", "val loss", "val accuracy", "last lr", "max grad norm"],
                [[h["epoch"], f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{100 * h['val_accuracy']:.1f} %",
                  f"{h['lr']:.2e}", f"{h['max_grad_norm']:.2f}"] for h in run.history])
    clipped = clipping_summary(run.grad_norms, DIGITS_MAX_GRAD_NORM)
    print(f"{run.arch}: gradient norm before clipping median {clipped['median']:.3f}, max {clipped['max']:.3f}; "
          f"clipped in {clipped['clipped']} of {clipped['steps']} steps; best epoch {run.best_epoch} of "
          f"{len(run.history)}" + (" (stopped early)" if len(run.history) < epochs else ""))


# %%
if __name__ == "__main__":
    checkpoints = tempfile.TemporaryDirectory(prefix="digits-checkpoints-")  # removed when the process ends
    runs = {arch: fit_digits(arch, cfg.epochs, ctx.seed, ctx.device,
                             checkpoint_path=Path(checkpoints.name) / f"{arch}.pt") for arch in DIGITS_ARCHS}
    lrs = runs["mlp"].step_lrs
    print(f"\nlearning rate, steps 1-12 of {len(lrs)}: {', '.join(f'{lr:.2e}' for lr in lrs[:12])}")
    for run in runs.values():
        print_history(run, cfg.epochs)


# %%
if __name__ == "__main__":
    resumed = resume_check("mlp", RESUME_EPOCHS, RESUME_EPOCHS // 2, ctx.seed, ctx.device)
    print(f"\nmlp: train {RESUME_EPOCHS // 2} of {RESUME_EPOCHS} epochs, save a checkpoint "
          f"({resumed['checkpoint_bytes'] / 1024:.0f} KiB), load it with weights_only=True into fresh objects, train "
          f"the rest: {resumed['tensors']} state tensors and the history bit-identical to the uninterrupted run: "
          f"{resumed['bit_identical']}")
    print_pairs("What that result rests on (the last three matter on a GPU; see the prose above)",
                reproducibility_settings(ctx.device))

# %% [markdown]
# ## When early stopping fires, and what it does to the schedule
# In the runs above the validation loss seldom fails to improve for `patience` epochs in a row,
# so early stopping has little to do: compare each run's best epoch with its number of epochs,
# in its last line. The schedule is part of the reason: the cosine reaches 0 at the last epoch,
# so the late epochs take ever smaller steps, which seldom make the validation loss worse. Here
# is a run where early stopping does fire: the MLP with a rate ten times the peak
# (`STOPPING_LR`), held constant after the warm-up (`schedule="constant"`), for at most
# `STOPPING_EPOCHS` epochs. Steps that large keep the weights moving around a minimum instead of
# settling in it, so the validation loss stops improving; after `patience` epochs without a new
# best, training stops and the weights of the best epoch come back. What to look for: the last
# epoch run against the cap, and the best epoch, `patience` epochs before the stop.
#
# Early stopping and a schedule of fixed length pull in different directions. A schedule that
# decays to 0 at its last epoch plans the whole run: its late epochs are the tiny steps in which
# the loss settles. Stop early and the schedule is left unfinished: the model never gets those
# steps, and its best epoch was taken at a large rate. Two common answers: fix the number of
# epochs, let the schedule finish and keep the checkpoint with the lowest validation loss
# (`fit_digits` returns the best epoch's weights in any case, so a patience of at least the
# number of epochs does exactly that); or let the validation loss drive the schedule as well, as
# `torch.optim.lr_scheduler.ReduceLROnPlateau` does: it lowers the rate when the validation loss
# stalls, and training stops once the rate has been lowered a few times or a longer patience
# runs out.

# %%
def stopping_summary(run: DigitsRun, max_epochs: int, patience: int) -> dict[str, object]:
    """Did `run` stop early; its last and best epoch, and how many epochs it ran past its best."""
    last = len(run.history)
    return {"stopped early": last < max_epochs, "last epoch": last, "best epoch": run.best_epoch,
            "epochs after the best": last - run.best_epoch, "patience": patience, "max epochs": max_epochs}


def print_stopping(summary: dict[str, object]) -> None:
    if summary["stopped early"]:
        print(f"stopped after epoch {summary['last epoch']} of at most {summary['max epochs']}: the best validation "
              f"loss was at epoch {summary['best epoch']}, {summary['epochs after the best']} epochs (the patience) "
              f"before the stop; the model returned holds epoch {summary['best epoch']}'s weights")
    else:
        print(f"ran all {summary['max epochs']} epochs: never {summary['patience']} epochs in a row without a new "
              f"best validation loss (best at epoch {summary['best epoch']}); with this seed, try a larger cap")


# %%
if __name__ == "__main__":
    stopping = fit_digits("mlp", STOPPING_EPOCHS, ctx.seed, ctx.device, peak_lr=STOPPING_LR, schedule="constant")
    print_history(stopping, STOPPING_EPOCHS,
                  title=f"mlp, learning rate {STOPPING_LR:g} held constant after the warm-up, patience "
                        f"{DIGITS_PATIENCE}")
    print_stopping(stopping_summary(stopping, STOPPING_EPOCHS, DIGITS_PATIENCE))

# %% [markdown]
# ## Mixed precision: a gradient scaler, and clipping after `unscale_`
# `torch.autocast(device_type, dtype=torch.float16)` runs matrix multiplies and convolutions in
# float16 while the weights and the optimizer stay in float32: on GPUs with tensor cores that is
# faster, and activations kept for the backward pass take half the memory. Compute the loss in
# float32 (here `.float()` on the logits: on the CPU, autocast leaves `log_softmax` in float16).
# float16 spans only about 6e-8 to 65504, so small gradients round to 0. `torch.amp.GradScaler`
# multiplies the loss by a scale S before `backward()`, so every gradient comes out S times
# larger, clear of that floor; `scaler.step(optimizer)` divides them by S before the optimizer
# uses them, and skips the step if any is inf or nan, halving S (after 2,000 steps without one
# it doubles S again). bfloat16 has float32's exponent range and needs no scaler; it is what CPU
# autocast uses by default.
#
# Between `backward()` and `scaler.step` the gradients are still S times too large, and anything
# that reads them there sees S·g: `clip_grad_norm_` would compare S·‖g‖ with its threshold,
# clip nearly every step, and after the scaler's division the step would have norm
# lr · max_norm / S, S times smaller than a clipped step. `scaler.unscale_(optimizer)` divides
# them in place first, and records that it did, so `scaler.step` does not divide again:
#
# ```python
# scaler.scale(loss).backward()
# scaler.unscale_(optimizer)  # the gradients are now g, not S·g
# torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
# scaler.step(optimizer)  # skipped if a gradient is inf or nan
# scaler.update()
# ```
#
# `GradScaler(enabled=False)` turns each of these calls into a pass-through, so one loop serves
# both. Below: one SGD step of the MLP on its first training batch, under float16 autocast on the
# CPU (`torch.amp.GradScaler("cpu")`; on a GPU, `"cuda"`), clipped at a threshold below that
# batch's gradient norm. On the CPU float16 shows the mechanics; it is not there for speed. What
# to look for: the update of "unscale_, then clip" against the step without a scaler (they agree
# up to float16 rounding), the norm that "clip, then step" hands to `clip_grad_norm_` (S times
# the true one) and the size of its update; and the "step skipped" column, true where the scaled
# float16 gradients overflowed: the scaler then skips the step and halves S, and a real run goes
# on at the smaller scale.

# %%
AMP_ORDERS = ("no scaler", "unscale_, then clip", "clip, then step")  # the calls between backward and step


def scaled_clipped_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, order: str, *, seed: int,
                        max_norm: float = AMP_MAX_GRAD_NORM, lr: float = AMP_LR, init_scale: float = AMP_INIT_SCALE,
                        autocast_dtype: torch.dtype | None = torch.float16) -> dict[str, object]:
    """One clipped SGD step of a copy of `model` on the CPU, with the scaler calls in `order`.

    Returns the scale S, the norm clip_grad_norm_ saw, whether the scaler skipped the step, and the update SGD
    made: −lr × the gradient it applied (flattened; zeros when skipped), read from the gradients because
    float32 would round `after − before` for steps this small. Dropout draws from a generator seeded with `seed`,
    so every order sees the same mask; autocast_dtype=None runs in float32.
    """
    if order not in AMP_ORDERS:
        raise ValueError(f"order={order!r} is not one of {', '.join(map(repr, AMP_ORDERS))}")
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=order != "no scaler")
    loss_fn = LabelSmoothingCrossEntropy(DIGITS_LABEL_SMOOTHING)
    with seeded_global_rng(seed, torch.device("cpu")), intra_op_threads(DIGITS_THREADS):
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None):
            logits = probe(images)  # (batch, 10), float16 under autocast
        loss = loss_fn(logits.float(), labels)  # in float32: CPU autocast would leave its log_softmax in float16
        scaler.scale(loss).backward()  # gradients S·g (S = 1 when the scaler is disabled)
        if order != "clip, then step":
            scaler.unscale_(optimizer)  # a pass-through when disabled
        norm = torch.nn.utils.clip_grad_norm_(probe.parameters(), max_norm)
        scale = scaler.get_scale()
        scaler.step(optimizer)  # unscales first if unscale_ was not called; skips on inf or nan
        scaler.update()
    skipped = scaler.get_scale() < scale  # update() halves S after a skipped step
    applied = torch.cat([p.grad.flatten() for p in probe.parameters()])  # what SGD used: unscaled and clipped
    update = torch.zeros_like(applied) if skipped else -lr * applied
    return {"scale": scale, "norm seen": norm.item(), "skipped": skipped, "update": update}


def amp_clipping_comparison(seed: int, autocast_dtype: torch.dtype | None = torch.float16) -> list[dict[str, object]]:
    """Each order of AMP_ORDERS, one step each from the same start, on the MLP's first training batch.

    Each row also holds the update's norm and its distance from the no-scaler update, relative to that update's norm.
    """
    train = make_digits_splits(seed)[0]
    images, labels = (t[:DIGITS_BATCH_SIZE] for t in subset_tensors(train))
    with seeded_global_rng(seed + 2, torch.device("cpu")):  # fit_digits' initialisation stream
        model = make_digits_model("mlp")
    rows = [{"order": order, **scaled_clipped_step(model, images, labels, order, seed=seed,
                                                   autocast_dtype=autocast_dtype)} for order in AMP_ORDERS]
    reference = rows[0]["update"]
    for row in rows:
        row["update norm"] = torch.linalg.vector_norm(row["update"]).item()
        row["relative difference"] = (torch.linalg.vector_norm(row["update"] - reference)
                                      / torch.linalg.vector_norm(reference)).item()
    return rows


def print_amp_clipping(rows: list[dict[str, object]]) -> None:
    print_table(f"One SGD step (lr {AMP_LR}) of the MLP on {DIGITS_BATCH_SIZE} training images, float16 autocast on "
                f"the CPU, clip_grad_norm_ at {AMP_MAX_GRAD_NORM}",
                ["calls between backward and step", "scale S", "norm clip_grad_norm_ saw", "update norm",
                 "distance from the no-scaler update", "step skipped"],
                [[r["order"], f"{r['scale']:g}", f"{r['norm seen']:.4g}", f"{r['update norm']:.3e}",
                  f"{100 * r['relative difference']:.3g} %", r["skipped"]] for r in rows])
    print(f"clipped after unscale_, an update has norm lr · min(‖g‖, {AMP_MAX_GRAD_NORM}); clipped before it, "
          f"lr · {AMP_MAX_GRAD_NORM} / S (= {AMP_LR * AMP_MAX_GRAD_NORM / AMP_INIT_SCALE:.3e} at S = "
          f"{AMP_INIT_SCALE:g}) once S·‖g‖ exceeds the threshold")


# %%
if __name__ == "__main__":
    print_amp_clipping(amp_clipping_comparison(ctx.seed))

# %% [markdown]
# ## Where the time goes
# `torch.profiler` records every operator of one MLP epoch (after a warm-up epoch, so one-off
# initialisation is not counted). Each operator's self time is credited to the phase whose
# `record_function` label encloses it; a phase's total also holds the time inside its label
# that no aten operator accounts for: Python (module calls, the optimizer's loop over its
# parameters) and the autograd engine. With models this small every operator is tiny, so the
# cost per call (Python, dispatch, allocating the output), not arithmetic, sets the time. The
# default AdamW on the CPU updates one parameter tensor at a time with a dozen or more operators
# each, and `clip_grad_norm_` adds more: the optimizer step launches about as many aten
# operators as forward and backward together (the "aten calls" column). The row "other" holds
# what runs outside the four labels (zeroing the gradients before the first step, summing the
# epoch's loss). What to look for: each phase's share of the epoch, and in each row how much of
# its self CPU time lies outside aten operators: that part is Python and framework overhead,
# which a faster kernel does not shorten; only fewer calls do, such as
# `torch.optim.AdamW(..., foreach=True)` or `fused=True`, which batch the optimizer's work over
# all parameters. The profile is one epoch, one run: its times have no spread to report, and the
# profiler's own bookkeeping adds to every operator, so read the shares, not the microseconds.
#
# Threads: each operator here works on a few thousand numbers, so a second intra-op thread has
# little to split and costs a hand-off per operator; when other programs share the cores, a
# thread can also wait a whole time slice for its partner. Whether two threads beat one for
# models this small depends on the machine and on what else runs on it; one thread is the
# predictable choice, so this lesson's training, profiling and baseline run with
# `DIGITS_THREADS = 1` (restored afterwards), and every time it prints says so. To see the
# effect on your machine, set `DIGITS_THREADS = 2` and compare the `fit_digits` times, which
# are single runs: repeat them before drawing a conclusion. Models whose operators take
# milliseconds do gain from more threads.

# %%
def threads_label(threads: int) -> str:
    """'1 thread (DIGITS_THREADS)', '2 threads (DIGITS_THREADS)': the thread count every printed time states."""
    return f"{threads} thread{'s' if threads != 1 else ''} (DIGITS_THREADS)"


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
             f"{100 * r['share']:.0f} %", fmt_seconds(r["other us"] * 1e-6), ", ".join(r["top operators"])]
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



# %%
if __name__ == "__main__":
    print_table(f"mlp: one training epoch under torch.profiler (one run, {threads_label(DIGITS_THREADS)}), self time "
                "grouped by phase", *profile_table(profile_training_epoch("mlp", ctx.seed, ctx.device), ctx.device))

# %% [markdown]
# ## What forgetting `model.eval()` does
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



def print_train_vs_eval(modes: dict[str, dict[str, object]]) -> None:
    print_table("A copy of each model on the validation split, two passes per mode (no_grad)",
                ["model", "eval: accuracy", "identical", "train: accuracy", "identical", "BatchNorm stats changed"],
                [[arch, " / ".join(f"{100 * a:.1f} %" for a in m["eval"]["accuracy"]), m["eval"]["identical"],
                  " / ".join(f"{100 * a:.1f} %" for a in m["train"]["accuracy"]), m["train"]["identical"],
                  "no BatchNorm" if m["running stats changed"] is None else m["running stats changed"]]
                 for arch, m in modes.items()])


# %%
if __name__ == "__main__":
    print_train_vs_eval({arch: train_vs_eval(run.model, splits[1], ctx.device, ctx.seed) for arch, run in runs.items()})

# %% [markdown]
# ## Results
# The test split is used once per model, after training, and never for a choice: the model
# whose figure panels show its errors is the one with the lower validation loss. Logistic
# regression (one linear layer, fitted to convergence by L-BFGS) on the same standardised
# pixels is the independent baseline. The `fit_digits` times are one wall-clock run each, on
# `DIGITS_THREADS` threads: a single run has no spread to show, so treat them as rough costs.
#
# The test split holds 269 images, so one image moves an accuracy by 0.37 percentage points and
# a gap of a few images between two models can be chance: which images happened to land in the
# test split. Before calling a winner, each accuracy gets a 95 % Wilson score interval,
# (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n) with z ≈ 1.96. Unlike the simpler
# p̂ ± z·√(p̂(1 − p̂)/n), it stays inside [0, 1] and keeps close to 95 % coverage for accuracies
# near 100 %, where the simpler one falls short. Overlapping intervals do not settle a comparison
# either, because every model sees the same images: the paired test looks only at the images on
# which two models disagree. If both were equally accurate, each such image would be equally
# likely to favour either one, so the count that favours one model is binomial with p = ½ (the
# exact McNemar test). What to look for: the p-value of each model against the baseline. Below
# 0.05, a split of the disagreements at least this lopsided would come up less than one time in
# twenty between equally accurate models; above it, this test set cannot tell the two apart, and
# no winner should be called. Both measure only that one source of chance: the seed also changes
# the split, the initialisation and the batch order, and running with other `--seed` values shows
# how far that moves them.

# %%
def logistic_regression_baseline(splits: Sequence[Subset]) -> dict[str, object]:
    """scikit-learn's LogisticRegression on the flattened, standardised pixels of the same split.

    Accuracies, parameter and iteration counts, and "test_correct": (n_test,) bool, right or wrong per test image.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    (X_train, y_train), (X_val, y_val), (X_test, y_test) = (
        (images.flatten(1).numpy(), labels.numpy()) for images, labels in map(subset_tensors, splits))
    with threadpool_limits(DIGITS_THREADS):  # BLAS threads: tiny matrices again (see "Where the time goes")
        classifier = LogisticRegression(max_iter=LOGREG_MAX_ITER).fit(X_train, y_train)
    return {"val_accuracy": classifier.score(X_val, y_val), "test_accuracy": classifier.score(X_test, y_test),
            "parameters": classifier.coef_.size + classifier.intercept_.size, "iterations": int(classifier.n_iter_[0]),
            "test_correct": torch.from_numpy(classifier.predict(X_test) == y_test)}


WILSON_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.95996...: the standard normal's two-sided 95 % quantile


def wilson_interval(correct: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval for a proportion `correct / total` (95 % for the default z)."""
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 ≤ correct ≤ total and total ≥ 1, got correct={correct}, total={total}")
    p, n = correct / total, total
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    low = 0.0 if correct == 0 else centre - half_width  # at the ends the bound is exactly 0 (or 1); the formula
    high = 1.0 if correct == total else centre + half_width  # would leave a rounding error there
    return low, high


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the images only the first model, or only the second, got right."""
    if min(only_first, only_second) < 0:
        raise ValueError(f"counts must be non-negative, got {only_first} and {only_second}")
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0  # the two models agree on every image: nothing to test
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(X ≤ k), X ~ Binomial(n, 1/2), exactly
    return min(1.0, 2 * tail)


def accuracy_comparison(test_correct: dict[str, torch.Tensor], reference: str) -> list[dict[str, object]]:
    """Per model: test images right, accuracy and its Wilson interval; against `reference`, on the same images:
    how many only this model got right, how many only the reference did, and the exact McNemar p-value."""
    base = test_correct[reference]
    rows = []
    for name, correct in test_correct.items():
        k, n = int(correct.sum()), len(correct)
        row = {"model": name, "right": k, "images": n, "accuracy": k / n, "interval": wilson_interval(k, n)}
        if name != reference:
            only_this, only_reference = int((correct & ~base).sum()), int((base & ~correct).sum())
            row |= {"only this right": only_this, "only reference right": only_reference,
                    "p": mcnemar_exact_p(only_this, only_reference)}
        rows.append(row)
    return rows


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


def results_rows(runs: dict[str, DigitsRun], baseline: dict[str, object], counts: dict[str, int]) -> list[list]:
    rows = [[arch, counts[arch], len(run.history), run.best_epoch,
             f"{100 * run.history[run.best_epoch - 1]['val_accuracy']:.1f} %", f"{100 * run.test_accuracy:.1f} %",
             fmt_seconds(run.seconds)] for arch, run in runs.items()]
    rows.append([BASELINE, baseline["parameters"], "-", "-",
                 f"{100 * baseline['val_accuracy']:.1f} %", f"{100 * baseline['test_accuracy']:.1f} %", "-"])
    return rows


def print_results(rows: list[list], baseline: dict[str, object]) -> None:
    print_table("Test accuracy, measured once after training (validation accuracy at the epoch kept)",
                ["model", "parameters", "epochs", "kept", "val accuracy", "test accuracy", "fit_digits time (one run)"],
                rows)
    print(f"fit_digits time: wall clock of one training run per model on {threads_label(DIGITS_THREADS)}; one run has "
          "no spread, so read it as a rough cost")
    print(f"logistic regression: L-BFGS converged in {baseline['iterations']} iterations")


def comparison_verdict(row: dict[str, object], reference: str) -> str:
    """One line on `row`'s model against `reference`, worded by its p-value: a winner only below 0.05."""
    where = (f"{row['model']} vs {reference}: right on {row['only this right']} test images the other got wrong, "
             f"wrong on {row['only reference right']} it got right, p = {row['p']:.2g}")
    if row["p"] >= 0.05:
        return f"{where}: this test set cannot tell them apart; no winner"
    ahead = row["model"] if row["only this right"] > row["only reference right"] else reference
    return f"{where}: {ahead} ahead, a gap the choice of test images alone would rarely give (one seed, one split)"


def print_accuracy_comparison(rows: list[dict[str, object]], reference: str) -> None:
    print_table(f"Test accuracy with its uncertainty: {100 * CONFIDENCE:.0f} % Wilson intervals, and each model "
                f"against {reference} on the same images (exact McNemar test)",
                ["model", "right", "test accuracy", f"{100 * CONFIDENCE:.0f} % interval", "only this right",
                 "only baseline right", "p"],
                [[r["model"], f"{r['right']} of {r['images']}", f"{100 * r['accuracy']:.1f} %",
                  f"{100 * r['interval'][0]:.1f} - {100 * r['interval'][1]:.1f} %", r.get("only this right", "-"),
                  r.get("only reference right", "-"), f"{r['p']:.2g}" if "p" in r else "-"] for r in rows])
    for row in rows:
        if row["model"] != reference:
            print(comparison_verdict(row, reference))


def plot_digits_training(runs: dict[str, DigitsRun], baseline: dict[str, object], loss_floor: float,
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


# %%
if __name__ == "__main__":
    baseline = logistic_regression_baseline(splits)
    print_results(results_rows(runs, baseline, counts), baseline)
    _, test_labels = subset_tensors(splits[2])
    test_probs = {arch: predict_proba(run.model, splits[2], ctx.device) for arch, run in runs.items()}  # (n_test, 10)
    test_correct = {arch: p.argmax(dim=1) == test_labels for arch, p in test_probs.items()}  # (n_test,) bool each
    test_correct[BASELINE] = baseline["test_correct"]
    print_accuracy_comparison(accuracy_comparison(test_correct, reference=BASELINE), BASELINE)
    shown = choose_by_validation(runs)
    probs = test_probs[shown]
    confusion = confusion_matrix(test_labels, probs.argmax(dim=1))
    mistakes = most_confident_mistakes(probs, test_labels, SHOWN_MISTAKES)
    print(f"\n{shown} (lower validation loss): {int(confusion.trace())} of {len(test_labels)} test images right; "
          f"most confident mistakes (true→predicted, confidence): "
          + ", ".join(f"{m['label']}→{m['predicted']} {100 * m['confidence']:.0f} %" for m in mistakes))
    save_figure(plot_digits_training(runs, baseline, smoothed_loss_floor(DIGITS_LABEL_SMOOTHING), DIGITS_MAX_GRAD_NORM,
                                     shown, confusion, mistakes,
                                     [_digits()[splits[2].indices[m["index"]]][0] for m in mistakes]),
                "digits_training.png", ctx.plots_dir)

# %% [markdown]
# ## Using the trained model: a checkpoint and a prediction command
# `fit_digits(..., checkpoint_path=PATH)` without `stop_after` writes, when training ends, what a
# prediction needs: the architecture's name, the weights of the kept epoch, and the mean and
# standard deviation the training images were scaled with. A prediction must scale its image
# the same way, or the model sees inputs unlike any it was trained on. The file holds only
# tensors, numbers and strings, so `torch.load(..., weights_only=True)` reads it: that loader
# refuses pickled objects of other kinds, which could run code when a file from elsewhere is
# opened. The runs above wrote one such checkpoint per model into a temporary folder, removed
# when the lesson ends. To keep one, train it with a path of your own, then predict:
#
#     python -c "from digits_classifier import fit_digits; fit_digits('cnn', checkpoint_path='digits_cnn.pt')"
#     python digits_classifier.py predict --checkpoint digits_cnn.pt digit.png
#
# The command prints the predicted digit and its probability. The image is an 8×8 `.npy` array on the
# dataset's scale, 0 (background) to 16 (ink), as in `sklearn.datasets.load_digits().images`,
# or an 8×8 `.png` with dark ink on a light (or transparent) background, as
# `matplotlib.image.imsave(path, image, cmap="gray_r", vmin=0, vmax=16)` (or `plt.imsave`)
# writes one. A missing file, a wrong shape, values off that scale, or a file that is not such a
# checkpoint stop it with one line and exit code 2. Light ink on a dark background (MNIST's
# convention) must be inverted first: read the other way round it gives a confident wrong
# answer. Below, the command's function runs in this process on the first test image, saved
# both ways next to the checkpoint in the temporary folder: a PNG stores 8-bit gray levels, so
# its pixels come back within 16/255 of the array's, and the probabilities may differ in the
# last digits.

# %%
PREDICT_PROG = "digits_classifier.py predict"  # how the prediction command names itself in its messages
PIXEL_MAX = 16  # the digits' ink value: pixels run from 0 (background) to 16


def load_classifier(path: str | os.PathLike) -> tuple[nn.Module, dict[str, float]]:
    """The model (in eval mode) and the pixel normalization from a checkpoint that fit_digits wrote."""
    path = Path(path)
    if not path.is_file():
        raise LessonError(f"checkpoint {str(path)!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- a file torch did not write fails in many ways (KeyError among them)
        raise LessonError(f"checkpoint {str(path)!r} is not a file torch.save wrote, or holds objects "
                          f"weights_only=True refuses ({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or not {"arch", "model", "normalization"} <= checkpoint.keys():
        raise LessonError(f"checkpoint {str(path)!r} was not written by fit_digits(..., checkpoint_path=...): "
                          "it has no arch, model and normalization")
    if checkpoint.get("kind") != "model":
        raise LessonError(f"checkpoint {str(path)!r} holds a training state to resume (written with stop_after), "
                          "not the trained model: let fit_digits finish with checkpoint_path=...")
    try:
        model = make_digits_model(checkpoint["arch"])
        model.load_state_dict(checkpoint["model"])
    except (ValueError, RuntimeError) as error:
        raise LessonError(f"checkpoint {str(path)!r} does not hold weights of a digits model: "
                          f"{str(error).splitlines()[0]}") from error
    return model.eval(), {key: float(checkpoint["normalization"][key]) for key in ("mean", "std")}


def read_digit_image(path: str | os.PathLike) -> torch.Tensor:
    """An (8, 8) float32 image on the digits' scale, 0 (background) to 16 (ink), from a .npy or .png file."""
    path = Path(path)
    if not path.is_file():
        raise LessonError(f"image {str(path)!r}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            image = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".png":
            from matplotlib.image import imread

            pixels = imread(path)  # (8, 8) gray or (8, 8, 3 or 4) RGB(A), floats in [0, 1]
            gray = pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=-1)
            if pixels.ndim == 3 and pixels.shape[-1] == 4:  # transparent pixels are background: over white
                gray = gray * pixels[..., 3] + (1.0 - pixels[..., 3])
            image = PIXEL_MAX * (1.0 - gray)  # dark ink on a light background: ink → 16, background → 0
        else:
            raise LessonError(f"image {str(path)!r}: expected a .npy or a .png file")
    except (ValueError, OSError, SyntaxError) as error:  # Pillow reports a broken PNG as SyntaxError
        raise LessonError(f"image {str(path)!r} could not be read: {str(error).splitlines()[0]}") from error
    if image.shape != (8, 8):
        raise LessonError(f"image {str(path)!r} has shape {image.shape}; the model reads 8×8 images: resize "
                          "it first, e.g. PIL.Image.open(path).convert('L').resize((8, 8))")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all() or not (
            0 <= image.min() and image.max() <= PIXEL_MAX):
        raise LessonError(f"image {str(path)!r} must hold numbers from 0 (background) to {PIXEL_MAX} (ink), "
                          f"the digits' scale")
    return torch.from_numpy(image.astype(np.float32))


@torch.no_grad()
def predict_digit(model: nn.Module, normalization: dict[str, float], image: torch.Tensor) -> tuple[int, float]:
    """The predicted digit of one (8, 8) image on the 0-16 scale, and its softmax probability."""
    scaled = (image / PIXEL_MAX - normalization["mean"]) / normalization["std"]  # as make_digits_splits scales
    probs = torch.softmax(model(scaled.reshape(1, 1, 8, 8)), dim=1)[0]  # (10,)
    return int(probs.argmax()), probs.max().item()


def predict_main(argv: Sequence[str]) -> int:
    """`python digits_classifier.py predict --checkpoint PATH IMAGE`: print the digit; exit code 2 on bad input."""
    parser = argparse.ArgumentParser(prog=PREDICT_PROG, description="Predict the digit in an 8×8 image with a "
                                     "model that fit_digits(..., checkpoint_path=PATH) saved.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint fit_digits wrote")
    parser.add_argument("image", type=Path, help="an 8×8 .npy array (0 = background, 16 = ink) or an 8×8 "
                        ".png, dark ink on a light (or transparent) background; invert a light-on-dark image first")
    args = parser.parse_args(argv)
    try:
        model, scaling = load_classifier(args.checkpoint)
        digit, probability = predict_digit(model, scaling, read_digit_image(args.image))
    except LessonError as error:
        print(f"{PREDICT_PROG}: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.image.name}: digit {digit} (probability {100 * probability:.1f} %)")
    return 0


# %%
if __name__ == "__main__":
    from matplotlib.image import imsave

    example = splits[2].indices[0]
    raw = (PIXEL_MAX * _digits().inputs[example, 0]).numpy()  # (8, 8) on the 0-16 scale
    shown_checkpoint = Path(checkpoints.name) / f"{shown}.pt"
    np.save(Path(checkpoints.name) / "digit.npy", raw)
    imsave(Path(checkpoints.name) / "digit.png", raw, cmap="gray_r", vmin=0, vmax=PIXEL_MAX)
    print(f"\nFirst test image, a {int(_digits().targets[example])}, saved as digit.npy and digit.png next to "
          f"the {shown} checkpoint {shown}.pt ({shown_checkpoint.stat().st_size / 1024:.0f} KiB), in the temporary "
          "folder:")
    for name in ("digit.npy", "digit.png"):
        print(f"predict_main(['--checkpoint', '{shown}.pt', '{name}']), as `python {PREDICT_PROG}` would:")
        predict_main(["--checkpoint", str(shown_checkpoint), str(Path(checkpoints.name) / name)])

# %% [markdown]
# ## `torch.compile`: one compilation, then (perhaps) faster calls
# `torch.compile(model)` returns a wrapper. On its first call, TorchDynamo reads the Python
# bytecode of `forward` as it runs and records the tensor operations into a graph; AOTAutograd
# derives the backward graph when gradients are needed; Inductor, the default backend, fuses
# the operations into generated kernels (C++ with OpenMP on the CPU, Triton on a GPU) and
# compiles them. Later calls whose inputs pass the recorded *guards* (the same shapes, dtypes,
# devices and Python values the graph assumed) run the compiled code. That first call is costly:
# on a fresh machine it compiles everything, including headers Inductor precompiles once; later
# processes find the kernels in Inductor's on-disk cache (in the system's temporary folder,
# `/tmp/torchinductor_<user>` on Linux, which a reboot may clear; `TORCHINDUCTOR_CACHE_DIR`
# moves it), and the first call shrinks to tracing and loading. `compile_report` times the first call once
# (one run, no spread), says whether the cache was warm, then measures steady-state latency,
# eager against compiled, with the median and spread of this course's benchmarks, for inference
# and for a training step (forward, backward, AdamW step; the optimizer stays eager). The last
# column divides the first call's cost by the time each call saves: the calls after which
# compiling has paid for itself, "never" when the compiled call is no faster, and "within noise"
# when the two medians differ by less than the larger IQR, too little to count on.
#
# What to look for: the speed-up in each row and the calls to pay off. On the CPU, Inductor
# fuses the elementwise operations (ReLU, BatchNorm's scale and shift in eval mode) into the
# loops around them and removes Python and dispatcher work per operator, so a small model's
# inference can gain severalfold; a training step, where the backward pass and the eager
# optimizer do much of the work, can gain far less. Against that stands the first call's cost,
# from hundreds of milliseconds with a warm cache to tens of seconds with a cold one: compiling
# pays for long training runs and for servers answering many requests, not for a cell that
# runs once. On a GPU the balance moves again, since fused kernels save
# memory traffic and kernel launches.
#
# Where compiling cannot work here (no C++ compiler for the CPU backend, no Triton for a GPU,
# a Python release Dynamo does not support yet), the lesson says why in one line and goes on:
# the serving table leaves out its compiled rows and the last section is skipped.
# `python course.py doctor` checks this for your machine.

# %%
COMPILE_MIN_RUN_S = 0.1  # benchmark time per latency row in the compile and serving sections
COMPILE_BATCH = 256  # example batch for compilation and steady-state latency: about the evaluation batch


def inductor_cache_state(hits: int, misses: int) -> str:
    """How warm Inductor's on-disk graph cache was for one compilation, from its hit and miss counts."""
    if hits and not misses:
        return "warm"
    if misses and not hits:
        return "cold"
    return "partly warm" if hits else "not used"


def _compiled_first_call(compiled: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """Seconds of the first call of a compiled function (one run) and the state of Inductor's cache for it."""
    from torch._dynamo.utils import counters

    counters.clear()
    with stopwatch(device) as clock:
        compiled()
    return clock.seconds, inductor_cache_state(counters["inductor"]["fxgraph_cache_hit"],
                                               counters["inductor"]["fxgraph_cache_miss"])


@contextmanager
def _loggers_at_error(*names: str) -> Iterator[None]:
    """Only errors from these loggers while the block runs; their levels are restored after it."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _import_cpp_extension_quietly() -> None:
    """torch.compile imports torch.utils.cpp_extension, which reports "No CUDA runtime is found, using
    CUDA_HOME=..." where a CUDA build of torch meets a CUDA toolkit but no GPU: harmless (see the README's
    troubleshooting). Recent releases log it as a warning, older ones print it; that one line is dropped
    either way, and anything else the import prints is passed on."""
    buffer = io.StringIO()
    with _loggers_at_error("torch.utils.cpp_extension"), redirect_stderr(buffer):
        import torch.utils.cpp_extension  # noqa: F401
    for line in buffer.getvalue().splitlines():
        if not line.startswith("No CUDA runtime is found"):
            print(line, file=sys.stderr)


def break_even_calls(first_call_s: float, eager_s: float, compiled_s: float) -> int | None:
    """Calls after which compiling has paid for its first call; None when a compiled call saves nothing."""
    saved = eager_s - compiled_s
    return math.ceil(first_call_s / saved) if saved > 0 else None


def compile_report(model: nn.Module, example_batch: torch.Tensor, device: torch.device | str,
                   backend: str | Callable = "inductor", min_run_time: float = COMPILE_MIN_RUN_S) -> dict[str, object]:
    """torch.compile on copies of `model`: the first call's cost and cache state, then eager vs compiled latency.

    "inference" (eval mode, no_grad) and "training step" (train mode, cross-entropy, backward, AdamW) each get
    first_call_s, cache, eager and compiled Timings and break_even calls; "max_abs_difference" compares the
    compiled and eager logits; "compiled" is the compiled inference model. Where compiling fails on this
    machine, {"available": False, "reason": one line} instead: the caller goes on without it.
    """
    device = as_device(device)
    _import_cpp_extension_quietly()
    images = example_batch.to(device)  # (batch, 1, 8, 8)
    labels = torch.arange(len(images), device=device) % 10  # (batch,) any fixed labels: only the timing matters
    eager, trained = copy.deepcopy(model).to(device).eval(), copy.deepcopy(model).to(device).train()
    try:  # torch.compile itself refuses some Python releases; the first call finds a missing compiler
        torch.compiler.reset()  # forget what this process compiled before: the first call below compiles
        compiled, compiled_train = torch.compile(eager, backend=backend), torch.compile(trained, backend=backend)
    except Exception as error:  # noqa: BLE001 -- whatever the compiler stack raises means "not here"
        return {"available": False, "backend": getattr(backend, "__name__", backend), "reason": one_line(error)}
    optimizer = torch.optim.AdamW(trained.parameters(), lr=DIGITS_PEAK_LR)  # the compiled copy shares them

    @torch.no_grad()
    def infer(net: nn.Module) -> torch.Tensor:
        return net(images)

    def train_step(net: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()

    report: dict[str, object] = {"available": True, "backend": getattr(backend, "__name__", backend)}
    with intra_op_threads(DIGITS_THREADS):
        for name, step, fast, slow in (("inference", infer, compiled, eager),
                                       ("training step", train_step, compiled_train, trained)):
            try:
                first_call_s, cache = _compiled_first_call(partial(step, fast), device)
            except Exception as error:  # noqa: BLE001 -- whatever the compiler stack raises means "not here"
                return {"available": False, "backend": report["backend"], "reason": one_line(error)}
            timings = {label: benchmark(partial(step, net), device, min_run_time, threads=DIGITS_THREADS)
                       for label, net in (("eager", slow), ("compiled", fast))}
            saved = timings["eager"].median - timings["compiled"].median
            report[name] = {"first_call_s": first_call_s, "cache": cache, **timings,
                            "break_even": break_even_calls(first_call_s, timings["eager"].median,
                                                           timings["compiled"].median),
                            "within_noise": abs(saved) < max(t.iqr for t in timings.values())}
    report["max_abs_difference"] = (infer(compiled) - infer(eager)).abs().max().item()
    report["compiled"] = compiled
    return report


def print_compile_report(report: dict[str, object], arch: str) -> None:
    if not report["available"]:
        print(f"torch.compile is not available here, so this section is skipped: {report['reason']}")
        return
    print_table(f"torch.compile ({report['backend']}) on the trained {arch}, batch {COMPILE_BATCH}: the first call "
                f"(one run) and steady-state latency on {threads_label(DIGITS_THREADS)}",
                ["", "first call", "Inductor cache", "eager", TIMING_HEADERS[1], "compiled", TIMING_HEADERS[1],
                 "eager / compiled", "calls to pay off"],
                [[name, fmt_seconds(r["first_call_s"]), r["cache"], *timing_cells(r["eager"]),
                  *timing_cells(r["compiled"]), f"{r['eager'].median / r['compiled'].median:.2f}×",
                  "within noise" if r["within_noise"] else "never" if r["break_even"] is None
                  else f"{r['break_even']:,}"]
                 for name, r in ((key, report[key]) for key in ("inference", "training step"))])
    print(timing_note(DIGITS_THREADS))
    print(f"Compiled and eager logits differ by at most {report['max_abs_difference']:.1e}: the fused kernels "
          "add and multiply in another order, so float32 rounding differs a little.")
    if "cold" in (report["inference"]["cache"], report["training step"]["cache"]):
        print("The cache was cold: this run paid for compiling from scratch. Run the lesson again to see the "
              "first call with a warm cache.")


# %%
if __name__ == "__main__":
    if ctx.quick:
        print("--quick leaves out torch.compile, torch.export and ONNX Runtime (seconds of compilation and export): "
              "run `python digits_classifier.py` to see them.")
    else:
        test_images, _ = subset_tensors(splits[2])  # (269, 1, 8, 8), standardised
        compiled_report = compile_report(runs[shown].model, test_images[:COMPILE_BATCH], ctx.device)
        print_compile_report(compiled_report, shown)

# %% [markdown]
# ## Leaving PyTorch: `torch.export`, ONNX and ONNX Runtime
# A server or a phone rarely runs the Python that trained the model. `torch.export.export`
# traces `forward` once into an `ExportedProgram`: the graph of aten operators with the weights,
# and no Python left. Here the batch dimension is declared dynamic (`torch.export.Dim`), so one
# program serves any batch size. `torch.export.save` writes it to a `.pt2` file, and
# `torch.export.load` in a fresh process, with none of this lesson's code, gives it back: its
# outputs are compared below with the model's.
#
# ONNX is the exchange format many serving runtimes read. `torch.onnx.export(..., dynamo=True)`
# goes through `torch.export` and translates each aten operator into ONNX operators;
# `onnx.checker` validates the file, and ONNX Runtime, a separate inference engine with its own
# kernels, runs it. Its logits are not bit-identical to PyTorch's (other kernels, other orders
# of summation), so they are compared against a stated tolerance, `ONNX_ATOL`, at two batch
# sizes, and the predictions on the whole test split must agree. The latency table then serves
# one request (batch 1) and a full batch (256) from PyTorch eagerly, compiled, and from ONNX
# Runtime (on the CPU, with the same thread count); the compiled model meets batch 1 for the
# first time here, and the warm-up call before its timing compiles it again (the last section
# says why). What to look for: at batch 1, where a call is mostly overhead, a runtime with less
# per-call overhead wins; at 256 the arithmetic starts to count. TorchScript
# (`torch.jit.script`, `torch.jit.trace`), the older route, is deprecated in favour of
# `torch.export`; on phones, ExecuTorch runs exported programs.

# %%
ONNX_ATOL = 1e-4  # largest difference accepted between ONNX Runtime's and PyTorch's float32 logits
ONNX_CHECK_BATCHES = (1, 37)  # batch sizes compared with PyTorch: one image, and a size unlike the example's
LATENCY_BATCHES = (1, COMPILE_BATCH)  # serving latency: one request, and a full batch
FRESH_PROCESS_TIMEOUT_S = 120  # the fresh process that loads the exported program: far more than it needs


def _batch_dim() -> tuple[dict, ...]:
    """dynamic_shapes for a model whose one input is (batch, 1, 8, 8): the batch size may vary. A tuple, one
    entry per positional input, does not depend on what forward's argument is called."""
    return ({0: torch.export.Dim("batch")},)


def export_program(model: nn.Module, example_batch: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` (a copy, on the CPU, in eval mode) traced by torch.export with a dynamic batch dimension."""
    with _quiet_exporter():
        return torch.export.export(copy.deepcopy(model).cpu().eval(), (example_batch.cpu(),),
                                   dynamic_shapes=_batch_dim())


def run_saved_program_in_fresh_process(program_path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    """Load a .pt2 file with torch.export.load in a new Python process and return its outputs for `images`."""
    code = ("import sys, torch; program = torch.export.load(sys.argv[1]); "
            "torch.save(program.module()(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])")
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "inputs.pt", Path(tmp) / "outputs.pt"
        torch.save(images.cpu(), inputs)
        done = subprocess.run([sys.executable, "-c", code, str(program_path), str(inputs), str(outputs)],
                              capture_output=True, text=True, timeout=FRESH_PROCESS_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"loading {program_path} in a fresh process failed: {done.stderr.strip()[-500:]}")
        return torch.load(outputs, weights_only=True)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter logs on every export that torchvision's operators are not registered (this model has
    none), and some releases warn about torch's and onnxscript's own internals. torch 2.6's export also logs
    that it ignored the guard `batch >= 16` a CPU convolution adds (see "Graph breaks and recompilation"): it
    only picks the convolution's algorithm, and the tests compare the exported model at batch sizes 1 and 37."""
    with (_loggers_at_error("torch.onnx._internal.exporter._registration", "torch.fx.experimental.symbolic_shapes"),
          warnings.catch_warnings()):
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="onnxscript")  # onnxscript 0.2's own
        yield


def export_onnx(model: nn.Module, path: str | os.PathLike, example_batch: torch.Tensor) -> Path:
    """Write `model` as ONNX through torch.export (dynamo=True), batch dimension dynamic; onnx.checker validates it.

    The graph's input is named "images" and its output "logits".
    """
    import onnx

    path = Path(path)
    try:
        with _quiet_exporter():
            torch.onnx.export(copy.deepcopy(model).cpu().eval(), (example_batch.cpu(),), path, dynamo=True,
                              dynamic_shapes=_batch_dim(), input_names=["images"], output_names=["logits"],
                              external_data=False, verbose=False)  # weights inside the file: one file to ship
    except Exception as error:  # noqa: BLE001 -- the exporter's errors span torch, onnxscript and onnx
        from importlib.metadata import version

        raise LessonError(f"torch.onnx.export failed with torch {torch.__version__} and onnxscript "
                          f"{version('onnxscript')} ({one_line(error, 160)}); the two must be a matched pair: "
                          "see the README's troubleshooting") from error
    onnx.checker.check_model(onnx.load(path))  # raises on an invalid model
    return path


def onnx_session(path: str | os.PathLike, threads: int = DIGITS_THREADS):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads, like the PyTorch timings."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: older releases log notes on graph clean-up for every session
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def serving_agreement(model: nn.Module, session, program_outputs: torch.Tensor,
                      images: torch.Tensor) -> list[dict[str, object]]:
    """PyTorch's logits against ONNX Runtime's (at ONNX_CHECK_BATCHES and the whole of `images`) and against
    the exported program's outputs from a fresh process (`program_outputs`, for all of `images`)."""
    expected = copy.deepcopy(model).cpu().eval()(images)  # (n, 10): the reference for every row

    def row(runtime: str, outputs: torch.Tensor) -> dict[str, object]:
        reference = expected[:len(outputs)]
        return {"runtime": runtime, "batch": len(outputs),
                "max_abs_difference": (outputs - reference).abs().max().item(),
                "same_predictions": int((outputs.argmax(1) == reference.argmax(1)).sum())}

    served = [torch.from_numpy(session.run(["logits"], {"images": images[:n].numpy()})[0])
              for n in (*ONNX_CHECK_BATCHES, len(images))]  # images[:n]: all of them if fewer
    return [row("ONNX Runtime", out) for out in served] + [row("torch.export.load, fresh process", program_outputs)]


def serving_latency(model: nn.Module, compiled: nn.Module | None, session, images: torch.Tensor,
                    device: torch.device, min_run_time: float = COMPILE_MIN_RUN_S) -> list[dict[str, object]]:
    """Timings of one call at each of LATENCY_BATCHES: PyTorch eager and compiled on `device`, ONNX Runtime (CPU)."""
    model = model.eval()
    rows = []
    for n in LATENCY_BATCHES:
        batch = images[:n].to(device)  # (n, 1, 8, 8)
        candidates = {f"PyTorch eager ({device.type})": partial(model, batch)}
        if compiled is not None:
            candidates[f"torch.compile ({device.type})"] = partial(compiled, batch)
        candidates["ONNX Runtime (cpu)"] = partial(session.run, ["logits"], {"images": images[:n].numpy()})
        with torch.no_grad():
            for name, call in candidates.items():
                rows.append({"batch": n, "runtime": name,
                             "timing": benchmark(call, device, min_run_time, threads=DIGITS_THREADS)})
    return rows


def print_serving(agreement: list[dict[str, object]], latency: list[dict[str, object]], onnx_bytes: int,
                  program_bytes: int) -> None:
    print(f"\nExported: ONNX file {onnx_bytes / 1024:.0f} KiB (onnx.checker passed), .pt2 file "
          f"{program_bytes / 1024:.0f} KiB")
    print_table(f"The exported model against PyTorch's logits (tolerance {ONNX_ATOL:g})",
                ["runtime", "batch", "largest logit difference", "within tolerance", "same predicted digit"],
                [[r["runtime"], r["batch"], f"{r['max_abs_difference']:.1e}", r["max_abs_difference"] <= ONNX_ATOL,
                  f"{r['same_predictions']} of {r['batch']}"] for r in agreement])
    print_table(f"Latency of one call, {threads_label(DIGITS_THREADS)} (ONNX Runtime: intra_op_num_threads too)",
                ["batch", "runtime", *TIMING_HEADERS, "per image"],
                [[r["batch"], r["runtime"], *timing_cells(r["timing"]), fmt_seconds(r["timing"].median / r["batch"])]
                 for r in latency])
    print(timing_note(DIGITS_THREADS))


# %%
if __name__ == "__main__":
    if not ctx.quick:
        exported = Path(checkpoints.name) / f"{shown}.pt2"
        torch.export.save(export_program(runs[shown].model, test_images[:COMPILE_BATCH]), exported)
        with ThreadPoolExecutor(1) as pool:  # the fresh process starts and runs while ONNX export works here
            fresh_outputs = pool.submit(run_saved_program_in_fresh_process, exported, test_images)
            onnx_path = export_onnx(runs[shown].model, Path(checkpoints.name) / f"{shown}.onnx",
                                    test_images[:COMPILE_BATCH])
            session = onnx_session(onnx_path)
            agreement = serving_agreement(runs[shown].model, session, fresh_outputs.result(), test_images)
        print_serving(agreement,
                      serving_latency(runs[shown].model, compiled_report.get("compiled"), session, test_images,
                                      ctx.device),
                      onnx_path.stat().st_size, exported.stat().st_size)

# %% [markdown]
# ## Graph breaks and recompilation
# Dynamo records tensor operations; when Python needs a tensor's *value* to go on (an `if` on a
# tensor, `.item()`, a call into a library it cannot trace), it ends the graph there, lets
# Python run that bit, and starts a new graph after it: a *graph break*. The code stays correct,
# but each break splits what Inductor can fuse and adds a hand-over per call.
# `torch._dynamo.explain(fn)(*args)` traces without compiling and reports the graphs, the breaks
# and their reasons (set `TORCH_LOGS="graph_breaks"` to have them logged while a real program
# runs). Below, `damped_softmax` halves logits that grow too large with a Python `if` before the
# softmax: one break, two graphs. The same rule as a tensor expression (`torch.where`) keeps one
# graph. Dynamo's reason names what it could not trace: for the `if`, a conditional jump
# (`generic_jump`) on a tensor.
#
# Guards decide when a compiled graph may be reused. A new batch size fails the shape guard, and
# what happens then depends on `dynamic`: with `dynamic=False` every new size compiles a new
# graph; with the default (`dynamic=None`) the first change recompiles once with the batch
# dimension as a symbol, and later sizes reuse that graph; `dynamic=True` starts symbolic. Sizes
# 0 and 1 are always specialised (a dimension of size 1 broadcasts, so a graph for "any size"
# cannot cover it), so a batch of one compiles its own graph even then. A symbolic size can
# still carry conditions: an operator may choose its algorithm by the batch size, as CPU
# convolutions do, which adds a guard such as `16 <= batch`, and a batch that fails it compiles
# another graph. `TORCH_LOGS="recompiles"` prints the failed guard behind every recompilation.
# A backend that only counts the graphs it is handed, and runs them as they are, shows all this
# without Inductor's cost.
# After `torch._dynamo.config.recompile_limit` graphs for one function (8 by default), Dynamo
# stops compiling it and runs it eagerly: a data loader whose last batch is short, or inputs of
# many lengths, are the usual causes of recompilation, and `dynamic=True` or padding to a few
# fixed sizes are the usual cures.

# %%
RECOMPILE_BATCHES = (256, 37, 100, 5, 1)  # batch sizes fed one after another to the compiled model
DYNAMIC_SETTINGS = (False, None, True)  # torch.compile(dynamic=...): never symbolic, the default, from the start
LARGE_LOGIT = 30.0  # damp_large_logits halves logits beyond this size (the trained models stay well below it)


def damped_softmax(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Probabilities, with the logits halved first when any exceeds LARGE_LOGIT: a Python `if` on a tensor."""
    logits = model(images)  # (batch, 10)
    if logits.abs().max() > LARGE_LOGIT:
        logits = logits / 2
    return logits.softmax(dim=1)


def damped_softmax_traceable(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The same rule as one tensor expression, which Dynamo records into the graph."""
    logits = model(images)  # (batch, 10)
    return torch.where(logits.abs().max() > LARGE_LOGIT, logits / 2, logits).softmax(dim=1)


def graph_breaks(fn: Callable, *args) -> dict[str, object]:
    """What torch._dynamo.explain reports for fn(*args): graphs, breaks and the reason for each break."""
    torch.compiler.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return {"graphs": explained.graph_count, "breaks": explained.graph_break_count,
            "reasons": [str(r.reason).splitlines()[0] for r in explained.break_reasons]}


def count_compilations(model: nn.Module, batch_sizes: Sequence[int], dynamic: bool | None) -> list[int]:
    """Graphs compiled so far after each call of torch.compile(model, dynamic=dynamic) on these batch sizes."""
    compiled_graphs = 0

    def counting_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
        nonlocal compiled_graphs
        compiled_graphs += 1
        return graph_module.forward  # run the captured graph as it is: no Inductor, no code generation

    torch.compiler.reset()
    compiled = torch.compile(model, backend=counting_backend, dynamic=dynamic)
    counts = []
    with torch.no_grad():
        for n in batch_sizes:
            compiled(torch.zeros(n, 1, 8, 8, device=next(model.parameters()).device))
            counts.append(compiled_graphs)
    return counts


def print_compilation_behaviour(breaks: dict[str, dict[str, object]], counts: dict[bool | None, list[int]]) -> None:
    print_table("torch._dynamo.explain: graphs and breaks", ["function", "graphs", "graph breaks", "reason"],
                [[name, b["graphs"], b["breaks"], "; ".join(b["reasons"]) or "-"] for name, b in breaks.items()])
    print_table("Graphs compiled so far, after each batch size in turn (a counting backend)",
                ["torch.compile(dynamic=...)", *(f"batch {n}" for n in RECOMPILE_BATCHES)],
                [[repr(dynamic), *row] for dynamic, row in counts.items()])


# %%
if __name__ == "__main__":
    if not ctx.quick and compiled_report["available"]:  # otherwise the line above said why
        eval_model = copy.deepcopy(runs[shown].model).eval()
        print_compilation_behaviour(
            {fn.__name__: graph_breaks(partial(fn, eval_model), test_images[:8].to(ctx.device))
             for fn in (damped_softmax, damped_softmax_traceable)},
            {dynamic: count_compilations(eval_model, RECOMPILE_BATCHES, dynamic) for dynamic in DYNAMIC_SETTINGS})
