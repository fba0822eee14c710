"""Reference solutions for exercises/tensor_basics.py (the docstrings there state each task)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def vandermonde(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Columns x**0 … x**degree."""
    powers = torch.arange(degree + 1, device=x.device)  # (degree + 1,)
    return x.unsqueeze(1) ** powers  # (n, 1) ** (degree + 1,) -> (n, degree + 1), dtype of x


def sliding_windows(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """unfold: a strided view, no copy."""
    if size < 1 or step < 1:
        raise ValueError(f"size={size} and step={step} must both be at least 1")
    if size > len(x):
        raise ValueError(f"size={size} is longer than x (length {len(x)})")
    return x.unfold(0, size, step)  # (n_windows, size), shares x's storage


def broadcast_shape(shape_a: Sequence[int], shape_b: Sequence[int]) -> tuple[int, ...]:
    """The broadcasting rule, right-aligned."""
    ndim = max(len(shape_a), len(shape_b))
    padded_a = (1,) * (ndim - len(shape_a)) + tuple(shape_a)
    padded_b = (1,) * (ndim - len(shape_b)) + tuple(shape_b)
    result = []
    for size_a, size_b in zip(padded_a, padded_b):
        if size_a != size_b and 1 not in (size_a, size_b):
            raise ValueError(f"shapes {tuple(shape_a)} and {tuple(shape_b)} do not broadcast: "
                             f"size {size_a} vs size {size_b} (sizes must be equal or 1)")
        result.append(size_b if size_a == 1 else size_a)
    return tuple(result)


def stable_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift by the max so exp never overflows."""
    shifted = x - x.amax(dim=dim, keepdim=True)  # (...) with a size-1 `dim` broadcast back; every value ≤ 0
    exp = shifted.exp()
    return exp / exp.sum(dim=dim, keepdim=True)


def cholesky_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """L Y = B, then Lᵀ X = Y."""
    L = torch.linalg.cholesky(A)  # (n, n), lower triangular
    Y = torch.linalg.solve_triangular(L, B, upper=False)  # (n, k)
    return torch.linalg.solve_triangular(L.mT, Y, upper=True)  # (n, k)
