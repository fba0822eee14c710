"""Checks for exercises/tensor_basics.py, each against NumPy, torch built-ins or a closed form."""

from __future__ import annotations

import numpy as np
import torch

from exercises.checks import broken_rule, check_close, check_equal, check_raises_value_error, fail
from exercises.rules import reference

LESSON = "tensor_basics"


def test_vandermonde(answer):
    x = torch.tensor([-1.5, 0.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    for degree in (3, 0):
        with reference():
            expected = torch.from_numpy(np.vander(x.numpy(), degree + 1, increasing=True))  # (n, degree + 1)
        check_close(answer(x, degree), expected, what=f"vandermonde(x, degree={degree}) with x = {x.tolist()}",
                    rtol=1e-12, atol=1e-12, looks_like={"the powers in decreasing order": expected.flip(-1)},
                    hint="Column j is x**j for j = 0 … degree: degree + 1 columns, and column 0 is all ones.")
    x32 = torch.linspace(-1, 1, 4)
    with reference():
        expected32 = torch.from_numpy(np.vander(x32.numpy(), 3, increasing=True)).to(torch.float32)
    check_close(answer(x32, 2), expected32, what="vandermonde(float32 x, degree=2)", rtol=1e-6, atol=1e-6,
                hint="The result keeps x's dtype; float32 in, float32 out.")


def test_sliding_windows(answer):
    # (n, size, step, x's stride): with a remainder, exact fit, one window, and an x that is itself a strided view
    cases = [(10, 3, 2, 1), (9, 3, 3, 1), (7, 7, 1, 1), (6, 1, 4, 1), (8, 3, 2, 3)]
    for n, size, step, stride in cases:
        x = (torch.arange(n * stride, dtype=torch.float32) * 1.5)[::stride]  # stride 3: every third element
        expected = torch.from_numpy(np.lib.stride_tricks.sliding_window_view(x.numpy(), size)[::step].copy())
        got = answer(x, size, step)
        what = f"sliding_windows(x of length {n}" + (f", a view with stride {stride}" if stride > 1 else "") + (
            f", size={size}, step={step})")
        check_close(got, expected, what=what, rtol=0, atol=0,
                    hint="The last window starts at ((n − size) // step) · step: count the windows again." if
                    stride == 1 else "x's elements are x.stride(0) apart in memory, not 1.")
        if got.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            broken_rule("sliding_windows", f"sliding_windows(x of length {n}, size={size}, step={step}) returned a "
                        "new tensor with its own storage, a copy of x's values",
                        hint="torch.stack and torch.cat copy; unfold and as_strided return views.")
    x = torch.arange(5.0)
    for size, step, argument in [(6, 1, "size"), (0, 1, "size"), (2, 0, "step")]:
        check_raises_value_error(lambda size=size, step=step: answer(x, size, step), argument=argument,
                                 what=f"sliding_windows(x of length 5, size={size}, step={step})",
                                 hint="Check size >= 1, step >= 1 and size <= len(x) first, and raise ValueError "
                                      "naming the argument otherwise.")


def _random_shape_pairs(count: int, seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs that mostly broadcast (sizes from one base shape, some replaced by 1 or dropped), some that do not."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        base = tuple(int(s) for s in rng.integers(0, 4, size=rng.integers(0, 5)))
        a = tuple(1 if rng.random() < 0.3 else s for s in base)[rng.integers(0, len(base) + 1):]
        b = tuple(1 if rng.random() < 0.3 else (s if rng.random() < 0.9 else s + 2) for s in base)
        pairs.append((a, b) if rng.random() < 0.5 else (b, a))
    return pairs


def test_broadcast_shape(answer):
    fixed = [((8, 1, 6), (7, 1)), ((), (3,)), ((5,), ()), ((2, 1), (1, 3)), ((0,), (1,)), ((1, 0), (4, 1)),
             ((3,), (4,)), ((0,), (3,)), ((2, 3), (3, 2)), ((4, 1, 3), (2, 1))]
    for shape_a, shape_b in fixed + _random_shape_pairs(300, seed=0):
        with reference():
            try:
                expected = tuple(int(size) for size in np.broadcast_shapes(shape_a, shape_b))
            except ValueError:
                expected = None
        call = f"broadcast_shape({shape_a}, {shape_b})"
        if expected is None:
            try:
                got = answer(shape_a, shape_b)
            except ValueError:
                continue
            larger = tuple(max(a, b) for a, b in zip(_padded(shape_a, shape_b), _padded(shape_b, shape_a)))
            fail(f"{call} should raise ValueError: the shapes do not broadcast.", expected="ValueError",
                 got=got, hint="Two sizes that differ and are both not 1 cannot broadcast (0 vs 3 included).",
                 details=["Looks like: yours took the larger size where the sizes conflict."] if got == larger else [])
        try:
            got = answer(shape_a, shape_b)
        except ValueError as error:
            left = _left_aligned(shape_a, shape_b)
            fail(f"{call} raised ValueError, but these shapes do broadcast.", expected=expected, got=str(error),
                 hint="A size of 1 stretches to any size (also to 0); missing leading sizes count as 1.",
                 details=[] if left is not None else ["Looks like: the shapes lined up on the left, where they "
                                                      "do not fit."])
        check_equal(tuple(got) if isinstance(got, list) else got, expected, what=call,
                    looks_like={"the shapes lined up on the left instead of the right":
                                _left_aligned(shape_a, shape_b),
                                "the larger size at each position: but 1 stretches to the other size, even to 0":
                                tuple(max(a, b) for a, b in zip(_padded(shape_a, shape_b), _padded(shape_b, shape_a)))},
                    hint="Missing leading sizes count as 1, and 1 stretches to the other size (also to 0).")


def _padded(shape: tuple[int, ...], other: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (len(other) - len(shape)) + tuple(shape)


def _left_aligned(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> tuple[int, ...] | None:
    """What lining the shapes up on the left gives (the usual mistake), None where that does not fit."""
    ndim = max(len(shape_a), len(shape_b))
    a, b = tuple(shape_a) + (1,) * (ndim - len(shape_a)), tuple(shape_b) + (1,) * (ndim - len(shape_b))
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return tuple(y if x == 1 else x for x, y in zip(a, b))


LARGE_SOFTMAX_HINT = ("In float32 exp(1000) overflows to inf, and inf / inf is NaN; exp(−1000) underflows to 0: what "
                      "keeps exp's arguments near 0?")


def test_stable_softmax(answer):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    large = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])  # float32: exp(1000) = inf
    cases = [(x, -1, "x (4, 6), dim=-1"), (x, 0, "x (4, 6), dim=0"),
             (torch.randn(2, 3, 5, generator=gen, dtype=torch.float64), 1, "x (2, 3, 5), dim=1"),
             (large, -1, "large float32 values [[1000, 1001, 999], [-1000, -1002, -1001]], dim=-1")]
    with reference():
        expected = [torch.softmax(t.double(), dim=dim).to(t.dtype) for t, dim, _ in cases]
        over_all = [(t - t.amax(dim=dim, keepdim=True)).double().exp() for t, dim, _ in cases]
        over_all = [(e / e.sum()).to(t.dtype) for e, (t, _, _) in zip(over_all, cases)]
    got = [answer(t, dim) for t, dim, _ in cases]
    for (tensor, _, label), got_one, expected_one, all_one in zip(cases, got, expected, over_all):
        large_case = tensor is large
        # float32: torch.testing.assert_close's own tolerance (exp(x − logsumexp) is as right as the max shift)
        check_close(got_one, expected_one, what=f"stable_softmax({label})", rtol=1.3e-6 if large_case else 1e-10,
                    atol=1e-5 if large_case else 1e-12,
                    looks_like={"normalised by the sum over every element, not along `dim`": all_one},
                    hint=LARGE_SOFTMAX_HINT if large_case else "The values along `dim` must sum to 1, for every "
                                                               "position of the other dimensions.")


def test_cholesky_solve(answer):
    gen = torch.Generator().manual_seed(0)
    n, k = 6, 3
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = M @ M.mT + n * torch.eye(n, dtype=torch.float64)  # symmetric positive definite, well conditioned
    B = torch.randn(n, k, generator=gen, dtype=torch.float64)
    with reference():
        expected = torch.from_numpy(np.linalg.solve(A.numpy(), B.numpy()))
        L = torch.from_numpy(np.linalg.cholesky(A.numpy()))
        forward = torch.linalg.solve_triangular(L, B, upper=False)  # Y = L⁻¹B
        mistakes = {"you stopped after the first triangular solve: Y = L⁻¹B, not X": forward,
                    "both solves used L: L⁻¹L⁻¹B; the second one needs Lᵀ (L.mT, upper=True)":
                        torch.linalg.solve_triangular(L, forward, upper=False)}
    got = answer(A, B)
    check_close(got, expected, what="cholesky_solve(A, B) for a 6×6 SPD A and B of shape (6, 3)",
                rtol=1e-9, atol=1e-10, looks_like=mistakes,
                hint="A X = B with A = L Lᵀ is two triangular systems, one with L and one with Lᵀ.")

