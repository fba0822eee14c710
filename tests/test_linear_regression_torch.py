"""linear_regression_torch: every solver against lstsq, NumPy and each other; DDP against one process.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math
import multiprocessing
import re

import numpy as np
import pytest
import torch
from conftest import readme_quotes, run_script, unprinted_quotes

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


def test_printed_rates_divide_the_right_times(capsys):
    rows = [{"n": 10, "backend": "numpy", "seconds": 1e-3}, {"n": 10, "backend": "torch cpu", "seconds": 4e-3}]
    lr.print_scaling(rows)
    torch_line = [line for line in capsys.readouterr().out.splitlines() if "torch cpu" in line][0]
    assert torch_line.split()[-1] == "0.25×"  # NumPy's time over this backend's: above 1 means faster than NumPy
    implementation = {"implementation": "NumPy", "device": "cpu", "seconds": 0.2, "per_epoch": 0.2 / 40,
                      "final_mse": 0.25, "max_weight_error": 1e-6}
    lr.print_implementations([implementation], 100, 40, 0.05)
    numpy_line = capsys.readouterr().out.splitlines()[-1]
    assert numpy_line.split()[2:6] == ["200", "ms", "5", "ms"]


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


def test_per_epoch_time_is_the_median_over_epochs(data, monkeypatch):
    X, y, _, _ = data
    monkeypatch.setattr(lr, "time_median", lambda fn, device="cpu", min_run_time=0.2: (fn(), 0.2)[1])
    rows = lr.time_implementations(X, y, 0.1, 40, [torch.device("cpu")], min_run_time=0.005)
    for row in rows:
        assert row["seconds"] == 0.2 and row["per_epoch"] == 0.2 / 40
    w_exact, _ = lr.closed_form(X, y)
    numpy_fit = lr.fit_numpy(X, y, 0.1, 40)
    assert rows[0]["final_mse"] == numpy_fit.losses[-1]
    assert rows[0]["max_weight_error"] == pytest.approx((numpy_fit.weights.double() - w_exact).abs().max().item())


def test_timing_helpers_return_positive_numbers(data):
    X, y, _, _ = data
    rows = lr.time_implementations(X, y, 0.1, 5, [torch.device("cpu")], min_run_time=0.005)
    assert [r["implementation"] for r in rows] == ["NumPy", "PyTorch manual", "PyTorch nn.Module + SGD"]
    scaling = lr.scaling_sweep([10, 100], 3, [torch.device("cpu")], min_run_time=0.005)
    assert {(r["n"], r["backend"]) for r in scaling} == {(10, "numpy"), (10, "torch cpu"), (100, "numpy"),
                                                          (100, "torch cpu")}
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows + scaling)


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
@pytest.mark.parametrize(("n_rows", "world_size"), [(300, 2), (7, 3)])
def test_ddp_equals_single_process_sgd(n_rows, world_size):
    """7 rows on 3 ranks: uneven shards (3, 2, 2) still give the exact full-batch step."""
    X, y, _, _ = lr.make_regression_data(n_rows, 4, noise=0.3, seed=1)
    ddp = lr.train_ddp(X, y, world_size=world_size, epochs=20, lr=0.05, seed=5, timeout_s=90)
    single = lr.fit_module(X, y, "sgd", 0.05, 20, "cpu", seed=5)
    torch.testing.assert_close(ddp.weights, single.weights, rtol=1e-5, atol=1e-6)
    assert ddp.bias == pytest.approx(single.bias, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(ddp.losses, single.losses, rtol=1e-5)
    assert lr.max_parameter_difference(ddp, single) < 1e-5
    assert multiprocessing.active_children() == []


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
        lr.train_ddp(X, y, world_size=2, epochs=50, lr=1000.0, timeout_s=90)
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


def _single_process_ddp(X, y, world_size=2, epochs=100, lr_=0.05, seed=0, timeout_s=lr.DDP_TIMEOUT_S):
    """Stands in for train_ddp where a test needs the printed output, not the processes (tested above)."""
    return lr.fit_module(X, y, "sgd", lr_, epochs, "cpu", seed)


def _printed_output(argv, monkeypatch, capsys):
    """What the script prints, with timings replaced by constants (fake_timings) and no DDP processes or figures."""
    monkeypatch.setattr(lr, "train_ddp", _single_process_ddp)
    monkeypatch.setattr(lr, "save_figure", lambda fig, name, plots_dir: None)
    monkeypatch.setattr(lr, "plot_comparison", lambda *args: None)
    monkeypatch.setattr(lr, "plot_scaling", lambda *args: None)
    assert run_script("linear_regression_torch", argv) == 0
    return capsys.readouterr().out


def test_two_seeds_print_different_results(tmp_path, monkeypatch, capsys, fake_timings):
    outputs = [_printed_output(["--quick", "--device", "cpu", "--seed", seed, "--plots-dir", str(tmp_path)],
                               monkeypatch, capsys) for seed in ("1", "2")]
    numpy_row = [line for line in outputs[0].splitlines() if line.startswith("NumPy ")][0]
    assert numpy_row.split()[2:6] == ["1", "ms", "10", "µs"]  # per epoch: the 1 ms fake median over 100 epochs
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
