"""Reference solutions for exercises/digits_classifier.py (the docstrings there state each task)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DIGITS_HIDDEN = 128  # hidden units of the digits MLP
DIGITS_EPOCHS = 10  # passes over the training digits: 96.7–97.6 % held-out accuracy, seeds 0–4 (torch 2.13)
DIGITS_BATCH = 64  # rows per Adam step
DIGITS_LR = 5e-3  # Adam's step size


def label_smoothing_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """(1 − s) · the true class's −log p plus s · the mean −log p over all classes, averaged over the batch."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing} must be in [0, 1]")
    log_probs = F.log_softmax(logits, dim=1)  # (B, C), finite for any finite logits
    true_class = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,)
    uniform = -log_probs.mean(dim=1)  # (B,)
    return ((1.0 - smoothing) * true_class + smoothing * uniform).mean()


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, peak_lr: float) -> float:
    """Linear warm-up to peak_lr, then half a cosine down to 0 over the remaining steps."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 ≤ warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_digits_classifier(X_train: torch.Tensor, y_train: torch.Tensor, seed: int = 0) -> nn.Module:
    """A small MLP, Adam, shuffled mini-batches by indexing; all randomness local to `seed`."""
    with torch.random.fork_rng(devices=[]):  # initial weights from `seed`; the caller's RNG stays untouched
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, DIGITS_HIDDEN), nn.ReLU(), nn.Linear(DIGITS_HIDDEN, 10))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=DIGITS_LR)
    for _ in range(DIGITS_EPOCHS):
        for idx in torch.randperm(len(X_train), generator=generator).split(DIGITS_BATCH):
            optimizer.zero_grad()
            F.cross_entropy(model(X_train[idx]), y_train[idx]).backward()  # (batch, 10) logits vs (batch,) labels
            optimizer.step()
    return model.eval()
