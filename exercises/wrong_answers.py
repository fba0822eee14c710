"""Plausible wrong answers, for maintainers: each must be rejected by its exercise's check.

`EXERCISES=wrong python -m pytest exercises` runs every check once per wrong answer below (one
test id per mistake); tests/test_exercises.py asserts that every one of those tests fails with a
message that has a hint. A wrong answer is named <exercise>__<mistake> and its docstring says what
a learner got wrong. Not collected by pytest: the name does not start with test_.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class WrongAnswer:
    exercise: str  # the exercise's name, e.g. "vandermonde"
    mistake_id: str  # the test id, e.g. "one_column_short"
    mistake: str  # what the learner got wrong
    implementation: object


WRONG_ANSWERS: dict[str, list[WrongAnswer]] = {}  # exercise name -> its wrong answers, in file order


def wrong_answer(implementation):
    """Register `implementation`, named <exercise>__<mistake>, as a wrong answer to <exercise>."""
    exercise, mistake_id = implementation.__name__.split("__", 1)
    WRONG_ANSWERS.setdefault(exercise, []).append(
        WrongAnswer(exercise, mistake_id, inspect.getdoc(implementation) or "", implementation))
    return implementation


# Lesson 1 ---------------------------------------------------------------------------------------


@wrong_answer
def vandermonde__one_column_short(x, degree):
    """Powers 0 … degree − 1: arange(degree) instead of arange(degree + 1)."""
    return x.unsqueeze(1) ** torch.arange(degree, device=x.device)


@wrong_answer
def vandermonde__decreasing_powers(x, degree):
    """NumPy's default order: highest power first."""
    return x.unsqueeze(1) ** torch.arange(degree, -1, -1, device=x.device)


@wrong_answer
def sliding_windows__last_window_missing(x, size, step):
    """n_windows = (n − size) // step, without the + 1."""
    if size < 1 or step < 1 or size > len(x):
        raise ValueError(f"size={size}, step={step} out of range")
    n_windows = (len(x) - size) // step
    return x.as_strided((n_windows, size), (step * x.stride(0), x.stride(0)), x.storage_offset())


@wrong_answer
def sliding_windows__stacked_copy(x, size, step):
    """Right numbers, but torch.stack copies: not a view of x."""
    if size < 1 or step < 1 or size > len(x):
        raise ValueError(f"size={size}, step={step} out of range")
    return torch.stack([x[i:i + size] for i in range(0, len(x) - size + 1, step)])


@wrong_answer
def sliding_windows__no_validation(x, size, step):
    """Does not check its arguments (unfold raises RuntimeError, not ValueError)."""
    return x.unfold(0, size, step)


@wrong_answer
def broadcast_shape__aligned_left(shape_a, shape_b):
    """Pads the shorter shape on the right instead of the left."""
    ndim = max(len(shape_a), len(shape_b))
    a = tuple(shape_a) + (1,) * (ndim - len(shape_a))
    b = tuple(shape_b) + (1,) * (ndim - len(shape_b))
    result = []
    for sa, sb in zip(a, b):
        if sa != sb and 1 not in (sa, sb):
            raise ValueError(f"{shape_a} and {shape_b} do not broadcast")
        result.append(sb if sa == 1 else sa)
    return tuple(result)


@wrong_answer
def broadcast_shape__max_of_sizes(shape_a, shape_b):
    """Takes the larger size per position and never raises."""
    ndim = max(len(shape_a), len(shape_b))
    a = (1,) * (ndim - len(shape_a)) + tuple(shape_a)
    b = (1,) * (ndim - len(shape_b)) + tuple(shape_b)
    return tuple(max(sa, sb) for sa, sb in zip(a, b))


@wrong_answer
def stable_softmax__no_shift(x, dim):
    """Forgets to subtract the max: exp overflows for large inputs."""
    exp = x.exp()
    return exp / exp.sum(dim=dim, keepdim=True)


@wrong_answer
def stable_softmax__forgotten_keepdim(x, dim):
    """amax/sum without keepdim=True: the reduced shape no longer broadcasts against x."""
    shifted = x - x.amax(dim=dim)
    exp = shifted.exp()
    return exp / exp.sum(dim=dim)


@wrong_answer
def stable_softmax__normalised_over_all(x, dim):
    """Divides by the sum over every element instead of along dim."""
    exp = (x - x.amax(dim=dim, keepdim=True)).exp()
    return exp / exp.sum()


@wrong_answer
def stable_softmax__calls_torch_softmax(x, dim):
    """Right numbers, but calls torch.softmax instead of writing it out."""
    return torch.softmax(x, dim=dim)


@wrong_answer
def cholesky_solve__same_factor_twice(A, B):
    """Solves with L in both steps: computes L⁻¹L⁻¹B instead of L⁻ᵀL⁻¹B."""
    L = torch.linalg.cholesky(A)
    Y = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L, Y, upper=False)


@wrong_answer
def cholesky_solve__one_solve_only(A, B):
    """Stops after the forward substitution: returns Y = L⁻¹B."""
    return torch.linalg.solve_triangular(torch.linalg.cholesky(A), B, upper=False)


@wrong_answer
def cholesky_solve__calls_solve(A, B):
    """Right numbers, but uses torch.linalg.solve instead of the Cholesky factor."""
    return torch.linalg.solve(A, B)


# Lesson 2 ---------------------------------------------------------------------------------------


@wrong_answer
def vector_jacobian_product__ignores_v(f, x, v):
    """Sums the output before backward: computes 1ᵀJ, whatever v is."""
    x = x.detach().requires_grad_(True)
    f(x).sum().backward()
    return x.grad


@wrong_answer
def vector_jacobian_product__changes_callers_x(f, x, v):
    """Right numbers, but switches on requires_grad of the caller's tensor."""
    x.requires_grad_(True)
    (vjp,) = torch.autograd.grad(f(x), x, grad_outputs=v)
    return vjp


@wrong_answer
def accumulated_gradient__equal_chunk_weights(model, loss_fn, X, y, n_chunks):
    """Divides every chunk's loss by n_chunks, though tensor_split makes chunks of different sizes."""
    model.zero_grad()
    for X_chunk, y_chunk in zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, n_chunks)):
        (loss_fn(model(X_chunk), y_chunk) / n_chunks).backward()


@wrong_answer
def accumulated_gradient__no_scaling(model, loss_fn, X, y, n_chunks):
    """Adds the chunk-mean gradients unscaled: about n_chunks times too large."""
    model.zero_grad()
    for X_chunk, y_chunk in zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, n_chunks)):
        loss_fn(model(X_chunk), y_chunk).backward()


@wrong_answer
def accumulated_gradient__keeps_old_gradients(model, loss_fn, X, y, n_chunks):
    """Forgets zero_grad: the stale gradients are added to the new ones."""
    for X_chunk, y_chunk in zip(torch.tensor_split(X, n_chunks), torch.tensor_split(y, n_chunks)):
        (loss_fn(model(X_chunk), y_chunk) * (len(X_chunk) / len(X))).backward()


@wrong_answer
def accumulated_gradient__one_full_batch(model, loss_fn, X, y, n_chunks):
    """Right gradient, but one backward on the full batch: no micro-batches at all."""
    model.zero_grad()
    loss_fn(model(X), y).backward()


def _gradient_and_hessian(f, x):
    x = x.detach()
    return torch.autograd.functional.jacobian(f, x), torch.autograd.functional.hessian(f, x)


@wrong_answer
def newton_step__plus_sign(f, x):
    """Steps uphill: x + H⁻¹g."""
    gradient, hessian = _gradient_and_hessian(f, x)
    return x.detach() + torch.linalg.solve(hessian, gradient)


@wrong_answer
def newton_step__gradient_step(f, x):
    """Forgets the Hessian: a plain gradient step x − g."""
    gradient, _ = _gradient_and_hessian(f, x)
    return x.detach() - gradient


@wrong_answer
def newton_step__multiplies_by_hessian(f, x):
    """Multiplies the gradient by H instead of solving with it: x − H g."""
    gradient, hessian = _gradient_and_hessian(f, x)
    return x.detach() - hessian @ gradient


class Softplus__forgets_grad_output(torch.autograd.Function):
    """Backward returns sigmoid(x), dropping the chain-rule factor grad_output."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x)


class Softplus__naive_forward(torch.autograd.Function):
    """Forward log1p(exp(x)): exp overflows to inf for large x in float32."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log1p(torch.exp(x))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(x)


class Softplus__naive_backward(torch.autograd.Function):
    """Backward exp(x) / (1 + exp(x)): inf / inf = NaN for large x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x) / (1 + torch.exp(x))


class Softplus__autograd_inside(torch.autograd.Function):
    """Returns F.softplus from a forward that autograd never sees, with a backward of the wrong sign."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.softplus(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(-x)


for _softplus in (Softplus__forgets_grad_output, Softplus__naive_forward, Softplus__naive_backward,
                  Softplus__autograd_inside):
    wrong_answer(_softplus)


@wrong_answer
def jacobian_vector_product__computes_vjp(f, x, v):
    """One reverse pass seeded with v: that is vᵀJ, not J v."""
    x = x.detach().requires_grad_(True)
    (vjp,) = torch.autograd.grad(f(x), x, grad_outputs=v)
    return vjp


@wrong_answer
def jacobian_vector_product__builds_jacobian(f, x, v):
    """Right numbers, but builds the whole Jacobian with torch.func.jacrev."""
    return torch.func.jacrev(f)(x.detach()) @ v


@wrong_answer
def jacobian_vector_product__row_by_row(f, x, v):
    """Right numbers, but one backward pass per output: the Jacobian, row by row."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    rows = [torch.autograd.grad(y[k], x, retain_graph=True)[0] for k in range(len(y))]
    return torch.stack(rows) @ v


@wrong_answer
def jacobian_vector_product__no_create_graph(f, x, v):
    """Forgets create_graph=True in the first pass, so the second has nothing to differentiate."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    u = torch.zeros_like(y, requires_grad=True)
    (vjp,) = torch.autograd.grad(y, x, grad_outputs=u)
    (jvp,) = torch.autograd.grad(vjp, u, grad_outputs=v)
    return jvp


# Lesson 3 ---------------------------------------------------------------------------------------


@wrong_answer
def mse_gradients__missing_factor_two(X, y, w, b):
    """Forgets the 2 from differentiating the square."""
    residual = X @ w + b - y
    return X.mT @ residual / len(y), residual.sum() / len(y)


@wrong_answer
def mse_gradients__sum_not_mean(X, y, w, b):
    """Differentiates the summed loss: no 1/n."""
    residual = X @ w + b - y
    return 2 * X.mT @ residual, 2 * residual.sum()


@wrong_answer
def mse_gradients__residual_sign(X, y, w, b):
    """Residual y − prediction: every gradient has the wrong sign."""
    residual = y - X @ w - b
    return 2 / len(y) * X.mT @ residual, 2 / len(y) * residual.sum()


@wrong_answer
def mse_gradients__uses_autograd(X, y, w, b):
    """Right numbers, but from autograd instead of the formula."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    return torch.autograd.grad(((X @ w + b - y) ** 2).mean(), (w, b))


@wrong_answer
def least_squares__no_intercept(X, y):
    """Solves X w = y without a column of ones: the fit goes through the origin, b = 0."""
    w = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    return w, torch.zeros((), dtype=X.dtype)


@wrong_answer
def least_squares__intercept_is_mean_y(X, y):
    """Right w from centred data, but b = mean(y), forgetting − mean(X)·w."""
    X_mean, y_mean = X.mean(0), y.mean()
    w = torch.linalg.lstsq(X - X_mean, (y - y_mean).unsqueeze(1)).solution.squeeze(1)
    return w, y_mean


@wrong_answer
def fit_linear_gd__keeps_gradients(X, y, lr, epochs):
    """Never clears .grad: each step uses the sum of all gradients so far."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, requires_grad=True)
    for _ in range(epochs):
        ((X @ w + b - y) ** 2).mean().backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
    return w.detach(), b.detach()


@wrong_answer
def fit_linear_gd__one_step_too_many(X, y, lr, epochs):
    """range(epochs + 1): one update more than asked."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, requires_grad=True)
    for _ in range(epochs + 1):
        ((X @ w + b - y) ** 2).mean().backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad, b.grad = None, None
    return w.detach(), b.detach()


@wrong_answer
def fit_linear_gd__summed_loss(X, y, lr, epochs):
    """Sums the squared errors instead of averaging: every step is n times too long."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, requires_grad=True)
    for _ in range(epochs):
        ((X @ w + b - y) ** 2).sum().backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad, b.grad = None, None
    return w.detach(), b.detach()


@wrong_answer
def fit_linear_gd__uses_torch_optim(X, y, lr, epochs):
    """Right numbers, but lets torch.optim.SGD take the steps."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        ((X @ w + b - y) ** 2).mean().backward()
        optimizer.step()
    return w.detach(), b.detach()


class _MomentumSGDBase(torch.optim.Optimizer):
    """Shared skeleton of the wrong optimizers below; `_direction` is where each goes wrong."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(self._direction(p, group), alpha=self._lr(group))

    def _lr(self, group):
        return group["lr"]


class MomentumSGD__dampened(_MomentumSGDBase):
    """v = m·v + (1 − m)·g, an exponential average, where torch.optim.SGD adds the full gradient."""

    def _direction(self, p, group):
        g = p.grad + group["weight_decay"] * p
        state = self.state[p]
        state["v"] = g.clone() if "v" not in state else group["momentum"] * state["v"] + (1 - group["momentum"]) * g
        return state["v"]


class MomentumSGD__decay_after_momentum(_MomentumSGDBase):
    """Adds weight decay after the momentum buffer instead of to the gradient before it."""

    def _direction(self, p, group):
        state = self.state[p]
        state["v"] = p.grad.clone() if "v" not in state else group["momentum"] * state["v"] + p.grad
        return state["v"] + group["weight_decay"] * p


class MomentumSGD__ignores_group_lr(_MomentumSGDBase):
    """Uses the default lr for every group instead of group['lr']."""

    def _direction(self, p, group):
        g = p.grad + group["weight_decay"] * p
        state = self.state[p]
        state["v"] = g.clone() if "v" not in state else group["momentum"] * state["v"] + g
        return state["v"]

    def _lr(self, group):
        return self.defaults["lr"]


class MomentumSGD__subclasses_torch_sgd(torch.optim.SGD):
    """Right numbers, but inherits torch.optim.SGD's step instead of writing one."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class MomentumSGD__delegates_to_sgd(torch.optim.Optimizer):
    """Right numbers, but hands every step to a torch.optim.SGD inside."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.inner = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, closure=None):
        return self.inner.step(closure)


for _optimizer in (MomentumSGD__dampened, MomentumSGD__decay_after_momentum, MomentumSGD__ignores_group_lr,
                   MomentumSGD__subclasses_torch_sgd, MomentumSGD__delegates_to_sgd):
    wrong_answer(_optimizer)


# Lesson 4 ---------------------------------------------------------------------------------------

_PARAMETERS_PER_KIND = {  # (kind -> formula) shared by the parameter_count mistakes below
    "linear": lambda n_in, n_out: n_in * n_out + n_out,
    "linear_no_bias": lambda n_in, n_out: n_in * n_out,
    "batchnorm": lambda n: 2 * n,
    "layernorm": lambda n: 2 * n,
    "embedding": lambda n, d: n * d,
    "relu": lambda: 0,
    "tanh": lambda: 0,
    "dropout": lambda p: 0,
}


@wrong_answer
def parameter_count__forgets_biases(layers):
    """Counts in·out for every Linear, leaving out the biases."""
    formulas = {**_PARAMETERS_PER_KIND, "linear": lambda n_in, n_out: n_in * n_out}
    return sum(formulas[kind](*sizes) for kind, *sizes in layers)


@wrong_answer
def parameter_count__counts_running_statistics(layers):
    """Counts BatchNorm's running mean and variance as parameters: 4 per feature."""
    formulas = {**_PARAMETERS_PER_KIND, "batchnorm": lambda n: 4 * n}
    return sum(formulas[kind](*sizes) for kind, *sizes in layers)


@wrong_answer
def parameter_count__unknown_kind_is_zero(layers):
    """Counts unknown kinds as 0 instead of raising ValueError."""
    return sum(_PARAMETERS_PER_KIND.get(kind, lambda *s: 0)(*sizes) for kind, *sizes in layers)


@wrong_answer
def parameter_count__builds_modules(layers):
    """Right numbers, but builds the modules and counts their parameters."""
    modules = {"linear": nn.Linear, "linear_no_bias": lambda i, o: nn.Linear(i, o, bias=False),
               "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm, "embedding": nn.Embedding,
               "relu": nn.ReLU, "tanh": nn.Tanh, "dropout": nn.Dropout}
    return sum(p.numel() for kind, *sizes in layers for p in modules[kind](*sizes).parameters())


class _LayerNormBase(nn.Module):
    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_size))
        self.bias = nn.Parameter(torch.zeros(normalized_size))


class LayerNorm__unbiased_variance(_LayerNormBase):
    """Divides the variance by n − 1 (torch.var's default) instead of n."""

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class LayerNorm__eps_outside_sqrt(_LayerNormBase):
    """Adds eps to the standard deviation: sqrt(var) + eps."""

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, correction=0, keepdim=True)
        return (x - mean) / (torch.sqrt(var) + self.eps) * self.weight + self.bias


class LayerNorm__forgotten_keepdim(_LayerNormBase):
    """Reduces without keepdim=True: the (…,) statistics no longer broadcast against (…, n)."""

    def forward(self, x):
        mean, var = x.mean(-1), x.var(-1, correction=0)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class LayerNorm__plain_tensors(nn.Module):
    """Stores weight and bias as plain tensors: not parameters, so nothing would train them."""

    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.ones(normalized_size)
        self.bias = torch.zeros(normalized_size)

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, correction=0, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class LayerNorm__ignores_eps_argument(_LayerNormBase):
    """Uses a fixed 1e-5 whatever eps the caller passes."""

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, correction=0, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class LayerNorm__calls_F_layer_norm(_LayerNormBase):
    """Right numbers, but hands the work to F.layer_norm."""

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


for _layer_norm in (LayerNorm__unbiased_variance, LayerNorm__eps_outside_sqrt, LayerNorm__forgotten_keepdim,
                    LayerNorm__plain_tensors, LayerNorm__ignores_eps_argument, LayerNorm__calls_F_layer_norm):
    wrong_answer(_layer_norm)


def _shape_recorder(shapes, name, record_input=False):
    def hook(module, inputs, output):
        shapes[name] = tuple((inputs[0] if record_input else output).shape)
    return hook


@wrong_answer
def record_output_shapes__hooks_left_behind(model, x):
    """Never removes its hooks."""
    shapes = {}
    for name, module in model.named_modules():
        if not list(module.children()):
            module.register_forward_hook(_shape_recorder(shapes, name))
    model(x)
    return shapes


@wrong_answer
def record_output_shapes__includes_containers(model, x):
    """Hooks every module, the root and the nested Sequential included."""
    shapes = {}
    handles = [m.register_forward_hook(_shape_recorder(shapes, name)) for name, m in model.named_modules()]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@wrong_answer
def record_output_shapes__input_shapes(model, x):
    """Records each module's input shape instead of its output shape."""
    shapes = {}
    handles = [m.register_forward_hook(_shape_recorder(shapes, name, record_input=True))
               for name, m in model.named_modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@wrong_answer
def record_output_shapes__no_finally(model, x):
    """Removes the hooks only when the forward pass succeeds."""
    shapes = {}
    handles = [m.register_forward_hook(_shape_recorder(shapes, name))
               for name, m in model.named_modules() if not list(m.children())]
    model(x)
    for handle in handles:
        handle.remove()
    return shapes


class _AttentionBase(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, t):
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

    def _scale(self):
        return math.sqrt(self.head_dim)

    def _future(self, seq, device):
        return torch.ones(seq, seq, dtype=torch.bool, device=device).triu(diagonal=1)

    def forward(self, x, causal=False):
        batch, seq, d_model = x.shape
        q, k, v = (self._heads(t) for t in self.in_proj(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-2, -1) / self._scale()
        if causal:
            scores = scores.masked_fill(self._future(seq, x.device), float("-inf"))
        return self.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, d_model))


class MultiHeadSelfAttention__heads_without_transpose(_AttentionBase):
    """Splits heads with a plain view to (batch, heads, seq, head_dim), mixing positions and heads."""

    def _heads(self, t):
        batch, seq, _ = t.shape
        return t.reshape(batch, self.n_heads, seq, self.head_dim)

    def forward(self, x, causal=False):
        batch, seq, d_model = x.shape
        q, k, v = (self._heads(t) for t in self.in_proj(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-2, -1) / self._scale()
        if causal:
            scores = scores.masked_fill(self._future(seq, x.device), float("-inf"))
        return self.out_proj((scores.softmax(-1) @ v).reshape(batch, seq, d_model))


class MultiHeadSelfAttention__scaled_by_d_model(_AttentionBase):
    """Scales the scores by 1/sqrt(d_model) instead of 1/sqrt(head_dim)."""

    def _scale(self):
        return math.sqrt(self.n_heads * self.head_dim)


class MultiHeadSelfAttention__mask_hides_diagonal(_AttentionBase):
    """Causal mask triu(diagonal=0): a position may not attend to itself, and the first sees nothing (NaN)."""

    def _future(self, seq, device):
        return torch.ones(seq, seq, dtype=torch.bool, device=device).triu(diagonal=0)


class MultiHeadSelfAttention__uses_sdpa(_AttentionBase):
    """Right numbers, but calls F.scaled_dot_product_attention for the attention itself."""

    def forward(self, x, causal=False):
        batch, seq, d_model = x.shape
        q, k, v = (self._heads(t) for t in self.in_proj(x).chunk(3, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, seq, d_model))


for _attention in (MultiHeadSelfAttention__heads_without_transpose, MultiHeadSelfAttention__scaled_by_d_model,
                   MultiHeadSelfAttention__mask_hides_diagonal, MultiHeadSelfAttention__uses_sdpa):
    wrong_answer(_attention)


# Lesson 5 ---------------------------------------------------------------------------------------


class _CharDatasetBase(torch.utils.data.Dataset):
    def __init__(self, text, seq_len):
        if not 1 <= seq_len < len(text):
            raise ValueError(f"seq_len={seq_len} out of range")
        self.vocab = self._vocabulary(text)
        self.tokens = torch.tensor([self.vocab.index(ch) for ch in text], dtype=torch.long)
        self.seq_len = seq_len

    def _vocabulary(self, text):
        return sorted(set(text))

    def __len__(self):
        return len(self.tokens) - self.seq_len

    def _item(self, i):
        return self.tokens[i:i + self.seq_len], self.tokens[i + 1:i + self.seq_len + 1]

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._item(index % len(self))


class CharDataset__one_item_too_many(_CharDatasetBase):
    """len = len(text) − seq_len + 1: the last item's target is one character short."""

    def __len__(self):
        return len(self.tokens) - self.seq_len + 1


class CharDataset__target_not_shifted(_CharDatasetBase):
    """Returns the input as its own target."""

    def _item(self, i):
        x = self.tokens[i:i + self.seq_len]
        return x, x


class CharDataset__vocab_in_order_of_appearance(_CharDatasetBase):
    """Numbers characters in the order they first appear, not sorted."""

    def _vocabulary(self, text):
        return list(dict.fromkeys(text))


for _dataset in (CharDataset__one_item_too_many, CharDataset__target_not_shifted,
                 CharDataset__vocab_in_order_of_appearance):
    wrong_answer(_dataset)


@wrong_answer
def pad_and_sort_collate__labels_not_reordered(batch):
    """Sorts the sequences but leaves the labels in batch order."""
    order = sorted(range(len(batch)), key=lambda i: -len(batch[i][0]))
    sequences = [batch[i][0] for i in order]
    lengths = torch.tensor([len(s) for s in sequences])
    return nn.utils.rnn.pad_sequence(sequences, batch_first=True), lengths, torch.stack([b[1] for b in batch])


@wrong_answer
def pad_and_sort_collate__shortest_first(batch):
    """Sorts ascending: pack_padded_sequence(enforce_sorted=True) rejects it."""
    order = sorted(range(len(batch)), key=lambda i: len(batch[i][0]))
    sequences = [batch[i][0] for i in order]
    lengths = torch.tensor([len(s) for s in sequences])
    return nn.utils.rnn.pad_sequence(sequences, batch_first=True), lengths, torch.stack([batch[i][1] for i in order])


@wrong_answer
def pad_and_sort_collate__padded_lengths(batch):
    """Reports the padded length T_max for every row instead of the true lengths."""
    order = sorted(range(len(batch)), key=lambda i: -len(batch[i][0]))
    padded = nn.utils.rnn.pad_sequence([batch[i][0] for i in order], batch_first=True)
    lengths = torch.full((len(batch),), padded.shape[1], dtype=torch.long)
    return padded, lengths, torch.stack([batch[i][1] for i in order])


class _BucketBase(torch.utils.data.Sampler):
    def __init__(self, lengths, batch_size, generator=None):
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.generator = generator if generator is not None else torch.Generator()

    def __iter__(self):
        for i in torch.randperm(len(self.batches), generator=self.generator).tolist():
            yield self.batches[i]

    def __len__(self):
        return len(self.batches)


class BucketBatchSampler__drops_last_batch(_BucketBase):
    """Keeps only full batches: n // batch_size of them, losing the remainder."""

    def __init__(self, lengths, batch_size, generator=None):
        super().__init__(lengths, batch_size, generator)
        self.batches = [b for b in self.batches if len(b) == batch_size]


class BucketBatchSampler__sorted_batch_order(_BucketBase):
    """Never shuffles: the batches come shortest first, every pass."""

    def __iter__(self):
        yield from self.batches


class BucketBatchSampler__shuffles_before_batching(_BucketBase):
    """Shuffles all indices before cutting batches: random batches, not length buckets."""

    def __iter__(self):
        order = torch.randperm(sum(len(b) for b in self.batches), generator=self.generator).tolist()
        size = len(self.batches[0])
        for i in range(0, len(order), size):
            yield order[i:i + size]


class BucketBatchSampler__global_rng(_BucketBase):
    """Ignores the generator and draws from torch's global RNG."""

    def __iter__(self):
        for i in torch.randperm(len(self.batches)).tolist():
            yield self.batches[i]


class BucketBatchSampler__order_fixed_in_init(_BucketBase):
    """Draws the batch order once in __init__: every pass repeats it."""

    def __init__(self, lengths, batch_size, generator=None):
        super().__init__(lengths, batch_size, generator)
        self.order = torch.randperm(len(self.batches), generator=self.generator).tolist()

    def __iter__(self):
        for i in self.order:
            yield self.batches[i]


for _sampler in (BucketBatchSampler__drops_last_batch, BucketBatchSampler__sorted_batch_order,
                 BucketBatchSampler__shuffles_before_batching, BucketBatchSampler__global_rng,
                 BucketBatchSampler__order_fixed_in_init):
    wrong_answer(_sampler)


# Lesson 6 ---------------------------------------------------------------------------------------


@wrong_answer
def label_smoothing_cross_entropy__log_of_softmax(logits, target, smoothing):
    """Takes the log of a softmax: exp(1000) rounds the small probabilities to 0 and their log to −inf."""
    log_probs = torch.log(torch.softmax(logits, dim=1))
    return ((1 - smoothing) * -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
            + smoothing * -log_probs.mean(dim=1)).mean()


@wrong_answer
def label_smoothing_cross_entropy__spreads_over_the_other_classes(logits, target, smoothing):
    """Spreads the smoothing over the C − 1 wrong classes only (another convention, not torch's)."""
    log_probs = F.log_softmax(logits, dim=1)
    n_classes = logits.shape[1]
    q = torch.full_like(log_probs, smoothing / (n_classes - 1)).scatter(1, target.unsqueeze(1), 1 - smoothing)
    return -(q * log_probs).sum(dim=1).mean()


@wrong_answer
def label_smoothing_cross_entropy__sums_over_the_batch(logits, target, smoothing):
    """Sums over the batch instead of averaging: B times too large."""
    log_probs = F.log_softmax(logits, dim=1)
    return ((1 - smoothing) * -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
            + smoothing * -log_probs.mean(dim=1)).sum()


@wrong_answer
def label_smoothing_cross_entropy__no_range_check(logits, target, smoothing):
    """Right loss, but accepts smoothing=1.5 silently."""
    log_probs = F.log_softmax(logits, dim=1)
    return ((1 - smoothing) * -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
            + smoothing * -log_probs.mean(dim=1)).mean()


def _warmup_cosine(step, warmup_steps, total_steps, peak_lr, first=1, span=None, half=0.5):
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be below total_steps={total_steps}")
    if step < warmup_steps:
        return peak_lr * (step + first) / warmup_steps
    span = total_steps - warmup_steps if span is None else span
    return peak_lr * half * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


@wrong_answer
def warmup_cosine_lr__first_step_at_zero(step, warmup_steps, total_steps, peak_lr):
    """Warm-up from step / warmup_steps: the first step has rate 0 and the peak is never reached in the warm-up."""
    return _warmup_cosine(step, warmup_steps, total_steps, peak_lr, first=0)


@wrong_answer
def warmup_cosine_lr__cosine_over_all_steps(step, warmup_steps, total_steps, peak_lr):
    """Runs the cosine over total_steps instead of the steps after the warm-up: it never reaches 0."""
    return _warmup_cosine(step, warmup_steps, total_steps, peak_lr, span=total_steps)


@wrong_answer
def warmup_cosine_lr__without_the_half(step, warmup_steps, total_steps, peak_lr):
    """Forgets the factor 1/2: the decay starts at twice the peak."""
    return _warmup_cosine(step, warmup_steps, total_steps, peak_lr, half=1.0)


@wrong_answer
def warmup_cosine_lr__rises_again(step, warmup_steps, total_steps, peak_lr):
    """No min(1, p): past total_steps the cosine climbs back up."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be below total_steps={total_steps}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def _train_digits(X, y, seed, *, epochs=10, zero_grad=True, reseed_global=False, optimizer="adam", lr=5e-3):
    if reseed_global:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam" else torch.optim.SGD(
        model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=generator).split(64):
            if zero_grad:
                opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model


@wrong_answer
def train_digits_classifier__forgets_zero_grad(X_train, y_train, seed=0):
    """Never clears the gradients: each step follows the sum of all gradients so far."""
    return _train_digits(X_train, y_train, seed, zero_grad=False)


@wrong_answer
def train_digits_classifier__undertrained(X_train, y_train, seed=0):
    """One epoch of plain SGD with a small step: far from converged."""
    return _train_digits(X_train, y_train, seed, epochs=1, optimizer="sgd", lr=0.01)


@wrong_answer
def train_digits_classifier__reseeds_global_rng(X_train, y_train, seed=0):
    """Accurate and reproducible, but calls torch.manual_seed on the caller's global RNG."""
    return _train_digits(X_train, y_train, seed, reseed_global=True)


@wrong_answer
def train_digits_classifier__ignores_seed(X_train, y_train, seed=0):
    """Accurate and reproducible, but always uses seed 0."""
    return _train_digits(X_train, y_train, 0)
