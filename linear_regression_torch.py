"""Linear regression four ways: NumPy, manual autograd, nn.Module + optim, closed form, and DDP.

Lesson 3 of the course. Run `python linear_regression_torch.py` (add `--quick` for a smoke run).
One synthetic regression problem is solved with hand-derived NumPy gradients, with PyTorch
autograd by hand, with nn.Module + torch.optim (five optimizers), and exactly with
torch.linalg.lstsq; the same loop then runs data-parallel on several CPU processes with
DistributedDataParallel. Under `torchrun --standalone --nproc_per_node=2` the script runs only
the data-parallel part, one process per rank. Figures: plots/linear_regression_comparison.png,
plots/numpy_vs_torch_scaling.png.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lesson_harness import (
    LessonContext,
    as_device,
    build_parser,
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
    n_samples: int = 1_000  # rows in the main regression problem
    n_features: int = 5  # columns (few enough to draw every weight's trajectory)
    noise: float = 0.5  # std of the Gaussian noise added to y: the MSE floor is noise² = 0.25
    epochs: int = 1_000  # full-batch steps for the NumPy / manual / module comparison
    lr: float = 0.05  # plain gradient-descent step size (stable below 1 for standardised X)
    optimizer_epochs: int = 500  # steps per optimizer in the five-way comparison
    scaling_sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000, 1_000_000)  # rows in the per-epoch timing
    landscape_epochs: int = 150  # steps drawn on the loss landscape
    ddp_world_size: int = 2  # CPU processes in the data-parallel run
    ddp_epochs: int = 100  # steps in the data-parallel run
    min_run_time: float = 0.3  # seconds each timing is measured for


FULL = Config()
QUICK = Config(n_samples=200, epochs=100, optimizer_epochs=100, scaling_sizes=(100, 1_000, 10_000),
               landscape_epochs=40, ddp_epochs=10, min_run_time=0.02)
PROG = "linear_regression_torch.py"
DDP_TIMEOUT_S = 120.0  # a data-parallel run that takes longer than this is stuck: kill it and fail
FLOAT32_LOSS_RESOLUTION = 1e-7  # relative: float32 losses cannot resolve differences smaller than this
OPTIMIZER_NAMES = ("sgd", "momentum", "adam", "adagrad", "rmsprop")
# Step sizes for the five-way comparison on standardised features. Gradient descent is stable
# for lr < 2/λ_max(2XᵀX/n) ≈ 1; momentum 0.9 multiplies the effective step by 1/(1 − 0.9) = 10,
# so it gets a tenth; Adam and RMSprop take steps of about lr per coordinate whatever the gradient
# size, so lr is the distance they move per step; AdaGrad's steps shrink as squared gradients
# pile up, so it starts large.
OPTIMIZER_LRS = {"sgd": 0.1, "momentum": 0.01, "adam": 0.05, "adagrad": 0.5, "rmsprop": 0.01}


# %% [markdown]
# ## The problem and its exact answer
#
# y = X w_true + b_true + noise·ε. Least squares has a closed form: append a column of ones to
# X for the bias and solve with `torch.linalg.lstsq` (QR-based, stable; never invert XᵀX).
# Every iterative solver below is measured against this answer, not against w_true: with noise,
# the best achievable weights differ slightly from the ones that generated the data.

# %%
def make_regression_data(n_samples: int, n_features: int, noise: float = 0.5, seed: int = 0):
    """(X, y, w_true, b_true) as float32 tensors; X is standard normal, so already standardised."""
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


def closed_form(X, y) -> tuple[torch.Tensor, float]:
    """Least-squares (w, b) from torch.linalg.lstsq on [X, 1], computed in float64."""
    X, y = _as_tensor(X, torch.float64), _as_tensor(y, torch.float64)
    _check_xy(X, y)
    augmented = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)  # (n, f + 1)
    solution = torch.linalg.lstsq(augmented, y.unsqueeze(1)).solution.squeeze(1)  # (f + 1,)
    return solution[:-1].float(), solution[-1].item()


def train_val_split(X: torch.Tensor, y: torch.Tensor, val_fraction: float, generator: torch.Generator | None = None):
    """Shuffle once and hold out `val_fraction` of the rows: (X_train, X_val, y_train, y_val)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1")
    order = torch.randperm(len(X), generator=generator)
    n_val = max(1, round(val_fraction * len(X)))
    val, train = order[:n_val], order[n_val:]
    return X[train], X[val], y[train], y[val]


def mse(X, y, w: torch.Tensor, b: float) -> float:
    X, y = _as_tensor(X, torch.float64), _as_tensor(y, torch.float64)
    return ((X @ w.double() + b - y) ** 2).mean().item()


# %% [markdown]
# ## One result type for every solver

# %%
@dataclass
class FitResult:
    weights: torch.Tensor  # (n_features,) on the CPU
    bias: float
    losses: list[float]  # training MSE at the start of each epoch
    seconds: float  # wall time of this one run (the comparisons use Timer medians instead)
    val_losses: list[float] = field(default_factory=list)  # validation MSE per epoch, when given
    weight_history: list[list[float]] = field(default_factory=list)  # per epoch, when recorded


def _check_finite(loss: float, epoch: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training diverged: loss became {loss} at epoch {epoch} with learning rate {lr}; lower the learning rate"
        )


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
    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below, not warned about
        for epoch in range(epochs):
            grad_w, grad_b, loss = numpy_gradients(X, y, w, b)
            _check_finite(loss, epoch, lr)
            losses.append(loss)
            w = w - np.float32(lr) * grad_w
            b = b - np.float32(lr) * grad_b
    return FitResult(torch.from_numpy(w.copy()), float(b), losses, time.perf_counter() - start)


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
    start = time.perf_counter()
    for epoch in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())  # .item() also waits for the GPU, so the timing is honest
        _check_finite(losses[-1], epoch, lr)
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = None
        b.grad = None
    return FitResult(w.detach().cpu(), b.item(), losses, time.perf_counter() - start)


# %% [markdown]
# ## Solver 3: nn.Module + torch.optim
#
# `nn.Linear` holds the parameters, `nn.MSELoss` the loss, an optimizer the update rule. Swapping
# SGD for Adam is one string. The initial weights come from `seed`, drawn in a forked RNG so
# the caller's random state is untouched.

# %%
class LinearRegression(nn.Module):
    def __init__(self, n_features: int):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)  # (batch, f) -> (batch,)


def make_model(n_features: int, seed: int = 0) -> LinearRegression:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LinearRegression(n_features)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    factories = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr),
        "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
        "adam": lambda: torch.optim.Adam(params, lr=lr),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr),
    }
    if name not in factories:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(factories)}")
    return factories[name]()


def fit_module(
    X, y, optimizer: str = "sgd", lr: float = 0.05, epochs: int = 1_000, device: torch.device | str = "cpu",
    seed: int = 0, X_val=None, y_val=None, initial: tuple[list[float], float] | None = None,
    record_weights: bool = False,
) -> FitResult:
    """Train nn.Linear with the named optimizer; optional validation set, start point and weight log."""
    device = as_device(device)
    X, y = _as_tensor(X).to(device), _as_tensor(y).to(device)
    _check_xy(X, y)
    model = make_model(X.shape[1], seed)
    if initial is not None:
        with torch.no_grad():
            model.linear.weight.copy_(torch.tensor([initial[0]]))
            model.linear.bias.fill_(initial[1])
    model.to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loss_fn = nn.MSELoss()
    has_val = X_val is not None
    if has_val:
        X_val, y_val = _as_tensor(X_val).to(device), _as_tensor(y_val).to(device)
    result = FitResult(torch.empty(0), 0.0, [], 0.0)
    start = time.perf_counter()
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
    result.seconds = time.perf_counter() - start
    result.weights = model.linear.weight.detach().squeeze(0).cpu()
    result.bias = model.linear.bias.item()
    return result


def compare_optimizers(X, y, epochs: int, device: torch.device | str = "cpu", seed: int = 0,
                       lrs: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Loss history of each optimizer from the same initial weights, each with its own lr."""
    lrs = lrs or OPTIMIZER_LRS
    return {name: fit_module(X, y, name, lrs[name], epochs, device, seed).losses for name in OPTIMIZER_NAMES}


def epochs_to_reach(losses: list[float], target: float) -> int | str:
    """First epoch whose loss is at or below `target`, or "never"."""
    return next((epoch for epoch, loss in enumerate(losses) if loss <= target), "never")


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


# %% [markdown]
# ## Timing: what each layer of abstraction costs
#
# On a tiny problem the time per epoch is overhead: Python, op dispatch, autograd bookkeeping.
# NumPy has the least. As the data grows the arithmetic dominates and the overhead stops
# mattering; the scaling sweep finds where that happens on this machine.

# %%
def time_implementations(X, y, lr: float, epochs: int, devices, min_run_time: float) -> list[dict[str, object]]:
    """Median wall time of a whole `epochs`-epoch fit per implementation and device, with final MSE."""
    w_exact, b_exact = closed_form(X, y)
    runs = [("NumPy", "cpu", lambda: fit_numpy(X, y, lr, epochs))]
    for device in devices:
        runs.append(("PyTorch manual", device.type, lambda d=device: fit_manual(X, y, lr, epochs, d)))
        runs.append(("PyTorch nn.Module + SGD", device.type, lambda d=device: fit_module(X, y, "sgd", lr, epochs, d)))
    rows = []
    for name, device_name, fit in runs:
        result = fit()
        rows.append({"implementation": name, "device": device_name,
                     "seconds": time_median(fit, device_name, min_run_time), "final_mse": result.losses[-1],
                     "max_weight_error": (result.weights - w_exact).abs().max().item(),
                     "losses": result.losses})
    return rows


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


# %% [markdown]
# ## The loss landscape
#
# With one feature the loss is a function of two numbers, (w, b), and can be drawn. MSE is a
# convex bowl: every optimizer reaches the same bottom, by very different paths.

# %%
def loss_landscape(X1, y1, w_range, b_range, steps: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MSE on a (w, b) grid for a one-feature problem: (W, B, loss) arrays of shape (steps, steps)."""
    X1, y1 = _as_tensor(X1, torch.float64).reshape(-1), _as_tensor(y1, torch.float64)
    W, B = torch.meshgrid(torch.linspace(*w_range, steps, dtype=torch.float64),
                          torch.linspace(*b_range, steps, dtype=torch.float64), indexing="xy")
    # (steps, steps, 1) against (n,) broadcasts to (steps, steps, n), then the mean over samples.
    loss = ((W.unsqueeze(-1) * X1 + B.unsqueeze(-1) - y1) ** 2).mean(-1)
    return W.numpy(), B.numpy(), loss.numpy()


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


# %% [markdown]
# ## Data-parallel training with DistributedDataParallel
#
# Each process (rank) holds a full copy of the model and a shard of the data. After backward,
# DDP averages the gradients across ranks with an all-reduce, so every replica takes the same
# step. For that step to equal the full-batch step, each rank's loss is its *sum* of squared
# errors over its real rows divided by the global row count, times world_size (DDP divides by
# it); `DistributedSampler` pads uneven shards with repeated rows, which are left out.
# On GPUs the changes are small: backend "nccl", one process per GPU, `model.to(rank)` and
# `DDP(model, device_ids=[rank])`. Processes start with `spawn` (forking a process whose
# thread pool is running can deadlock), the process group has a timeout, and the parent kills
# every worker if one fails or the run outlives DDP_TIMEOUT_S.

# %%
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_train_rank(rank: int, world_size: int, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                   seed: int, init_method: str, timeout_s: float = DDP_TIMEOUT_S) -> FitResult | None:
    """One rank's training loop; the same code runs under mp spawn and under torchrun. Rank 0 returns."""
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
        start = time.perf_counter()
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
        seconds = time.perf_counter() - start
        module = ddp_model.module
        result = FitResult(module.linear.weight.detach().squeeze(0).clone(), module.linear.bias.item(), losses, seconds)
        del ddp_model, module, opt  # drop DDP before tearing the group down (a live DDP can hang shutdown)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


def _ddp_worker(rank, world_size, X, y, epochs, lr, seed, port, result_path, timeout_s):
    result = ddp_train_rank(rank, world_size, torch.from_numpy(X), torch.from_numpy(y), epochs, lr, seed,
                            f"tcp://127.0.0.1:{port}", timeout_s)
    if result is not None:
        torch.save(result.__dict__, result_path)


class DDPRun:
    """DDP workers spawned in the background; `result()` waits for them (with a deadline) and returns rank 0's fit.

    Starting the workers early lets their start-up (each imports torch) overlap other work.
    """

    def __init__(self, X, y, world_size: int = 2, epochs: int = 100, lr: float = 0.05, seed: int = 0,
                 timeout_s: float = DDP_TIMEOUT_S):
        import torch.multiprocessing as mp

        X, y = _as_tensor(X), _as_tensor(y)
        _check_xy(X, y)
        if world_size < 1:
            raise ValueError(f"world_size={world_size} must be at least 1")
        if world_size > len(X):
            raise ValueError(f"world_size={world_size} is larger than the number of rows ({len(X)})")
        self._tmp = tempfile.TemporaryDirectory()
        self._result_path = Path(self._tmp.name) / "rank0.pt"
        self._timeout_s = timeout_s
        args = (world_size, X.numpy(), y.numpy(), epochs, lr, seed, _free_port(), str(self._result_path), timeout_s)
        self._deadline = time.monotonic() + timeout_s
        self._context = mp.start_processes(_ddp_worker, args=args, nprocs=world_size, join=False,
                                           start_method="spawn")

    def result(self) -> FitResult:
        import torch.multiprocessing as mp

        try:
            while not self._context.join(timeout=0.05):  # raises if a worker failed, after killing the rest
                if time.monotonic() > self._deadline:
                    raise TimeoutError(f"DDP training did not finish within {self._timeout_s:g} s; workers killed")
        except mp.ProcessRaisedException as err:
            last_line = str(err).strip().splitlines()[-1]
            if last_line.startswith("FloatingPointError"):
                raise FloatingPointError(last_line.split(":", 1)[1].strip()) from None
            raise RuntimeError(f"a DDP worker failed: {last_line}") from None
        finally:
            for process in self._context.processes:
                if process.is_alive():
                    process.kill()
                process.join(timeout=5)
        try:
            return FitResult(**torch.load(self._result_path, weights_only=True))
        finally:
            self._tmp.cleanup()


def train_ddp(X, y, world_size: int = 2, epochs: int = 100, lr: float = 0.05, seed: int = 0,
              timeout_s: float = DDP_TIMEOUT_S) -> FitResult:
    """Full-batch SGD with DDP on `world_size` spawned CPU processes; same result type as fit_module."""
    return DDPRun(X, y, world_size, epochs, lr, seed, timeout_s).result()


def running_under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def torchrun_main(cfg: Config, seed: int) -> None:
    """The data-parallel part alone, one process per rank, as started by torchrun."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    X, y, _, _ = make_regression_data(cfg.n_samples, cfg.n_features, cfg.noise, seed)
    result = ddp_train_rank(rank, world_size, X, y, cfg.ddp_epochs, FULL.lr, seed, "env://")
    if result is not None:
        reference = fit_module(X, y, "sgd", FULL.lr, cfg.ddp_epochs, "cpu", seed)
        print_ddp_check(world_size, result, reference)


def print_ddp_check(world_size: int, ddp: FitResult, single: FitResult) -> None:
    print_table(f"DDP on {world_size} CPU processes vs single-process nn.Module + SGD",
                ["run", "weights", "bias", "final MSE"],
                [[f"DDP ({world_size} ranks)", _fmt_vector(ddp.weights), f"{ddp.bias:.6f}", f"{ddp.losses[-1]:.6f}"],
                 ["single process", _fmt_vector(single.weights), f"{single.bias:.6f}", f"{single.losses[-1]:.6f}"]])
    diff = max((ddp.weights - single.weights).abs().max().item(), abs(ddp.bias - single.bias))
    print(f"max |difference| of parameters: {diff:.2e}  (anything non-zero is float32 rounding: the ranks "
          "sum in another order)")


def _fmt_vector(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in t.tolist()) + "]"


# %% [markdown]
# ## Figures

# %%
def plot_comparison(implementations, optimizer_losses, closed_mse, y_val, y_pred, weight_history, w_true,
                    landscape, paths):
    fig, axes = new_figure(2, 3, "Linear regression: implementations, optimizers and the loss landscape")
    ax_conv, ax_opt, ax_time, ax_scatter, ax_weights, ax_land = axes.flat

    styles = {"NumPy": ("-", 4), "PyTorch manual": ("--", 2), "PyTorch nn.Module + SGD": ("-", 1.5)}
    for row in implementations:
        if row["device"] == "cpu":
            style, width = styles[row["implementation"]]
            ax_conv.plot(range(1, len(row["losses"]) + 1), row["losses"], style, linewidth=width,
                         label=row["implementation"])
    ax_conv.axhline(closed_mse, color="black", linestyle="--", label="closed form (lstsq)")
    ax_conv.set(xscale="log", yscale="log", title="Gradient descent: NumPy and manual start at 0, coincide",
                xlabel="epoch (log)", ylabel="training MSE (log)")
    ax_conv.legend(fontsize=8)

    resolution = FLOAT32_LOSS_RESOLUTION * closed_mse
    for name, losses in optimizer_losses.items():
        excess = np.maximum(np.array(losses) - closed_mse, resolution)  # below this it is float32 rounding
        ax_opt.plot(range(1, len(losses) + 1), excess, label=f"{name} (lr {OPTIMIZER_LRS[name]:g})")
    ax_opt.axhline(resolution, color="grey", linestyle=":", label="float32 resolution")
    ax_opt.set(yscale="log", title="Five optimizers: loss above the optimum", xlabel="epoch",
               ylabel="MSE − closed-form MSE (log)")
    ax_opt.legend(fontsize=8)

    labels = [f"{r['implementation'].replace(' + SGD', '')}\n({r['device']})" for r in implementations]
    bars = ax_time.bar(range(len(labels)), [r["seconds"] * 1e3 for r in implementations],
                       color=["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"][: len(labels)])
    ax_time.bar_label(bars, fmt="%.0f ms", fontsize=8)
    ax_time.set_xticks(range(len(labels)), labels, fontsize=8)
    ax_time.set(title=f"Time for {len(implementations[0]['losses'])} epochs (median)", ylabel="time (ms)")

    ax_scatter.scatter(y_val, y_pred, s=8, alpha=0.6)
    low, high = float(min(y_val.min(), y_pred.min())), float(max(y_val.max(), y_pred.max()))
    ax_scatter.plot([low, high], [low, high], "k--", label="perfect prediction")
    ax_scatter.set(title="Validation set: predicted vs actual", xlabel="actual y", ylabel="predicted y")
    ax_scatter.legend()

    history = np.array(weight_history)  # (epochs, n_features)
    for j in range(history.shape[1]):
        line, = ax_weights.plot(history[:, j], label=f"w[{j}]")
        ax_weights.axhline(float(w_true[j]), color=line.get_color(), linestyle=":", linewidth=1)
    ax_weights.set_xscale("symlog", linthresh=10)
    ax_weights.set(xlim=(0, len(history)), title="Weights during training (dotted: true values)",
                   xlabel="epoch (linear to 10, log after)", ylabel="weight value")
    ax_weights.legend(fontsize=8, ncols=2)

    W, B, loss = landscape
    contour = ax_land.contour(W, B, loss, levels=np.geomspace(loss.min() * 1.05, loss.max(), 14), cmap="viridis")
    fig.colorbar(contour, ax=ax_land, label="MSE")
    for (name, path), style in zip(paths.items(), ["-", "-", "--", "-", ":"]):
        ax_land.plot(path[:, 0], path[:, 1], style, marker=".", markersize=2, linewidth=1.5, label=name)
    ax_land.plot(*next(iter(paths.values()))[0], "ko", label="start")
    ax_land.set(title="Loss landscape (1 feature) and optimizer paths", xlabel="weight w", ylabel="bias b")
    ax_land.legend(fontsize=8, loc="upper left")
    return fig


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


# %% [markdown]
# ## Putting it together

# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)
    devices = [torch.device("cpu")] + ([ctx.device] if ctx.device.type != "cpu" else [])

    X, y, w_true, b_true = make_regression_data(cfg.n_samples, cfg.n_features, cfg.noise, ctx.seed)
    w_exact, b_exact = closed_form(X, y)
    closed_mse = mse(X, y, w_exact, b_exact)
    print_section(f"Data: {cfg.n_samples} samples × {cfg.n_features} features, noise std {cfg.noise}")
    print(f"true weights       {_fmt_vector(w_true)}  bias {b_true.item():.4f}")
    print(f"closed form lstsq  {_fmt_vector(w_exact)}  bias {b_exact:.4f}  MSE {closed_mse:.5f}")

    implementations = time_implementations(X, y, cfg.lr, cfg.epochs, devices, cfg.min_run_time)
    print_table(f"{cfg.n_samples} samples, {cfg.epochs} epochs of gradient descent (lr {cfg.lr}); "
                "time = median of Timer runs",
                ["implementation", "device", "time", "per epoch", "final MSE", "max |w − w_lstsq|"],
                [[r["implementation"], r["device"], fmt_seconds(r["seconds"]), fmt_seconds(r["seconds"] / cfg.epochs),
                  f"{r['final_mse']:.5f}", f"{r['max_weight_error']:.1e}"] for r in implementations])

    optimizer_losses = compare_optimizers(X, y, cfg.optimizer_epochs, ctx.device, ctx.seed)
    print_table(f"Five optimizers, {cfg.optimizer_epochs} epochs from the same initial weights "
                f"(closed-form MSE {closed_mse:.5f})",
                ["optimizer", "lr", "initial MSE", "final MSE", "final − optimum", "epochs to within 1e-3"],
                [[name, OPTIMIZER_LRS[name], f"{losses[0]:.4f}", f"{losses[-1]:.6f}", f"{losses[-1] - closed_mse:+.1e}",
                  epochs_to_reach(losses, closed_mse + 1e-3)] for name, losses in optimizer_losses.items()])
    print("(a difference within ±3e-8 of zero is float32 rounding: the optimum itself is computed in float64)")

    differences = custom_vs_builtin_sgd(X, y, cfg.lr, 50, ctx.seed)
    print(f"\nPlainSGD vs torch.optim.SGD over 50 steps: max |weight difference| = {max(differences):.1e}")

    X_train, X_val, y_train, y_val = train_val_split(X, y, 0.2, ctx.generator)
    split = fit_module(X_train, y_train, "sgd", cfg.lr, cfg.epochs, ctx.device, ctx.seed, X_val, y_val,
                       record_weights=True)
    print(f"Train/validation split 80/20: final train MSE {split.losses[-1]:.5f}, "
          f"validation MSE {split.val_losses[-1]:.5f} (noise floor {cfg.noise**2:.2f})")

    try:
        fit_manual(X, y, lr=5.0, epochs=100)
    except FloatingPointError as err:
        print(f"lr = 5.0 is far too large: FloatingPointError: {err}")

    scaling = scaling_sweep(cfg.scaling_sizes, cfg.n_features, devices, cfg.min_run_time / 3, ctx.seed)
    numpy_time = {r["n"]: r["seconds"] for r in scaling if r["backend"] == "numpy"}
    print_table("Time per epoch (one forward + gradient) vs samples",
                ["samples", "backend", "per epoch", "NumPy / this"],
                [[r["n"], r["backend"], fmt_seconds(r["seconds"]),
                  fmt_timing(numpy_time[r["n"]] / r["seconds"], ".2f", "×")] for r in scaling])

    # The timings are done: start the DDP workers now so their start-up overlaps the work below.
    ddp_run = DDPRun(X, y, cfg.ddp_world_size, cfg.ddp_epochs, cfg.lr, ctx.seed)
    single = fit_module(X, y, "sgd", cfg.lr, cfg.ddp_epochs, "cpu", ctx.seed)

    X1, y1, _, _ = make_regression_data(200, 1, 0.5, ctx.seed)
    X1 = X1 + 1.5  # an uncentred feature couples w and b: the bowl tilts into a long valley
    start = (3.0, 1.5)  # across the valley from its bottom, so the optimizers' paths differ
    paths = optimizer_paths(X1, y1, start, cfg.landscape_epochs)
    visited = np.concatenate(list(paths.values()))  # (points, 2): frame every path with a margin
    landscape = loss_landscape(X1, y1, (visited[:, 0].min() - 0.7, visited[:, 0].max() + 0.7),
                               (visited[:, 1].min() - 0.7, visited[:, 1].max() + 0.7))

    with torch.no_grad():
        model = make_model(cfg.n_features)
        model.linear.weight.copy_(split.weights.unsqueeze(0))
        model.linear.bias.fill_(split.bias)
        y_pred = model(X_val)

    print_section("Figures")
    fig = plot_comparison(implementations, optimizer_losses, closed_mse, y_val.numpy(), y_pred.numpy(),
                          split.weight_history, w_true, landscape, paths)
    save_figure(fig, "linear_regression_comparison.png", ctx.plots_dir)
    save_figure(plot_scaling(scaling), "numpy_vs_torch_scaling.png", ctx.plots_dir)

    print_section(f"Data-parallel training (DDP, gloo, {cfg.ddp_world_size} spawned processes)")
    print_ddp_check(cfg.ddp_world_size, ddp_run.result(), single)


def main(argv: list[str] | None = None) -> int:
    if running_under_torchrun():  # torchrun started this process as one rank: run only the DDP part
        args = build_parser(PROG, __doc__).parse_args(argv)
        torchrun_main(QUICK if args.quick else FULL, args.seed)
        return 0
    return run_lesson(PROG, __doc__, "Lesson 3: linear regression", run, argv)


if __name__ == "__main__":
    finish(main())
