"""Exercises for lesson 6, digits_classifier.py: a loss, a learning-rate schedule and a training loop of your own.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_digits_classifier.py    (this lesson, with messages)
    python -m pytest exercises -k warmup_cosine_lr          (one exercise)
Reference solutions: exercises/solutions/digits_classifier.py.
"""

from __future__ import annotations

import torch
from torch import nn


def label_smoothing_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Task: the mean cross-entropy of `logits` against label-smoothed targets: each sample's target
    distribution is (1 − smoothing) on its true class plus smoothing / C spread evenly over all C classes
    (the true class included), as F.cross_entropy(..., label_smoothing=smoothing) computes it.

    Section: "Losses: cross-entropy on logits, and label smoothing as a module" in digits_classifier.py (lesson 6).
    Signature: label_smoothing_cross_entropy(logits, target, smoothing) -> a 0-dim tensor (autograd must work)
    Shapes: logits (B, C) float, target (B,) int64 class indices. It must stay finite for logits as large as
    ±1000 in float32. Raise ValueError naming smoothing unless 0 ≤ smoothing ≤ 1.
    Rule: written out: no F.cross_entropy or nn.CrossEntropyLoss.
    Hint: the smoothed target is a mixture: mostly the true class, a little of every class.
    """
    raise NotImplementedError


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, peak_lr: float) -> float:
    """Task: the learning rate at optimizer step `step` (counting from 0) of a linear warm-up followed by a
    cosine decay: it rises in equal steps to peak_lr over the first warmup_steps steps, then falls along half a
    cosine to 0 at step total_steps.

    Section: "Optimisation: parameter groups, a schedule, gradient clipping" in digits_classifier.py (lesson 6).
    Signature: warmup_cosine_lr(step, warmup_steps, total_steps, peak_lr) -> float
    Shapes: plain Python numbers. During the warm-up (step < warmup_steps) the rate is
    peak_lr · (step + 1) / warmup_steps, so the very first step already moves and step warmup_steps − 1 reaches
    peak_lr. After it, with progress p = (step − warmup_steps) / (total_steps − warmup_steps), the rate is
    peak_lr · (1 + cos(π·p)) / 2, and p stops at 1 (steps past total_steps stay at 0). Raise ValueError naming
    warmup_steps unless 0 ≤ warmup_steps < total_steps.
    Rule: the formula: no torch.optim.lr_scheduler.
    Hint: two pieces: a straight line up over the warm-up, then half a cosine down over the rest.
    """
    raise NotImplementedError


def train_digits_classifier(X_train: torch.Tensor, y_train: torch.Tensor, seed: int = 0) -> nn.Module:
    """Task: train a classifier for scikit-learn's 8×8 digits that reaches at least 95 % accuracy on held-out
    digits, reproducibly (same seed, same model) and without touching torch's global random state.

    Section: "The loop: train, evaluate, stop early" in digits_classifier.py (lesson 6).
    Signature: train_digits_classifier(X_train, y_train, seed=0) -> nn.Module (the trained model)
    Shapes: X_train (n, 64) float32 pixels in [0, 1], y_train (n,) int64 labels 0–9; the model maps (batch, 64)
    to (batch, 10) logits. The check trains on 75 % of the 1797 digits and tests on the rest, within seconds.
    Rule: leave torch's global random state as it was.
    Hint: a small MLP, Adam and a few epochs suffice; every random draw comes from `seed`.
    """
    raise NotImplementedError
