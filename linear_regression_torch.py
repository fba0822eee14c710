"""Linear regression four ways (NumPy, manual autograd, nn.Module + optim, closed form), then with DDP.

Run `python linear_regression_torch.py` (add `--quick` for a smoke run).
One synthetic regression problem is solved with hand-derived NumPy gradients, with PyTorch
autograd by hand, with nn.Module + torch.optim (five optimizers), and exactly with
torch.linalg.lstsq; the same loop then runs data-parallel on several CPU processes with
DistributedDataParallel. Figures: plots/numpy_vs_torch_scaling.png,
plots/linear_regression_comparison.png.
"""

from __future__ import annotations

import gc
import math
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from lesson_harness import (
    as_device,
    fmt_seconds,
    new_figure,
    print_pairs,
    print_table,
    save_figure,
    share_notebook_with_workers,
    start_lesson,
    time_median,
)


@dataclass(frozen=True)
class Config:
    n_samples: int = 1_000  # rows in the main regression problem
    n_features: int = 5  # columns (few enough to draw every weight's trajectory)
    noise: float = 0.5  # std of the Gaussian noise added to y: the true weights' expected MSE is noise² = 0.25
    epochs: int = 1_000  # full-batch steps for the NumPy / manual / module comparison
    lr: float = 0.05  # plain gradient-descent step size (stable below max_stable_lr: 0.91 in a full run)
    optimizer_epochs: int = 500  # steps per optimizer in the five-way comparison
    scaling_sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000, 1_000_000)  # rows in the per-epoch timing
    landscape_epochs: int = 150  # steps drawn on the loss landscape
    ddp_world_size: int = 2  # CPU processes in the data-parallel run
    ddp_epochs: int = 100  # steps in the data-parallel run
    min_run_time: float = 0.15  # seconds each timing is measured for (a fit of `epochs` epochs is one call)


FULL = Config()
QUICK = Config(n_samples=200, epochs=100, optimizer_epochs=100, scaling_sizes=(100, 1_000, 10_000),
               landscape_epochs=40, ddp_epochs=10, min_run_time=0.02)
DDP_TIMEOUT_S = 120.0  # a data-parallel run that takes longer than this is stuck: kill it and fail
FLOAT32_LOSS_RESOLUTION = 1e-7  # relative: float32 losses cannot resolve differences smaller than this
OPTIMIZER_NAMES = ("sgd", "momentum", "adam", "adagrad", "rmsprop")
MOMENTUM = 0.9  # β of the "momentum" optimizer (torch.optim.SGD's momentum)
RMSPROP_ALPHA = 0.99  # decay of RMSprop's running mean of squared gradients (torch's default)
# Step sizes for the five-way comparison on standardised features. Gradient descent is stable
# for lr < 2/λ_max(2AᵀA/n), A = [X, 1]: 0.91 for the full run's data (`max_stable_lr`). Under a steady
# gradient, momentum's steps grow to 1/(1 − β) = 10 times SGD's, so its lr is SGD's times
# (1 − β). Adam's bias correction makes its steps about lr from the first one, whatever the
# gradient's size. RMSprop has no bias correction: its running mean of g² starts at 0, so its
# first step is lr/sqrt(1 − α) = 10·lr and it settles towards lr only over a few hundred steps;
# a small lr keeps that first jump small. AdaGrad's steps shrink like lr/sqrt(t) as squared
# gradients pile up, so it starts large. `constant_gradient_steps` prints all five.
OPTIMIZER_LRS = {"sgd": 0.1, "momentum": 0.01, "adam": 0.05, "adagrad": 0.5, "rmsprop": 0.01}
STEP_TABLE_STEPS = (1, 2, 3, 10, 100)  # which of the constant-gradient steps the table shows
VAL_FRACTION = 0.2  # share of the rows held out for validation
LANDSCAPE_SAMPLES = 200  # rows in the one-feature problem drawn as a loss landscape
LANDSCAPE_SHIFT = 1.5  # added to its feature: an uncentred feature couples w and b into a long, tilted valley
LANDSCAPE_START = (3.0, 1.5)  # (w, b) every path starts from, across the valley from its bottom
LANDSCAPE_MARGIN = 0.7  # the drawn (w, b) window extends this far past every visited point
REACHED_DISTANCE = 0.01  # a path that ends this close to the least-squares (w, b) has reached the bottom


def _fmt_vector(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in t.tolist()) + "]"


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python linear_regression_torch.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them (the data-parallel ranks import it).

# %%
if __name__ == "__main__":
    ctx = start_lesson("linear_regression_torch")
    cfg = ctx.config(FULL, QUICK)


# %% [markdown]
# ## The problem and its exact answer
#
# y = X w_true + b_true + noise·ε. Least squares has a closed form: append a column of ones to
# X for the bias and solve with `torch.linalg.lstsq` (QR-based, stable; never invert XᵀX).
# Every iterative solver below is measured against this answer, not against w_true: with noise,
# the best achievable weights differ slightly from the ones that generated the data.

# %%
def make_regression_data(n_samples: int, n_features: int, noise: float = 0.5, seed: int = 0):
    """(X, y, w_true, b_true) as float32 tensors; X is drawn standard normal (mean 0, std 1 in expectation)."""
    if n_samples < 1 or n_features < 1:
        raise ValueError(f"n_samples={n_samples} and n_features={n_features} must be positive")
    if noise < 0:
        raise ValueError(f"noise={noise} must be non-negative")
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, n_features, generator=gen)  # (n, f)
    w_true = torch.randn(n_features, generator=gen)  # (f,)
    b_true = torch.randn((), generator=gen)  # scalar
    y = X @ w_true + b_true + noise * torch.randn(n_samples, generator=gen)  # (n,)
    return X, y, w_true, b_true


def _as_tensor(data, dtype=torch.float32) -> torch.Tensor:
    return data.to(dtype) if torch.is_tensor(data) else torch.as_tensor(np.asarray(data), dtype=dtype)


def _check_xy(X: torch.Tensor, y: torch.Tensor) -> None:
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {tuple(y.shape)}")


def _with_ones(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)  # (n, f) -> (n, f + 1)


def closed_form(X, y) -> tuple[torch.Tensor, float]:
    """Least-squares (w, b) from torch.linalg.lstsq on [X, 1], computed and returned in float64."""
    X, y = _as_tensor(X, torch.float64), _as_tensor(y, torch.float64)
    _check_xy(X, y)
    solution = torch.linalg.lstsq(_with_ones(X), y.unsqueeze(1)).solution.squeeze(1)  # (f + 1,)
    return solution[:-1], solution[-1].item()


def max_stable_lr(X) -> float:
    """2/λ_max of the MSE's Hessian 2AᵀA/n, A = [X, 1]: full-batch gradient descent diverges above it."""
    A = _with_ones(_as_tensor(X, torch.float64))
    return 2.0 / torch.linalg.eigvalsh(2.0 * A.T @ A / len(A)).max().item()


def train_val_split(X: torch.Tensor, y: torch.Tensor, val_fraction: float, generator: torch.Generator | None = None):
    """Shuffle once and hold out `val_fraction` of the rows: (X_train, X_val, y_train, y_val)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1")
    order = torch.randperm(len(X), generator=generator)
    n_val = max(1, round(val_fraction * len(X)))
    val, train = order[:n_val], order[n_val:]
    return X[train], X[val], y[train], y[val]


def mse(X, y, w: torch.Tensor, b: float) -> float:
    """Mean squared error of (w, b), evaluated in float64 whatever the precision of the inputs."""
    X, y = _as_tensor(X, torch.float64), _as_tensor(y, torch.float64)
    return ((X @ w.double() + b - y) ** 2).mean().item()


def predict(X, w: torch.Tensor, b: float) -> torch.Tensor:
    return _as_tensor(X) @ w.float() + b  # (n, f) @ (f,) -> (n,)


def print_problem(X, noise: float, truth: tuple[torch.Tensor, float], exact: tuple[torch.Tensor, float],
                  closed_mse: float, stable_lr: float) -> None:
    print_pairs(f"Data: {len(X)} samples × {X.shape[1]} features, noise std {noise}", {
        "true weights": f"{_fmt_vector(truth[0])}  bias {truth[1]:.4f}",
        "closed form lstsq": f"{_fmt_vector(exact[0])}  bias {exact[1]:.4f}  MSE {closed_mse:.6f}",
        "gradient descent is stable for": f"lr < 2/λ_max = {stable_lr:.3f}",
    })


# %%
if __name__ == "__main__":
    X, y, w_true, b_true = make_regression_data(cfg.n_samples, cfg.n_features, cfg.noise, ctx.seed)
    w_exact, b_exact = closed_form(X, y)
    closed_mse = mse(X, y, w_exact, b_exact)
    print_problem(X, cfg.noise, (w_true, b_true.item()), (w_exact, b_exact), closed_mse, max_stable_lr(X))


# %% [markdown]
# ## Standardise with the training split's statistics
#
# Gradient descent wants features on one scale (the stable lr depends on it). The mean and
# standard deviation come from the training rows only: computing them on all rows would let the
# validation set leak into training. The validation rows are transformed with the same numbers.

# %%
def fit_standardizer(X_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature (mean, std) of the training rows; std is the population one (divides by n)."""
    if len(X_train) < 2:
        raise ValueError(f"X_train has {len(X_train)} rows; standardising needs at least 2")
    return X_train.mean(0), X_train.std(0, correction=0)  # (f,), (f,)


def standardize(X: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (X - mean) / std  # (n, f), broadcast over rows


def standardized_truth(w_true: torch.Tensor, b_true: float, mean: torch.Tensor, std: torch.Tensor):
    """(w, b) on standardised features that give the same predictions as (w_true, b_true) on raw ones."""
    return w_true * std, b_true + (mean * w_true).sum().item()


def validation_noise(X_val, y_val, w_true: torch.Tensor, b_true: float, noise: float) -> dict[str, float]:
    """The validation rows' own noise: its mean square, the expected value noise², and its standard error.

    The mean of n squared N(0, σ²) draws has expectation σ² and standard deviation σ²·sqrt(2/n).
    """
    X_val, y_val = _as_tensor(X_val, torch.float64), _as_tensor(y_val, torch.float64)
    residual = y_val - X_val @ w_true.double() - b_true  # exactly the noise that was added, (n_val,)
    return {"mean_square": (residual**2).mean().item(), "expected": noise**2,
            "standard_error": noise**2 * math.sqrt(2 / len(y_val))}


# %% [markdown]
# ## One result type for every solver
#
# Every solver below returns the same `FitResult`: final weights and bias, and the loss per
# epoch. That is what lets the tables and figures compare NumPy, manual PyTorch and `nn.Module`
# line by line. A loss that stops being finite raises `FloatingPointError` with the fix to try.

# %%
@dataclass
class FitResult:
    weights: torch.Tensor  # (n_features,) on the CPU
    bias: float
    losses: list[float]  # training MSE at the start of each epoch (before that epoch's step)
    val_losses: list[float] = field(default_factory=list)  # validation MSE per epoch, when given
    weight_history: list[list[float]] = field(default_factory=list)  # per epoch, when recorded


def _check_finite(loss: float, epoch: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training diverged: loss became {loss} at epoch {epoch} with learning rate {lr}; lower the learning rate"
        )


def fit_summary(fit: FitResult, w_exact: torch.Tensor, closed_mse: float) -> dict[str, float]:
    """How far a fit got: its first and last training MSE, the optimum's, and its largest weight error."""
    return {"epochs": len(fit.losses), "first_mse": fit.losses[0], "last_mse": fit.losses[-1],
            "closed_mse": closed_mse, "max_weight_error": (fit.weights.double() - w_exact).abs().max().item()}


# %% [markdown]
# ## Solver 1: NumPy with the gradient derived by hand
#
# L(w, b) = (1/n) Σᵢ (xᵢ·w + b − yᵢ)². With residuals r = Xw + b − y:
#   ∂L/∂w = (2/n) Xᵀ r      ∂L/∂b = (2/n) Σᵢ rᵢ
# Every step needs this derivation, and a new model would need a new one. That is what
# autograd removes.

# %%
def numpy_gradients(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
    """(∂L/∂w, ∂L/∂b, L) for the mean squared error, derived by hand."""
    residual = X @ w + b - y  # (n,)
    n = len(y)
    return 2.0 / n * (X.T @ residual), 2.0 / n * residual.sum(), float((residual**2).mean())


def fit_numpy(X, y, lr: float, epochs: int) -> FitResult:
    """Full-batch gradient descent in float32 NumPy from zero weights."""
    X = np.asarray(X.numpy() if torch.is_tensor(X) else X, dtype=np.float32)
    y = np.asarray(y.numpy() if torch.is_tensor(y) else y, dtype=np.float32)
    _check_xy(torch.from_numpy(X), torch.from_numpy(y))
    w, b = np.zeros(X.shape[1], dtype=np.float32), np.float32(0.0)
    losses = []
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below, not warned about
        for epoch in range(epochs):
            grad_w, grad_b, loss = numpy_gradients(X, y, w, b)
            _check_finite(loss, epoch, lr)
            losses.append(loss)
            w = w - np.float32(lr) * grad_w
            b = b - np.float32(lr) * grad_b
    return FitResult(torch.from_numpy(w.copy()), float(b), losses)


def print_fit(title: str, summary: dict[str, float]) -> None:
    print_pairs(title, {
        "training MSE, first → last epoch": f"{summary['first_mse']:.5f} → {summary['last_mse']:.6f}",
        "closed-form MSE (the optimum)": f"{summary['closed_mse']:.6f}",
        "max |w − w_lstsq|": f"{summary['max_weight_error']:.1e}",
    })


# %%
if __name__ == "__main__":
    numpy_fit = fit_numpy(X, y, cfg.lr, cfg.epochs)
    print_fit(f"Solver 1, NumPy: {cfg.epochs} epochs from zero weights, lr {cfg.lr}",
              fit_summary(numpy_fit, w_exact, closed_mse))


# %% [markdown]
# ## Solver 2: PyTorch tensors and autograd, no nn
#
# The same loop, but `loss.backward()` derives the gradient. The update must happen under
# `torch.no_grad()` (it is not part of the model), and the gradients must be cleared, or the
# next backward adds to them.

# %%
def fit_manual(X, y, lr: float, epochs: int, device: torch.device | str = "cpu") -> FitResult:
    device = as_device(device)
    X, y = _as_tensor(X).to(device), _as_tensor(y).to(device)
    _check_xy(X, y)
    w = torch.zeros(X.shape[1], device=device, requires_grad=True)
    b = torch.zeros((), device=device, requires_grad=True)
    losses = []
    for epoch in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())  # .item() also waits for the GPU, so a timing of the loop is honest
        _check_finite(losses[-1], epoch, lr)
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = None
        b.grad = None
    return FitResult(w.detach().cpu(), b.item(), losses)


# %%
if __name__ == "__main__":
    manual_fit = fit_manual(X, y, cfg.lr, cfg.epochs, ctx.device)
    print_fit(f"Solver 2, autograd by hand on {ctx.device.type}: {cfg.epochs} epochs from zero weights, lr {cfg.lr}",
              fit_summary(manual_fit, w_exact, closed_mse))


# %% [markdown]
# ## Solver 3: nn.Module + torch.optim
#
# `nn.Linear` holds the parameters, `nn.MSELoss` the loss, an optimizer the update rule. Swapping
# SGD for Adam is one string. The initial weights are drawn from a generator seeded with `seed`,
# with nn.Linear's own default distribution (uniform in ±1/sqrt(n_features)), so every optimizer
# starts from the same point and the global random state is neither used nor changed.
#
# The cell below trains five optimizers this way, each with a learning rate chosen for it
# (`OPTIMIZER_LRS`; the next section shows why they must differ). It is full-batch gradient
# descent on a convex quadratic: the table compares update rules, not how they rank on
# mini-batches of a deep net, where noise and non-convexity change the picture. "sgd" here is
# plain gradient descent, since every step sees all the rows.

# %%
class LinearRegression(nn.Module):
    def __init__(self, n_features: int, device: torch.device | str | None = None):
        super().__init__()
        self.linear = nn.Linear(n_features, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (batch, f) -> (batch,)


def make_model(n_features: int, seed: int = 0) -> LinearRegression:
    """nn.Linear(n_features, 1) with its default init bound 1/sqrt(fan_in), drawn from a seeded generator."""
    model = LinearRegression(n_features, device="meta").to_empty(device="cpu")  # allocated, not yet initialised
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(n_features)
    with torch.no_grad():
        for param in (model.linear.weight, model.linear.bias):
            param.uniform_(-bound, bound, generator=generator)
    return model


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    factories = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr),
        "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM),
        "adam": lambda: torch.optim.Adam(params, lr=lr),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, alpha=RMSPROP_ALPHA),
    }
    if name not in factories:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(factories)}")
    return factories[name]()


def fit_module(
    X, y, optimizer: str = "sgd", lr: float = 0.05, epochs: int = 1_000, device: torch.device | str = "cpu",
    seed: int = 0, X_val=None, y_val=None, record_weights: bool = False,
) -> FitResult:
    """Train nn.Linear with the named optimizer; optional validation set and weight log."""
    device = as_device(device)
    X, y = _as_tensor(X).to(device), _as_tensor(y).to(device)
    _check_xy(X, y)
    model = make_model(X.shape[1], seed).to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loss_fn = nn.MSELoss()
    has_val = X_val is not None
    if has_val:
        X_val, y_val = _as_tensor(X_val).to(device), _as_tensor(y_val).to(device)
    result = FitResult(torch.empty(0), 0.0, [])
    for epoch in range(epochs):
        if record_weights:
            result.weight_history.append(model.linear.weight.detach().squeeze(0).tolist())
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        result.losses.append(loss.item())
        _check_finite(result.losses[-1], epoch, lr)
        if has_val:
            with torch.no_grad():
                result.val_losses.append(loss_fn(model(X_val), y_val).item())
        opt.step()
    result.weights = model.linear.weight.detach().squeeze(0).cpu()
    result.bias = model.linear.bias.item()
    return result


def compare_optimizers(X, y, epochs: int, device: torch.device | str = "cpu", seed: int = 0,
                       lrs: dict[str, float] | None = None) -> dict[str, FitResult]:
    """The fit of each optimizer from the same initial weights, each with its own lr."""
    lrs = lrs or OPTIMIZER_LRS
    return {name: fit_module(X, y, name, lrs[name], epochs, device, seed) for name in OPTIMIZER_NAMES}


def epochs_to_reach(losses: list[float], target: float) -> int | str:
    """First epoch whose loss is at or below `target`, or "never"."""
    return next((epoch for epoch, loss in enumerate(losses) if loss <= target), "never")


def optimizer_summary(fits: dict[str, FitResult], X, y, closed_mse: float, tolerance: float = 1e-3,
                      lrs: dict[str, float] | None = None) -> list[dict[str, object]]:
    """One row per optimizer: lr, initial and final MSE, excess over the optimum, epochs to get within `tolerance`.

    The final MSE is that of the float32 weights after the last step, evaluated in float64 like
    the optimum, so the excess is never negative (in float32 the loss itself rounds by ~1e-7·MSE).
    """
    lrs = lrs or OPTIMIZER_LRS
    rows = []
    for name, fit in fits.items():
        final = mse(X, y, fit.weights, fit.bias)
        rows.append({"optimizer": name, "lr": lrs[name], "initial_mse": fit.losses[0], "final_mse": final,
                     "excess": final - closed_mse, "epochs": epochs_to_reach(fit.losses, closed_mse + tolerance)})
    return rows


def print_optimizers(rows, epochs: int, closed_mse: float) -> None:
    print_table(f"Five optimizers, {epochs} epochs from the same initial weights (closed-form MSE {closed_mse:.6f})",
                ["optimizer", "lr", "initial MSE", "final MSE", "final − optimum", "epochs to within 1e-3"],
                [[r["optimizer"], r["lr"], f"{r['initial_mse']:.4f}", f"{r['final_mse']:.6f}", f"{r['excess']:.1e}",
                  r["epochs"]] for r in rows])
    print("(final MSE: the float32 weights after the last step, evaluated in float64 like the optimum)")


# %%
if __name__ == "__main__":
    optimizer_fits = compare_optimizers(X, y, cfg.optimizer_epochs, ctx.device, ctx.seed)
    print_optimizers(optimizer_summary(optimizer_fits, X, y, closed_mse), cfg.optimizer_epochs, closed_mse)


# %% [markdown]
# ## How far each optimizer steps
#
# Feed each optimizer the same gradient, g = 1, at every step and watch how far it moves. SGD
# moves lr·g. Momentum's velocity builds up to g/(1 − β), so its steps grow to 10× SGD's.
# AdaGrad divides by the root of the *sum* of squared gradients: lr/sqrt(t). Adam and RMSprop
# divide by the root of a running *mean* of g² that starts at 0: with decay α, after t steps it
# is only (1 − αᵗ)·g², too small, so the division overshoots. Adam corrects for it (bias
# correction: its running means of g and g² are divided by 1 − β₁ᵗ and 1 − β₂ᵗ) and moves lr
# from the first step. RMSprop (α = 0.99) does not: its first step is lr/sqrt(1 − α) = 10·lr,
# and its steps shrink to lr only as αᵗ → 0, over a few hundred steps.

# %%
def constant_gradient_steps(steps: int, gradient: float = 1.0, lrs: dict[str, float] | None = None
                            ) -> dict[str, list[float]]:
    """|Δp| of each torch.optim optimizer's first `steps` updates of one float64 parameter whose gradient is fixed."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    lrs = lrs or OPTIMIZER_LRS
    sizes = {}
    for name in OPTIMIZER_NAMES:
        param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = make_optimizer(name, [param], lrs[name])
        positions = [0.0]
        for _ in range(steps):
            param.grad = torch.full_like(param, gradient)
            opt.step()
            positions.append(param.item())
        sizes[name] = np.abs(np.diff(positions)).tolist()
    return sizes


def print_step_lengths(steps: dict[str, list[float]]) -> None:
    print_table("Step length ÷ lr under a constant gradient g = 1 (torch.optim, float64)",
                ["optimizer", "lr", *(f"step {t}" for t in STEP_TABLE_STEPS)],
                [[name, OPTIMIZER_LRS[name], *(f"{sizes[t - 1] / OPTIMIZER_LRS[name]:.3f}" for t in STEP_TABLE_STEPS)]
                 for name, sizes in steps.items()])


# %%
if __name__ == "__main__":
    print_step_lengths(constant_gradient_steps(max(STEP_TABLE_STEPS)))


# %% [markdown]
# ## A custom optimizer
#
# An optimizer is a loop over parameter groups that updates `p` from `p.grad` in place, under
# no_grad. Plain SGD is two lines; `torch.optim.SGD` adds momentum, weight decay, Nesterov and
# fused multi-tensor kernels, and for plain SGD computes exactly the same numbers.

# %%
class PlainSGD(torch.optim.Optimizer):
    """p ← p − lr · ∂L/∂p, written out."""

    def __init__(self, params, lr: float):
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


def custom_vs_builtin_sgd(X, y, lr: float, epochs: int, seed: int = 0) -> list[float]:
    """Max |weight difference| between PlainSGD and torch.optim.SGD after every step."""
    X, y = _as_tensor(X), _as_tensor(y)
    models = [make_model(X.shape[1], seed), make_model(X.shape[1], seed)]
    optimizers = [PlainSGD(models[0].parameters(), lr), torch.optim.SGD(models[1].parameters(), lr=lr)]
    differences = []
    for _ in range(epochs):
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            nn.functional.mse_loss(model(X), y).backward()
            opt.step()
        differences.append(max((p - q).abs().max().item()
                               for p, q in zip(models[0].parameters(), models[1].parameters())))
    return differences


def divergence_message(X, y, lr: float, epochs: int) -> str:
    """The FloatingPointError a too-large learning rate raises, as text ("" if it does not diverge)."""
    try:
        fit_manual(X, y, lr, epochs)
    except FloatingPointError as err:
        return str(err)
    return ""


def print_custom_optimizer(differences: list[float], divergence: str) -> None:
    print_pairs("A custom optimizer, and a learning rate that is far too large", {
        f"PlainSGD vs torch.optim.SGD, {len(differences)} steps": f"max |weight difference| {max(differences):.1e}",
        "a far too large lr": f"FloatingPointError: {divergence}",
    })


# %%
if __name__ == "__main__":
    print_custom_optimizer(custom_vs_builtin_sgd(X, y, cfg.lr, 50, ctx.seed), divergence_message(X, y, 5.0, 100))


# %% [markdown]
# ## Validation: held-out rows and the noise floor
#
# Fit on 80% of the rows, standardised with the training statistics, and measure the MSE on the
# other 20%. The noise variance noise² = 0.25 is the *expected* MSE of the true weights, an
# average over all possible samples. A finite validation set has its own noise, whose mean
# square scatters around 0.25 by about noise²·sqrt(2/n_val) (0.025 for 200 rows). So a
# validation MSE below 0.25 is no miracle: compare it with the mean square of the noise that
# was actually drawn for those rows, which `validation_noise` recovers from w_true and b_true.

# %%
def validation_experiment(X, y, w_true, b_true, noise: float, lr: float, epochs: int, seed: int,
                          generator: torch.Generator, device: torch.device | str = "cpu") -> dict[str, object]:
    """Split, standardise with training statistics, fit with SGD; the fit, predictions and the validation noise."""
    X_train, X_val, y_train, y_val = train_val_split(X, y, VAL_FRACTION, generator)
    mean, std = fit_standardizer(X_train)
    fit = fit_module(standardize(X_train, mean, std), y_train, "sgd", lr, epochs, device, seed,
                     standardize(X_val, mean, std), y_val, record_weights=True)
    return {"fit": fit, "lr": lr, "n_train": len(y_train), "n_val": len(y_val), "y_val": y_val,
            "y_pred": predict(standardize(X_val, mean, std), fit.weights, fit.bias),
            "truth": standardized_truth(w_true, b_true.item(), mean, std),
            "noise": validation_noise(X_val, y_val, w_true, b_true.item(), noise)}


def print_validation(validation) -> None:
    fit, sample = validation["fit"], validation["noise"]
    print_pairs(f"Train/validation split {validation['n_train']}/{validation['n_val']} rows, standardised with the "
                "training statistics", {
                    "final MSE": f"train {fit.losses[-1]:.5f}, validation {fit.val_losses[-1]:.5f}",
                    "noise floor": f"noise² = {sample['expected']:.2f} on average over samples, "
                                   f"± {sample['standard_error']:.3f} for {validation['n_val']} rows",
                    "these rows' own noise": f"mean square {sample['mean_square']:.5f}",
                })


# %%
if __name__ == "__main__":
    validation = validation_experiment(X, y, w_true, b_true, cfg.noise, cfg.lr, cfg.epochs, ctx.seed, ctx.generator,
                                       ctx.device)
    print_validation(validation)


# %% [markdown]
# ## Timing: what each layer of abstraction costs
#
# On a tiny problem the time per epoch is overhead: Python, op dispatch, autograd bookkeeping.
# NumPy has the least. The table times a whole fit with each of the three solvers above.

# %%
def time_implementations(X, y, lr: float, epochs: int, devices, min_run_time: float) -> list[dict[str, object]]:
    """Median wall time of a whole `epochs`-epoch fit (and that over `epochs`) per implementation and device."""
    w_exact, b_exact = closed_form(X, y)
    runs = [("NumPy", "cpu", lambda: fit_numpy(X, y, lr, epochs))]
    for device in devices:
        runs.append(("PyTorch manual", device.type, lambda d=device: fit_manual(X, y, lr, epochs, d)))
        runs.append(("PyTorch nn.Module + SGD", device.type, lambda d=device: fit_module(X, y, "sgd", lr, epochs, d)))
    rows = []
    for name, device_name, fit in runs:
        kept = {}  # the timed runs are deterministic: keep one's result instead of fitting once more

        def fit_and_keep(fit=fit, kept=kept):
            kept["result"] = fit()

        seconds = time_median(fit_and_keep, device_name, min_run_time)
        result = kept["result"]
        rows.append({"implementation": name, "device": device_name, "seconds": seconds,
                     "per_epoch": seconds / epochs, "final_mse": result.losses[-1],
                     "max_weight_error": (result.weights - w_exact).abs().max().item(),
                     "losses": result.losses})
    return rows


def print_implementations(rows, n_samples: int, epochs: int, lr: float) -> None:
    print_table(f"{n_samples} samples, {epochs} epochs of gradient descent (lr {lr}); time = median of Timer runs",
                ["implementation", "device", "time", "per epoch", "final MSE", "max |w − w_lstsq|"],
                [[r["implementation"], r["device"], fmt_seconds(r["seconds"]), fmt_seconds(r["per_epoch"]),
                  f"{r['final_mse']:.5f}", f"{r['max_weight_error']:.1e}"] for r in rows])


# %%
if __name__ == "__main__":
    devices = [torch.device("cpu")] + ([ctx.device] if ctx.device.type != "cpu" else [])
    implementations = time_implementations(X, y, cfg.lr, cfg.epochs, devices, cfg.min_run_time)
    print_implementations(implementations, cfg.n_samples, cfg.epochs, cfg.lr)


# %% [markdown]
# ### Scaling with the data
#
# Each torch operation costs a fixed overhead on top of its arithmetic, so at small sizes the
# overhead sets the time. This sweep times one gradient step at each size, NumPy against torch.
# Look for the ratio moving as the rows grow and the arithmetic takes over; whether torch ever
# catches up depends on the CPU and its libraries: autograd also keeps intermediates (the
# residual, its square, their gradients) that a hand-derived gradient skips, and a problem this
# simple is limited by memory traffic, which pays for every extra pass.

# %%
def scaling_sweep(sizes, n_features: int, devices, min_run_time: float, seed: int = 0) -> list[dict[str, object]]:
    """Median seconds for one full-batch gradient step at each data size, NumPy vs torch autograd."""
    rows = []
    for n in sizes:
        X, y, _, _ = make_regression_data(n, n_features, 0.5, seed)
        X_np, y_np = X.numpy(), y.numpy()
        w_np = np.zeros(n_features, dtype=np.float32)
        numpy_step = partial(numpy_gradients, X_np, y_np, w_np, 0.0)
        rows.append({"n": n, "backend": "numpy", "seconds": time_median(numpy_step, "cpu", min_run_time)})
        for device in devices:
            Xd, yd = X.to(device), y.to(device)
            w = torch.zeros(n_features, device=device, requires_grad=True)

            def torch_step(Xd=Xd, yd=yd, w=w):
                ((Xd @ w - yd) ** 2).mean().backward()
                w.grad = None

            rows.append({"n": n, "backend": f"torch {device.type}",
                         "seconds": time_median(torch_step, device, min_run_time)})
    return rows


def print_scaling(rows) -> None:
    numpy_time = {r["n"]: r["seconds"] for r in rows if r["backend"] == "numpy"}
    print_table("Time per epoch (one forward + gradient) vs samples",
                ["samples", "backend", "per epoch", "NumPy / this"],
                [[r["n"], r["backend"], fmt_seconds(r["seconds"]), f"{numpy_time[r['n']] / r['seconds']:.2f}×"]
                 for r in rows])


def plot_scaling(rows):
    fig, axes = new_figure(1, 2, "NumPy vs PyTorch: one gradient step as the data grows")
    ax_time, ax_ratio = axes.flat
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    sizes = sorted({r["n"] for r in rows})
    per = {b: {r["n"]: r["seconds"] for r in rows if r["backend"] == b} for b in backends}
    for backend in backends:
        label = "NumPy, hand-derived gradient" if backend == "numpy" else f"{backend}, autograd"
        ax_time.plot(sizes, [per[backend][n] * 1e3 for n in sizes], "o-", label=label)
    ax_time.set(xscale="log", yscale="log", title="Median time per epoch (forward + gradient)",
                xlabel="number of samples (log)", ylabel="time per epoch (ms, log)")
    ax_time.legend()
    for backend in backends[1:]:
        ax_ratio.plot(sizes, [per["numpy"][n] / per[backend][n] for n in sizes], "o-", label=f"{backend}")
    ax_ratio.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax_ratio.set(xscale="log", yscale="log", title="Speed relative to NumPy (above 1: PyTorch faster)",
                 xlabel="number of samples (log)", ylabel="NumPy time / PyTorch time (log)")
    ax_ratio.legend()
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
    return fig


# %%
if __name__ == "__main__":
    scaling = scaling_sweep(cfg.scaling_sizes, cfg.n_features, devices, cfg.min_run_time / 3, ctx.seed)
    print_scaling(scaling)
    save_figure(plot_scaling(scaling), "numpy_vs_torch_scaling.png", ctx.plots_dir)


# %% [markdown]
# ## The loss landscape
#
# With one feature the loss is a function of two numbers, (w, b), and can be drawn. MSE is a
# convex bowl with a single bottom, and every optimizer here gets there given enough steps (the
# tests check that all five end within 0.01 of it after 1000 steps), by very different paths. The figure draws fewer
# steps (150 in a full run), and there they have not all arrived: SGD and momentum follow the
# slope, which is steep here, and reach the bottom; AdaGrad, Adam and RMSprop take steps of a
# set length per coordinate however steep the slope (AdaGrad lr/sqrt(t), Adam about lr, RMSprop
# from 10·lr down towards lr), so with their learning rates they are still on the way. With
# seed 0, AdaGrad ends 0.04 from the bottom, Adam 0.08 and RMSprop 0.84; the run prints each
# distance.

# %%
def loss_landscape(X1, y1, w_range, b_range, steps: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MSE on a (w, b) grid for a one-feature problem: (W, B, loss) arrays of shape (steps, steps)."""
    X1, y1 = _as_tensor(X1, torch.float64).reshape(-1), _as_tensor(y1, torch.float64)
    W, B = torch.meshgrid(torch.linspace(*w_range, steps, dtype=torch.float64),
                          torch.linspace(*b_range, steps, dtype=torch.float64), indexing="xy")
    # (steps, steps, 1) against (n,) broadcasts to (steps, steps, n), then the mean over samples.
    loss = ((W.unsqueeze(-1) * X1 + B.unsqueeze(-1) - y1) ** 2).mean(-1)
    return W.numpy(), B.numpy(), loss.numpy()


def landscape_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-feature problem whose feature is shifted off zero, so w and b are coupled."""
    X1, y1, _, _ = make_regression_data(LANDSCAPE_SAMPLES, 1, 0.5, seed)
    return X1 + LANDSCAPE_SHIFT, y1


def landscape_window(paths: dict[str, np.ndarray], margin: float = LANDSCAPE_MARGIN):
    """(w_range, b_range) that frames every visited point with `margin` to spare."""
    visited = np.concatenate(list(paths.values()))  # (points, 2)
    return ((visited[:, 0].min() - margin, visited[:, 0].max() + margin),
            (visited[:, 1].min() - margin, visited[:, 1].max() + margin))


def final_distances(paths: dict[str, np.ndarray], optimum: tuple[float, float]) -> dict[str, float]:
    """Euclidean distance in (w, b) from each path's last point to `optimum`, the least-squares (w, b)."""
    return {name: math.hypot(path[-1, 0] - optimum[0], path[-1, 1] - optimum[1]) for name, path in paths.items()}


def landscape_experiment(seed: int, epochs: int) -> dict[str, object]:
    """Every optimizer's path on the one-feature problem, the optimum, each path's distance left, the loss grid."""
    X1, y1 = landscape_problem(seed)
    paths = optimizer_paths(X1, y1, LANDSCAPE_START, epochs)
    w1, b1 = closed_form(X1, y1)
    optimum = (w1.item(), b1)
    return {"paths": paths, "optimum": optimum, "distances": final_distances(paths, optimum),
            "grid": loss_landscape(X1, y1, *landscape_window(paths))}


def optimizer_paths(X1, y1, start: tuple[float, float], epochs: int) -> dict[str, np.ndarray]:
    """(w, b) after every step, per optimizer, from one start point; arrays of shape (epochs + 1, 2)."""
    paths = {}
    for name in OPTIMIZER_NAMES:
        model = make_model(1)
        with torch.no_grad():
            model.linear.weight.fill_(start[0])
            model.linear.bias.fill_(start[1])
        opt = make_optimizer(name, model.parameters(), OPTIMIZER_LRS[name])
        points = [start]
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.mse_loss(model(X1), y1).backward()
            opt.step()
            points.append((model.linear.weight.item(), model.linear.bias.item()))
        paths[name] = np.array(points)
    return paths


def print_landscape(landscape, epochs: int) -> None:
    print_pairs(f"Loss landscape, {epochs} steps from (w, b) = {LANDSCAPE_START}: distance left to the bottom",
                landscape["distances"], fmt=lambda distance: f"{distance:.2g}")


# %%
if __name__ == "__main__":
    landscape = landscape_experiment(ctx.seed, cfg.landscape_epochs)
    print_landscape(landscape, cfg.landscape_epochs)


# %% [markdown]
# ## Data-parallel training with DistributedDataParallel
#
# Each process (rank) holds a full copy of the model and a shard of the data. After backward,
# DDP averages the gradients across ranks with an all-reduce, so every replica takes the same
# step. For that step to equal the full-batch step, each rank's loss is its *sum* of squared
# errors over its real rows divided by the global row count, times world_size (DDP divides by
# it); `DistributedSampler` pads uneven shards with repeated rows, which are left out.
#
# `train_ddp` starts the ranks with `torch.multiprocessing.start_processes(..., start_method="spawn")`.
# Forking this process instead is unsafe: its thread pool has already run, and a fork can copy a
# lock some other thread holds, which deadlocks the child. With spawn each rank is a fresh
# interpreter that imports torch and this script afresh, a few seconds here, which is why DDP
# pays off only for work much larger than this. The ranks meet at a free port on 127.0.0.1, the
# process group has a timeout, the parent kills every rank if one fails or the run outlives
# `timeout_s`, and rank 0 hands its result back through a file.
#
# On GPUs the changes are small: backend "nccl", one process per GPU, `model.to(rank)` and
# `DDP(model, device_ids=[rank])`. Under `torchrun`, which starts the processes itself, each rank
# reads its rank and world size from the environment and joins with `init_method="env://"`.

# %%
def _free_port() -> int:
    """A TCP port that is free now: binding to port 0 lets the OS pick one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_train_rank(rank: int, world_size: int, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                   seed: int, init_method: str, timeout_s: float = DDP_TIMEOUT_S) -> FitResult | None:
    """One rank's training loop, joining the group at `init_method`; rank 0 returns the fit."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)  # one thread per process: the processes already share the cores
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        n = len(X)
        ddp_model = DistributedDataParallel(make_model(X.shape[1], seed))
        opt = torch.optim.SGD(ddp_model.parameters(), lr=lr)  # the same optimizer as fit_module's "sgd"
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        # The sampler lists positions rank, rank + W, ...; those at or past n are padding repeats.
        n_real = len(range(rank, n, world_size))
        losses = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            shard = torch.tensor(list(sampler)[:n_real], dtype=torch.long)
            squared_error_sum = ((ddp_model(X[shard]) - y[shard]) ** 2).sum()
            opt.zero_grad()
            (squared_error_sum * world_size / n).backward()  # DDP averages: this yields the full-batch gradient
            opt.step()
            total = squared_error_sum.detach().clone()
            dist.all_reduce(total)  # the global MSE, for the loss curve
            losses.append(total.item() / n)
            _check_finite(losses[-1], epoch, lr)
        module = ddp_model.module
        result = FitResult(module.linear.weight.detach().squeeze(0).clone(), module.linear.bias.item(), losses)
        del ddp_model, module, opt  # drop DDP before tearing the group down (a live DDP can hang shutdown)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


def _ddp_worker(rank, world_size, X, y, epochs, lr, seed, port, result_path, timeout_s) -> None:
    """What each spawned rank runs: the training loop, then rank 0 saves its fit for the parent."""
    result = ddp_train_rank(rank, world_size, torch.from_numpy(X), torch.from_numpy(y), epochs, lr, seed,
                            f"tcp://127.0.0.1:{port}", timeout_s)
    if result is not None:
        torch.save(vars(result), result_path)


def train_ddp(X, y, world_size: int = 2, epochs: int = 100, lr: float = 0.05, seed: int = 0,
              timeout_s: float = DDP_TIMEOUT_S) -> FitResult:
    """Full-batch SGD with DDP on `world_size` spawned CPU processes; rank 0's fit, as fit_module returns it.

    Every rank is killed if one fails (its FloatingPointError is raised again here, any other error as
    a RuntimeError) or if the run takes longer than `timeout_s` (TimeoutError).
    """
    X, y = _as_tensor(X), _as_tensor(y)
    _check_xy(X, y)
    if not 1 <= world_size <= len(X):
        raise ValueError(f"world_size={world_size} must be between 1 and the number of rows ({len(X)})")
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be at least 1")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be positive")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s} must be positive")
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "rank0.pt"
        # NumPy arrays travel to the ranks pickled by value; tensors would need shared memory.
        args = (world_size, X.numpy(), y.numpy(), epochs, lr, seed, _free_port(), str(result_path), timeout_s)
        share_notebook_with_workers("linear_regression_torch")  # in a notebook, the ranks import this script
        ranks = mp.start_processes(_ddp_worker, args, nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            # join() is True once every rank has exited cleanly; if one failed, it stops the rest and raises.
            while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"DDP training did not finish within timeout_s={timeout_s:g} s; "
                                       "every rank was killed")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            last_line = str(err).strip().splitlines()[-1]  # a rank's traceback ends "SomeError: message"
            if last_line.startswith("FloatingPointError: "):
                raise FloatingPointError(last_line.removeprefix("FloatingPointError: ")) from None
            raise RuntimeError(f"DDP rank {err.error_index} failed: {last_line}") from None
        finally:
            for process in ranks.processes:  # a no-op for ranks that have exited
                process.kill()
                process.join()
        return FitResult(**torch.load(result_path, weights_only=True))


def max_parameter_difference(a: FitResult, b: FitResult) -> float:
    return max((a.weights - b.weights).abs().max().item(), abs(a.bias - b.bias))


def print_ddp_check(world_size: int, ddp: FitResult, single: FitResult, difference: float) -> None:
    print_table(f"DDP on {world_size} CPU processes vs single-process nn.Module + SGD ({len(single.losses)} epochs)",
                ["run", "weights", "bias", "final MSE"],
                [[f"DDP ({world_size} ranks)", _fmt_vector(ddp.weights), f"{ddp.bias:.6f}", f"{ddp.losses[-1]:.6f}"],
                 ["single process", _fmt_vector(single.weights), f"{single.bias:.6f}", f"{single.losses[-1]:.6f}"]])
    print(f"max |difference| of parameters: {difference:.2e}  (anything non-zero is float32 rounding: the ranks "
          "sum in another order)")


# %%
if __name__ == "__main__":
    ddp_fit = train_ddp(X, y, cfg.ddp_world_size, cfg.ddp_epochs, cfg.lr, ctx.seed)
    single_fit = fit_module(X, y, "sgd", cfg.lr, cfg.ddp_epochs, "cpu", ctx.seed)
    print_ddp_check(cfg.ddp_world_size, ddp_fit, single_fit, max_parameter_difference(ddp_fit, single_fit))


# %% [markdown]
# ## Summary figure
#
# One picture of the sections above: the solvers' convergence and times, the five optimizers,
# the validation fit and every optimizer's path on the loss landscape. The plot functions draw
# what the sections returned; they compute nothing, so the figure cannot disagree with the tables.

# %%
def plot_comparison(implementations, optimizer_fits, closed_mse, validation, landscape):
    """Top row: solvers, optimizers, timing, validation, weights; bottom row: each optimizer's path on the landscape."""
    n_paths = len(landscape["paths"])
    fig, axes = new_figure(2, n_paths, "Linear regression: implementations, optimizers and the loss landscape",
                           figsize=(4.2 * n_paths, 8.0))
    ax_conv, ax_opt, ax_time, ax_scatter, ax_weights = axes[0]
    _plot_convergence(ax_conv, implementations, closed_mse)
    _plot_optimizer_losses(ax_opt, optimizer_fits, closed_mse)
    _plot_times(ax_time, implementations)
    _plot_validation(ax_scatter, ax_weights, validation)
    for ax in axes[1, 1:]:
        ax.sharex(axes[1, 0])
        ax.sharey(axes[1, 0])
    _plot_landscapes(fig, list(axes[1]), landscape)
    return fig


def _plot_convergence(ax, implementations, closed_mse):
    styles = {"NumPy": ("-", 4), "PyTorch manual": ("--", 2), "PyTorch nn.Module + SGD": ("-", 1.5)}
    for row in implementations:
        if row["device"] == "cpu":
            style, width = styles[row["implementation"]]
            ax.plot(range(1, len(row["losses"]) + 1), row["losses"], style, linewidth=width,
                    label=row["implementation"])
    ax.axhline(closed_mse, color="black", linestyle="--", label="closed form (lstsq)")
    ax.set(xscale="log", yscale="log", title="Gradient descent: NumPy and manual\nstart at 0 and coincide",
           xlabel="epoch (log)", ylabel="training MSE (log)")
    ax.legend(fontsize=8)


def _plot_optimizer_losses(ax, optimizer_fits, closed_mse):
    resolution = FLOAT32_LOSS_RESOLUTION * closed_mse
    for name, fit in optimizer_fits.items():
        excess = np.maximum(np.array(fit.losses) - closed_mse, resolution)  # below this it is float32 rounding
        ax.plot(range(1, len(fit.losses) + 1), excess, label=f"{name} (lr {OPTIMIZER_LRS[name]:g})")
    ax.axhline(resolution, color="grey", linestyle=":", label="float32 resolution")
    ax.set(yscale="log", title="Five optimizers: loss above the optimum", xlabel="epoch",
           ylabel="MSE − closed-form MSE (log)")
    ax.legend(fontsize=8)


def _plot_times(ax, implementations):
    labels = [f"{r['implementation'].replace(' + SGD', '')}\n({r['device']})" for r in implementations]
    bars = ax.bar(range(len(labels)), [r["seconds"] * 1e3 for r in implementations],
                  color=["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"][: len(labels)])
    ax.bar_label(bars, fmt="%.0f ms", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(title=f"Time for {len(implementations[0]['losses'])} epochs (median)", ylabel="time (ms)")


def _plot_validation(ax_scatter, ax_weights, validation):
    y_val, y_pred = validation["y_val"].numpy(), validation["y_pred"].numpy()
    ax_scatter.scatter(y_val, y_pred, s=8, alpha=0.6)
    low, high = float(min(y_val.min(), y_pred.min())), float(max(y_val.max(), y_pred.max()))
    ax_scatter.plot([low, high], [low, high], "k--", label="perfect prediction")
    ax_scatter.set(title=f"Validation set ({validation['n_val']} rows): predicted vs actual", xlabel="actual y",
                   ylabel="predicted y")
    ax_scatter.legend()

    history = np.array(validation["fit"].weight_history)  # (epochs, n_features); row i: weights at epoch i + 1
    for j in range(history.shape[1]):
        line, = ax_weights.plot(range(1, len(history) + 1), history[:, j], label=f"w[{j}]")
        ax_weights.axhline(float(validation["truth"][0][j]), color=line.get_color(), linestyle=":", linewidth=1)
    ax_weights.set(xscale="log", title=f"Weights of the validation fit (SGD, lr {validation['lr']:g})\n"
                   "dotted: true weights, in standardised units",
                   xlabel="epoch (log; epoch 1 shows the initial weights)", ylabel="weight (standardised feature)")
    ax_weights.legend(fontsize=8, ncols=2)


def _plot_landscapes(fig, axes, landscape):
    W, B, loss = landscape["grid"]
    paths, optimum, distances = landscape["paths"], landscape["optimum"], landscape["distances"]
    levels = np.geomspace(loss.min() * 1.05, loss.max(), 14)
    for ax, (name, path) in zip(axes, paths.items()):
        contour = ax.contour(W, B, loss, levels=levels, cmap="viridis", linewidths=0.8)
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:red", marker=".", markersize=3, linewidth=1.2)
        ax.plot(*path[0], "ko", label="start")
        ax.plot(*path[-1], "s", color="tab:red", label=f"after {len(path) - 1} steps")
        ax.plot(*optimum, "*", color="gold", markeredgecolor="black", markersize=12, label="bottom (lstsq)")
        ax.set(title=f"{name} (lr {OPTIMIZER_LRS[name]:g}), {len(path) - 1} steps:\n"
               f"ends {distances[name]:.2g} from the bottom", xlabel="weight w", ylabel="bias b")
        ax.title.set_fontsize(10)
        ax.label_outer()  # one shared bias axis: tick labels on the first panel only
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9)
    fig.colorbar(contour, ax=axes, label="training MSE")


# %%
if __name__ == "__main__":
    save_figure(plot_comparison(implementations, optimizer_fits, closed_mse, validation, landscape),
                "linear_regression_comparison.png", ctx.plots_dir)
