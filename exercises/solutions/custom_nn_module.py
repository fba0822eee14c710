"""Reference solutions for exercises/custom_nn_module.py (the docstrings there state each task)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def parameter_count(layers: Sequence[tuple]) -> int:
    """Sum of the per-layer formulas."""
    total = 0
    for kind, *sizes in layers:
        if kind == "linear":
            n_in, n_out = sizes
            total += n_in * n_out + n_out  # weight + bias
        elif kind == "linear_no_bias":
            n_in, n_out = sizes
            total += n_in * n_out
        elif kind in ("batchnorm", "layernorm"):
            (features,) = sizes
            total += 2 * features  # scale γ and shift β; running statistics are buffers
        elif kind == "embedding":
            n_embeddings, dim = sizes
            total += n_embeddings * dim
        elif kind not in ("relu", "tanh", "dropout"):
            raise ValueError(f"unknown layer kind {kind!r}")
    return total


class LayerNorm(nn.Module):
    """Normalise over the last dimension, then scale and shift."""

    def __init__(self, normalized_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_size))
        self.bias = nn.Parameter(torch.zeros(normalized_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = x.var(dim=-1, correction=0, keepdim=True)  # (..., 1), biased: divide by n
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def record_output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Forward hooks on the leaves, removed in finally."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape)
        return hook

    handles = [module.register_forward_hook(recorder(name))
               for name, module in model.named_modules() if not list(module.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


class MultiHeadSelfAttention(nn.Module):
    """Project, split heads, scaled dot-product attention per head, merge, project."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # each (batch, seq, d_model)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)
        if causal:
            # True = masked (masked_fill's reading, and nn.MultiheadAttention's): the future, j > i
            future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        attended = scores.softmax(dim=-1) @ v  # (batch, heads, seq, head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, seq, d_model))
