"""Exercises for lesson 2, autograd_demo.py: gradients, accumulation, Hessians, custom Functions, JVPs.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_autograd_demo.py     (this lesson, with messages)
    python -m pytest exercises -k newton_step               (one exercise)
Reference solutions: exercises/solutions/autograd_demo.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def vector_jacobian_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """Task: compute vᵀJ, where J is the Jacobian of f at x, with one reverse pass (no Jacobian).

    Section: "Gradients and vector-Jacobian products" in autograd_demo.py (lesson 2).
    Signature: vector_jacobian_product(f, x, v) -> Tensor
    Shapes: x (any shape), v (shape of f(x)) -> shape of x. Entry i is Σ_k v_k ∂f_k/∂x_i.
    Return a detached tensor, and leave the caller's x as it was (do not switch on its requires_grad).
    Rule: one reverse pass, no Jacobian.
    Hint: one backward pass, seeded with v instead of ones, is exactly vᵀJ.
    """
    raise NotImplementedError


def accumulated_gradient(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         X: torch.Tensor, y: torch.Tensor, n_chunks: int) -> None:
    """Task: leave in every parameter's .grad the gradient of the full-batch loss loss_fn(model(X), y), computed
    from micro-batches: split X and y with torch.tensor_split(…, n_chunks) and call backward once per chunk.

    Section: "Gradient accumulation" in autograd_demo.py (lesson 2).
    Signature: accumulated_gradient(model, loss_fn, X, y, n_chunks) -> None (the result is in p.grad)
    Shapes: X (n, ...), y (n, ...); loss_fn returns the mean over the rows it is given (like F.mse_loss).
    The model must never see more than one chunk at a time. Gradients already in .grad before the call
    must not leak into the result.
    Rule: micro-batches: one chunk per forward pass, one backward per chunk.
    Hint: .grad adds up over backward calls; each chunk's share of the full-batch mean is what to add.
    """
    raise NotImplementedError


def newton_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Task: one step of Newton's method for minimising the scalar function f: x_new = x − H(x)⁻¹ ∇f(x).

    Section: "Hessians and Hessian-vector products" in autograd_demo.py (lesson 2).
    Signature: newton_step(f, x) -> Tensor
    Shapes: x (n,) -> x_new (n,), detached, dtype of x; ∇f(x) is (n,) and H(x) is (n, n).
    For a quadratic f(x) = ½ xᵀAx − bᵀx one step lands exactly on the minimum A⁻¹b, from anywhere.
    Hint: Newton's step is the minimum of the local quadratic model: curvature (H) and slope (∇f) together.
    """
    raise NotImplementedError


class Softplus(torch.autograd.Function):
    """Task: softplus(x) = log(1 + exp(x)) as an autograd.Function with a hand-written forward and backward,
    stable for large |x|, that passes torch.autograd.gradcheck.

    Section: "Custom autograd Functions" in autograd_demo.py (lesson 2).
    Signature: Softplus.apply(x) -> Tensor; you write forward(ctx, x) and backward(ctx, grad_output).
    Shapes: x (any shape) -> same shape; backward: grad_output (shape of x) -> gradient w.r.t. x (shape of x).
    Rule: your own forward and backward: no F.softplus.
    Hint: forward computes and saves what backward needs; backward multiplies the local derivative by grad_output
    (the chain rule).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def jacobian_vector_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """Task: compute J v, where J is the Jacobian of f at x, with two reverse passes and without building J
    (no torch.func.jvp/jacrev/jacfwd and no torch.autograd.functional).

    Section: "Jacobians, four ways" in autograd_demo.py (lesson 2).
    Signature: jacobian_vector_product(f, x, v) -> Tensor
    Shapes: x (n,), v (n,) -> (m,) for f: R^n -> R^m. Entry k is Σ_i ∂f_k/∂x_i v_i. Return it detached.
    Rule: exactly two reverse passes: no torch.func, torch.autograd.functional or forward-mode AD.
    Hint: uᵀJ is linear in u; differentiate it with respect to u, and J v comes out.
    """
    raise NotImplementedError
