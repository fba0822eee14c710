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
    Hint: work on a new leaf, x_copy = x.detach().requires_grad_(), with y = f(x_copy); then either
    y.backward(gradient=v) and read x_copy.grad, or torch.autograd.grad(y, x_copy, grad_outputs=v).
    Summing y first would give 1ᵀJ, not vᵀJ.
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
    Hint: .grad adds up over backward calls. A chunk's mean loss must be weighted by its share of the rows,
    len(chunk) / n: the chunks of tensor_split can differ in size (10 rows in 3 chunks: 4, 3, 3), so
    dividing every chunk by n_chunks is not the same. Clear old gradients first (model.zero_grad()).
    """
    raise NotImplementedError


def newton_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Task: one step of Newton's method for minimising the scalar function f: x_new = x − H(x)⁻¹ ∇f(x).

    Section: "Hessians and Hessian-vector products" in autograd_demo.py (lesson 2).
    Signature: newton_step(f, x) -> Tensor
    Shapes: x (n,) -> x_new (n,), detached, dtype of x; ∇f(x) is (n,) and H(x) is (n, n).
    For a quadratic f(x) = ½ xᵀAx − bᵀx one step lands exactly on the minimum A⁻¹b, from anywhere.
    Hint: torch.autograd.grad(f(x), x) gives the gradient (x must require grad) and
    torch.autograd.functional.hessian(f, x) the Hessian (or differentiate the gradient again, built with
    create_graph=True). Solve H d = g with torch.linalg.solve rather than inverting H, and mind the sign.
    """
    raise NotImplementedError


class Softplus(torch.autograd.Function):
    """Task: softplus(x) = log(1 + exp(x)) as an autograd.Function with a hand-written forward and backward,
    stable for large |x|, that passes torch.autograd.gradcheck.

    Section: "Custom autograd Functions" in autograd_demo.py (lesson 2).
    Signature: Softplus.apply(x) -> Tensor; you write forward(ctx, x) and backward(ctx, grad_output).
    Shapes: x (any shape) -> same shape; backward: grad_output (shape of x) -> gradient w.r.t. x (shape of x).
    Hint: log(1 + exp(x)) = max(x, 0) + log1p(exp(−|x|)) never overflows (exp(100) is inf in float32).
    The derivative is sigmoid(x) = 1 / (1 + exp(−x)); torch.sigmoid computes it stably. Save x with
    ctx.save_for_backward, and multiply by grad_output (the chain rule).
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
    Hint: the double-backward trick. For a dummy u of f(x)'s shape with requires_grad=True,
    g(u) = uᵀJ = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True) is linear in u,
    and the gradient of g(u)·v with respect to u is J v. Mind: J v is not vᵀJ unless J is symmetric.
    """
    raise NotImplementedError
