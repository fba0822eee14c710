"""tensor_basics: every fact the lesson prints, checked against NumPy, closed forms or torch's own reference.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py;
here it runs only to show that two seeds print different output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, FAKE_IQR_S, FAKE_MEDIAN_S, readme_quotes, run_script, unprinted_quotes
from hypothesis import given, settings
from hypothesis import strategies as st

import tensor_basics as tb
from lesson_harness import BENCHMARK_THREADS, NOISY_MARK, TIMING_HEADERS, Timing, timing_note

FLOAT_DTYPES = {"float64": torch.float64, "float32": torch.float32}
ROUND_OFF_UNITS = 100  # the lesson's claim: every linalg error is under 100 machine epsilons of its dtype


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lesson_matrix(seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    """The SPD matrix the linear-algebra section draws for --seed `seed` (from a generator of its own), and the
    lesson's generator as the dtype section finds it (after the creation examples)."""
    gen = generator(seed)
    tb.creation_examples("cpu", gen)
    return tb.make_spd_matrix(tb.LINALG_SIZE, generator(seed)), gen


# %% Creating and reshaping


@pytest.mark.parametrize("device", DEVICES)
def test_creation_examples_shapes_dtypes_and_values(device):
    made = tb.creation_examples(device, generator(5))
    assert all(t.device.type == device for t in made.values())
    expected_linspace = torch.from_numpy(np.linspace(0, 1, 5, dtype=np.float32))
    torch.testing.assert_close(made["linspace(0, 1, 5)"].cpu(), expected_linspace, rtol=0, atol=1e-7)
    assert made["arange(0, 10, 2)"].tolist() == list(range(0, 10, 2))
    assert made["eye(3)"].cpu().numpy().tolist() == np.eye(3).tolist()
    assert made["from_numpy(arange(6).reshape(2, 3))"].tolist() == np.arange(6.0).reshape(2, 3).tolist()
    assert made["full((2, 3), 7.0)"].tolist() == np.full((2, 3), 7.0).tolist()
    expected_dtypes = {  # Python ints give int64, Python floats and the float factories the default float32
        "tensor([[1, 2], [3, 4]])": torch.int64, "from_numpy(arange(6).reshape(2, 3))": torch.float32,
        "rand(2, 3)": torch.float32, "randn(2, 3)": torch.float32, "zeros(2, 3)": torch.float32,
        "ones(2, 3, dtype=int64)": torch.int64, "full((2, 3), 7.0)": torch.float32, "arange(0, 10, 2)": torch.int64,
        "linspace(0, 1, 5)": torch.float32, "eye(3)": torch.float32, "zeros_like(t)": torch.float32,
        "ones_like(t, dtype=float16)": torch.float16,
    }
    assert {name: t.dtype for name, t in made.items()} == expected_dtypes
    assert made["zeros_like(t)"].shape == (2, 3)
    # The random ones come from the caller's generator, drawn on the CPU: the same numbers on every device.
    reference = generator(5)
    torch.testing.assert_close(made["rand(2, 3)"].cpu(), torch.rand(2, 3, generator=reference), rtol=0, atol=0)
    torch.testing.assert_close(made["randn(2, 3)"].cpu(), torch.randn(2, 3, generator=reference), rtol=0, atol=0)


def test_creation_examples_follow_the_seed():
    first, second = (tb.creation_examples("cpu", generator(seed))["rand(2, 3)"] for seed in (1, 2))
    assert not torch.equal(first, second)


def test_manipulation_examples_match_numpy():
    reference = np.arange(12.0).reshape(3, 4)
    got = tb.manipulation_examples()
    np.testing.assert_array_equal(got["view(3, 4)"].numpy(), reference)
    np.testing.assert_array_equal(got["reshape(2, 6)"].numpy(), np.arange(12.0).reshape(2, 6))
    np.testing.assert_array_equal(got["permute(1, 0).contiguous().view(12)"].numpy(), reference.T.reshape(12))
    np.testing.assert_array_equal(got["grid[1:, ::2]"].numpy(), reference[1:, ::2])
    np.testing.assert_array_equal(got["grid[[0, 2]] (fancy)"].numpy(), reference[[0, 2]])
    np.testing.assert_array_equal(got["grid[grid > 8] (boolean)"].numpy(), reference[reference > 8])
    assert got["permute(1, 0).is_contiguous()"] is False
    assert got["cat([grid, grid], dim=0).shape"] == np.concatenate([reference, reference]).shape
    assert got["split(t, 5) sizes"] == [len(p) for p in np.array_split(np.arange(12), [5, 10])]
    assert got["chunk(t, 5) sizes"] == [3, 3, 3, 3]  # chunk uses ceil(12 / 5) = 3 per chunk
    assert got["stack([grid, grid]).shape"] == np.stack([reference, reference]).shape
    assert got["unsqueeze(0).shape"] == np.expand_dims(reference, 0).shape
    assert got["unsqueeze(0).squeeze(0).shape"] == reference.shape
    # The prose: slices and a contiguous reshape are views of t's storage, advanced indexing copies.
    storage = got["view(3, 4)"].untyped_storage().data_ptr()
    for view in ("reshape(2, 6)", "grid[1:, ::2]"):
        assert got[view].untyped_storage().data_ptr() == storage, view
    for copy in ("grid[[0, 2]] (fancy)", "grid[grid > 8] (boolean)", "permute(1, 0).contiguous().view(12)"):
        assert got[copy].untyped_storage().data_ptr() != storage, copy


def test_memory_sharing_facts():
    facts = tb.memory_sharing_facts()
    assert facts.pop("clone: same data_ptr") is False
    assert all(facts.values()), facts


def _raised(fn) -> BaseException:
    """The exception `fn()` raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_of_grad_tensor_matches_what_torch_does(device):
    got = tb.numpy_of_grad_tensor(device)
    assert list(got) == ["w.numpy()", "w.detach().numpy()", "w.detach().cpu().numpy()"]
    w = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    expected = _raised(w.numpy)  # torch's own answer, in this process
    assert type(got["w.numpy()"]) is type(expected) and str(got["w.numpy()"]) == str(expected)
    np.testing.assert_array_equal(got["w.detach().cpu().numpy()"], np.array([1.0, 2.0], dtype=np.float32))
    if device == "cpu":
        assert isinstance(got["w.numpy()"], RuntimeError) and "requires grad" in str(got["w.numpy()"])
        np.testing.assert_array_equal(got["w.detach().numpy()"], np.array([1.0, 2.0], dtype=np.float32))
        shared = w.detach().numpy()  # the prose: on the CPU the detached array still shares w's memory
        shared[0] = 5.0
        assert w[0].item() == 5.0
        with torch.no_grad():  # the prose: .numpy() refuses only while autograd records
            assert w.numpy().tolist() == [5.0, 2.0]
    else:  # the prose: NumPy reads host memory only, a GPU tensor needs .cpu(), which copies
        assert isinstance(got["w.detach().numpy()"], TypeError) and "cpu()" in str(got["w.detach().numpy()"])
        copied = w.detach().cpu().numpy()
        copied[0] = 5.0
        assert w[0].item() == 1.0


# %% Broadcasting

shape_st = st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=4).map(tuple)


@settings(max_examples=600, deadline=None)
@given(st.lists(shape_st, min_size=1, max_size=4))
def test_broadcast_shape_agrees_with_torch(shapes):
    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        with pytest.raises(ValueError, match="do not broadcast"):
            tb.broadcast_shape(*shapes)
    else:
        assert tb.broadcast_shape(*shapes) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=0, max_size=4).map(tuple),
       st.lists(st.booleans(), min_size=4, max_size=4))
def test_broadcast_shape_compatible_by_construction(shape, ones_mask):
    # Replacing any sizes by 1 (or dropping leading dims) always broadcasts back to `shape`.
    other = tuple(1 if flag else size for size, flag in zip(shape, ones_mask))
    assert tb.broadcast_shape(shape, other[1:]) == tuple(torch.broadcast_shapes(shape, other[1:])) == shape


def test_broadcast_shape_edge_cases_and_errors():
    assert tb.broadcast_shape() == () == tuple(torch.broadcast_shapes())
    assert tb.broadcast_shape((), ()) == ()
    assert tb.broadcast_shape((0,), (1,)) == (0,)
    with pytest.raises(ValueError, match="size 3 vs size 4"):
        tb.broadcast_shape((2, 3), (4,))
    with pytest.raises(ValueError, match="size 0 vs size 2"):
        tb.broadcast_shape((0,), (2,))
    with pytest.raises(ValueError, match="non-negative"):
        tb.broadcast_shape((2, -1))


def test_broadcast_examples_show_both_answers():
    rows = tb.broadcast_examples()
    assert [row["shapes"] for row in rows] == [" + ".join(map(str, shapes)) for shapes in tb.BROADCAST_EXAMPLES]
    for shapes, row in zip(tb.BROADCAST_EXAMPLES, rows):
        try:
            expected = str(np.broadcast_shapes(*shapes))
        except ValueError:
            assert row["by hand"].startswith("ValueError: ") and row["torch"].startswith("RuntimeError: ")
        else:
            assert row["by hand"] == row["torch"] == expected
    assert rows[-1]["by hand"].startswith("ValueError")  # the table ends with a clash, as the prose says


# %% Reductions, Python numbers, in-place updates


def test_reductions_match_numpy_and_their_labels():
    x = torch.tensor(tb.REDUCTION_INPUT)
    a = np.array(tb.REDUCTION_INPUT, dtype=np.float32)
    got = tb.reduction_examples()
    assert list(got) == list(tb.REDUCTIONS)
    for expression, (_, numpy_expression) in tb.REDUCTIONS.items():
        reference = np.asarray(eval(numpy_expression, {"a": a, "np": np}))  # the NumPy column, as printed
        value = got[expression]
        assert tuple(value.shape) == reference.shape, expression  # keepdim must keep the dimension
        np.testing.assert_allclose(value.numpy(), reference, rtol=1e-6, atol=0, err_msg=expression)
        torch.testing.assert_close(value, eval(expression, {"x": x}), rtol=0, atol=0)  # the label is the code
    # A few by hand, so a wrong NumPy column cannot hide a wrong torch one.
    assert got["x.sum(dim=0)"].tolist() == [4.0, 12.0, 13.0]
    assert got["x.max(dim=1).indices"].tolist() == [1, 2]
    assert got["x.argmax()"].item() == 5
    torch.testing.assert_close(got["x.std(dim=1)"], torch.tensor([math.sqrt(13 / 3), 4.0]), rtol=1e-6, atol=0)
    assert got["x - x.mean(dim=1, keepdim=True)"].sum(dim=1).abs().max().item() < 1e-6  # centred rows
    assert not np.allclose(a.std(axis=1), got["x.std(dim=1)"].numpy())  # the trap: np.std divides by n


def test_python_numbers_match_numpy_values_and_types():
    t = torch.tensor(tb.PYTHON_NUMBER_INPUT)
    a = t.numpy()
    got = tb.python_number_examples()
    assert list(got) == list(tb.PYTHON_NUMBERS)
    for expression, (_, numpy_expression) in tb.PYTHON_NUMBERS.items():
        if expression == "t.item()":
            assert isinstance(got[expression], RuntimeError) and "4 elements" in str(got[expression])
            with pytest.raises(ValueError, match="size 1"):
                eval(numpy_expression, {"a": a, "np": np})
            continue
        reference = eval(numpy_expression, {"a": a, "np": np})
        assert got[expression] == reference and type(got[expression]) is type(reference), expression
        assert got[expression] == eval(expression, {"t": t, "torch": torch}), expression
    assert got["torch.tensor(0.1).item()"] == float(np.float32(0.1)) != 0.1  # exact float32 value, not 0.1
    assert got["t.sum().item()"] == 11.0


def test_inplace_version_steps_match_numpy_and_count_writes():
    rows = tb.inplace_version_steps()
    namespace = {"np": np}
    for row in rows:
        exec(row["numpy"], namespace)  # the NumPy column, as printed, one statement after the other
        assert row["values"] == namespace["a"].tolist(), row
    assert [row["t._version"] for row in rows] == [0, 1, 2, 3, 4, 4]  # one per in-place write, none for t + 1
    torch_namespace = {"torch": torch}
    for row in rows:
        exec(row["torch"], torch_namespace)  # the torch column is the code that ran
        assert torch_namespace["t"].tolist() == row["values"] and torch_namespace["t"]._version == row["t._version"]


def test_inplace_autograd_errors():
    x = torch.tensor([0.5, 1.0], requires_grad=True)
    y = x.exp()
    assert torch.equal(y.grad_fn._saved_result, y)  # the prose: exp saves its output for backward
    got = tb.inplace_autograd_errors()
    assert got["y = x.exp(); y._version when exp saved y"] == 0
    assert got["y._version after y.add_(1)"] == 1
    message = got["y.sum().backward()"]
    assert message.startswith("RuntimeError: ") and "modified by an inplace operation" in message
    assert "is at version 1; expected version 0" in message and "Hint" not in message
    assert "leaf Variable that requires grad" in got["x.add_(1), x a leaf that requires grad"]
    np.testing.assert_allclose(got["x.grad from (x.exp() + 1).sum().backward()"], np.exp([0.0, 1.0, 2.0]),
                               rtol=1e-6, atol=0)
    # The prose: the refusal holds while autograd records; under no_grad the leaf takes the write, as an
    # optimizer's step does. Checked against torch itself and against an optimizer's own update.
    leaf = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    refused = _raised(lambda: leaf.add_(1))
    assert isinstance(refused, RuntimeError)
    assert got["x.add_(1), x a leaf that requires grad"] == f"RuntimeError: {refused}"
    assert leaf.tolist() == [0.0, 1.0, 2.0] and leaf._version == 0  # the refused write changed nothing
    with torch.no_grad():
        leaf.add_(1)
    assert got["x after with torch.no_grad(): x.add_(1)"].tolist() == leaf.tolist() == [1.0, 2.0, 3.0]
    assert got["x._version before -> after that write"] == f"0 -> {leaf._version}" == "0 -> 1"
    assert got["x.is_leaf and x.requires_grad after it"] is True and leaf.is_leaf and leaf.requires_grad
    param = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    param.grad = torch.full((3,), -1.0)
    torch.optim.SGD([param], lr=1.0).step()  # p -= lr * grad, in place on the leaf
    assert param.tolist() == leaf.tolist() and param._version > 0 and param.is_leaf and param.requires_grad


# %% Dtypes and type promotion


def test_dtype_report_matches_numpy_itemsizes_and_eps():
    rows = {r["dtype"]: r for r in tb.dtype_report(1000, generator())}
    assert list(rows) == [tb._dtype_name(d) for d in tb.DTYPES]
    for name in ("float64", "float32", "float16", "int8"):
        itemsize = np.dtype(name).itemsize
        assert rows[name]["element_size"] == itemsize
        assert rows[name]["nbytes"] == 1000 * itemsize
        assert rows[name]["max"] == float(np.finfo(name).max if name != "int8" else np.iinfo(name).max)
    assert rows["bfloat16"]["element_size"] == 2
    for name in ("float64", "float32"):
        assert rows[name]["max_rel_roundtrip_error"] == 0.0  # the values are float32 already
    for name in ("float16", "bfloat16"):
        # Round-to-nearest: relative error at most half a unit in the last place, and not zero.
        assert rows[name]["eps"] / 8 < rows[name]["max_rel_roundtrip_error"] <= rows[name]["eps"] / 2
    for name in ("float16", "float32", "float64"):
        assert rows[name]["eps"] == float(np.finfo(name).eps)
    assert rows["bfloat16"]["eps"] == 2.0**-7  # 7 stored mantissa bits
    assert rows["int8"]["eps"] is None and rows["int8"]["max_rel_roundtrip_error"] is None


NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"  # NEP 50: a NumPy scalar's dtype counts, not its value
EXPECTED_PROMOTION = {  # operands -> (torch dtype, torch.result_type, NumPy dtype), from the type promotion docs
    "int64 + float32": ("float32", "float32", "float64"),
    "float32 + float64": ("float64", "float64", "float64"),
    "int64 + 2.5 (Python float)": ("float32", "float32", "float64"),
    "float32 + 2.5 (Python float)": ("float32", "float32", "float32"),
    "float32 + 0-dim float64": ("float32", "float32", "float64" if NUMPY_2 else "float32"),
    "int64 / int64": ("float32", "int64", "float64"),
}


def test_type_promotion_examples():
    rows = tb.type_promotion_examples()
    assert {r["operands"]: (r["torch"], r["torch.result_type"], r["NumPy"]) for r in rows} == EXPECTED_PROMOTION
    for r in rows:
        np.testing.assert_allclose(r["torch values"], r["NumPy values"], rtol=1e-7, atol=0, err_msg=r["operands"])
    assert sum(r["torch"] != r["NumPy"] for r in rows) == (4 if NUMPY_2 else 3)  # "NumPy 2 disagrees in four rows"
    division = next(r for r in rows if r["operands"] == "int64 / int64")
    assert division["torch values"] == [1.0, 1.0]
    assert tb._dtype_name(torch.get_default_dtype()) == "float32"  # what the prose calls torch's default float


def test_numpy_float64_into_linear_matches_torch_and_numpy():
    got = tb.numpy_float64_into_linear()
    a = np.arange(6.0).reshape(2, 3)
    assert got["a = np.arange(6.0).reshape(2, 3): a.dtype"] == str(a.dtype) == "float64"
    assert got["torch.from_numpy(a).dtype"] == "float64" == tb._dtype_name(torch.tensor(a).dtype)  # both keep it
    layer_dtype = tb._dtype_name(torch.nn.Linear(3, 1).weight.dtype)
    assert got["model = nn.Linear(3, 1): model.weight.dtype"] == "float32" == layer_dtype
    weight, bias = torch.ones(1, 3), torch.zeros(1)  # float32, like the lesson's layer
    expected = _raised(lambda: F.linear(torch.from_numpy(a), weight, bias))  # torch's own error for the same call
    error = got["model(torch.from_numpy(a))"]
    assert isinstance(error, RuntimeError) and str(error) == str(expected) and "dtype" in str(error)
    for fix in ("torch.from_numpy(a).float()", "torch.as_tensor(a, dtype=torch.float32)"):
        out = got[f"model({fix})"]
        assert out.dtype == torch.float32 and out.shape == (2, 1), fix
        np.testing.assert_array_equal(out.numpy(), a.sum(axis=1, keepdims=True))  # weights 1, bias 0: row sums
    assert list(tb.FLOAT64_MODEL_INPUTS)[1:] == ["torch.from_numpy(a).float()",
                                                 "torch.as_tensor(a, dtype=torch.float32)"]
    # The prose: .float() is .to(torch.float32), and both fixes copy (a write to the array does not reach them).
    source = np.arange(6.0).reshape(2, 3)
    converted = {name: make(source) for name, make in tb.FLOAT64_MODEL_INPUTS.items()}
    assert torch.equal(converted["torch.from_numpy(a).float()"], torch.from_numpy(source).to(torch.float32))
    source[0, 0] = 100.0
    assert converted["torch.from_numpy(a)"][0, 0].item() == 100.0  # the float64 one shares, as from_numpy does
    for name in list(converted)[1:]:
        assert converted[name][0, 0].item() == 0.0, name


def test_fmt_typed_prints_dtypes_and_the_first_line_of_an_error():
    assert tb._fmt_typed(torch.tensor([[3.0], [12.0]])) == "[[3], [12]] (float32)"
    assert tb._fmt_typed(np.array([1.0, 2.0], dtype=np.float32)) == "[1, 2] (NumPy float32)"
    assert tb._fmt_typed(RuntimeError("first line\nsecond line")) == "RuntimeError: first line"
    assert tb._fmt_typed("float64") == "float64"


# %% Linear algebra


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [40, tb.LINALG_SIZE])
@pytest.mark.parametrize("dtype_name", FLOAT_DTYPES)
def test_linalg_report_errors_are_a_few_epsilons_in_each_dtype(dtype_name, n, seed):
    dtype = FLOAT_DTYPES[dtype_name]
    report = tb.linalg_report(tb.make_spd_matrix(n, generator(seed)).to(dtype))
    assert len(report) == 10
    eps = torch.finfo(dtype).eps
    assert all(math.isfinite(err) and 0 <= err < ROUND_OFF_UNITS * eps for err in report.values()), report
    if dtype == torch.float32:  # computed in float32, not silently in float64
        assert max(report.values()) > 1e3 * torch.finfo(torch.float64).eps


def test_linalg_errors_by_dtype_is_linalg_report_per_dtype():
    A, _ = lesson_matrix()
    table = tb.linalg_errors_by_dtype(A)
    for name, dtype in FLOAT_DTYPES.items():
        report = tb.linalg_report(A.to(dtype))
        assert list(table) == list(report)
        for check, value in report.items():
            assert table[check][name] == value, (check, name)  # bit for bit: every solver is deterministic


def test_linalg_report_catches_a_wrong_decomposition(monkeypatch):
    """The report measures something: a transposed eigenvector matrix shows up as a large error."""
    A, _ = lesson_matrix()
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda M: (real_eigh(M)[0], real_eigh(M)[1].mT))
    assert tb.linalg_report(A)["eigh: Q diag(L) Q^T vs A"] > 0.1


def test_condition_number_and_determinants_match_numpy():
    A, _ = lesson_matrix()
    a = A.numpy()
    n = tb.LINALG_SIZE
    assert tb.condition_number(A) == pytest.approx(np.linalg.cond(a), rel=1e-10)
    rows = {row["matrix"]: row for row in tb.determinant_table(A)}
    assert list(rows) == ["1·A", "10·A"]
    sign, log_det = np.linalg.slogdet(a)
    assert sign == 1.0
    for scale, row in zip(tb.DETERMINANT_SCALES, rows.values()):
        expected_log = log_det + n * math.log(scale)  # log|det(cA)| = n log c + log|det A|
        assert row["log|det| float64"] == pytest.approx(expected_log, rel=1e-12)
        assert row["log|det| float32"] == pytest.approx(expected_log, rel=1e-5)
        assert row["det float64"] == pytest.approx(math.exp(expected_log), rel=1e-11)
    assert rows["1·A"]["det float32"] == pytest.approx(np.linalg.det(a), rel=1e-4)
    assert math.isinf(rows["10·A"]["det float32"])  # past float32's max 3.4e38: the point of the table


@pytest.mark.parametrize("seed", range(5))
def test_scaled_determinant_is_around_1e80_and_overflows_float32(seed):
    """The prose: det(10·A) for the 64×64 matrix is around 1e80, past float32's range; slogdet stays finite."""
    A, _ = lesson_matrix(seed)
    row = tb.determinant_table(A)[-1]
    assert 78 < math.log10(row["det float64"]) < 83
    assert math.isinf(row["det float32"]) and math.isfinite(row["log|det| float32"])


@pytest.mark.parametrize(("matrix", "message"), [
    (torch.ones(2, 3, dtype=torch.float64), "square"),
    (torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64), "symmetric"),
    (torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64), "positive definite"),
])
def test_linalg_report_rejects_bad_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        tb.linalg_report(matrix)


def test_old_linalg_functions_are_removed_or_deprecated_as_the_prose_says():
    for name in ("eig", "symeig"):
        if hasattr(torch, name):  # the stubs that say so may themselves disappear one day
            with pytest.raises(RuntimeError, match="removed"):
                getattr(torch, name)(torch.eye(2))
    assert "deprecated" in torch.svd.__doc__


def test_make_spd_matrix_is_symmetric_positive_definite():
    A = tb.make_spd_matrix(16, generator(3))
    torch.testing.assert_close(A, A.mT, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(A).min().item() >= 1 - 1e-12  # M Mᵀ/n + I: every eigenvalue at least 1
    with pytest.raises(ValueError, match="n=0"):
        tb.make_spd_matrix(0)


# %% Benchmark


def test_matmul_gflops_is_two_n_cubed_over_time():
    assert tb.matmul_gflops(1000, 2e-3) == pytest.approx(2 * 1000**3 / 2e-3 / 1e9, rel=1e-15)
    assert tb.matmul_gflops(1000, 2e-3) == pytest.approx(1000.0, rel=1e-12)


def _fake_benchmarks(monkeypatch, timings: list[Timing]) -> list[dict]:
    """Make tb.benchmark hand out `timings` in order, and record how each call was made."""
    calls, queue = [], iter(timings)

    def fake_benchmark(fn, device="cpu", min_run_time=0.2, threads=BENCHMARK_THREADS):
        calls.append({"device": str(device), "threads": threads, "result": fn()})
        return next(queue)

    monkeypatch.setattr(tb, "benchmark", fake_benchmark)
    return calls


def test_benchmark_matmul_derives_rates_and_ratios_from_medians_of_one_run(monkeypatch):
    timings = [Timing(2e-3, 1e-5, 1, False), Timing(1e-3, 1e-5, 1, False),  # numpy, cpu at 100
               Timing(8e-3, 2e-3, 1, True), Timing(2e-3, 1e-5, 1, False)]  # numpy (noisy), cpu at 200
    calls = _fake_benchmarks(monkeypatch, timings)
    rows = tb.benchmark_matmul([100, 200], ["cpu"], min_run_time=0.0)
    assert [(r["size"], r["backend"]) for r in rows] == [(100, "numpy"), (100, "cpu"), (200, "numpy"), (200, "cpu")]
    assert [r["timing"] for r in rows] == timings
    assert [c["threads"] for c in calls] == [BENCHMARK_THREADS] * 4 == [1] * 4  # NumPy and torch alike
    assert [type(c["result"]) for c in calls] == [np.ndarray, torch.Tensor] * 2  # NumPy's product, then torch's
    for r in rows:
        assert r["gflops"] == pytest.approx(2 * r["size"] ** 3 / r["timing"].median / 1e9, rel=1e-12)
    assert rows[1]["gflops"] == pytest.approx(2.0, rel=1e-12)  # 2·100³ / 1 ms = 2 GFLOP/s
    assert [r["vs_numpy"] for r in rows] == pytest.approx([1.0, 2.0, 1.0, 4.0], rel=1e-12)  # median / median
    assert [r["vs_numpy_noisy"] for r in rows] == [False, False, True, True]  # a ratio is as noisy as its inputs
    calls = _fake_benchmarks(monkeypatch, timings[:2])
    tb.benchmark_matmul([100], ["cpu"], min_run_time=0.0, threads=2)
    assert [c["threads"] for c in calls] == [2, 2]  # another thread count reaches both backends


def test_print_benchmark_shows_median_iqr_marks_and_the_thread_note(monkeypatch, capsys):
    timings = [Timing(2e-3, 1e-5, 1, False), Timing(1e-3, 5e-4, 1, True)]  # torch's row is noisy: 50 % IQR
    _fake_benchmarks(monkeypatch, timings)
    tb.print_benchmark(tb.benchmark_matmul([100], ["cpu"], min_run_time=0.0))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["size", "backend", *TIMING_HEADERS, "GFLOP/s", "vs", "NumPy"]
    assert lines[3].split() == ["100×100", "numpy", "2", "ms", "0", "%", "1.0", "1.00×"]  # 1e-5 / 2e-3 rounds to 0
    assert lines[4].split() == ["100×100", "cpu", "1", "ms", "50", "%", NOISY_MARK, "2.0", "2.00×", NOISY_MARK]
    assert lines[-1] == timing_note(1)


def test_the_lesson_prints_the_benchmark_with_its_spread(tmp_path, capsys, fake_timings, monkeypatch):
    """The whole quick run, with the conftest fake (1 ms median, 2 % IQR): the table's columns and the note."""
    monkeypatch.setattr(tb, "save_figure", lambda fig, name, plots_dir: None)
    assert run_script("tensor_basics", ["--quick", "--device", "cpu", "--plots-dir", str(tmp_path)],
                      only=["benchmark_matmul"]) == 0
    out = capsys.readouterr().out
    table = out.split("Matmul benchmark")[1].splitlines()
    spread = f"{100 * FAKE_IQR_S / FAKE_MEDIAN_S:.0f} %"
    for size in tb.QUICK.matmul_sizes:
        for line in (line for line in table if line.startswith(f"{size}×{size}")):
            assert "1 ms" in line and spread in line and "1.00×" in line and NOISY_MARK not in line, line
    assert timing_note(BENCHMARK_THREADS) in out


def test_plot_matmul_benchmark_draws_medians_and_circles_noisy_rows(monkeypatch):
    timings = [Timing(2e-3, 1e-5, 1, False), Timing(1e-3, 5e-4, 1, True),
               Timing(8e-3, 1e-5, 1, False), Timing(4e-3, 1e-5, 1, False)]
    _fake_benchmarks(monkeypatch, timings)
    rows = tb.benchmark_matmul([100, 200], ["cpu"], min_run_time=0.0)
    fig = tb.plot_matmul_benchmark(rows)
    ax_rate, ax_time = fig.axes
    assert "1 thread" in fig._suptitle.get_text()
    lines = {line.get_label(): line for line in ax_time.lines}
    assert list(lines["torch on cpu"].get_ydata()) == pytest.approx([1.0, 4.0])  # median ms
    rates = {line.get_label(): line for line in ax_rate.lines}
    assert list(rates["torch on cpu"].get_ydata()) == pytest.approx([tb.matmul_gflops(100, 1e-3),
                                                                      tb.matmul_gflops(200, 4e-3)])  # from medians
    noisy = f"noisy ({NOISY_MARK} in the table)"
    for ax in (ax_rate, ax_time):
        circled = next(line for line in ax.lines if line.get_label() == noisy)
        assert list(circled.get_xdata()) == [100]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    calm = tb.plot_matmul_benchmark([r for r in rows if not r["timing"].noisy])
    assert all(line.get_label() != noisy for ax in calm.axes for line in ax.lines)


def test_benchmark_matmul_times_the_real_products():
    rows = tb.benchmark_matmul([8, 16], ["cpu", "cpu"], min_run_time=0.005)
    assert [(r["size"], r["backend"]) for r in rows] == [(8, "numpy"), (8, "cpu"), (16, "numpy"), (16, "cpu")]
    for r in rows:
        timing = r["timing"]
        assert math.isfinite(timing.median) and timing.median > 0 and timing.iqr >= 0
        assert timing.threads == BENCHMARK_THREADS
    with pytest.raises(ValueError, match="size 0"):
        tb.benchmark_matmul([0])


# %% Figures


def _erf(values: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in values])


def test_tensor_operations_data_matches_numpy_and_closed_forms():
    data = tb.tensor_operations_data(generator(4))
    a, b, product = data["matmul"]
    assert bool((a == a.round()).all()) and -3 <= a.min().item() and a.max().item() <= 3
    np.testing.assert_array_equal(product.numpy(), a.numpy() @ b.numpy())
    assert product.shape == (4, 5)
    flat_row, grid = data["reshape"]
    np.testing.assert_array_equal(grid.numpy(), np.arange(12.0).reshape(3, 4))
    col, row, total = data["broadcast"]
    np.testing.assert_array_equal(total.numpy(), np.arange(3.0)[:, None] * 10 + np.arange(4.0)[None, :])
    assert len(data["uniform"]) == len(data["normal"]) == tb.HISTOGRAM_SAMPLES
    x = data["activation_x"].double().numpy()
    expected = {"ReLU": np.maximum(x, 0), "Sigmoid": 1 / (1 + np.exp(-x)), "Tanh": np.tanh(x),
                "GELU": 0.5 * x * (1 + _erf(x / math.sqrt(2))), "SiLU": x / (1 + np.exp(-x))}
    assert list(data["activations"]) == list(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(data["activations"][name].numpy(), values, rtol=1e-5, atol=1e-6, err_msg=name)
    again, other = tb.tensor_operations_data(generator(4)), tb.tensor_operations_data(generator(5))
    for key in ("heat", "uniform", "normal"):  # the draws follow the generator, and only it
        assert torch.equal(again[key], data[key]) and not torch.equal(other[key], data[key]), key
    assert torch.equal(again["matmul"][0], a) and torch.equal(again["matmul"][1], b)


def test_plot_tensor_operations_draws_the_data_it_is_given():
    data = tb.tensor_operations_data(generator(0))
    a, b, _ = data["matmul"]
    data["matmul"] = (a, b, torch.full((4, 5), 42.0))  # a wrong product: the plot must show it, not recompute
    fig = tb.plot_tensor_operations(data)
    texts = [text.get_text() for ax in fig.axes for inset in ax.child_axes for text in inset.texts]
    assert texts.count("42") == 20
    for ax in fig.axes:  # each equation's matrices share one colour scale; the signed matmul one is centred on 0
        limits = {inset.images[0].get_clim() for inset in ax.child_axes}
        assert len(limits) <= 1, ax.get_title()
        if ax.get_title().startswith("Matmul"):
            low, high = limits.pop()
            assert low == -high == -42.0
    assert len([ax for ax in fig.axes if ax.get_title()]) >= 6


# %% The whole lesson and the README


def test_two_seeds_print_different_output_and_seed_0_prints_the_readme_quotes(tmp_path, capsys, fake_timings,
                                                                            monkeypatch):
    """Seeds 0 and 1 differ; seed 0 --quick prints the README's (full-run) lines: the matrix is the same in both."""
    monkeypatch.setattr(tb, "save_figure", lambda fig, name, plots_dir: None)  # rendering PNGs is most of the time
    outputs = []
    for seed in (0, 1):
        assert run_script("tensor_basics", ["--quick", "--device", "cpu", "--seed", str(seed), "--plots-dir",
                                            str(tmp_path)]) == 0
        outputs.append(capsys.readouterr().out.replace(f"seed: {seed}", "seed: N"))
    assert outputs[0] != outputs[1]
    assert not unprinted_quotes(readme_quotes("tensor_basics"), outputs[0])
    assert unprinted_quotes(readme_quotes("tensor_basics"), outputs[1])  # another seed, another matrix
