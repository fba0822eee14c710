"""Autograd: what PyTorch's automatic differentiation computes, and why you can trust it.

Lesson 2 of the course. Run `python autograd_demo.py` (add `--quick` for a smoke run).
It walks the dynamic graph, computes gradients, higher derivatives, Jacobians and Hessians,
checks every one against an independent reference (closed forms, finite differences,
torch.func), writes custom autograd Functions, debugs a NaN gradient, and times forward vs
backward. Figures: plots/autograd_graph.png, plots/finite_difference_error.png,
plots/gradient_flow_analysis.png.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesson_harness import (
    LessonContext,
    finish,
    fmt_seconds,
    fmt_timing,
    new_figure,
    print_section,
    print_table,
    run_lesson,
    save_figure,
    time_median,
)


@dataclass(frozen=True)
class Config:
    jacobian_size: int = 64  # input/output length of the function whose Jacobian is timed
    mlp_hidden_sizes: tuple[int, ...] = (64, 256, 1024)  # widths for the forward-vs-backward timing
    mlp_batch: int = 256  # rows per forward pass in the timing
    train_steps: int = 60  # optimisation steps for the loss-curve panel
    min_run_time: float = 0.1  # seconds per timing point
    eps_points: int = 23  # finite-difference step sizes between 1e-1 and 1e-12


FULL = Config()
QUICK = Config(jacobian_size=16, mlp_hidden_sizes=(32, 64), mlp_batch=32, train_steps=10, min_run_time=0.01,
               eps_points=12)


# %% [markdown]
# ## The dynamic graph
#
# Every operation on a tensor with `requires_grad=True` records a node (`grad_fn`) that knows
# how to push gradients back to its inputs (`next_functions`). Tensors you create are *leaves*;
# results of operations are not. `.backward()` walks the graph from the output and fills `.grad`
# of the leaves only, unless a non-leaf calls `retain_grad()`. The graph is freed after one
# backward pass unless `retain_graph=True`. The graph is built anew on every forward pass,
# which is why ordinary Python control flow just works.

# %%
def graph_facts() -> dict[str, object]:
    """The rules of the graph, each demonstrated on a tiny expression."""
    x = torch.tensor(2.0, requires_grad=True)
    w = torch.tensor(3.0, requires_grad=True)
    z = w * x  # non-leaf
    z.retain_grad()
    y = z**2
    y.backward(retain_graph=True)
    facts: dict[str, object] = {
        "x.is_leaf": x.is_leaf,
        "z.is_leaf": z.is_leaf,
        "z.grad_fn": type(z.grad_fn).__name__,
        "y.grad_fn.next_functions": [type(fn).__name__ for fn, _ in y.grad_fn.next_functions],
        "x.grad (dy/dx = 2 w^2 x)": x.grad.item(),
        "z.grad after retain_grad() (dy/dz = 2z)": z.grad.item(),
    }
    y.backward()  # allowed once more because of retain_graph=True above
    facts["x.grad after a second backward (accumulated)"] = x.grad.item()
    try:
        y.backward()
    except RuntimeError:
        facts["third backward without retain_graph"] = "RuntimeError: graph already freed"

    detached = z.detach()
    facts["z.detach().requires_grad"] = detached.requires_grad
    facts["detach shares storage"] = detached.data_ptr() == z.data_ptr()
    with torch.no_grad():
        under_no_grad = x * 2
    facts["x * 2 under no_grad: requires_grad"] = under_no_grad.requires_grad
    with torch.inference_mode():
        under_inference = x * 2
    facts["x * 2 under inference_mode: is_inference()"] = under_inference.is_inference()
    try:
        (under_inference * x).backward()
    except RuntimeError:
        facts["inference tensor used in autograd later"] = "RuntimeError (use no_grad if you need that)"
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


# %% [markdown]
# ## Jacobians, three ways
#
# Row by row: one reverse pass per output, m passes for an m×n Jacobian. `torch.func.jacrev`
# vectorises those passes with `vmap`; `jacfwd` uses forward mode, one pass per input, and wins
# when inputs are fewer than outputs. `torch.autograd.functional.jacobian` is the older API.

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


def make_vector_function(n: int, generator: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) = tanh(W x) ⊙ x + sin(x): a non-trivial R^n → R^n map."""
    W = torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W.to(x.dtype) @ x) * x + torch.sin(x)

    return f


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
    load_forward_mode()
    return {
        "jacobian_rows (loop of backward)": lambda: jacobian_rows(f, x),
        "torch.autograd.functional.jacobian": lambda: torch.autograd.functional.jacobian(f, x),
        "torch.func.jacrev (vmap of vjp)": lambda: torch.func.jacrev(f)(x),
        "torch.func.jacfwd (vmap of jvp)": lambda: torch.func.jacfwd(f)(x),
    }


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


# %% [markdown]
# ## Gradient checking with finite differences
#
# The central difference (f(x+ε) − f(x−ε)) / 2ε has truncation error ∝ ε², but round-off
# error ∝ machine-eps/ε. Shrinking ε helps until round-off takes over: plotted on log axes the
# error is a V, with its bottom near eps^(1/3): about 5e-3 in float32 and 6e-6 in float64.
# `torch.autograd.gradcheck` automates the comparison, and must run in float64.

# %%
def finite_difference_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """Central-difference gradient of scalar `f` at `x`, same shape and dtype as `x`."""
    if eps <= 0:
        raise ValueError(f"eps={eps} must be positive")
    x = x.detach()
    flat = x.reshape(-1)
    grad = torch.empty_like(flat)
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        grad[i] = (f((flat + step).reshape(x.shape)) - f((flat - step).reshape(x.shape))) / (2 * eps)
    return grad.reshape(x.shape)


def smooth_test_function(x: torch.Tensor) -> torch.Tensor:
    """Σ sin(x)·exp(x/2): smooth, with gradient cos(x)e^{x/2} + ½ sin(x)e^{x/2}."""
    return (torch.sin(x) * torch.exp(x / 2)).sum()


def fd_error_sweep(eps_values: torch.Tensor, x: torch.Tensor) -> dict[str, list[float]]:
    """Max abs error of finite differences vs the exact (float64 autograd) gradient, per dtype."""
    exact = torch.func.grad(smooth_test_function)(x.to(torch.float64))
    errors = {}
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        errors[str(dtype).removeprefix("torch.")] = [
            (finite_difference_grad(smooth_test_function, xd, float(eps)).to(torch.float64) - exact).abs().max().item()
            for eps in eps_values
        ]
    return errors


# %% [markdown]
# ## Custom autograd Functions
#
# Subclass `torch.autograd.Function` when you want to define the backward yourself. Written in
# the `forward` + `setup_context` style (and with `generate_vmap_rule = True`) a Function also
# works under `torch.func` transforms. If its backward uses differentiable torch operations,
# double backward (`gradgradcheck`) works too.

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


def custom_function_report() -> dict[str, object]:
    """gradcheck/gradgradcheck results, overflow behaviour, and torch.func transforms over them."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))
    big = torch.tensor([1000.0, 1000.5, 999.0])
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


# %% [markdown]
# ## Gradient accumulation
#
# `.grad` is a running sum: each `backward()` adds to it. That is a feature when you split a
# batch into micro-batches that do not fit in memory at once (scale each loss by 1/k and the
# sum equals the full-batch gradient), and a bug when you forget `optimizer.zero_grad()` in a
# training loop. `zero_grad()` sets `.grad` to None by default (cheaper than filling zeros).

# %%
def accumulation_demo(generator: torch.Generator | None = None) -> dict[str, object]:
    model = nn.Linear(3, 1)
    X = torch.randn(8, 3, generator=generator)
    y = torch.randn(8, 1, generator=generator)

    F.mse_loss(model(X), y).backward()
    once = model.weight.grad.clone()
    F.mse_loss(model(X), y).backward()
    twice = model.weight.grad.clone()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    after_zero_grad = model.weight.grad

    for X_micro, y_micro in zip(X.chunk(4), y.chunk(4)):  # four micro-batches of two rows
        (F.mse_loss(model(X_micro), y_micro) / 4).backward()
    micro = model.weight.grad.clone()
    model.zero_grad()
    F.mse_loss(model(X), y).backward()
    full = model.weight.grad.clone()
    return {"once": once, "twice": twice, "after_zero_grad": after_zero_grad,
            "micro_batch_sum": micro, "full_batch": full}


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


# %% [markdown]
# ## Where the time goes: forward vs backward
#
# A backward pass costs roughly twice a forward pass: for every matmul in forward, backward
# does two (one for the input gradient, one for the weight gradient).

# %%
def make_mlp(width: int, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def time_forward_backward(widths: tuple[int, ...], batch: int, min_run_time: float,
                          device: torch.device | str = "cpu") -> list[dict[str, float]]:
    """Median forward and backward seconds for a 3-hidden-layer MLP at each width."""
    rows = []
    for width in widths:
        model = make_mlp(width).to(device)
        x = torch.randn(batch, width, device=device)
        forward = time_median(lambda: model(x), device, min_run_time)  # noqa: B023 (timed immediately)
        loss = model(x).sum()
        backward = time_median(lambda: loss.backward(retain_graph=True), device, min_run_time)  # noqa: B023
        rows.append({"width": width, "forward": forward, "backward": backward})
    return rows


def training_curve(steps: int, generator: torch.Generator | None = None) -> dict[str, object]:
    """A few Adam steps on a noisy sine: losses, plus gradients after the first backward."""
    X = torch.linspace(-3, 3, 128).unsqueeze(1)  # (128, 1)
    y = torch.sin(X) + 0.1 * torch.randn(X.shape, generator=generator)
    torch.manual_seed(0 if generator is None else generator.initial_seed())
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
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


# %% [markdown]
# ## Figures

# %%
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


def plot_fd_error(eps_values: torch.Tensor, errors: dict[str, list[float]]):
    fig, axes = new_figure(1, 1, "Finite differences vs autograd: truncation error meets round-off", (8, 5))
    ax = axes[0, 0]
    for name, errs in errors.items():
        floor = [max(e, 1e-18) for e in errs]  # exact zeros cannot be drawn on a log axis
        ax.loglog(eps_values.tolist(), floor, "o-", label=name)
        best = min(range(len(errs)), key=errs.__getitem__)
        ax.annotate(f"{name} best: ε = {eps_values[best].item():.0e}", (eps_values[best].item(), floor[best]),
                    textcoords="offset points", xytext=(40, -28), arrowprops={"arrowstyle": "->"})
    lowest = min(max(e, 1e-18) for errs in errors.values() for e in errs)
    ax.set_ylim(bottom=lowest / 100)
    ax.set(xlabel="step size ε", ylabel="max |central difference − exact gradient|",
           title="Error of (f(x+ε) − f(x−ε)) / 2ε for f = Σ sin(x)·exp(x/2)")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="dtype")
    return fig


def plot_gradient_flow(grads: dict[str, torch.Tensor], losses: list[float], timings: list[dict[str, float]]):
    fig, axes = new_figure(2, 2, "Gradients of a small MLP (1 → 32 → 32 → 1, tanh) and their cost")
    ax_norm, ax_hist, ax_loss, ax_time = axes.flat
    names = list(grads)
    ax_norm.bar(range(len(names)), [g.norm().item() for g in grads.values()], color="tab:blue")
    ax_norm.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax_norm.set(yscale="log", title="Gradient norm per parameter (first step)", ylabel="‖grad‖₂ (log)")
    values = torch.cat([g.reshape(-1) for g in grads.values()])
    ax_hist.hist(values.numpy(), bins=60, color="tab:purple")
    ax_hist.set(yscale="log", title=f"Distribution of all {values.numel():,} gradient values",
                xlabel="gradient value", ylabel="count (log)")
    ax_loss.plot(range(1, len(losses) + 1), losses, color="tab:green")
    ax_loss.set(yscale="log", title="Training loss (Adam, lr 1e-2)", xlabel="step", ylabel="MSE loss (log)")
    widths = [r["width"] for r in timings]
    positions = range(len(widths))
    ax_time.bar([p - 0.2 for p in positions], [r["forward"] * 1e3 for r in timings], 0.4, label="forward")
    ax_time.bar([p + 0.2 for p in positions], [r["backward"] * 1e3 for r in timings], 0.4, label="backward")
    ax_time.set_xticks(list(positions), [str(w) for w in widths])
    ax_time.set(yscale="log", title="Forward vs backward, 3 hidden layers", xlabel="hidden width",
                ylabel="median time (ms, log)")
    ax_time.legend(loc="upper left")
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return fig


# %% [markdown]
# ## Putting it together

# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)

    print_section("The dynamic graph")
    for fact, value in graph_facts().items():
        print(f"{fact:48s} {value}")

    print_section("Gradients and vector-Jacobian products")
    basics = basic_gradients()
    print(f"d(x²)/dx at x = 2: {basics['x**2 at 2'].item()}  (closed form 2x = 4)")
    print(f"backward(gradient=v) on y = x², x = [1, 2, 3], v = [1, 0.1, 0.01]: {_rounded(basics['vjp'])}"
          f" = vᵀJ {_rounded(basics['v @ jacobian'])}")

    x0 = torch.tensor(1.0, dtype=torch.float64)
    closed = [torch.sin(x0), torch.cos(x0), -torch.sin(x0), -torch.cos(x0), torch.sin(x0)]
    print_table("n-th derivative of sin at x = 1", ["n", "autograd", "closed form"],
                [[n, nth_derivative(torch.sin, x0, n).item(), closed[n].item()] for n in range(5)])

    f = make_vector_function(cfg.jacobian_size, ctx.generator)
    x = torch.randn(cfg.jacobian_size, dtype=torch.float64, generator=ctx.generator)
    reference = torch.func.jacrev(f)(x)
    rows = []
    for name, method in jacobian_methods(f, x).items():
        seconds = time_median(method, "cpu", cfg.min_run_time)
        rows.append([name, f"{(method() - reference).abs().max().item():.1e}", fmt_seconds(seconds)])
    print_table(f"Jacobian of a R^{cfg.jacobian_size} → R^{cfg.jacobian_size} map (max diff vs jacrev, time)",
                ["method", "max |diff|", "median"], rows)

    xr = torch.tensor([-1.2, 1.0, 0.5, 2.0], dtype=torch.float64)
    H = hessian_double_backward(rosenbrock, xr)
    v = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    print_section("Hessian of the Rosenbrock function at (-1.2, 1, 0.5, 2)")
    print(f"double backward vs torch.func.hessian: {(H - torch.func.hessian(rosenbrock)(xr)).abs().max().item():.1e}")
    print(f"double backward vs hand-derived:       {(H - rosenbrock_hessian(xr)).abs().max().item():.1e}")
    print(f"Hessian-vector product vs H @ v:       "
          f"{(hessian_vector_product(rosenbrock, xr, v) - H @ v).abs().max().item():.1e}")

    print_section("Finite differences")
    eps_values = torch.logspace(-1, -12, cfg.eps_points, dtype=torch.float64)
    x_fd = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    errors = fd_error_sweep(eps_values, x_fd)
    for dtype, errs in errors.items():
        best = min(range(len(errs)), key=errs.__getitem__)
        print(f"{dtype}: most accurate at eps = {eps_values[best].item():.0e} (max error {errs[best]:.1e})")
    x_check = torch.randn(3, dtype=torch.float64, requires_grad=True, generator=ctx.generator)
    print(f"gradcheck(smooth_test_function): {torch.autograd.gradcheck(smooth_test_function, (x_check,))}, "
          f"gradgradcheck: {torch.autograd.gradgradcheck(smooth_test_function, (x_check,))}")

    print_section("Custom autograd Functions")
    for check, result in custom_function_report().items():
        print(f"{check:42s} {result}")

    print_section("Gradient accumulation")
    acc = accumulation_demo(ctx.generator)
    print(f"grad after 1 backward: {_rounded(acc['once'])}")
    print(f"grad after 2 backward: {_rounded(acc['twice'])}  (twice: summed, not replaced)")
    print(f"grad after zero_grad(): {acc['after_zero_grad']}")
    print(f"4 micro-batches (loss/4) vs full batch, max diff: "
          f"{(acc['micro_batch_sum'] - acc['full_batch']).abs().max().item():.1e}")

    print_section("Debugging a NaN gradient with detect_anomaly")
    for key, value in nan_gradient_demo().items():
        print(f"{key:32s} {value}")

    timings = time_forward_backward(cfg.mlp_hidden_sizes, cfg.mlp_batch, cfg.min_run_time, ctx.device)
    print_table(f"Forward vs backward, MLP with 3 hidden layers, batch {cfg.mlp_batch}, on {ctx.device.type}",
                ["width", "forward", "backward", "backward/forward"],
                [[r["width"], fmt_seconds(r["forward"]), fmt_seconds(r["backward"]),
                  fmt_timing(r["backward"] / r["forward"], ".2f", "×")] for r in timings])

    curve = training_curve(cfg.train_steps, ctx.generator)
    print(f"\nTraining loss: {curve['losses'][0]:.4f} → {curve['losses'][-1]:.4f} in {cfg.train_steps} Adam steps")

    print_section("Figures")
    save_figure(plot_autograd_graph(*example_graph()), "autograd_graph.png", ctx.plots_dir)
    save_figure(plot_fd_error(eps_values, errors), "finite_difference_error.png", ctx.plots_dir)
    save_figure(plot_gradient_flow(curve["grads"], curve["losses"], timings), "gradient_flow_analysis.png",
                ctx.plots_dir)


def _rounded(t: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in t.flatten().tolist()]


def main(argv: list[str] | None = None) -> int:
    return run_lesson("autograd_demo.py", __doc__, "Lesson 2: autograd", run, argv)


if __name__ == "__main__":
    finish(main())
