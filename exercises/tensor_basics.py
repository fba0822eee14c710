"""Exercises for lesson 1, tensor_basics.py: creating, viewing, broadcasting, reducing, solving.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_tensor_basics.py      (this lesson, with messages)
    python -m pytest exercises -k sliding_windows           (one exercise)
Reference solutions: exercises/solutions/tensor_basics.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def vandermonde(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Task: build the Vandermonde matrix of `x`: column j holds x**j, for j = 0, 1, ..., degree.

    Section: "Broadcasting" in tensor_basics.py (lesson 1).
    Signature: vandermonde(x, degree) -> Tensor
    Shapes: x (n,) floating point -> (n, degree + 1), same dtype and device as x.
    Example: vandermonde(torch.tensor([2., 3.]), 2) -> [[1., 2., 4.], [1., 3., 9.]]
    Hint: make the powers with `torch.arange(degree + 1, device=x.device)`, then let broadcasting
    raise the column x.unsqueeze(1), shape (n, 1), to the row of powers, shape (degree + 1,).
    """
    raise NotImplementedError


def sliding_windows(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """Task: return every window of `size` consecutive elements of `x`, starting every `step` elements,
    as a view that shares memory with `x` (no copy).

    Section: "Memory sharing" in tensor_basics.py (lesson 1).
    Signature: sliding_windows(x, size, step) -> Tensor
    Shapes: x (n,) -> (n_windows, size) with n_windows = (n - size) // step + 1; row i is x[i*step : i*step + size].
    Raise ValueError (naming the argument) if size < 1, step < 1 or size > n.
    Example: sliding_windows(torch.arange(6), 3, 2) -> [[0, 1, 2], [2, 3, 4]]
    Hint: `x.unfold(0, size, step)` does exactly this; or build it yourself with
    `x.as_strided((n_windows, size), (step * x.stride(0), x.stride(0)), x.storage_offset())`.
    Stacking slices with torch.stack copies, and the check looks for a view.
    """
    raise NotImplementedError


def broadcast_shape(shape_a: Sequence[int], shape_b: Sequence[int]) -> tuple[int, ...]:
    """Task: the shape that tensors of shapes `shape_a` and `shape_b` broadcast to, by the broadcasting rule,
    without creating tensors and without torch.broadcast_shapes.

    Section: "Broadcasting" in tensor_basics.py (lesson 1).
    Signature: broadcast_shape(shape_a, shape_b) -> tuple[int, ...]
    Shapes: two sequences of non-negative ints (possibly empty) -> a tuple of ints. Raise ValueError naming
    both shapes when they do not broadcast.
    Example: broadcast_shape((8, 1, 6), (7, 1)) -> (8, 7, 6); broadcast_shape((3,), (4,)) -> ValueError
    Hint: line the shapes up from the right (pad the shorter one with leading 1s); per position the sizes
    must be equal or one of them 1, and the result takes the other. Size 0 counts like any size other than 1.
    """
    raise NotImplementedError


def stable_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Task: softmax of `x` along `dim`, exp(x) / sum(exp(x)), computed so that large inputs do not overflow,
    without torch.softmax or torch.nn.functional.softmax.

    Section: "Broadcasting" in tensor_basics.py (lesson 1).
    Signature: stable_softmax(x, dim) -> Tensor
    Shapes: x (...) floating point -> same shape and dtype; the values along `dim` are positive and sum to 1.
    Hint: softmax does not change when you subtract a constant along `dim`: subtract x.amax(dim, keepdim=True)
    first, so exp() sees numbers ≤ 0. keepdim=True keeps the reduced dimension (size 1), so the max
    broadcasts back against x; without it the shapes no longer line up.
    """
    raise NotImplementedError


def cholesky_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Task: solve A X = B for a symmetric positive-definite A with its Cholesky factor A = L Lᵀ and two
    triangular solves; do not call torch.linalg.solve, torch.linalg.inv, torch.cholesky_solve or lstsq.

    Section: "Linear algebra with torch.linalg, in float64 and float32" in tensor_basics.py (lesson 1).
    Signature: cholesky_solve(A, B) -> Tensor
    Shapes: A (n, n), B (n, k) -> X (n, k), dtype of A.
    Hint: L = torch.linalg.cholesky(A); L Lᵀ X = B splits into L Y = B (forward substitution) and
    Lᵀ X = Y (back substitution): `torch.linalg.solve_triangular(L, B, upper=False)`, then the same
    with L.mT and upper=True. Mind which factor goes with which solve.
    """
    raise NotImplementedError
