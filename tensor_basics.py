"""Tensor basics: creating, reshaping, sharing, broadcasting and multiplying tensors.

Lesson 1 of the course. Run `python tensor_basics.py` (add `--quick` for a smoke run).
It prints what each operation does, checks linear-algebra decompositions by reconstructing
the input, compares dtypes, benchmarks matrix multiplication against NumPy, and writes
plots/tensor_operations_visualization.png and plots/matmul_benchmark.png.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lesson_harness import (
    LessonContext,
    as_device,
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
    matmul_sizes: tuple[int, ...] = (64, 128, 256, 512, 1000, 2048)  # square sizes swept by the benchmark
    min_run_time: float = 0.2  # seconds each benchmark point is measured for (Timer picks the repeats)
    headline_size: int = 1000  # the matmul size quoted in the README
    linalg_size: int = 64  # side of the SPD matrix whose decompositions are checked
    dtype_elements: int = 1_000_000  # tensor length for the dtype memory table


FULL = Config()
QUICK = Config(matmul_sizes=(64, 128, 256), min_run_time=0.02, headline_size=256, linalg_size=16,
               dtype_elements=10_000)


# %% [markdown]
# ## Creating tensors
#
# A tensor is an n-dimensional array with a dtype and a device. You can build one from
# Python data, from NumPy, or with a factory (`zeros`, `rand`, `arange`, ...). Every factory
# takes `dtype=` and `device=` so the tensor is born where it will be used: creating on the
# CPU and then calling `.to("cuda")` costs an extra copy.

# %%
def creation_examples(
    device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """One tensor from each common constructor, all on `device`."""
    device = as_device(device)
    cpu_gen = generator if generator is not None else torch.Generator().manual_seed(0)
    from_numpy = torch.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    template = torch.empty(2, 3, device=device)
    return {
        "tensor([[1, 2], [3, 4]])": torch.tensor([[1, 2], [3, 4]], device=device),
        "from_numpy(arange(6).reshape(2, 3))": from_numpy.to(device),
        "rand(2, 3)": torch.rand(2, 3, generator=cpu_gen).to(device),  # uniform [0, 1)
        "randn(2, 3)": torch.randn(2, 3, generator=cpu_gen).to(device),  # standard normal
        "zeros(2, 3)": torch.zeros(2, 3, device=device),
        "ones(2, 3, dtype=int64)": torch.ones(2, 3, dtype=torch.int64, device=device),
        "full((2, 3), 7.0)": torch.full((2, 3), 7.0, device=device),
        "arange(0, 10, 2)": torch.arange(0, 10, 2, device=device),
        "linspace(0, 1, 5)": torch.linspace(0, 1, 5, device=device),
        "eye(3)": torch.eye(3, device=device),
        "zeros_like(t)": torch.zeros_like(template),
        "ones_like(t, dtype=float16)": torch.ones_like(template, dtype=torch.float16),
    }


# %% [markdown]
# ## Reshaping, indexing and combining
#
# `view` reinterprets the same memory with a new shape and so needs a compatible
# (usually contiguous) layout; `reshape` returns a view when it can and copies when it must.
# `permute` (and `transpose`) only swap strides, which makes the result non-contiguous:
# call `.contiguous()` before `view`. Indexing with slices gives views; indexing with a
# tensor of indices or a boolean mask ("advanced" indexing) always copies.

# %%
def manipulation_examples() -> dict[str, object]:
    """Results of the everyday shape operations on a small arange tensor."""
    t = torch.arange(12.0)  # (12,)
    grid = t.view(3, 4)  # (3, 4), same storage
    permuted = grid.permute(1, 0)  # (4, 3), strides swapped, not contiguous
    in_place = torch.ones(3)
    in_place.mul_(2).add_(1)  # trailing underscore = modifies the tensor itself
    return {
        "view(3, 4)": grid,
        "reshape(2, 6)": t.reshape(2, 6),
        "permute(1, 0).is_contiguous()": permuted.is_contiguous(),
        "permute(1, 0).contiguous().view(12)": permuted.contiguous().view(12),
        "grid[1:, ::2]": grid[1:, ::2],
        "grid[[0, 2]] (fancy)": grid[[0, 2]],
        "grid[grid > 8] (boolean)": grid[grid > 8],
        "cat([grid, grid], dim=0).shape": tuple(torch.cat([grid, grid], dim=0).shape),
        "stack([grid, grid]).shape": tuple(torch.stack([grid, grid]).shape),
        "split(t, 5) sizes": [len(part) for part in torch.split(t, 5)],
        "chunk(t, 5) sizes": [len(part) for part in torch.chunk(t, 5)],
        "unsqueeze(0).shape": tuple(grid.unsqueeze(0).shape),
        "unsqueeze(0).squeeze(0).shape": tuple(grid.unsqueeze(0).squeeze(0).shape),
        "ones(3).mul_(2).add_(1)": in_place,
    }


# %% [markdown]
# ## Memory sharing
#
# `torch.from_numpy` wraps the NumPy buffer instead of copying it, and `.numpy()` on a CPU
# tensor does the same in reverse: writing to one side is visible on the other.
# `torch.tensor(array)` always copies. A view shares its base's storage; `clone()` does not.
# Each fact below is shown by writing to one side and reading the other.

# %%
def memory_sharing_facts() -> dict[str, bool]:
    """True where two objects share memory, decided by writing to one and reading the other."""
    array = np.zeros(3, dtype=np.float32)
    wrapped = torch.from_numpy(array)
    array[0] = 1.0
    from_numpy_shares = wrapped[0].item() == 1.0

    tensor = torch.zeros(3)
    as_array = tensor.numpy()
    tensor[0] = 2.0
    numpy_shares = as_array[0] == 2.0

    copied = torch.tensor(array)
    array[1] = 3.0
    tensor_copies = copied[1].item() == 0.0

    base = torch.zeros(2, 3)
    view = base.view(6)
    view[0] = 4.0
    view_shares = base[0, 0].item() == 4.0

    clone = base.clone()
    clone[0, 1] = 5.0
    clone_copies = base[0, 1].item() == 0.0

    return {
        "from_numpy shares with the array": bool(from_numpy_shares),
        ".numpy() shares with the tensor": bool(numpy_shares),
        "torch.tensor(array) copies": bool(tensor_copies),
        "view shares with its base": bool(view_shares),
        "clone() copies": bool(clone_copies),
        "view: same data_ptr": view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr(),
        "clone: same data_ptr": clone.untyped_storage().data_ptr() == base.untyped_storage().data_ptr(),
    }


# %% [markdown]
# ## Broadcasting
#
# Element-wise operations on tensors of different shapes line the shapes up from the right;
# each pair of sizes must be equal or contain a 1, and the 1 is stretched (without copying)
# to match. Missing leading dimensions count as 1. `broadcast_shape` implements the rule by
# hand; the tests check it against `torch.broadcast_shapes` on thousands of random shapes.

# %%
def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The shape that `shapes` broadcast to, or ValueError naming the sizes that clash."""
    for shape in shapes:
        if any(not isinstance(size, int) or size < 0 for size in shape):
            raise ValueError(f"shape {tuple(shape)} must hold non-negative integers")
    ndim = max((len(shape) for shape in shapes), default=0)
    result = [1] * ndim
    for shape in shapes:
        padded = (1,) * (ndim - len(shape)) + tuple(shape)  # align right
        for dim, size in enumerate(padded):
            if size == result[dim] or size == 1:
                continue
            if result[dim] != 1:
                raise ValueError(
                    f"shapes {[tuple(s) for s in shapes]} do not broadcast: size {result[dim]} "
                    f"vs size {size} at dimension {dim - ndim} (sizes must be equal or 1)"
                )
            result[dim] = size
    return tuple(result)


# %% [markdown]
# ## Linear algebra with torch.linalg
#
# `torch.linalg` mirrors `numpy.linalg`. The old `torch.eig`, `torch.svd` and `torch.symeig`
# are gone or deprecated. The honest way to trust a decomposition is to rebuild the matrix
# from it and measure the relative error: for a well-conditioned float64 matrix every error
# below should be around 1e-15.

# %%
def make_spd_matrix(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A well-conditioned symmetric positive-definite n×n matrix: M Mᵀ/n + I."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    m = torch.randn(n, n, generator=generator, dtype=dtype)
    return m @ m.mT / n + torch.eye(n, dtype=dtype)


def linalg_report(A: torch.Tensor) -> dict[str, float]:
    """Relative reconstruction or residual error of each torch.linalg routine on SPD matrix `A`."""
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    if not torch.allclose(A, A.mT):
        raise ValueError("A must be symmetric (A == A.mT)")
    L_chol, info = torch.linalg.cholesky_ex(A)
    if info.item() != 0:
        raise ValueError("A must be positive definite (Cholesky failed)")

    def rel(error: torch.Tensor, reference: torch.Tensor) -> float:
        return (torch.linalg.matrix_norm(error) / torch.linalg.matrix_norm(reference)).item()

    def rel_vec(error: torch.Tensor, reference: torch.Tensor) -> float:
        return (torch.linalg.vector_norm(error) / torch.linalg.vector_norm(reference)).item()

    n = A.shape[0]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    b = torch.linspace(-1.0, 1.0, n, dtype=A.dtype, device=A.device).unsqueeze(1)  # (n, 1)

    evals, Q = torch.linalg.eigh(A)  # symmetric: real eigenvalues, orthogonal Q
    evals_c, V = torch.linalg.eig(A)  # general: complex in general
    U, S, Vh = torch.linalg.svd(A)
    Qr, R = torch.linalg.qr(A)
    x_solve = torch.linalg.solve(A, b)
    x_lstsq = torch.linalg.lstsq(A, b).solution
    det = torch.linalg.det(A)
    frobenius = torch.linalg.matrix_norm(A)  # 'fro' by default

    return {
        "eigh: Q diag(L) Q^T vs A": rel(Q @ torch.diag(evals) @ Q.mT - A, A),
        "eig: V diag(L) V^-1 vs A": rel(V @ torch.diag(evals_c) @ torch.linalg.inv(V) - A.to(V.dtype), A.to(V.dtype)),
        "svd: U diag(S) Vh vs A": rel(U @ torch.diag(S) @ Vh - A, A),
        "qr: Q R vs A": rel(Qr @ R - A, A),
        "cholesky: L L^T vs A": rel(L_chol @ L_chol.mT - A, A),
        "solve: A x - b": rel_vec(A @ x_solve - b, b),
        "lstsq: A x - b": rel_vec(A @ x_lstsq - b, b),
        "inv: A A^-1 vs I": rel(A @ torch.linalg.inv(A) - eye, eye),
        "det vs product of eigenvalues": (abs(det - evals.prod()) / abs(det)).item(),
        "matrix_norm vs sqrt(sum S^2)": (abs(frobenius - S.square().sum().sqrt()) / frobenius).item(),
    }


# %% [markdown]
# ## Dtypes and memory
#
# Each element of a float32 tensor takes 4 bytes, float16 and bfloat16 2, int8 1. Halving
# the bytes halves memory and bandwidth, at a price: float16 keeps 10 mantissa bits (about 3
# decimal digits) with a small range; bfloat16 keeps float32's range but only 7 mantissa bits.
# The round trip through each shows the precision you give up.

# %%
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int8)  # compared in the table


def dtype_report(n_elements: int, generator: torch.Generator | None = None) -> list[dict[str, object]]:
    """Element size, bytes for `n_elements`, and the float32 round-trip error for each dtype."""
    values = torch.randn(n_elements, generator=generator)  # float32 reference values
    rows = []
    for dtype in DTYPES:
        converted = values.to(dtype)
        if dtype.is_floating_point:
            finfo = torch.finfo(dtype)
            back = converted.to(torch.float32)
            normal = values.abs() >= finfo.tiny  # below `tiny`, subnormals lose relative precision
            rel_err = ((back - values).abs() / values.abs())[normal].max().item()
            eps, largest = finfo.eps, finfo.max
        else:
            rel_err, eps, largest = None, None, float(torch.iinfo(dtype).max)  # not a float format
        rows.append({
            "dtype": str(dtype).removeprefix("torch."),
            "element_size": converted.element_size(),
            "nbytes": converted.nbytes,
            "max_rel_roundtrip_error": rel_err,
            "eps": eps,
            "max": largest,
        })
    return rows


# %% [markdown]
# ## Benchmark: matrix multiplication
#
# A square n×n matmul does 2n³ floating-point operations, so GFLOP/s = 2n³ / seconds / 1e9
# compares sizes fairly. NumPy (OpenBLAS) is the reference; torch uses its own BLAS on the
# CPU and cuBLAS on CUDA. Small matrices measure per-call overhead, large ones raw compute.
# Medians come from `torch.utils.benchmark.Timer`, which warms up and synchronizes the GPU.

# %%
def benchmark_matmul(
    sizes: Iterable[int],
    devices: Iterable[torch.device | str] = ("cpu",),
    min_run_time: float = 0.2,
    seed: int = 0,
) -> list[dict[str, object]]:
    """One row per (size, backend): NumPy first as reference, then each torch device."""
    backends = ["numpy"] + [as_device(d).type for d in devices]
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        if size < 1:
            raise ValueError(f"matmul size {size} must be positive")
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        for backend in dict.fromkeys(backends):  # drop duplicates, keep order
            if backend == "numpy":
                seconds = time_median(lambda a=a, b=b: a @ b, "cpu", min_run_time)
            else:
                ta, tb = torch.from_numpy(a).to(backend), torch.from_numpy(b).to(backend)
                seconds = time_median(lambda ta=ta, tb=tb: ta @ tb, backend, min_run_time)
            rows.append({"size": size, "backend": backend, "seconds": seconds,
                         "gflops": 2 * size**3 / seconds / 1e9})
    return rows


# %% [markdown]
# ## Figures
#
# Plot functions take data and return a Figure; `main()` saves it.

# %%
def plot_tensor_operations(generator: torch.Generator | None = None):
    """Six panels: random heatmap, rand vs randn, a matmul, a reshape, a broadcast, activations."""
    fig, axes = new_figure(2, 3, "Tensor operations at a glance")
    ax_heat, ax_hist, ax_matmul, ax_reshape, ax_broadcast, ax_act = axes.flat

    heat = torch.rand(8, 8, generator=generator)
    image = ax_heat.imshow(heat.numpy(), cmap="viridis")
    fig.colorbar(image, ax=ax_heat, label="value")
    ax_heat.set(title="torch.rand(8, 8)", xlabel="column index", ylabel="row index")

    for samples, label in [(torch.rand(20_000, generator=generator), "rand: U[0, 1)"),
                           (torch.randn(20_000, generator=generator), "randn: N(0, 1)")]:
        ax_hist.hist(samples.numpy(), bins=60, density=True, alpha=0.6, label=label)
    ax_hist.set(title="rand vs randn (20 000 samples each)", xlabel="value", ylabel="probability density")
    ax_hist.legend()

    a = torch.randn(4, 3, generator=generator)
    b = torch.randn(3, 5, generator=generator)
    _draw_equation(ax_matmul, [(a, "A (4, 3)"), (b, "B (3, 5)"), (a @ b, "A @ B (4, 5)")], ["@", "="],
                   "Matrix product: (4, 3) @ (3, 5) → (4, 5)")

    flat = torch.arange(12.0)
    _draw_equation(ax_reshape, [(flat.view(1, 12), "arange(12)  (12,)"), (flat.view(3, 4), "view(3, 4)  (3, 4)")],
                   ["→"], "Reshape: same 12 values, row-major order", annotate=True)

    col = torch.arange(3.0).view(3, 1) * 10
    row = torch.arange(4.0).view(1, 4)
    _draw_equation(ax_broadcast, [(col, "(3, 1)"), (row, "(1, 4)"), (col + row, "(3, 4)")], ["+", "="],
                   "Broadcast: (3, 1) + (1, 4) → (3, 4)", annotate=True)

    x = torch.linspace(-4, 4, 400)
    for name, fn in [("ReLU", F.relu), ("Sigmoid", torch.sigmoid), ("Tanh", torch.tanh),
                     ("GELU", F.gelu), ("SiLU", F.silu)]:
        ax_act.plot(x.numpy(), fn(x).numpy(), label=name, linewidth=2)
    ax_act.axhline(0, color="grey", linewidth=0.5)
    ax_act.set(title="Activation functions", xlabel="input x", ylabel="output f(x)", ylim=(-1.5, 4))
    ax_act.legend()
    return fig


def _draw_equation(ax, matrices, operators, title, annotate=False):
    """Draw matrices side by side as heatmaps inside one axes, with operators between them."""
    ax.set_axis_off()
    ax.set_title(title)
    total_cols = sum(m.shape[1] for m, _ in matrices) + 1.5 * len(operators)
    x = 0.0
    for index, (matrix, label) in enumerate(matrices):
        rows, cols = matrix.shape
        width = cols / total_cols
        height = min(0.75, width * rows / cols * ax.bbox.width / max(ax.bbox.height, 1))
        inset = ax.inset_axes([x, 0.45 - height / 2, width, height])
        inset.imshow(matrix.numpy(), cmap="coolwarm", aspect="auto")
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(label, fontsize=9)
        if annotate:
            for (r, c), value in np.ndenumerate(matrix.numpy()):
                inset.text(c, r, f"{value:g}", ha="center", va="center", fontsize=7)
        x += width
        if index < len(operators):
            ax.text(x + 0.75 / total_cols, 0.45, operators[index], ha="center", va="center",
                    fontsize=16, transform=ax.transAxes)
            x += 1.5 / total_cols


def plot_matmul_benchmark(rows: list[dict[str, object]]):
    """GFLOP/s and time per matmul against size, one line per backend, log axes."""
    fig, axes = new_figure(1, 2, "Square float32 matmul: NumPy vs torch")
    ax_rate, ax_time = axes.flat
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    sizes = sorted({r["size"] for r in rows})
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        label = "NumPy (reference)" if backend == "numpy" else f"torch on {backend}"
        ax_rate.plot([r["size"] for r in mine], [r["gflops"] for r in mine], "o-", label=label)
        ax_time.plot([r["size"] for r in mine], [r["seconds"] * 1e3 for r in mine], "o-", label=label)
    ax_rate.set(xscale="log", ylim=(0, None), title="Throughput (higher is better)", xlabel="matrix size n (n × n)",
                ylabel="GFLOP/s (2n³ / time)")
    ax_time.set(xscale="log", yscale="log", title="Median time per matmul (lower is better)",
                xlabel="matrix size n (n × n)", ylabel="time (ms)")
    for ax in (ax_rate, ax_time):
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    return fig


# %% [markdown]
# ## Putting it together

# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)

    print_section("Creating tensors")
    for name, tensor in creation_examples(ctx.device, ctx.generator).items():
        print(f"{name:38s} shape={tuple(tensor.shape)!s:8s} dtype={str(tensor.dtype):14s} "
              f"device={tensor.device.type}")

    print_section("Reshaping, indexing and combining")
    for name, value in manipulation_examples().items():
        shown = value.tolist() if isinstance(value, torch.Tensor) else value
        print(f"{name:38s} {shown}")

    print_section("Memory sharing (write to one side, read the other)")
    for fact, holds in memory_sharing_facts().items():
        print(f"{fact:38s} {holds}")

    print_section("Broadcasting")
    for shapes in [((3, 1), (1, 4)), ((5, 1, 4), (3, 1)), ((), (2, 3)), ((0, 3), (1, 3))]:
        print(f"{' + '.join(map(str, shapes)):38s} -> {broadcast_shape(*shapes)} "
              f"(torch.broadcast_shapes: {tuple(torch.broadcast_shapes(*shapes))})")
    try:
        broadcast_shape((2, 3), (4,))
    except ValueError as err:
        print(f"(2, 3) + (4,)                          -> ValueError: {err}")

    A = make_spd_matrix(cfg.linalg_size, ctx.generator)
    report = linalg_report(A)
    print_table(f"torch.linalg on a {cfg.linalg_size}×{cfg.linalg_size} SPD matrix (float64), "
                f"condition number {torch.linalg.cond(A).item():.3g}",
                ["check", "relative error"], [[k, f"{v:.2e}"] for k, v in report.items()])

    dtypes = dtype_report(cfg.dtype_elements, ctx.generator)
    print_table(f"Dtypes: {cfg.dtype_elements:,} elements of randn, converted from float32",
                ["dtype", "bytes/elem", "total bytes", "max rel. round-trip error*", "eps", "max"],
                [[r["dtype"], r["element_size"], r["nbytes"], _sci(r["max_rel_roundtrip_error"]), _sci(r["eps"]),
                  f"{r['max']:.3g}"] for r in dtypes])
    print("* over values in the dtype's normal range; rounding to nearest keeps it below eps/2")

    devices = ["cpu"] + ([ctx.device] if ctx.device.type != "cpu" else [])
    rows = benchmark_matmul(cfg.matmul_sizes, devices, cfg.min_run_time, ctx.seed)
    numpy_seconds = {r["size"]: r["seconds"] for r in rows if r["backend"] == "numpy"}
    print_table(f"Matmul benchmark (float32, median of Timer runs, {torch.get_num_threads()} threads)",
                ["size", "backend", "median", "GFLOP/s", "vs NumPy"],
                [[f"{r['size']}×{r['size']}", r["backend"], fmt_seconds(r["seconds"]),
                  fmt_timing(r["gflops"], ".1f"), fmt_timing(numpy_seconds[r["size"]] / r["seconds"], ".2f", "×")]
                 for r in rows])
    headline = [r for r in rows if r["size"] == cfg.headline_size]
    if headline:
        parts = [f"{r['backend']} {fmt_seconds(r['seconds'])}" for r in headline]
        print(f"\nHeadline {cfg.headline_size}×{cfg.headline_size} matmul: " + ", ".join(parts))

    print_section("Figures")
    save_figure(plot_tensor_operations(ctx.generator), "tensor_operations_visualization.png", ctx.plots_dir)
    save_figure(plot_matmul_benchmark(rows), "matmul_benchmark.png", ctx.plots_dir)


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def main(argv: list[str] | None = None) -> int:
    return run_lesson("tensor_basics.py", __doc__, "Lesson 1: tensor basics", run, argv)


if __name__ == "__main__":
    finish(main())
