"""Checks for exercises/autograd_demo.py, each against torch.autograd.functional, NumPy or a closed form.

The references avoid torch.func transforms: their first use imports torch._dynamo, seconds of start-up.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian

from exercises.checks import broken_rule, check, check_close, check_no_grad_history
from exercises.rules import reference, watching

LESSON = "autograd_demo"


def _matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_vector_jacobian_product(answer):
    W = _matrix(3, 5, seed=0)

    def f(t):  # R^5 -> R^3, a non-square Jacobian
        return torch.sin(W @ t) * t[:3]

    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    with watching(count_reverse_passes=True) as passes:
        got = answer(f, x, v)
    with reference():
        J = jacobian(f, x)  # (3, 5)
    expected = v @ J
    check_close(got, expected, what="vector_jacobian_product(f, x, v) for f: R^5 -> R^3", rtol=1e-10, atol=1e-12,
                looks_like={"1ᵀJ, the column sums of J, whatever v is: the output was summed before backward":
                            J.sum(0)},
                hint="The backward pass must be seeded with v.")
    if passes.reverse_passes > 1:
        broken_rule("vector_jacobian_product", f"{passes.reverse_passes} reverse passes for one call")
    check(not x.requires_grad, "vector_jacobian_product changed the caller's x: x.requires_grad is now True.",
          expected="x untouched (requires_grad=False)", got="x.requires_grad=True",
          hint="The caller's tensor must come back as it was: differentiate a new leaf made from it.")
    check_no_grad_history(got, what="vector_jacobian_product(f, x, v)")

    def g(t):  # R^{2×3} -> R^3: the result must come back in x's shape
        return (t**2).sum(0) * t[0]

    x2 = _matrix(2, 3, seed=1)
    v2 = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
    with reference():
        expected2 = torch.einsum("o,oij->ij", v2, jacobian(g, x2))
    check_close(answer(g, x2, v2), expected2, what="vector_jacobian_product(g, x, v) for x of shape (2, 3)",
                rtol=1e-10, atol=1e-12, hint="The result has x's shape: one number per entry of x.")


def test_accumulated_gradient(answer):
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2, dtype=torch.float64)
    X = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}

    def gradients(weights) -> dict[str, torch.Tensor]:
        """The gradient of Σ weight_k · (mean loss of chunk k), chunks from tensor_split(·, 3)."""
        chunks = zip(torch.tensor_split(X, 3), torch.tensor_split(y, 3), weights)
        loss = sum(weight * F.mse_loss(torch.func.functional_call(model, params, (X_k,)), y_k)
                   for X_k, y_k, weight in chunks)
        return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))

    with reference():
        expected = gradients([4 / 10, 3 / 10, 3 / 10])  # = the gradient of the mean loss over all 10 rows
        variants = {"each chunk's mean loss counted in full: about n_chunks = 3 times too large; weight each by its "
                    "share of the rows": gradients([1, 1, 1]),
                    "each chunk weighted 1 / n_chunks: right only for equal chunks, and these are 4, 3 and 3 rows":
                        gradients([1 / 3, 1 / 3, 1 / 3])}
        stale = {name: g + 100.0 for name, g in expected.items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # stale gradients from "an earlier step"
    rows_seen = []
    handle = model.register_forward_pre_hook(lambda module, inputs: rows_seen.append(len(inputs[0])))
    try:
        with watching(count_reverse_passes=True) as passes:
            result = answer(model, F.mse_loss, X, y, 3)
    finally:
        handle.remove()
    check(result is None, "accumulated_gradient should leave its result in p.grad and return None.",
          expected="None", got=type(result).__name__, hint="The gradients land in p.grad.")
    if not rows_seen or max(rows_seen) > 4:
        broken_rule("accumulated_gradient", f"forward calls on {rows_seen} rows, where tensor_split(X, 3) gives "
                    "chunks of 4, 3 and 3")
    if passes.reverse_passes != 3:
        count = passes.reverse_passes
        broken_rule("accumulated_gradient", f"{count} reverse pass{'' if count == 1 else 'es'} (backward or "
                    "autograd.grad) for 3 chunks")
    for name, p in model.named_parameters():
        check(p.grad is not None, f"after accumulated_gradient, {name}.grad is None.", expected="a gradient",
              got="None", hint="Each chunk's loss needs its own backward.")
        check_close(p.grad, expected[name], what=f"{name}.grad after accumulated_gradient(model, F.mse_loss, X, y, "
                    "n_chunks=3) with 10 rows (chunks of 4, 3, 3)", rtol=1e-10, atol=1e-12,
                    looks_like={"the stale gradients (100 in every entry) are still in .grad: clear them first":
                                stale[name], **{text: grads[name] for text, grads in variants.items()}},
                    hint="The target is the gradient of the mean loss over all 10 rows, as if there were no chunks.")


def test_newton_step(answer):
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    A = M @ M.mT + 4 * torch.eye(4, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(4, generator=gen, dtype=torch.float64)

    def quadratic(x):  # minimum at A⁻¹b
        return 0.5 * x @ A @ x - b @ x

    x0 = torch.randn(4, generator=gen, dtype=torch.float64)
    x0_before = x0.clone()
    got = answer(quadratic, x0)
    expected = torch.from_numpy(np.linalg.solve(A.numpy(), b.numpy()))
    g0 = A @ x0 - b  # the gradient at x0
    mistakes = {"x + H⁻¹∇f: a step uphill, the sign of the step is flipped": 2 * x0 - expected,
                "x − ∇f: a plain gradient step, without the Hessian": x0 - g0,
                "x − H ∇f: multiplied by the Hessian instead of solving with it": x0 - A @ g0}
    check_close(got, expected, what="newton_step(f, x0) for the quadratic f(x) = ½xᵀAx − bᵀx",
                rtol=1e-9, atol=1e-10, looks_like=mistakes,
                hint="For this f, ∇f = Ax − b and H = A, so one Newton step lands on A⁻¹b exactly.")
    check(torch.equal(x0, x0_before), "newton_step modified its input x in place.", expected=x0_before, got=x0,
          hint="Return a new tensor: x_new = x − d.")
    check_no_grad_history(got, what="newton_step(f, x)")

    def quartic(x):  # not quadratic: the Hessian depends on x
        return (x**4).sum() + x[0] * x[1] + (x**2).sum()

    x1 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    with reference():
        gradient = jacobian(quartic, x1)  # (3,): the Jacobian of a scalar function is its gradient
        expected1 = x1 - torch.from_numpy(np.linalg.solve(hessian(quartic, x1).numpy(), gradient.numpy()))
    check_close(answer(quartic, x1), expected1, what="newton_step(f, x) for f(x) = Σx⁴ + x₀x₁ + Σx²",
                rtol=1e-9, atol=1e-10, hint="x_new = x − H(x)⁻¹∇f(x), with H and ∇f taken at x.")


def test_Softplus(answer):
    check(isinstance(answer, type) and issubclass(answer, torch.autograd.Function),
          "Softplus must be a subclass of torch.autograd.Function.", expected="class Softplus(torch.autograd.Function)",
          got=answer, hint="Keep the class from the stub and fill in forward and backward.")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    y = answer.apply(x)
    check_close(y, torch.from_numpy(np.logaddexp(0.0, x.detach().numpy())), what="Softplus.apply(x) (forward)",
                rtol=1e-12, atol=1e-12, hint="softplus(x) = log(1 + exp(x)), with no overflow for large x.")
    backward_name = type(y.grad_fn).__name__ if y.grad_fn is not None else None
    check(backward_name == f"{answer.__name__}Backward", "Softplus.apply(x) does not use your backward.",
          expected=f"y.grad_fn of type {answer.__name__}Backward", got=f"y.grad_fn of type {backward_name}",
          hint="Compute the result inside forward(ctx, x) and return it; autograd then calls your backward.")
    grad_output = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, grad_output)
    sigmoid = torch.from_numpy(1.0 / (1.0 + np.exp(-x.detach().numpy())))
    check_close(grad, grad_output * sigmoid, what="the gradient from Softplus.backward, for a random grad_output",
                rtol=1e-10, atol=1e-12, looks_like={"sigmoid(x) alone: grad_output is missing (the chain rule)":
                                                    sigmoid, "−sigmoid(x)·grad_output: the sign is flipped":
                                                    -grad_output * sigmoid},
                hint="backward returns the gradient of the loss with respect to x, given the one with respect to "
                     "the output.")
    large = torch.tensor([-100.0, -30.0, 0.0, 30.0, 100.0], requires_grad=True)  # float32: exp(100) overflows
    y_large = answer.apply(large)
    check_close(y_large, torch.from_numpy(np.logaddexp(0.0, large.detach().numpy())),
                what="Softplus.apply(x) for float32 x = [-100, -30, 0, 30, 100]", rtol=1e-6, atol=1e-6,
                hint="log(1 + exp(100)) overflows in float32 (exp(100) = inf): rewrite it so exp only sees "
                     "numbers ≤ 0.")
    (grad_large,) = torch.autograd.grad(y_large.sum(), large)
    check_close(grad_large, torch.sigmoid(large.detach().double()).float(),
                what="the gradient of Softplus at float32 x = [-100, -30, 0, 30, 100]", rtol=1e-6, atol=1e-7,
                hint="exp(x) / (1 + exp(x)) is inf / inf = NaN at x = 100 in float32; the derivative has a "
                     "stable form.")
    passed = torch.autograd.gradcheck(answer.apply, (x,), raise_exception=False)
    check(passed, "torch.autograd.gradcheck(Softplus.apply, (x,)) failed in float64.", expected="True", got="False",
          hint="gradcheck compares your backward with finite differences of your forward: make them agree.")


def test_jacobian_vector_product(answer):
    W = _matrix(4, 4, seed=0)

    def f(t):  # R^4 -> R^4 with a non-symmetric Jacobian, so J v and vᵀJ differ
        return torch.tanh(W @ t) * t.flip(0)

    x = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=torch.float64)
    v = torch.tensor([1.0, 0.0, -2.0, 0.5], dtype=torch.float64)
    with watching(count_reverse_passes=True) as passes:
        got = answer(f, x, v)
    with reference():
        J = jacobian(f, x)  # (4, 4)
    check_close(got, J @ v, what="jacobian_vector_product(f, x, v) for f: R^4 -> R^4", rtol=1e-10, atol=1e-12,
                looks_like={"vᵀJ, the other product: one backward pass seeded with v": v @ J},
                hint="J v sums over the inputs: entry k is Σ_i ∂f_k/∂x_i v_i.")
    if passes.reverse_passes != 2:
        broken_rule("jacobian_vector_product", f"{passes.reverse_passes} reverse passes for one call"
                    + (" (one per row of J: that builds the Jacobian)" if passes.reverse_passes > 2 else ""))
    check_no_grad_history(got, what="jacobian_vector_product(f, x, v)")

    W2 = _matrix(3, 5, seed=1)

    def g(t):  # R^5 -> R^3
        return torch.sin(W2 @ t) + t[:3] ** 2

    x2 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    v2 = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    with reference():
        expected2 = jacobian(g, x2) @ v2
    check_close(answer(g, x2, v2), expected2,
                what="jacobian_vector_product(g, x, v) for g: R^5 -> R^3", rtol=1e-10, atol=1e-12,
                hint="J v has one entry per output (3 here), not per input.")
