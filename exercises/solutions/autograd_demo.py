"""Reference solutions for exercises/autograd_demo.py (the docstrings there state each task)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def vector_jacobian_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """One reverse pass seeded with v."""
    x = x.detach().requires_grad_(True)  # a new leaf: the caller's tensor stays untouched
    (vjp,) = torch.autograd.grad(f(x), x, grad_outputs=v)
    return vjp


def accumulated_gradient(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         X: torch.Tensor, y: torch.Tensor, n_chunks: int) -> None:
    """Sum of chunk-mean losses, each weighted by its share of the rows."""
    model.zero_grad(set_to_none=True)
    n = len(X)
    for X_chunk, y_chunk in zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, n_chunks)):
        # mean over the chunk × (chunk rows / n) = this chunk's part of the mean over all n rows
        (loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / n)).backward()


def newton_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x − H⁻¹g, solving instead of inverting."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(f(x), x)  # (n,)
    hessian = torch.autograd.functional.hessian(f, x.detach())  # (n, n), reverse over reverse
    return x.detach() - torch.linalg.solve(hessian, gradient)


class Softplus(torch.autograd.Function):
    """Stable forward; backward sigmoid(x) · grad_output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))  # exp(−|x|) ≤ 1: no overflow

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(x)


def jacobian_vector_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """Differentiate the VJP uᵀJ with respect to u, seeded with v."""
    x = x.detach().requires_grad_(True)
    y = f(x)  # (m,)
    u = torch.zeros_like(y, requires_grad=True)  # any value works: uᵀJ is linear in u
    (vjp,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True)  # (n,) = uᵀJ, a function of u
    (jvp,) = torch.autograd.grad(vjp, u, grad_outputs=v)  # ∂(uᵀJ v)/∂u = J v, (m,)
    return jvp
