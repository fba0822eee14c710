"""linear_regression_torch: every solver against lstsq, NumPy and each other; DDP against one process.

The quick end-to-end run of main() (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import linear_regression_torch as lr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return lr.make_regression_data(300, 4, noise=0.3, seed=1)


def test_make_regression_data_is_seeded_and_well_formed():
    X, y, w, b = lr.make_regression_data(50, 3, 0.1, seed=7)
    assert X.shape == (50, 3) and y.shape == (50,) and w.shape == (3,) and b.shape == ()
    assert all(t.dtype == torch.float32 for t in (X, y, w, b))
    again = lr.make_regression_data(50, 3, 0.1, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((X, y, w, b), again))
    assert not torch.equal(X, lr.make_regression_data(50, 3, 0.1, seed=8)[0])
    with pytest.raises(ValueError, match="n_samples=0"):
        lr.make_regression_data(0, 3)


def test_closed_form_matches_numpy_lstsq(data):
    X, y, _, _ = data
    w, b = lr.closed_form(X, y)
    augmented = np.hstack([X.double().numpy(), np.ones((len(X), 1))])
    expected = np.linalg.lstsq(augmented, y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), expected[:-1], rtol=1e-5, atol=1e-6)
    assert b == pytest.approx(expected[-1], rel=1e-9, abs=1e-9)


def test_closed_form_recovers_truth_without_noise():
    X, y, w_true, b_true = lr.make_regression_data(100, 3, noise=0.0, seed=2)
    w, b = lr.closed_form(X.numpy(), y.numpy())  # NumPy inputs work too
    torch.testing.assert_close(w, w_true, rtol=1e-5, atol=1e-5)
    assert b == pytest.approx(b_true.item(), abs=1e-5)


def test_closed_form_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="y must have shape"):
        lr.closed_form(torch.ones(5, 2), torch.ones(4))


@pytest.mark.parametrize("solver", ["numpy", "manual", "module"])
def test_each_solver_reaches_the_closed_form_mse(data, solver):
    X, y, _, _ = data
    w_exact, b_exact = lr.closed_form(X, y)
    best = lr.mse(X, y, w_exact, b_exact)
    fit = {"numpy": lambda: lr.fit_numpy(X, y, 0.1, 300),
           "manual": lambda: lr.fit_manual(X.numpy(), y.numpy(), 0.1, 300, torch.device("cpu")),
           "module": lambda: lr.fit_module(X, y, "sgd", 0.1, 300, "cpu")}[solver]()
    assert fit.weights.shape == (4,) and isinstance(fit.bias, float) and len(fit.losses) == 300
    assert all(math.isfinite(v) for v in fit.losses) and fit.losses[-1] < fit.losses[0]
    assert lr.mse(X, y, fit.weights, fit.bias) == pytest.approx(best, rel=1e-4)
    torch.testing.assert_close(fit.weights, w_exact, rtol=1e-3, atol=1e-3)


def test_manual_gradients_equal_hand_derived_numpy_gradients(data):
    X, y, _, _ = data
    # One step with lr = 1 from zero weights leaves exactly minus the gradient.
    manual = lr.fit_manual(X, y, lr=1.0, epochs=1)
    grad_w, grad_b, _ = lr.numpy_gradients(X.double().numpy(), y.double().numpy(), np.zeros(4), 0.0)
    np.testing.assert_allclose(-manual.weights.numpy(), grad_w, rtol=1e-5, atol=1e-6)
    assert -manual.bias == pytest.approx(grad_b, rel=1e-5, abs=1e-6)
    numpy_fit = lr.fit_numpy(X, y, lr=1.0, epochs=1)
    np.testing.assert_allclose(-numpy_fit.weights.numpy(), grad_w, rtol=1e-5, atol=1e-6)


def test_numpy_gradients_match_finite_differences(data):
    X, y, _, _ = data
    Xd, yd = X.double().numpy(), y.double().numpy()
    w, b = np.array([0.3, -0.2, 0.1, 0.5]), 0.4
    grad_w, grad_b, _ = lr.numpy_gradients(Xd, yd, w, b)
    eps = 1e-6
    for j in range(4):
        step = np.zeros(4)
        step[j] = eps
        fd = (lr.numpy_gradients(Xd, yd, w + step, b)[2] - lr.numpy_gradients(Xd, yd, w - step, b)[2]) / (2 * eps)
        assert grad_w[j] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    fd_b = (lr.numpy_gradients(Xd, yd, w, b + eps)[2] - lr.numpy_gradients(Xd, yd, w, b - eps)[2]) / (2 * eps)
    assert grad_b == pytest.approx(fd_b, rel=1e-6, abs=1e-8)


def test_compare_optimizers_returns_five_decreasing_histories(data):
    X, y, _, _ = data
    histories = lr.compare_optimizers(X, y, epochs=200)
    assert list(histories) == list(lr.OPTIMIZER_NAMES)
    for name, losses in histories.items():
        assert len(losses) == 200 and all(math.isfinite(v) for v in losses), name
        assert losses[-1] < 0.1 * losses[0], name


def test_fit_module_validation_losses_are_tracked(data):
    X, y, _, _ = data
    X_train, X_val, y_train, y_val = lr.train_val_split(X, y, 0.25, torch.Generator().manual_seed(0))
    assert len(X_val) == 75 and len(X_train) == 225
    assert set(map(tuple, X_train.tolist())).isdisjoint(map(tuple, X_val.tolist()))
    fit = lr.fit_module(X_train, y_train, "adam", 0.05, 100, X_val=X_val, y_val=y_val, record_weights=True)
    assert len(fit.val_losses) == 100 and fit.val_losses[-1] < fit.val_losses[0]
    assert len(fit.weight_history) == 100 and len(fit.weight_history[0]) == 4
    assert fit.val_losses[-1] == pytest.approx(lr.mse(X_val, y_val, fit.weights, fit.bias), rel=0.05)


def test_custom_optimizer_matches_torch_sgd_exactly(data):
    X, y, _, _ = data
    differences = lr.custom_vs_builtin_sgd(X, y, lr=0.05, epochs=30)
    assert len(differences) == 30 and max(differences) == 0.0
    with pytest.raises(ValueError, match="lr=0"):
        lr.PlainSGD([torch.zeros(1, requires_grad=True)], lr=0)


def test_divergence_raises_floating_point_error(data):
    X, y, _, _ = data
    for fit in (lambda: lr.fit_numpy(X, y, 10.0, 200), lambda: lr.fit_manual(X, y, 10.0, 200),
                lambda: lr.fit_module(X, y, "sgd", 10.0, 200)):
        with pytest.raises(FloatingPointError, match=r"epoch \d+ with learning rate 10.0"):
            fit()


def test_unknown_optimizer_lists_the_valid_ones(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="sgd, momentum, adam, adagrad, rmsprop"):
        lr.fit_module(X, y, "lbfgs", 0.1, 1)


def test_same_seed_same_results(data):
    X, y, _, _ = data
    first = lr.fit_module(X, y, "adam", 0.05, 50, seed=3)
    second = lr.fit_module(X, y, "adam", 0.05, 50, seed=3)
    assert first.losses == second.losses and torch.equal(first.weights, second.weights)
    assert lr.fit_module(X, y, "adam", 0.05, 50, seed=4).losses[0] != first.losses[0]


def test_loss_landscape_matches_direct_mse():
    X1, y1, _, _ = lr.make_regression_data(40, 1, 0.2, seed=0)
    W, B, loss = lr.loss_landscape(X1, y1, (-1.0, 2.0), (-2.0, 1.0), steps=7)
    assert W.shape == B.shape == loss.shape == (7, 7)
    i, j = 3, 5
    expected = lr.mse(X1, y1, torch.tensor([W[i, j]]), float(B[i, j]))
    assert loss[i, j] == pytest.approx(expected, rel=1e-12)


def test_optimizer_paths_start_at_the_start_and_approach_the_minimum():
    X1, y1, _, _ = lr.make_regression_data(100, 1, 0.2, seed=0)
    w1, b1 = lr.closed_form(X1, y1)
    paths = lr.optimizer_paths(X1, y1, (2.0, 2.0), epochs=300)
    for name, path in paths.items():
        assert path.shape == (301, 2) and tuple(path[0]) == (2.0, 2.0), name
        assert np.hypot(path[-1, 0] - w1.item(), path[-1, 1] - b1) < 0.05, name


def test_timing_helpers_return_positive_numbers(data):
    X, y, _, _ = data
    rows = lr.time_implementations(X, y, 0.1, 5, [torch.device("cpu")], min_run_time=0.005)
    assert [r["implementation"] for r in rows] == ["NumPy", "PyTorch manual", "PyTorch nn.Module + SGD"]
    scaling = lr.scaling_sweep([10, 100], 3, [torch.device("cpu")], min_run_time=0.005)
    assert {(r["n"], r["backend"]) for r in scaling} == {(10, "numpy"), (10, "torch cpu"), (100, "numpy"),
                                                          (100, "torch cpu")}
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows + scaling)


@pytest.mark.parametrize(("n_rows", "world_size"), [(300, 2), (7, 3)])
def test_ddp_equals_single_process_sgd(n_rows, world_size):
    X, y, _, _ = lr.make_regression_data(n_rows, 4, noise=0.3, seed=1)
    ddp = lr.train_ddp(X, y, world_size=world_size, epochs=20, lr=0.05, seed=5, timeout_s=90)
    single = lr.fit_module(X, y, "sgd", 0.05, 20, "cpu", seed=5)
    torch.testing.assert_close(ddp.weights, single.weights, rtol=1e-5, atol=1e-6)
    assert ddp.bias == pytest.approx(single.bias, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(ddp.losses, single.losses, rtol=1e-5)


def test_ddp_timeout_kills_workers_instead_of_hanging():
    X, y, _, _ = lr.make_regression_data(20, 2, seed=0)
    with pytest.raises(TimeoutError, match="did not finish within"):
        lr.train_ddp(X, y, world_size=2, epochs=5, timeout_s=0.2)


def test_ddp_worker_failure_fails_the_run():
    X, y, _, _ = lr.make_regression_data(20, 2, seed=0)
    with pytest.raises(FloatingPointError, match="learning rate 1000"):
        lr.train_ddp(X, y, world_size=2, epochs=50, lr=1000.0, timeout_s=90)


def test_ddp_rejects_bad_world_size():
    X, y, _, _ = lr.make_regression_data(3, 2, seed=0)
    with pytest.raises(ValueError, match="world_size=4"):
        lr.train_ddp(X, y, world_size=4)


def test_torchrun_runs_the_same_rank_code(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "linear_regression_torch.py"), "--quick"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DDP (2 ranks)" in done.stdout
    diff = float(done.stdout.split("max |difference| of parameters:")[1].split()[0])
    assert diff < 1e-5
