"""Checks for exercises/linear_regression_torch.py, each against autograd, NumPy or torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import torch

from exercises.checks import check, check_close, check_no_grad_history, fail, forbidden

LESSON = "linear_regression_torch"


def _regression_data(n: int, f: int, seed: int, dtype=torch.float64):
    """Features off-centre (mean 3) and a non-zero intercept, so a fit without bias visibly fails."""
    gen = torch.Generator().manual_seed(seed)
    X = 2 * torch.randn(n, f, generator=gen, dtype=dtype) + 3
    w_true = torch.randn(f, generator=gen, dtype=dtype)
    y = X @ w_true + 4.0 + 0.3 * torch.randn(n, generator=gen, dtype=dtype)
    return X, y


def _refuse_autograd(monkeypatch, exercise: str) -> None:
    def refused(*args, **kwargs):
        fail(f"{exercise} used autograd.", expected="the gradient from the formula", got="a call into torch.autograd",
             hint="Derive it by hand: r = X w + b − y, ∂L/∂w = (2/n) Xᵀ r, ∂L/∂b = (2/n) Σ r.")

    monkeypatch.setattr(torch.autograd, "grad", refused)
    monkeypatch.setattr(torch.autograd, "backward", refused)


def test_mse_gradients(answer, monkeypatch):
    X, y = _regression_data(20, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, generator=gen, dtype=torch.float64)
    b = torch.tensor(0.5, dtype=torch.float64)
    w_leaf, b_leaf = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = ((X @ w_leaf + b_leaf - y) ** 2).mean()
    expected_w, expected_b = torch.autograd.grad(loss, (w_leaf, b_leaf))  # the reference: autograd
    _refuse_autograd(monkeypatch, "mse_gradients")
    result = answer(X, y, w, b)
    monkeypatch.undo()
    check(isinstance(result, tuple) and len(result) == 2, "mse_gradients should return a pair (grad_w, grad_b).",
          expected="(grad_w of shape (3,), grad_b of shape ())", got=result, hint="End with: return grad_w, grad_b")
    grad_w, grad_b = result
    hint = ("∂L/∂w = (2/n) Xᵀ r and ∂L/∂b = (2/n) Σ r with r = X w + b − y: the 2 comes from the square, the 1/n "
            "from the mean, and r is prediction minus target (the other order flips the sign).")
    check_close(grad_w, expected_w, what="grad_w from mse_gradients(X, y, w, b), n = 20 rows", rtol=1e-10,
                atol=1e-12, hint=hint)
    check_close(grad_b, expected_b, what="grad_b from mse_gradients(X, y, w, b), n = 20 rows", rtol=1e-10,
                atol=1e-12, hint=hint + " grad_b is a 0-d tensor: a sum, not a vector.")


def test_least_squares(answer):
    X, y = _regression_data(50, 3, seed=0)
    augmented = np.hstack([X.numpy(), np.ones((50, 1))])
    reference = np.linalg.lstsq(augmented, y.numpy(), rcond=None)[0]  # (f + 1,): weights, then the intercept
    w, b = answer(X, y)
    hint = ("Fit the intercept together with the weights: solve for [w, b] with a column of ones appended to X. "
            "With off-centre features, b is not the mean of y.")
    check_close(w, torch.from_numpy(reference[:-1]), what="w from least_squares(X, y) (features with mean 3, "
                "intercept 4)", rtol=1e-8, atol=1e-9, hint=hint)
    check_close(b, torch.tensor(reference[-1]), what="b from least_squares(X, y)", rtol=1e-8, atol=1e-9,
                hint=hint + " b is a 0-d tensor: solution[-1].")
    X32, y32 = X.float(), y.float()
    w32, b32 = answer(X32, y32)
    check_close(w32, torch.from_numpy(reference[:-1]).float(), what="w from least_squares(float32 X, float32 y)",
                rtol=1e-3, atol=1e-3, hint="Keep X's dtype: make the ones column with dtype=X.dtype.")


def _numpy_gradient_descent(X: np.ndarray, y: np.ndarray, lr: float, epochs: int) -> tuple[np.ndarray, float]:
    """The reference: float64 gradient descent with the hand-derived MSE gradient."""
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(epochs):
        residual = X @ w + b - y
        w, b = w - lr * 2 / len(y) * X.T @ residual, b - lr * 2 / len(y) * residual.sum()
    return w, b


def test_fit_linear_gd(answer):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen)  # float32, standardised: lr = 0.1 is stable
    y = X @ torch.tensor([1.5, -2.0, 0.5]) + 0.7 + 0.1 * torch.randn(40, generator=gen)
    for epochs in (0, 1, 30):
        with forbidden([(torch.optim.Optimizer, "__init__", "a torch.optim optimizer")], exercise="fit_linear_gd",
                       instead="the update written out: w -= lr * w.grad under torch.no_grad()",
                       hint="Update w and b yourself inside `with torch.no_grad():`, then set w.grad = None."):
            w, b = answer(X, y, 0.1, epochs)
        w_ref, b_ref = _numpy_gradient_descent(X.double().numpy(), y.double().numpy(), 0.1, epochs)
        hint = ("Start from zeros and take exactly `epochs` steps (range(epochs)). Clear the gradients after "
                "each step (w.grad = None), or the old gradient is added to the new one. Use the mean loss.")
        check_close(w, torch.from_numpy(w_ref).float(), what=f"w after fit_linear_gd(X, y, lr=0.1, epochs={epochs})",
                    rtol=1e-4, atol=1e-5, hint=hint)
        check_close(b, torch.tensor(b_ref, dtype=torch.float32),
                    what=f"b after fit_linear_gd(X, y, lr=0.1, epochs={epochs})", rtol=1e-4, atol=1e-5,
                    hint=hint + " b is a 0-d tensor.")
        check_no_grad_history(w, what=f"w from fit_linear_gd(..., epochs={epochs})")


def test_MomentumSGD(answer):
    check(isinstance(answer, type) and issubclass(answer, torch.optim.Optimizer),
          "MomentumSGD must be a subclass of torch.optim.Optimizer.",
          expected="class MomentumSGD(torch.optim.Optimizer)", got=answer,
          hint="Keep the class from the stub and fill in __init__ and step.")
    check(not issubclass(answer, torch.optim.SGD), "MomentumSGD subclasses torch.optim.SGD.",
          expected="class MomentumSGD(torch.optim.Optimizer) with its own step", got=answer.__mro__[1],
          hint="Subclass torch.optim.Optimizer and write step() yourself.")
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    start = {"w": torch.randn(3, 2, generator=gen), "b": torch.randn(2, generator=gen),
             "unused": torch.randn(4, generator=gen)}  # never in the loss: its .grad stays None

    def make(optimizer_class):
        params = {name: value.clone().requires_grad_(True) for name, value in start.items()}
        groups = [{"params": [params["w"]]}, {"params": [params["b"], params["unused"]], "lr": 0.02}]
        return params, optimizer_class(groups, lr=0.05, momentum=0.9, weight_decay=0.1)

    def train(optimizer_class) -> list[dict[str, torch.Tensor]]:
        params, optimizer = make(optimizer_class)
        snapshots = []
        for _ in range(5):
            optimizer.zero_grad()
            ((X @ params["w"] + params["b"] - Y) ** 2).mean().backward()
            optimizer.step()
            snapshots.append({name: p.detach().clone() for name, p in params.items()})
        return snapshots

    with forbidden([(torch.optim.SGD, "__init__", "torch.optim.SGD")], exercise="MomentumSGD",
                   instead="the momentum update written out in step()",
                   hint="In step(): for each group and parameter, v = momentum·v + g; p -= lr·v."):
        mine = train(answer)
    reference = train(torch.optim.SGD)
    for step, (my_params, ref_params) in enumerate(zip(mine, reference), start=1):
        for name in start:
            check_close(my_params[name], ref_params[name],
                        what=f"parameter {name} after step {step} of MomentumSGD (lr 0.05, second group lr 0.02, "
                             "momentum 0.9, weight_decay 0.1)", rtol=1e-5, atol=1e-6,
                        hint="Per step: g = p.grad + weight_decay·p; v = momentum·v + g (v = g the first time); "
                             "p -= group['lr']·v. Use each group's own lr, and skip parameters whose grad is None.")
