"""Exercises for lesson 3, linear_regression_torch.py: gradients by hand, the exact answer, training, optimizers.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_linear_regression_torch.py   (this lesson, with messages)
    python -m pytest exercises -k least_squares             (one exercise)
Reference solutions: exercises/solutions/linear_regression_torch.py.
"""

from __future__ import annotations

import torch


def mse_gradients(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                  b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task: the gradient of the mean squared error L(w, b) = (1/n) Σᵢ (xᵢ·w + b − yᵢ)², derived by hand:
    no autograd (no .backward(), no torch.autograd).

    Section: "Solver 1: NumPy with the gradient derived by hand" in linear_regression_torch.py (lesson 3).
    Signature: mse_gradients(X, y, w, b) -> (grad_w, grad_b)
    Shapes: X (n, f), y (n,), w (f,), b () -> grad_w (f,), grad_b () (a 0-d tensor), dtype of X.
    Rule: no autograd: the gradient comes from the formula you derive.
    Hint: differentiate the square (a factor 2) and the mean (a factor 1/n) of the residuals.
    """
    raise NotImplementedError


def least_squares(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task: the exact least-squares fit of y ≈ X w + b, intercept b included, in closed form (no iterations).

    Section: "The problem and its exact answer" in linear_regression_torch.py (lesson 3).
    Signature: least_squares(X, y) -> (w, b)
    Shapes: X (n, f), y (n,) -> w (f,), b () (a 0-d tensor), dtype of X.
    Hint: the intercept is one more weight, on a feature that is always 1.
    """
    raise NotImplementedError


def fit_linear_gd(X: torch.Tensor, y: torch.Tensor, lr: float, epochs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Task: full-batch gradient descent on the mean squared error with autograd, starting from w = 0, b = 0:
    `epochs` steps of w ← w − lr ∂L/∂w, b ← b − lr ∂L/∂b. No nn, no torch.optim.

    Section: "Solver 2: PyTorch tensors and autograd, no nn" in linear_regression_torch.py (lesson 3).
    Signature: fit_linear_gd(X, y, lr, epochs) -> (w, b)
    Shapes: X (n, f), y (n,) -> w (f,), b () (a 0-d tensor), detached, dtype of X. epochs = 0 returns zeros.
    Rule: no torch.optim and no nn: the update written out.
    Hint: .grad adds up over backward calls; a step is loss, backward, update, clear.
    """
    raise NotImplementedError


class MomentumSGD(torch.optim.Optimizer):
    """Task: SGD with momentum and weight decay as a torch.optim.Optimizer that takes exactly the steps of
    torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay).

    Section: "A custom optimizer" in linear_regression_torch.py (lesson 3).
    Signature: MomentumSGD(params, lr, momentum=0.9, weight_decay=0.0); opt.step(); opt.zero_grad() (inherited)
    Shapes: every parameter p and its p.grad have the same shape; keep one velocity buffer of that shape per
    parameter in self.state[p].
    For each parameter with a gradient: g = p.grad + weight_decay · p; v = momentum · v + g (v = g on the
    first step); p = p − lr · v.
    Rule: your own step: nothing from torch.optim.SGD.
    Hint: per parameter, a velocity that remembers past gradients; weight decay joins the gradient first.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        raise NotImplementedError

    def step(self, closure=None):
        raise NotImplementedError
