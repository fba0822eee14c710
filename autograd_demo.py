"""Autograd: what PyTorch's automatic differentiation computes, and why you can trust it.

Run `python autograd_demo.py` (add `--quick` for a smoke run).
It walks the dynamic graph, computes gradients, higher derivatives, Jacobians and Hessians,
checks every one against an independent reference (closed forms, finite differences,
torch.func), writes custom autograd Functions, debugs a NaN gradient, and times no_grad vs
inference_mode and forward vs backward. Figures: plots/autograd_graph.png,
plots/finite_difference_error.png, plots/gradient_flow_analysis.png.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesson_harness import (
    fmt_seconds,
    new_figure,
    print_pairs,
    print_table,
    save_figure,
    start_lesson,
    time_median,
)


@dataclass(frozen=True)
class Config:
    jacobian_size: int = 64  # input/output length of the function whose Jacobian is timed
    mlp_hidden_sizes: tuple[int, ...] = (64, 256, 1024)  # widths for the forward-vs-backward timing
    mlp_batch: int = 256  # rows per forward pass in the timing
    train_steps: int = 60  # optimisation steps for the loss-curve panel
    min_run_time: float = 0.075  # seconds per timing point (12 points in a full run, 10 in --quick)
    fd_step_count: int = 23  # finite-difference step sizes h, log-spaced from FD_STEP_LARGEST to FD_STEP_SMALLEST


FULL = Config()
QUICK = Config(jacobian_size=16, mlp_hidden_sizes=(32, 64), mlp_batch=32, train_steps=10, min_run_time=0.007,
               fd_step_count=12)

FD_STEP_LARGEST = 1e-1  # largest finite-difference step h in the sweep
FD_STEP_SMALLEST = 1e-12  # smallest step h: far below float32's resolution near |x| ≈ 1
FD_POINTS = (-1.0, -0.6, -0.2, 0.2, 0.6, 1.0)  # where the finite-difference gradient is compared
SIN_DERIVATIVE_ORDERS = 5  # derivatives 0..4 of sin, printed against the closed form
SIN_DERIVATIVE_POINT = 1.0  # x where those derivatives are printed
ROSENBROCK_POINT = (-1.2, 1.0, 0.5, 2.0)  # where the Rosenbrock Hessian is checked
HVP_DIRECTION = (1.0, -1.0, 0.5, 0.0)  # v in the Hessian-vector product H·v
ACCUMULATION_ROWS = 12  # rows of the batch split into micro-batches
EQUAL_MICRO_BATCHES = (3, 3, 3, 3)  # four micro-batches of three rows
UNEQUAL_MICRO_BATCHES = (2, 3, 7)  # three micro-batches of different sizes, as when the last one is short
SMALL_OP_STEPS = 100  # steps of the small-op chain timed under no_grad and inference_mode
OPS_PER_STEP = 4  # view, transpose, reshape (a copy), in-place multiply
TANH_MLP_SIZES = (1, 32, 32, 1)  # the small tanh MLP whose gradients and loss are plotted
TIMED_MLP_DEPTH = 3  # hidden layers of the ReLU MLP in the forward-vs-backward timing
ADAM_LR = 1e-2  # learning rate of the loss-curve run


def _rounded(t: torch.Tensor) -> list[float]:
    """A tensor's values as a flat list, rounded to 4 decimals for printing."""
    return [round(v, 4) for v in t.flatten().tolist()]


def _sci(value: float) -> str:
    """A difference or error in scientific notation, two significant digits."""
    return f"{value:.1e}"


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python autograd_demo.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them.

# %%
if __name__ == "__main__":
    ctx = start_lesson("autograd_demo")
    cfg = ctx.config(FULL, QUICK)


# %% [markdown]
# ## The dynamic graph
#
# With grad mode on (the default), every operation with an input that has `requires_grad=True`
# records a node (`grad_fn`) that knows how to push gradients back to its inputs
# (`next_functions`); its result is a *non-leaf*.
# Everything else is a *leaf*: tensors you create, and also results of operations that autograd
# did not record (no input requires grad, or `no_grad` was on), which have `requires_grad=False`.
# `.backward()` walks the graph from the output and fills `.grad` of the leaves that require
# grad, not of non-leaves unless they call `retain_grad()`. The graph's saved tensors are freed
# after one backward pass unless `retain_graph=True`. The graph is built anew on every forward
# pass, which is why ordinary Python control flow just works.

# %%
def graph_facts() -> dict[str, object]:
    """The rules of the graph, each demonstrated on a tiny expression."""
    x = torch.tensor(2.0, requires_grad=True)
    w = torch.tensor(3.0, requires_grad=True)
    z = w * x  # non-leaf
    z.retain_grad()
    y = z**2
    y.backward(retain_graph=True)
    constant_product = torch.tensor(2.0) * 3  # no input requires grad: nothing recorded
    facts: dict[str, object] = {
        "x.is_leaf": x.is_leaf,
        "z = w * x: z.is_leaf": z.is_leaf,
        "z.grad_fn": type(z.grad_fn).__name__,
        "y.grad_fn.next_functions": [type(fn).__name__ for fn, _ in y.grad_fn.next_functions],
        "tensor(2.) * 3: is_leaf, requires_grad": (constant_product.is_leaf, constant_product.requires_grad),
        "x.grad (dy/dx = 2 w^2 x)": x.grad.item(),
        "z.grad after retain_grad() (dy/dz = 2z)": z.grad.item(),
    }
    y.backward()  # allowed once more because of retain_graph=True above; this one frees the graph
    facts["x.grad after a second backward (accumulated)"] = x.grad.item()
    try:
        y.backward()
        facts["third backward (the second freed the graph)"] = "no error"
    except RuntimeError as err:
        facts["third backward (the second freed the graph)"] = "RuntimeError: " + str(err).split(" (")[0][:50]

    detached = z.detach()
    facts["z.detach().requires_grad"] = detached.requires_grad
    facts["detach shares storage"] = detached.data_ptr() == z.data_ptr()
    with torch.no_grad():
        under_no_grad = x * 2
    facts["x * 2 under no_grad: is_leaf, requires_grad"] = (under_no_grad.is_leaf, under_no_grad.requires_grad)
    return facts


def autograd_graph(output: torch.Tensor, names: dict[int, str] | None = None) -> tuple[list[dict], list[tuple]]:
    """Nodes (id, label, depth) and edges (child -> parent) reachable from `output.grad_fn`.

    A node's depth is its longest path from the output, so a node shared by two parents sits
    below both. `names` maps `id(leaf tensor)` to a label for its AccumulateGrad node.
    """
    if output.grad_fn is None:
        raise ValueError("output has no grad_fn: it is a leaf or was computed without autograd")
    names = names or {}
    # Keyed on the node objects themselves: that keeps every Python wrapper alive, so the same
    # graph node always comes back as the same object. (torch 2.5 frees a wrapper as soon as no
    # Python reference holds it and may reuse its id() for the next node: never key on id().)
    children: dict[object, list[object]] = {}
    stack = [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn in children:
            continue
        children[fn] = list(dict.fromkeys(c for c, _ in fn.next_functions if c is not None))
        stack.extend(children[fn])
    # Longest path from the output: visit a node only after all of its parents (Kahn's algorithm).
    waiting_parents = dict.fromkeys(children, 0)
    for kids in children.values():
        for child in kids:
            waiting_parents[child] += 1
    depth = {output.grad_fn: 0}
    ready = [output.grad_fn]
    while ready:
        fn = ready.pop()
        for child in children[fn]:
            depth[child] = max(depth.get(child, 0), depth[fn] + 1)
            waiting_parents[child] -= 1
            if waiting_parents[child] == 0:
                ready.append(child)
    index = {fn: i for i, fn in enumerate(children)}
    nodes = []
    for fn, i in index.items():
        label = type(fn).__name__
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold their leaf tensor
        if variable is not None:
            label = f"{names.get(id(variable), 'leaf')}\n(AccumulateGrad)"
        nodes.append({"id": i, "label": label, "depth": depth[fn]})
    edges = [(index[child], index[fn]) for fn, kids in children.items() for child in kids]
    return nodes, edges


def example_graph() -> tuple[list[dict], list[tuple], str]:
    """The graph of loss = (sigmoid(w·x + b) − target)², with readable leaf names."""
    x = torch.tensor(2.0)
    w = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(-1.0, requires_grad=True)
    loss = (torch.sigmoid(w * x + b) - 0.8) ** 2
    nodes, edges = autograd_graph(loss, {id(w): "w", id(b): "b"})
    return nodes, edges, "loss = (sigmoid(w·x + b) − 0.8)²"


def plot_autograd_graph(nodes: list[dict], edges: list[tuple], title: str):
    fig, axes = new_figure(1, 1, "The autograd graph, walked from the loss through next_functions", (11, 4))
    ax = axes[0, 0]
    by_depth: dict[int, list[dict]] = {}
    for node in nodes:
        by_depth.setdefault(node["depth"], []).append(node)
    max_depth = max(by_depth)
    position = {}
    for depth, column in by_depth.items():
        for i, node in enumerate(column):
            position[node["id"]] = (max_depth - depth, (i + 1) / (len(column) + 1))
    ax.set_xlim(-0.6, max_depth + 0.6)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    boxes = {}
    for node in nodes:
        leaf = "AccumulateGrad" in node["label"]
        boxes[node["id"]] = ax.text(
            *position[node["id"]], node["label"], ha="center", va="center", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "#cde8c4" if leaf else "#c9daf8", "edgecolor": "black"})
    fig.draw_without_rendering()  # lay the boxes out so arrows can end at their edges
    for child, parent in edges:
        ax.annotate("", xy=position[parent], xytext=position[child],
                    arrowprops={"arrowstyle": "-|>", "color": "dimgrey", "mutation_scale": 18,
                                "patchA": boxes[child].get_bbox_patch(), "patchB": boxes[parent].get_bbox_patch()})
    ax.set_title(title, fontsize=12)
    ax.text(0.5, 0.02, "green: leaves whose .grad backward fills "
            "(x has requires_grad=False, so it is not in the graph)\n"
            "blue: backward nodes (grad_fn); arrows point the way the forward pass ran, backward runs right to left",
            transform=ax.transAxes, ha="center", va="bottom", fontsize=10, color="dimgrey")
    return fig


# %%
if __name__ == "__main__":
    print_pairs("The dynamic graph", graph_facts(), fmt=str)
    save_figure(plot_autograd_graph(*example_graph()), "autograd_graph.png", ctx.plots_dir)


# %% [markdown]
# ## no_grad vs inference_mode
#
# Both stop recording the graph. `inference_mode` also drops two pieces of bookkeeping that
# every op on an ordinary tensor pays for: the *version counter* (bumped by every in-place op,
# so autograd can tell whether a tensor it saved was changed) and *view tracking* (a view
# remembers its base tensor). Tensors made under it are *inference tensors*: cheaper, but they
# can never enter autograd later (they cannot be saved for backward, nor changed in place outside
# inference mode). Use `inference_mode` for pure inference and serving; use `no_grad` when the
# results may meet autograd again (evaluation inside a training loop, updating weights by hand).
# The saving is per op, so it shows on chains of small ops, timed below.

# %%
def inference_mode_facts() -> dict[str, object]:
    """What inference_mode drops compared with no_grad, and what it forbids afterwards.

    `_version` and `_base` are internals, read here only to show what is tracked.
    """
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with torch.no_grad():
        plain = x * 2
        plain.mul_(2)
        plain_view = plain.view(3)
    with torch.inference_mode():
        inference = x * 2
        inference.mul_(2)
        inference_view = inference.view(3)
    facts: dict[str, object] = {
        "no_grad: is_inference()": plain.is_inference(),
        "no_grad: version after one in-place op": plain._version,
        "no_grad: view knows its base": plain_view._base is plain,
        "inference_mode: is_inference()": inference.is_inference(),
        "inference_mode: view knows its base": inference_view._base is inference,
    }
    attempts = {
        "inference_mode: read the version counter": lambda: inference._version,
        "inference tensor saved for backward": lambda: (inference * x).sum().backward(),
        "inference tensor changed in place later": lambda: inference.add_(1),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            facts[name] = "allowed"
        except RuntimeError:
            facts[name] = "RuntimeError"
    return facts


def small_op_chain(t: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` × (view, transpose, reshape, in-place multiply) on a 16-element tensor."""
    for _ in range(steps):
        t = t.view(4, 4).t().reshape(-1).mul_(1.0)  # (16,); reshape of the transpose copies
    return t


def time_no_grad_vs_inference_mode(steps: int, min_run_time: float,
                                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of the small-op chain under each mode, per op, and inference_mode / no_grad."""
    t = torch.ones(16, device=device)

    def under(mode: Callable[[], object]) -> Callable[[], torch.Tensor]:
        def chain() -> torch.Tensor:
            with mode():
                return small_op_chain(t, steps)
        return chain

    no_grad = time_median(under(torch.no_grad), device, min_run_time)
    inference = time_median(under(torch.inference_mode), device, min_run_time)
    ops = steps * OPS_PER_STEP
    return {"ops": ops, "no_grad per op": no_grad / ops, "inference_mode per op": inference / ops,
            "inference_mode / no_grad": inference / no_grad}


def print_mode_timings(modes: dict[str, float], device: torch.device) -> None:
    print(f"{modes['ops']} small ops on {device.type}: no_grad {fmt_seconds(modes['no_grad per op'])}/op, "
          f"inference_mode {fmt_seconds(modes['inference_mode per op'])}/op "
          f"({modes['inference_mode / no_grad']:.2f}× the time)")


# %%
if __name__ == "__main__":
    print_pairs("no_grad vs inference_mode", inference_mode_facts(), fmt=str)
    print_mode_timings(time_no_grad_vs_inference_mode(SMALL_OP_STEPS, cfg.min_run_time, ctx.device), ctx.device)


# %% [markdown]
# ## Gradients and vector-Jacobian products
#
# For a scalar output `y.backward()` gives dy/dx. For a vector output there is no single
# "gradient": `y.backward(gradient=v)` computes the vector-Jacobian product vᵀJ, one number
# per input, never the Jacobian itself. That is all reverse mode ever computes, and it is why
# a loss must be a scalar.

# %%
def basic_gradients() -> dict[str, torch.Tensor]:
    x = torch.tensor(2.0, requires_grad=True)
    (x**2).backward()
    scalar_grad = x.grad.clone()  # d(x²)/dx at 2 = 4

    xs = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    v = torch.tensor([1.0, 0.1, 0.01])
    (xs**2).backward(gradient=v)  # vᵀJ with J = diag(2x)
    jacobian = torch.func.jacrev(lambda t: t**2)(xs.detach())
    return {"x**2 at 2": scalar_grad, "vjp": xs.grad.clone(), "v @ jacobian": v @ jacobian}


def print_gradients(basics: dict[str, torch.Tensor]) -> None:
    print_pairs("Gradients and vector-Jacobian products", {
        "d(x²)/dx at x = 2 (closed form 2x = 4)": basics["x**2 at 2"].item(),
        "backward(gradient=v), y = x², x = [1, 2, 3], v = [1, 0.1, 0.01]": _rounded(basics["vjp"]),
        "vᵀJ with J = jacrev(x ↦ x²)": _rounded(basics["v @ jacobian"])}, fmt=str)


# %%
if __name__ == "__main__":
    print_gradients(basic_gradients())


# %% [markdown]
# ## Higher-order derivatives
#
# `torch.autograd.grad(..., create_graph=True)` returns a gradient that is itself part of a
# graph, so it can be differentiated again. Repeat n times for the n-th derivative.

# %%
def nth_derivative(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor | float, n: int) -> torch.Tensor:
    """The n-th derivative of scalar function `f` at scalar `x` (n = 0 gives f(x))."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative integer")
    x = torch.as_tensor(x, dtype=torch.get_default_dtype() if not torch.is_tensor(x) else None)
    if x.numel() != 1:
        raise ValueError(f"x must be a scalar, got shape {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    for _ in range(n):
        if not y.requires_grad:  # the previous derivative was constant: the rest are zero
            return torch.zeros_like(x).detach()
        (y,) = torch.autograd.grad(y, x, create_graph=True, allow_unused=True)
        if y is None:
            return torch.zeros_like(x).detach()
    return y.detach()


def sin_derivative_table(x0: float, orders: int) -> list[list[object]]:
    """Rows [n, autograd's n-th derivative of sin at x0, the closed form sin(x0 + nπ/2)]."""
    x = torch.tensor(x0, dtype=torch.float64)
    return [[n, nth_derivative(torch.sin, x, n).item(), math.sin(x0 + n * math.pi / 2)] for n in range(orders)]


def print_sin_derivatives(rows: list[list[object]]) -> None:
    print_table(f"n-th derivative of sin at x = {SIN_DERIVATIVE_POINT:g}",
                ["n", "autograd", f"closed form sin({SIN_DERIVATIVE_POINT:g} + nπ/2)"], rows)


# %%
if __name__ == "__main__":
    print_sin_derivatives(sin_derivative_table(SIN_DERIVATIVE_POINT, SIN_DERIVATIVE_ORDERS))


# %% [markdown]
# ## Jacobians, four ways
#
# Row by row: one reverse pass per output, m passes for an m×n Jacobian. `torch.func.jacrev`
# vectorises those passes with `vmap`; `jacfwd` uses forward mode, one pass per input, and wins
# when inputs are fewer than outputs. `torch.autograd.functional.jacobian` is the older API.
# Every method is compared with the Jacobian derived by hand,
# J = diag(tanh(Wx) + cos x) + diag(x ⊙ (1 − tanh²(Wx))) W.

# %%
def jacobian_rows(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The Jacobian of `f` at `x`, shaped f(x).shape + x.shape, built one output at a time."""
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    flat = y.reshape(-1)
    rows = []
    for i in range(flat.numel()):
        (row,) = torch.autograd.grad(flat[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if row is None else row)
    return torch.stack(rows).reshape(y.shape + x.shape)


def make_vector_function(n: int, generator: torch.Generator | None = None
                         ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """f(x) = tanh(W x) ⊙ x + sin(x), a non-trivial R^n → R^n map, and its random W (n, n)."""
    W = torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W.to(x.dtype) @ x) * x + torch.sin(x)

    return f, W


def vector_function_jacobian(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian of tanh(W x) ⊙ x + sin(x), derived by hand: an independent reference."""
    t = torch.tanh(W @ x)  # (n,)
    return torch.diag(t + torch.cos(x)) + (x * (1 - t**2)).unsqueeze(1) * W  # (n, n)


def load_forward_mode() -> None:
    """Run forward mode once so its one-time set-up happens outside any timing.

    That set-up compiles internal decompositions with TorchScript, which warns that TorchScript
    is deprecated (a DeprecationWarning in torch 2.13, a FutureWarning from 2.14): torch's warning
    about its own internals, silenced here by its message only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
        torch.func.jacfwd(torch.sin)(torch.zeros(1))


def jacobian_methods(f: Callable, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Four ways to build the Jacobian of `f` at `x`, each a zero-argument callable so it can be timed."""
    load_forward_mode()
    return {
        "jacobian_rows (loop of backward)": lambda: jacobian_rows(f, x),
        "torch.autograd.functional.jacobian": lambda: torch.autograd.functional.jacobian(f, x),
        "torch.func.jacrev (vmap of vjp)": lambda: torch.func.jacrev(f)(x),
        "torch.func.jacfwd (vmap of jvp)": lambda: torch.func.jacfwd(f)(x),
    }


def compare_jacobians(n: int, min_run_time: float, generator: torch.Generator | None = None) -> list[dict]:
    """Each method's max |difference| from the hand-derived Jacobian, and its median time."""
    f, W = make_vector_function(n, generator)
    x = torch.randn(n, dtype=torch.float64, generator=generator)
    reference = vector_function_jacobian(W, x)
    return [{"method": name, "max |diff|": (method() - reference).abs().max().item(),
             "seconds": time_median(method, "cpu", min_run_time)}
            for name, method in jacobian_methods(f, x).items()]


def print_jacobians(rows: list[dict], n: int) -> None:
    print_table(f"Jacobian of a R^{n} → R^{n} map (max diff vs the hand-derived Jacobian, time)",
                ["method", "max |diff|", "median"],
                [[r["method"], _sci(r["max |diff|"]), fmt_seconds(r["seconds"])] for r in rows])


# %%
if __name__ == "__main__":
    print_jacobians(compare_jacobians(cfg.jacobian_size, cfg.min_run_time, ctx.generator), cfg.jacobian_size)


# %% [markdown]
# ## Hessians and Hessian-vector products
#
# Differentiate the gradient once more and you have the Hessian, one row per backward pass.
# Often you only need H·v (Newton-CG, curvature probes): differentiate gᵀv instead, which costs
# two backward passes whatever the size, and never forms the n×n matrix.

# %%
def hessian_double_backward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hessian of scalar `f` at 1-D `x` by differentiating the gradient row by row."""
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
    rows = []
    for i in range(x.numel()):
        if not grad[i].requires_grad:  # linear in x_i: that row of the Hessian is zero
            rows.append(torch.zeros_like(x))
            continue
        (row,) = torch.autograd.grad(grad[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if row is None else row)
    return torch.stack(rows).detach()


def hessian_vector_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(x) @ v without forming H: the gradient of gᵀv."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hvp,) = torch.autograd.grad(grad @ v, x)
    return hvp


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """Σ 100 (x_{i+1} − x_i²)² + (1 − x_i)²: the classic curved valley."""
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def rosenbrock_hessian(x: torch.Tensor) -> torch.Tensor:
    """The Rosenbrock Hessian written out by hand: an independent reference."""
    n = x.numel()
    H = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i + 1, i + 1] += 200
        H[i, i + 1] = H[i + 1, i] = -400 * x[i]
    return H


def rosenbrock_hessian_checks(x: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    """Max |difference| of the double-backward Hessian and of H·v from their references."""
    H = hessian_double_backward(rosenbrock, x)
    return {
        "double backward vs torch.func.hessian": (H - torch.func.hessian(rosenbrock)(x)).abs().max().item(),
        "double backward vs hand-derived": (H - rosenbrock_hessian(x)).abs().max().item(),
        "Hessian-vector product vs H @ v": (hessian_vector_product(rosenbrock, x, v) - H @ v).abs().max().item(),
    }


# %%
if __name__ == "__main__":
    print_pairs(f"Rosenbrock Hessian at {ROSENBROCK_POINT}",
                rosenbrock_hessian_checks(torch.tensor(ROSENBROCK_POINT, dtype=torch.float64),
                                          torch.tensor(HVP_DIRECTION, dtype=torch.float64)), fmt=_sci)


# %% [markdown]
# ## Gradient checking with finite differences
#
# The central difference (f(x+h) − f(x−h)) / 2h with step h has truncation error ∝ h², and
# round-off error ∝ ε_mach/h, where ε_mach is the machine epsilon (the spacing of floats
# just above 1: 1.2e-7 in float32, 2.2e-16 in float64). Shrinking h helps until round-off takes
# over: on log axes the error is a V, with its bottom near h ≈ ε_mach^(1/3), about 5e-3 in
# float32 and 6e-6 in float64. Below h ≈ ε_mach·|x|/2 (half the spacing of floats near x),
# x + h and x − h both round to x itself: the quotient is exactly 0 and the error is |f'(x)|,
# a flat plateau (float32 reaches it inside the sweep). `torch.autograd.gradcheck` automates
# the comparison, and must run in float64: in float32 it rejects even a correct backward (the
# next section shows both, on a backward written by hand).

# %%
def fd_steps(count: int) -> torch.Tensor:
    """`count` step sizes h, log-spaced from FD_STEP_LARGEST down to FD_STEP_SMALLEST."""
    return torch.logspace(math.log10(FD_STEP_LARGEST), math.log10(FD_STEP_SMALLEST), count, dtype=torch.float64)


def orders_of_magnitude(steps: torch.Tensor) -> int:
    """How many powers of ten the sweep spans (1e-1 … 1e-12 spans 11)."""
    return round(math.log10(steps.max().item() / steps.min().item()))


def finite_difference_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float) -> torch.Tensor:
    """Central-difference gradient of scalar `f` at `x` with step `h`, same shape and dtype as `x`."""
    if h <= 0:
        raise ValueError(f"h={h} must be a positive step size")
    x = x.detach()
    flat = x.reshape(-1)
    grad = torch.empty_like(flat)
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = h
        grad[i] = (f((flat + step).reshape(x.shape)) - f((flat - step).reshape(x.shape))) / (2 * h)
    return grad.reshape(x.shape)


def smooth_test_function(x: torch.Tensor) -> torch.Tensor:
    """Σ sin(x)·exp(x/2): smooth, with gradient cos(x)e^{x/2} + ½ sin(x)e^{x/2}."""
    return (torch.sin(x) * torch.exp(x / 2)).sum()


def fd_error_sweep(steps: torch.Tensor, x: torch.Tensor) -> dict[str, list[float]]:
    """Max abs error of finite differences vs the exact (float64 autograd) gradient, per dtype and step h."""
    exact = torch.func.grad(smooth_test_function)(x.to(torch.float64))
    errors = {}
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        errors[str(dtype).removeprefix("torch.")] = [
            (finite_difference_grad(smooth_test_function, xd, float(h)).to(torch.float64) - exact).abs().max().item()
            for h in steps
        ]
    return errors


def best_steps(steps: torch.Tensor, errors: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Per dtype: the step h with the smallest error, and that error."""
    best = {}
    for dtype, errs in errors.items():
        i = min(range(len(errs)), key=errs.__getitem__)
        best[dtype] = (steps[i].item(), errs[i])
    return best


def step_is_lost(x: torch.Tensor, h: float, dtype: torch.dtype) -> torch.Tensor:
    """True where x + h and x − h both round back to x in `dtype`."""
    xd = x.to(dtype)
    return ((xd + h) == xd) & ((xd - h) == xd)


def round_off_plateau(steps: torch.Tensor, x: torch.Tensor, errors: list[float],
                      dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Where x ± h rounds to x at every point: the largest such h, the error there and max |f'(x)|."""
    lost = [bool(step_is_lost(x, h.item(), dtype).all()) for h in steps]
    if not any(lost):
        raise ValueError(f"no step in the sweep (smallest {steps.min().item():.0e}) is lost in {dtype}")
    first = lost.index(True)
    exact = torch.func.grad(smooth_test_function)(x.to(torch.float64))
    return {"largest lost h": steps[first].item(), "error there": errors[first],
            "max |grad|": exact.abs().max().item()}


def print_finite_differences(orders: int, best: dict[str, tuple[float, float]], plateau: dict[str, float]) -> None:
    lost = (f"{plateau['largest lost h']:.0e}, error there {plateau['error there']:.4f} "
            f"= max |f'(x)| {plateau['max |grad|']:.4f}")
    print_pairs(f"Finite differences, step h over {orders} orders of magnitude", {
        **{f"{dtype}: most accurate at h": f"{h:.0e} (max error {err:.1e})" for dtype, (h, err) in best.items()},
        "float32: x ± h rounds to x at every x once h ≤": lost}, fmt=str)


def plot_fd_error(steps: torch.Tensor, errors: dict[str, list[float]], plateau: dict[str, float]):
    fig, axes = new_figure(1, 1, "Finite differences vs autograd: truncation error meets round-off", (8, 5))
    ax = axes[0, 0]
    h = steps.tolist()
    for name, errs in errors.items():
        floor = [max(e, 1e-18) for e in errs]  # exact zeros cannot be drawn on a log axis
        ax.loglog(h, floor, "o-", label=name)
        best = min(range(len(errs)), key=errs.__getitem__)
        ax.annotate(f"{name} best: h = {h[best]:.0e}", (h[best], floor[best]),
                    textcoords="offset points", xytext=(40, -28), arrowprops={"arrowstyle": "->"})
    ax.axhline(plateau["max |grad|"], color="grey", linestyle="--", linewidth=1)
    ax.text(h[0], plateau["max |grad|"] * 1.6, "max |f'(x)|: below h ≈ ε_mach·|x|/2, x ± h rounds to x "
            "and the quotient is 0", fontsize=9, color="dimgrey", va="bottom")
    lowest = min(max(e, 1e-18) for errs in errors.values() for e in errs)
    ax.set_ylim(bottom=lowest / 100, top=plateau["max |grad|"] * 30)
    ax.set(xlabel="step size h", ylabel="max |central difference − exact gradient|",
           title="Error of (f(x+h) − f(x−h)) / 2h for f = Σ sin(x)·exp(x/2), x ∈ [−1, 1]")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="dtype", loc="lower left")
    return fig


# %%
if __name__ == "__main__":
    fd_h, fd_x = fd_steps(cfg.fd_step_count), torch.tensor(FD_POINTS, dtype=torch.float64)
    fd_errors = fd_error_sweep(fd_h, fd_x)
    fd_plateau = round_off_plateau(fd_h, fd_x, fd_errors["float32"])
    print_finite_differences(orders_of_magnitude(fd_h), best_steps(fd_h, fd_errors), fd_plateau)
    save_figure(plot_fd_error(fd_h, fd_errors, fd_plateau), "finite_difference_error.png", ctx.plots_dir)


# %% [markdown]
# ## Custom autograd Functions
#
# Subclass `torch.autograd.Function` when you want to define the backward yourself. Written in
# the `forward` + `setup_context` style (and with `generate_vmap_rule = True`) a Function also
# works under `torch.func` transforms. If its backward uses differentiable torch operations,
# double backward (`gradgradcheck`) works too. gradcheck is worth running on code like this,
# whose backward you wrote; on built-in ops it would only test PyTorch. The first lines below
# run it on `SquareFunction` in float64, where it passes, and in float32, where it rejects it.

# %%
class SquareFunction(torch.autograd.Function):
    """x ↦ x² with a hand-written backward 2x·grad."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad_output


class StableLogSumExp(torch.autograd.Function):
    """log Σ exp(x) over the last dim, shifted by the max so exp never overflows.

    The naive `x.exp().sum(-1).log()` gives inf for x ≈ 1000; this stays finite, and its
    backward is softmax(x)·grad, computed from the saved output without another exp overflow.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        shift = x.amax(dim=-1, keepdim=True)
        return (x - shift).exp().sum(dim=-1).log() + shift.squeeze(-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        x, output = ctx.saved_tensors
        softmax = (x - output.unsqueeze(-1)).exp()  # exp(x − logsumexp) ≤ 1: no overflow
        return grad_output.unsqueeze(-1) * softmax


def gradcheck_in_both_precisions(generator: torch.Generator | None = None) -> dict[str, bool]:
    """gradcheck on SquareFunction (a correct backward) in float64 and in float32."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        x = torch.randn(3, dtype=dtype, generator=generator).requires_grad_(True)
        with warnings.catch_warnings():  # the float32 warning is the point of the demo
            warnings.filterwarnings("ignore", message=r"Input #0 requires gradient and is not a double")
            results[str(dtype).removeprefix("torch.")] = torch.autograd.gradcheck(
                SquareFunction.apply, (x,), raise_exception=False)
    return results


def print_gradcheck_precisions(gradchecks: dict[str, bool]) -> None:
    print_pairs("gradcheck needs float64", {f"gradcheck(SquareFunction) in {dtype}": ok
                                            for dtype, ok in gradchecks.items()}, fmt=str)


LOGSUMEXP_OVERFLOW_INPUT = (1000.0, 1000.5, 999.0)  # exp(1000) overflows float32 and float64 alike


def custom_function_report(generator: torch.Generator | None = None) -> dict[str, object]:
    """gradcheck/gradgradcheck results, overflow behaviour, and torch.func transforms over them."""
    x = torch.randn(4, 5, dtype=torch.float64, generator=generator).requires_grad_(True)
    big = torch.tensor(LOGSUMEXP_OVERFLOW_INPUT)
    per_example_grads = torch.func.vmap(torch.func.grad(StableLogSumExp.apply))(x.detach())
    return {
        "SquareFunction gradcheck": torch.autograd.gradcheck(SquareFunction.apply, (x,)),
        "SquareFunction gradgradcheck": torch.autograd.gradgradcheck(SquareFunction.apply, (x,)),
        "StableLogSumExp gradcheck": torch.autograd.gradcheck(StableLogSumExp.apply, (x,)),
        "StableLogSumExp gradgradcheck": torch.autograd.gradgradcheck(StableLogSumExp.apply, (x,)),
        "naive logsumexp([1000, 1000.5, 999])": big.exp().sum().log().item(),
        "StableLogSumExp([1000, 1000.5, 999])": StableLogSumExp.apply(big).item(),
        "torch.logsumexp (reference)": torch.logsumexp(big, dim=-1).item(),
        "vmap(grad(StableLogSumExp)) == softmax": torch.allclose(per_example_grads, F.softmax(x.detach(), dim=-1)),
        "func.grad(SquareFunction) at 3": torch.func.grad(lambda t: SquareFunction.apply(t).sum())(
            torch.tensor(3.0)).item(),
    }


# %%
if __name__ == "__main__":
    print_gradcheck_precisions(gradcheck_in_both_precisions(ctx.generator))
    print_pairs("Custom autograd Functions", custom_function_report(ctx.generator), fmt=str)


# %% [markdown]
# ## Gradient accumulation
#
# `.grad` is a running sum: each `backward()` adds to it. That is a feature when you split a
# batch into micro-batches that do not fit in memory at once, and a bug when you forget
# `optimizer.zero_grad()` in a training loop. `zero_grad()` sets `.grad` to None by default
# (cheaper than filling zeros). Scaling each of k micro-batch losses by 1/k gives the full-batch
# gradient only when the micro-batches have equal sizes: a mean loss over n_i rows must be
# weighted by its share of the rows, n_i/N, which is exact for any sizes.

# %%
def micro_batch_gradient(model: nn.Module, X: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...],
                         weighting: str) -> torch.Tensor:
    """All parameter gradients, flattened, after one backward per micro-batch of the MSE loss.

    weighting "1/k" scales each micro-batch's mean loss by 1/k; "rows/N" by its share of the rows.
    """
    if sum(sizes) != len(X):
        raise ValueError(f"sizes={sizes} add up to {sum(sizes)}, expected the {len(X)} rows of X")
    if weighting not in ("1/k", "rows/N"):
        raise ValueError(f"weighting={weighting!r} must be '1/k' or 'rows/N'")
    model.zero_grad()
    for X_micro, y_micro in zip(X.split(sizes), y.split(sizes)):
        weight = 1 / len(sizes) if weighting == "1/k" else len(X_micro) / len(X)
        (F.mse_loss(model(X_micro), y_micro) * weight).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def full_batch_gradient(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    F.mse_loss(model(X), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def accumulation_demo(generator: torch.Generator | None = None) -> dict[str, object]:
    """.grad sums over backward calls; micro-batch weightings against the full-batch gradient."""
    model = nn.Linear(3, 1, dtype=torch.float64)
    X = torch.randn(ACCUMULATION_ROWS, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(ACCUMULATION_ROWS, 1, dtype=torch.float64, generator=generator)

    F.mse_loss(model(X), y).backward()
    once = model.weight.grad.clone()
    F.mse_loss(model(X), y).backward()
    twice = model.weight.grad.clone()
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    after_zero_grad = model.weight.grad

    full = full_batch_gradient(model, X, y)
    splits = {f"sizes {EQUAL_MICRO_BATCHES}, loss × 1/k": (EQUAL_MICRO_BATCHES, "1/k"),
              f"sizes {UNEQUAL_MICRO_BATCHES}, loss × 1/k": (UNEQUAL_MICRO_BATCHES, "1/k"),
              f"sizes {UNEQUAL_MICRO_BATCHES}, loss × rows/N": (UNEQUAL_MICRO_BATCHES, "rows/N")}
    micro = {name: (micro_batch_gradient(model, X, y, sizes, weighting) - full).abs().max().item()
             for name, (sizes, weighting) in splits.items()}
    return {"once": once, "twice": twice, "after_zero_grad": after_zero_grad, "max |micro − full|": micro}


def print_accumulation(acc: dict[str, object]) -> None:
    print_pairs("Gradient accumulation", {
        "weight.grad after 1 backward": _rounded(acc["once"]),
        "after 2 (summed, not replaced)": _rounded(acc["twice"]), "after zero_grad()": acc["after_zero_grad"],
        **{f"max |micro − full|, {k}": _sci(v) for k, v in acc["max |micro − full|"].items()}}, fmt=str)


# %%
if __name__ == "__main__":
    print_accumulation(accumulation_demo(ctx.generator))


# %% [markdown]
# ## Debugging a NaN gradient
#
# `torch.where(x > 0, x.sqrt(), 0)` looks safe, but backward still differentiates *both*
# branches: at x = 0 the sqrt branch's gradient is inf, multiplied by the 0 that `where` sends
# it, and inf·0 = NaN. `torch.autograd.detect_anomaly()` raises at the first backward node that
# returns NaN and reports the forward line that created it. The fix: make the unused branch
# safe (`x.clamp_min(tiny).sqrt()`).

# %%
def nan_gradient_demo() -> dict[str, object]:
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    torch.where(x > 0, x.sqrt(), 0.0).sum().backward()
    silent = x.grad.clone()

    x.grad = None
    report: dict[str, object] = {"gradient without anomaly mode": silent.tolist()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly():
                torch.where(x > 0, x.sqrt(), 0.0).sum().backward()
        except RuntimeError as err:
            report["detect_anomaly error"] = str(err).splitlines()[0]
    forward_lines = [m for w in caught for m in re.findall(r"^\s*(.*x\.sqrt\(\).*)$", str(w.message), re.M)]
    report["forward op that produced it"] = forward_lines[0].strip() if forward_lines else "(trace unavailable)"

    x.grad = None
    safe = torch.where(x > 0, x.clamp_min(1e-12).sqrt(), 0.0)
    safe.sum().backward()
    report["gradient with the safe branch"] = x.grad.tolist()
    return report


# %%
if __name__ == "__main__":
    print_pairs("Debugging a NaN gradient with detect_anomaly", nan_gradient_demo(), fmt=str)


# %% [markdown]
# ## Where the time goes: forward vs backward
#
# A backward pass costs roughly twice a forward pass: for every matmul in forward, backward
# does two (one for the input gradient, one for the weight gradient; the first layer skips the
# input gradient, since the data needs none). At small widths fixed per-operation costs weigh
# in on both sides, so the ratio there can land anywhere near 2; look for it settling close to 2
# at the largest width, where the matmuls dominate.

# %%
def make_mlp(width: int, depth: int = TIMED_MLP_DEPTH) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def time_forward_backward(widths: tuple[int, ...], batch: int, min_run_time: float,
                          device: torch.device | str = "cpu",
                          generator: torch.Generator | None = None) -> list[dict[str, float]]:
    """Median forward and backward seconds, and their ratio, for a ReLU MLP at each hidden width."""
    rows = []
    for width in widths:
        model = make_mlp(width).to(device)
        x = torch.randn(batch, width, generator=generator).to(device)  # (batch, width)
        forward = time_median(lambda: model(x), device, min_run_time)  # noqa: B023 (timed immediately)
        loss = model(x).sum()
        backward = time_median(lambda: loss.backward(retain_graph=True), device, min_run_time)  # noqa: B023
        rows.append({"width": width, "forward": forward, "backward": backward, "backward/forward": backward / forward})
    return rows


def print_forward_backward(rows: list[dict[str, float]], batch: int, device: torch.device) -> None:
    print_table(f"Forward vs backward, ReLU MLP with {TIMED_MLP_DEPTH} hidden layers, batch {batch}, on {device.type}",
                ["width", "forward", "backward", "backward/forward"],
                [[r["width"], fmt_seconds(r["forward"]), fmt_seconds(r["backward"]), f"{r['backward/forward']:.2f}×"]
                 for r in rows])


# %%
if __name__ == "__main__":
    timings = time_forward_backward(cfg.mlp_hidden_sizes, cfg.mlp_batch, cfg.min_run_time, ctx.device, ctx.generator)
    print_forward_backward(timings, cfg.mlp_batch, ctx.device)


# %% [markdown]
# ## Summary figure: gradient flow in a small network
#
# A small tanh MLP fits a noisy sine with Adam. After its first backward pass the figure shows
# the norm of each parameter's gradient and the spread of all gradient values; then the loss at
# every step; and, in its last panel, the backward/forward time ratios measured in the section
# above. The plot function draws what the sections returned and computes nothing, so the figure
# cannot disagree with the printed tables.

# %%
def make_tanh_mlp(sizes: tuple[int, ...] = TANH_MLP_SIZES) -> nn.Sequential:
    """Linear layers of the given sizes with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def training_curve(steps: int, generator: torch.Generator | None = None) -> dict[str, object]:
    """Adam steps on a noisy sine: losses, plus gradients after the first backward.

    The noise comes from `generator`; the weights from torch's global RNG (seeded once per run).
    """
    X = torch.linspace(-3, 3, 128).unsqueeze(1)  # (128, 1)
    y = torch.sin(X) + 0.1 * torch.randn(X.shape, generator=generator)
    model = make_tanh_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    losses, first_grads = [], {}
    for step in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(X), y)
        loss.backward()
        if step == 0:
            first_grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.item())
    return {"losses": losses, "grads": first_grads}


def print_training(losses: list[float]) -> None:
    print(f"\nTraining loss: {losses[0]:.4f} → {losses[-1]:.4f} in {len(losses)} Adam steps")


def plot_gradient_flow(grads: dict[str, torch.Tensor], losses: list[float], timings: list[dict[str, float]],
                       batch: int):
    sizes = " → ".join(str(s) for s in TANH_MLP_SIZES)
    fig, axes = new_figure(2, 2, f"Gradients and training of a {sizes} tanh MLP; the cost of backward in ReLU MLPs")
    ax_norm, ax_hist, ax_loss, ax_time = axes.flat
    names = list(grads)
    ax_norm.plot(range(len(names)), [g.norm().item() for g in grads.values()], "o", color="tab:blue")
    ax_norm.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax_norm.set(yscale="log", title=f"tanh MLP {sizes}: ‖grad‖ per parameter, first step",
                xlabel="parameter", ylabel="‖grad‖₂ (log scale)")
    values = torch.cat([g.reshape(-1) for g in grads.values()])
    ax_hist.hist(values.numpy(), bins=60, histtype="step", color="tab:purple")
    ax_hist.set(yscale="log", title=f"tanh MLP: all {values.numel():,} gradient values, first step",
                xlabel="gradient value", ylabel="count (log scale)")
    ax_loss.plot(range(1, len(losses) + 1), losses, color="tab:green")
    ax_loss.set(yscale="log", title=f"tanh MLP on a noisy sine: loss (Adam, lr {ADAM_LR:g})", xlabel="step",
                ylabel="MSE loss (log scale)")
    widths = [r["width"] for r in timings]
    ax_time.plot(range(len(widths)), [r["backward/forward"] for r in timings], "o", color="tab:red", markersize=8)
    for i, r in enumerate(timings):
        ax_time.annotate(f"forward {fmt_seconds(r['forward'])}", (i, r["backward/forward"]),
                         textcoords="offset points", xytext=(9, 0), va="center", fontsize=9)
    ax_time.axhline(2, color="grey", linestyle="--", linewidth=1)
    ax_time.text(-0.45, 2, "2×: two matmuls per forward matmul", va="bottom", fontsize=9, color="dimgrey")
    ax_time.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax_time.set_xlim(-0.5, len(widths) - 0.2)
    ax_time.set_ylim(0, max(3.0, max(r["backward/forward"] for r in timings) * 1.25))
    ax_time.set(title=f"ReLU MLP, {TIMED_MLP_DEPTH} hidden layers, batch {batch}: time ratio",
                xlabel="hidden width (units per layer)", ylabel="backward time / forward time (×)")
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return fig


# %%
if __name__ == "__main__":
    curve = training_curve(cfg.train_steps, ctx.generator)
    print_training(curve["losses"])
    save_figure(plot_gradient_flow(curve["grads"], curve["losses"], timings, cfg.mlp_batch),
                "gradient_flow_analysis.png", ctx.plots_dir)
