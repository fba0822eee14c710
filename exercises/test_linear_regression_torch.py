"""Checks for exercises/linear_regression_torch.py, each against autograd, NumPy or torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import torch

from exercises.checks import check, check_close, check_no_grad_history
from exercises.rules import reference

LESSON = "linear_regression_torch"


def _regression_data(n: int, f: int, seed: int, dtype=torch.float64):
    """Features off-centre (mean 3) and a non-zero intercept, so a fit without bias visibly fails."""
    gen = torch.Generator().manual_seed(seed)
    X = 2 * torch.randn(n, f, generator=gen, dtype=dtype) + 3
    w_true = torch.randn(f, generator=gen, dtype=dtype)
    y = X @ w_true + 4.0 + 0.3 * torch.randn(n, generator=gen, dtype=dtype)
    return X, y


MSE_SCALES = {0.5: "half the gradient: the factor 2 from differentiating the square is missing",
              20.0: "n = 20 times the gradient: the 1/n of the mean is missing (the gradient of the summed loss)",
              -1.0: "the residual taken as target − prediction"}


def test_mse_gradients(answer):
    X, y = _regression_data(20, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, generator=gen, dtype=torch.float64)
    b = torch.tensor(0.5, dtype=torch.float64)
    with reference():
        w_leaf, b_leaf = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        loss = ((X @ w_leaf + b_leaf - y) ** 2).mean()
        expected_w, expected_b = torch.autograd.grad(loss, (w_leaf, b_leaf))  # the reference: autograd
    result = answer(X, y, w, b)
    check(isinstance(result, tuple) and len(result) == 2, "mse_gradients should return a pair (grad_w, grad_b).",
          expected="(grad_w of shape (3,), grad_b of shape ())", got=result, hint="Return both gradients.")
    grad_w, grad_b = result
    hint = "L is the mean of the squared residuals r = X w + b − y (prediction minus target)."
    check_close(grad_w, expected_w, what="grad_w from mse_gradients(X, y, w, b), n = 20 rows", rtol=1e-10,
                atol=1e-12, hint=hint, scales=MSE_SCALES)
    check_close(grad_b, expected_b, what="grad_b from mse_gradients(X, y, w, b), n = 20 rows", rtol=1e-10,
                atol=1e-12, hint=hint + " grad_b is a 0-d tensor: a sum, not a vector.", scales=MSE_SCALES)


def test_least_squares(answer):
    X, y = _regression_data(50, 3, seed=0)
    augmented = np.hstack([X.numpy(), np.ones((50, 1))])
    solution = np.linalg.lstsq(augmented, y.numpy(), rcond=None)[0]  # (f + 1,): weights, then the intercept
    through_origin = torch.from_numpy(np.linalg.lstsq(X.numpy(), y.numpy(), rcond=None)[0])
    w, b = answer(X, y)
    hint = "The intercept is fitted together with the weights, not afterwards. With off-centre features, b is not " \
           "the mean of y."
    check_close(w, torch.from_numpy(solution[:-1]), what="w from least_squares(X, y) (features with mean 3, "
                "intercept 4)", rtol=1e-8, atol=1e-9, hint=hint,
                looks_like={"the fit through the origin (no intercept): X has no column of ones": through_origin})
    check_close(b, torch.tensor(solution[-1]), what="b from least_squares(X, y)", rtol=1e-8, atol=1e-9,
                hint=hint + " b is a 0-d tensor.",
                looks_like={"b = mean(y): the intercept of centred data needs − mean(X)·w as well":
                            y.mean(), "b = 0: the fit goes through the origin": torch.tensor(0.0, dtype=y.dtype)})
    X32, y32 = X.float(), y.float()
    w32, b32 = answer(X32, y32)
    check_close(w32, torch.from_numpy(solution[:-1]).float(), what="w from least_squares(float32 X, float32 y)",
                rtol=1e-3, atol=1e-3, hint="Keep X's dtype: make the ones column with dtype=X.dtype.")


def _numpy_gradient_descent(X: np.ndarray, y: np.ndarray, lr: float, epochs: int, *, keep: bool = False,
                            summed: bool = False) -> tuple[np.ndarray, float]:
    """The reference: float64 gradient descent with the hand-derived MSE gradient; `keep` adds every earlier
    gradient to the new one (never clearing .grad), `summed` differentiates the summed loss."""
    w, b = np.zeros(X.shape[1]), 0.0
    grad_w, grad_b = np.zeros_like(w), 0.0
    scale = 2 if summed else 2 / len(y)
    for _ in range(epochs):
        residual = X @ w + b - y
        new_w, new_b = scale * X.T @ residual, scale * residual.sum()
        grad_w, grad_b = (grad_w + new_w, grad_b + new_b) if keep else (new_w, new_b)
        w, b = w - lr * grad_w, b - lr * grad_b
    return w, b


def test_fit_linear_gd(answer):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen)  # float32, standardised: lr = 0.1 is stable
    y = X @ torch.tensor([1.5, -2.0, 0.5]) + 0.7 + 0.1 * torch.randn(40, generator=gen)
    X64, y64 = X.double().numpy(), y.double().numpy()
    for epochs in (0, 1, 30):
        w, b = answer(X, y, 0.1, epochs)
        w_ref, b_ref = _numpy_gradient_descent(X64, y64, 0.1, epochs)
        variants = {"the gradients were never cleared: each step used the sum of all gradients so far":
                        _numpy_gradient_descent(X64, y64, 0.1, epochs, keep=True),
                    f"one update too many ({epochs + 1} instead of {epochs})":
                        _numpy_gradient_descent(X64, y64, 0.1, epochs + 1),
                    "the summed loss instead of the mean: every step n = 40 times too long":
                        _numpy_gradient_descent(X64, y64, 0.1, epochs, summed=True)}
        hint = "Start from zeros and take exactly `epochs` steps on the mean squared error."
        check_close(w, torch.from_numpy(w_ref).float(), what=f"w after fit_linear_gd(X, y, lr=0.1, epochs={epochs})",
                    rtol=1e-4, atol=1e-5, hint=hint,
                    looks_like={text: torch.from_numpy(v[0]).float() for text, v in variants.items()})
        check_close(b, torch.tensor(b_ref, dtype=torch.float32),
                    what=f"b after fit_linear_gd(X, y, lr=0.1, epochs={epochs})", rtol=1e-4, atol=1e-5,
                    hint=hint + " b is a 0-d tensor.",
                    looks_like={text: torch.tensor(v[1], dtype=torch.float32) for text, v in variants.items()})
        check_no_grad_history(w, what=f"w from fit_linear_gd(..., epochs={epochs})")


def test_MomentumSGD(answer):
    check(isinstance(answer, type) and issubclass(answer, torch.optim.Optimizer),
          "MomentumSGD must be a subclass of torch.optim.Optimizer.",
          expected="class MomentumSGD(torch.optim.Optimizer)", got=answer,
          hint="Keep the class from the stub and fill in __init__ and step.")
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    start = {"w": torch.randn(3, 2, generator=gen), "b": torch.randn(2, generator=gen),
             "unused": torch.randn(4, generator=gen)}  # never in the loss: its .grad stays None

    def make(optimizer_class):
        params = {name: value.clone().requires_grad_(True) for name, value in start.items()}
        groups = [{"params": [params["w"]]}, {"params": [params["b"], params["unused"]], "lr": 0.02}]
        return params, optimizer_class(groups, lr=0.05, momentum=0.9, weight_decay=0.1)

    def train(optimizer_class, **variant) -> list[dict[str, torch.Tensor]]:
        params, optimizer = make(optimizer_class) if not variant else make(
            lambda groups, **settings: _SGDVariant(groups, **settings, **variant))
        snapshots = []
        for _ in range(5):
            optimizer.zero_grad()
            ((X @ params["w"] + params["b"] - Y) ** 2).mean().backward()
            optimizer.step()
            snapshots.append({name: p.detach().clone() for name, p in params.items()})
        return snapshots

    mine = train(answer)
    with reference():
        expected = train(torch.optim.SGD)
        variants = {"the buffer is an average, v = m·v + (1 − m)·g: torch's SGD adds the full gradient":
                        train(None, dampened=True),
                    "the buffer is an average from the first step on, v = (1 − m)·g, then m·v + (1 − m)·g: torch's "
                    "SGD adds the full gradient": train(None, dampened=True, dampened_first=True),
                    "weight decay added after the momentum buffer instead of to the gradient before it":
                        train(None, decay_after=True),
                    "the default lr for every group: the second group's own lr (0.02) was ignored":
                        train(None, one_lr=True)}
    for step, (my_params, ref_params) in enumerate(zip(mine, expected), start=1):
        for name in start:
            check_close(my_params[name], ref_params[name],
                        what=f"parameter {name} after step {step} of MomentumSGD (lr 0.05, second group lr 0.02, "
                             "momentum 0.9, weight_decay 0.1)", rtol=1e-5, atol=1e-6,
                        looks_like={text: run[step - 1][name] for text, run in variants.items()},
                        hint="Compare your update with torch.optim.SGD's documented one, step by step.")


class _SGDVariant(torch.optim.Optimizer):
    """The check's model of three common slips in a momentum optimizer (for the diagnosis only)."""

    def __init__(self, params, lr, momentum, weight_decay, dampened=False, decay_after=False, one_lr=False,
                 dampened_first=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.default_lr, self.slips = lr, (dampened, decay_after, one_lr)
        self.first_scale = 1 - momentum if dampened_first else 1

    @torch.no_grad()
    def step(self):
        dampened, decay_after, one_lr = self.slips
        for group in self.param_groups:
            m, wd = group["momentum"], group["weight_decay"]
            lr = self.default_lr if one_lr else group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if decay_after else p.grad + wd * p
                v = self.state[p].get("v")
                v = self.first_scale * g if v is None else m * v + (1 - m if dampened else 1) * g
                self.state[p]["v"] = v
                p -= lr * (v + wd * p if decay_after else v)
