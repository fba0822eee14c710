"""Exercises for lesson 4, custom_nn_module.py: parameter counts, a custom layer, hooks, multi-head attention.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_custom_nn_module.py      (this lesson, with messages)
    python -m pytest exercises -k LayerNorm                 (one exercise)
Reference solutions: exercises/solutions/custom_nn_module.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def parameter_count(layers: Sequence[tuple]) -> int:
    """Task: the number of trainable parameters in a stack of layers described as tuples, from the formulas
    alone (build no modules).

    Section: "A configurable MLP" in custom_nn_module.py (lesson 4).
    Signature: parameter_count(layers) -> int
    Shapes: the layer descriptions are
        ("linear", in_features, out_features)           nn.Linear with a bias
        ("linear_no_bias", in_features, out_features)   nn.Linear(..., bias=False)
        ("batchnorm", num_features)                     nn.BatchNorm1d
        ("layernorm", normalized_size)                  nn.LayerNorm
        ("embedding", num_embeddings, embedding_dim)    nn.Embedding
        ("relu",) ("tanh",) ("dropout", p)              no parameters
    Any other kind raises ValueError naming it. An empty list has 0 parameters.
    Example: parameter_count([("linear", 4, 3), ("relu",)]) -> 15
    Rule: from the formulas: build no modules.
    Hint: count what each layer learns; running statistics are buffers, not parameters.
    """
    raise NotImplementedError


class LayerNorm(nn.Module):
    """Task: layer normalisation over the last dimension, equal to nn.LayerNorm(normalized_size, eps), written
    with tensor operations (no nn.LayerNorm, no F.layer_norm).

    Section: "Custom layers: Swish and inverted dropout" in custom_nn_module.py (lesson 4).
    Signature: LayerNorm(normalized_size, eps=1e-5); forward(x) -> Tensor
    Shapes: x (..., normalized_size) -> same shape; parameters weight (normalized_size,) initialised to ones
    and bias (normalized_size,) initialised to zeros.
    y = (x − mean) / sqrt(var + eps) · weight + bias, with mean and var over the last dimension.
    Rule: tensor operations only: no nn.LayerNorm or F.layer_norm.
    Hint: normalise each row over its last dimension, then let learned parameters scale and shift it.
    """

    def __init__(self, normalized_size: int, eps: float = 1e-5):
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def record_output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Task: run model(x) once and record the output shape of every leaf module (one without children) with
    forward hooks; remove every hook before returning, even if the forward pass raises.

    Section: "Looking inside: hooks" in custom_nn_module.py (lesson 4).
    Signature: record_output_shapes(model, x) -> dict[str, tuple[int, ...]]
    Shapes: keys are the names from model.named_modules() (e.g. "0", "2.1"), values tuple(output.shape).
    Example: for nn.Sequential(nn.Linear(6, 5), nn.ReLU()) and x (3, 6): {"0": (3, 5), "1": (3, 5)}
    Hint: a forward hook sees each module's output; a hook left behind fires on every later call.
    """
    raise NotImplementedError


class MultiHeadSelfAttention(nn.Module):
    """Task: multi-head self-attention with an optional causal mask, equal to nn.MultiheadAttention(d_model,
    n_heads, batch_first=True) given the same weights, written with tensor operations.

    Section: "Self-attention" in custom_nn_module.py (lesson 4).
    Signature: MultiHeadSelfAttention(d_model, n_heads); forward(x, causal=False) -> Tensor. Attributes
    in_proj = nn.Linear(d_model, 3 * d_model) (q, k, v stacked in that order) and
    out_proj = nn.Linear(d_model, d_model). If n_heads does not divide d_model, raise ValueError whose
    message contains the text "n_heads" (the check looks for it), e.g. f"n_heads={n_heads} must divide
    d_model={d_model}".
    Causal: forward takes a flag, not a mask. causal=True means position i may attend to positions j ≤ i
    (itself included) and never to j > i. Build whichever mask you like inside forward, and mind its
    convention: with masked_fill, True marks the scores to fill with -inf (True = masked). The check
    compares with nn.MultiheadAttention given attn_mask = the bool matrix that is True above the
    diagonal, because nn.MultiheadAttention's bool mask means True = may NOT attend, the opposite of
    F.scaled_dot_product_attention's (True = may attend).
    Shapes: x (batch, seq, d_model) -> (batch, seq, d_model); per head, q, k, v are (batch, n_heads, seq,
    head_dim) with head_dim = d_model // n_heads, and the scores (batch, n_heads, seq, seq).
    Rule: tensor operations only: no scaled_dot_product_attention or nn.MultiheadAttention.
    Hint: each head attends within its own slice of d_model; the causal mask hides the future, not the present.
    """

    def __init__(self, d_model: int, n_heads: int):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        raise NotImplementedError
