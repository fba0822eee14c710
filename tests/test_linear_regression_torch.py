"""linear_regression_torch: every solver against lstsq, NumPy and each other; DDP against one process.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICES, readme_quotes, run_script, unprinted_quotes

import lesson_harness as lr_harness
import linear_regression_torch as lr


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


def test_closed_form_matches_numpy_lstsq_and_sklearn(data):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error

    X, y, _, _ = data
    w, b = lr.closed_form(X, y)
    assert w.dtype == torch.float64  # the optimum is kept in float64: the optimizers are compared with it
    augmented = np.hstack([X.double().numpy(), np.ones((len(X), 1))])
    expected = np.linalg.lstsq(augmented, y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), expected[:-1], rtol=1e-10, atol=1e-12)
    assert b == pytest.approx(expected[-1], rel=1e-10, abs=1e-12)
    sk = LinearRegression().fit(X.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(w.numpy(), sk.coef_, rtol=1e-10, atol=1e-12)
    assert b == pytest.approx(sk.intercept_, rel=1e-10, abs=1e-12)
    best = mean_squared_error(y.double().numpy(), sk.predict(X.double().numpy()))
    assert lr.mse(X, y, w, b) == pytest.approx(best, rel=1e-12)


def test_mse_is_float64_whatever_the_inputs(data):
    X, y, _, _ = data
    w = torch.tensor([0.3, -0.2, 0.1, 0.5])
    expected = np.mean((X.double().numpy() @ w.double().numpy() + 0.4 - y.double().numpy()) ** 2)
    assert lr.mse(X, y, w, 0.4) == pytest.approx(expected, rel=1e-14)
    torch.testing.assert_close(lr.predict(X, w, 0.4), X @ w + 0.4, rtol=0, atol=0)


def test_max_stable_lr_is_where_gradient_descent_starts_to_diverge():
    X, y, _, _ = lr.make_regression_data(lr.FULL.n_samples, lr.FULL.n_features, lr.FULL.noise, seed=0)
    A = np.hstack([X.double().numpy(), np.ones((len(X), 1))])
    expected = 2 / np.linalg.eigvalsh(2 * A.T @ A / len(A)).max()
    assert lr.max_stable_lr(X) == pytest.approx(expected, rel=1e-12)
    assert f"{expected:.2f}" == "0.91"  # the number the comments next to Config.lr and OPTIMIZER_LRS give
    with pytest.raises(FloatingPointError):
        lr.fit_numpy(X, y, 1.2 * expected, 1_000)
    below = lr.fit_numpy(X, y, 0.95 * expected, 300)
    assert below.losses[-1] == pytest.approx(lr.mse(X, y, *lr.closed_form(X, y)), rel=1e-4)
    assert lr.OPTIMIZER_LRS["sgd"] < expected and lr.FULL.lr < expected


def test_closed_form_recovers_truth_without_noise():
    X, y, w_true, b_true = lr.make_regression_data(100, 3, noise=0.0, seed=2)
    w, b = lr.closed_form(X.numpy(), y.numpy())  # NumPy inputs work too
    torch.testing.assert_close(w, w_true.double(), rtol=1e-5, atol=1e-5)
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
    torch.testing.assert_close(fit.weights.double(), w_exact, rtol=1e-3, atol=1e-3)


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
    fits = lr.compare_optimizers(X, y, epochs=200)
    assert list(fits) == list(lr.OPTIMIZER_NAMES)
    start = lr.make_model(4, seed=0)
    initial = lr.mse(X, y, start.linear.weight.detach().squeeze(0), start.linear.bias.item())
    for name, fit in fits.items():
        assert len(fit.losses) == 200 and all(math.isfinite(v) for v in fit.losses), name
        assert fit.losses[0] == pytest.approx(initial, rel=1e-6), name  # the same start for every optimizer
        assert fit.losses[-1] < 0.1 * fit.losses[0], name


def test_optimizer_summary_evaluates_the_final_weights_in_float64(data):
    X, y, _, _ = data
    w_exact, b_exact = lr.closed_form(X, y)
    best = lr.mse(X, y, w_exact, b_exact)
    fits = lr.compare_optimizers(X, y, epochs=60)
    rows = lr.optimizer_summary(fits, X, y, best, tolerance=1e-2)
    assert [r["optimizer"] for r in rows] == list(lr.OPTIMIZER_NAMES)
    Xd, yd = X.double().numpy(), y.double().numpy()
    for row, (name, fit) in zip(rows, fits.items()):
        final = np.mean((Xd @ fit.weights.double().numpy() + fit.bias - yd) ** 2)  # float64, after the last step
        assert row["final_mse"] == pytest.approx(final, rel=1e-13), name
        assert row["excess"] == pytest.approx(final - best, rel=1e-9, abs=1e-15), name
        assert row["excess"] >= 0, name  # nothing beats least squares once both are evaluated in float64
        assert row["lr"] == lr.OPTIMIZER_LRS[name] and row["initial_mse"] == fit.losses[0]
        below = [epoch for epoch, loss in enumerate(fit.losses) if loss <= best + 1e-2]
        assert row["epochs"] == (below[0] if below else "never"), name
    assert any(isinstance(r["epochs"], int) and r["epochs"] > 0 for r in rows)


def test_epochs_to_reach_is_the_first_epoch_at_or_below_the_target():
    assert lr.epochs_to_reach([5.0, 3.0, 1.0, 0.5, 1.0], 1.0) == 2
    assert lr.epochs_to_reach([5.0, 3.0], 1.0) == "never"


def test_momentum_lr_is_sgds_times_one_minus_beta_and_steady_steps_match():
    lrs = lr.OPTIMIZER_LRS
    assert lrs["momentum"] == pytest.approx(lrs["sgd"] * (1 - lr.MOMENTUM), rel=1e-12)
    steps = lr.constant_gradient_steps(300)
    # Under a steady gradient momentum's step grows to lr/(1 − β): with that lr it equals SGD's step.
    assert steps["momentum"][-1] == pytest.approx(steps["sgd"][-1], rel=1e-9)
    assert steps["momentum"][0] == pytest.approx(steps["sgd"][0] * (1 - lr.MOMENTUM), rel=1e-12)


@pytest.mark.parametrize("gradient", [1.0, -0.3])
def test_constant_gradient_steps_match_each_optimizers_closed_form(gradient):
    k = 12
    steps = lr.constant_gradient_steps(k, gradient)
    g, eps, alpha, beta = abs(gradient), 1e-8, lr.RMSPROP_ALPHA, lr.MOMENTUM
    t = np.arange(1, k + 1)
    lrs = lr.OPTIMIZER_LRS
    expected = {
        "sgd": lrs["sgd"] * g * np.ones(k),
        "momentum": lrs["momentum"] * g * (1 - beta**t) / (1 - beta),
        # Adam: m̂ = g and v̂ = g² after bias correction, so every step is lr·|m̂|/(sqrt(v̂) + eps).
        "adam": lrs["adam"] * g / (g + eps) * np.ones(k),
        "adagrad": lrs["adagrad"] * g / (np.sqrt(t * g**2) + 1e-10),
        # RMSprop: v_t = (1 − αᵗ)·g², no bias correction.
        "rmsprop": lrs["rmsprop"] * g / (np.sqrt((1 - alpha**t) * g**2) + eps),
    }
    for name in lr.OPTIMIZER_NAMES:
        np.testing.assert_allclose(steps[name], expected[name], rtol=1e-10, err_msg=name)
    # The prose: RMSprop's first step is about 10·lr, Adam's about lr.
    assert steps["rmsprop"][0] == pytest.approx(lrs["rmsprop"] / math.sqrt(1 - alpha), rel=1e-6)
    assert steps["rmsprop"][0] == pytest.approx(10 * lrs["rmsprop"], rel=1e-6)
    assert steps["adam"][0] == pytest.approx(lrs["adam"], rel=1e-6)
    with pytest.raises(ValueError, match="steps=0"):
        lr.constant_gradient_steps(0)


def test_fit_standardizer_matches_sklearn_standard_scaler(data):
    from sklearn.preprocessing import StandardScaler

    X, _, _, _ = data
    X_raw = X * torch.tensor([1.0, 10.0, 0.1, 3.0]) + torch.tensor([5.0, -2.0, 0.0, 1.0])
    mean, std = lr.fit_standardizer(X_raw)
    scaler = StandardScaler().fit(X_raw.double().numpy())
    np.testing.assert_allclose(mean.numpy(), scaler.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), scaler.scale_, rtol=1e-5)
    np.testing.assert_allclose(lr.standardize(X_raw, mean, std).numpy(), scaler.transform(X_raw.double().numpy()),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        lr.fit_standardizer(X_raw[:1])


def test_standardized_truth_gives_the_same_predictions(data):
    X, _, w_true, b_true = data
    X_raw = X * 3.0 + torch.tensor([1.0, -2.0, 0.5, 4.0])
    mean, std = lr.fit_standardizer(X_raw)
    w_std, b_std = lr.standardized_truth(w_true, b_true.item(), mean, std)
    torch.testing.assert_close(lr.standardize(X_raw, mean, std) @ w_std + b_std, X_raw @ w_true + b_true,
                               rtol=1e-5, atol=1e-4)


def test_validation_experiment_standardises_with_training_statistics_only():
    from sklearn.preprocessing import StandardScaler

    X, y, w_true, b_true = lr.make_regression_data(120, 3, 0.5, seed=4)
    X = X * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([3.0, 0.0, -1.0])  # unstandardised features
    result = lr.validation_experiment(X, y, w_true, b_true, 0.5, 0.1, 200, seed=0,
                                      generator=torch.Generator().manual_seed(9))
    X_train, X_val, _, y_val = lr.train_val_split(X, y, lr.VAL_FRACTION, torch.Generator().manual_seed(9))
    scaler = StandardScaler().fit(X_train.double().numpy())  # training rows only
    fit = result["fit"]
    expected = scaler.transform(X_val.double().numpy()) @ fit.weights.double().numpy() + fit.bias
    np.testing.assert_allclose(result["y_pred"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(result["y_val"], y_val) and (result["n_train"], result["n_val"]) == (96, 24)
    assert fit.val_losses[-1] == pytest.approx(lr.mse(scaler.transform(X_val.double().numpy()), y_val,
                                                      fit.weights, fit.bias), rel=0.05)


def test_validation_noise_is_the_noise_actually_drawn():
    n, noise = 300, 0.5
    X, y, w_true, b_true = lr.make_regression_data(n, 3, noise, seed=6)
    _, y_clean, _, _ = lr.make_regression_data(n, 3, 0.0, seed=6)  # the same draws without the noise term
    rows = torch.arange(0, n, 3)
    stats = lr.validation_noise(X[rows], y[rows], w_true, b_true.item(), noise)
    drawn = (y - y_clean).double()[rows]
    assert stats["mean_square"] == pytest.approx((drawn**2).mean().item(), rel=1e-5)
    assert stats["expected"] == noise**2
    # The standard error of a mean of n squared N(0, σ²) draws, against a simulation of 4000 validation sets.
    gen = torch.Generator().manual_seed(0)
    means = ((noise * torch.randn(4000, len(rows), generator=gen, dtype=torch.float64)) ** 2).mean(1)
    assert stats["standard_error"] == pytest.approx(means.std().item(), rel=0.05)
    assert stats["standard_error"] == pytest.approx(noise**2 * math.sqrt(2 / len(rows)), rel=1e-12)


def test_fit_module_validation_losses_are_tracked(data):
    X, y, _, _ = data
    X_train, X_val, y_train, y_val = lr.train_val_split(X, y, 0.25, torch.Generator().manual_seed(0))
    assert len(X_val) == 75 and len(X_train) == 225
    assert set(map(tuple, X_train.tolist())).isdisjoint(map(tuple, X_val.tolist()))
    fit = lr.fit_module(X_train, y_train, "adam", 0.05, 100, X_val=X_val, y_val=y_val, record_weights=True)
    start = lr.make_model(4, seed=0)  # fit_module's default seed: the weights before the first step
    w0, b0 = start.linear.weight.detach().squeeze(0), start.linear.bias.item()
    assert fit.weight_history[0] == w0.tolist()
    assert fit.val_losses[0] == pytest.approx(lr.mse(X_val, y_val, w0, b0), rel=1e-6)
    assert fit.losses[0] == pytest.approx(lr.mse(X_train, y_train, w0, b0), rel=1e-6)
    assert len(fit.val_losses) == 100 and fit.val_losses[-1] < fit.val_losses[0]
    assert len(fit.weight_history) == 100 and len(fit.weight_history[0]) == 4
    assert fit.val_losses[-1] == pytest.approx(lr.mse(X_val, y_val, fit.weights, fit.bias), rel=0.05)


def test_train_val_split_shuffles_with_the_generator(data):
    X, y, _, _ = data
    first = lr.train_val_split(X, y, 0.2, torch.Generator().manual_seed(1))
    again = lr.train_val_split(X, y, 0.2, torch.Generator().manual_seed(1))
    other = lr.train_val_split(X, y, 0.2, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])
    X_train, X_val, y_train, y_val = first
    assert not torch.equal(X_val, X[:60]) and not torch.equal(X_val, X[-60:])  # not the first or last rows
    rows = torch.cat([X_train, X_val]).tolist()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, X.tolist()))  # every row exactly once
    pairs = {tuple(row): target for row, target in zip(X.tolist(), y.tolist())}
    assert all(pairs[tuple(row)] == target for row, target in zip(X_val.tolist(), y_val.tolist()))


def _fake_benchmark_by_call(medians, noisy=()):
    """A stand-in for `benchmark`: the i-th call runs `fn` once and returns medians[i] with a 2 % IQR, marked noisy
    where i is in `noisy`; it records the threads and device each call asked for."""
    calls = []

    def fake(fn, device="cpu", min_run_time=0.2, threads=lr_harness.BENCHMARK_THREADS):
        fn()
        i = len(calls)
        calls.append({"device": str(device), "threads": threads})
        return lr_harness.Timing(medians[i], 0.02 * medians[i], threads, i in noisy)

    return fake, calls


def test_scaling_ratios_are_numpy_median_over_this_median_from_the_same_size(monkeypatch, capsys):
    # Per size: NumPy, then torch. Medians chosen so every ratio differs, and size 100's torch timing is noisy.
    fake, calls = _fake_benchmark_by_call([1e-3, 4e-3, 2e-3, 1e-3], noisy={3})
    monkeypatch.setattr(lr, "benchmark", fake)
    rows = lr.scaling_sweep([10, 100], 3, [torch.device("cpu")], min_run_time=0.005)
    assert [(r["n"], r["backend"]) for r in rows] == [(10, "numpy"), (10, "torch cpu"), (100, "numpy"),
                                                       (100, "torch cpu")]
    assert [r["vs_numpy"] for r in rows] == [1.0, 1e-3 / 4e-3, 1.0, 2e-3 / 1e-3]
    assert [r["vs_numpy_noisy"] for r in rows] == [False, False, False, True]
    assert all(call["threads"] == 1 for call in calls)  # BENCHMARK_THREADS: this table is not about threads
    lr.print_scaling(rows)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("samples"))
    assert header.split() == ["samples", "backend", "per", "epoch", "median", "per", "epoch", "IQR", "NumPy", "/",
                              "this"]
    torch_lines = [line.split() for line in lines if "torch cpu" in line]
    assert torch_lines[0][-1] == "0.25×" and torch_lines[0][-3:-1] == ["2", "%"]  # NumPy's median over torch's
    assert torch_lines[1][3:] == ["1", "ms", "2", "%", lr.NOISY_MARK, "2.00×", lr.NOISY_MARK]  # noisy: both marked
    assert lines[-1] == lr.timing_note(1)


def test_implementations_table_shows_per_epoch_median_iqr_ratio_and_thread_note(data, monkeypatch, capsys):
    X, y, _, _ = data
    fake, calls = _fake_benchmark_by_call([2e-3, 8e-3, 1e-2], noisy={0})
    monkeypatch.setattr(lr, "benchmark", fake)
    rows = lr.time_implementations(X, y, 0.1, 40, [torch.device("cpu")], min_run_time=0.005, timed_epochs=10)
    assert [r["timing"].median for r in rows] == [2e-3, 8e-3, 1e-2]
    assert [r["per_epoch"].median for r in rows] == pytest.approx([2e-4, 8e-4, 1e-3], rel=1e-12)  # median / 10
    assert [r["per_epoch"].iqr for r in rows] == pytest.approx([4e-6, 1.6e-5, 2e-5], rel=1e-12)  # 2 % of each
    assert [r["vs_numpy"] for r in rows] == [1.0, 2e-3 / 8e-3, 2e-3 / 1e-2]  # medians of this run
    assert [r["vs_numpy_noisy"] for r in rows] == [True, True, True]  # NumPy's timing was noisy: every ratio is
    assert all(call["threads"] == 1 for call in calls)
    lr.print_implementations(rows, len(X), 40, 0.1, 10)
    lines = capsys.readouterr().out.splitlines()
    assert "per epoch: a fit of 10 epochs timed whole, / 10" in lines[1]
    assert lines[2].split()[2:10] == ["per", "epoch", "median", "per", "epoch", "IQR", "NumPy", "/"]
    numpy_line, manual_line = lines[4].split(), lines[5].split()
    assert numpy_line[2:7] == ["200", "µs", "2", "%", lr.NOISY_MARK]  # the median per epoch, the IQR, marked
    assert numpy_line[7:9] == ["1.00×", lr.NOISY_MARK]
    assert manual_line[3:9] == ["800", "µs", "2", "%", "0.25×", lr.NOISY_MARK]
    assert lines[-1] == lr.timing_note(1)


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
    for loss in (math.inf, -math.inf, math.nan):  # an overflow to inf is divergence as much as a NaN
        with pytest.raises(FloatingPointError, match=f"loss became {loss} at epoch 7"):
            lr._check_finite(loss, 7, 0.5)
    lr._check_finite(1e300, 7, 0.5)


def _fit_manual_item_per_epoch(X, y, lr_, epochs, device="cpu"):
    """The previous fit_manual: `.item()` and the divergence check after every epoch (a sync per step)."""
    X, y = X.to(device), y.to(device)
    w = torch.zeros(X.shape[1], device=device, requires_grad=True)
    b = torch.zeros((), device=device, requires_grad=True)
    losses = []
    for epoch in range(epochs):
        loss = ((X @ w + b - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        lr._check_finite(losses[-1], epoch, lr_)
        with torch.no_grad():
            w -= lr_ * w.grad
            b -= lr_ * b.grad
        w.grad = None
        b.grad = None
    return lr.FitResult(w.detach().cpu(), b.item(), losses)


def _fit_module_item_per_epoch(X, y, optimizer, lr_, epochs, device="cpu", seed=0, X_val=None, y_val=None):
    """The previous fit_module: every logged number read with `.item()` / `.tolist()` in the loop."""
    X, y = X.to(device), y.to(device)
    model = lr.make_model(X.shape[1], seed).to(device)
    opt = lr.make_optimizer(optimizer, model.parameters(), lr_)
    result = lr.FitResult(torch.empty(0), 0.0, [])
    for epoch in range(epochs):
        result.weight_history.append(model.linear.weight.detach().squeeze(0).tolist())
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        result.losses.append(loss.item())
        lr._check_finite(result.losses[-1], epoch, lr_)
        if X_val is not None:
            with torch.no_grad():
                result.val_losses.append(torch.nn.functional.mse_loss(model(X_val.to(device)), y_val.to(device)).item())
        opt.step()
    result.weights = model.linear.weight.detach().squeeze(0).cpu()
    result.bias = model.linear.bias.item()
    return result


def _first_bad_epoch(fit):
    """The epoch named by a check after every step, from the previous implementation's error."""
    with pytest.raises(FloatingPointError) as err:
        fit()
    return int(re.search(r"at epoch (\d+) ", str(err.value)).group(1)), str(err.value)


@pytest.mark.parametrize("device", DEVICES)
def test_losses_kept_on_the_device_equal_the_per_epoch_item_ones(data, device):
    X, y, _, _ = data
    manual, before = lr.fit_manual(X, y, 0.1, 250, device), _fit_manual_item_per_epoch(X, y, 0.1, 250, device)
    assert manual.losses == before.losses and len(manual.losses) == 250  # the same float32 numbers, exactly
    assert torch.equal(manual.weights, before.weights) and manual.bias == before.bias
    X_train, X_val, y_train, y_val = lr.train_val_split(X, y, 0.25, torch.Generator().manual_seed(0))
    for optimizer in ("sgd", "adam"):
        fit = lr.fit_module(X_train, y_train, optimizer, 0.05, 230, device, seed=2, X_val=X_val, y_val=y_val,
                            record_weights=True)
        old = _fit_module_item_per_epoch(X_train, y_train, optimizer, 0.05, 230, device, seed=2, X_val=X_val,
                                         y_val=y_val)
        assert fit.losses == old.losses and fit.val_losses == old.val_losses, optimizer
        assert fit.weight_history == old.weight_history and len(fit.weight_history) == 230, optimizer
        assert torch.equal(fit.weights, old.weights) and fit.bias == old.bias, optimizer
    assert lr.fit_module(X, y, "sgd", 0.1, 20, device).val_losses == []  # nothing logged without a validation set


@pytest.mark.parametrize("scale", [5.0 / 0.9, 1.15])  # lr = scale × the largest stable lr: fast and slow divergence
def test_divergence_names_the_first_bad_epoch_as_a_check_after_every_step_did(data, scale):
    X, y, _, _ = data
    lr_ = scale * lr.max_stable_lr(X)
    expected, message = _first_bad_epoch(lambda: _fit_manual_item_per_epoch(X, y, lr_, 2_000))
    if scale == 1.15:  # slow: the first non-finite loss lies past the first check, inside a later block
        assert expected > lr.FINITE_CHECK_EVERY and expected % lr.FINITE_CHECK_EVERY != 0
    # Runs that stop at the next check, at the end of a run inside the block, and long after it.
    next_check = expected - expected % lr.FINITE_CHECK_EVERY + lr.FINITE_CHECK_EVERY
    for epochs in (expected + 1, next_check, 2_000):
        with pytest.raises(FloatingPointError) as err:
            lr.fit_manual(X, y, lr_, epochs)
        assert str(err.value) == message, epochs  # the same epoch and the same non-finite value
    # A run that stops before the bad epoch does not raise, and its losses are the old ones.
    assert lr.fit_manual(X, y, lr_, expected).losses == _fit_manual_item_per_epoch(X, y, lr_, expected).losses
    module_epoch, module_message = _first_bad_epoch(lambda: _fit_module_item_per_epoch(X, y, "sgd", lr_, 2_000))
    with pytest.raises(FloatingPointError) as err:
        lr.fit_module(X, y, "sgd", lr_, 2_000)
    assert str(err.value) == module_message and f"at epoch {module_epoch} " in module_message


def test_check_finite_losses_checks_each_block_once_and_names_its_first_bad_epoch():
    every = lr.FINITE_CHECK_EVERY
    losses = [torch.tensor(1.0)] * (every + 7) + [torch.tensor(math.nan), torch.tensor(math.inf)]
    for done in range(1, len(losses)):  # up to the bad epoch: every check passes
        lr._check_finite_losses(losses[:done], epochs=10 * every, lr=0.5)
    for done in range(len(losses), 2 * every):  # inside the block, before its check: nothing is read yet
        lr._check_finite_losses(losses + [torch.tensor(1.0)] * (done - len(losses)), epochs=10 * every, lr=0.5)
    with pytest.raises(FloatingPointError, match=f"loss became nan at epoch {every + 7} with learning rate 0.5"):
        lr._check_finite_losses(losses + [torch.tensor(1.0)] * (2 * every - len(losses)), epochs=10 * every, lr=0.5)
    with pytest.raises(FloatingPointError, match=f"loss became nan at epoch {every + 7} "):  # the run's last epoch
        lr._check_finite_losses(losses, epochs=len(losses), lr=0.5)
    with pytest.raises(FloatingPointError, match="loss became -inf at epoch 3 "):
        lr._check_finite_losses([torch.tensor(0.0)] * 3 + [torch.tensor(-math.inf)], epochs=4, lr=0.5)


def _item_calls(fn) -> int:
    """How many times `fn` reads a tensor into a Python number (aten::item, each a host-device sync on a GPU)."""
    return sum(event.name == "aten::item" for event in lr_harness.profile_events(fn))


def test_training_loops_read_the_device_once_per_check_not_once_per_epoch(data):
    X, y, _, _ = data
    epochs = lr.FINITE_CHECK_EVERY + 10  # two checks: one full block and the end of the run
    assert _item_calls(lambda: _fit_manual_item_per_epoch(X, y, 0.1, 20)) >= 20  # the old loop: one per epoch
    assert _item_calls(lambda: lr.fit_manual(X, y, 0.1, epochs)) <= 1  # b.item() at the end; the checks use nonzero
    X_val, y_val = X[:50], y[:50]
    assert _item_calls(lambda: lr.fit_module(X, y, "sgd", 0.1, epochs, X_val=X_val, y_val=y_val,
                                             record_weights=True)) <= 1


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


def test_make_model_uses_nn_linear_default_bounds_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    model = lr.make_model(400, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    bound = 1 / math.sqrt(400)  # nn.Linear's default: kaiming_uniform(a=√5) on the weight, ±1/sqrt(fan_in) bias
    weight = model.linear.weight.detach()
    assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert abs(model.linear.bias.item()) <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform(−a, a) has std a/√3
    torch.manual_seed(2)
    reference = torch.nn.Linear(400, 1)  # the default init draws from the same distribution
    assert reference.weight.abs().max() <= bound
    assert torch.equal(lr.make_model(400, seed=2).linear.weight, model.linear.weight)
    assert not torch.equal(lr.make_model(400, seed=3).linear.weight, model.linear.weight)
    biases = [lr.make_model(3, seed=seed).linear.bias.item() for seed in (2, 2, 3)]
    assert biases[0] == biases[1] != biases[2] and all(abs(b) <= 1 / math.sqrt(3) for b in biases)
    torch.manual_seed(5)
    direct = torch.nn.Linear(3, 1)  # same bound as nn.Linear: a value from our init could have come from its
    assert abs(direct.bias.item()) <= 1 / math.sqrt(3)


def test_divergence_message_names_the_epoch_and_is_empty_when_stable(data):
    X, y, _, _ = data
    assert re.fullmatch(r"training diverged: loss became (inf|nan) at epoch \d+ with learning rate 5.0; "
                        r"lower the learning rate", lr.divergence_message(X, y, 5.0, 200))
    assert lr.divergence_message(X, y, 0.1, 20) == ""


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
    distances = lr.final_distances(paths, (w1.item(), b1))
    for name, path in paths.items():
        assert path.shape == (301, 2) and tuple(path[0]) == (2.0, 2.0), name
        assert distances[name] == pytest.approx(np.hypot(path[-1, 0] - w1.item(), path[-1, 1] - b1), rel=1e-12)
        assert distances[name] < 0.05, name
    # The second point is one real optimizer step: SGD's is exactly −lr·∂L/∂(w, b).
    x, t = X1.double().squeeze(1).numpy(), y1.double().numpy()
    residual = 2.0 * x + 2.0 - t
    grad = np.array([2 * np.mean(residual * x), 2 * np.mean(residual)])
    np.testing.assert_allclose(paths["sgd"][1], np.array([2.0, 2.0]) - lr.OPTIMIZER_LRS["sgd"] * grad, rtol=1e-5)


def test_landscape_prose_what_the_figure_shows_and_where_every_path_ends():
    """The prose: in the drawn 150 steps SGD and momentum reach the bottom, the adaptive three do not (AdaGrad
    0.04, Adam 0.08, RMSprop 0.84 with seed 0); after 1000 steps all five are within 0.01."""
    X1, y1 = lr.landscape_problem(seed=0)
    w1, b1 = lr.closed_form(X1, y1)
    assert lr.FULL.landscape_epochs == 150
    paths = lr.optimizer_paths(X1, y1, lr.LANDSCAPE_START, 1000)  # the first 151 points are the drawn paths
    drawn = lr.final_distances({name: path[:151] for name, path in paths.items()}, (w1.item(), b1))
    assert drawn["sgd"] < lr.REACHED_DISTANCE and drawn["momentum"] < lr.REACHED_DISTANCE
    assert [round(drawn[name], 2) for name in ("adagrad", "adam", "rmsprop")] == [0.04, 0.08, 0.84]
    assert all(drawn[name] > lr.REACHED_DISTANCE for name in ("adagrad", "adam", "rmsprop"))
    assert max(lr.final_distances(paths, (w1.item(), b1)).values()) < 0.01


def test_landscape_experiment_frames_the_paths_and_measures_from_the_lstsq_optimum():
    result = lr.landscape_experiment(seed=1, epochs=20)
    X1, y1 = lr.landscape_problem(seed=1)
    assert X1.mean().item() == pytest.approx(lr.LANDSCAPE_SHIFT, abs=0.2)  # the shifted, uncentred feature
    expected = np.polyfit(X1.double().squeeze(1).numpy(), y1.double().numpy(), 1)  # NumPy's (slope, intercept)
    np.testing.assert_allclose(result["optimum"], expected, rtol=1e-9)
    W, B, loss = result["grid"]
    for path in result["paths"].values():
        assert path.shape == (21, 2) and tuple(path[0]) == lr.LANDSCAPE_START
        assert W.min() < path[:, 0].min() and path[:, 0].max() < W.max()
        assert B.min() < path[:, 1].min() and path[:, 1].max() < B.max()
    assert result["distances"] == lr.final_distances(result["paths"], result["optimum"])


def test_landscape_window_frames_every_point_with_the_margin():
    paths = {"a": np.array([[0.0, 1.0], [2.0, -1.0]]), "b": np.array([[-1.0, 0.5]])}
    assert lr.landscape_window(paths, 0.5) == ((-1.5, 2.5), (-1.5, 1.5))


def test_implementations_time_a_short_fit_and_report_the_full_length_one(data, monkeypatch):
    """The timed fits have `timed_epochs` epochs; the loss columns and curves come from a fit of all the epochs."""
    X, y, _, _ = data
    timed_lengths = []

    def fake(fn, device="cpu", min_run_time=0.2, threads=lr_harness.BENCHMARK_THREADS):
        timed_lengths.append(len(fn().losses))
        return lr_harness.Timing(0.2, 0.004, threads, False)

    monkeypatch.setattr(lr, "benchmark", fake)
    rows = lr.time_implementations(X, y, 0.1, 40, [torch.device("cpu")], min_run_time=0.005, timed_epochs=8)
    assert timed_lengths == [8, 8, 8]
    assert all(row["per_epoch"].median == 0.2 / 8 and len(row["losses"]) == 40 for row in rows)
    w_exact, _ = lr.closed_form(X, y)
    numpy_fit = lr.fit_numpy(X, y, 0.1, 40)
    assert rows[0]["final_mse"] == numpy_fit.losses[-1] and rows[0]["losses"] == numpy_fit.losses
    assert rows[0]["max_weight_error"] == pytest.approx((numpy_fit.weights.double() - w_exact).abs().max().item())
    assert rows[2]["losses"] == lr.fit_module(X, y, "sgd", 0.1, 40).losses


def test_timing_helpers_return_positive_numbers(data):
    X, y, _, _ = data
    rows = lr.time_implementations(X, y, 0.1, 5, [torch.device("cpu")], min_run_time=0.005, timed_epochs=2)
    assert [r["implementation"] for r in rows] == ["NumPy", "PyTorch manual", "PyTorch nn.Module + SGD"]
    scaling = lr.scaling_sweep([10, 100], 3, [torch.device("cpu")], min_run_time=0.005)
    assert {(r["n"], r["backend"]) for r in scaling} == {(10, "numpy"), (10, "torch cpu"), (100, "numpy"),
                                                          (100, "torch cpu")}
    for row in rows + scaling:
        assert math.isfinite(row["timing"].median) and row["timing"].median > 0
        assert row["timing"].iqr >= 0 and row["timing"].threads == 1
        assert row["vs_numpy"] > 0


def test_timing_figures_draw_medians_and_ring_the_noisy_ones():
    def timing(median, noisy=False):
        return lr_harness.Timing(median, 0.02 * median, 1, noisy)

    scaling = [{"n": 10, "backend": "numpy", "timing": timing(1e-3), "vs_numpy": 1.0, "vs_numpy_noisy": False},
               {"n": 10, "backend": "torch cpu", "timing": timing(4e-3, noisy=True), "vs_numpy": 0.25,
                "vs_numpy_noisy": True},
               {"n": 100, "backend": "numpy", "timing": timing(2e-3), "vs_numpy": 1.0, "vs_numpy_noisy": False},
               {"n": 100, "backend": "torch cpu", "timing": timing(1e-3), "vs_numpy": 2.0, "vs_numpy_noisy": False}]
    fig = lr.plot_scaling(scaling)
    ax_time, ax_ratio = fig.axes
    assert "(1 thread)" in fig._suptitle.get_text()  # Figure.get_suptitle() exists only from matplotlib 3.8
    assert ax_time.get_title() and ax_time.get_xlabel() and "median" in ax_time.get_ylabel()
    lines = {line.get_label(): line for line in ax_time.get_lines()}
    np.testing.assert_allclose(lines["torch cpu, autograd"].get_ydata(), [4.0, 1.0])  # ms
    np.testing.assert_allclose(lines[f"noisy ({lr.NOISY_MARK} in the table)"].get_ydata(), [4.0])
    ratio_lines = {line.get_label(): line for line in ax_ratio.get_lines()}
    np.testing.assert_allclose(ratio_lines["torch cpu"].get_ydata(), [0.25, 2.0])
    np.testing.assert_allclose(ratio_lines[f"noisy ({lr.NOISY_MARK} in the table)"].get_ydata(), [0.25])

    from matplotlib.figure import Figure

    ax = Figure().subplots()
    implementations = [{"implementation": "NumPy", "device": "cpu", "per_epoch": timing(2e-5), "losses": [0.0]},
                       {"implementation": "PyTorch manual", "device": "cpu", "per_epoch": timing(1e-4, noisy=True),
                        "losses": [0.0]}]
    lr._plot_times(ax, implementations)
    assert [patch.get_height() for patch in ax.patches] == pytest.approx([20.0, 100.0])  # µs per epoch
    assert [text.get_text() for text in ax.texts] == ["20 µs", f"100 µs {lr.NOISY_MARK}"]
    assert "per epoch" in ax.get_title() and "1 thread" in ax.get_title() and ax.get_ylabel()


def test_fit_summary_measures_against_the_optimum(data):
    X, y, _, _ = data
    w_exact, b_exact = lr.closed_form(X, y)
    best = lr.mse(X, y, w_exact, b_exact)
    fit = lr.fit_numpy(X, y, 0.1, 30)
    summary = lr.fit_summary(fit, w_exact, best)
    expected_error = np.abs(fit.weights.double().numpy() - w_exact.numpy()).max()
    assert summary == {"epochs": 30, "first_mse": fit.losses[0], "last_mse": fit.losses[-1], "closed_mse": best,
                       "max_weight_error": pytest.approx(expected_error, rel=1e-12)}
    assert summary["first_mse"] == pytest.approx(np.mean(y.double().numpy() ** 2), rel=1e-6)  # zero weights


@pytest.mark.slow
def test_ddp_gradient_accumulation_equals_full_batch_sgd_with_one_allreduce_per_step():
    """13 rows on 2 ranks: uneven shards of 7 and 6 rows, split into micro-batches of (3, 2, 2) and (2, 2, 2)."""
    X, y, _, _ = lr.make_regression_data(13, 3, noise=0.3, seed=2)
    ddp = lr.train_ddp(X, y, world_size=2, epochs=12, lr=0.05, seed=5, timeout_s=90, accumulation_steps=3)
    single = lr.fit_module(X, y, "sgd", 0.05, 12, "cpu", seed=5)
    torch.testing.assert_close(ddp.weights, single.weights, rtol=1e-5, atol=1e-6)  # float32 round-off
    assert ddp.bias == pytest.approx(single.bias, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(ddp.losses, single.losses, rtol=1e-5)
    # The comm hook ran once per optimizer step: 12, where an all-reduce per micro-batch would make 36.
    assert (ddp.accumulation_steps, ddp.gradient_allreduces) == (3, 12)
    assert multiprocessing.active_children() == []


@contextlib.contextmanager
def _one_rank_process_group():
    """A gloo process group of this process alone, for DDP in the test process; torch's thread count restored."""
    import torch.distributed as dist

    threads = torch.get_num_threads()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{lr._free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield
    finally:
        gc.collect()  # the DDP model is gone before the group is (see PITFALLS)
        dist.destroy_process_group()
        torch.set_num_threads(threads)


def test_no_sync_skips_the_allreduce_only_when_it_holds_the_forward_pass_too():
    """The prose: "DDP decides during forward whether the next backward all-reduces"."""
    from torch.nn.parallel import DistributedDataParallel

    with _one_rank_process_group():
        model = DistributedDataParallel(lr.make_model(2))
        counter = {"allreduces": 0}
        model.register_comm_hook(counter, lr.counting_allreduce_hook)
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        with model.no_sync():
            model(x).sum().backward()
        assert counter["allreduces"] == 0
        model(x).sum().backward()
        assert counter["allreduces"] == 1
        output = model(x).sum()  # forward outside no_sync() ...
        with model.no_sync():
            output.backward()  # ... and this backward all-reduces all the same
        assert counter["allreduces"] == 2
        del model


@pytest.mark.parametrize("accumulation_steps", [1, 4])
def test_one_rank_loop_accumulates_micro_batches_into_the_full_batch_step(accumulation_steps):
    """The rank loop itself, in this process with a world of one (fast): 11 rows in micro-batches of (3, 3, 3, 2)."""
    X, y, _, _ = lr.make_regression_data(11, 3, noise=0.3, seed=3)
    threads = torch.get_num_threads()
    try:
        fit = lr.ddp_train_rank(0, 1, X, y, 15, 0.05, 4, f"tcp://127.0.0.1:{lr._free_port()}", 60,
                                accumulation_steps)
    finally:
        torch.set_num_threads(threads)  # the rank loop sets one thread per process
    single = lr.fit_module(X, y, "sgd", 0.05, 15, "cpu", seed=4)
    torch.testing.assert_close(fit.weights, single.weights, rtol=1e-5, atol=1e-6)
    assert fit.bias == pytest.approx(single.bias, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(fit.losses, single.losses, rtol=1e-5)
    assert (fit.accumulation_steps, fit.gradient_allreduces) == (accumulation_steps, 15)


def test_only_rank_0_writes_the_result(tmp_path, monkeypatch):
    def fake_rank(rank, *args):
        return lr.DDPFitResult(torch.zeros(2), 0.5, [1.0], accumulation_steps=2, gradient_allreduces=1) \
            if rank == 0 else None

    monkeypatch.setattr(lr, "ddp_train_rank", fake_rank)
    X, y = np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.float32)
    for rank in (1, 0):
        path = tmp_path / f"written-by-{rank}.pt"
        lr._ddp_worker(rank, 2, X, y, 1, 0.1, 0, 0, str(path), 30, 2)
        assert path.exists() == (rank == 0)
    saved = lr.DDPFitResult(**torch.load(tmp_path / "written-by-0.pt", weights_only=True))
    assert (saved.bias, saved.losses, saved.accumulation_steps, saved.gradient_allreduces) == (0.5, [1.0], 2, 1)


def test_ddp_check_prints_the_allreduces_per_step(capsys):
    single = lr.FitResult(torch.tensor([1.0, 2.0]), 0.5, [3.0, 2.0])
    for k, passes in ((2, "each rank ran 2 backward passes per step, the first 1 under no_sync()"),
                      (1, "each rank ran 1 backward pass per step")):
        ddp = lr.DDPFitResult(torch.tensor([1.0, 2.0]), 0.5, [3.0, 2.0], accumulation_steps=k, gradient_allreduces=2)
        lr.print_ddp_check(2, ddp, single, 0.0)
        lines = capsys.readouterr().out.splitlines()
        assert lines[-1] == f"gradient all-reduces per optimizer step: 1  ({passes})"
        assert ("accumulating 2 micro-batches per step" in lines[1]) == (k == 2)
        assert lines[4].split()[-4:] == [str(k), "per", "rank", "2"] and lines[5].split()[-4:] == ["1", "(all", "rows)",
                                                                                                  "none"]


def test_ddp_prose_gives_the_whole_gpu_recipe_with_the_local_rank():
    source = (Path(lr.__file__)).read_text(encoding="utf-8")
    prose = source.split("# ## Data-parallel training with DistributedDataParallel", 1)[1].split("# %%\n", 1)[0]
    prose = " ".join(line.removeprefix("#").strip() for line in prose.splitlines())
    for needed in ('backend "nccl"', "torch.cuda.set_device(local_rank)", "model.to(local_rank)",
                   "DDP(model, device_ids=[local_rank])", "LOCAL_RANK", "no_sync()", "Only rank 0 writes"):
        assert needed in prose, needed
    assert "device_ids=[rank]" not in prose and "model.to(rank)" not in prose  # the global rank fails on node 2


@pytest.mark.slow
def test_ddp_timeout_kills_the_ranks_instead_of_hanging():
    """Half a second: the ranks are still importing torch (or, on a fast machine, far from a billion epochs)."""
    X, y, _, _ = lr.make_regression_data(20, 2, seed=0)
    with pytest.raises(TimeoutError, match=r"did not finish within timeout_s=0.5 s"):
        lr.train_ddp(X, y, world_size=2, epochs=10**9, timeout_s=0.5)
    assert multiprocessing.active_children() == []  # every rank was killed and reaped


@pytest.mark.slow
def test_ddp_rank_that_diverges_fails_the_run_with_its_error():
    X, y, _, _ = lr.make_regression_data(20, 2, seed=0)
    with pytest.raises(FloatingPointError, match=r"^training diverged: .* with learning rate 1000.0; lower"):
        lr.train_ddp(X, y, world_size=1, epochs=50, lr=1000.0, timeout_s=90)  # one rank: the same error path
    assert multiprocessing.active_children() == []


class _FakeRank:
    def __init__(self):
        self.killed = False

    def kill(self):
        self.killed = True

    def join(self, timeout=None):
        pass


class _FailingRanks:
    """What `start_processes(..., join=False)` returns, with join() raising as it does when rank 1 fails."""

    def __init__(self, error):
        self.processes = [_FakeRank(), _FakeRank()]
        self.error = error

    def join(self, timeout=None):
        raise self.error


@pytest.mark.parametrize(("error", "message"), [
    (torch.multiprocessing.ProcessRaisedException(
        "\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nValueError: the shard is empty\n', 1, 1234),
     "DDP rank 1 failed: ValueError: the shard is empty"),
    (torch.multiprocessing.ProcessExitedException("process 1 terminated with signal SIGKILL", 1, 1234, -9, "SIGKILL"),
     "DDP rank 1 failed: process 1 terminated with signal SIGKILL"),
])
def test_ddp_rank_failure_is_a_runtime_error_with_its_last_line_and_every_rank_is_killed(monkeypatch, error, message):
    """The error handling without starting processes: join() raises as torch's does when a rank fails."""
    calls = []
    ranks = _FailingRanks(error)

    def fake_start(fn, args, nprocs, join, start_method):
        calls.append(("start", nprocs, join, start_method))
        return ranks

    monkeypatch.setattr(lr, "share_notebook_with_workers", lambda name: calls.append(("share", name)))
    monkeypatch.setattr(lr.mp, "start_processes", fake_start)
    X, y, _, _ = lr.make_regression_data(20, 2, seed=0)
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        lr.train_ddp(X, y, world_size=2, epochs=5, timeout_s=30)
    # In a notebook the ranks must find this script by name: shared right before they start, with spawn.
    assert calls == [("share", "linear_regression_torch"), ("start", 2, False, "spawn")]
    assert all(process.killed for process in ranks.processes)


def test_ddp_rejects_bad_arguments_before_starting_anything(monkeypatch):
    def no_start(*args, **kwargs):
        raise AssertionError("no process may start for invalid arguments")

    monkeypatch.setattr(lr.mp, "start_processes", no_start)
    X, y, _, _ = lr.make_regression_data(3, 2, seed=0)
    for kwargs, name in [({"world_size": 4}, "world_size=4"), ({"world_size": 0}, "world_size=0"),
                         ({"epochs": 0}, "epochs=0"), ({"lr": 0.0}, "lr=0.0"), ({"lr": math.nan}, "lr=nan"),
                         ({"timeout_s": 0}, "timeout_s=0")]:
        with pytest.raises(ValueError, match=re.escape(name)):
            lr.train_ddp(X, y, **kwargs)
    with pytest.raises(ValueError, match="y must have shape"):
        lr.train_ddp(X, y[:2])
    # 3 rows on 2 ranks: the smallest shard has 1 row, so at most 1 micro-batch.
    for steps in (0, 2):
        with pytest.raises(ValueError, match=rf"accumulation_steps={steps} must be between 1 and .* \(1\)"):
            lr.train_ddp(X, y, world_size=2, accumulation_steps=steps)


def _single_process_ddp(X, y, world_size=2, epochs=100, lr_=0.05, seed=0, timeout_s=lr.DDP_TIMEOUT_S,
                        accumulation_steps=1):
    """Stands in for train_ddp where a test needs the printed output, not the processes (tested above)."""
    fit = lr.fit_module(X, y, "sgd", lr_, epochs, "cpu", seed)
    return lr.DDPFitResult(fit.weights, fit.bias, fit.losses, accumulation_steps=accumulation_steps,
                           gradient_allreduces=epochs)


def _printed_output(argv, monkeypatch, capsys, ddp_calls=None):
    """What the script prints, with timings replaced by constants (fake_timings) and no DDP processes or figures."""
    def counted_ddp(*args, **kwargs):
        if ddp_calls is not None:
            ddp_calls.append(kwargs)
        return _single_process_ddp(*args, **kwargs)

    monkeypatch.setattr(lr, "train_ddp", counted_ddp)
    monkeypatch.setattr(lr, "save_figure", lambda fig, name, plots_dir: None)
    monkeypatch.setattr(lr, "plot_comparison", lambda *args: None)
    monkeypatch.setattr(lr, "plot_scaling", lambda *args: None)
    assert run_script("linear_regression_torch", argv) == 0
    return capsys.readouterr().out


def test_two_seeds_print_different_results(tmp_path, monkeypatch, capsys, fake_timings):
    ddp_calls = []
    outputs = [_printed_output(["--quick", "--device", "cpu", "--seed", seed, "--plots-dir", str(tmp_path)],
                               monkeypatch, capsys, ddp_calls) for seed in ("1", "2")]
    # One DDP run per script run (one spawn of the ranks), with the accumulation demo inside it.
    assert ddp_calls == [{"accumulation_steps": lr.QUICK.ddp_accumulation_steps}] * 2
    assert "gradient all-reduces per optimizer step: 1  (each rank ran 2 backward passes" in outputs[0]
    numpy_row = [line for line in outputs[0].splitlines() if line.startswith("NumPy ")][0]
    # Per epoch: the 1 ms fake median of a 10-epoch fit over 10 epochs, its 2 % IQR, NumPy's own ratio.
    assert numpy_row.split()[2:7] == ["100", "µs", "2", "%", "1.00×"]
    assert sum(line == lr.timing_note(1) for line in outputs[0].splitlines()) == 2  # under both timing tables
    lines = [[line for line in out.splitlines() if "closed form lstsq" in line] for out in outputs]
    assert lines[0] and lines[0] != lines[1]
    assert outputs[0].replace("seed: 1", "") != outputs[1].replace("seed: 2", "")


_TIMING = re.compile(r"\d[\d.,]*\s?(ns|µs|ms|s)\b|\d[\d.]*×")


NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _masked(line: str) -> str:
    """A printed line with every timing-derived number replaced, and runs of spaces collapsed."""
    text = " ".join(_TIMING.sub("<time>", line).split())
    if not NUMPY_2 and text.startswith("NumPy cpu"):
        text = text.rsplit(" ", 1)[0]  # NumPy 1.x sums float32 in another order: other round-off in the last column
    return text


def test_readme_lesson_3_numbers_are_what_a_full_run_prints(tmp_path, monkeypatch, capsys, fake_timings):
    """The lines the README quotes are printed by a full run on the versions under test, and so are the
    numbers the lesson's prose relies on."""
    text = _printed_output(["--device", "cpu", "--plots-dir", str(tmp_path)], monkeypatch, capsys)
    quotes = readme_quotes("linear_regression_torch")
    assert len(quotes) >= 5 and not unprinted_quotes(quotes, text)
    printed = {_masked(line) for line in text.splitlines()}
    output = "\n".join(printed)
    for number in ("1.3e-06" if NUMPY_2 else "e-06", "1.0e-07", "1.256", "0.21700", "± 0.025", "0.21445",
                   "adam 0.077", "adagrad 0.036", "rmsprop 0.84", "0.914"):
        assert number in output, number
    excess = [float(m) for m in re.findall(r"^(?:sgd|momentum|adam|adagrad) .* (\S+) \d+$", output, re.MULTILINE)]
    assert len(excess) == 4 and max(excess) < 3e-12  # "four optimizers end within 3e-12 of it"
