"""Checks for exercises/digits_classifier.py, against torch's own schedulers and held-out digits."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from exercises.checks import broken_rule, check, check_close, check_equal, check_raises_value_error
from exercises.rules import reference, watching

LESSON = "digits_classifier"
TARGET_ACCURACY = 0.95  # held-out accuracy train_digits_classifier must reach
SCHEDULES = ((3, 12, 0.01), (1, 5, 2.0), (10, 100, 1e-3))  # (warmup_steps, total_steps, peak_lr)


def _torch_schedule(warmup_steps: int, total_steps: int, peak_lr: float, steps: int) -> list[float]:
    """The same schedule from torch.optim, one step at a time: LinearLR over the warm-up steps, then
    CosineAnnealingLR from peak_lr over the rest (two optimizers: SequentialLR warns on torch 2.5)."""
    def rates(optimizer, scheduler, count):
        out = []
        for _ in range(count):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    warm = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    warmup = torch.optim.lr_scheduler.LinearLR(warm, start_factor=1 / warmup_steps, end_factor=1.0,
                                               total_iters=max(warmup_steps - 1, 1))
    decay = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(decay, T_max=total_steps - warmup_steps)
    return (rates(warm, warmup, warmup_steps) + rates(decay, cosine, total_steps - warmup_steps))[:steps]


def test_label_smoothing_cross_entropy(answer):
    gen = torch.Generator().manual_seed(0)
    for smoothing, scale in ((0.1, 1.0), (0.0, 3.0), (0.3, 1000.0)):  # scale 1000: exp overflows float32
        logits = (scale * torch.randn(6, 5, generator=gen, dtype=torch.float32)).requires_grad_()
        target = torch.randint(0, 5, (6,), generator=gen)
        with reference():
            expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
            logp = F.log_softmax(logits.detach().double(), dim=1)
            true_class = logp.gather(1, target.unsqueeze(1)).squeeze(1)
            others = (logp.sum(1) - true_class) / 4  # the mean over the C − 1 = 4 other classes
            over_others = (-(1 - smoothing) * true_class - smoothing * others).mean().float()
        got = answer(logits, target, smoothing)
        check_close(got, expected.detach(), what=f"the loss with smoothing={smoothing}, logits of size ~{scale:g}",
                    rtol=1e-5, atol=1e-6, scales={6.0: "the sum over the batch of 6, not the mean"},
                    looks_like={"the smoothing spread over the C − 1 wrong classes only; torch spreads it over all "
                                "C classes, the true one included": over_others} if smoothing else {},
                    hint="log of a softmax loses small probabilities to 0 (log 0 = −inf) for large logits; the "
                         "smoothed target puts smoothing / C on every class.")
        (grad,) = torch.autograd.grad(got, logits)
        with reference():
            (expected_grad,) = torch.autograd.grad(expected, logits)
        check_close(grad, expected_grad, what=f"the gradient with respect to the logits (smoothing={smoothing})",
                    rtol=1e-4, atol=1e-6, hint="Build the loss from torch operations on `logits` so autograd "
                                               "can follow it; do not detach or convert to NumPy.")
    check_raises_value_error(lambda: answer(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.5),
                             what="smoothing=1.5", argument="smoothing",
                             hint="Check 0 ≤ smoothing ≤ 1 first and raise ValueError naming smoothing.")


def test_warmup_cosine_lr(answer):
    for warmup_steps, total_steps, peak_lr in SCHEDULES:
        with reference():
            expected = torch.tensor(_torch_schedule(warmup_steps, total_steps, peak_lr, total_steps),
                                    dtype=torch.float64)
        steps = torch.arange(total_steps, dtype=torch.float64)
        progress = (steps - warmup_steps) / (total_steps - warmup_steps)
        warm = steps < warmup_steps
        variants = {"the warm-up starts at 0: step / warmup_steps instead of (step + 1) / warmup_steps":
                        torch.where(warm, peak_lr * steps / warmup_steps, expected),
                    "the cosine runs over all total_steps, not over the steps after the warm-up":
                        torch.where(warm, expected, peak_lr * (1 + torch.cos(
                            math.pi * (steps - warmup_steps) / total_steps)) / 2),
                    "the decay is twice too high: the factor 1/2 of (1 + cos) / 2 is missing":
                        torch.where(warm, expected, peak_lr * (1 + torch.cos(math.pi * progress)))}
        got = torch.tensor([float(answer(step, warmup_steps, total_steps, peak_lr)) for step in range(total_steps)],
                           dtype=torch.float64)
        check_close(got, expected, what=f"the rate at steps 0 … {total_steps - 1} (warmup_steps={warmup_steps}, "
                    f"total_steps={total_steps}, peak_lr={peak_lr})", rtol=1e-6, atol=1e-12, looks_like=variants,
                    hint="The first step already moves, the warm-up's last step reaches peak_lr, and the cosine "
                         "takes it from peak_lr to 0 over the steps that remain.")
    end = float(answer(120, 10, 100, 1e-3))
    check(abs(end) < 1e-15, "the rate after total_steps must stay at 0.", expected=0.0, got=end,
          hint="Past total_steps the cosine would rise again: where must the progress stop?")
    check_raises_value_error(lambda: answer(0, 5, 5, 0.1), what="warmup_steps=5, total_steps=5",
                             argument="warmup_steps",
                             hint="Check 0 ≤ warmup_steps < total_steps first; raise ValueError naming warmup_steps.")


def _digits_split():
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # (1797, 64) in [0, 1]
    X_train, X_test, y_train, y_test = train_test_split(X, digits.target.astype(np.int64), test_size=0.25,
                                                        stratify=digits.target, random_state=0)
    return tuple(torch.from_numpy(a) for a in (X_train, X_test, y_train, y_test))


def _logits(model, X: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def test_train_digits_classifier(answer):
    X_train, X_test, y_train, y_test = _digits_split()
    global_state = torch.get_rng_state()
    steps = []  # one entry per optimizer step, whichever optimizer
    handle = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        with watching(count=("torch.optim.Optimizer.zero_grad", "torch.nn.Module.zero_grad")) as calls:
            model = answer(X_train, y_train, seed=0)
    finally:
        handle.remove()
    if not torch.equal(global_state, torch.get_rng_state()):
        broken_rule("train_digits_classifier", "torch.get_rng_state() changed during the call",
                    hint="nn.Linear draws its initial weights from the global RNG, and so does randperm without a "
                         "generator: torch.random.fork_rng keeps such draws from leaking out.")
    logits = _logits(model, X_test)
    check_equal(tuple(logits.shape), (len(X_test), 10), what="the model's output for the 450 test digits",
                hint="The model maps (batch, 64) pixels to (batch, 10) logits, one per digit class.")
    accuracy = (logits.argmax(dim=1) == y_test).double().mean().item()
    cleared = sum(calls.counts.values())
    check(accuracy >= TARGET_ACCURACY, f"the trained model's held-out accuracy is {accuracy:.1%}, below the target.",
          expected=f"at least {TARGET_ACCURACY:.0%} on 450 held-out digits", got=f"{accuracy:.1%}",
          looks_like={f"{len(steps)} optimizer steps and no zero_grad call: each step followed the sum of all "
                      "gradients so far (if you clear .grad another way, look elsewhere)": f"{accuracy:.1%}"}
          if steps and not cleared else {f"only {len(steps)} optimizer steps: far too few to converge":
                                         f"{accuracy:.1%}"} if len(steps) < 100 else {},
          hint="Too few steps or too small a step, no shuffling, or gradients that are never cleared all "
               "look like this.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # the second run: a caller whose global RNG is somewhere else
        repeat = _logits(answer(X_train, y_train, seed=0), X_test)
    check(torch.equal(repeat, logits), "train_digits_classifier(seed=0) twice gave two different models (the second "
          "time, torch's global RNG was in another state).", expected="identical logits for seed=0 twice",
          got=f"max difference {(repeat - logits).abs().max():.3g}",
          hint="Every random draw (initial weights, shuffling) must come from `seed`, not from the caller's RNG.")
    other = _logits(answer(X_train, y_train, seed=1), X_test)
    check(not torch.equal(other, logits), "train_digits_classifier gave the same model for seeds 0 and 1.",
          expected="different models for different seeds", got="identical logits",
          hint="Use `seed` for the initial weights and the shuffling instead of a fixed number.")
