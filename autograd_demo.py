"""Autograd: what PyTorch's automatic differentiation computes, and why you can trust it.

Run `python autograd_demo.py` (add `--quick` for a smoke run).
It walks the dynamic graph, computes gradients, higher derivatives, Jacobians and Hessians,
checks every one against an independent reference (closed forms, finite differences,
torch.func), writes custom autograd Functions, debugs a NaN gradient with detect_anomaly and
finds the layer that breaks a gradient with hooks, and times no_grad vs inference_mode and
forward vs backward (one thread, median and IQR). Figures: plots/autograd_graph.png,
plots/finite_difference_error.png, plots/gradient_flow_analysis.png.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesson_harness import (
    NOISY_MARK,
    TIMING_HEADERS,
    Timing,
    benchmark,
    fmt_seconds,
    new_figure,
    print_pairs,
    print_table,
    save_figure,
    start_lesson,
    timing_cells,
    timing_note,
)


@dataclass(frozen=True)
class Config:
    jacobian_size: int = 64  # input/output length of the function whose Jacobian is timed
    mlp_hidden_sizes: tuple[int, ...] = (64, 256, 1024)  # widths for the forward-vs-backward timing
    mlp_batch: int = 256  # rows per forward pass in the timing
    train_steps: int = 60  # optimisation steps for the loss-curve panel
    # Seconds per timing point (12 in a full run, 10 in --quick): benchmark() splits them into at least 8
    # blocks of calls, whose spread is the IQR.
    min_run_time: float = 0.15
    fd_step_count: int = 23  # finite-difference step sizes h, log-spaced from FD_STEP_LARGEST to FD_STEP_SMALLEST


FULL = Config()
QUICK = Config(jacobian_size=16, mlp_hidden_sizes=(32, 64), mlp_batch=32, train_steps=10, min_run_time=0.05,
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
HOOK_FEATURES, HOOK_WIDTH = 4, 8  # input and hidden width of the network whose gradients the hooks record
HOOK_BATCH_ROWS = 16  # rows of its batch
PADDING_ROW = 3  # the batch row set to zeros, as a padding row would be
RMSNORM_EPS = 1e-5  # the small constant its RMSNorm adds to mean(h²), so that an all-zero row stays finite
HUGE_WEIGHT_SCALE = 1e6  # the exploding fault multiplies one Linear's weight by this
EXPLODE_RATIO = 1e3  # hooks flag a layer whose ‖∂L/∂input‖ exceeds this many times its ‖∂L/∂output‖


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
#
# A tensor used twice by one op is two edges: `(w * w).grad_fn.next_functions` lists w's node
# twice, and backward adds the gradient arriving along each, d(w·w)/dw = w + w = 2w. The figure's
# loss is a square written as a product, `r * r`, so it has such a pair of edges (drawn ×2).

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

    v = torch.tensor(3.0, requires_grad=True)
    square = v * v  # one MulBackward0 whose two inputs are the same leaf: two edges to one node
    facts["(v * v).grad_fn.next_functions"] = [type(fn).__name__ for fn, _ in square.grad_fn.next_functions]
    square.backward()
    facts["v.grad for v * v, v = 3 (v + v: one term per edge)"] = v.grad.item()
    return facts


def autograd_graph(output: torch.Tensor, names: dict[int, str] | None = None) -> tuple[list[dict], list[tuple]]:
    """Nodes (id, label, depth) and edges (child, parent, count) reachable from `output.grad_fn`.

    `count` is how many times the parent's `next_functions` lists the child: 2 for `h * h`, whose
    gradient arrives along both edges and is summed. A node's depth is its longest path from the
    output, so a node shared by two parents sits below both. `names` maps `id(leaf tensor)` to a
    label for its AccumulateGrad node.
    """
    if output.grad_fn is None:
        raise ValueError("output has no grad_fn: it is a leaf or was computed without autograd")
    names = names or {}
    # Keyed on the node objects themselves: that keeps every Python wrapper alive, so the same
    # graph node always comes back as the same object. (torch 2.5 frees a wrapper as soon as no
    # Python reference holds it and may reuse its id() for the next node: never key on id().)
    children: dict[object, Counter] = {}  # node -> {child: edges to it}, in next_functions order
    stack = [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn in children:
            continue
        children[fn] = Counter(c for c, _ in fn.next_functions if c is not None)
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
    edges = [(index[child], index[fn], count) for fn, kids in children.items() for child, count in kids.items()]
    return nodes, edges


def example_graph() -> tuple[list[dict], list[tuple], str]:
    """The graph of loss = r·r with r = sigmoid(w·x + b) − 0.8, with readable leaf names.

    The square is written as a product so that r's node is an input of the last op twice.
    """
    x = torch.tensor(2.0)
    w = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(-1.0, requires_grad=True)
    r = torch.sigmoid(w * x + b) - 0.8
    loss = r * r
    nodes, edges = autograd_graph(loss, {id(w): "w", id(b): "b"})
    return nodes, edges, "loss = r · r, with r = sigmoid(w·x + b) − 0.8"


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
    for child, parent, count in edges:
        # One arrow per edge: a node used twice by one op gets two arcs, bent apart, and a "×count" label.
        for bend in ([0.0] if count == 1 else [0.35 * (k / (count - 1) - 0.5) * 2 for k in range(count)]):
            ax.annotate("", xy=position[parent], xytext=position[child],
                        arrowprops={"arrowstyle": "-|>", "color": "dimgrey", "mutation_scale": 18,
                                    "connectionstyle": f"arc3,rad={bend}",
                                    "patchA": boxes[child].get_bbox_patch(),
                                    "patchB": boxes[parent].get_bbox_patch()})
        if count > 1:
            middle = [(a + b) / 2 for a, b in zip(position[child], position[parent])]
            ax.text(*middle, f"×{count}", ha="center", va="center", fontsize=11, fontweight="bold",
                    color="tab:red", bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "none"})
    ax.set_title(title, fontsize=12)
    ax.text(0.5, 0.02, "green: leaves whose .grad backward fills "
            "(x has requires_grad=False, so it is not in the graph)\n"
            "blue: backward nodes (grad_fn); arrows point the way the forward pass ran, backward runs right to left\n"
            "×2: r · r uses r twice, so next_functions lists r's node twice; backward adds both: d(r·r)/dr = r + r",
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
# remembers its base tensor). Tensors made under it are *inference tensors*. Having no version
# counter, an inference tensor cannot be *saved for backward* (autograd could not tell whether it
# changed before backward reads it) and cannot be changed in place outside inference mode. It can
# still be an input to a recorded op that saves nothing of it: `(w + t).sum().backward()` works
# (add's backward needs neither input), `(w * t)` fails at once (mul keeps t to compute w's
# gradient). `t.clone()` outside inference mode gives an ordinary tensor. Use `inference_mode` for
# pure inference and serving; use `no_grad` when the results may meet autograd again (evaluation
# inside a training loop, updating weights by hand).
#
# The saving is per op, so the timing below runs a chain of tiny ops, where the bookkeeping is a
# visible share of each op's cost, on one thread. Read the last column, a ratio of the two medians:
# below 1 is time `inference_mode` saved on this machine. A mark (!) on either row means the
# timing has a large spread (an IQR of at least 10 % of the median): run it again before reading
# anything into the ratio.

# %%
def inference_mode_facts() -> dict[str, object]:
    """What inference_mode drops compared with no_grad, what it forbids afterwards, and what it still allows.

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
    w = torch.zeros(3, requires_grad=True)
    attempts = {
        "inference_mode: read the version counter": lambda: inference._version,
        "(w + t).sum().backward(), t an inference tensor (add saves no input)":
            lambda: (w + inference).sum().backward(),
        "(w * t).sum().backward() (mul saves t for w's gradient)": lambda: (w * inference).sum().backward(),
        "t.add_(1) outside inference_mode": lambda: inference.add_(1),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            facts[name] = "allowed"
        except RuntimeError as err:
            facts[name] = "RuntimeError: " + str(err).split(".")[0]
    facts["w.grad after the allowed (w + t) backward"] = w.grad.tolist()
    facts["t.clone() outside inference_mode: is_inference()"] = inference.clone().is_inference()
    return facts


def small_op_chain(t: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` × (view, transpose, reshape, in-place multiply) on a 16-element tensor."""
    for _ in range(steps):
        t = t.view(4, 4).t().reshape(-1).mul_(1.0)  # (16,); reshape of the transpose copies
    return t


def time_no_grad_vs_inference_mode(steps: int, min_run_time: float,
                                   device: torch.device | str = "cpu") -> dict[str, object]:
    """Timings of the small-op chain under each mode (one thread), its op count, and the ratio of the medians."""
    t = torch.ones(16, device=device)

    def under(mode: Callable[[], object]) -> Callable[[], torch.Tensor]:
        def chain() -> torch.Tensor:
            with mode():
                return small_op_chain(t, steps)
        return chain

    no_grad = benchmark(under(torch.no_grad), device, min_run_time)
    inference = benchmark(under(torch.inference_mode), device, min_run_time)
    return {"ops": steps * OPS_PER_STEP, "no_grad": no_grad, "inference_mode": inference,
            "inference_mode / no_grad": inference.median / no_grad.median}


def ratio_cell(ratio: float, *timings: Timing) -> str:
    """A ratio of medians as a table cell, marked when any timing it divides is noisy."""
    return f"{ratio:.2f}×" + (f" {NOISY_MARK}" if any(t.noisy for t in timings) else "")


def print_mode_timings(modes: dict[str, object], device: torch.device) -> None:
    no_grad, inference = modes["no_grad"], modes["inference_mode"]
    rows = [["no_grad", *timing_cells(no_grad), fmt_seconds(no_grad.median / modes["ops"]), ratio_cell(1.0, no_grad)],
            ["inference_mode", *timing_cells(inference), fmt_seconds(inference.median / modes["ops"]),
             ratio_cell(modes["inference_mode / no_grad"], inference, no_grad)]]
    print_table(f"A chain of {modes['ops']} small ops on {device.type}, timed under each mode",
                ["mode", *TIMING_HEADERS, "median / op", "time / no_grad"], rows)
    print(timing_note(no_grad.threads))


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
#
# Each method is also timed, on one thread. `jacrev` runs the loop's m backward passes as one
# vmapped pass, `jacfwd` the n forward-mode passes (one per input) likewise: no Python loop, and
# each op works on a whole batch. Read the last column, each median divided by the loop's median
# from the same run: below 1 is what vmapping saved on this machine at this size; a row marked !
# is too noisy to rank.

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
    """Each method's max |difference| from the hand-derived Jacobian, its Timing (one thread), and its
    median over the first method's (the loop of backward passes), all from this run."""
    f, W = make_vector_function(n, generator)
    x = torch.randn(n, dtype=torch.float64, generator=generator)
    reference = vector_function_jacobian(W, x)
    rows = [{"method": name, "max |diff|": (method() - reference).abs().max().item(),
             "timing": benchmark(method, "cpu", min_run_time)}
            for name, method in jacobian_methods(f, x).items()]
    loop = rows[0]["timing"]
    for row in rows:
        row["time / loop"] = row["timing"].median / loop.median
    return rows


def print_jacobians(rows: list[dict], n: int) -> None:
    loop = rows[0]["timing"]
    print_table(f"Jacobian of a R^{n} → R^{n} map (max diff vs the hand-derived Jacobian, time)",
                ["method", "max |diff|", *TIMING_HEADERS, "time / loop"],
                [[r["method"], _sci(r["max |diff|"]), *timing_cells(r["timing"]),
                  ratio_cell(r["time / loop"], r["timing"], loop)] for r in rows])
    print(timing_note(loop.threads))


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
# safe (`x.clamp_min(tiny).sqrt()`). The next section finds the broken layer of a network with
# hooks instead.

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
# ## Finding the layer that breaks a gradient, with hooks
#
# `detect_anomaly` stops at the first backward node that returns NaN, and it looks for NaN only:
# an exploding but finite gradient, or an inf, passes it. It also checks every backward output and
# keeps a traceback of every forward op, and torch warns that it "will increase the runtime": it
# is for a debugging run. Hooks do only the checks you write, let backward finish, and see every layer:
#
# - a forward hook (`Module.register_forward_hook`) checks each layer's output with `torch.isfinite`;
# - `Tensor.register_hook` on that output records ‖∂L/∂output‖, the gradient reaching the layer,
#   and on each parameter ‖∂L/∂p‖;
# - `Module.register_full_backward_hook` records ‖∂L/∂input‖, the gradient the layer passes down
#   (not on the first layer: its input is the data, which needs no gradient).
#
# The layer to suspect is the first one, in the order backward reaches them, that receives a
# finite gradient and passes on a non-finite one (to its input or a parameter), or one more than
# `EXPLODE_RATIO` times larger. How much growth is too much is a judgement call: a normalisation
# layer rightly scales gradients by roughly one over the size of its input. Each `register_*`
# returns a handle, and `handle.remove()` in a `finally` takes the hook off even when the pass
# fails, so no forgotten hook keeps running in later steps.
#
# The network is Linear → RMSNorm → Linear → ReLU → Linear, on a batch with one all-zero row, as a
# padding row would be. The first Linear has no bias (common before a normalisation layer), so
# that row reaches the norm as all zeros and mean(h²) = 0. Written `h / (sqrt(mean(h²)) + eps)`,
# with eps outside the square root, the norm's forward stays finite (0 / eps = 0), but the
# derivative of sqrt at 0 is infinite and its backward returns NaN; through that one row, the
# whole weight gradient of the first Linear becomes NaN. `h / sqrt(mean(h²) + eps)` is the fix.
# A second fault multiplies one Linear's weight by `HUGE_WEIGHT_SCALE`: every number stays
# finite, the gradient explodes.

# %%
class RMSNorm(nn.Module):
    """h / RMS(h) over the last dim. eps_inside_sqrt=False is the bug: finite forward, NaN backward at a zero row."""

    def __init__(self, eps: float = RMSNORM_EPS, eps_inside_sqrt: bool = True):
        super().__init__()
        self.eps = eps
        self.eps_inside_sqrt = eps_inside_sqrt

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mean_square = (h * h).mean(dim=-1, keepdim=True)  # (batch, 1)
        if self.eps_inside_sqrt:
            return h / torch.sqrt(mean_square + self.eps)
        return h / (torch.sqrt(mean_square) + self.eps)  # sqrt'(0) = ∞: NaN gradient for an all-zero row

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}, eps_inside_sqrt={self.eps_inside_sqrt}"


HOOK_FAULTS = {  # each fault of the hooked network, and the layer it breaks (None: the healthy network)
    "eps outside the sqrt": 1,
    f"layer 2 weight × {HUGE_WEIGHT_SCALE:g}": 2,
    "none (eps inside the sqrt)": None,
}


def make_hooked_net() -> nn.Sequential:
    """The healthy network: Linear (no bias) → RMSNorm → Linear → ReLU → Linear."""
    return nn.Sequential(nn.Linear(HOOK_FEATURES, HOOK_WIDTH, bias=False), RMSNorm(),
                         nn.Linear(HOOK_WIDTH, HOOK_WIDTH), nn.ReLU(), nn.Linear(HOOK_WIDTH, 1))


def with_fault(model: nn.Sequential, fault: str) -> nn.Sequential:
    """A copy of `model` with one of HOOK_FAULTS put in (the same weights otherwise)."""
    if fault not in HOOK_FAULTS:
        raise ValueError(f"fault={fault!r} is not one of {list(HOOK_FAULTS)}")
    broken = copy.deepcopy(model)
    if fault == "eps outside the sqrt":
        broken[1].eps_inside_sqrt = False
    elif HOOK_FAULTS[fault] is not None:
        with torch.no_grad():
            broken[HOOK_FAULTS[fault]].weight.mul_(HUGE_WEIGHT_SCALE)
    return broken


def padded_batch(generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (HOOK_BATCH_ROWS, HOOK_FEATURES) with row PADDING_ROW all zeros, and targets (HOOK_BATCH_ROWS, 1)."""
    X = torch.randn(HOOK_BATCH_ROWS, HOOK_FEATURES, generator=generator)
    X[PADDING_ROW] = 0.0
    return X, torch.randn(HOOK_BATCH_ROWS, 1, generator=generator)


def _norm(t: torch.Tensor) -> float:
    return torch.linalg.vector_norm(t).item()


def record_layer_gradients(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """One forward and backward of the MSE loss with hooks on every layer, removed afterwards.

    One row per layer, in the order backward reached them (last layer first): whether its output
    was finite, ‖∂L/∂output‖, ‖∂L/∂input‖ (None for the first layer, whose input is the data) and
    ‖∂L/∂p‖ of each of its parameters.
    """
    rows = [{"index": i, "layer": f"{i} {type(layer).__name__}", "output finite": None, "‖∂L/∂output‖": None,
             "‖∂L/∂input‖": None, "‖∂L/∂params‖": {}} for i, layer in enumerate(model)]
    reached: list[int] = []  # layer indices, in the order backward reached their outputs
    handles = []

    def on_output(i: int) -> Callable:
        def forward_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            rows[i]["output finite"] = torch.isfinite(output).all().item()

            def output_grad_hook(grad: torch.Tensor) -> None:  # returning None leaves the gradient as it is
                rows[i]["‖∂L/∂output‖"] = _norm(grad)
                reached.append(i)

            handles.append(output.register_hook(output_grad_hook))
        return forward_hook

    def on_input_grad(i: int) -> Callable:
        def backward_hook(module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            rows[i]["‖∂L/∂input‖"] = _norm(grad_input[0])
        return backward_hook

    def on_param_grad(i: int, name: str) -> Callable:
        def param_grad_hook(grad: torch.Tensor) -> None:
            rows[i]["‖∂L/∂params‖"][name] = _norm(grad)
        return param_grad_hook

    try:
        for i, layer in enumerate(model):
            handles.append(layer.register_forward_hook(on_output(i)))
            if i > 0:  # the first layer's input is the data: no gradient to report (and torch warns)
                handles.append(layer.register_full_backward_hook(on_input_grad(i)))
            for name, parameter in layer.named_parameters():
                handles.append(parameter.register_hook(on_param_grad(i, f"{i}.{name}")))
        F.mse_loss(model(X), y).backward()
    finally:
        for handle in handles:
            handle.remove()
    return [rows[i] for i in reached]


def flag_broken_layer(rows: list[dict], explode_ratio: float = EXPLODE_RATIO) -> tuple[str, str] | None:
    """The first layer, in backward order, that turns a finite gradient into a bad one, and why; None if none does.

    Bad: non-finite (to its input or a parameter), or ‖∂L/∂input‖ over `explode_ratio` × ‖∂L/∂output‖.
    A non-finite activation is reported first: then the forward pass broke, and every gradient with it.
    """
    for row in sorted(rows, key=lambda r: r["index"]):
        if not row["output finite"]:
            return row["layer"], "non-finite output in the forward pass"
    for row in rows:
        incoming = row["‖∂L/∂output‖"]
        if not math.isfinite(incoming):
            continue  # it arrived bad: a layer above did the damage
        outgoing = [n for n in (row["‖∂L/∂input‖"], *row["‖∂L/∂params‖"].values()) if n is not None]
        if not all(math.isfinite(n) for n in outgoing):
            return row["layer"], "finite gradient in, NaN or inf out"
        if row["‖∂L/∂input‖"] is not None and row["‖∂L/∂input‖"] > explode_ratio * incoming:
            return row["layer"], f"‖∂L/∂input‖ = {row['‖∂L/∂input‖'] / incoming:.1e} × ‖∂L/∂output‖"
    return None


def anomaly_verdict(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> str:
    """What detect_anomaly says about one backward of the MSE loss: its error's first line, or "no error"."""
    with warnings.catch_warnings(record=True):  # its "enabled" notice and its forward traceback
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly():
                F.mse_loss(model(X), y).backward()
        except RuntimeError as err:
            return "RuntimeError: " + str(err).splitlines()[0]
    return "no error"


def gradient_hook_report(generator: torch.Generator | None = None) -> dict[str, dict]:
    """Per fault in HOOK_FAULTS: the hooks' rows, the layer they flag, and detect_anomaly's verdict.

    The weights come from torch's global RNG (seeded once per run); every fault is put into copies
    of the same network, so the rows differ only by the fault.
    """
    X, y = padded_batch(generator)
    healthy = make_hooked_net()
    report = {}
    for fault in HOOK_FAULTS:
        rows = record_layer_gradients(with_fault(healthy, fault), X, y)
        report[fault] = {"rows": rows, "flagged": flag_broken_layer(rows),
                         "detect_anomaly": anomaly_verdict(with_fault(healthy, fault), X, y)}
    return report


def _params_norm(norms: dict[str, float]) -> float | None:
    """‖all of a layer's parameter gradients‖ from the norm of each: √Σ‖g‖²."""
    return math.sqrt(sum(n * n for n in norms.values())) if norms else None


def print_gradient_hooks(report: dict[str, dict], fault: str) -> None:
    def cell(value: float | None) -> str:
        return "-" if value is None else _sci(value)

    rows = []
    for r in report[fault]["rows"]:
        growth = None if r["‖∂L/∂input‖"] is None else r["‖∂L/∂input‖"] / r["‖∂L/∂output‖"]
        rows.append([r["layer"], r["output finite"], cell(r["‖∂L/∂output‖"]), cell(r["‖∂L/∂input‖"]),
                     cell(growth), cell(_params_norm(r["‖∂L/∂params‖"]))])
    print_table(f"Gradient hooks, fault: {fault} (rows in the order backward reached the layers)",
                ["layer", "output finite", "‖∂L/∂output‖", "‖∂L/∂input‖", "input / output", "‖∂L/∂params‖"], rows)
    flags = {}
    for name, result in report.items():
        flagged = result["flagged"]
        flags[f"{name}: hooks flag"] = "no layer" if flagged is None else f"layer {flagged[0]}: {flagged[1]}"
        flags[f"{name}: detect_anomaly"] = result["detect_anomaly"]
    print_pairs("Which layer the hooks flag, and what detect_anomaly says", flags, fmt=str)


# %%
if __name__ == "__main__":
    hook_report = gradient_hook_report(ctx.generator)
    print_gradient_hooks(hook_report, "eps outside the sqrt")


# %% [markdown]
# ## Where the time goes: forward vs backward
#
# For every matmul in forward, backward does two: one for the weight gradient and one for the
# input gradient, except in the first layer, whose input (the data) needs no gradient. With d
# square hidden layers that is 2d − 1 matmuls against d, so the arithmetic ratio is (2d − 1)/d
# (5/3 for the 3 layers here), a little more with the small output layer; the table prints the
# ratio of FLOPs that torch's own `FlopCounterMode` counts. That counts arithmetic; it does not
# predict time. At small widths fixed per-operation costs (dispatch, allocation, adding into
# `.grad`) weigh on both passes and can push the ratio either way. Both passes are timed on one
# thread in the same run, and the ratio is their medians'. What to look for: compare the time
# ratio with the FLOP ratio in the widest row, where the matmuls do most of the work, and read a
# row only when it carries no mark (!), which flags an IQR of at least 10 % of the median.

# %%
def make_mlp(width: int, depth: int = TIMED_MLP_DEPTH) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def backward_forward_flops(width: int, batch: int, depth: int = TIMED_MLP_DEPTH) -> float:
    """Backward FLOPs over forward FLOPs of make_mlp(width, depth) on a batch that needs no gradient,
    as torch.utils.flop_counter.FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = make_mlp(width, depth), torch.zeros(batch, width)  # (batch, width)
    with FlopCounterMode(display=False) as forward:
        loss = model(x).sum()
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return backward.get_total_flops() / forward.get_total_flops()


def time_forward_backward(widths: tuple[int, ...], batch: int, min_run_time: float,
                          device: torch.device | str = "cpu",
                          generator: torch.Generator | None = None) -> list[dict[str, object]]:
    """Forward and backward Timings (one thread) of a ReLU MLP at each hidden width, and the ratio of their medians."""
    rows = []
    for width in widths:
        model = make_mlp(width).to(device)
        x = torch.randn(batch, width, generator=generator).to(device)  # (batch, width)
        forward = benchmark(lambda: model(x), device, min_run_time)  # noqa: B023 (timed immediately)
        loss = model(x).sum()
        backward = benchmark(lambda: loss.backward(retain_graph=True), device, min_run_time)  # noqa: B023
        rows.append({"width": width, "forward": forward, "backward": backward,
                     "backward/forward": backward.median / forward.median,
                     "flop ratio": backward_forward_flops(width, batch)})
    return rows


def print_forward_backward(rows: list[dict[str, object]], batch: int, device: torch.device) -> None:
    headers = ["width", *(f"{part} {h}" for part in ("forward", "backward") for h in TIMING_HEADERS),
               "backward/forward", "FLOP ratio"]
    print_table(f"Forward vs backward, ReLU MLP with {TIMED_MLP_DEPTH} hidden layers, batch {batch}, on {device.type}",
                headers,
                [[r["width"], *timing_cells(r["forward"]), *timing_cells(r["backward"]),
                  ratio_cell(r["backward/forward"], r["forward"], r["backward"]), f"{r['flop ratio']:.2f}×"]
                 for r in rows])
    print(timing_note(rows[0]["forward"].threads))


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
# above (a ratio marked ! is noisy, as in the table). The plot function draws what the sections
# returned and computes nothing, so the figure cannot disagree with the printed tables.

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


def plot_gradient_flow(grads: dict[str, torch.Tensor], losses: list[float], timings: list[dict[str, object]],
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
        noisy = r["forward"].noisy or r["backward"].noisy
        ax_time.annotate(f"forward {fmt_seconds(r['forward'].median)}" + (f" {NOISY_MARK} noisy" if noisy else ""),
                         (i, r["backward/forward"]), textcoords="offset points", xytext=(9, 0), va="center",
                         fontsize=9)
    ax_time.plot(range(len(widths)), [r["flop ratio"] for r in timings], "_", color="grey", markersize=30,
                 markeredgewidth=2, label="FLOP ratio (FlopCounterMode)")
    ax_time.legend(loc="upper left", fontsize=8)
    ax_time.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax_time.set_xlim(-0.5, len(widths) + 0.2)  # room for the last label
    ax_time.set_ylim(0, max(3.0, max(r["backward/forward"] for r in timings) * 1.25))
    threads = timings[0]["forward"].threads
    ax_time.set(title=f"ReLU MLP, {TIMED_MLP_DEPTH} hidden layers, batch {batch}, {threads} thread"
                      + ("s" if threads != 1 else ""),
                xlabel="hidden width (units per layer)", ylabel="median backward / median forward (×)")
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return fig


# %%
if __name__ == "__main__":
    curve = training_curve(cfg.train_steps, ctx.generator)
    print_training(curve["losses"])
    save_figure(plot_gradient_flow(curve["grads"], curve["losses"], timings, cfg.mlp_batch),
                "gradient_flow_analysis.png", ctx.plots_dir)
