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
    Rule: no built-in Vandermonde: build it with broadcasting.
    Hint: a column of x against a row of exponents: broadcasting does all the powers in one operation.
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
    Rule: a view of x, not a copy.
    Hint: a window is a view with two strides: one to the next window, one to the next element.
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
    Rule: the broadcasting rule by hand: no torch.broadcast_shapes, NumPy's helpers or tensors.
    Hint: line the two shapes up on the right; each position either agrees, or one side is 1.
    """
    raise NotImplementedError


def stable_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Task: softmax of `x` along `dim`, exp(x) / sum(exp(x)), computed so that large inputs do not overflow,
    without torch.softmax or torch.nn.functional.softmax.

    Section: "Broadcasting" in tensor_basics.py (lesson 1).
    Signature: stable_softmax(x, dim) -> Tensor
    Shapes: x (...) floating point -> same shape and dtype; the values along `dim` are positive and sum to 1.
    Rule: no softmax or log_softmax from torch: exp and sum written out.
    Hint: softmax does not change when you subtract the same number from every entry along `dim`.
    """
    raise NotImplementedError


def cholesky_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Task: solve A X = B for a symmetric positive-definite A with its Cholesky factor A = L Lᵀ and two
    triangular solves; do not call torch.linalg.solve, torch.linalg.inv, torch.cholesky_solve or lstsq.

    Section: "Linear algebra with torch.linalg, in float64 and float32" in tensor_basics.py (lesson 1).
    Signature: cholesky_solve(A, B) -> Tensor
    Shapes: A (n, n), B (n, k) -> X (n, k), dtype of A.
    Rule: the Cholesky factor and two triangular solves: no general solver or inverse.
    Hint: A = L Lᵀ turns one hard solve into two easy triangular ones.
    """
    raise NotImplementedError
