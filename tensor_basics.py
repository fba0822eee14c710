"""Tensor basics: creating, reshaping, sharing, broadcasting, reducing and multiplying tensors.

Run `python tensor_basics.py` (add `--quick` for a smoke run).
It prints what each operation does next to its NumPy equivalent (reductions, type promotion,
Python numbers, in-place updates and why autograd cares, the two errors met crossing over from
NumPy), checks linear-algebra decompositions in float64 and float32 by reconstructing the input,
compares dtypes, benchmarks matrix multiplication against NumPy on one thread, and writes
plots/tensor_operations_visualization.png and plots/matmul_benchmark.png.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesson_harness import (
    BENCHMARK_THREADS,
    NOISY_MARK,
    TIMING_HEADERS,
    as_device,
    benchmark,
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
    matmul_sizes: tuple[int, ...] = (64, 256, 512, 1000, 2048)  # square sizes swept by the benchmark
    min_run_time: float = 0.1  # seconds each benchmark point is measured for (in at least 8 blocks)
    dtype_elements: int = 1_000_000  # tensor length for the dtype memory table


FULL = Config()
QUICK = Config(matmul_sizes=(64, 256), min_run_time=0.02, dtype_elements=10_000)
LINALG_SIZE = 64  # side of the SPD matrix checked in float64 and float32 (both modes: it takes milliseconds)
DETERMINANT_SCALES = (1.0, 10.0)  # det(c·A) = cⁿ det(A): c = 10 takes the 64×64 determinant past float32's range


def _fmt(value: object) -> str:
    """Compact text for a printed value: floats to 4 significant digits, tensors as nested lists."""
    if isinstance(value, torch.Tensor):
        return _fmt(value.tolist())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(item) for item in value) + "]"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_typed(value: object) -> str:
    """A printed fact: a tensor or array with its dtype, an exception as its type and first line."""
    if isinstance(value, torch.Tensor):
        return f"{_fmt(value)} ({_dtype_name(value.dtype)})"
    if isinstance(value, np.ndarray):
        return f"{_fmt(value.tolist())} (NumPy {value.dtype})"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {str(value).splitlines()[0]}"
    return _fmt(value)


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python tensor_basics.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them.

# %%
if __name__ == "__main__":
    ctx = start_lesson("tensor_basics")
    cfg = ctx.config(FULL, QUICK)


# %% [markdown]
# ## Creating tensors
#
# A tensor is an n-dimensional array with a dtype and a device. You can build one from
# Python data, from NumPy, or with a factory (`zeros`, `rand`, `arange`, ...). Every factory
# takes `dtype=` and `device=` so the tensor is born where it will be used: creating on the
# CPU and then calling `.to("cuda")` costs an extra copy. Three tensors below are made on the
# CPU on purpose. `from_numpy` can only wrap a CPU array, so its `.to(device)` is the one copy
# there has to be. The random ones are drawn from the lesson's seeded CPU `torch.Generator`
# and then moved, because a CUDA generator produces a different stream for the same seed:
# this way `--seed 0` prints the same numbers on every device. In a training loop, where that
# does not matter, pass `device=` (and, if you need one, a generator on that device).

# %%
def creation_examples(device: torch.device | str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One tensor from each common constructor, all on `device`; the random ones come from `generator`."""
    device = as_device(device)
    from_numpy = torch.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))  # shares the array, on the CPU
    template = torch.empty(2, 3, device=device)
    return {
        "tensor([[1, 2], [3, 4]])": torch.tensor([[1, 2], [3, 4]], device=device),
        "from_numpy(arange(6).reshape(2, 3))": from_numpy.to(device),
        "rand(2, 3)": torch.rand(2, 3, generator=generator).to(device),  # uniform [0, 1), drawn on the CPU
        "randn(2, 3)": torch.randn(2, 3, generator=generator).to(device),  # standard normal, drawn on the CPU
        "zeros(2, 3)": torch.zeros(2, 3, device=device),
        "ones(2, 3, dtype=int64)": torch.ones(2, 3, dtype=torch.int64, device=device),
        "full((2, 3), 7.0)": torch.full((2, 3), 7.0, device=device),
        "arange(0, 10, 2)": torch.arange(0, 10, 2, device=device),
        "linspace(0, 1, 5)": torch.linspace(0, 1, 5, device=device),
        "eye(3)": torch.eye(3, device=device),
        "zeros_like(t)": torch.zeros_like(template),
        "ones_like(t, dtype=float16)": torch.ones_like(template, dtype=torch.float16),
    }



def print_creation(examples: dict[str, torch.Tensor]) -> None:
    print_table("Creating tensors (random ones drawn from the seeded CPU generator)",
                ["constructor", "shape", "dtype", "device", "values (first 4)"],
                [[name, str(tuple(t.shape)), _dtype_name(t.dtype), t.device.type, _fmt(t.flatten()[:4])]
                 for name, t in examples.items()])


# %%
if __name__ == "__main__":
    print_creation(creation_examples(ctx.device, ctx.generator))


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
    }



# %%
if __name__ == "__main__":
    print_pairs("Reshaping, indexing and combining", manipulation_examples(), fmt=_fmt)


# %% [markdown]
# ## Memory sharing
#
# `torch.from_numpy` wraps the NumPy buffer instead of copying it, and `.numpy()` on a CPU
# tensor does the same in reverse: writing to one side is visible on the other.
# `torch.tensor(array)` always copies. A view shares its base's storage; `clone()` does not.
# Each fact below is shown by writing to one side and reading the other.
#
# While autograd records (outside `torch.no_grad()`), `.numpy()` refuses a tensor that
# requires grad: autograd cannot see what NumPy does with the array. `.detach()` returns the
# same data as a tensor autograd does not track, so `w.detach().numpy()` works; on the CPU the
# array still shares `w`'s memory. NumPy reads host memory only, so a tensor on a GPU needs
# `.cpu()` as well, which copies: `w.detach().cpu().numpy()`. The second table runs all three
# on this run's device.

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



def numpy_of_grad_tensor(device: torch.device | str) -> dict[str, object]:
    """Each way to get a NumPy array from a tensor that requires grad on `device`: the array, or the error."""
    w = torch.tensor([1.0, 2.0], device=as_device(device), requires_grad=True)
    conversions = {
        "w.numpy()": lambda: w.numpy(),
        "w.detach().numpy()": lambda: w.detach().numpy(),  # on a GPU: w's memory is not host memory
        "w.detach().cpu().numpy()": lambda: w.detach().cpu().numpy(),  # .cpu() copies from a GPU, no-op on the CPU
    }
    results: dict[str, object] = {}
    for expression, convert in conversions.items():
        try:
            results[expression] = convert()
        except (RuntimeError, TypeError) as err:
            results[expression] = err
    return results


# %%
if __name__ == "__main__":
    print_pairs("Memory sharing (write to one side, read the other)", memory_sharing_facts(), fmt=_fmt)
    print_pairs(f"NumPy from w = torch.tensor([1.0, 2.0], requires_grad=True) on {ctx.device.type}",
                numpy_of_grad_tensor(ctx.device), fmt=_fmt_typed)


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



BROADCAST_EXAMPLES = (  # groups of shapes to broadcast; the last one clashes
    ((3, 1), (1, 4)), ((5, 1, 4), (3, 1)), ((), (2, 3)), ((0, 3), (1, 3)), ((2, 3), (4,)),
)


def broadcast_examples(examples: Sequence[Sequence[Sequence[int]]] = BROADCAST_EXAMPLES) -> list[dict[str, str]]:
    """For each group of shapes: `broadcast_shape`'s answer and `torch.broadcast_shapes`'s, or their errors."""
    rows = []
    for shapes in examples:
        row = {"shapes": " + ".join(str(tuple(shape)) for shape in shapes)}
        try:
            row["by hand"] = str(broadcast_shape(*shapes))
        except ValueError as err:
            row["by hand"] = f"ValueError: {err}"
        try:
            row["torch"] = str(tuple(torch.broadcast_shapes(*shapes)))
        except RuntimeError as err:
            row["torch"] = f"RuntimeError: {err}"
        rows.append(row)
    return rows



# %%
if __name__ == "__main__":
    print_pairs("Broadcasting: broadcast_shape by hand, then torch.broadcast_shapes",
                {f"{row['shapes']}{by}": row[key] for row in broadcast_examples()
                 for by, key in (("", "by hand"), ("  (torch)", "torch"))})


# %% [markdown]
# ## Reductions
#
# A reduction collapses one or more dimensions: `sum`, `mean`, `std`, `max`, `argmax`.
# `dim=` names the dimension that disappears (NumPy calls it `axis=`); with `keepdim=True`
# it stays as a size-1 dimension, so the result still broadcasts against the input, as in
# `x - x.mean(dim=1, keepdim=True)`, which centres each row. `max(dim=...)` returns
# the values and their indices together. Two traps: `argmax()` without `dim` indexes the
# flattened tensor, and `torch.std` divides by n - 1 by default while `np.std` divides by n
# (`ddof=1` makes NumPy agree).

# %%
REDUCTION_INPUT = ((3.0, 7.0, 4.0), (1.0, 5.0, 9.0))  # a 2×3 matrix small enough to check by eye
REDUCTIONS = {  # torch expression on x -> (that code, the NumPy expression on a = x.numpy() giving the same result)
    "x.sum()": (lambda x: x.sum(), "a.sum()"),  # () : every element
    "x.sum(dim=0)": (lambda x: x.sum(dim=0), "a.sum(axis=0)"),  # (3,): down each column
    "x.sum(dim=1, keepdim=True)": (lambda x: x.sum(dim=1, keepdim=True), "a.sum(axis=1, keepdims=True)"),  # (2, 1)
    "x.mean(dim=1)": (lambda x: x.mean(dim=1), "a.mean(axis=1)"),  # (2,)
    "x.std(dim=1)": (lambda x: x.std(dim=1), "a.std(axis=1, ddof=1)"),  # (2,), divides by n - 1
    "x.max(dim=1).values": (lambda x: x.max(dim=1).values, "a.max(axis=1)"),  # max(dim) gives (values, indices)
    "x.max(dim=1).indices": (lambda x: x.max(dim=1).indices, "a.argmax(axis=1)"),
    "x.argmax()": (lambda x: x.argmax(), "a.argmax()"),  # () : an index into x.flatten()
    "x - x.mean(dim=1, keepdim=True)": (lambda x: x - x.mean(dim=1, keepdim=True),  # (2, 3) - (2, 1) broadcasts
                                        "a - a.mean(axis=1, keepdims=True)"),
}


def reduction_examples() -> dict[str, torch.Tensor]:
    """Each reduction in REDUCTIONS applied to REDUCTION_INPUT, keyed by its torch expression."""
    x = torch.tensor(REDUCTION_INPUT)  # (2, 3)
    return {expression: torch_code(x) for expression, (torch_code, _) in REDUCTIONS.items()}



def print_reductions(results: dict[str, torch.Tensor]) -> None:
    print_table(f"Reductions on x = torch.tensor({REDUCTION_INPUT}), a = x.numpy()", ["torch", "NumPy", "result"],
                [[expr, REDUCTIONS[expr][1], _fmt(value)] for expr, value in results.items()])


# %%
if __name__ == "__main__":
    print_reductions(reduction_examples())


# %% [markdown]
# ## Back to Python numbers: `.item()` and `.tolist()`
#
# `.item()` turns a one-element tensor into a Python `float`, `int` or `bool`, and
# `.tolist()` turns any tensor into nested lists; NumPy arrays have the same two methods.
# A float32 value becomes the Python float (a double) that represents it exactly, which is why
# 0.1 comes back as 0.10000000149011612. On a GPU tensor both wait for the device and copy to
# the host, so calling `.item()` on every step of a training loop stalls it; collect tensors
# and convert once.

# %%
PYTHON_NUMBER_INPUT = ((1.5, 2.0), (3.0, 4.5))  # t = torch.tensor(PYTHON_NUMBER_INPUT), a = t.numpy()
PYTHON_NUMBERS = {  # torch expression on t -> (that code, its NumPy equivalent on a = t.numpy())
    "t.sum().item()": (lambda t: t.sum().item(), "a.sum().item()"),
    "t[1, 0].item()": (lambda t: t[1, 0].item(), "a[1, 0].item()"),
    "t.argmax().item()": (lambda t: t.argmax().item(), "a.argmax().item()"),
    "(t > 2).all().item()": (lambda t: (t > 2).all().item(), "(a > 2).all().item()"),
    "torch.tensor(0.1).item()": (lambda t: torch.tensor(0.1).item(), "np.float32(0.1).item()"),  # float32 nearest 0.1
    "t.tolist()": (lambda t: t.tolist(), "a.tolist()"),
    "t.item()": (lambda t: t.item(), "a.item()"),  # four elements: raises
}


def python_number_examples() -> dict[str, object]:
    """Python values out of small tensors; where the code raises (`t.item()`), the RuntimeError itself."""
    t = torch.tensor(PYTHON_NUMBER_INPUT)  # (2, 2) float32
    results: dict[str, object] = {}
    for expression, (torch_code, _) in PYTHON_NUMBERS.items():
        try:
            results[expression] = torch_code(t)
        except RuntimeError as err:
            results[expression] = err
    return results



def print_python_numbers(results: dict[str, object]) -> None:
    print_table(f"Python numbers from t = torch.tensor({PYTHON_NUMBER_INPUT}), a = t.numpy()",
                ["torch", "value", "type", "NumPy"],
                [[expr, _fmt(value) if isinstance(value, Exception) else repr(value), type(value).__name__,
                  PYTHON_NUMBERS[expr][1]] for expr, value in results.items()])


# %%
if __name__ == "__main__":
    print_python_numbers(python_number_examples())


# %% [markdown]
# ## In-place operations and why autograd cares
#
# A method ending in `_` (`add_`, `mul_`, `zero_`) and the augmented assignments (`+=`)
# change a tensor's memory instead of making a new tensor, like NumPy's `a += 1`. It saves an
# allocation, but autograd needs to know: many operations save tensors for the backward
# pass (`exp` saves its output, because d exp(x)/dx = exp(x)). Every tensor therefore carries
# a version counter, `t._version`, that each in-place write bumps (views share their base's
# counter). `backward()` compares the versions of the saved tensors with those recorded in the
# forward pass and raises a RuntimeError if one was overwritten, instead of returning a wrong
# gradient. The fix is the out-of-place form (`y + 1`), which leaves the saved tensor alone.
# While autograd records, an in-place write to a leaf that requires grad (as a model's
# parameters are) is refused at once. Inside `torch.no_grad()` nothing is recorded and the same write is allowed:
# it changes the leaf's values and bumps its version, and the leaf still requires grad. That is
# how optimizers update parameters in place.

# %%
def inplace_version_steps() -> list[dict[str, object]]:
    """t's values and version counter after each statement, with the NumPy statement that matches it."""
    rows = []

    def record(torch_step: str, numpy_step: str) -> None:
        rows.append({"torch": torch_step, "numpy": numpy_step, "values": t.tolist(), "t._version": t._version})

    t = torch.zeros(3)
    record("t = torch.zeros(3)", "a = np.zeros(3, dtype=np.float32)")
    t.add_(1)
    record("t.add_(1)", "a += 1")
    t.mul_(3)
    record("t.mul_(3)", "a *= 3")
    t += 1  # in place on a tensor, like add_
    record("t += 1", "a += 1")
    t[:2].zero_()  # the view shares t's memory and its version counter
    record("t[:2].zero_()", "a[:2] = 0")
    u = t + 1  # noqa: F841  (a new tensor: t keeps its values and its version)
    record("u = t + 1", "b = a + 1")
    return rows


def inplace_autograd_errors() -> dict[str, object]:
    """What autograd says when a saved tensor or a leaf is written in place; the out-of-place fix; the leaf's
    in-place write under `torch.no_grad()`, which is allowed."""
    x = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    y = x.exp()  # exp saves its output y for backward
    version_saved = y._version
    y.add_(1)  # overwrites the saved y: its version moves on
    try:
        y.sum().backward()
        saved_error = None
    except RuntimeError as err:
        saved_error = str(err).split(" Hint:")[0]  # the hint that follows is about anomaly detection
    x.grad = None
    (x.exp() + 1).sum().backward()  # out of place: d/dx sum(exp(x) + 1) = exp(x)
    grad = x.grad.tolist()
    try:
        x.add_(1)
        leaf_error = None
    except RuntimeError as err:
        leaf_error = str(err)
    version_before = x._version
    with torch.no_grad():
        x.add_(1)  # not recorded: what an optimizer's step does to each parameter
    return {
        "y = x.exp(); y._version when exp saved y": version_saved,
        "y._version after y.add_(1)": y._version,
        "y.sum().backward()": f"RuntimeError: {saved_error}",
        "x.grad from (x.exp() + 1).sum().backward()": grad,
        "x.add_(1), x a leaf that requires grad": f"RuntimeError: {leaf_error}",
        "x after with torch.no_grad(): x.add_(1)": x.detach(),
        "x._version before -> after that write": f"{version_before} -> {x._version}",
        "x.is_leaf and x.requires_grad after it": x.is_leaf and x.requires_grad,
    }



def print_inplace_steps(rows: list[dict[str, object]]) -> None:
    print_table("In-place updates bump the version counter (NumPy has none)",
                ["torch", "NumPy", "t afterwards", "t._version"],
                [[r["torch"], r["numpy"], _fmt(r["values"]), r["t._version"]] for r in rows])


# %%
if __name__ == "__main__":
    print_inplace_steps(inplace_version_steps())
    print_pairs("In-place writes and autograd", inplace_autograd_errors(), fmt=_fmt)


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
            "dtype": _dtype_name(dtype),
            "element_size": converted.element_size(),
            "nbytes": converted.nbytes,
            "max_rel_roundtrip_error": rel_err,
            "eps": eps,
            "max": largest,
        })
    return rows



def print_dtypes(rows: list[dict[str, object]]) -> None:
    print_table(f"Dtypes: {rows[0]['nbytes'] // rows[0]['element_size']:,} elements of randn, converted from float32",
                ["dtype", "bytes/elem", "total bytes", "max rel. round-trip error*", "eps", "max"],
                [[r["dtype"], r["element_size"], r["nbytes"], _sci(r["max_rel_roundtrip_error"]), _sci(r["eps"]),
                  f"{r['max']:.3g}"] for r in rows])
    print("* over values in the dtype's normal range; rounding to nearest keeps it below eps/2")


# %%
if __name__ == "__main__":
    print_dtypes(dtype_report(cfg.dtype_elements, ctx.generator))


# %% [markdown]
# ## Type promotion
#
# When the operands' dtypes differ, the result gets one that can hold both: an int64 tensor
# plus a float32 tensor gives float32, float32 plus float64 gives float64. Python numbers
# only choose the category (integer or floating point), not the size: a float32 tensor plus
# 2.5 stays float32, and an int64 tensor plus 2.5 becomes torch's default float dtype,
# float32. A zero-dimensional tensor is treated the same way when a tensor with dimensions
# sits next to it. `/` is true division and gives a float even for two integer tensors.
# `torch.result_type(a, b)` gives the promoted dtype without computing anything; true
# division then turns an integer result into the default float dtype, which is why that
# column says int64 in the last row while `/` returns float32. NumPy 2 disagrees in four rows,
# for three reasons: it widens int64 + float32 to float64, its default float is float64, and
# a NumPy float64 scalar does widen a float32 array (NEP 50; NumPy 1.x looked at the scalar's
# value instead and kept float32 there, so it disagrees in three).
#
# NumPy's float64 default follows its data into torch: `torch.from_numpy(a)` (like
# `torch.tensor(a)`) keeps the array's dtype, so an array made with NumPy's defaults becomes a
# float64 tensor. Layers are built in torch's default float32, and `nn.Linear` does not
# promote: float64 input raises a RuntimeError about dtypes. Convert where the data comes in,
# `torch.from_numpy(a).float()` (the same as `.to(torch.float32)`) or
# `torch.as_tensor(a, dtype=torch.float32)`; both make a float32 copy.

# %%
def type_promotion_examples() -> list[dict[str, object]]:
    """The same mixed-dtype operations in torch and NumPy: result dtypes and values."""
    ints = torch.tensor([1, 2])  # int64
    halves = torch.tensor([0.5, 1.5])  # float32, the default float dtype
    doubles = halves.double()  # float64
    scalar64 = torch.tensor(2.5, dtype=torch.float64)  # zero-dimensional
    a_ints, a_halves, a_doubles = ints.numpy(), halves.numpy(), doubles.numpy()
    cases = [  # (what is combined, torch operands, torch result, NumPy result)
        ("int64 + float32", (ints, halves), ints + halves, a_ints + a_halves),
        ("float32 + float64", (halves, doubles), halves + doubles, a_halves + a_doubles),
        ("int64 + 2.5 (Python float)", (ints, 2.5), ints + 2.5, a_ints + 2.5),
        ("float32 + 2.5 (Python float)", (halves, 2.5), halves + 2.5, a_halves + 2.5),
        ("float32 + 0-dim float64", (halves, scalar64), halves + scalar64, a_halves + np.float64(2.5)),
        ("int64 / int64", (ints, ints), ints / ints, a_ints / a_ints),
    ]
    return [{"operands": label, "torch": _dtype_name(result.dtype),
             "torch.result_type": _dtype_name(torch.result_type(*operands)), "NumPy": str(reference.dtype),
             "torch values": result.tolist(), "NumPy values": reference.tolist()}
            for label, operands, result, reference in cases]



def print_type_promotion(rows: list[dict[str, object]]) -> None:
    print_table("Type promotion", ["operands", "torch", "torch.result_type", "NumPy"],
                [[r["operands"], r["torch"], r["torch.result_type"], r["NumPy"]] for r in rows])


FLOAT64_MODEL_INPUTS: dict[str, Callable[[np.ndarray], torch.Tensor]] = {  # what model(...) is called with
    "torch.from_numpy(a)": torch.from_numpy,
    "torch.from_numpy(a).float()": lambda a: torch.from_numpy(a).float(),
    "torch.as_tensor(a, dtype=torch.float32)": lambda a: torch.as_tensor(a, dtype=torch.float32),
}


def numpy_float64_into_linear() -> dict[str, object]:
    """A NumPy float64 array fed to a float32 nn.Linear as is and converted: the dtypes, the error, the outputs."""
    a = np.arange(6.0).reshape(2, 3)  # (2, 3) float64, NumPy's default float
    model = nn.Linear(3, 1)  # float32 parameters, torch's default
    with torch.no_grad():  # known weights, so each output is its row's sum
        model.weight.fill_(1.0)
        model.bias.zero_()
    results: dict[str, object] = {
        "a = np.arange(6.0).reshape(2, 3): a.dtype": str(a.dtype),
        "torch.from_numpy(a).dtype": _dtype_name(torch.from_numpy(a).dtype),
        "model = nn.Linear(3, 1): model.weight.dtype": _dtype_name(model.weight.dtype),
    }
    for expression, make_input in FLOAT64_MODEL_INPUTS.items():
        try:
            results[f"model({expression})"] = model(make_input(a)).detach()  # (2, 1)
        except RuntimeError as err:
            results[f"model({expression})"] = err
    return results


# %%
if __name__ == "__main__":
    print_type_promotion(type_promotion_examples())
    print_pairs("A NumPy float64 array into a float32 model (weights 1, bias 0: each output is its row's sum)",
                numpy_float64_into_linear(), fmt=_fmt_typed)


# %% [markdown]
# ## Linear algebra with torch.linalg, in float64 and float32
#
# `torch.linalg` mirrors `numpy.linalg`. The old `torch.eig` and `torch.symeig` were removed
# (calling them raises an error that says so), and the docs deprecate `torch.svd` in favour of
# `torch.linalg.svd`. The honest way to trust a decomposition is to rebuild the matrix
# from it and measure the relative error. Round-off sets the floor: for this well-conditioned
# matrix every error below is under 100 machine epsilons of its dtype, so around 1e-15 in
# float64 (eps 2.2e-16) and 1e-7 to 1e-6 in float32 (eps 1.2e-7).
#
# The determinant needs care: it is the product of n eigenvalues, so it overflows long
# before the entries do. det(10·A) = 10⁶⁴·det(A), around 1e80 here, is past float32's largest
# value (3.4e38) and comes back as inf. `torch.linalg.slogdet` returns the sign and log|det|
# instead, which stay finite in both dtypes: compare log-determinants, not determinants.

# %%
LINALG_DTYPES = (torch.float64, torch.float32)  # the precisions compared side by side


def make_spd_matrix(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A well-conditioned symmetric positive-definite n×n matrix: M Mᵀ/n + I."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    m = torch.randn(n, n, generator=generator, dtype=dtype)
    gram = m @ m.mT / n  # symmetric only up to round-off: BLAS may sum (i, j) and (j, i) in different orders
    return (gram + gram.mT) / 2 + torch.eye(n, dtype=dtype)


def linalg_report(A: torch.Tensor) -> dict[str, float]:
    """Relative reconstruction or residual error of each torch.linalg routine on SPD matrix `A`, in A's dtype."""
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
    x_lstsq = torch.linalg.lstsq(A, b, driver="gels").solution  # QR: A is square and of full rank
    log_abs_det = torch.linalg.slogdet(A).logabsdet  # log|det A|: finite where det itself overflows
    log_det_from_evals = evals.log().sum()  # det = product of eigenvalues, all positive for SPD
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
        "slogdet vs sum of log eigenvalues": (abs(log_abs_det - log_det_from_evals) / abs(log_det_from_evals)).item(),
        "matrix_norm vs sqrt(sum S^2)": (abs(frobenius - S.square().sum().sqrt()) / frobenius).item(),
    }


def linalg_errors_by_dtype(A: torch.Tensor) -> dict[str, dict[str, float]]:
    """`linalg_report` of A converted to each of LINALG_DTYPES: check -> dtype name -> relative error."""
    reports = {_dtype_name(dtype): linalg_report(A.to(dtype)) for dtype in LINALG_DTYPES}
    return {check: {name: report[check] for name, report in reports.items()} for check in reports["float64"]}


def determinant_table(A: torch.Tensor, scales: Sequence[float] = DETERMINANT_SCALES) -> list[dict[str, object]]:
    """det and log|det| of scale·A in each of LINALG_DTYPES, where det may overflow and slogdet does not."""
    rows = []
    for scale in scales:
        row: dict[str, object] = {"matrix": f"{scale:g}·A"}
        for dtype in LINALG_DTYPES:
            scaled = scale * A.to(dtype)
            row[f"det {_dtype_name(dtype)}"] = torch.linalg.det(scaled).item()
            row[f"log|det| {_dtype_name(dtype)}"] = torch.linalg.slogdet(scaled).logabsdet.item()
        rows.append(row)
    return rows


def condition_number(A: torch.Tensor) -> float:
    """The 2-norm condition number: how much A can amplify relative errors in a solve."""
    return torch.linalg.cond(A).item()



def print_linalg(condition: float, errors: dict[str, dict[str, float]], determinants: list[dict[str, object]]) -> None:
    print_table(f"torch.linalg on a {LINALG_SIZE}×{LINALG_SIZE} SPD matrix A, condition number {condition:.3g}: "
                "relative errors", ["check", *map(_dtype_name, LINALG_DTYPES)],
                [[check, *map(_sci, by_dtype.values())] for check, by_dtype in errors.items()])
    print_table("Determinants overflow, log-determinants do not", list(determinants[0]),
                [[row["matrix"], *map(_fmt, list(row.values())[1:])] for row in determinants])


# %%
if __name__ == "__main__":
    # A generator of its own: the matrix is the same whatever --quick drew before this section.
    A = make_spd_matrix(LINALG_SIZE, torch.Generator().manual_seed(ctx.seed))  # (64, 64) float64
    print_linalg(condition_number(A), linalg_errors_by_dtype(A), determinant_table(A))


# %% [markdown]
# ## Benchmark: matrix multiplication
#
# A square n×n matmul does 2n³ floating-point operations, so GFLOP/s = 2n³ / seconds / 1e9
# compares sizes fairly. NumPy is the reference. On the CPU the two call different BLAS
# libraries: the x86 Linux wheels of torch bring Intel's MKL (`torch.__config__.show()` says
# which) and NumPy's wheels bring OpenBLAS (`numpy.show_config()`); on CUDA torch calls
# cuBLAS. Both run on one thread (torch's and the BLAS libraries' alike), so the comparison is
# like for like and other programs on the machine disturb it less. `lesson_harness.benchmark`
# warms up, synchronizes the GPU and repeats each product in blocks, as `torch.utils.benchmark.Timer`
# does; the table shows the median
# time per product, the spread of the middle half of the blocks (IQR) as a share of it, and
# GFLOP/s from the median. "vs NumPy" is NumPy's median over torch's, both from this run: above
# 1, torch was faster at that size. What to look for: small matrices can measure per-call
# overhead more than arithmetic; where GFLOP/s stops changing with n you see what one CPU core's
# float32 BLAS (or the GPU) can do, and that is where to compare the libraries. On a shared machine a single
# row can land far from its neighbours; if it carries the mark, its spread says it is as much
# noise as signal: run again before reading anything into it. Which library wins depends on
# the processor, the size and the thread count: measure on yours.

# %%
def matmul_gflops(size: int, seconds: float) -> float:
    """Throughput of one n×n by n×n matmul that took `seconds`: 2n³ floating-point operations."""
    return 2 * size**3 / seconds / 1e9


def benchmark_matmul(
    sizes: Iterable[int],
    devices: Iterable[torch.device | str] = ("cpu",),
    min_run_time: float = 0.2,
    seed: int = 0,
    threads: int = BENCHMARK_THREADS,
) -> list[dict[str, object]]:
    """One row per (size, backend), NumPy first as reference, then each torch device, all on `threads` threads.

    A row holds the Timing, GFLOP/s from its median, and NumPy's median over this row's median from the same run.
    """
    backends = list(dict.fromkeys(["numpy"] + [as_device(d).type for d in devices]))  # no duplicates, in order
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        if size < 1:
            raise ValueError(f"matmul size {size} must be positive")
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        for backend in backends:
            if backend == "numpy":
                timing = benchmark(lambda a=a, b=b: a @ b, "cpu", min_run_time, threads)
                numpy_timing = timing
            else:
                ta, tb = torch.from_numpy(a).to(backend), torch.from_numpy(b).to(backend)
                timing = benchmark(lambda ta=ta, tb=tb: ta @ tb, backend, min_run_time, threads)
            rows.append({"size": size, "backend": backend, "timing": timing,
                         "gflops": matmul_gflops(size, timing.median),
                         "vs_numpy": numpy_timing.median / timing.median,
                         "vs_numpy_noisy": numpy_timing.noisy or timing.noisy})  # a ratio is as noisy as its inputs
    return rows



def print_benchmark(rows: list[dict[str, object]]) -> None:
    print_table("Matmul benchmark (float32, n×n @ n×n; GFLOP/s = 2n³ / median)",
                ["size", "backend", *TIMING_HEADERS, "GFLOP/s", "vs NumPy"],
                [[f"{r['size']}×{r['size']}", r["backend"], *timing_cells(r["timing"]), f"{r['gflops']:.1f}",
                  f"{r['vs_numpy']:.2f}×" + (f" {NOISY_MARK}" if r["vs_numpy_noisy"] else "")] for r in rows])
    print(timing_note(rows[0]["timing"].threads))


def plot_matmul_benchmark(rows: list[dict[str, object]]):
    """GFLOP/s and median time per matmul against size, one line per backend, log axes; noisy medians circled."""
    threads = rows[0]["timing"].threads
    fig, axes = new_figure(1, 2, f"Square float32 matmul: NumPy vs torch, {threads} thread"
                                 + ("s" if threads != 1 else ""))
    ax_rate, ax_time = axes.flat
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    sizes = sorted({r["size"] for r in rows})
    noisy = [r for r in rows if r["timing"].noisy]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        label = "NumPy (reference)" if backend == "numpy" else f"torch on {backend}"
        ax_rate.plot([r["size"] for r in mine], [r["gflops"] for r in mine], "o-", label=label)
        ax_time.plot([r["size"] for r in mine], [r["timing"].median * 1e3 for r in mine], "o-", label=label)
    if noisy:  # the rows the table marks: their spread is at least 10 % of the median
        for ax, values in ((ax_rate, [r["gflops"] for r in noisy]),
                           (ax_time, [r["timing"].median * 1e3 for r in noisy])):
            ax.plot([r["size"] for r in noisy], values, "o", markersize=14, markerfacecolor="none",
                    markeredgecolor="red", label=f"noisy ({NOISY_MARK} in the table)")
    ax_rate.set(xscale="log", ylim=(0, None), title="Throughput (higher is better)", xlabel="matrix size n (n × n)",
                ylabel="GFLOP/s (2n³ / median time)")
    ax_time.set(xscale="log", yscale="log", title="Median time per matmul (lower is better)",
                xlabel="matrix size n (n × n)", ylabel="median time (ms)")
    for ax in (ax_rate, ax_time):
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    return fig

# %%
if __name__ == "__main__":
    devices = ["cpu"] + ([ctx.device] if ctx.device.type != "cpu" else [])
    matmul_rows = benchmark_matmul(cfg.matmul_sizes, devices, cfg.min_run_time, ctx.seed)
    print_benchmark(matmul_rows)
    save_figure(plot_matmul_benchmark(matmul_rows), "matmul_benchmark.png", ctx.plots_dir)


# %% [markdown]
# ## Summary figure
#
# One picture of the operations above: random draws, a matmul worked entry by entry, a
# reshape, a broadcast, and the activation functions the later lessons use.
# `tensor_operations_data` computes what it shows and `plot_tensor_operations` only draws.

# %%
HISTOGRAM_SAMPLES = 20_000  # draws per distribution in the rand vs randn histogram
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # curves in the activation panel
    "ReLU": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "GELU": F.gelu, "SiLU": F.silu,
}


def tensor_operations_data(generator: torch.Generator) -> dict[str, object]:
    """The tensors drawn in the overview figure: random draws, a small integer matmul, a reshape, a broadcast."""
    a = torch.randint(-3, 4, (4, 3), generator=generator).float()  # small integers: the product checks by hand
    b = torch.randint(-3, 4, (3, 5), generator=generator).float()
    flat = torch.arange(12.0)
    col = torch.arange(3.0).view(3, 1) * 10  # (3, 1)
    row = torch.arange(4.0).view(1, 4)  # (1, 4)
    x = torch.linspace(-4, 4, 400)
    return {
        "heat": torch.rand(8, 8, generator=generator),
        "uniform": torch.rand(HISTOGRAM_SAMPLES, generator=generator),
        "normal": torch.randn(HISTOGRAM_SAMPLES, generator=generator),
        "matmul": (a, b, a @ b),  # (4, 3), (3, 5), (4, 5)
        "reshape": (flat.view(1, 12), flat.view(3, 4)),
        "broadcast": (col, row, col + row),  # (3, 1) + (1, 4) -> (3, 4)
        "activation_x": x,
        "activations": {name: fn(x) for name, fn in ACTIVATIONS.items()},
    }


def plot_tensor_operations(data: dict[str, object]):
    """Six panels: random heatmap, rand vs randn, a matmul, a reshape, a broadcast, activations."""
    fig, axes = new_figure(2, 3, "Tensor operations at a glance")
    ax_heat, ax_hist, ax_matmul, ax_reshape, ax_broadcast, ax_act = axes.flat

    image = ax_heat.imshow(data["heat"].numpy(), cmap="viridis")
    fig.colorbar(image, ax=ax_heat, label="value")
    ax_heat.set(title="torch.rand(8, 8)", xlabel="column index", ylabel="row index")

    for samples, label in [(data["uniform"], "rand: U[0, 1)"), (data["normal"], "randn: N(0, 1)")]:
        ax_hist.hist(samples.numpy(), bins=60, density=True, alpha=0.6, label=label)
    ax_hist.set(title=f"rand vs randn ({len(data['uniform']):,} samples each)", xlabel="value",
                ylabel="probability density")
    ax_hist.legend()

    a, b, product = data["matmul"]
    image = _draw_equation(ax_matmul, [(a, "A (4, 3)"), (b, "B (3, 5)"), (product, "A @ B (4, 5)")], ["@", "="],
                           "Matmul: (A @ B)[0, 0] = row 0 of A · column 0 of B", highlight=True, symmetric=True)
    fig.colorbar(image, ax=ax_matmul, shrink=0.6, label="value (one scale for all three)")

    flat_row, grid = data["reshape"]
    _draw_equation(ax_reshape, [(flat_row, "arange(12)  (12,)"), (grid, "view(3, 4)  (3, 4)")], ["→"],
                   "Reshape: same 12 values, row-major order")

    col, row, total = data["broadcast"]
    _draw_equation(ax_broadcast, [(col, "(3, 1)"), (row, "(1, 4)"), (total, "(3, 4)")], ["+", "="],
                   "Broadcast: (3, 1) + (1, 4) → (3, 4)")

    x = data["activation_x"].numpy()
    for name, y in data["activations"].items():
        ax_act.plot(x, y.numpy(), label=name, linewidth=2)
    ax_act.axhline(0, color="grey", linewidth=0.5)
    ax_act.set(title="Activation functions", xlabel="input x", ylabel="output f(x)", ylim=(-1.5, 4))
    ax_act.legend()
    return fig


def _draw_equation(ax, matrices, operators, title, highlight=False, symmetric=False):
    """Matrices side by side as annotated heatmaps on one colour scale, with operators between them.

    `symmetric` centres the scale on 0 (signed data); `highlight` outlines row 0 of the first
    matrix, column 0 of the second and entry [0, 0] of the last. Returns the last image, for a colour bar.
    """
    from matplotlib.patches import Rectangle

    ax.set_axis_off()
    ax.set_title(title)
    largest = max(m.abs().max().item() for m, _ in matrices)
    smallest = -largest if symmetric else min(m.min().item() for m, _ in matrices)
    total_cols = sum(m.shape[1] for m, _ in matrices) + 1.5 * len(operators)
    x = 0.0
    for index, (matrix, label) in enumerate(matrices):
        rows, cols = matrix.shape
        width = cols / total_cols
        height = min(0.75, width * rows / cols * ax.bbox.width / max(ax.bbox.height, 1))
        inset = ax.inset_axes([x, 0.45 - height / 2, width, height])
        image = inset.imshow(matrix.numpy(), cmap="coolwarm", aspect="auto", vmin=smallest, vmax=largest)
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(label, fontsize=9)
        for (r, c), value in np.ndenumerate(matrix.numpy()):
            inset.text(c, r, f"{value:g}", ha="center", va="center", fontsize=7)
        if highlight:
            outline = {0: (-0.5, -0.5, cols, 1), 1: (-0.5, -0.5, 1, rows)}.get(index, (-0.5, -0.5, 1, 1))
            inset.add_patch(Rectangle(outline[:2], outline[2], outline[3], fill=False, edgecolor="black",
                                      linewidth=2))
        x += width
        if index < len(operators):
            ax.text(x + 0.75 / total_cols, 0.45, operators[index], ha="center", va="center",
                    fontsize=16, transform=ax.transAxes)
            x += 1.5 / total_cols
    return image


# %%
if __name__ == "__main__":
    save_figure(plot_tensor_operations(tensor_operations_data(ctx.generator)), "tensor_operations_visualization.png",
                ctx.plots_dir)
