"""autograd_demo: every derivative checked against closed forms, finite differences or torch.func.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py;
here it runs only to read its printed text (a full run against the README, two seeds against each other).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FAKE_IQR_S, FAKE_MEDIAN_S, ROOT, readme_quotes, run_script, unprinted_quotes
from torch import nn

import autograd_demo as ad
from lesson_harness import BENCHMARK_THREADS, NOISY_MARK, Timing, timing_note

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps  # machine epsilon, 2**-23
EPS64 = torch.finfo(torch.float64).eps  # 2**-52


def timing(median: float, noisy: bool = False, threads: int = 1) -> Timing:
    """A Timing with a 2 % IQR, as a fake benchmark returns."""
    return Timing(median, 0.02 * median, threads, noisy)


def scripted_timer(monkeypatch, timings: list[Timing]) -> tuple[list[object], list[int]]:
    """Replace the lesson's benchmark: call i returns timings[i]; returns what each timed call produced, and
    the thread count each call asked for."""
    produced: list[object] = []
    threads_asked: list[int] = []
    values = iter(timings)

    def fake(fn, device="cpu", min_run_time=0.2, threads=BENCHMARK_THREADS):
        produced.append(fn())
        threads_asked.append(threads)
        return next(values)

    monkeypatch.setattr(ad, "benchmark", fake)
    return produced, threads_asked


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
        "(v * v).grad_fn.next_functions": ["AccumulateGrad", "AccumulateGrad"],
        "v.grad for v * v, v = 3 (v + v: one term per edge)": 6.0,  # closed form d(v²)/dv = 2v
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
    nodes, edges, title = ad.example_graph()
    assert title.startswith("loss = r · r")
    labels = sorted(n["label"].split("\n")[0] for n in nodes)
    assert labels == sorted(["MulBackward0", "SubBackward0", "SigmoidBackward0", "AddBackward0", "MulBackward0",
                             "w", "b"])
    assert len(edges) == 6  # a tree of distinct parent-child pairs: every node but the root has one parent
    by_depth = sorted((n["depth"], n["label"].split("\n")[0]) for n in nodes)
    assert by_depth == [(0, "MulBackward0"), (1, "SubBackward0"), (2, "SigmoidBackward0"), (3, "AddBackward0"),
                        (4, "MulBackward0"), (4, "b"), (5, "w")]
    with pytest.raises(ValueError, match="grad_fn"):
        ad.autograd_graph(torch.ones(2))


def test_example_graph_keeps_both_edges_of_r_times_r():
    """loss = r * r: next_functions lists r's node twice, and the graph keeps that as an edge of count 2."""
    nodes, edges, _ = ad.example_graph()
    label = {n["id"]: n["label"] for n in nodes}
    root = next(n["id"] for n in nodes if n["depth"] == 0)
    into_root = [(label[child], count) for child, parent, count in edges if parent == root]
    # The same expression, built here, read straight from torch.
    w, b = torch.tensor(0.5, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    r = torch.sigmoid(w * torch.tensor(2.0) + b) - 0.8
    listed = Counter(type(fn).__name__ for fn, _ in (r * r).grad_fn.next_functions)
    assert listed == {"SubBackward0": 2}
    assert into_root == [("SubBackward0", 2)]
    assert all(count == 1 for child, parent, count in edges if parent != root)
    # Why the count matters: backward sums one term per edge, d(r·r)/dr = r + r = 2r.
    (grad_r,) = torch.autograd.grad(r * r, r)
    torch.testing.assert_close(grad_r, 2 * r.detach(), rtol=0, atol=0)


def test_autograd_graph_edge_counts_match_next_functions():
    """h * h, and h used again by another op: every node's edge counts are its next_functions' multiplicities."""
    w = torch.tensor(0.7, requires_grad=True)
    h = w.sin()
    y = h * h + h * w
    nodes, edges = ad.autograd_graph(y, {id(w): "w"})
    assert len(edges) == len({(child, parent) for child, parent, _ in edges})  # one row per pair, with a count
    # Walk torch's own graph independently: (parent name, child name) -> times listed.
    expected: Counter = Counter()
    seen, stack = [], [y.grad_fn]
    while stack:
        fn = stack.pop()
        if any(fn is s for s in seen):
            continue
        seen.append(fn)
        for child, _ in fn.next_functions:
            if child is not None:
                expected[(type(fn).__name__, type(child).__name__)] += 1
                stack.append(child)
    label = {n["id"]: n["label"].split("\n")[0] for n in nodes}
    got: Counter = Counter()
    for child, parent, count in edges:
        got[(label[parent], label[child] if label[child] != "w" else "AccumulateGrad")] += count
    assert got == expected
    # h has two parents: h * h (two edges, one row of count 2) and h * w (one edge).
    assert sorted(count for child, _, count in edges if label[child] == "SinBackward0") == [1, 2]


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
    assert sorted(edges) == sorted((ids[child], ids[parent], 1) for child, parent in expected)


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


def test_autograd_graph_keeps_a_node_used_twice_as_one_edge_of_count_two():
    w = torch.tensor(1.5, requires_grad=True)
    square = w * w
    assert len(square.grad_fn.next_functions) == 2  # torch lists the same AccumulateGrad node twice
    assert square.grad_fn.next_functions[0][0] is square.grad_fn.next_functions[1][0]
    nodes, edges = ad.autograd_graph(square, {id(w): "w"})
    assert len(nodes) == 2 and edges == [(1, 0, 2)]


def test_graph_plot_draws_one_arrow_per_edge_and_labels_the_multi_edge():
    nodes, edges, title = ad.example_graph()
    fig = ad.plot_autograd_graph(nodes, edges, title)
    ax = fig.axes[0]
    arrows = [c for c in ax.texts if c.get_text() == "" and getattr(c, "arrow_patch", None) is not None]
    assert len(arrows) == sum(count for _, _, count in edges) == 7
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("×")] == ["×2"]


# --- no_grad vs inference_mode -----------------------------------------------------------------------------------

def test_inference_mode_facts():
    assert ad.inference_mode_facts() == {
        "no_grad: is_inference()": False,
        "no_grad: version after one in-place op": 1,
        "no_grad: view knows its base": True,
        "inference_mode: is_inference()": True,
        "inference_mode: view knows its base": False,
        "inference_mode: read the version counter": "RuntimeError: Inference tensors do not track version counter",
        "(w + t).sum().backward(), t an inference tensor (add saves no input)": "allowed",
        "(w * t).sum().backward() (mul saves t for w's gradient)":
            "RuntimeError: Inference tensors cannot be saved for backward",
        "t.add_(1) outside inference_mode":
            "RuntimeError: Inplace update to inference tensor outside InferenceMode is not allowed",
        "w.grad after the allowed (w + t) backward": [1.0, 1.0, 1.0],
        "t.clone() outside inference_mode: is_inference()": False,
    }


def test_an_inference_tensor_enters_autograd_unless_it_must_be_saved():
    """The prose's rules, straight from torch: an inference tensor may feed a recorded op that saves nothing of
    it (add), not one that saves it (mul: forward fails at once), and may not be changed in place later."""
    with torch.inference_mode():
        t = torch.tensor([1.0, -2.0, 3.0])
    assert t.is_inference()
    w = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    out = (w + t).sum()
    assert out.grad_fn is not None  # recorded outside inference mode, with t as an input
    out.backward()
    torch.testing.assert_close(w.grad, torch.ones(3), rtol=0, atol=0)  # closed form d/dw Σ(w + t) = 1
    with pytest.raises(RuntimeError, match="cannot be saved for backward"):
        w * t
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        t.add_(1)
    copy = t.clone()  # outside inference mode: an ordinary tensor, which mul may save
    (w * copy).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(3) + t, rtol=0, atol=0)


def test_small_op_chain_transposes_once_per_step():
    t = torch.arange(16.0)
    torch.testing.assert_close(ad.small_op_chain(t, 1), t.view(4, 4).t().reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(ad.small_op_chain(t, 2), t, rtol=0, atol=0)
    torch.testing.assert_close(t, torch.arange(16.0), rtol=0, atol=0)  # the input is left alone


def test_no_grad_vs_inference_mode_ratio_is_of_the_medians_on_one_thread(monkeypatch):
    no_grad, inference = timing(2e-3), Timing(1e-3, 5e-4, 1, noisy=True)
    produced, threads = scripted_timer(monkeypatch, [no_grad, inference])
    got = ad.time_no_grad_vs_inference_mode(steps=50, min_run_time=0.01)
    assert [t.is_inference() for t in produced] == [False, True]  # timed under no_grad, then inference_mode
    assert threads == [1, 1]
    assert got == {"ops": 50 * ad.OPS_PER_STEP, "no_grad": no_grad, "inference_mode": inference,
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


def test_compare_jacobians_reports_round_off_and_ratios_of_medians(monkeypatch):
    timings = [timing(4e-3), timing(5e-3), timing(1e-3), timing(2e-3)]
    _, threads = scripted_timer(monkeypatch, timings)
    rows = ad.compare_jacobians(6, 0.01, torch.Generator().manual_seed(0))
    assert [r["method"] for r in rows] == list(ad.jacobian_methods(torch.sin, torch.zeros(1)))
    assert [r["timing"] for r in rows] == timings and threads == [1] * 4
    assert [r["time / loop"] for r in rows] == [1.0, 1.25, 0.25, 0.5]  # each median over the loop's median
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


# --- gradient hooks ----------------------------------------------------------------------------------------------

def hooked_setup(fault: str, seed: int = 0):
    torch.manual_seed(seed)
    model = ad.with_fault(ad.make_hooked_net(), fault)
    X, y = ad.padded_batch(torch.Generator().manual_seed(seed))
    return model, X, y


def reference_norms(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The same graph built layer by layer, every gradient from torch.autograd.grad (no hooks)."""
    outputs, h = [], X
    for layer in model:
        h = layer(h)
        outputs.append(h)
    loss = F.mse_loss(h, y)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, outputs + list(params.values()))
    norms = {f"output {i}": torch.linalg.vector_norm(g).item() for i, g in enumerate(grads[:len(outputs)])}
    norms.update({name: torch.linalg.vector_norm(g).item() for name, g in zip(params, grads[len(outputs):])})
    return norms


@pytest.mark.parametrize("fault", list(ad.HOOK_FAULTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hooks_flag_the_layer_that_was_broken(fault, seed):
    model, X, y = hooked_setup(fault, seed)
    flagged = ad.flag_broken_layer(ad.record_layer_gradients(model, X, y))
    broken = ad.HOOK_FAULTS[fault]
    if broken is None:
        assert flagged is None
    else:
        assert flagged is not None and flagged[0] == f"{broken} {type(model[broken]).__name__}"


@pytest.mark.parametrize("fault", list(ad.HOOK_FAULTS))
def test_hook_norms_equal_those_of_autograd_grad_on_the_same_graph(fault):
    model, X, y = hooked_setup(fault)
    rows = ad.record_layer_gradients(model, X, y)
    expected = reference_norms(model, X, y)
    assert [r["index"] for r in rows] == [4, 3, 2, 1, 0]  # the order backward reaches the layers
    for r in rows:
        i = r["index"]
        got = [r["‖∂L/∂output‖"], *r["‖∂L/∂params‖"].values()]
        want = [expected[f"output {i}"], *(expected[name] for name in r["‖∂L/∂params‖"])]
        if i > 0:  # ∂L/∂input of layer i is ∂L/∂output of layer i − 1
            got.append(r["‖∂L/∂input‖"])
            want.append(expected[f"output {i - 1}"])
        else:
            assert r["‖∂L/∂input‖"] is None
        assert sorted(r["‖∂L/∂params‖"]) == sorted(n for n, _ in model.named_parameters() if n.startswith(f"{i}."))
        torch.testing.assert_close(torch.tensor(got, dtype=F64), torch.tensor(want, dtype=F64),
                                   rtol=1e-6, atol=0, equal_nan=True)
        assert r["output finite"] is True


def test_eps_outside_the_sqrt_poisons_the_whole_first_weight_gradient_through_one_zero_row():
    """The prose: finite forward, NaN from sqrt's backward at the zero row, all of layer 0's weight gradient NaN;
    eps inside the sqrt (or no zero row) keeps every gradient finite."""
    model, X, y = hooked_setup("eps outside the sqrt")
    assert (X[ad.PADDING_ROW] == 0).all()
    out = model(X)
    assert torch.isfinite(out).all()
    F.mse_loss(out, y).backward()
    assert torch.isnan(model[0].weight.grad).all()
    for fault, rows_x in (("none (eps inside the sqrt)", X), ("eps outside the sqrt", X[X.abs().sum(1) > 0])):
        model, _, _ = hooked_setup(fault)
        F.mse_loss(model(rows_x), y[:len(rows_x)]).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), fault
    # The fixed norm is the textbook RMSNorm: x / sqrt(mean(x²) + eps), torch's own F.rms_norm.
    h = torch.randn(5, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ad.RMSNorm()(h), F.rms_norm(h, (8,), eps=ad.RMSNORM_EPS), rtol=1e-12, atol=1e-12)


def test_hooks_are_removed_even_when_the_pass_fails():
    model, X, y = hooked_setup("eps outside the sqrt")

    def no_hooks_left() -> bool:
        return (all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
                and all(not p._backward_hooks for p in model.parameters()))

    ad.record_layer_gradients(model, X, y)
    assert no_hooks_left()
    with pytest.raises(RuntimeError):
        ad.record_layer_gradients(model, X[:, :3], y)  # wrong width: the first layer raises mid-forward
    assert no_hooks_left()
    # And a pass with the hooks off records nothing new: the rows of a second call are fresh and complete.
    assert len(ad.record_layer_gradients(model, X, y)) == len(model)


def test_flag_rule_on_hand_made_rows():
    def row(i, out, inp, params=None, finite=True):
        return {"index": i, "layer": f"{i} L", "output finite": finite, "‖∂L/∂output‖": out, "‖∂L/∂input‖": inp,
                "‖∂L/∂params‖": params or {}}

    assert ad.flag_broken_layer([row(1, 1.0, 2.0), row(0, 2.0, None, {"w": 3.0})]) is None
    assert ad.flag_broken_layer([row(1, 1.0, math.nan), row(0, math.nan, None, {"w": math.nan})]) == (
        "1 L", "finite gradient in, NaN or inf out")
    assert ad.flag_broken_layer([row(1, 1.0, 2.0), row(0, 2.0, None, {"w": math.inf})]) == (
        "0 L", "finite gradient in, NaN or inf out")
    assert ad.flag_broken_layer([row(1, 1.0, 2e3, {"w": 1.0}), row(0, 2e3, None)], explode_ratio=1e3) == (
        "1 L", "‖∂L/∂input‖ = 2.0e+03 × ‖∂L/∂output‖")
    assert ad.flag_broken_layer([row(1, 1.0, 999.0), row(0, 999.0, None)], explode_ratio=1e3) is None
    assert ad.flag_broken_layer([row(1, math.nan, math.nan), row(0, math.nan, None, finite=False)]) == (
        "0 L", "non-finite output in the forward pass")
    with pytest.raises(ValueError, match="fault='typo'"):
        ad.with_fault(ad.make_hooked_net(), "typo")


def test_gradient_hook_report_against_detect_anomaly():
    """detect_anomaly stops on the NaN at SqrtBackward0 and misses a finite explosion; the hooks flag both."""
    torch.manual_seed(0)
    report = ad.gradient_hook_report(torch.Generator().manual_seed(0))
    assert list(report) == list(ad.HOOK_FAULTS)
    nan_fault, huge_fault, healthy = ad.HOOK_FAULTS
    assert report[nan_fault]["flagged"] == ("1 RMSNorm", "finite gradient in, NaN or inf out")
    assert report[nan_fault]["detect_anomaly"] == (
        "RuntimeError: Function 'SqrtBackward0' returned nan values in its 0th output.")
    assert report[huge_fault]["flagged"][0] == "2 Linear"
    ratio = float(re.search(r"= (\S+) ×", report[huge_fault]["flagged"][1]).group(1))
    assert ratio > ad.EXPLODE_RATIO
    assert report[huge_fault]["detect_anomaly"] == report[healthy]["detect_anomaly"] == "no error"
    assert report[healthy]["flagged"] is None
    # The explosion is finite: nothing for anomaly mode (which looks for NaN) to find.
    huge_rows = report[huge_fault]["rows"]
    assert all(math.isfinite(r["‖∂L/∂output‖"]) for r in huge_rows)


def test_detect_anomaly_warns_of_its_cost_and_lets_an_inf_gradient_pass():
    """The prose: torch warns that anomaly mode "will increase the runtime", and it looks for NaN only."""
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    with pytest.warns(UserWarning, match="will increase the runtime"):
        with torch.autograd.detect_anomaly():
            x.sqrt().sum().backward()  # d√x/dx at 0 is inf: no error
    assert x.grad.tolist() == [math.inf, 0.25]


def test_print_gradient_hooks(capsys):
    rows = [{"index": 1, "layer": "1 RMSNorm", "output finite": True, "‖∂L/∂output‖": 0.5, "‖∂L/∂input‖": math.nan,
             "‖∂L/∂params‖": {}},
            {"index": 0, "layer": "0 Linear", "output finite": True, "‖∂L/∂output‖": math.nan, "‖∂L/∂input‖": None,
             "‖∂L/∂params‖": {"0.weight": 3.0, "0.bias": 4.0}}]
    report = {"f": {"rows": rows, "flagged": ("1 RMSNorm", "why"), "detect_anomaly": "no error"},
              "g": {"rows": [], "flagged": None, "detect_anomaly": "no error"}}
    ad.print_gradient_hooks(report, "f")
    printed = capsys.readouterr().out
    table, pairs = printed.split("\n--- ", 1)
    lines = table.strip("\n").splitlines()
    assert lines[0] == "Gradient hooks, fault: f (rows in the order backward reached the layers)"
    assert lines[3].split() == ["1", "RMSNorm", "True", "5.0e-01", "nan", "nan", "-"]
    assert lines[4].split() == ["0", "Linear", "True", "nan", "-", "-", "5.0e+00"]  # √(3² + 4²)
    assert _printed_pairs("--- " + pairs) == {"f: hooks flag": "layer 1 RMSNorm: why", "f: detect_anomaly": "no error",
                                              "g: hooks flag": "no layer", "g: detect_anomaly": "no error"}


def test_make_mlp_has_the_documented_depth():
    model = ad.make_mlp(8)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 8)] * ad.TIMED_MLP_DEPTH + [(8, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == ad.TIMED_MLP_DEPTH


def test_time_forward_backward_ratio_is_the_median_of_backward_over_forwards(monkeypatch):
    timings = [Timing(1e-3, 9e-4, 1, False), Timing(3e-3, 1e-5, 1, False), timing(2e-3), timing(5e-3)]
    produced, threads = scripted_timer(monkeypatch, timings)
    rows = ad.time_forward_backward((8, 16), batch=4, min_run_time=0.005, generator=torch.Generator().manual_seed(0))
    assert rows == [{"width": 8, "forward": timings[0], "backward": timings[1], "backward/forward": 3.0,
                     "flop ratio": ad.backward_forward_flops(8, 4)},
                    {"width": 16, "forward": timings[2], "backward": timings[3], "backward/forward": 2.5,
                     "flop ratio": ad.backward_forward_flops(16, 4)}]
    assert threads == [1] * 4  # one thread: not the point of this table, and steadier on a shared machine
    assert produced[0].shape == (4, 1) and produced[1] is None  # forward returns the output, backward None


@pytest.mark.parametrize(("width", "batch", "depth"), [(8, 4, 3), (64, 32, 3), (16, 2, 1)])
def test_backward_costs_2d_minus_1_matmuls_for_d_forward_ones(width, batch, depth):
    """Closed form: forward 2bw²·d + 2bw (the w → 1 head); backward the weight gradients (the same again) and the
    input gradients of every layer but the first (2bw²·(d − 1) + 2bw): about (2d − 1)/d, not 2."""
    forward = 2 * batch * width**2 * depth + 2 * batch * width
    backward = forward + 2 * batch * width**2 * (depth - 1) + 2 * batch * width
    assert ad.backward_forward_flops(width, batch, depth) == pytest.approx(backward / forward, rel=1e-12)


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
    timings = [{"width": 8, "forward": timing(1e-3), "backward": timing(2e-3), "backward/forward": 2.0,
                "flop ratio": 1.7},
               {"width": 16, "forward": timing(2e-3, noisy=True), "backward": timing(3e-3), "backward/forward": 1.5,
                "flop ratio": 1.68}]
    fig = ad.plot_gradient_flow(grads, [1.0, 0.5], timings, batch=4)
    suptitle = fig._suptitle.get_text()  # Figure.get_suptitle() exists only from matplotlib 3.8
    assert "1 → 32 → 32 → 1 tanh MLP" in suptitle and "ReLU" in suptitle
    ax_norm, ax_hist, ax_loss, ax_time = fig.axes
    assert all(t.startswith("tanh MLP") for t in (ax_norm.get_title(), ax_hist.get_title(), ax_loss.get_title()))
    assert ax_time.get_title() == f"ReLU MLP, {ad.TIMED_MLP_DEPTH} hidden layers, batch 4, 1 thread"
    assert ax_time.get_yscale() == "linear" and not ax_time.patches and not ax_norm.patches  # points, no bars
    assert list(ax_time.lines[0].get_ydata()) == [2.0, 1.5]  # the ratios of the medians, as computed
    assert list(ax_time.lines[1].get_ydata()) == [1.7, 1.68]  # and the FLOP ratios they are compared with
    notes = [t.get_text() for t in ax_time.texts if t.get_text().startswith("forward")]
    assert notes == ["forward 1 ms", f"forward 2 ms {NOISY_MARK} noisy"]  # a noisy input marks its point
    steps = ad.fd_steps(3)
    fig = ad.plot_fd_error(steps, {"float32": [1e-3, 1e-4, 1.0]}, {"max |grad|": 1.0})
    assert fig.axes[0].get_xlabel() == "step size h"


def test_the_finite_difference_step_is_never_called_eps():
    """ε_mach is machine epsilon; the step is h (torch's own gradcheck(eps=...) is not used here).

    The finite-difference and gradcheck sections never say eps; later, eps is RMSNorm's own stabiliser.
    """
    source = (ROOT / "autograd_demo.py").read_text(encoding="utf-8")
    assert not re.search(r"eps_values|eps_points|fd_eps|eps_step", source)
    start = source.index("# ## Gradient checking with finite differences")
    end = source.index("# ## Gradient accumulation")
    assert not re.search(r"\beps\b", source[:start] + source[start:end])
    assert set(re.findall(r"\w*\beps\w*", source[end:])) <= {"eps", "RMSNORM_EPS", "eps_inside_sqrt"}


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


def test_timing_printers_show_median_iqr_mark_and_the_thread_note(capsys):
    ad.print_mode_timings({"ops": 400, "no_grad": Timing(8e-4, 4e-5, 1, False),
                           "inference_mode": Timing(6e-4, 1.2e-4, 1, True), "inference_mode / no_grad": 0.75},
                          torch.device("cpu"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "A chain of 400 small ops on cpu, timed under each mode"
    assert printed[2].split() == ["mode", "median", "IQR", "median", "/", "op", "time", "/", "no_grad"]
    assert printed[4].split() == ["no_grad", "800", "µs", "5", "%", "2", "µs", "1.00×"]
    # 20 % IQR: noisy, so the timing and the ratio built on it both carry the mark.
    assert printed[5].split() == ["inference_mode", "600", "µs", "20", "%", NOISY_MARK, "1.5", "µs", "0.75×",
                                  NOISY_MARK]
    assert printed[6] == timing_note(1)
    rows = [{"width": 8, "forward": Timing(1e-3, 2e-5, 1, False), "backward": Timing(2.5e-3, 5e-4, 1, True),
             "backward/forward": 2.5, "flop ratio": 1.7},
            {"width": 16, "forward": Timing(2e-3, 2e-5, 1, False), "backward": Timing(3e-3, 3e-5, 1, False),
             "backward/forward": 1.5, "flop ratio": 1.68}]
    ad.print_forward_backward(rows, 4, torch.device("cpu"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == f"Forward vs backward, ReLU MLP with {ad.TIMED_MLP_DEPTH} hidden layers, batch 4, on cpu"
    assert printed[2].split() == ["width", "forward", "median", "forward", "IQR", "backward", "median", "backward",
                                  "IQR", "backward/forward", "FLOP", "ratio"]
    assert printed[4].split() == ["8", "1", "ms", "2", "%", "2.5", "ms", "20", "%", NOISY_MARK, "2.50×", NOISY_MARK,
                                  "1.70×"]
    assert printed[5].split() == ["16", "2", "ms", "1", "%", "3", "ms", "1", "%", "1.50×", "1.68×"]
    assert printed[6] == timing_note(1)
    jacobian_rows = [{"method": "loop", "max |diff|": 1e-16, "timing": timing(4e-3), "time / loop": 1.0},
                     {"method": "jacrev", "max |diff|": 2e-16, "timing": timing(1e-3, noisy=True), "time / loop": 0.25}]
    ad.print_jacobians(jacobian_rows, 6)
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == ["method", "max", "|diff|", "median", "IQR", "time", "/", "loop"]
    assert printed[4].split() == ["loop", "1.0e-16", "4", "ms", "2", "%", "1.00×"]
    assert printed[5].split() == ["jacrev", "2.0e-16", "1", "ms", "2", "%", NOISY_MARK, "0.25×", NOISY_MARK]
    assert printed[6] == timing_note(1)


def test_a_full_run_prints_every_timing_table_with_its_spread_and_note(tmp_path, capsys, fake_timings, no_figures):
    """With the conftest fake (1 ms median, 2 % IQR), every timing table has an IQR column and the note under it."""
    out = _full_run_output(tmp_path, capsys)
    assert out.count(timing_note(1)) == 3
    fake_cells = f"{FAKE_MEDIAN_S * 1e3:g} ms {100 * FAKE_IQR_S / FAKE_MEDIAN_S:.0f} %"
    for title in ("A chain of", "Jacobian of a", "Forward vs backward"):
        table = out.split("\n" + title, 1)[1].split(timing_note(1), 1)[0]
        assert "IQR" in table.splitlines()[1], title
        body = [" ".join(line.split()) for line in table.splitlines()[3:] if line.strip()]
        assert body and all(fake_cells in line and "1.00×" in line for line in body), title
