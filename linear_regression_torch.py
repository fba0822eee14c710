"""Linear regression four ways (NumPy, manual autograd, nn.Module + optim, closed form), then with DDP.

Run `python linear_regression_torch.py` (add `--quick` for a smoke run).
One synthetic regression problem is solved with hand-derived NumPy gradients, with PyTorch
autograd by hand, with nn.Module + torch.optim (five optimizers), and exactly with
torch.linalg.lstsq; the same loop then runs data-parallel on several CPU processes with
DistributedDataParallel, accumulating micro-batches under no_sync(). Figures:
plots/numpy_vs_torch_scaling.png, plots/linear_regression_comparison.png.
"""

from __future__ import annotations

import gc
import math
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from lesson_harness import (
    NOISY_MARK,
    TIMING_HEADERS,
    Timing,
    as_device,
    benchmark,
    fmt_seconds,
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
    ddp_accumulation_steps: int = 2  # micro-batches each rank splits its shard into, one all-reduce per step
    timed_epochs: int = 100  # epochs per timed fit: short, so the benchmark repeats it in several blocks
    min_run_time: float = 0.15  # seconds each timing is measured for, at least


FULL = Config()
QUICK = Config(n_samples=200, epochs=100, optimizer_epochs=100, scaling_sizes=(100, 1_000, 10_000),
               landscape_epochs=40, ddp_epochs=10, timed_epochs=10, min_run_time=0.02)
DDP_TIMEOUT_S = 120.0  # a data-parallel run that takes longer than this is stuck: kill it and fail
FINITE_CHECK_EVERY = 100  # epochs between divergence checks in the torch loops: one host-device sync per check
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
#
# The torch loops keep each epoch's loss on the device as a tensor and copy them to Python once,
# at the end. Reading one with `.item()` every epoch would make the CPU wait for the GPU every
# step (a host-device sync), so it could not queue the next step's kernels while the GPU works.
# The divergence check therefore looks at the losses every `FINITE_CHECK_EVERY` epochs, with
# one sync for all of them, and names the first epoch whose loss was not finite: the same
# epoch a check after every step would name. The steps in between compute with inf or NaN and
# are thrown away.

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


def _host_list(tensors: list[torch.Tensor]) -> list:
    """Same-shaped device tensors as (nested) Python floats, in one copy to the host instead of one per tensor."""
    return torch.stack(tensors).tolist() if tensors else []


def _check_finite_losses(losses: list[torch.Tensor], epochs: int, lr: float) -> None:
    """Call after appending each epoch's loss (a 0-d tensor on the device). Every FINITE_CHECK_EVERY epochs, and
    after the last, check the losses since the previous check with one host-device sync, and raise
    `_check_finite`'s error for the first that is not finite."""
    done = len(losses)
    if done % FINITE_CHECK_EVERY and done != epochs:
        return
    first = (done - 1) - (done - 1) % FINITE_CHECK_EVERY  # where this block of epochs starts
    bad = (~torch.isfinite(torch.stack(losses[first:]))).nonzero()  # (k, 1); learning k is the one sync
    if len(bad):
        epoch = first + bad[0, 0].item()
        _check_finite(losses[epoch].item(), epoch, lr)


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
# next backward adds to them. The losses stay tensors until the loop ends (see `FitResult`
# above): only the divergence check, every `FINITE_CHECK_EVERY` epochs, makes the CPU wait for
# the device.

# %%
def fit_manual(X, y, lr: float, epochs: int, device: torch.device | str = "cpu") -> FitResult:
    device = as_device(device)
    X, y = _as_tensor(X).to(device), _as_tensor(y).to(device)
    _check_xy(X, y)
    w = torch.zeros(X.shape[1], device=device, requires_grad=True)
    b = torch.zeros((), device=device, requires_grad=True)
    losses = []  # 0-d tensors on the device: no .item() per epoch, which would wait for the GPU every step
    for _ in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        loss.backward()
        losses.append(loss.detach())
        _check_finite_losses(losses, epochs, lr)  # one sync every FINITE_CHECK_EVERY epochs
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = None
        b.grad = None
    return FitResult(w.detach().cpu(), b.item(), _host_list(losses))


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
    # Everything logged per epoch stays on the device until the end (see `_check_finite_losses`).
    losses, val_losses, weight_history = [], [], []
    for _ in range(epochs):
        if record_weights:
            weight_history.append(model.linear.weight.detach().squeeze(0).clone())  # (f,), before this step
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        losses.append(loss.detach())
        _check_finite_losses(losses, epochs, lr)
        if has_val:
            with torch.no_grad():
                val_losses.append(loss_fn(model(X_val), y_val))
        opt.step()
    return FitResult(model.linear.weight.detach().squeeze(0).cpu(), model.linear.bias.item(), _host_list(losses),
                     _host_list(val_losses), _host_list(weight_history))


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
        positions = [param.detach().clone()]  # (1,) each, kept as tensors: one copy to the host at the end
        for _ in range(steps):
            param.grad = torch.full_like(param, gradient)
            opt.step()
            positions.append(param.detach().clone())
        sizes[name] = torch.cat(positions).diff().abs().tolist()
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
    differences = []  # 0-d tensors, copied to the host once at the end
    for _ in range(epochs):
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            nn.functional.mse_loss(model(X), y).backward()
            opt.step()
        with torch.no_grad():
            differences.append(torch.stack([(p - q).abs().max()
                                            for p, q in zip(models[0].parameters(), models[1].parameters())]).max())
    return _host_list(differences)


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
# The table times a short fit (`timed_epochs`, 100 epochs in a full run) with each of the three
# solvers above and divides by its epochs; every epoch does the same work. `lesson_harness.benchmark`
# times it as `torch.utils.benchmark.Timer` would: it warms up, repeats the fit in blocks and
# synchronizes a GPU before and after each block. The loss columns come from one untimed fit of all the
# epochs. All three run the same full-batch gradient descent (`nn.Module` from nn.Linear's
# random initial weights, the other two from zero), so what separates the rows' times is the
# price of each layer: NumPy's hand-derived gradient; autograd recording the graph and walking
# it backward; then the `nn.Module` call and the optimizer's step on top. Every timing runs on
# one thread, torch's and NumPy's BLAS alike, so the comparison is like for like and other
# programs on the machine disturb it less.
#
# What to look for: "NumPy / this" is NumPy's median over the row's, both from this run; below
# 1, that row took longer per epoch than NumPy. Compare the step from NumPy to the manual loop
# (what autograd costs here) with the step from the manual loop to `nn.Module` + SGD (what the
# module and optimizer add). A gap that is not larger than the rows' IQR is not a difference,
# and a row with the mark is as much noise as signal: run it again before reading anything
# into it. A `--quick` run measures each timing for a few hundredths of a second, so its IQR
# says less than a full run's.

# %%
def _per_epoch(timing: Timing, epochs: int) -> Timing:
    """A whole fit's Timing as the time per epoch: median and IQR divided by the epochs."""
    return Timing(timing.median / epochs, timing.iqr / epochs, timing.threads, timing.noisy)


def _ratio_cell(ratio: float, noisy: bool) -> str:
    """A ratio of two medians, marked when either timing was noisy: a ratio is as noisy as its inputs."""
    return f"{ratio:.2f}×" + (f" {NOISY_MARK}" if noisy else "")


def time_implementations(X, y, lr: float, epochs: int, devices, min_run_time: float,
                         timed_epochs: int) -> list[dict[str, object]]:
    """Per implementation and device: the Timing of a `timed_epochs`-epoch fit and per epoch, NumPy's median over
    this row's (both from this run), and the final loss, weight error and losses of one `epochs`-epoch fit."""
    w_exact, b_exact = closed_form(X, y)
    solvers = [("NumPy", "cpu", lambda n_epochs: fit_numpy(X, y, lr, n_epochs))]
    for device in devices:
        solvers.append(("PyTorch manual", device.type, lambda n_epochs, d=device: fit_manual(X, y, lr, n_epochs, d)))
        solvers.append(("PyTorch nn.Module + SGD", device.type,
                        lambda n_epochs, d=device: fit_module(X, y, "sgd", lr, n_epochs, d)))
    rows = []
    for name, device_name, fit in solvers:
        # Every epoch does the same work, so a short fit gives the time per epoch, repeated in several
        # blocks, where one long fit would fill `min_run_time` alone and leave no spread to report.
        timing = benchmark(partial(fit, timed_epochs), device_name, min_run_time)  # one thread: BENCHMARK_THREADS
        numpy_timing = rows[0]["timing"] if rows else timing  # NumPy runs first
        result = fit(epochs)  # the untimed full-length fit, for the loss columns and the convergence figure
        rows.append({"implementation": name, "device": device_name, "timing": timing,
                     "per_epoch": _per_epoch(timing, timed_epochs), "vs_numpy": numpy_timing.median / timing.median,
                     "vs_numpy_noisy": numpy_timing.noisy or timing.noisy, "final_mse": result.losses[-1],
                     "max_weight_error": (result.weights - w_exact).abs().max().item(), "losses": result.losses})
    return rows


def print_implementations(rows, n_samples: int, epochs: int, lr: float, timed_epochs: int) -> None:
    print_table(f"{n_samples} samples, {epochs} epochs of gradient descent (lr {lr}); per epoch: a fit of "
                f"{timed_epochs} epochs timed whole, / {timed_epochs}",
                ["implementation", "device", *(f"per epoch {h}" for h in TIMING_HEADERS), "NumPy / this",
                 "final MSE", "max |w − w_lstsq|"],
                [[r["implementation"], r["device"], *timing_cells(r["per_epoch"]),
                  _ratio_cell(r["vs_numpy"], r["vs_numpy_noisy"]), f"{r['final_mse']:.5f}",
                  f"{r['max_weight_error']:.1e}"] for r in rows])
    print(timing_note(rows[0]["timing"].threads))


# %%
if __name__ == "__main__":
    devices = [torch.device("cpu")] + ([ctx.device] if ctx.device.type != "cpu" else [])
    implementations = time_implementations(X, y, cfg.lr, cfg.epochs, devices, cfg.min_run_time, cfg.timed_epochs)
    print_implementations(implementations, cfg.n_samples, cfg.epochs, cfg.lr, cfg.timed_epochs)


# %% [markdown]
# ### Scaling with the data
#
# This sweep times one gradient step (forward and gradient, no update) at each number of rows,
# NumPy's hand-derived gradient against torch autograd, on one thread as above. Each torch
# operation costs a fixed overhead on top of its arithmetic; autograd also records the graph and
# builds the gradient in more passes over the data than the hand-derived formula needs, and a
# problem this simple is limited by memory traffic, which pays for every extra pass.
#
# What to look for: the sizes at which the time per epoch hardly changes from one size to the
# next (fixed overhead sets it), and those at which it grows about in proportion to the samples
# (arithmetic and memory traffic set it). Then how "NumPy / this" moves along the sizes (above
# 1, torch was faster at that size). Whether torch ever catches up depends on the CPU, its
# libraries and the thread count: this is one core's view, so measure on yours.

# %%
def scaling_sweep(sizes, n_features: int, devices, min_run_time: float, seed: int = 0) -> list[dict[str, object]]:
    """The Timing of one full-batch gradient step at each data size, NumPy vs torch autograd, and NumPy's median
    over each row's, both from this run."""
    rows = []
    for n in sizes:
        X, y, _, _ = make_regression_data(n, n_features, 0.5, seed)
        X_np, y_np = X.numpy(), y.numpy()
        w_np = np.zeros(n_features, dtype=np.float32)
        numpy_step = partial(numpy_gradients, X_np, y_np, w_np, 0.0)
        numpy_timing = benchmark(numpy_step, "cpu", min_run_time)  # one thread: BENCHMARK_THREADS
        rows.append({"n": n, "backend": "numpy", "timing": numpy_timing, "vs_numpy": 1.0,
                     "vs_numpy_noisy": numpy_timing.noisy})
        for device in devices:
            Xd, yd = X.to(device), y.to(device)
            w = torch.zeros(n_features, device=device, requires_grad=True)

            def torch_step(Xd=Xd, yd=yd, w=w):
                ((Xd @ w - yd) ** 2).mean().backward()
                w.grad = None

            timing = benchmark(torch_step, device, min_run_time)
            rows.append({"n": n, "backend": f"torch {device.type}", "timing": timing,
                         "vs_numpy": numpy_timing.median / timing.median,
                         "vs_numpy_noisy": numpy_timing.noisy or timing.noisy})
    return rows


def print_scaling(rows) -> None:
    print_table("Time per epoch (one forward + gradient) vs samples",
                ["samples", "backend", *(f"per epoch {h}" for h in TIMING_HEADERS), "NumPy / this"],
                [[r["n"], r["backend"], *timing_cells(r["timing"]), _ratio_cell(r["vs_numpy"], r["vs_numpy_noisy"])]
                 for r in rows])
    print(timing_note(rows[0]["timing"].threads))


def _circle_noisy(ax, points: list[tuple[float, float]]) -> None:
    """Ring the points whose row the table marks, so the figure shows which medians to distrust."""
    if points:
        ax.plot(*zip(*points), "o", markersize=13, markerfacecolor="none", markeredgecolor="red",
                label=f"noisy ({NOISY_MARK} in the table)")


def plot_scaling(rows):
    threads = rows[0]["timing"].threads
    fig, axes = new_figure(1, 2, f"NumPy vs PyTorch: one gradient step as the data grows ({threads} thread"
                                 f"{'s' if threads != 1 else ''})")
    ax_time, ax_ratio = axes.flat
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        label = "NumPy, hand-derived gradient" if backend == "numpy" else f"{backend}, autograd"
        ax_time.plot([r["n"] for r in mine], [r["timing"].median * 1e3 for r in mine], "o-", label=label)
        if backend != "numpy":
            ax_ratio.plot([r["n"] for r in mine], [r["vs_numpy"] for r in mine], "o-", label=backend)
    _circle_noisy(ax_time, [(r["n"], r["timing"].median * 1e3) for r in rows if r["timing"].noisy])
    _circle_noisy(ax_ratio, [(r["n"], r["vs_numpy"]) for r in rows if r["backend"] != "numpy" and r["vs_numpy_noisy"]])
    ax_time.set(xscale="log", yscale="log", title="Median time per epoch (forward + gradient)",
                xlabel="number of samples (log)", ylabel="median time per epoch (ms, log)")
    ax_time.legend()
    ax_ratio.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax_ratio.set(xscale="log", yscale="log", title="Speed relative to NumPy (above 1: PyTorch faster)",
                 xlabel="number of samples (log)", ylabel="NumPy median / PyTorch median (log)")
    ax_ratio.legend()
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
    return fig


# %%
if __name__ == "__main__":
    scaling = scaling_sweep(cfg.scaling_sizes, cfg.n_features, devices, cfg.min_run_time, ctx.seed)
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
        points = []  # (2,) tensors of (w, b) after each step, copied to the host once at the end
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.mse_loss(model(X1), y1).backward()
            opt.step()
            points.append(torch.cat([model.linear.weight.detach().reshape(1), model.linear.bias.detach()]))
        paths[name] = np.array([start, *_host_list(points)])
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
# `timeout_s`, and rank 0 hands its result back through a file. Only rank 0 writes: after every
# step all replicas hold the same weights, so one copy is the result. The same goes for
# checkpoints, logs and figures in a real job (W ranks writing one file race each other); a
# rank that must read what rank 0 wrote waits for it at `dist.barrier()`.
#
# On GPUs: backend "nccl" and one process per GPU. Each process first calls
# `torch.cuda.set_device(local_rank)`, then moves the model with `model.to(local_rank)` and wraps
# it as `DDP(model, device_ids=[local_rank])`. `local_rank` is the process's index among the
# processes on its own machine (node), and so names one of that machine's GPUs; the global rank
# counts the processes of all nodes, so on a second node of 8-GPU machines it runs from 8 to 15,
# and `cuda:8` does not exist there. Without `set_device`, whatever uses the current device
# (a bare `.cuda()`, NCCL's own buffers) lands on GPU 0 in every process. Under `torchrun`, which
# starts the processes itself, each one reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK` from the
# environment and joins with `init_method="env://"`; with `mp.spawn` on one machine, as here,
# the rank it is given is also its local rank.
#
# ### Gradient accumulation: one all-reduce per step
#
# When a shard is too big for one forward and backward pass (activation memory), each rank
# splits it into k micro-batches and lets their gradients add up in `.grad` before one optimizer
# step. Under DDP every backward would all-reduce, k times per step, though only the sum is
# needed. `ddp_model.no_sync()` switches that off: the first k − 1 micro-batches run forward and
# backward inside it and only accumulate locally; the last runs outside it, and its backward
# all-reduces the accumulated gradients once. The forward pass belongs inside `no_sync()` too:
# DDP decides during forward whether the next backward all-reduces. Each micro-batch's loss is
# weighted like the whole shard's above (its sum of squared errors × world_size / n), so the k
# gradients add up to the full-batch gradient whatever the micro-batch sizes.
# `train_ddp(..., accumulation_steps=k)` does this. A DDP communication hook counts the gradient
# all-reduces (one per bucket of gradients; this model's two parameters fill one bucket); the
# table below shows one per step, not one per micro-batch. The all-reduce of each epoch's loss,
# for the loss curve, is a separate collective and is not counted.

# %%
def _free_port() -> int:
    """A TCP port that is free now: binding to port 0 lets the OS pick one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DDPFitResult(FitResult):
    accumulation_steps: int = 1  # micro-batches per rank per optimizer step
    gradient_allreduces: int = 0  # calls of the communication hook: one per gradient bucket per synchronised backward


def counting_allreduce_hook(counter: dict[str, int], bucket):
    """DDP's default gradient all-reduce (divide by the world size, then sum over the ranks), counted in `counter`."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter["allreduces"] += 1
    return default_hooks.allreduce_hook(None, bucket)  # None: the default process group


def ddp_train_rank(rank: int, world_size: int, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                   seed: int, init_method: str, timeout_s: float = DDP_TIMEOUT_S,
                   accumulation_steps: int = 1) -> DDPFitResult | None:
    """One rank's training loop, joining the group at `init_method`, its shard split into `accumulation_steps`
    micro-batches per step; rank 0 returns the fit."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)  # one thread per process: the processes already share the cores
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        n = len(X)
        ddp_model = DistributedDataParallel(make_model(X.shape[1], seed))
        counter = {"allreduces": 0}
        ddp_model.register_comm_hook(counter, counting_allreduce_hook)  # before the first backward
        opt = torch.optim.SGD(ddp_model.parameters(), lr=lr)  # the same optimizer as fit_module's "sgd"
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        # The sampler lists positions rank, rank + W, ...; those at or past n are padding repeats.
        n_real = len(range(rank, n, world_size))
        totals = []  # each epoch's global sum of squared errors, a 0-d tensor, copied to the host at the end
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            shard = torch.tensor(list(sampler)[:n_real], dtype=torch.long)
            micro_batches = torch.tensor_split(shard, accumulation_steps)  # sizes differ by at most one row
            opt.zero_grad()
            squared_error_sum = torch.zeros(())
            for i, rows in enumerate(micro_batches):
                # All but the last micro-batch inside no_sync(): forward and backward only add to .grad locally.
                # The last one's backward all-reduces the sum of all k gradients, once per step.
                with ddp_model.no_sync() if i < len(micro_batches) - 1 else nullcontext():
                    micro_sum = ((ddp_model(X[rows]) - y[rows]) ** 2).sum()
                    (micro_sum * world_size / n).backward()  # DDP averages: the k add up to the full-batch gradient
                squared_error_sum += micro_sum.detach()
            opt.step()
            dist.all_reduce(squared_error_sum)  # the global sum, for the loss curve
            totals.append(squared_error_sum)
            _check_finite_losses(totals, epochs, lr)  # every rank holds the same totals: all raise at one epoch
        module = ddp_model.module
        result = DDPFitResult(module.linear.weight.detach().squeeze(0).clone(), module.linear.bias.item(),
                              [total / n for total in _host_list(totals)], accumulation_steps=accumulation_steps,
                              gradient_allreduces=counter["allreduces"])
        del ddp_model, module, opt  # drop DDP before tearing the group down (a live DDP can hang shutdown)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


def _ddp_worker(rank, world_size, X, y, epochs, lr, seed, port, result_path, timeout_s, accumulation_steps) -> None:
    """What each spawned rank runs: the training loop, then rank 0 (only) saves its fit for the parent."""
    result = ddp_train_rank(rank, world_size, torch.from_numpy(X), torch.from_numpy(y), epochs, lr, seed,
                            f"tcp://127.0.0.1:{port}", timeout_s, accumulation_steps)
    if result is not None:
        torch.save(vars(result), result_path)


def train_ddp(X, y, world_size: int = 2, epochs: int = 100, lr: float = 0.05, seed: int = 0,
              timeout_s: float = DDP_TIMEOUT_S, accumulation_steps: int = 1) -> DDPFitResult:
    """Full-batch SGD with DDP on `world_size` spawned CPU processes, each accumulating `accumulation_steps`
    micro-batches per step; rank 0's fit, as fit_module returns it, with the count of gradient all-reduces.

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
    if not 1 <= accumulation_steps <= len(X) // world_size:
        raise ValueError(f"accumulation_steps={accumulation_steps} must be between 1 and the rows of the smallest "
                         f"shard ({len(X) // world_size}): every micro-batch needs a row")
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "rank0.pt"
        # NumPy arrays travel to the ranks pickled by value; tensors would need shared memory.
        args = (world_size, X.numpy(), y.numpy(), epochs, lr, seed, _free_port(), str(result_path), timeout_s,
                accumulation_steps)
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
        return DDPFitResult(**torch.load(result_path, weights_only=True))


def max_parameter_difference(a: FitResult, b: FitResult) -> float:
    return max((a.weights - b.weights).abs().max().item(), abs(a.bias - b.bias))


def print_ddp_check(world_size: int, ddp: DDPFitResult, single: FitResult, difference: float) -> None:
    epochs, k = len(single.losses), ddp.accumulation_steps
    accumulating = f", each accumulating {k} micro-batches per step," if k > 1 else ""
    print_table(f"DDP on {world_size} CPU processes{accumulating} vs single-process nn.Module + SGD ({epochs} epochs)",
                ["run", "weights", "bias", "final MSE", "micro-batches per step", "gradient all-reduces"],
                [[f"DDP ({world_size} ranks)", _fmt_vector(ddp.weights), f"{ddp.bias:.6f}", f"{ddp.losses[-1]:.6f}",
                  f"{k} per rank", ddp.gradient_allreduces],
                 ["single process", _fmt_vector(single.weights), f"{single.bias:.6f}", f"{single.losses[-1]:.6f}",
                  "1 (all rows)", "none"]])
    print(f"max |difference| of parameters: {difference:.2e}  (anything non-zero is float32 rounding: the ranks "
          "sum in another order)")
    passes = f"{k} backward passes per step, the first {k - 1} under no_sync()" if k > 1 else "1 backward pass per step"
    print(f"gradient all-reduces per optimizer step: {ddp.gradient_allreduces / epochs:g}  (each rank ran {passes})")


# %%
if __name__ == "__main__":
    ddp_fit = train_ddp(X, y, cfg.ddp_world_size, cfg.ddp_epochs, cfg.lr, ctx.seed,
                        accumulation_steps=cfg.ddp_accumulation_steps)
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
    per_epoch_us = [r["per_epoch"].median * 1e6 for r in implementations]
    bars = ax.bar(range(len(labels)), per_epoch_us,
                  color=["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"][: len(labels)])
    ax.bar_label(bars, [fmt_seconds(r["per_epoch"].median) + (f" {NOISY_MARK}" if r["per_epoch"].noisy else "")
                        for r in implementations], fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    threads = implementations[0]["per_epoch"].threads
    ax.set(title=f"Median time per epoch, {threads} thread{'s' if threads != 1 else ''} ({NOISY_MARK}: noisy)",
           ylabel="median time per epoch (µs)")


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
