"""tensor_basics: every fact the lesson prints, checked against NumPy or torch's own reference.

The quick end-to-end run of main() (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st

import tensor_basics as tb


@pytest.mark.parametrize("device", DEVICES)
def test_creation_examples_shapes_dtypes_and_values(device):
    made = tb.creation_examples(device)
    assert all(t.device.type == device for t in made.values())
    expected_linspace = torch.from_numpy(np.linspace(0, 1, 5, dtype=np.float32))
    torch.testing.assert_close(made["linspace(0, 1, 5)"].cpu(), expected_linspace, rtol=0, atol=1e-7)
    assert made["arange(0, 10, 2)"].tolist() == list(range(0, 10, 2))
    assert made["eye(3)"].cpu().numpy().tolist() == np.eye(3).tolist()
    assert made["ones(2, 3, dtype=int64)"].dtype == torch.int64
    assert made["ones_like(t, dtype=float16)"].dtype == torch.float16
    rand = made["rand(2, 3)"]
    assert rand.shape == (2, 3) and bool(((rand >= 0) & (rand < 1)).all())


def test_manipulation_examples_match_numpy():
    reference = np.arange(12.0).reshape(3, 4)
    got = tb.manipulation_examples()
    np.testing.assert_array_equal(got["view(3, 4)"].numpy(), reference)
    np.testing.assert_array_equal(got["permute(1, 0).contiguous().view(12)"].numpy(), reference.T.reshape(12))
    np.testing.assert_array_equal(got["grid[1:, ::2]"].numpy(), reference[1:, ::2])
    np.testing.assert_array_equal(got["grid[[0, 2]] (fancy)"].numpy(), reference[[0, 2]])
    np.testing.assert_array_equal(got["grid[grid > 8] (boolean)"].numpy(), reference[reference > 8])
    assert got["permute(1, 0).is_contiguous()"] is False
    assert got["split(t, 5) sizes"] == [len(p) for p in np.array_split(np.arange(12), [5, 10])]
    assert got["chunk(t, 5) sizes"] == [3, 3, 3, 3]  # chunk uses ceil(12 / 5) = 3 per chunk
    assert got["stack([grid, grid]).shape"] == np.stack([reference, reference]).shape
    assert got["ones(3).mul_(2).add_(1)"].tolist() == [3.0, 3.0, 3.0]


def test_memory_sharing_facts():
    facts = tb.memory_sharing_facts()
    assert facts.pop("clone: same data_ptr") is False
    assert all(facts.values()), facts


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


def test_linalg_report_errors_are_tiny_in_float64():
    report = tb.linalg_report(tb.make_spd_matrix(32, torch.Generator().manual_seed(1)))
    assert len(report) == 10
    assert all(0 <= err < 1e-4 for err in report.values()), report


@pytest.mark.parametrize(("matrix", "message"), [
    (torch.ones(2, 3, dtype=torch.float64), "square"),
    (torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64), "symmetric"),
    (torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64), "positive definite"),
])
def test_linalg_report_rejects_bad_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        tb.linalg_report(matrix)


def test_dtype_report_matches_numpy_itemsizes_and_eps():
    rows = {r["dtype"]: r for r in tb.dtype_report(1000, torch.Generator().manual_seed(0))}
    for name in ("float64", "float32", "float16", "int8"):
        itemsize = np.dtype(name).itemsize
        assert rows[name]["element_size"] == itemsize
        assert rows[name]["nbytes"] == 1000 * itemsize
    assert rows["bfloat16"]["element_size"] == 2
    for name in ("float16", "bfloat16"):
        # Round-to-nearest: relative error at most half a unit in the last place.
        assert 0 < rows[name]["max_rel_roundtrip_error"] <= rows[name]["eps"] / 2
    assert rows["float16"]["eps"] == np.finfo(np.float16).eps


def test_benchmark_matmul_rows_are_well_formed():
    rows = tb.benchmark_matmul([8, 16], ["cpu"], min_run_time=0.005)
    assert [(r["size"], r["backend"]) for r in rows] == [(8, "numpy"), (8, "cpu"), (16, "numpy"), (16, "cpu")]
    for r in rows:
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
        assert r["gflops"] == pytest.approx(2 * r["size"] ** 3 / r["seconds"] / 1e9)
    with pytest.raises(ValueError, match="size 0"):
        tb.benchmark_matmul([0])
