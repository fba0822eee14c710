"""autograd_demo: every derivative checked against closed forms, finite differences or torch.func.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py;
here it runs only to read its printed text (a full run against the README, two seeds against each other).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, readme_quotes, run_script, unprinted_quotes
from torch import nn

import autograd_demo as ad

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps  # machine epsilon, 2**-23
EPS64 = torch.finfo(torch.float64).eps  # 2**-52


def scripted_timer(monkeypatch, seconds: list[float]) -> list[object]:
    """Replace the lesson's time_median: call i returns seconds[i]; returns what each timed call produced."""
    produced: list[object] = []
    values = iter(seconds)

    def fake(fn, device="cpu", min_run_time=0.2):
        produced.append(fn())
        return next(values)

    monkeypatch.setattr(ad, "time_median", fake)
    return produced


# --- the dynamic graph -------------------------------------------------------------------------------------------

def test_graph_facts():
    # y = (w x)², w = 3, x = 2: dy/dx = 2 w² x = 36, dy/dz = 2 w x = 12; a second backward adds another 36.
    assert ad.graph_facts() == {
        "x.is_leaf": True,
        "z = w * x: z.is_leaf": False,
        "z.grad_fn": "MulBackward0",
        "y.grad_fn.next_functions": ["MulBackward0"],
        "tensor(2.) * 3: is_leaf, requires_grad": (True, False),
        "x.grad (dy/dx = 2 w^2 x)": 36.0,
        "z.grad after retain_grad() (dy/dz = 2z)": 12.0,
        "x.grad after a second backward (accumulated)": 72.0,
        "third backward (the second freed the graph)":
            "RuntimeError: Trying to backward through the graph a second time",
        "z.detach().requires_grad": False,
        "detach shares storage": True,
        "x * 2 under no_grad: is_leaf, requires_grad": (True, False),
    }


def test_results_of_unrecorded_operations_are_leaves():
    """The prose: only results autograd recorded are non-leaves; everything else is a leaf without grad."""
    a = torch.ones(3)
    assert (a * 2).is_leaf and (a.exp() + 1).is_leaf and (a * 2).grad_fn is None
    w = torch.ones(3, requires_grad=True)
    assert not (w * 2).is_leaf
    with torch.no_grad():
        assert (w * 2).is_leaf and not (w * 2).requires_grad


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


@pytest.mark.parametrize("chain_first", [True, False])
def test_autograd_graph_depth_is_the_longest_path_whichever_parent_is_walked_last(chain_first):
    """m = 2w feeds exp(m) directly and sin(sin(sin(m))) through a chain: m's depth is 4 (the chain's),
    never the 2 of the short branch, in either operand order."""
    w = torch.tensor(0.3, requires_grad=True)
    m = 2 * w
    chain, short = m.sin().sin().sin(), m.exp()
    nodes, _ = ad.autograd_graph(chain + short if chain_first else short + chain, {id(w): "w"})
    depths = {}
    for n in nodes:
        depths.setdefault(n["label"].split("\n")[0], []).append(n["depth"])
    assert depths == {"AddBackward0": [0], "SinBackward0": [1, 2, 3], "ExpBackward0": [1],
                      "MulBackward0": [4], "w": [5]}


def test_autograd_graph_keeps_a_node_used_twice_as_one_edge():
    w = torch.tensor(1.5, requires_grad=True)
    nodes, edges = ad.autograd_graph(w * w, {id(w): "w"})
    assert len(nodes) == 2 and len(edges) == 1


# --- no_grad vs inference_mode -----------------------------------------------------------------------------------

def test_inference_mode_facts():
    assert ad.inference_mode_facts() == {
        "no_grad: is_inference()": False,
        "no_grad: version after one in-place op": 1,
        "no_grad: view knows its base": True,
        "inference_mode: is_inference()": True,
        "inference_mode: view knows its base": False,
        "inference_mode: read the version counter": "RuntimeError",
        "inference tensor saved for backward": "RuntimeError",
        "inference tensor changed in place later": "RuntimeError",
    }


def test_small_op_chain_transposes_once_per_step():
    t = torch.arange(16.0)
    torch.testing.assert_close(ad.small_op_chain(t, 1), t.view(4, 4).t().reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(ad.small_op_chain(t, 2), t, rtol=0, atol=0)
    torch.testing.assert_close(t, torch.arange(16.0), rtol=0, atol=0)  # the input is left alone


def test_no_grad_vs_inference_mode_rates_come_from_the_timings(monkeypatch):
    produced = scripted_timer(monkeypatch, [2e-3, 1e-3])
    got = ad.time_no_grad_vs_inference_mode(steps=50, min_run_time=0.01)
    assert [t.is_inference() for t in produced] == [False, True]  # timed under no_grad, then inference_mode
    ops = 50 * ad.OPS_PER_STEP
    assert got == {"ops": ops, "no_grad per op": 2e-3 / ops, "inference_mode per op": 1e-3 / ops,
                   "inference_mode / no_grad": 0.5}


# --- gradients, higher derivatives -------------------------------------------------------------------------------

def test_basic_gradients_and_vjp():
    got = ad.basic_gradients()
    assert got["x**2 at 2"].item() == 4.0
    torch.testing.assert_close(got["vjp"], torch.tensor([2.0, 0.4, 0.06]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["v @ jacobian"], torch.tensor([2.0, 0.4, 0.06]), rtol=1e-6, atol=1e-7)


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


def test_sin_derivative_table():
    closed = [math.sin, math.cos, lambda x: -math.sin(x), lambda x: -math.cos(x), math.sin]
    rows = ad.sin_derivative_table(1.0, 5)
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4]
    for n, autograd, reference in rows:
        assert autograd == pytest.approx(closed[n](1.0), rel=1e-12, abs=1e-12)
        assert reference == pytest.approx(closed[n](1.0), rel=1e-12, abs=1e-12)


# --- Jacobians ---------------------------------------------------------------------------------------------------

def hand_jacobian(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J_ij of tanh(Wx)_i x_i + sin(x_i), entry by entry."""
    n = x.numel()
    a = W @ x
    J = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            J[i, j] = x[i] * (1 - math.tanh(a[i]) ** 2) * W[i, j] + (math.tanh(a[i]) + math.cos(x[i]) if i == j else 0)
    return J


def test_make_vector_function_is_the_documented_map():
    f, W = ad.make_vector_function(5, torch.Generator().manual_seed(3))
    assert W.shape == (5, 5) and W.dtype == F64
    x = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(f(x), torch.tanh(W @ x) * x + torch.sin(x), rtol=0, atol=0)
    # W ~ N(0, 1/n): the scaling keeps Wx of order one (loose check on a 400×400 draw).
    _, W_big = ad.make_vector_function(400, torch.Generator().manual_seed(5))
    assert W_big.var().item() == pytest.approx(1 / 400, rel=0.05)


def test_every_jacobian_method_matches_the_hand_derived_jacobian():
    f, W = ad.make_vector_function(7, torch.Generator().manual_seed(3))
    x = torch.randn(7, dtype=F64, generator=torch.Generator().manual_seed(4))
    reference = hand_jacobian(W, x)
    torch.testing.assert_close(ad.vector_function_jacobian(W, x), reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ad.jacobian_rows(f, x), reference, rtol=1e-12, atol=1e-12)
    methods = ad.jacobian_methods(f, x)
    assert set(methods) == {"jacobian_rows (loop of backward)", "torch.autograd.functional.jacobian",
                            "torch.func.jacrev (vmap of vjp)", "torch.func.jacfwd (vmap of jvp)"}
    for name, method in methods.items():
        torch.testing.assert_close(method(), reference, rtol=1e-12, atol=1e-12, msg=name)


def test_jacobian_rows_keeps_shapes():
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    jac = ad.jacobian_rows(lambda t: t.sum(0), x)  # (3,) from (2, 3)
    assert jac.shape == (3, 2, 3)
    torch.testing.assert_close(jac, torch.func.jacrev(lambda t: t.sum(0))(x), rtol=0, atol=0)


def test_compare_jacobians_reports_round_off_and_the_timer(monkeypatch):
    scripted_timer(monkeypatch, [1e-3, 2e-3, 3e-3, 4e-3])
    rows = ad.compare_jacobians(6, 0.01, torch.Generator().manual_seed(0))
    assert [r["method"] for r in rows] == list(ad.jacobian_methods(torch.sin, torch.zeros(1)))
    assert [r["seconds"] for r in rows] == [1e-3, 2e-3, 3e-3, 4e-3]
    assert all(r["max |diff|"] <= 1e-14 for r in rows)


# --- Hessians ----------------------------------------------------------------------------------------------------

def test_hessian_matches_torch_func_and_closed_form():
    x = torch.tensor([-1.2, 1.0, 0.5, 2.0, -0.3], dtype=F64)
    H = ad.hessian_double_backward(ad.rosenbrock, x)
    torch.testing.assert_close(H, torch.func.hessian(ad.rosenbrock)(x), rtol=1e-12, atol=1e-10)
    # Hand-derived entries at a 2-D point: H = [[1200 x0² − 400 x1 + 2, −400 x0], [−400 x0, 200]].
    x2 = torch.tensor([0.5, -2.0], dtype=F64)
    expected = torch.tensor([[1200 * 0.25 + 800 + 2, -200.0], [-200.0, 200.0]], dtype=F64)
    torch.testing.assert_close(ad.rosenbrock_hessian(x2), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ad.rosenbrock_hessian(x), torch.func.hessian(ad.rosenbrock)(x), rtol=1e-12, atol=1e-10)
    # A function with a linear coordinate has a zero row there.
    H_lin = ad.hessian_double_backward(lambda t: t[0] ** 3 + t[1], torch.tensor([2.0, 5.0], dtype=F64))
    torch.testing.assert_close(H_lin, torch.tensor([[12.0, 0.0], [0.0, 0.0]], dtype=F64), rtol=0, atol=0)
    with pytest.raises(ValueError, match="1-D"):
        ad.hessian_double_backward(ad.rosenbrock, torch.ones(2, 2, dtype=F64))


def test_hessian_vector_product_equals_h_times_v():
    x = torch.tensor([0.3, -0.7, 1.1], dtype=F64)
    v = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    expected = torch.func.hessian(ad.rosenbrock)(x) @ v
    torch.testing.assert_close(ad.hessian_vector_product(ad.rosenbrock, x, v), expected, rtol=1e-12, atol=1e-10)


def test_rosenbrock_hessian_checks_are_round_off():
    checks = ad.rosenbrock_hessian_checks(torch.tensor(ad.ROSENBROCK_POINT, dtype=F64),
                                          torch.tensor(ad.HVP_DIRECTION, dtype=F64))
    assert set(checks) == {"double backward vs torch.func.hessian", "double backward vs hand-derived",
                           "Hessian-vector product vs H @ v"}
    assert all(0 <= value <= 1e-10 for value in checks.values())


# --- finite differences ------------------------------------------------------------------------------------------

def test_fd_steps_span_the_documented_range():
    for count in (ad.QUICK.fd_step_count, ad.FULL.fd_step_count):
        steps = ad.fd_steps(count)
        assert len(steps) == count
        assert steps[0].item() == pytest.approx(1e-1, rel=1e-12) and steps[-1].item() == pytest.approx(1e-12, rel=1e-12)
        ratios = steps[1:] / steps[:-1]
        torch.testing.assert_close(ratios, torch.full_like(ratios, 10 ** (-11 / (count - 1))), rtol=1e-10, atol=0)
        assert ad.orders_of_magnitude(steps) == 11  # 1e-1 … 1e-12: eleven powers of ten, not twelve
    assert ad.orders_of_magnitude(torch.tensor([1e-3, 1e-2, 1.0])) == 3


def test_finite_difference_grad_is_close_to_the_exact_gradient():
    x = torch.linspace(-2, 2, 9, dtype=F64)
    exact = torch.cos(x) * torch.exp(x / 2) + 0.5 * torch.sin(x) * torch.exp(x / 2)  # by hand
    fd = ad.finite_difference_grad(ad.smooth_test_function, x, 1e-6)
    torch.testing.assert_close(fd, exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(torch.func.grad(ad.smooth_test_function)(x), exact, rtol=1e-12, atol=1e-12)
    # Truncation error of the central difference is h²/6 · f'''(x): at h = 1e-2 it is ~1e-5, far above round-off.
    fd_coarse = ad.finite_difference_grad(ad.smooth_test_function, x, 1e-2)
    assert 1e-7 < (fd_coarse - exact).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="h=0.0"):
        ad.finite_difference_grad(ad.smooth_test_function, x, 0.0)


def test_fd_error_sweep_is_a_v_with_its_bottom_near_the_cube_root_of_machine_epsilon():
    steps = ad.fd_steps(ad.FULL.fd_step_count)
    errors = ad.fd_error_sweep(steps, torch.tensor(ad.FD_POINTS, dtype=F64))
    best = ad.best_steps(steps, errors)
    for dtype, eps in {"float32": EPS32, "float64": EPS64}.items():
        h, err = best[dtype]
        assert abs(math.log10(h / eps ** (1 / 3))) <= 0.5  # within half a decade of ε_mach^(1/3)
        assert errors[dtype][0] > err and errors[dtype][-1] > err  # both arms of the V rise
    assert best["float64"][1] < 1e-9 < best["float32"][1]
    # The numbers the prose quotes: ε_mach 1.2e-7 and 2.2e-16, ε_mach^(1/3) about 5e-3 and 6e-6.
    assert (f"{EPS32:.1e}", f"{EPS64:.1e}") == ("1.2e-07", "2.2e-16")
    assert (f"{EPS32 ** (1 / 3):.0e}", f"{EPS64 ** (1 / 3):.0e}") == ("5e-03", "6e-06")


def test_best_steps_picks_the_smallest_error():
    steps = torch.tensor([1e-1, 1e-2, 1e-3], dtype=F64)
    assert ad.best_steps(steps, {"a": [3.0, 1.0, 2.0], "b": [0.5, 1.0, 2.0]}) == {"a": (1e-2, 1.0), "b": (1e-1, 0.5)}


def test_a_step_below_half_the_float_spacing_is_lost():
    x = torch.tensor([-3.0, -0.7, 0.2, 1.0, 1.5, 1000.0], dtype=F64)
    for dtype, eps in ((torch.float32, EPS32), (torch.float64, EPS64)):
        x_d = x.to(dtype)
        assert ad.step_is_lost(x, eps * x_d.abs().min().item() / 8, dtype).all()
        for xi in x_d:  # a step of one spacing ε·|x| always changes x
            assert not ad.step_is_lost(xi, eps * xi.abs().item(), dtype).any()
        assert not ad.step_is_lost(x, 1e-3, dtype).any()
    # Lost on one side only is not lost: at x = 1 floats are twice as dense below as above, so a step
    # of 0.4 ε_mach rounds away going up (below half of ε) but not going down (above half of ε/2).
    one = torch.tensor([1.0], dtype=F64)
    assert (one.float() + 0.4 * EPS32).item() == 1.0 and (one.float() - 0.4 * EPS32).item() != 1.0
    assert not ad.step_is_lost(one, 0.4 * EPS32, torch.float32).any()


def test_float32_plateau_error_is_exactly_the_largest_gradient():
    """Below the plateau's edge the quotient is exactly 0, so the error is max |f'(x)| to the last bit."""
    steps = ad.fd_steps(ad.FULL.fd_step_count)
    x = torch.tensor(ad.FD_POINTS, dtype=F64)
    errors = ad.fd_error_sweep(steps, x)["float32"]
    plateau = ad.round_off_plateau(steps, x, errors)
    max_grad = (torch.exp(x / 2) * (torch.cos(x) + 0.5 * torch.sin(x))).abs().max().item()  # by hand
    assert plateau["max |grad|"] == pytest.approx(max_grad, rel=1e-15)
    lost = [i for i, h in enumerate(steps) if h.item() <= plateau["largest lost h"]]
    assert lost and lost[-1] == len(steps) - 1
    for i in lost:
        assert errors[i] == plateau["max |grad|"]  # exact: no tolerance
        assert torch.count_nonzero(ad.finite_difference_grad(
            ad.smooth_test_function, x.to(torch.float32), steps[i].item())) == 0
    # The edge sits near half the float32 spacing at the smallest |x| (0.2): about 7e-9.
    assert 1e-9 <= plateau["largest lost h"] <= 1e-8
    assert plateau["error there"] == errors[lost[0]]
    with pytest.raises(ValueError, match="no step"):
        ad.round_off_plateau(steps[:3], x, errors[:3])


def test_gradcheck_needs_float64():
    assert ad.gradcheck_in_both_precisions(torch.Generator().manual_seed(0)) == {"float64": True, "float32": False}


# --- custom Functions --------------------------------------------------------------------------------------------

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


def test_custom_function_report_every_entry():
    report = ad.custom_function_report(torch.Generator().manual_seed(0))
    reference = torch.logsumexp(torch.tensor([1000.0, 1000.5, 999.0]), dim=-1).item()
    assert reference == pytest.approx(1000.5 + math.log(math.exp(-0.5) + 1 + math.exp(-1.5)), rel=1e-6)
    assert report == {
        "SquareFunction gradcheck": True,
        "SquareFunction gradgradcheck": True,
        "StableLogSumExp gradcheck": True,
        "StableLogSumExp gradgradcheck": True,
        "naive logsumexp([1000, 1000.5, 999])": math.inf,
        "StableLogSumExp([1000, 1000.5, 999])": reference,
        "torch.logsumexp (reference)": reference,
        "vmap(grad(StableLogSumExp)) == softmax": True,
        "func.grad(SquareFunction) at 3": 6.0,
    }


# --- gradient accumulation ---------------------------------------------------------------------------------------

def linear_mse_gradient(w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/d(w, b) of mean((X wᵀ + b − y)²), by hand: (2/N) Σ r_i (x_i, 1)."""
    r = X @ w.T + b - y  # (N, 1)
    return torch.cat([(2 / len(X)) * (r * X).sum(0), (2 / len(X)) * r.sum(0)])


def test_micro_batch_gradient_matches_the_hand_derived_sums():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 3, dtype=F64, generator=gen), torch.randn(12, 1, dtype=F64, generator=gen)
    w, b = model.weight.detach(), model.bias.detach()
    full = linear_mse_gradient(w, b, X, y)
    torch.testing.assert_close(ad.full_batch_gradient(model, X, y), full, rtol=1e-12, atol=1e-14)
    for sizes in ((3, 3, 3, 3), (2, 3, 7), (12,), (1, 11)):
        chunks = list(zip(X.split(sizes), y.split(sizes)))
        by_rows = ad.micro_batch_gradient(model, X, y, sizes, "rows/N")
        torch.testing.assert_close(by_rows, full, rtol=1e-12, atol=1e-14)  # exact for any sizes
        one_over_k = sum(linear_mse_gradient(w, b, Xc, yc) for Xc, yc in chunks) / len(sizes)
        torch.testing.assert_close(ad.micro_batch_gradient(model, X, y, sizes, "1/k"), one_over_k,
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="sizes=.*12 rows"):
        ad.micro_batch_gradient(model, X, y, (5, 5), "1/k")
    with pytest.raises(ValueError, match="weighting='mean'"):
        ad.micro_batch_gradient(model, X, y, (6, 6), "mean")


def test_gradient_accumulation_sums_and_only_row_weights_are_exact_for_unequal_micro_batches():
    torch.manual_seed(0)
    acc = ad.accumulation_demo(torch.Generator().manual_seed(0))
    torch.testing.assert_close(acc["twice"], 2 * acc["once"], rtol=0, atol=0)
    assert acc["after_zero_grad"] is None
    diffs = acc["max |micro − full|"]
    assert list(diffs) == ["sizes (3, 3, 3, 3), loss × 1/k", "sizes (2, 3, 7), loss × 1/k",
                           "sizes (2, 3, 7), loss × rows/N"]
    equal, unequal_k, unequal_rows = diffs.values()
    assert equal <= 1e-14 and unequal_rows <= 1e-14  # float64 round-off
    assert unequal_k > 1e-3  # a real error, not round-off


# --- NaN debugging, timing, training -----------------------------------------------------------------------------

def test_nan_gradient_demo_finds_the_sqrt():
    report = ad.nan_gradient_demo()
    assert math.isnan(report["gradient without anomaly mode"][0])
    assert report["gradient without anomaly mode"][1:] == [0.5, 0.25]
    assert "SqrtBackward0" in report["detect_anomaly error"]
    assert "x.sqrt()" in report["forward op that produced it"]
    assert report["gradient with the safe branch"] == [0.0, 0.5, 0.25]  # d√x/dx = 1/(2√x)


def test_make_mlp_has_the_documented_depth():
    model = ad.make_mlp(8)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 8)] * ad.TIMED_MLP_DEPTH + [(8, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == ad.TIMED_MLP_DEPTH


def test_time_forward_backward_ratio_is_backward_over_forward(monkeypatch):
    produced = scripted_timer(monkeypatch, [1e-3, 3e-3, 2e-3, 5e-3])
    rows = ad.time_forward_backward((8, 16), batch=4, min_run_time=0.005, generator=torch.Generator().manual_seed(0))
    assert rows == [{"width": 8, "forward": 1e-3, "backward": 3e-3, "backward/forward": 3.0},
                    {"width": 16, "forward": 2e-3, "backward": 5e-3, "backward/forward": 2.5}]
    assert produced[0].shape == (4, 1) and produced[1] is None  # forward returns the output, backward None


def test_make_tanh_mlp_is_the_plotted_architecture():
    model = ad.make_tanh_mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    sizes = ad.TANH_MLP_SIZES
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(sizes[:-1], sizes[1:]))
    assert sum(isinstance(m, nn.Tanh) for m in model) == len(sizes) - 2 and isinstance(model[-1], nn.Linear)


def test_training_curve_records_the_first_steps_gradients_and_decreases():
    torch.manual_seed(7)
    curve = ad.training_curve(30, torch.Generator().manual_seed(0))
    assert curve["losses"][-1] < 0.5 * curve["losses"][0]
    # Rebuild the same start (same global seed, same noise) and differentiate the first loss independently.
    torch.manual_seed(7)
    model = ad.make_tanh_mlp()
    X = torch.linspace(-3, 3, 128).unsqueeze(1)
    y = torch.sin(X) + 0.1 * torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    loss = F.mse_loss(torch.func.functional_call(model, params, (X,)), y)
    assert curve["losses"][0] == pytest.approx(loss.item(), rel=1e-6)
    expected = torch.func.grad(lambda p: F.mse_loss(torch.func.functional_call(model, p, (X,)), y))(
        {k: v.detach() for k, v in params.items()})
    assert set(curve["grads"]) == set(expected) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    for name, grad in expected.items():
        torch.testing.assert_close(curve["grads"][name], grad, rtol=1e-5, atol=1e-7)


# --- figures, prose, README, seeds -------------------------------------------------------------------------------

def test_figures_say_which_model_each_panel_shows():
    grads = {"0.weight": torch.ones(3), "0.bias": torch.full((2,), 0.5)}
    timings = [{"width": 8, "forward": 1e-3, "backward": 2e-3, "backward/forward": 2.0}]
    fig = ad.plot_gradient_flow(grads, [1.0, 0.5], timings, batch=4)
    suptitle = fig._suptitle.get_text()  # Figure.get_suptitle() exists only from matplotlib 3.8
    assert "1 → 32 → 32 → 1 tanh MLP" in suptitle and "ReLU" in suptitle
    ax_norm, ax_hist, ax_loss, ax_time = fig.axes
    assert all(t.startswith("tanh MLP") for t in (ax_norm.get_title(), ax_hist.get_title(), ax_loss.get_title()))
    assert ax_time.get_title().startswith(f"ReLU MLP, {ad.TIMED_MLP_DEPTH} hidden layers, batch 4")
    assert ax_time.get_yscale() == "linear" and not ax_time.patches and not ax_norm.patches  # points, no bars
    steps = ad.fd_steps(3)
    fig = ad.plot_fd_error(steps, {"float32": [1e-3, 1e-4, 1.0]}, {"max |grad|": 1.0})
    assert fig.axes[0].get_xlabel() == "step size h"


def test_the_finite_difference_step_is_never_called_eps():
    """ε_mach is machine epsilon; the step is h (torch's own gradcheck(eps=...) is not used here)."""
    source = (ROOT / "autograd_demo.py").read_text(encoding="utf-8")
    assert not re.search(r"\beps\b|eps_values|eps_points", source)


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("### Lesson 2:", 1)[1].split("\n#", 1)[0]


@pytest.fixture
def no_figures(monkeypatch):
    """Skip drawing in whole-run tests that only read the printed text (test_reliability draws them)."""
    for name in ("plot_autograd_graph", "plot_fd_error", "plot_gradient_flow"):
        monkeypatch.setattr(ad, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(ad, "save_figure", lambda fig, filename, plots_dir: print(f"saved {filename}"))


def _full_run_output(tmp_path: Path, capsys) -> str:
    assert run_script("autograd_demo", ["--device", "cpu", "--seed", "0", "--plots-dir", str(tmp_path)]) == 0
    return capsys.readouterr().out


def test_readme_numbers_match_a_full_run(tmp_path, capsys, fake_timings, no_figures):
    """Every line the README quotes from lesson 2 is printed by a full run on the versions under test."""
    section = _readme_section()
    quotes = readme_quotes("autograd_demo")
    assert len(quotes) >= 5
    assert not unprinted_quotes(quotes, _full_run_output(tmp_path, capsys))
    orders = ad.orders_of_magnitude(ad.fd_steps(ad.FULL.fd_step_count))
    assert set(re.findall(r"(\d+) orders of magnitude", section)) == {str(orders)}


def test_different_seeds_print_different_results(tmp_path, capsys, fake_timings, no_figures):
    outputs = []
    for seed in (1, 2):
        assert run_script("autograd_demo", ["--quick", "--device", "cpu", "--seed", str(seed), "--plots-dir",
                                            str(tmp_path)]) == 0
        outputs.append(capsys.readouterr().out.split("\n", 2)[2])  # past the banner, which names the seed
    assert outputs[0] != outputs[1]

    def part(text: str, start: str, end: str) -> str:
        return text.split(start, 1)[1].split(end, 1)[0]

    # Each part that draws random numbers follows --seed (none keeps a hard-coded seed of its own).
    for start, end in (("--- Gradient accumulation", "\n--- "), ("Training loss", "\n")):
        assert part(outputs[0], start, end) != part(outputs[1], start, end), start


def _printed_pairs(text: str) -> dict[str, str]:
    """The `label  value` lines under a print_pairs heading: label and value part at the first run of spaces."""
    lines = text.strip("\n").splitlines()
    assert lines[0].startswith("--- ") and lines[0].endswith(" ---"), lines[0]
    return dict(re.split(r" {2,}", line, maxsplit=1) for line in lines[1:])


def test_printers_print_what_the_functions_return(capsys):
    ad.print_gradients(ad.basic_gradients())
    assert _printed_pairs(capsys.readouterr().out) == {
        "d(x²)/dx at x = 2 (closed form 2x = 4)": "4.0",
        "backward(gradient=v), y = x², x = [1, 2, 3], v = [1, 0.1, 0.01]": "[2.0, 0.4, 0.06]",
        "vᵀJ with J = jacrev(x ↦ x²)": "[2.0, 0.4, 0.06]"}
    steps = torch.tensor([1e-1, 1e-2, 1e-3], dtype=F64)
    ad.print_finite_differences(3, ad.best_steps(steps, {"float32": [0.5, 0.25, 0.75]}),
                                {"largest lost h": 1e-3, "error there": 0.75, "max |grad|": 0.75})
    printed = capsys.readouterr().out
    assert "--- Finite differences, step h over 3 orders of magnitude ---" in printed
    assert _printed_pairs(printed) == {
        "float32: most accurate at h": "1e-02 (max error 2.5e-01)",
        "float32: x ± h rounds to x at every x once h ≤": "1e-03, error there 0.7500 = max |f'(x)| 0.7500"}
    ad.print_gradcheck_precisions({"float64": True, "float32": False})
    assert _printed_pairs(capsys.readouterr().out) == {"gradcheck(SquareFunction) in float64": "True",
                                                       "gradcheck(SquareFunction) in float32": "False"}
    acc = {"once": torch.tensor([[1.0, 2.0]]), "twice": torch.tensor([[2.0, 4.0]]), "after_zero_grad": None,
           "max |micro − full|": {"a": 0.5}}
    ad.print_accumulation(acc)
    assert _printed_pairs(capsys.readouterr().out) == {"weight.grad after 1 backward": "[1.0, 2.0]",
                                                       "after 2 (summed, not replaced)": "[2.0, 4.0]",
                                                       "after zero_grad()": "None",
                                                       "max |micro − full|, a": "5.0e-01"}
    ad.print_training([0.5, 0.25, 0.125])
    assert capsys.readouterr().out == "\nTraining loss: 0.5000 → 0.1250 in 3 Adam steps\n"


def test_timing_printers_show_the_ratios_of_the_medians(capsys):
    ad.print_mode_timings({"ops": 400, "no_grad per op": 2e-6, "inference_mode per op": 1.5e-6,
                           "inference_mode / no_grad": 0.75}, torch.device("cpu"))
    assert capsys.readouterr().out == (
        "400 small ops on cpu: no_grad 2 µs/op, inference_mode 1.5 µs/op (0.75× the time)\n")
    ad.print_forward_backward([{"width": 8, "forward": 1e-3, "backward": 2.5e-3, "backward/forward": 2.5}], 4,
                              torch.device("cpu"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == f"Forward vs backward, ReLU MLP with {ad.TIMED_MLP_DEPTH} hidden layers, batch 4, on cpu"
    assert printed[-1].split() == ["8", "1", "ms", "2.5", "ms", "2.50×"]
