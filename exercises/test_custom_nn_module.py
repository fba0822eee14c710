"""Checks for exercises/custom_nn_module.py, each against torch.nn's own layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exercises.checks import check, check_close, check_equal, check_raises_value_error
from exercises.rules import reference

LESSON = "custom_nn_module"


def _build(layers) -> nn.Module:
    """The reference: real torch.nn modules for the layer descriptions of parameter_count."""
    factories = {
        "linear": lambda n_in, n_out: nn.Linear(n_in, n_out),
        "linear_no_bias": lambda n_in, n_out: nn.Linear(n_in, n_out, bias=False),
        "batchnorm": nn.BatchNorm1d,
        "layernorm": nn.LayerNorm,
        "embedding": nn.Embedding,
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "dropout": nn.Dropout,
    }
    return nn.ModuleList([factories[kind](*sizes) for kind, *sizes in layers])


def test_parameter_count(answer):
    cases = [
        [],
        [("linear", 4, 3), ("relu",)],
        [("linear", 784, 128), ("batchnorm", 128), ("relu",), ("dropout", 0.1), ("linear", 128, 10)],
        [("embedding", 100, 16), ("layernorm", 16), ("linear_no_bias", 16, 100), ("tanh",)],
    ]
    for layers in cases:
        with reference():
            model = _build(layers)
        expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
        biases = sum(m.bias.numel() for m in model if isinstance(m, nn.Linear) and m.bias is not None)
        running = sum(b.numel() for m in model if isinstance(m, nn.BatchNorm1d)
                      for b in (m.running_mean, m.running_var))
        got = answer(layers)
        check_equal(got, expected, what=f"parameter_count({layers})",
                    looks_like={f"the Linear biases ({biases}) left out": expected - biases,
                                f"BatchNorm's running mean and variance ({running}) counted as parameters: they "
                                "are buffers": expected + running} if biases or running else {},
                    hint="Count what each layer learns: its weights and its biases or shifts.")
    check_raises_value_error(lambda: answer([("linear", 2, 2), ("conv7", 3)]), what="parameter_count with a "
                             "layer of kind 'conv7'", argument="conv7",
                             hint="Raise ValueError(f\"unknown layer kind {kind!r}\") for kinds you do not know.")


def _layer_norm_variants(x, weight, bias, eps=1e-5) -> dict[str, torch.Tensor]:
    """What the usual slips give, for the diagnosis."""
    with reference():
        return _layer_norm_slips(x, weight, bias, eps)


def _layer_norm_slips(x, weight, bias, eps) -> dict[str, torch.Tensor]:
    centred = x - x.mean(-1, keepdim=True)
    return {"the unbiased variance (divide by n − 1, torch.var's default): LayerNorm divides by n":
                centred / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight + bias,
            "eps added to the standard deviation, sqrt(var) + eps, not inside the square root":
                centred / (torch.sqrt(x.var(-1, correction=0, keepdim=True)) + eps) * weight + bias,
            "eps = 1e-5 whatever the caller passed": F.layer_norm(x, x.shape[-1:], weight, bias, eps=1e-5),
            "the mean and variance of the whole tensor, not of each row's last dimension":
                (x - x.mean()) / torch.sqrt(x.var(correction=0) + eps) * weight + bias}


def test_LayerNorm(answer):
    layer = answer(8)
    params = {name: p for name, p in layer.named_parameters()}
    check(set(params) == {"weight", "bias"}, "LayerNorm(8) must have exactly two parameters, weight and bias.",
          expected="named_parameters(): weight (8,), bias (8,)", got=f"named_parameters(): {sorted(params)}",
          hint="Plain tensors assigned to a module are invisible to .parameters() and to optimizers: nothing "
               "would train them.")
    check_close(params["weight"].detach(), torch.ones(8), what="LayerNorm(8).weight at initialisation",
                rtol=0, atol=0, hint="Start with weight = ones.")
    check_close(params["bias"].detach(), torch.zeros(8), what="LayerNorm(8).bias at initialisation",
                rtol=0, atol=0, hint="Start with bias = zeros.")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        params["weight"].copy_(torch.randn(8, generator=gen))
        params["bias"].copy_(torch.randn(8, generator=gen))
    weight, bias = params["weight"].detach(), params["bias"].detach()
    x = 3 * torch.randn(2, 3, 8, generator=gen) + 1
    hint = "y = (x − mean) / sqrt(var + eps) · weight + bias, with the statistics of each row's last dimension."
    got = layer(x)
    with reference():
        expected = F.layer_norm(x, (8,), weight, bias, eps=1e-5)
    check_close(got, expected, what="LayerNorm(8)(x) for x of shape (2, 3, 8)", rtol=1e-5, atol=1e-5, hint=hint,
                looks_like=_layer_norm_variants(x, weight, bias))
    tiny = 1e-3 * torch.randn(4, 8, generator=gen)  # variance 1e-6, below eps: where eps's place shows
    got = layer(tiny)
    with reference():
        expected = F.layer_norm(tiny, (8,), weight, bias, eps=1e-5)
    check_close(got, expected, what="LayerNorm(8)(x) for x with a tiny spread (std 0.001, variance below eps)",
                rtol=1e-4, atol=1e-5, hint="Where eps goes matters when the variance is small.",
                looks_like=_layer_norm_variants(tiny, weight, bias))
    wide_eps = answer(8, eps=0.1)
    got = wide_eps(x)
    with reference():
        expected = F.layer_norm(x, (8,), eps=0.1)
    check_close(got, expected, what="LayerNorm(8, eps=0.1)(x)", rtol=1e-5, atol=1e-5,
                hint="The eps argument of the constructor must reach forward.",
                looks_like=_layer_norm_variants(x, torch.ones(8), torch.zeros(8), eps=0.1))
    layer64 = answer(8).double()
    with torch.no_grad():
        for p, value in zip((layer64.weight, layer64.bias), (weight, bias)):
            p.copy_(value)
    x64 = x.double().requires_grad_(True)
    grad_output = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(layer64(x64), (x64, layer64.weight, layer64.bias), grad_output)
    with reference():
        leaves = [t.clone().requires_grad_(True) for t in (x64.detach(), weight.double(), bias.double())]
        expected = torch.autograd.grad(F.layer_norm(leaves[0], (8,), leaves[1], leaves[2]), leaves, grad_output)
    for name, got_grad, expected_grad in zip(("x", "weight", "bias"), got, expected):
        check_close(got_grad, expected_grad, what=f"the gradient of LayerNorm with respect to {name} (float64)",
                    rtol=1e-8, atol=1e-10, hint=hint)


def test_record_output_shapes(answer):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Linear(4, 2))
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    got = answer(model, x)
    expected = {"0": (3, 5), "1": (3, 5), "2.0": (3, 4), "2.1": (3, 4), "3": (3, 2)}
    got_plain = {name: tuple(shape) for name, shape in got.items()} if isinstance(got, dict) else got
    with_containers = {"": (3, 2), **expected, "2": (3, 4)}
    inputs = {"0": (3, 6), "1": (3, 5), "2.0": (3, 5), "2.1": (3, 4), "3": (3, 4)}
    looks = {"the containers are in too (the root '' and '2'): they have children": with_containers,
             "these are the shapes of each module's input, not of its output": inputs,
             "every hook wrote under the last name: a hook that reads the loop variable when it runs sees its last "
             "value (late binding); pass the name in, e.g. with a function that builds each hook": {"3": (3, 2)}}
    check(got_plain == expected, "record_output_shapes(model, x) recorded the wrong modules or shapes.",
          expected=expected, got=got_plain, looks_like=looks,
          hint="One entry per leaf module (not the containers: the root '' and '2'), keyed by its name from "
               "named_modules(), holding the shape of what the module returns.")
    leftover = [name or "(the model)" for name, module in model.named_modules() if module._forward_hooks]
    check(not leftover and not nn.modules.module._global_forward_hooks,
          "record_output_shapes left forward hooks behind.", expected="no hooks after the call",
          got=f"hooks on {leftover}", hint="register_forward_hook returns a handle: what undoes the hook?")
    broken = nn.Sequential(nn.Linear(6, 5), nn.Linear(4, 2))  # the second layer cannot take 5 features
    try:
        answer(broken, x)
    except RuntimeError:
        pass
    leftover = [name or "(the model)" for name, module in broken.named_modules() if module._forward_hooks]
    check(not leftover, "record_output_shapes left hooks behind when the forward pass raised.",
          expected="no hooks after the call, even when model(x) raises", got=f"hooks on {leftover}",
          hint="Which Python block runs whether or not model(x) raises?")


def test_MultiHeadSelfAttention(answer):
    check_raises_value_error(lambda: answer(10, 3), what="MultiHeadSelfAttention(d_model=10, n_heads=3)",
                             argument="n_heads", hint="n_heads must divide d_model: raise ValueError whose message "
                                                      "contains 'n_heads', naming both.")
    d_model, n_heads, batch, seq = 8, 2, 3, 5
    with torch.random.fork_rng(devices=[]):  # module initialisation draws from the global RNG: keep it local
        torch.manual_seed(0)
        layer = answer(d_model, n_heads).double()
        with reference():
            mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=torch.float64)
        x = torch.randn(batch, seq, d_model, dtype=torch.float64)
    for attribute, shape in (("in_proj", (3 * d_model, d_model)), ("out_proj", (d_model, d_model))):
        module = getattr(layer, attribute, None)
        check(isinstance(module, nn.Linear) and tuple(module.weight.shape) == shape,
              f"MultiHeadSelfAttention(8, 2) needs an nn.Linear attribute {attribute} with weight shape {shape}.",
              expected=f"self.{attribute} = nn.Linear({shape[1]}, {shape[0]})", got=module,
              hint="Keep the attribute names of the docstring: the check copies their weights into "
                   "nn.MultiheadAttention.")
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.in_proj.weight)
        mha.in_proj_bias.copy_(layer.in_proj.bias)
        mha.out_proj.weight.copy_(layer.out_proj.weight)
        mha.out_proj.bias.copy_(layer.out_proj.bias)
    # True = may not attend: nn.MultiheadAttention's convention (F.scaled_dot_product_attention's is the opposite)
    future = torch.ones(seq, seq, dtype=torch.bool).triu(diagonal=1)
    with reference(), torch.no_grad():
        expected = mha(x, x, x, need_weights=False)[0]
        expected_causal = mha(x, x, x, attn_mask=future, need_weights=False)[0]
        variants = {"scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim)":
                        _attention(layer, x, n_heads, scale=d_model),
                    "heads split (and merged) with a plain view to (batch, heads, seq, head_dim), which mixes "
                    "positions and heads: view as (batch, seq, heads, head_dim), then transpose":
                        _attention(layer, x, n_heads, plain_view=True)}
        variants["heads split right, but merged without the transpose back: reshaping (batch, heads, seq, "
                 "head_dim) straight to (batch, seq, d_model) mixes positions and heads"] = _attention(
            layer, x, n_heads, plain_merge=True)
        causal_variants = {"the mask is the other way round: the past (and the present) masked, the future "
                           "visible; with masked_fill, True marks what is hidden":
                               _attention(layer, x, n_heads, mask=~future)}
    hint = "Each head attends within its own head_dim-wide slice of q, k and v."
    got = layer(x)
    check_close(got, expected, what="MultiHeadSelfAttention(8, 2)(x) for x of shape (3, 5, 8)", rtol=1e-8,
                atol=1e-10, hint=hint, looks_like=variants)
    got_causal = layer(x, causal=True)
    check_close(got_causal, expected_causal, what="MultiHeadSelfAttention(8, 2)(x, causal=True)", rtol=1e-8,
                atol=1e-10, looks_like=causal_variants,
                hint="Causal: position i attends to positions j ≤ i, itself included; only j > i is hidden.")


def _attention(layer, x, n_heads, *, scale=None, plain_view=False, plain_merge=False, mask=None) -> torch.Tensor:
    """Multi-head self-attention with `layer`'s projections and one slip, for the diagnosis."""
    batch, seq, d_model = x.shape
    head_dim = d_model // n_heads
    q, k, v = layer.in_proj(x).chunk(3, dim=-1)
    split = (lambda t: t.reshape(batch, n_heads, seq, head_dim)) if plain_view else (
        lambda t: t.view(batch, seq, n_heads, head_dim).transpose(1, 2))
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-2, -1) / (scale or head_dim) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    attended = scores.softmax(-1) @ v  # (batch, heads, seq, head_dim)
    merged = attended.reshape(batch, seq, d_model) if plain_view or plain_merge else attended.transpose(
        1, 2).reshape(batch, seq, d_model)
    return layer.out_proj(merged)
