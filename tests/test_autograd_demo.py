"""autograd_demo: every derivative checked against closed forms, finite differences or torch.func.

The quick end-to-end run of main() (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import autograd_demo as ad

F64 = torch.float64


def test_graph_facts():
    facts = ad.graph_facts()
    assert facts["x.is_leaf"] is True and facts["z.is_leaf"] is False
    assert facts["z.grad_fn"] == "MulBackward0"
    # y = (w x)², w = 3, x = 2: dy/dx = 2 w² x = 36, dy/dz = 2 w x = 12.
    assert facts["x.grad (dy/dx = 2 w^2 x)"] == 36.0
    assert facts["z.grad after retain_grad() (dy/dz = 2z)"] == 12.0
    assert facts["x.grad after a second backward (accumulated)"] == 72.0
    assert "third backward without retain_graph" in facts
    assert facts["z.detach().requires_grad"] is False and facts["detach shares storage"] is True
    assert facts["x * 2 under no_grad: requires_grad"] is False
    assert "inference tensor used in autograd later" in facts


def test_autograd_graph_walks_every_node():
    nodes, edges, _ = ad.example_graph()
    labels = sorted(n["label"].split("\n")[0] for n in nodes)
    assert labels == sorted(["PowBackward0", "SubBackward0", "SigmoidBackward0", "AddBackward0", "MulBackward0",
                             "w", "b"])
    assert len(edges) == 6  # a tree here: every node but the root has one parent
    depths = {n["label"].split("\n")[0]: n["depth"] for n in nodes}
    assert depths == {"PowBackward0": 0, "SubBackward0": 1, "SigmoidBackward0": 2, "AddBackward0": 3,
                      "MulBackward0": 4, "w": 5, "b": 4}
    with pytest.raises(ValueError, match="grad_fn"):
        ad.autograd_graph(torch.ones(2))


def test_autograd_graph_with_a_shared_subexpression_lists_it_once_below_both_parents():
    """y = a + sin(a), a = w·x: MulBackward0 has two parents (AddBackward0 and SinBackward0)."""
    w = torch.tensor(0.3, requires_grad=True)
    a = w * torch.tensor(2.0)
    y = a + a.sin()
    nodes, edges = ad.autograd_graph(y, {id(w): "w"})
    by_label = {n["label"].split("\n")[0]: n for n in nodes}
    # Hand count: Add, Sin, Mul, AccumulateGrad(w); the constant 2.0 needs no gradient, so no node.
    assert sorted(by_label) == ["AddBackward0", "MulBackward0", "SinBackward0", "w"]
    assert len({n["id"] for n in nodes}) == 4
    # Longest path from the output: Add 0 → Sin 1 → Mul 2 → w 3 (Mul is also Add's direct child).
    assert {label: n["depth"] for label, n in by_label.items()} == {
        "AddBackward0": 0, "SinBackward0": 1, "MulBackward0": 2, "w": 3}
    ids = {label: n["id"] for label, n in by_label.items()}
    expected = [("MulBackward0", "AddBackward0"), ("SinBackward0", "AddBackward0"),
                ("MulBackward0", "SinBackward0"), ("w", "MulBackward0")]
    assert sorted(edges) == sorted((ids[child], ids[parent]) for child, parent in expected)


def test_autograd_graph_keeps_a_node_used_twice_as_one_edge():
    w = torch.tensor(1.5, requires_grad=True)
    nodes, edges = ad.autograd_graph(w * w, {id(w): "w"})
    assert len(nodes) == 2 and len(edges) == 1


def test_basic_gradients_and_vjp():
    got = ad.basic_gradients()
    assert got["x**2 at 2"].item() == 4.0
    torch.testing.assert_close(got["vjp"], torch.tensor([2.0, 0.4, 0.06]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["vjp"], got["v @ jacobian"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("f", "derivatives"), [
    (torch.sin, [math.sin, math.cos, lambda x: -math.sin(x), lambda x: -math.cos(x), math.sin]),
    (torch.exp, [math.exp] * 5),
    (lambda x: 3 * x**3 - 2 * x + 1, [lambda x: 3 * x**3 - 2 * x + 1, lambda x: 9 * x**2 - 2, lambda x: 18 * x,
                                      lambda x: 18.0, lambda x: 0.0]),
])
def test_nth_derivative_matches_closed_forms(f, derivatives):
    for x in (-1.3, 0.0, 0.7):
        for n, expected in enumerate(derivatives):
            got = ad.nth_derivative(f, torch.tensor(x, dtype=F64), n)
            torch.testing.assert_close(got, torch.tensor(expected(x), dtype=F64), rtol=1e-12, atol=1e-12)
    # Beyond the polynomial's degree every derivative is zero, not an error.
    assert ad.nth_derivative(lambda x: x**2, 1.0, 5).item() == 0.0


def test_nth_derivative_rejects_bad_order():
    with pytest.raises(ValueError, match="n=-1"):
        ad.nth_derivative(torch.sin, 1.0, -1)
    with pytest.raises(ValueError, match="scalar"):
        ad.nth_derivative(torch.sin, torch.ones(2), 1)


def test_jacobian_rows_matches_jacrev_and_jacfwd():
    f = ad.make_vector_function(7, torch.Generator().manual_seed(3))
    x = torch.randn(7, dtype=F64, generator=torch.Generator().manual_seed(4))
    rows = ad.jacobian_rows(f, x)
    torch.testing.assert_close(rows, torch.func.jacrev(f)(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows, torch.func.jacfwd(f)(x), rtol=1e-12, atol=1e-12)
    for method in ad.jacobian_methods(f, x).values():
        torch.testing.assert_close(method(), rows, rtol=1e-12, atol=1e-12)


def test_jacobian_rows_keeps_shapes():
    x = torch.randn(2, 3, dtype=F64)
    jac = ad.jacobian_rows(lambda t: t.sum(0), x)  # (3,) from (2, 3)
    assert jac.shape == (3, 2, 3)
    torch.testing.assert_close(jac, torch.func.jacrev(lambda t: t.sum(0))(x), rtol=0, atol=0)


def test_hessian_matches_torch_func_and_closed_form():
    x = torch.tensor([-1.2, 1.0, 0.5, 2.0, -0.3], dtype=F64)
    H = ad.hessian_double_backward(ad.rosenbrock, x)
    torch.testing.assert_close(H, torch.func.hessian(ad.rosenbrock)(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(H, ad.rosenbrock_hessian(x), rtol=1e-12, atol=1e-10)
    # A function with a linear coordinate has a zero row there.
    H_lin = ad.hessian_double_backward(lambda t: t[0] ** 3 + t[1], torch.tensor([2.0, 5.0], dtype=F64))
    torch.testing.assert_close(H_lin, torch.tensor([[12.0, 0.0], [0.0, 0.0]], dtype=F64), rtol=0, atol=0)


def test_hessian_vector_product_equals_h_times_v():
    x = torch.tensor([0.3, -0.7, 1.1], dtype=F64)
    v = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    expected = ad.rosenbrock_hessian(x) @ v
    torch.testing.assert_close(ad.hessian_vector_product(ad.rosenbrock, x, v), expected, rtol=1e-12, atol=1e-10)


def test_finite_difference_grad_is_close_to_the_exact_gradient():
    x = torch.linspace(-2, 2, 9, dtype=F64)
    exact = torch.cos(x) * torch.exp(x / 2) + 0.5 * torch.sin(x) * torch.exp(x / 2)  # by hand
    fd = ad.finite_difference_grad(ad.smooth_test_function, x, 1e-6)
    torch.testing.assert_close(fd, exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(torch.func.grad(ad.smooth_test_function)(x), exact, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        ad.finite_difference_grad(ad.smooth_test_function, x, 0.0)


def test_fd_error_sweep_has_the_v_shape():
    eps = torch.logspace(-1, -12, 12, dtype=F64)
    errors = ad.fd_error_sweep(eps, torch.linspace(-1, 1, 4, dtype=F64))
    for dtype, (lo, hi) in {"float32": (1e-4, 1e-1), "float64": (1e-7, 1e-3)}.items():
        errs = errors[dtype]
        best = min(range(len(errs)), key=errs.__getitem__)
        assert lo <= eps[best].item() <= hi  # optimum near eps_machine^(1/3)
        assert errs[0] > errs[best] and errs[-1] > errs[best]  # both arms of the V rise


@pytest.mark.parametrize("function", [ad.SquareFunction, ad.StableLogSumExp])
def test_custom_functions_pass_gradcheck_and_gradgradcheck(function):
    x = torch.randn(3, 4, dtype=F64, requires_grad=True, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(function.apply, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(function.apply, (x,), eps=1e-6, atol=1e-5)


def test_square_function_values_and_transforms():
    x = torch.linspace(-2, 2, 5, dtype=F64)
    torch.testing.assert_close(ad.SquareFunction.apply(x), x**2, rtol=0, atol=0)
    torch.testing.assert_close(torch.func.grad(lambda t: ad.SquareFunction.apply(t).sum())(x), 2 * x, rtol=0, atol=0)


def test_stable_logsumexp_matches_torch_and_does_not_overflow():
    x = torch.randn(5, 7, dtype=F64, generator=torch.Generator().manual_seed(1)) * 300
    torch.testing.assert_close(ad.StableLogSumExp.apply(x), torch.logsumexp(x, -1), rtol=1e-12, atol=1e-12)
    big = torch.tensor([1000.0, 1000.5, 999.0])
    assert math.isinf(big.exp().sum().log().item())
    assert math.isfinite(ad.StableLogSumExp.apply(big).item())
    grads = torch.func.vmap(torch.func.grad(ad.StableLogSumExp.apply))(x)
    torch.testing.assert_close(grads, torch.softmax(x, -1), rtol=1e-12, atol=1e-12)


def test_custom_function_report_all_checks_pass():
    report = ad.custom_function_report()
    assert all(v is True for k, v in report.items() if "check" in k or "==" in k)


def test_gradient_accumulation_doubles_and_micro_batches_sum():
    acc = ad.accumulation_demo(torch.Generator().manual_seed(0))
    torch.testing.assert_close(acc["twice"], 2 * acc["once"], rtol=1e-6, atol=1e-7)
    assert acc["after_zero_grad"] is None
    torch.testing.assert_close(acc["micro_batch_sum"], acc["full_batch"], rtol=1e-5, atol=1e-6)


def test_nan_gradient_demo_finds_the_sqrt():
    report = ad.nan_gradient_demo()
    assert math.isnan(report["gradient without anomaly mode"][0])
    assert "SqrtBackward0" in report["detect_anomaly error"]
    assert "x.sqrt()" in report["forward op that produced it"]
    assert report["gradient with the safe branch"] == [0.0, 0.5, 0.25]  # d√x/dx = 1/(2√x)


def test_time_forward_backward_rows_are_well_formed():
    rows = ad.time_forward_backward((8,), batch=4, min_run_time=0.005)
    assert rows[0]["width"] == 8
    assert all(math.isfinite(rows[0][k]) and rows[0][k] > 0 for k in ("forward", "backward"))


def test_training_curve_decreases():
    curve = ad.training_curve(30, torch.Generator().manual_seed(0))
    assert curve["losses"][-1] < curve["losses"][0]
    assert set(curve["grads"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
