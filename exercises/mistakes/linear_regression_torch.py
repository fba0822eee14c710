"""Plausible wrong answers to the exercises of lesson 3 (linear_regression_torch.py), each a small change to
exercises/solutions/linear_regression_torch.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

MSE_BODY = (
    "residual = X @ w + b - y  # (n,)\n"
    "    n = len(y)\n"
    "    return 2.0 / n * (X.mT @ residual), 2.0 / n * residual.sum()"
)
MANUAL_UPDATE = (
    "with torch.no_grad():  # the update is not part of the model\n"
    "            w -= lr * w.grad\n"
    "            b -= lr * b.grad\n"
    "        w.grad = None  # or the next backward adds to this one\n"
    "        b.grad = None"
)
MOMENTUM_DEFAULTS = 'super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})'

MISTAKES = [
    Mistake("mse_gradients", "missing_factor_two", "Forgets the 2 from differentiating the square.",
            change={"return 2.0 / n * (X.mT @ residual), 2.0 / n * residual.sum()":
                    "return 1.0 / n * (X.mT @ residual), 1.0 / n * residual.sum()"},
            shows="yours is 0.5× the expected value everywhere — half the gradient"),
    Mistake("mse_gradients", "sum_not_mean", "Differentiates the summed loss: no 1/n.",
            change={"return 2.0 / n * (X.mT @ residual), 2.0 / n * residual.sum()":
                    "return 2.0 * (X.mT @ residual), 2.0 * residual.sum()"},
            shows="yours is 20× the expected value everywhere — n = 20 times the gradient"),
    Mistake("mse_gradients", "residual_sign", "Residual y − prediction: every gradient has the wrong sign.",
            change={"residual = X @ w + b - y": "residual = y - X @ w - b"},
            shows="the sign is flipped everywhere — the residual taken as target −"),
    Mistake("mse_gradients", "uses_autograd", "Right numbers, but from autograd instead of the formula.",
            change={MSE_BODY: "w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)\n"
                              "    return torch.autograd.grad(((X @ w + b - y) ** 2).mean(), (w, b))"},
            shows="breaks a rule of this exercise: no autograd"),

    Mistake("least_squares", "no_intercept",
            "Solves X w = y without a column of ones: the fit goes through the origin, b = 0.",
            change={"augmented = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], dim=1)"
                    "  # (n, f + 1)\n    ": "",
                    "torch.linalg.lstsq(augmented, y.unsqueeze(1)).solution.squeeze(1)  # (f + 1,)":
                    "torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)  # (f,)",
                    "return solution[:-1], solution[-1]": "return solution, torch.zeros((), dtype=X.dtype)"},
            shows="the fit through the origin (no intercept)"),
    Mistake("least_squares", "intercept_is_mean_y",
            "Right w from centred data, but b = mean(y), forgetting − mean(X)·w.",
            change={"augmented = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], dim=1)"
                    "  # (n, f + 1)": "X_mean, y_mean = X.mean(0), y.mean()",
                    "torch.linalg.lstsq(augmented, y.unsqueeze(1)).solution.squeeze(1)  # (f + 1,)":
                    "torch.linalg.lstsq(X - X_mean, (y - y_mean).unsqueeze(1)).solution.squeeze(1)  # (f,)",
                    "return solution[:-1], solution[-1]": "return solution, y_mean"},
            shows="b = mean(y): the intercept of centred data needs − mean(X)·w as well"),

    Mistake("fit_linear_gd", "keeps_gradients", "Never clears .grad: each step uses the sum of all gradients so far.",
            change={"        w.grad = None  # or the next backward adds to this one\n        b.grad = None\n": ""},
            shows="the gradients were never cleared"),
    Mistake("fit_linear_gd", "one_step_too_many", "range(epochs + 1): one update more than asked.",
            change={"range(epochs)": "range(epochs + 1)"},
            shows="one update too many (1 instead of 0)"),
    Mistake("fit_linear_gd", "summed_loss",
            "Sums the squared errors instead of averaging: every step is n times too long.",
            change={"** 2).mean()": "** 2).sum()"},
            shows="the summed loss instead of the mean"),
    Mistake("fit_linear_gd", "uses_torch_optim", "Right numbers, but lets torch.optim.SGD take the steps.",
            change={"    for _ in range(epochs):": "    optimizer = torch.optim.SGD([w, b], lr=lr)\n"
                                                  "    for _ in range(epochs):",
                    MANUAL_UPDATE: "optimizer.step()\n        optimizer.zero_grad()"},
            shows="breaks a rule of this exercise: no torch.optim and no nn"),

    Mistake("MomentumSGD", "dampened",
            "v = m·v + (1 − m)·g, an exponential average, where torch.optim.SGD adds the full gradient.",
            change={'.add_(gradient)': '.add_(gradient, alpha=1 - group["momentum"])'},
            shows="the buffer is an average, v = m·v + (1 − m)·g"),
    Mistake("MomentumSGD", "decay_after_momentum",
            "Adds weight decay after the momentum buffer instead of to the gradient before it.",
            change={'gradient = p.grad.add(p, alpha=group["weight_decay"])  # L2 term joins the gradient first':
                    "gradient = p.grad",
                    'p.add_(state["velocity"], alpha=-group["lr"])':
                    'p.add_(state["velocity"] + group["weight_decay"] * p, alpha=-group["lr"])'},
            shows="weight decay added after the momentum buffer instead of to the"),
    Mistake("MomentumSGD", "ignores_group_lr", "Uses the default lr for every group instead of group['lr'].",
            change={'alpha=-group["lr"]': 'alpha=-self.defaults["lr"]'},
            shows="the default lr for every group"),
    Mistake("MomentumSGD", "subclasses_torch_sgd",
            "Right numbers, but built on torch.optim.SGD instead of torch.optim.Optimizer.",
            change={"class MomentumSGD(torch.optim.Optimizer):": "class MomentumSGD(torch.optim.SGD):",
                    MOMENTUM_DEFAULTS:
                    "super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)"},
            shows="breaks a rule of this exercise: your own step"),
    Mistake("MomentumSGD", "delegates_to_sgd", "Right numbers, but hands every step to a torch.optim.SGD inside.",
            change={MOMENTUM_DEFAULTS:
                    MOMENTUM_DEFAULTS + "\n        self.inner = torch.optim.SGD(self.param_groups, lr=lr, "
                    "momentum=momentum, weight_decay=weight_decay)",
                    "    def step(self, closure=None):\n":
                    "    def step(self, closure=None):\n        return self.inner.step(closure)\n\n"
                    "    def unused_own_step(self, closure=None):\n"},
            shows="breaks a rule of this exercise: your own step"),

    # The rules, reached another way: a direct call, an import under another name, a wrapper.
    Mistake("mse_gradients", "grad_alias", "Right numbers, from torch.autograd.grad imported under another name.",
            setup="from torch.autograd import grad as derivative",
            change={MSE_BODY: "w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)\n"
                              "    return derivative(((X @ w + b - y) ** 2).mean(), (w, b))"},
            shows="breaks a rule of this exercise: no autograd"),
    Mistake("fit_linear_gd", "sgd_alias", "Right numbers, with torch.optim.SGD imported under another name.",
            setup="from torch.optim import SGD as Stepper",
            change={"    for _ in range(epochs):": "    optimizer = Stepper([w, b], lr=lr)\n"
                                                  "    for _ in range(epochs):",
                    MANUAL_UPDATE: "optimizer.step()\n        optimizer.zero_grad()"},
            shows="breaks a rule of this exercise: no torch.optim and no nn"),
    Mistake("MomentumSGD", "sgd_alias_as_base", "Subclasses torch.optim.SGD, imported under another name.",
            setup="from torch.optim import SGD as Base",
            change={"class MomentumSGD(torch.optim.Optimizer):": "class MomentumSGD(Base):",
                    MOMENTUM_DEFAULTS: "super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)"},
            shows="breaks a rule of this exercise: your own step"),
]
