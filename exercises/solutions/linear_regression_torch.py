"""Reference solutions for exercises/linear_regression_torch.py (the docstrings there state each task)."""

from __future__ import annotations

import torch


def mse_gradients(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                  b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2/n) Xᵀr and (2/n) Σr."""
    residual = X @ w + b - y  # (n,)
    n = len(y)
    return 2.0 / n * (X.mT @ residual), 2.0 / n * residual.sum()


def least_squares(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lstsq on [X, 1]."""
    augmented = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], dim=1)  # (n, f + 1)
    solution = torch.linalg.lstsq(augmented, y.unsqueeze(1)).solution.squeeze(1)  # (f + 1,)
    return solution[:-1], solution[-1]


def fit_linear_gd(X: torch.Tensor, y: torch.Tensor, lr: float, epochs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The manual autograd loop of lesson 3."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, device=X.device, requires_grad=True)
    for _ in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():  # the update is not part of the model
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = None  # or the next backward adds to this one
        b.grad = None
    return w.detach(), b.detach()


class MomentumSGD(torch.optim.Optimizer):
    """torch.optim.SGD's momentum rule (dampening 0, not Nesterov), written out."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                gradient = p.grad.add(p, alpha=group["weight_decay"])  # L2 term joins the gradient first
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = gradient.clone()  # first step: v = g, as torch.optim.SGD does
                else:
                    state["velocity"].mul_(group["momentum"]).add_(gradient)
                p.add_(state["velocity"], alpha=-group["lr"])
        return loss
