"""Custom nn.Modules: composing networks, initialising them, and looking inside while they run.

Run `python custom_nn_module.py` (add `--quick` for a smoke run).
It builds a configurable MLP, residual and attention blocks and a dynamic network; counts
parameters by formula; shows the two boolean attention-mask conventions; compares
initialisation schemes, torch's default among them; writes custom activation and dropout
layers; collects activations and gradients with hooks; shows vanishing and exploding
gradients, their cures and gradient clipping; measures what autograd saves and what
checkpointing buys; trains under mixed precision; and saves, reloads and exports a model.
Figures: plots/custom_modules_analysis.png, plots/memory_checkpointing.png.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lesson_harness import (
    NOISY_MARK,
    TIMING_HEADERS,
    Timing,
    as_device,
    benchmark,
    fmt_seconds,
    new_figure,
    print_pairs,
    print_section,
    print_table,
    save_figure,
    start_lesson,
    timing_cells,
    timing_note,
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
    checkpoint_batch: int = 256  # its batch
    amp_width: int = 512  # width of the MLP in the mixed-precision step
    amp_batch: int = 256  # its batch
    min_run_time: float = 0.1  # seconds per timing point


FULL = Config()
QUICK = Config(batch=32, flow_depth=8, flow_width=32, init_width=128, variance_depth=8, checkpoint_layers=4,
               checkpoint_width=64, checkpoint_batch=32, amp_width=64, amp_batch=32, min_run_time=0.01)
INIT_SCHEMES = ("xavier", "kaiming", "torch default", "normal", "zeros")  # what init_weights accepts
NORMAL_INIT_STD = 0.01  # the "small fixed std" scheme
TORCH_DEFAULT_A = math.sqrt(5)  # the `a` nn.Linear.reset_parameters passes to kaiming_uniform_
EXPLODING_INIT_STD = 1.0  # N(0, 1) weights: far too large for a layer of 32 or more inputs
CLIP_MAX_NORM = 1.0  # max_norm given to clip_grad_norm_ in the exploding-gradients section
VARIANCE_WIDTH = 256  # width of the activation-variance stack (and its batch)
ZERO_INIT_STEPS = 20  # SGD steps the zero-initialised MLP gets
CHECKPOINT_SEGMENTS = (2, 4, 8, 16)  # segment counts tried (those dividing the depth), besides none
DROPOUT_P = 0.3  # drop probability in the CustomDropout check
DROPOUT_SAMPLES = 100_000  # elements it drops from
DYNAMIC_SCALES = (0.5, 2.0, 5.0)  # input scales fed to the dynamic-depth network
ATTENTION_SHAPE = (2, 5, 16)  # (batch, seq, d_model) of the attention check and of the mask conventions
TABULAR_FEATURES, CLASSES = 32, 10  # input and output sizes of the MLPs in the architecture table
SEQ_LEN, D_MODEL = 16, 64  # the attention architecture's sequence length and width
ACTIVATION_GRID = torch.linspace(-4, 4, 401)  # inputs at which the figure draws each activation


def seeded(seed: int) -> torch.Generator:
    """A fresh CPU generator: each experiment draws its own numbers, so it repeats on its own."""
    return torch.Generator().manual_seed(seed)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sci(value: float) -> str:
    """A difference that may be anything from round-off to large: two significant digits and the exponent."""
    return f"{value:.1e}"


def median_ratio(numerator: Timing, denominator: Timing) -> tuple[float, bool]:
    """numerator.median / denominator.median, both from the same run, and whether either timing was noisy."""
    return numerator.median / denominator.median, numerator.noisy or denominator.noisy


def _threads_label(timing: Timing) -> str:
    return f"{timing.threads} thread" + ("s" if timing.threads != 1 else "")


def _ratio_cell(ratio: float, noisy: bool) -> str:
    """A ratio of medians as a table cell, marked when one of its timings was noisy."""
    return f"{ratio:.2f}×" + (f" {NOISY_MARK}" if noisy else "")


# %% [markdown]
# ## Set-up
#
# This cell reads the settings: the command line in a script (`python custom_nn_module.py --quick`),
# the `LESSON_ARGS` environment variable in a notebook. It picks the device (CUDA, then MPS,
# then the CPU, unless `--device` names one), seeds every random number generator with `--seed`
# and prints what this run uses. Each section below ends with a cell that runs its code and
# shows the result; importing the lesson runs none of them.

# %%
if __name__ == "__main__":
    ctx = start_lesson("custom_nn_module")
    cfg = ctx.config(FULL, QUICK)


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


def swish_vs_silu(x: torch.Tensor) -> float:
    """max |Swish(β=1)(x) − nn.SiLU(x)|."""
    return (Swish(1.0)(x) - nn.SiLU()(x)).abs().max().item()


def dropout_check(p: float, n: int) -> dict[str, object]:
    """CustomDropout(p) on n ones in train mode (global RNG, like nn.Dropout): kept fraction, mean; eval identity."""
    layer, ones = CustomDropout(p), torch.ones(n)
    dropped = layer(ones)
    return {"kept": (dropped != 0).float().mean().item(), "mean": dropped.mean().item(),
            "eval is identity": torch.equal(layer.eval()(ones), ones)}


def activation_curves(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name → (f(x), f′(x)) for the lesson's activations, f′ by autograd."""
    curves = {}
    for name, module in [("ReLU", nn.ReLU()), ("sigmoid", nn.Sigmoid()), ("tanh", nn.Tanh()), ("GELU", nn.GELU()),
                         ("Swish", Swish())]:
        xg = x.detach().clone().requires_grad_(True)
        y = module(xg)
        (dy,) = torch.autograd.grad(y.sum(), xg)  # element-wise activation: the gradient of the sum is f'(x)
        curves[name] = (y.detach(), dy)
    return curves


def print_custom_layers(swish_diff: float, drop: dict[str, object]) -> None:
    print_pairs("Custom layers", {
        "Swish(1) vs nn.SiLU max |diff|": _sci(swish_diff),
        f"CustomDropout({DROPOUT_P}) train: kept": f"{drop['kept']:.4f} (expect {1 - DROPOUT_P})",
        f"CustomDropout({DROPOUT_P}) train: mean": f"{drop['mean']:.4f} (expect 1.0)",
        f"CustomDropout({DROPOUT_P}) eval is identity": drop["eval is identity"],
    })


# %%
if __name__ == "__main__":
    print_custom_layers(swish_vs_silu(torch.linspace(-3, 3, 7)), dropout_check(DROPOUT_P, DROPOUT_SAMPLES))


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


def output_shape(model: nn.Module, batch: int, seed: int) -> tuple[int, ...]:
    """Shape of the model's output for a random (batch, in_features) input."""
    in_features = next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features
    return tuple(model(torch.randn(batch, in_features, generator=seeded(seed))).shape)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm's running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def linear_parameter_count(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out  # weight (out, in) + bias (out)


def mlp_parameter_count(input_size: int, hidden_sizes: Sequence[int], output_size: int,
                        use_batch_norm: bool = False) -> int:
    """The same count from the layer shapes: in·out + out per Linear, γ and β per BatchNorm."""
    sizes = [input_size, *hidden_sizes, output_size]
    linear = sum(linear_parameter_count(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:]))
    return linear + (2 * sum(hidden_sizes) if use_batch_norm else 0)


def print_mlp(mlp: nn.Module, shape: tuple[int, ...]) -> None:
    print_section("MyMLP: the submodules it registered")
    print(mlp)
    print(f"output shape for a batch of {shape[0]}: {shape}")


# %%
if __name__ == "__main__":
    mlp = MyMLP(TABULAR_FEATURES, [64, 64], CLASSES, activation="gelu", dropout_rate=0.1, use_batch_norm=True)
    print_mlp(mlp, output_shape(mlp, 5, ctx.seed))


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


def residual_parameter_count(input_size: int, dim: int, n_blocks: int, output_size: int) -> int:
    """Stem, two dim×dim Linears per block, head."""
    return (linear_parameter_count(input_size, dim) + 2 * n_blocks * linear_parameter_count(dim, dim)
            + linear_parameter_count(dim, output_size))


# %%
if __name__ == "__main__":
    residual_net = ResidualNet(TABULAR_FEATURES, 128, 8, CLASSES)  # the residual net of the architecture table
    print_pairs(f"ResidualNet: {TABULAR_FEATURES} features, width 128, 8 blocks, {CLASSES} outputs", {
        "output shape for a batch of 5": output_shape(residual_net, 5, ctx.seed),
        "trainable parameters": count_parameters(residual_net),
        "from layer shapes": residual_parameter_count(TABULAR_FEATURES, 128, 8, CLASSES),
    })


# %% [markdown]
# ## Self-attention
#
# Each position builds a query, a key and a value. Scores q·k/√d say how much each position
# attends to each other; scaling by √d keeps the scores' variance near 1 (for q and k with
# unit-variance components) so the softmax does not saturate. A mask removes positions, e.g.
# the future in a causal model. This layer takes a boolean mask in the convention of
# `F.scaled_dot_product_attention`, True = may attend, and its result must match that fused
# function.

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


def attention_parameter_count(d_model: int) -> int:
    return 3 * linear_parameter_count(d_model, d_model)  # query, key, value


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(seq, seq) bool, True = may attend (F.scaled_dot_product_attention's convention): i attends to j ≤ i."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def attention_vs_sdpa(layer: AttentionLayer, x: torch.Tensor) -> dict[str, float]:
    """max |layer(x) − F.scaled_dot_product_attention| on the layer's own projections, without and with a
    causal mask."""
    with torch.no_grad():
        q, k, v = layer.query(x), layer.key(x), layer.value(x)  # (batch, seq, d_model) each
        masks = {"no mask": None, "causal mask": causal_mask(x.shape[1], x.device)}
        return {label: (layer(x, mask) - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max().item()
                for label, mask in masks.items()}


# %%
if __name__ == "__main__":
    attention_x = torch.randn(*ATTENTION_SHAPE, generator=seeded(ctx.seed))  # (batch, seq, d_model)
    diffs = attention_vs_sdpa(AttentionLayer(ATTENTION_SHAPE[-1]), attention_x)
    print_pairs("Self-attention vs F.scaled_dot_product_attention",
                {f"{label}: max |diff|": diff for label, diff in diffs.items()}, fmt=_sci)


# %% [markdown]
# ### Two boolean mask conventions
#
# PyTorch gives a boolean attention mask two opposite meanings:
#
# - `F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`: True = **may** attend.
# - `nn.MultiheadAttention`'s `attn_mask` and `key_padding_mask`, and the masks of `nn.Transformer`
#   and its layers: True = may **not** attend.
# - A float mask means the same to both: it is added to the scores, so 0 allows and −inf blocks.
#
# So `causal_mask` above (True on and below the diagonal) is causal for SDPA, but handed to
# `nn.MultiheadAttention` it blocks the past and the present and allows only the future:
# anti-causal attention, and no error. The last position has no future, so its whole row is
# masked: every score is −inf and the softmax is 0/0. `nn.MultiheadAttention`'s default call
# (`need_weights=True`) returns NaN for that row; `F.scaled_dot_product_attention` (in recent
# torch releases) returns zeros for a fully masked row instead. Neither is attention: a fully masked row is a bug in the
# mask. Two fixes: invert the mask for `nn.MultiheadAttention` (`~mask`), or pass a float mask,
# 0 where attending is allowed and −inf where it is not, which both APIs add to the scores and so
# read the same way (`nn.Transformer.generate_square_subsequent_mask(seq)` builds the causal one).
#
# The check below copies this lesson's `AttentionLayer` into a one-head `nn.MultiheadAttention`
# (identity output projection, so both compute the same thing), then gives it each mask. Two
# measurements per call: which rows are NaN, and whether changing the *last* input changes any
# *earlier* output, which causal attention never allows.

# %%
def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """The float mask both APIs read the same way: 0 where `allowed` is True, −inf where it is False."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def multihead_from_attention_layer(layer: AttentionLayer) -> nn.MultiheadAttention:
    """A one-head nn.MultiheadAttention computing what `layer` computes: its q, k, v weights and an identity
    output projection."""
    d, weight = layer.d_model, layer.query.weight
    mha = nn.MultiheadAttention(d, num_heads=1, batch_first=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))  # (3d, d)
        mha.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias]))  # (3d,)
        mha.out_proj.weight.copy_(torch.eye(d))
        mha.out_proj.bias.zero_()
    return mha


def nan_rows(out: torch.Tensor) -> list[int]:
    """Query positions whose output has a NaN in any batch element; out is (batch, seq, d)."""
    return torch.nonzero(out.isnan().any(dim=-1).any(dim=0)).flatten().tolist()


def sees_later_inputs(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Does changing the last position's input change any earlier position's output? Never, if attention is
    causal. NaN outputs compare equal to NaN."""
    changed = x.clone()
    changed[:, -1] += 1.0  # (batch, seq, d_model): only the last position differs
    before, after = call(x)[:, :-1], call(changed)[:, :-1]
    return not torch.allclose(before, after, rtol=0, atol=1e-5, equal_nan=True)


def mask_conventions(layer: AttentionLayer, x: torch.Tensor) -> list[dict[str, object]]:
    """The causal bool mask (True = may attend) given to SDPA and to nn.MultiheadAttention, and the two fixes:
    per call, its NaN rows, max |diff| from causal attention on the other rows, and whether it sees the future."""
    allowed = causal_mask(x.shape[1], x.device)  # True = may attend
    mha = multihead_from_attention_layer(layer)
    calls = {
        "F.scaled_dot_product_attention, bool mask": lambda t: F.scaled_dot_product_attention(
            layer.query(t), layer.key(t), layer.value(t), attn_mask=allowed),
        "nn.MultiheadAttention, the same bool mask": lambda t: mha(t, t, t, attn_mask=allowed)[0],
        "nn.MultiheadAttention, ~mask": lambda t: mha(t, t, t, attn_mask=~allowed)[0],
        "nn.MultiheadAttention, float mask (0 / −inf)": lambda t: mha(t, t, t, attn_mask=additive_mask(allowed))[0],
        "F.scaled_dot_product_attention, float mask": lambda t: F.scaled_dot_product_attention(
            layer.query(t), layer.key(t), layer.value(t), attn_mask=additive_mask(allowed)),
    }
    rows = []
    with torch.no_grad():
        reference = layer(x, allowed)  # (batch, seq, d_model): causal attention
        for label, call in calls.items():
            out = call(x)
            finite = ~out.isnan().any(dim=-1, keepdim=True)  # (batch, seq, 1)
            rows.append({"call": label, "nan rows": nan_rows(out),
                         "max |diff|": ((out - reference).abs() * finite).nan_to_num().max().item(),
                         "sees later inputs": sees_later_inputs(call, x)})
    return rows


def print_mask_conventions(rows: list[dict[str, object]], seq: int) -> None:
    print_table(f"One causal bool mask (True = may attend), seq {seq}, given to both APIs",
                ["call", "NaN rows", "max |diff| from causal (other rows)", "later inputs change earlier outputs"],
                [[r["call"], ", ".join(map(str, r["nan rows"])) or "none", _sci(r["max |diff|"]),
                  "yes" if r["sees later inputs"] else "no"] for r in rows])


# %%
if __name__ == "__main__":
    print_mask_conventions(mask_conventions(AttentionLayer(ATTENTION_SHAPE[-1]), attention_x), ATTENTION_SHAPE[1])


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


def dynamic_depth_demo(net: DynamicDepthNet, scales: Sequence[float], seed: int,
                       batch: int = 4) -> list[dict[str, float]]:
    """For inputs of each scale: passes through the shared layer and the shared weight's gradient norm."""
    generator = seeded(seed)
    rows = []
    for scale in scales:
        x = torch.randn(batch, net.shared.in_features, generator=generator) * scale  # (batch, dim)
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
        rows.append({"scale": scale, "depth": net.last_depth, "grad norm": net.shared.weight.grad.norm().item()})
    net.zero_grad(set_to_none=True)
    return rows


def print_dynamic(rows: list[dict[str, float]]) -> None:
    print_table("A dynamic network: depth chosen by the input",
                ["input scale", "passes through the shared layer", "shared-layer grad norm"],
                [[row["scale"], row["depth"], f"{row['grad norm']:.4f}"] for row in rows])


# %%
if __name__ == "__main__":
    print_dynamic(dynamic_depth_demo(DynamicDepthNet(8), DYNAMIC_SCALES, ctx.seed))


# %% [markdown]
# ## Initialisation
#
# Initial weights decide whether signals survive a deep network. Xavier/Glorot draws weights
# with variance 2 / (fan_in + fan_out), std = √(2 / (fan_in + fan_out)): a compromise that keeps
# the variance of a linear (or tanh-like) layer's outputs and of its backward gradients roughly
# constant. ReLU zeroes half of its input and so halves the second moment; Kaiming/He
# compensates by doubling the variance of the fan-in rule 1/fan_in (Xavier's value for a square
# layer): variance 2/fan_in, std = √(2/fan_in). Doubling the variance multiplies the std by √2,
# not 2. Through a Linear+ReLU stack each layer multiplies the activations' second moment by
# fan_in·Var(w)/2: ½ for Xavier on square layers, 1 for Kaiming, far below 1 for a tiny fixed
# std, so activations shrink geometrically unless the factor is 1. That is a wide-layer
# average: at finite width each layer's factor is off by a few per cent at random, and the
# errors compound over many layers. All-zero weights make every hidden unit identical and, with
# ReLU, give every hidden weight a zero gradient: the symmetry never breaks and only the output
# bias learns.
#
# PyTorch's own default for `nn.Linear` is neither Xavier nor He. `reset_parameters` calls
# `kaiming_uniform_(weight, a=√5)`: with a = √5 the leaky-ReLU gain √(2 / (1 + a²)) is √(1/3),
# and the bound √3·gain/√fan_in is 1/√fan_in. So the weight is U(−1/√fan_in, 1/√fan_in), and
# the bias too (drawn separately, with the same bound). The std of U(−a, a) is a/√3, so the
# default std is 1/√(3·fan_in): on a square layer 1/√3 of Xavier's and 1/√6 of He's. It is the
# rule Lua Torch used; PyTorch kept it for backward compatibility (a model built the same way
# starts from the same distribution), and rewriting it as `kaiming_uniform_` with a = √5 kept
# the distribution unchanged. Through Linear+ReLU layers its weights multiply the second moment
# by 1/6 per layer: in a deep ReLU stack, re-initialise.
#
# The tables below compare weight rules only: every scheme's biases are set to 0, the "torch
# default" row included. With torch's real default biases, U(±1/√fan_in), each layer also adds
# about 1/(3·fan_in) to the pre-activations' variance, so a deep default-initialised stack does
# not shrink to nothing: its activations settle at a small level set by the biases, which carry
# no information about the input.

# %%
def init_weights(model: nn.Module, scheme: str, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise every Linear layer's weights by `scheme` (drawn from `generator`); biases to zero."""
    initialisers = {
        "xavier": lambda w: nn.init.xavier_uniform_(w, generator=generator),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=generator),
        "torch default": lambda w: nn.init.kaiming_uniform_(w, a=TORCH_DEFAULT_A, generator=generator),
        "normal": lambda w: nn.init.normal_(w, mean=0.0, std=NORMAL_INIT_STD, generator=generator),
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


def reset_linear_layers(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """torch's own Linear initialisation, U(±1/√fan_in) for weights and biases, drawn from `generator`."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)  # kaiming_uniform_(a=√5) reduces to this bound
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            if module.bias is not None:
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


def theoretical_std(scheme: str, fan_in: int, fan_out: int) -> float:
    """The weight std each scheme aims at; torch's default is U(±1/√fan_in), whose std is (1/√fan_in)/√3."""
    return {"xavier": math.sqrt(2.0 / (fan_in + fan_out)), "kaiming": math.sqrt(2.0 / fan_in),
            "torch default": 1.0 / math.sqrt(3.0 * fan_in), "normal": NORMAL_INIT_STD, "zeros": 0.0}[scheme]


def init_statistics(width: int, seed: int) -> dict[str, dict[str, object]]:
    """Measured vs theoretical weight std of a width×width Linear for each scheme, plus the weights."""
    stats = {}
    for scheme in INIT_SCHEMES:
        layer = init_weights(nn.Linear(width, width), scheme, seeded(seed))
        weights = layer.weight.detach().flatten()
        measured, theory = weights.std().item(), theoretical_std(scheme, width, width)
        stats[scheme] = {"measured": measured, "theory": theory, "ratio": measured / theory if theory else None,
                         "weights": weights}
    return stats


def std_ratio(stats: dict[str, dict[str, object]], scheme: str, other: str) -> dict[str, float]:
    """One scheme's weight std divided by another's, measured and in theory."""
    return {key: stats[scheme][key] / stats[other][key] for key in ("measured", "theory")}


def kaiming_over_xavier(stats: dict[str, dict[str, object]]) -> dict[str, float]:
    """Kaiming's std divided by Xavier's, measured and in theory (√2 for a square layer)."""
    return std_ratio(stats, "kaiming", "xavier")


def activation_std_by_depth(scheme: str, depth: int, width: int, seed: int, batch: int = VARIANCE_WIDTH) -> list[float]:
    """Std of the activations after each Linear+ReLU of a deep stack initialised by `scheme`, input N(0, 1)."""
    generator = seeded(seed)
    model = init_weights(MyMLP(width, [width] * depth, width), scheme, generator)
    x = torch.randn(batch, width, generator=generator)  # (batch, width)
    stds = []
    with torch.no_grad():
        for module in model.net:
            x = module(x)
            if isinstance(module, nn.ReLU):
                stds.append(x.std().item())
    return stds


def relu_stack_std_theory(weight_std: float, fan_in: int, depth: int) -> list[float]:
    """Predicted std after each Linear+ReLU (zero biases, input N(0, 1), wide layers).

    A pre-activation z ~ N(0, s²) gives ReLU(z) std s·√(1/2 − 1/(2π)) and second moment s²/2,
    so s² is multiplied by fan_in·Var(w)/2 at every layer after the first.
    """
    pre_std = weight_std * math.sqrt(fan_in)  # layer 1: z = Wx with E[x²] = 1
    per_layer = math.sqrt(fan_in * weight_std**2 / 2)
    return [pre_std * math.sqrt(0.5 - 0.5 / math.pi) * per_layer**layer for layer in range(depth)]


def zeros_cannot_learn(seed: int, steps: int = ZERO_INIT_STEPS) -> dict[str, float]:
    """Train a zero-initialised ReLU MLP: its hidden weights never move."""
    generator = seeded(seed)
    model = init_weights(MyMLP(8, [16, 16], 1), "zeros")
    X, y = torch.randn(64, 8, generator=generator), torch.randn(64, 1, generator=generator)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), y).backward()
        opt.step()
    first, second = model.net[0].weight, model.net[2].weight
    return {"first layer |w| max": first.abs().max().item(), "second layer |w| max": second.abs().max().item(),
            "output bias (the only thing that learns)": model.net[-1].bias.item()}


def print_initialisation(width: int, init_stats, ratio, depth_stds, theory, zeros) -> None:
    depth = len(next(iter(depth_stds.values())))
    print_table(f"Initial weight std of a {width}×{width} Linear", ["scheme", "measured std", "theory",
                                                                      "measured / theory"],
                [[s, f"{v['measured']:.5f}", f"{v['theory']:.5f}", "-" if v["ratio"] is None else f"{v['ratio']:.3f}"]
                 for s, v in init_stats.items()])
    print(f"Kaiming std / Xavier std: measured {ratio['measured']:.4f}, theory √2 = {ratio['theory']:.4f} "
          "(twice the variance)")
    for other, closed_form in (("xavier", "1/√3"), ("kaiming", "1/√6")):
        default = std_ratio(init_stats, "torch default", other)
        print(f"torch default std / {other.capitalize()} std: measured {default['measured']:.4f}, theory "
              f"{closed_form} = {default['theory']:.4f}")
    mid = depth // 2
    print_table(f"Activation std through {depth} Linear+ReLU layers (width {VARIANCE_WIDTH}, input std 1)",
                ["scheme", "after layer 1", f"after layer {mid + 1}", f"after layer {depth}", f"theory at {depth}"],
                [[s, f"{v[0]:.3g}", f"{v[mid]:.3g}", f"{v[-1]:.3g}", f"{theory[s][-1]:.3g}"]
                 for s, v in depth_stds.items()])
    print_pairs(f"All-zero init after {ZERO_INIT_STEPS} SGD steps", zeros, fmt=lambda value: f"{value:.4f}")


# %%
if __name__ == "__main__":
    init_stats = init_statistics(cfg.init_width, ctx.seed)
    depth_stds = {s: activation_std_by_depth(s, cfg.variance_depth, VARIANCE_WIDTH, ctx.seed) for s in INIT_SCHEMES}
    theory = {s: relu_stack_std_theory(theoretical_std(s, VARIANCE_WIDTH, VARIANCE_WIDTH), VARIANCE_WIDTH,
                                       cfg.variance_depth) for s in INIT_SCHEMES}
    print_initialisation(cfg.init_width, init_stats, kaiming_over_xavier(init_stats), depth_stds, theory,
                         zeros_cannot_learn(ctx.seed))


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


def hook_demo(model: nn.Module, batch: int, seed: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Forward-hook statistics and per-parameter gradient norms (MSE to random targets) on random inputs."""
    generator = seeded(seed)
    in_features = model.net[0].in_features
    x = torch.randn(batch, in_features, generator=generator)  # (batch, in_features)
    y = torch.randn(batch, model.net[-1].out_features, generator=generator)  # (batch, out_features)
    return activation_stats(model, x), gradient_norms(model, x, y, F.mse_loss)


def print_hooks(stats, norms) -> None:
    print_table("Activation statistics (forward hooks, removed afterwards)", ["module", "mean", "std", "zeros"],
                [[name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['fraction_zero']:.2f}"]
                 for name, s in stats.items()])
    print_pairs("Gradient norms after one backward pass", norms, fmt=lambda value: f"{value:.4f}")


# %%
if __name__ == "__main__":
    print_hooks(*hook_demo(MyMLP(TABULAR_FEATURES, [64, 64], CLASSES), cfg.batch, ctx.seed))


# %% [markdown]
# ## Gradient flow: vanishing gradients and their cures
#
# sigmoid'(z) ≤ 1/4, so each plain sigmoid layer multiplies the backward signal by at most a
# quarter (times the weights): after 20 layers the first layers get almost nothing. Residual
# connections add an identity path for the gradient; ReLU with Kaiming init keeps the signal's
# scale roughly constant through depth.

# %%
def gradient_flow(depth: int, width: int, seed: int, batch: int = 128) -> dict[str, list[float]]:
    """Gradient norm of each layer's first weight matrix, input side first, for three deep nets."""
    generator = seeded(seed)
    x, y = torch.randn(batch, width, generator=generator), torch.randn(batch, 1, generator=generator)
    nets = {
        "plain sigmoid (default init)":
            reset_linear_layers(MyMLP(width, [width] * depth, 1, activation="sigmoid"), generator),
        "residual sigmoid (default init)":
            reset_linear_layers(ResidualNet(width, width, depth, 1, activation="sigmoid"), generator),
        "plain ReLU + Kaiming init": init_weights(MyMLP(width, [width] * depth, 1, activation="relu"), "kaiming",
                                                  generator),
    }
    flows = {}
    for name, net in nets.items():
        norms = gradient_norms(net, x, y, F.mse_loss)
        if isinstance(net, ResidualNet):
            keys = [f"blocks.{i}.f.0.weight" for i in range(depth)]
        else:
            keys = hidden_weight_names(net, depth)
        flows[name] = [norms[k] for k in keys]
    return flows


def hidden_weight_names(mlp: MyMLP, depth: int) -> list[str]:
    """Parameter names of an MLP's first `depth` Linear weights, input side first."""
    return [f"net.{i}.weight" for i, m in enumerate(mlp.net) if isinstance(m, nn.Linear)][:depth]


def first_over_last(flows: dict[str, list[float]]) -> dict[str, float]:
    """How much weaker the input-side layer's gradient is than the last hidden layer's."""
    return {name: norms[0] / norms[-1] for name, norms in flows.items()}


def print_gradient_flow(flows, ratios) -> None:
    depth = len(next(iter(flows.values())))
    print_table(f"Gradient flow through {depth} layers: ‖∂L/∂W‖ of the first and last layer",
                ["network", "layer 1 (input side)", f"layer {depth}", "ratio first/last"],
                [[name, f"{f[0]:.2e}", f"{f[-1]:.2e}", f"{ratios[name]:.1e}"] for name, f in flows.items()])


# %%
if __name__ == "__main__":
    flows = gradient_flow(cfg.flow_depth, cfg.flow_width, ctx.seed)
    print_gradient_flow(flows, first_over_last(flows))


# %% [markdown]
# ## Exploding gradients, and what clipping does
#
# Too large an init fails the other way. Take a plain tanh MLP with N(0, 1) weights and no
# normalisation. Forward, nothing looks wrong: tanh keeps every activation inside (−1, 1).
# Backward, each layer multiplies the gradient by tanh′(z) and by Wᵀ. A Wᵀ with N(0, 1) entries
# multiplies a vector's squared norm by fan_in on average (each of its fan_in outputs is a sum of
# the vector's entries times independent N(0, 1) weights, so its variance is the vector's squared
# norm), and tanh′(z) ≤ 1 takes back only part of that: the gradient grows layer by layer towards
# the input, and the input-side weights get the largest gradients.
#
# `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` treats all gradients as one vector:
# it computes their total norm √(Σ ‖g‖²), returns it, and if it exceeds max_norm multiplies
# *every* gradient by the same factor max_norm / (total + 1e-6). The update's size is bounded and
# its direction kept, so the ratio between layers does not change: clipping is a guard rail
# against one huge step, and the cure for the imbalance is the init (or normalisation).

# %%
def exploding_gradients(depth: int, width: int, seed: int, max_norm: float = CLIP_MAX_NORM,
                        batch: int = 128) -> dict[str, object]:
    """A tanh MLP with N(0, 1) weights: each hidden weight's gradient norm (input side first) before and after
    clip_grad_norm_, the total norm it returned, the total measured after, and the factor it applied."""
    generator = seeded(seed)
    x, y = torch.randn(batch, width, generator=generator), torch.randn(batch, 1, generator=generator)
    net = MyMLP(width, [width] * depth, 1, activation="tanh")
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=EXPLODING_INIT_STD, generator=generator)
            nn.init.zeros_(module.bias)
    before = gradient_norms(net, x, y, F.mse_loss)  # leaves the gradients in .grad for the clipping below
    total = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm).item()  # the norm *before* clipping
    after = {name: p.grad.norm().item() for name, p in net.named_parameters()}
    names = hidden_weight_names(net, depth)
    return {"before": [before[n] for n in names], "after": [after[n] for n in names], "total before": total,
            "total after": math.sqrt(sum(norm**2 for norm in after.values())),
            "factor": min(1.0, max_norm / (total + 1e-6)), "max_norm": max_norm}


def print_exploding(result: dict[str, object]) -> None:
    before, after = result["before"], result["after"]
    depth, mid = len(before), len(before) // 2
    print_table(f"Exploding gradients: tanh MLP, {depth} layers, N(0, {EXPLODING_INIT_STD:g}) weights; "
                "‖∂L/∂W‖ per layer", ["gradients", "layer 1 (input side)", f"layer {mid + 1}", f"layer {depth}",
                                      "ratio first/last", "total norm (all parameters)"],
                [[label, f"{norms[0]:.2e}", f"{norms[mid]:.2e}", f"{norms[-1]:.2e}", f"{norms[0] / norms[-1]:.1e}",
                  f"{total:.2e}"]
                 for label, norms, total in (("before clipping", before, result["total before"]),
                                             ("after clipping", after, result["total after"]))])
    scales = [a / b for a, b in zip(after, before)]
    print_pairs(f"clip_grad_norm_(parameters, max_norm={result['max_norm']:g})", {
        "returned": f"{result['total before']:.4e} (the total norm before clipping)",
        "factor max_norm / (total + 1e-6)": f"{result['factor']:.4e}",
        "after / before, per layer": f"{min(scales):.4e} to {max(scales):.4e} (every layer: the same factor)",
    })


# %%
if __name__ == "__main__":
    exploding = exploding_gradients(cfg.flow_depth, cfg.flow_width, ctx.seed)
    print_exploding(exploding)


# %% [markdown]
# ## Memory: what autograd saves, and checkpointing
#
# Backward needs intermediate results of forward (a Linear's input, a ReLU's output ...), so
# autograd keeps them until backward runs: for deep nets and big batches this, not the weights,
# fills memory. `saved_tensors_hooks` lets us see every tensor saved. Checkpointing keeps only
# segment inputs and recomputes the rest during backward: less memory, more arithmetic (the
# checkpointed segments' forward runs twice).
#
# `checkpoint_sequential(model, k, x)` checkpoints only the first k − 1 segments; the last one
# runs normally and keeps all its activations. For an L-layer Linear+ReLU stack with
# activations of A bytes each, no checkpointing stores L + 1 of them (the input and every ReLU
# output; a Linear's saved input is the previous ReLU's output, stored once), and k segments
# store (k − 1) segment inputs + the last segment's input + its L/k ReLU outputs = k + L/k.
# That is smallest at k = √L, and 2 segments save much less than half: the second half of the
# network is not checkpointed at all.
#
# The arithmetic it adds can be counted too. A Linear's backward is two matmuls the size of its
# forward (the gradients of its input and of its weight), so a plain forward+backward is 3 units
# per layer; the first k − 1 segments run their forward again, so k segments cost 1 + (k − 1)/(3k)
# times the plain step's matmul FLOPs. The memory and FLOP columns below are counts and repeat
# exactly; the time columns are measurements (one thread, median and IQR). What to look for:
# each measured "fwd+bwd vs none" next to the FLOP ratio. Where they differ, something other than
# arithmetic decides the time (memory traffic, overheads), or noise does: check the IQR column and
# the mark before reading anything into a difference.

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
    """`layers` × (Linear(width, width), ReLU) in one flat Sequential, as checkpoint_sequential wants."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks)


def checkpointed_forward(model: nn.Sequential, x: torch.Tensor, segments: int) -> torch.Tensor:
    """Forward with `segments` checkpoint segments (the last one not checkpointed); 0 means no checkpointing."""
    if segments == 0:
        return model(x)
    from torch.utils.checkpoint import checkpoint_sequential

    return checkpoint_sequential(model, segments, x, use_reentrant=False)


def checkpoint_saved_activations(layers: int, segments: int) -> int:
    """Hand count of the activations a `deep_mlp(layers)` saves for backward: L + 1 plain, k + L/k checkpointed."""
    if segments == 0:
        return layers + 1
    if segments < 0 or layers % segments:
        raise ValueError(f"segments={segments} must be 0 or divide layers={layers}")
    return (segments - 1) + 1 + layers // segments


def checkpoint_flop_ratio(segments: int) -> float:
    """Matmul FLOPs of a checkpointed forward+backward over a plain one: 1 + (k − 1)/(3k), 1 without segments."""
    return 1.0 if segments == 0 else 1.0 + (segments - 1) / (3 * segments)


def checkpointing_tradeoff(layers: int, width: int, batch: int, segment_counts: Sequence[int], min_run_time: float,
                           device: torch.device | str, seed: int) -> list[dict[str, object]]:
    """Per segment count: saved bytes (measured and hand count) and the forward+backward Timing, both also
    relative to the first entry (the time as a ratio of medians, marked noisy when either timing was)."""
    device = as_device(device)
    generator = seeded(seed)
    model = reset_linear_layers(deep_mlp(layers, width), generator).to(device)
    x = torch.randn(batch, width, generator=generator).to(device).requires_grad_(True)  # (batch, width)
    activation_bytes = batch * width * x.element_size()

    rows = []
    for segments in segment_counts:
        def step(segments=segments):
            model.zero_grad(set_to_none=True)
            checkpointed_forward(model, x, segments).sum().backward()

        rows.append({"segments": segments,
                     "saved_bytes": saved_tensor_bytes(checkpointed_forward, model, x, segments,
                                                       exclude=model.parameters()),
                     "hand_count_bytes": checkpoint_saved_activations(layers, segments) * activation_bytes,
                     "timing": benchmark(step, device, min_run_time)})
    for row in rows:
        row["saved_ratio"] = row["saved_bytes"] / rows[0]["saved_bytes"]
        row["flop_ratio"] = checkpoint_flop_ratio(row["segments"]) / checkpoint_flop_ratio(rows[0]["segments"])
        row["time_ratio"], row["time_ratio_noisy"] = median_ratio(row["timing"], rows[0]["timing"])
    return rows


def print_checkpointing(rows, layers: int, width: int, batch: int) -> None:
    print_table(f"Checkpointing a {layers}-layer MLP (width {width}, batch {batch}); saved = activations, "
                "weights excluded", ["segments", "saved for backward", "hand count", "vs none", "matmul FLOPs vs none",
                                     *(f"fwd+bwd {header}" for header in TIMING_HEADERS), "fwd+bwd vs none"],
                [[r["segments"] or "none", f"{r['saved_bytes'] / 2**20:.2f} MiB",
                  f"{r['hand_count_bytes'] / 2**20:.2f} MiB", f"{r['saved_ratio']:.2f}×", f"{r['flop_ratio']:.2f}×",
                  *timing_cells(r["timing"]), _ratio_cell(r["time_ratio"], r["time_ratio_noisy"])] for r in rows])
    print(timing_note(rows[0]["timing"].threads))


def plot_checkpointing(rows, layers: int):
    fig, axes = new_figure(1, 2, f"Activation checkpointing on a {layers}-layer MLP: memory vs compute")
    ax_mem, ax_time = axes.flat
    labels = ["none" if r["segments"] == 0 else str(r["segments"]) for r in rows]
    bars = ax_mem.bar(labels, [r["saved_bytes"] / 2**20 for r in rows], color="tab:blue", label="measured")
    ax_mem.bar_label(bars, fmt="%.1f MiB", fontsize=8, padding=7)
    ax_mem.plot(labels, [r["hand_count_bytes"] / 2**20 for r in rows], "kD", markersize=5,
                label="hand count: L + 1 (none), k + L/k activations")
    ax_mem.set(title="Activations saved for backward (weights excluded)", xlabel="checkpoint segments k",
               ylabel="saved (MiB)")
    ax_mem.set_ylim(0, 1.4 * max(r["saved_bytes"] for r in rows) / 2**20)  # room for the legend
    ax_mem.legend(fontsize=8, loc="upper center")
    bars = ax_time.bar(labels, [r["timing"].median * 1e3 for r in rows], color="tab:orange")
    ax_time.bar_label(bars, labels=[fmt_seconds(r["timing"].median) for r in rows], fontsize=8)
    ax_time.set(title=f"Forward + backward time (median, {_threads_label(rows[0]['timing'])})",
                xlabel="checkpoint segments k", ylabel="time (ms)")
    ax_time.margins(y=0.12)
    for ax in axes.flat:
        ax.grid(True, axis="y", alpha=0.3)
    return fig


# %%
if __name__ == "__main__":
    segments = [0] + [k for k in CHECKPOINT_SEGMENTS if cfg.checkpoint_layers % k == 0]  # 0: no checkpointing
    checkpoint_rows = checkpointing_tradeoff(cfg.checkpoint_layers, cfg.checkpoint_width, cfg.checkpoint_batch,
                                             segments, cfg.min_run_time, ctx.device, ctx.seed)
    print_checkpointing(checkpoint_rows, cfg.checkpoint_layers, cfg.checkpoint_width, cfg.checkpoint_batch)
    save_figure(plot_checkpointing(checkpoint_rows, cfg.checkpoint_layers), "memory_checkpointing.png", ctx.plots_dir)


# %% [markdown]
# ## Mixed precision
#
# `torch.autocast` runs matmuls in a 16-bit type and keeps precision-sensitive ops in float32
# (losses such as cross-entropy; on CUDA also softmax, exp, log and sums); the weights, and so
# their gradients, stay float32. On CPUs the default type is bfloat16 (same range as float32, no
# scaler needed); on CUDA float16 needs `torch.amp.GradScaler("cuda")` so small gradients do not
# underflow. Whether autocast is faster depends on the hardware computing in the 16-bit type:
# recent GPUs do. On a CPU, look for instructions that compute in bfloat16: Linux lists them as
# the flags `avx512_bf16` (AVX-512 BF16) and `amx_bf16` (AMX) in /proc/cpuinfo. Without them, no
# instruction multiplies bfloat16 directly: a bfloat16 matmul converts its inputs to float32 to
# compute, autocast moves half the bytes but pays for converting, and how well torch's kernels
# handle that path varies, so either step can be the faster one.
#
# `torch.backends.cpu.get_cpu_capability()` does not answer this question: it names the family of
# vector instructions torch's kernels dispatch to ("AVX2", "AVX512", ...), and it says "AVX512"
# whether or not the CPU has the bfloat16 ones. The cell prints what is known (that string, and
# on Linux whether the two flags are listed; "unknown" elsewhere) and times both steps on one
# thread, so that a second thread competing with the machine's other work does not decide the
# result. What to look for: the speed-up and its mark. A marked ratio is as much noise as signal:
# run it again before concluding anything. An unmarked ratio measures this step at this size on
# this machine; to see which operations take the time, profile both steps (`torch.profiler`)
# rather than blame an instruction set.

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


def mixed_precision_step(width: int, batch: int, device: torch.device | str, min_run_time: float,
                         seed: int) -> dict[str, dict[str, object]]:
    """One training step in float32 and under autocast from the same weights: dtypes inside, first loss, time."""
    device = as_device(device)
    generator = seeded(seed)
    initial = reset_linear_layers(MyMLP(width, [width, width], CLASSES), generator)
    x = torch.randn(batch, width, generator=generator).to(device)  # (batch, width)
    target = torch.randint(0, CLASSES, (batch,), generator=generator).to(device)  # (batch,)
    results = {}
    for mode in ("float32", "autocast"):
        model = copy.deepcopy(initial).to(device)  # both modes start from identical weights
        dtypes: dict[str, str] = {}
        step = make_train_step(model, x, target, mode == "autocast", dtypes)
        first_loss = step().item()
        results[mode] = {"dtypes": dtypes, "loss": first_loss, "weight dtype": _dtype_name(model.net[0].weight.dtype),
                         "timing": benchmark(step, device, min_run_time)}
    return results


CPUINFO = Path("/proc/cpuinfo")  # Linux's description of the CPU; absent on macOS and Windows
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of instructions that compute in bfloat16


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The x86 feature flags Linux lists in `cpuinfo`; None where they cannot be read (no such file, or no
    `flags` line, as on other operating systems and on ARM)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.partition(":")[2] for line in text.splitlines() if line.partition(":")[0].strip() == "flags"]
    return {flag for line in lines for flag in line.split()} if lines else None


def cpu_bf16_report(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """What is known about bfloat16 on this CPU: torch's capability string, and each bfloat16 flag's presence
    ("yes", "no", or "unknown" where the flags cannot be read)."""
    flags = cpu_flags(cpuinfo)
    report = {"torch CPU capability": torch.backends.cpu.get_cpu_capability()}
    for flag in BF16_CPU_FLAGS:
        report[f"{flag} flag"] = "unknown" if flags is None else ("yes" if flag in flags else "no")
    return report


def bf16_advice(report: dict[str, str]) -> str:
    """What the flags in `report` let one expect, and what to look at instead of guessing."""
    found = [report[f"{flag} flag"] for flag in BF16_CPU_FLAGS]
    if "yes" in found:
        known = "this CPU lists instructions that compute in bfloat16, which autocast's matmuls can use"
    elif "unknown" in found:
        known = "the flags cannot be read here: the CPU's documentation says whether it computes in bfloat16"
    else:
        known = ("this CPU lists no instructions that compute in bfloat16: its bfloat16 matmuls convert to float32 "
                 "to compute, and either step can be the faster one")
    return (f"{known}. Read the speed-up with its mark (a marked one is noise as much as signal); to see where the "
            "time goes, profile both steps with torch.profiler")


def amp_speedup(results: dict[str, dict[str, object]]) -> tuple[float, bool]:
    """float32 median / autocast median, from the same run (> 1: autocast is faster), and whether either was
    noisy."""
    return median_ratio(results["float32"]["timing"], results["autocast"]["timing"])


def print_mixed_precision(amp, width: int, batch: int, device: torch.device, bf16: dict[str, str]) -> None:
    """The table of both steps, the speed-up of medians, and on the CPU what is known about its bfloat16."""
    print_table(f"Mixed precision: one SGD step of a {width}-wide MLP, batch {batch}, on "
                f"{device.type} (autocast dtype {_dtype_name(autocast_dtype(device))})",
                ["mode", "linear output", "loss", "weights", "weight grad", "first loss",
                 *(f"step {header}" for header in TIMING_HEADERS)],
                [[mode, r["dtypes"]["linear output"], r["dtypes"]["loss"], r["weight dtype"],
                  r["dtypes"]["weight grad"], f"{r['loss']:.4f}", *timing_cells(r["timing"])]
                 for mode, r in amp.items()])
    print(timing_note(amp["float32"]["timing"].threads))
    print(f"autocast speed-up (float32 median / autocast median): {_ratio_cell(*amp_speedup(amp))}")
    if device.type == "cpu":
        print_pairs("bfloat16 on this CPU", {
            "torch CPU capability": f"{bf16['torch CPU capability']} (the vector instructions torch's kernels use; "
                                    "it does not say whether the CPU computes in bfloat16)",
            **{f"{flag} flag": bf16[f"{flag} flag"] for flag in BF16_CPU_FLAGS},
            "what to look for": bf16_advice(bf16),
        })


# %%
if __name__ == "__main__":
    amp = mixed_precision_step(cfg.amp_width, cfg.amp_batch, ctx.device, cfg.min_run_time, ctx.seed)
    print_mixed_precision(amp, cfg.amp_width, cfg.amp_batch, ctx.device, cpu_bf16_report())


# %% [markdown]
# ## Saving, loading and exporting
#
# Save the `state_dict` (names → tensors), not the pickled module; load it into a freshly built
# model with `weights_only=True`, which refuses to unpickle arbitrary code. To run a model
# without its Python class, `torch.export.export` traces it into a self-contained graph whose
# inputs are the parameters, the buffers and the model's own input (TorchScript is deprecated).

# %%
def state_dict_tensor_bytes(model: nn.Module) -> int:
    """Bytes of the tensors in the state_dict (parameters and buffers); the file adds a little metadata."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


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
            "state_dict tensor bytes": state_dict_tensor_bytes(model),
            "state_dict file bytes": size,
            "reloaded max |diff|": (fresh(example) - expected).abs().max().item(),
            "exported max |diff|": (exported.module()(example) - expected).abs().max().item(),
            "exported, batch of 3, max |diff|":
                (exported.module()(other_batch) - model(other_batch)).abs().max().item(),
            "exported graph inputs": sum(node.op == "placeholder" for node in exported.graph.nodes),
        }


# %%
if __name__ == "__main__":
    def rebuild() -> MyMLP:  # the same architecture with fresh weights, as a program that loads the file builds it
        return MyMLP(TABULAR_FEATURES, [64, 64], CLASSES, use_batch_norm=True)

    print_pairs("Saving, loading and exporting",
                save_load_export(rebuild(), torch.randn(8, TABULAR_FEATURES, generator=seeded(ctx.seed)), rebuild))


# %% [markdown]
# ## Architectures compared
#
# Parameter counts from the modules and from the layer shapes, and the forward time of one
# batch in eval mode: median and IQR of timed blocks on one thread. What to look for: parameters
# are not the only cost. Compare "deep MLP" with "deep MLP + BN" (almost the same parameters;
# BatchNorm adds passes over the activations) and the attention row (few parameters, but a
# score matrix per sequence that grows with its length squared). Read a row's IQR before
# comparing it with another: two rows whose difference is within their spread, or a marked
# row, do not show which is faster.

# %%
@dataclass(frozen=True)
class Architecture:
    model: nn.Module
    layout: str  # printed beside the name
    make_input: Callable[[int, torch.Generator], torch.Tensor]  # batch size, generator -> input
    formula: int  # parameter count from the layer shapes


def tabular_input(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, TABULAR_FEATURES, generator=generator)  # (batch, features)


def sequence_input(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(max(1, batch // SEQ_LEN), SEQ_LEN, D_MODEL, generator=generator)  # (batch, seq, d_model)


def mlp_architecture(hidden: Sequence[int], layout: str, use_batch_norm: bool = False) -> Architecture:
    return Architecture(MyMLP(TABULAR_FEATURES, hidden, CLASSES, use_batch_norm=use_batch_norm), layout,
                        tabular_input, mlp_parameter_count(TABULAR_FEATURES, hidden, CLASSES, use_batch_norm))


def architectures() -> dict[str, Architecture]:
    res_dim, res_blocks = 128, 8
    return {
        "small MLP": mlp_architecture([64, 64], "32-64-64-10"),
        "deep MLP": mlp_architecture([256] * 8, "32-[256]x8-10"),
        "deep MLP + BN": mlp_architecture([256] * 8, "32-[256]x8-10, BatchNorm", use_batch_norm=True),
        "residual net": Architecture(ResidualNet(TABULAR_FEATURES, res_dim, res_blocks, CLASSES),
                                     f"32-{res_dim}, {res_blocks} residual blocks, 10", tabular_input,
                                     residual_parameter_count(TABULAR_FEATURES, res_dim, res_blocks, CLASSES)),
        "attention": Architecture(AttentionLayer(D_MODEL), f"d_model {D_MODEL}, seq {SEQ_LEN}", sequence_input,
                                  attention_parameter_count(D_MODEL)),
    }


def architecture_table(batch: int, min_run_time: float, device: torch.device | str,
                       seed: int) -> list[dict[str, object]]:
    device = as_device(device)
    generator = seeded(seed)
    rows = []
    for name, arch in architectures().items():
        model = arch.model.to(device).eval()
        x = arch.make_input(batch, generator).to(device)
        with torch.no_grad():
            timing = benchmark(lambda model=model, x=x: model(x), device, min_run_time)
        rows.append({"name": name, "layout": arch.layout, "parameters": count_parameters(model),
                     "formula": arch.formula, "timing": timing})
    return rows


def print_architectures(rows, batch: int, device: torch.device) -> None:
    print_table(f"Architectures (forward time: batch {batch}, eval mode, on {device.type})",
                ["architecture", "layout", "parameters", "from layer shapes",
                 *(f"forward {header}" for header in TIMING_HEADERS)],
                [[r["name"], r["layout"], r["parameters"], r["formula"], *timing_cells(r["timing"])] for r in rows])
    print(timing_note(rows[0]["timing"].threads))


# %%
if __name__ == "__main__":
    arch_rows = architecture_table(cfg.batch, cfg.min_run_time, ctx.device, ctx.seed)
    print_architectures(arch_rows, cfg.batch, ctx.device)


# %% [markdown]
# ## Summary figure
#
# One picture of the sections above: the parameter counts and forward times (medians) of the
# architectures, the activations of the custom-layers section with their derivatives, the
# initial weights of each scheme, and the gradient norm of every layer from the gradient-flow
# and exploding-gradients sections. `activation_curves` computes the curves (derivatives by autograd); `plot_analysis`
# draws what the sections kept and computes nothing.

# %%
def _whole_decades(values) -> tuple[float, float]:
    """Log-axis limits at the powers of ten around `values`, so that at least two decades are labelled."""
    low = 10.0 ** math.floor(math.log10(min(values)))
    return low, max(10.0 ** math.ceil(math.log10(max(values))), 10 * low)


def plot_analysis(arch_rows, curves, init_stats, flows):
    fig, axes = new_figure(2, 3, "Custom nn.Modules: size, activations, initialisation, speed and gradient flow")
    ax_params, ax_act, ax_init, ax_time, ax_flow, ax_cost = axes.flat
    names = [r["name"] for r in arch_rows]
    short = [n.replace(" + ", "\n+ ").replace(" net", "\nnet") for n in names]
    colors = [f"C{i}" for i in range(len(names))]

    bars = ax_params.bar(range(len(names)), [r["parameters"] / 1e3 for r in arch_rows], color=colors)
    ax_params.bar_label(bars, labels=[f"{r['parameters']:,}" for r in arch_rows], fontsize=8)
    ax_params.set_xticks(range(len(names)), short, fontsize=7)
    ax_params.set(title="Trainable parameters per architecture", ylabel="parameters (thousands)")
    ax_params.margins(y=0.12)

    for i, (name, (y, dy)) in enumerate(curves["outputs"].items()):
        ax_act.plot(curves["x"].numpy(), y.numpy(), color=f"C{i}", label=name)
        ax_act.plot(curves["x"].numpy(), dy.numpy(), color=f"C{i}", linestyle="--", linewidth=1)
    ax_act.set(title="Activations (solid) and derivatives (dashed)", xlabel="input x", ylabel="f(x), f′(x)",
               ylim=(-1.2, 2.5))
    ax_act.legend(fontsize=8)

    for scheme in ("xavier", "kaiming", "torch default", "normal"):
        stats = init_stats[scheme]
        ax_init.hist(stats["weights"].numpy(), bins=80, histtype="step", linewidth=1.5, density=True,
                     label=f"{scheme}: std {stats['measured']:.4f} (theory {stats['theory']:.4f})")
    ax_init.set(yscale="log", title="Initial weights (zeros, not drawn: a spike at 0)",
                xlabel="weight value", ylabel="density (log)")
    ax_init.set_ylim(top=ax_init.get_ylim()[1] * 100)  # room for the legend above the histograms
    ax_init.legend(fontsize=7, loc="upper right")

    times_ms = [r["timing"].median * 1e3 for r in arch_rows]
    bars = ax_time.bar(range(len(names)), times_ms, color=colors)
    ax_time.bar_label(bars, fmt="%.2f ms", fontsize=8)
    ax_time.set_xticks(range(len(names)), short, fontsize=7)
    ax_time.set(title=f"Forward time per architecture (median, {_threads_label(arch_rows[0]['timing'])})",
                ylabel="time (ms)")
    ax_time.margins(y=0.12)

    for name, norms in flows.items():
        ax_flow.plot(range(1, len(norms) + 1), norms, "o-", markersize=3, label=name)
    ax_flow.set(yscale="log", title=f"Gradient norm per layer ({len(next(iter(flows.values())))} layers deep)",
                xlabel="layer (1 = next to the input)", ylabel="‖∂L/∂W‖ (log)")
    ax_flow.legend(fontsize=8)

    for i, row in enumerate(arch_rows):
        ax_cost.scatter(row["parameters"], row["timing"].median * 1e3, color=colors[i], s=40, label=row["name"])
    ax_cost.set(xscale="log", yscale="log", title="Parameters vs forward time (points)", xlabel="parameters (log)",
                ylabel="forward time (ms, log)", xlim=_whole_decades([r["parameters"] for r in arch_rows]),
                ylim=_whole_decades(times_ms))
    ax_cost.legend(fontsize=7)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
    for ax in (ax_init, ax_flow, ax_cost):
        ax.minorticks_off()  # the decades are enough to read these; minor log ticks cost more to draw than the data
    return fig


# %%
if __name__ == "__main__":
    curves = {"x": ACTIVATION_GRID, "outputs": activation_curves(ACTIVATION_GRID)}
    all_flows = {**flows, f"plain tanh, N(0, {EXPLODING_INIT_STD:g}) init (exploding)": exploding["before"]}
    save_figure(plot_analysis(arch_rows, curves, init_stats, all_flows), "custom_modules_analysis.png", ctx.plots_dir)
