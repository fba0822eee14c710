"""Custom nn.Modules: composing networks, initialising them, and looking inside while they run.

Lesson 4 of the course. Run `python custom_nn_module.py` (add `--quick` for a smoke run).
It builds a configurable MLP, residual and attention blocks and a dynamic network; counts
parameters by formula; compares initialisation schemes; writes custom activation and dropout
layers; collects activations and gradients with hooks; shows vanishing gradients and their
cures; measures what autograd saves and what checkpointing buys; trains under mixed
precision; and saves, reloads and exports a model. Figures: plots/custom_modules_analysis.png,
plots/memory_checkpointing.png.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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
    batch: int = 256  # rows per forward pass in the architecture table
    flow_depth: int = 20  # layers in the gradient-flow experiment
    flow_width: int = 64  # width of those layers
    init_width: int = 512  # layer size for measuring initialised weight statistics
    variance_depth: int = 20  # ReLU layers the activation-variance experiment goes through
    checkpoint_layers: int = 16  # depth of the MLP used for checkpointing
    checkpoint_width: int = 512  # its width
    checkpoint_batch: int = 512  # its batch
    amp_width: int = 1024  # width of the MLP in the mixed-precision step
    amp_batch: int = 512  # its batch
    min_run_time: float = 0.1  # seconds per timing point


FULL = Config()
QUICK = Config(batch=32, flow_depth=8, flow_width=32, init_width=128, variance_depth=8, checkpoint_layers=4,
               checkpoint_width=64, checkpoint_batch=32, amp_width=64, amp_batch=32, min_run_time=0.01)
INIT_SCHEMES = ("xavier", "kaiming", "normal", "zeros")  # what init_weights accepts


# %% [markdown]
# ## Custom layers: Swish and inverted dropout
#
# A layer is a Module whose forward is ordinary tensor code; autograd derives its backward.
# Swish(x) = x·sigmoid(βx) is `nn.SiLU` at β = 1. Dropout zeroes each element with
# probability p during training and scales the survivors by 1/(1 − p), so the expected value
# is unchanged and evaluation needs no rescaling: it is the identity in `eval()` mode.

# %%
class Swish(nn.Module):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class CustomDropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p={p} must be between 0 and 1")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)  # 1/(1 − p) would be inf, and inf·0 = NaN
        keep = torch.rand_like(x) >= self.p  # (same shape as x), True with probability 1 − p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "swish": Swish,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# %% [markdown]
# ## A configurable MLP
#
# Layers built in a loop into `nn.Sequential`. Registering them as submodules (not in a plain
# Python list) is what makes `.parameters()`, `.to(device)` and `state_dict()` see them.
# BatchNorm and dropout go between hidden layers, never after the output.

# %%
class MyMLP(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int, activation: str = "relu",
                 dropout_rate: float = 0.0, use_batch_norm: bool = False):
        super().__init__()
        for name, size in [("input_size", input_size), ("output_size", output_size)]:
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"{name}={size!r} must be a positive integer")
        if any(not isinstance(h, int) or h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes={list(hidden_sizes)} must all be positive integers")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1)")
        make_activation(activation)  # validate the name before building anything
        layers: list[nn.Module] = []
        previous = input_size
        for width in hidden_sizes:
            layers.append(nn.Linear(previous, width))
            if use_batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(make_activation(activation))
            if dropout_rate > 0:
                layers.append(nn.Dropout(dropout_rate))
            previous = width
        layers.append(nn.Linear(previous, output_size))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (batch, input_size) -> (batch, output_size)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm's running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mlp_parameter_count(input_size: int, hidden_sizes: Sequence[int], output_size: int,
                        use_batch_norm: bool = False) -> int:
    """The same count from the formula: weights in·out + biases out per Linear, γ and β per BatchNorm."""
    sizes = [input_size, *hidden_sizes, output_size]
    linear = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:]))
    return linear + (2 * sum(hidden_sizes) if use_batch_norm else 0)


# %% [markdown]
# ## Residual blocks
#
# y = x + f(x). The identity path gives gradients a route around f, so a deep stack of blocks
# trains even when each f alone would shrink the gradient (the gradient-flow section shows it).

# %%
class ResidualBlock(nn.Module):
    def __init__(self, dim: int, activation: str = "relu"):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(dim, dim), make_activation(activation), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)  # (batch, dim)


class ResidualNet(nn.Module):
    def __init__(self, input_size: int, dim: int, n_blocks: int, output_size: int, activation: str = "relu"):
        super().__init__()
        self.stem = nn.Linear(input_size, dim)
        self.blocks = nn.Sequential(*(ResidualBlock(dim, activation) for _ in range(n_blocks)))
        self.head = nn.Linear(dim, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# %% [markdown]
# ## Self-attention
#
# Each position builds a query, a key and a value. Scores q·k/√d say how much each position
# attends to each other; scaling by √d keeps the scores' variance near 1 so the softmax does
# not saturate. A boolean mask (True = may attend) removes positions, e.g. the future in a
# causal model. The result must match PyTorch's fused `F.scaled_dot_product_attention`.

# %%
class AttentionLayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model={d_model} must be positive")
        self.d_model = d_model
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)

    def attention_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention weights, (batch, seq, seq); each row sums to 1."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        q = self.query(x)  # (batch, seq, d_model)
        k = self.key(x)  # (batch, seq, d_model)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_model)  # (batch, seq, seq)
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
            scores = scores.masked_fill(~mask, float("-inf"))  # broadcasts to (batch, seq, seq)
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attention_weights(x, mask) @ self.value(x)  # (batch, seq, d_model)


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(seq, seq) bool: position i may attend to positions ≤ i."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


# %% [markdown]
# ## A dynamic network
#
# In eager PyTorch, forward is plain Python: loops and ifs may depend on the data, and autograd
# records whichever path ran. Here the number of times a shared layer is applied depends on the
# input's norm. (Compilers like torch.export must specialise or guard such branches.)

# %%
class DynamicDepthNet(nn.Module):
    def __init__(self, dim: int, max_depth: int = 4):
        super().__init__()
        self.shared = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 1)
        self.max_depth = max_depth
        self.last_depth = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Larger inputs get more refinement steps: data-dependent control flow.
        self.last_depth = int(min(self.max_depth, max(1, round(x.norm(dim=-1).mean().item() / 2))))
        for _ in range(self.last_depth):
            x = torch.tanh(self.shared(x))
        return self.head(x)


# %% [markdown]
# ## Initialisation
#
# Initial weights decide whether signals survive a deep network. Xavier/Glorot keeps variance
# for tanh-like layers: std = √(2 / (fan_in + fan_out)). Kaiming/He doubles it for ReLU, which
# zeroes half of its input: std = √2 / √fan_in. A tiny fixed std makes activations shrink
# layer after layer; all-zero weights make every hidden unit identical (and, with ReLU, every
# gradient zero): nothing can break the symmetry, so nothing learns.

# %%
def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Linear layer's weights by `scheme`; biases to zero. Returns the model."""
    initialisers = {
        "xavier": nn.init.xavier_uniform_,
        "kaiming": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
        "normal": lambda w: nn.init.normal_(w, mean=0.0, std=0.01),
        "zeros": nn.init.zeros_,
    }
    if scheme not in initialisers:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(initialisers)}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            initialisers[scheme](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def theoretical_std(scheme: str, fan_in: int, fan_out: int) -> float:
    return {"xavier": math.sqrt(2.0 / (fan_in + fan_out)), "kaiming": math.sqrt(2.0 / fan_in),
            "normal": 0.01, "zeros": 0.0}[scheme]


def init_statistics(width: int, generator_seed: int = 0) -> dict[str, dict[str, object]]:
    """Measured vs theoretical weight std of a width×width Linear for each scheme, plus the weights."""
    stats = {}
    for scheme in INIT_SCHEMES:
        torch.manual_seed(generator_seed)
        layer = init_weights(nn.Linear(width, width), scheme)
        weights = layer.weight.detach().flatten()
        stats[scheme] = {"measured": weights.std().item(), "theory": theoretical_std(scheme, width, width),
                         "weights": weights}
    return stats


def activation_std_by_depth(scheme: str, depth: int, width: int, batch: int = 256, seed: int = 0) -> list[float]:
    """Std of the activations after each Linear+ReLU of a deep stack initialised by `scheme`."""
    torch.manual_seed(seed)
    model = init_weights(MyMLP(width, [width] * depth, width), scheme)
    x = torch.randn(batch, width)
    stds = []
    with torch.no_grad():
        for module in model.net:
            x = module(x)
            if isinstance(module, nn.ReLU):
                stds.append(x.std().item())
    return stds


def zeros_cannot_learn(steps: int = 20, seed: int = 0) -> dict[str, float]:
    """Train a zero-initialised ReLU MLP: its hidden weights never move."""
    torch.manual_seed(seed)
    model = init_weights(MyMLP(8, [16, 16], 1), "zeros")
    X, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), y).backward()
        opt.step()
    first, second = model.net[0].weight, model.net[2].weight
    return {"first layer |w| max": first.abs().max().item(), "second layer |w| max": second.abs().max().item(),
            "output bias (the only thing that learns)": model.net[-1].bias.item()}


# %% [markdown]
# ## Looking inside: hooks
#
# A forward hook sees each module's output as it is computed; parameter gradients after
# backward say how strongly each layer is being pushed. Hooks must be removed, or they stay
# on the model forever (and keep references alive): remove them in `finally`.

# %%
def activation_stats(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per leaf module: mean, std and fraction of exact zeros of its output during one forward."""
    stats: dict[str, dict[str, float]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            out = output.detach().float()
            stats[name] = {"mean": out.mean().item(), "std": out.std().item(),
                           "fraction_zero": (out == 0).float().mean().item()}
        return hook

    handles = [module.register_forward_hook(record(name))
               for name, module in model.named_modules() if name and not list(module.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """L2 norm of each parameter's gradient after one backward pass, keyed by parameter name."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return {name: (p.grad.norm().item() if p.grad is not None else 0.0) for name, p in model.named_parameters()}


# %% [markdown]
# ## Gradient flow: vanishing gradients and their cures
#
# sigmoid'(z) ≤ 1/4, so each plain sigmoid layer multiplies the backward signal by at most a
# quarter (times the weights): after 20 layers the first layers get almost nothing. Residual
# connections add an identity path for the gradient; ReLU with Kaiming init keeps the signal's
# scale constant through depth.

# %%
def gradient_flow(depth: int, width: int, batch: int = 128, seed: int = 0) -> dict[str, list[float]]:
    """Gradient norm of each layer's first weight matrix, input side first, for three deep nets."""
    torch.manual_seed(seed)
    x, y = torch.randn(batch, width), torch.randn(batch, 1)
    nets = {
        "plain sigmoid (default init)": MyMLP(width, [width] * depth, 1, activation="sigmoid"),
        "residual sigmoid (default init)": ResidualNet(width, width, depth, 1, activation="sigmoid"),
        "plain ReLU + Kaiming init": init_weights(MyMLP(width, [width] * depth, 1, activation="relu"), "kaiming"),
    }
    flows = {}
    for name, net in nets.items():
        norms = gradient_norms(net, x, y, F.mse_loss)
        if isinstance(net, ResidualNet):
            keys = [f"blocks.{i}.f.0.weight" for i in range(depth)]
        else:
            keys = [f"net.{i}.weight" for i, m in enumerate(net.net) if isinstance(m, nn.Linear)][:depth]
        flows[name] = [norms[k] for k in keys]
    return flows


# %% [markdown]
# ## Memory: what autograd saves, and checkpointing
#
# Backward needs intermediate results of forward (a Linear's input, a ReLU's output ...), so
# autograd keeps them until backward runs: for deep nets and big batches this, not the weights,
# fills memory. `saved_tensors_hooks` lets us see every tensor saved. Checkpointing keeps only
# segment boundaries and recomputes the rest during backward: less memory, more compute.

# %%
def saved_tensor_bytes(fn: Callable, *args, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of distinct storage autograd saves for backward while running `fn(*args)`.

    Pass a model's parameters as `exclude` to count only activations: weights are in memory anyway.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()  # a tensor saved twice is stored once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*args)
    return sum(storages.values())


def deep_mlp(layers: int, width: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks)


def checkpointed_forward(model: nn.Sequential, x: torch.Tensor, segments: int) -> torch.Tensor:
    """Forward with `segments` checkpointed segments; 0 means no checkpointing."""
    if segments == 0:
        return model(x)
    from torch.utils.checkpoint import checkpoint_sequential

    return checkpoint_sequential(model, segments, x, use_reentrant=False)


def checkpointing_tradeoff(layers: int, width: int, batch: int, segment_counts: Sequence[int], min_run_time: float,
                           device: torch.device | str = "cpu") -> list[dict[str, float]]:
    """Saved bytes and median forward+backward time for each number of checkpoint segments."""
    device = as_device(device)
    torch.manual_seed(0)
    model = deep_mlp(layers, width).to(device)
    x = torch.randn(batch, width, device=device, requires_grad=True)

    rows = []
    for segments in segment_counts:
        def step(segments=segments):
            model.zero_grad(set_to_none=True)
            checkpointed_forward(model, x, segments).sum().backward()

        rows.append({"segments": segments,
                     "saved_bytes": saved_tensor_bytes(checkpointed_forward, model, x, segments,
                                                       exclude=model.parameters()),
                     "seconds": time_median(step, device, min_run_time)})
    return rows


# %% [markdown]
# ## Mixed precision
#
# `torch.autocast` runs matmuls in a 16-bit type and keeps precision-sensitive ops (softmax,
# losses, reductions) in float32; the weights stay float32. On CPUs bfloat16 is the type (same
# range as float32, no scaler needed); on CUDA float16 needs `torch.amp.GradScaler("cuda")` so
# small gradients do not underflow. The speed-up depends on the hardware having fast 16-bit
# matmul units: measure it.

# %%
def autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def make_train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, use_amp: bool,
                    dtypes_seen: dict[str, str]) -> Callable[[], torch.Tensor]:
    """One SGD step, optionally under autocast (and GradScaler on CUDA); records the dtypes it sees."""
    device = x.device
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda")

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=use_amp):
            logits = model(x)  # (batch, 10), computed in the 16-bit type under autocast
            loss = F.cross_entropy(logits, target)  # autocast runs losses in float32
        scaler.scale(loss).backward()  # without a scaler (CPU, bf16) this is plain loss.backward()
        dtypes_seen.update({"linear output": _dtype_name(logits.dtype), "loss": _dtype_name(loss.dtype),
                            "weight grad": _dtype_name(model.net[0].weight.grad.dtype)})
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def mixed_precision_step(width: int, batch: int, device: torch.device | str, min_run_time: float,
                         seed: int = 0) -> dict[str, dict[str, object]]:
    """One training step in float32 and under autocast: dtypes seen inside, loss and median time."""
    device = as_device(device)
    results = {}
    for mode in ("float32", "autocast"):
        torch.manual_seed(seed)
        model = MyMLP(width, [width, width], 10).to(device)
        x = torch.randn(batch, width, device=device)
        target = torch.randint(0, 10, (batch,), device=device)
        dtypes: dict[str, str] = {}
        step = make_train_step(model, x, target, mode == "autocast", dtypes)
        first_loss = step().item()
        results[mode] = {"dtypes": dtypes, "loss": first_loss, "weight dtype": _dtype_name(model.net[0].weight.dtype),
                         "seconds": time_median(step, device, min_run_time)}
    return results


# %% [markdown]
# ## Saving, loading and exporting
#
# Save the `state_dict` (names → tensors), not the pickled module; load it into a freshly built
# model with `weights_only=True`, which refuses to unpickle arbitrary code. To run a model
# without its Python class, `torch.export.export` traces it into a self-contained graph
# (TorchScript is deprecated).

# %%
def save_load_export(model: nn.Module, example: torch.Tensor, rebuild: Callable[[], nn.Module]) -> dict[str, object]:
    """Round-trip the state_dict through a file and export the model; report output differences."""
    model.eval()
    with torch.no_grad():
        expected = model(example)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), path)
        fresh = rebuild()
        fresh.load_state_dict(torch.load(path, weights_only=True))
        size = path.stat().st_size
    fresh.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    other_batch = example[:3]
    with torch.no_grad():
        return {
            "state_dict file bytes": size,
            "reloaded max |diff|": (fresh(example) - expected).abs().max().item(),
            "exported max |diff|": (exported.module()(example) - expected).abs().max().item(),
            "exported, batch of 3, max |diff|":
                (exported.module()(other_batch) - model(other_batch)).abs().max().item(),
            "exported graph nodes": len(exported.graph.nodes),
        }


# %% [markdown]
# ## Architectures compared

# %%
def architectures() -> dict[str, tuple[nn.Module, Callable[[int], torch.Tensor], int | None]]:
    """name → (model, input maker for a batch size, formula count or None)."""
    def tabular(batch: int) -> torch.Tensor:
        return torch.randn(batch, 32)  # (batch, features)

    def sequence(batch: int) -> torch.Tensor:
        return torch.randn(max(1, batch // 16), 16, 64)  # (batch, seq, d_model)

    return {  # sizes: MLPs 32 → hidden → 10; residual 32 → 8 blocks of 128 → 10; attention (seq 16, d_model 64)
        "small MLP": (MyMLP(32, [64, 64], 10), tabular, mlp_parameter_count(32, [64, 64], 10)),
        "deep MLP": (MyMLP(32, [256] * 8, 10), tabular, mlp_parameter_count(32, [256] * 8, 10)),
        "deep MLP + BN": (MyMLP(32, [256] * 8, 10, use_batch_norm=True), tabular,
                          mlp_parameter_count(32, [256] * 8, 10, use_batch_norm=True)),
        "residual net": (ResidualNet(32, 128, 8, 10), tabular, None),
        "attention": (AttentionLayer(64), sequence, None),
    }


ARCHITECTURE_SHAPES = {  # printed beside the names
    "small MLP": "32-64-64-10", "deep MLP": "32-[256]x8-10", "deep MLP + BN": "32-[256]x8-10, BatchNorm",
    "residual net": "32-128, 8 residual blocks, 10", "attention": "d_model 64, seq 16",
}


def architecture_table(batch: int, min_run_time: float, device: torch.device | str = "cpu") -> list[dict[str, object]]:
    device = as_device(device)
    rows = []
    for name, (model, make_input, formula) in architectures().items():
        model = model.to(device).eval()
        x = make_input(batch).to(device)
        with torch.no_grad():
            seconds = time_median(lambda model=model, x=x: model(x), device, min_run_time)
        rows.append({"name": name, "parameters": count_parameters(model), "formula": formula, "seconds": seconds})
    return rows


# %% [markdown]
# ## Figures

# %%
def plot_analysis(arch_rows, init_stats, flows):
    fig, axes = new_figure(2, 3, "Custom nn.Modules: size, activations, initialisation, speed and gradient flow")
    ax_params, ax_act, ax_init, ax_time, ax_flow, ax_cost = axes.flat
    names = [r["name"] for r in arch_rows]
    short = [n.replace(" + ", "\n+ ").replace(" net", "\nnet") for n in names]
    colors = [f"C{i}" for i in range(len(names))]

    bars = ax_params.bar(range(len(names)), [r["parameters"] for r in arch_rows], color=colors)
    ax_params.bar_label(bars, labels=[f"{r['parameters']:,}" for r in arch_rows], fontsize=8)
    ax_params.set_xticks(range(len(names)), short, fontsize=7)
    ax_params.set(yscale="log", title="Trainable parameters per architecture", ylabel="parameters (log)")

    x = torch.linspace(-4, 4, 401, requires_grad=True)
    for i, (name, module) in enumerate([("ReLU", nn.ReLU()), ("sigmoid", nn.Sigmoid()), ("tanh", nn.Tanh()),
                                         ("GELU", nn.GELU()), ("Swish", Swish())]):
        y = module(x)
        (dy,) = torch.autograd.grad(y.sum(), x)  # element-wise activation: the gradient of the sum is f'(x)
        ax_act.plot(x.detach().numpy(), y.detach().numpy(), color=f"C{i}", label=name)
        ax_act.plot(x.detach().numpy(), dy.numpy(), color=f"C{i}", linestyle="--", linewidth=1)
    ax_act.set(title="Activations (solid) and derivatives (dashed)", xlabel="input x", ylabel="f(x), f′(x)",
               ylim=(-1.2, 2.5))
    ax_act.legend(fontsize=8)

    for scheme in ("xavier", "kaiming", "normal"):
        stats = init_stats[scheme]
        ax_init.hist(stats["weights"].numpy(), bins=80, histtype="step", linewidth=1.5, density=True,
                     label=f"{scheme}: std {stats['measured']:.4f} (theory {stats['theory']:.4f})")
    ax_init.set(yscale="log", title="Initial weight distributions (zeros: a spike at 0)", xlabel="weight value",
                ylabel="density (log)")
    ax_init.legend(fontsize=7, loc="upper right")

    times_ms = [r["seconds"] * 1e3 for r in arch_rows]
    bars = ax_time.bar(range(len(names)), times_ms, color=colors)
    ax_time.bar_label(bars, fmt="%.2f ms", fontsize=8)
    ax_time.set_xticks(range(len(names)), short, fontsize=7)
    ax_time.set(title="Forward time per architecture (median)", ylabel="time (ms)")

    for name, norms in flows.items():
        ax_flow.plot(range(1, len(norms) + 1), norms, "o-", markersize=3, label=name)
    ax_flow.set(yscale="log", title=f"Gradient norm per layer ({len(next(iter(flows.values())))} layers deep)",
                xlabel="layer (1 = next to the input)", ylabel="‖∂L/∂W‖ (log)")
    ax_flow.legend(fontsize=8)

    for i, row in enumerate(arch_rows):
        ax_cost.scatter(row["parameters"], row["seconds"] * 1e3, color=colors[i], s=40, label=row["name"])
    ax_cost.set(xscale="log", yscale="log", title="Parameters vs forward time", xlabel="parameters (log)",
                ylabel="forward time (ms, log)")
    ax_cost.legend(fontsize=7)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_checkpointing(rows, layers: int):
    fig, axes = new_figure(1, 2, f"Activation checkpointing on a {layers}-layer MLP: memory vs compute")
    ax_mem, ax_time = axes.flat
    labels = ["none" if r["segments"] == 0 else str(r["segments"]) for r in rows]
    bars = ax_mem.bar(labels, [r["saved_bytes"] / 2**20 for r in rows], color="tab:blue")
    ax_mem.bar_label(bars, fmt="%.1f MiB", fontsize=8)
    ax_mem.set(title="Activations saved for backward (weights excluded)", xlabel="checkpoint segments",
               ylabel="saved (MiB)")
    bars = ax_time.bar(labels, [r["seconds"] * 1e3 for r in rows], color="tab:orange")
    ax_time.bar_label(bars, fmt="%.1f ms", fontsize=8)
    ax_time.set(title="Forward + backward time (median)", xlabel="checkpoint segments", ylabel="time (ms)")
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return fig


# %% [markdown]
# ## Putting it together

# %%
def run(ctx: LessonContext) -> None:
    cfg = ctx.config(FULL, QUICK)

    print_section("MyMLP")
    mlp = MyMLP(32, [64, 64], 10, activation="gelu", dropout_rate=0.1, use_batch_norm=True)
    print(mlp)
    print(f"output shape for a batch of 5: {tuple(mlp(torch.randn(5, 32)).shape)}")

    arch_rows = architecture_table(cfg.batch, cfg.min_run_time, ctx.device)
    print_table(f"Architectures (forward time: batch {cfg.batch}, eval mode, on {ctx.device.type})",
                ["architecture", "layout", "parameters", "formula", "forward"],
                [[r["name"], ARCHITECTURE_SHAPES[r["name"]], r["parameters"],
                  "-" if r["formula"] is None else r["formula"],
                  fmt_seconds(r["seconds"])] for r in arch_rows])

    print_section("Self-attention vs F.scaled_dot_product_attention")
    attention = AttentionLayer(16)
    x = torch.randn(2, 5, 16, generator=ctx.generator)  # (batch, seq, d_model)
    q, k, v = attention.query(x), attention.key(x), attention.value(x)
    for label, mask in [("no mask", None), ("causal mask", causal_mask(5))]:
        with torch.no_grad():
            diff = (attention(x, mask) - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max().item()
        print(f"{label:12s} max |diff| = {diff:.1e}")

    print_section("A dynamic network: depth chosen by the input")
    dynamic = DynamicDepthNet(8)
    for scale in (0.5, 2.0, 5.0):
        dynamic(torch.randn(4, 8, generator=ctx.generator) * scale).sum().backward()
        print(f"input scale {scale}: {dynamic.last_depth} pass(es) through the shared layer, "
              f"shared-layer grad norm {dynamic.shared.weight.grad.norm().item():.4f}")
        dynamic.zero_grad()

    init_stats = init_statistics(cfg.init_width, ctx.seed)
    print_table(f"Initial weight std of a {cfg.init_width}×{cfg.init_width} Linear",
                ["scheme", "measured std", "theory", "measured / theory"],
                [[s, f"{v['measured']:.5f}", f"{v['theory']:.5f}",
                  f"{v['measured'] / v['theory']:.3f}" if v["theory"] else "-"] for s, v in init_stats.items()])
    depth_rows = []
    for scheme in INIT_SCHEMES:
        stds = activation_std_by_depth(scheme, cfg.variance_depth, 256, seed=ctx.seed)
        depth_rows.append([scheme, f"{stds[0]:.3g}", f"{stds[len(stds) // 2]:.3g}", f"{stds[-1]:.3g}"])
    print_table(f"Activation std through {cfg.variance_depth} Linear+ReLU layers (width 256, input std 1)",
                ["scheme", "after layer 1", f"after layer {cfg.variance_depth // 2 + 1}",
                 f"after layer {cfg.variance_depth}"], depth_rows)
    print("zeros init after 20 SGD steps:", {k: round(v, 4) for k, v in zeros_cannot_learn(seed=ctx.seed).items()})

    print_section("Custom layers")
    probe = torch.linspace(-3, 3, 7)
    print(f"Swish(1) vs nn.SiLU max |diff|: {(Swish(1.0)(probe) - nn.SiLU()(probe)).abs().max().item():.1e}")
    dropout = CustomDropout(0.3)
    ones = torch.ones(100_000)
    dropped = dropout(ones)
    print(f"CustomDropout(0.3) train: kept {(dropped != 0).float().mean().item():.4f} (expect 0.7), "
          f"mean {dropped.mean().item():.4f} (expect 1.0); eval is identity: {torch.equal(dropout.eval()(ones), ones)}")

    print_section("Hooks")
    probe_model = MyMLP(32, [64, 64], 10)
    stats = activation_stats(probe_model, torch.randn(cfg.batch, 32, generator=ctx.generator))
    print_table("Activation statistics (forward hooks, removed afterwards)", ["module", "mean", "std", "zeros"],
                [[name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['fraction_zero']:.2f}"]
                 for name, s in stats.items()])
    norms = gradient_norms(probe_model, torch.randn(cfg.batch, 32), torch.randn(cfg.batch, 10), F.mse_loss)
    print("gradient norms:", {name: round(value, 4) for name, value in norms.items()})

    flows = gradient_flow(cfg.flow_depth, cfg.flow_width, seed=ctx.seed)
    print_table(f"Gradient flow through {cfg.flow_depth} layers: ‖∂L/∂W‖ of the first and last layer",
                ["network", "layer 1 (input side)", f"layer {cfg.flow_depth}", "ratio first/last"],
                [[name, f"{f[0]:.2e}", f"{f[-1]:.2e}", f"{f[0] / f[-1]:.1e}"] for name, f in flows.items()])

    segment_counts = [0] + [n for n in (2, 4, 8, 16) if n <= cfg.checkpoint_layers]  # 0: no checkpointing
    checkpoint_rows = checkpointing_tradeoff(cfg.checkpoint_layers, cfg.checkpoint_width, cfg.checkpoint_batch,
                                             segment_counts, cfg.min_run_time, ctx.device)
    baseline = checkpoint_rows[0]
    print_table(f"Checkpointing a {cfg.checkpoint_layers}-layer MLP (width {cfg.checkpoint_width}, "
                f"batch {cfg.checkpoint_batch}); saved = activations, weights excluded",
                ["segments", "saved for backward", "vs none", "fwd+bwd", "vs none"],
                [[r["segments"] or "none", f"{r['saved_bytes'] / 2**20:.2f} MiB",
                  f"{r['saved_bytes'] / baseline['saved_bytes']:.2f}×", fmt_seconds(r["seconds"]),
                  fmt_timing(r["seconds"] / baseline["seconds"], ".2f", "×")] for r in checkpoint_rows])

    amp = mixed_precision_step(cfg.amp_width, cfg.amp_batch, ctx.device, cfg.min_run_time, ctx.seed)
    print_table(f"Mixed precision: one SGD step of a {cfg.amp_width}-wide MLP, batch {cfg.amp_batch}, on "
                f"{ctx.device.type} (autocast dtype {_dtype_name(autocast_dtype(ctx.device))})",
                ["mode", "linear output", "loss", "weights", "weight grad", "first loss", "step time"],
                [[mode, r["dtypes"]["linear output"], r["dtypes"]["loss"], r["weight dtype"],
                  r["dtypes"]["weight grad"],
                  f"{r['loss']:.4f}", fmt_seconds(r["seconds"])] for mode, r in amp.items()])
    print(f"autocast speed-up: {fmt_timing(amp['float32']['seconds'] / amp['autocast']['seconds'], '.2f', '×')}")

    print_section("Saving, loading and exporting")
    def rebuild() -> MyMLP:
        return MyMLP(32, [64, 64], 10, use_batch_norm=True)
    saved = save_load_export(rebuild(), torch.randn(8, 32, generator=ctx.generator), rebuild)
    for key, value in saved.items():
        print(f"{key:34s} {value}")

    print_section("Figures")
    save_figure(plot_analysis(arch_rows, init_stats, flows), "custom_modules_analysis.png", ctx.plots_dir)
    save_figure(plot_checkpointing(checkpoint_rows, cfg.checkpoint_layers), "memory_checkpointing.png", ctx.plots_dir)


def main(argv: list[str] | None = None) -> int:
    return run_lesson("custom_nn_module.py", __doc__, "Lesson 4: custom nn.Modules", run, argv)


if __name__ == "__main__":
    finish(main())
