"""Checks for exercises/custom_nn_module.py, each against torch.nn's own layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exercises.checks import check, check_close, check_equal, check_raises_value_error, forbidden

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
        expected = sum(p.numel() for p in _build(layers).parameters() if p.requires_grad)
        with forbidden([(nn.Module, "__init__", "a torch.nn module constructor")], exercise="parameter_count",
                       instead="the count from the formulas", hint="Add up in·out + out per Linear, and so on."):
            got = answer(layers)
        check_equal(got, expected, what=f"parameter_count({layers})",
                    hint="Linear: in·out weights + out biases (no biases for linear_no_bias); BatchNorm and "
                         "LayerNorm: 2 per feature (running statistics are buffers); Embedding: num·dim; "
                         "activations and dropout: 0.")
    check_raises_value_error(lambda: answer([("linear", 2, 2), ("conv7", 3)]), what="parameter_count with a "
                             "layer of kind 'conv7'", argument="conv7",
                             hint="Raise ValueError(f\"unknown layer kind {kind!r}\") for kinds you do not know.")


LAYER_NORM_FUNCTIONS = [(F, "layer_norm", "F.layer_norm"), (torch, "layer_norm", "torch.layer_norm"),
                        (torch, "native_layer_norm", "torch.native_layer_norm"),
                        (nn.LayerNorm, "__init__", "nn.LayerNorm")]


def _by_hand(call, exercise, functions, instead, hint):
    """call() with the built-in versions of what the exercise writes by hand made unavailable."""
    with forbidden(functions, exercise=exercise, instead=instead, hint=hint):
        return call()


def test_LayerNorm(answer):
    def layer_norm(call):
        return _by_hand(call, "LayerNorm", LAYER_NORM_FUNCTIONS, "mean, variance and scaling written out",
                        "Use x.mean and x.var(correction=0) over the last dimension, then scale by weight and "
                        "shift by bias.")

    layer = layer_norm(lambda: answer(8))
    params = {name: p for name, p in layer.named_parameters()}
    check(set(params) == {"weight", "bias"}, "LayerNorm(8) must have exactly two parameters, weight and bias.",
          expected="named_parameters(): weight (8,), bias (8,)", got=f"named_parameters(): {sorted(params)}",
          hint="Wrap them in nn.Parameter and assign them to self.weight and self.bias in __init__ (after "
               "super().__init__()); plain tensors are invisible to .parameters() and to optimizers.")
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
    hint = ("Normalise over the last dimension with keepdim=True, the biased variance (divide by n: "
            "correction=0) and eps inside the square root: (x − mean) / sqrt(var + eps) · weight + bias.")
    got = layer_norm(lambda: layer(x))
    check_close(got, F.layer_norm(x, (8,), weight, bias, eps=1e-5), what="LayerNorm(8)(x) for x of shape (2, 3, 8)",
                rtol=1e-5, atol=1e-5, hint=hint)
    tiny = 1e-3 * torch.randn(4, 8, generator=gen)  # variance 1e-6, below eps: where eps's place shows
    got = layer_norm(lambda: layer(tiny))
    check_close(got, F.layer_norm(tiny, (8,), weight, bias, eps=1e-5),
                what="LayerNorm(8)(x) for x with a tiny spread (std 0.001, variance below eps)", rtol=1e-4, atol=1e-5,
                hint="Put eps inside the square root: sqrt(var + eps), not sqrt(var) + eps.")
    wide_eps = layer_norm(lambda: answer(8, eps=0.1))
    got = layer_norm(lambda: wide_eps(x))
    check_close(got, F.layer_norm(x, (8,), eps=0.1), what="LayerNorm(8, eps=0.1)(x)", rtol=1e-5, atol=1e-5,
                hint="Store the eps argument in __init__ and use it in forward.")
    layer64 = layer_norm(lambda: answer(8)).double()
    with torch.no_grad():
        for p, value in zip((layer64.weight, layer64.bias), (weight, bias)):
            p.copy_(value)
    x64 = x.double().requires_grad_(True)
    grad_output = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(layer_norm(lambda: layer64(x64)), (x64, layer64.weight, layer64.bias), grad_output)
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
    check(got_plain == expected, "record_output_shapes(model, x) recorded the wrong modules or shapes.",
          expected=expected, got=got_plain,
          hint="One entry per leaf module (skip the containers: the root '' and '2'), keyed by its name from "
               "named_modules(), holding tuple(output.shape), the shape of what the module returns.")
    leftover = [name or "(the model)" for name, module in model.named_modules() if module._forward_hooks]
    check(not leftover and not nn.modules.module._global_forward_hooks,
          "record_output_shapes left forward hooks behind.", expected="no hooks after the call",
          got=f"hooks on {leftover}", hint="Keep each handle from register_forward_hook and call handle.remove() "
                                           "in a finally: block.")
    broken = nn.Sequential(nn.Linear(6, 5), nn.Linear(4, 2))  # the second layer cannot take 5 features
    try:
        answer(broken, x)
    except RuntimeError:
        pass
    leftover = [name or "(the model)" for name, module in broken.named_modules() if module._forward_hooks]
    check(not leftover, "record_output_shapes left hooks behind when the forward pass raised.",
          expected="no hooks after the call, even when model(x) raises", got=f"hooks on {leftover}",
          hint="Remove the hooks in a `finally:` block, which runs whether or not model(x) raises.")


ATTENTION_FUNCTIONS = [(F, "scaled_dot_product_attention", "F.scaled_dot_product_attention"),
                       (F, "multi_head_attention_forward", "F.multi_head_attention_forward"),
                       (nn.MultiheadAttention, "__init__", "nn.MultiheadAttention")]


def test_MultiHeadSelfAttention(answer):
    check_raises_value_error(lambda: answer(10, 3), what="MultiHeadSelfAttention(d_model=10, n_heads=3)",
                             argument="n_heads", hint="n_heads must divide d_model: raise ValueError whose message "
                                                      "contains 'n_heads' (the docstring says so), naming both.")
    d_model, n_heads, batch, seq = 8, 2, 3, 5
    def attention(call):
        return _by_hand(call, "MultiHeadSelfAttention", ATTENTION_FUNCTIONS, "projections, per-head scores, "
                        "softmax and weighted sums written out",
                        "Per head: scores = q @ k.transpose(-2, -1) / sqrt(head_dim), softmax over the last "
                        "dimension, then @ v.")

    with torch.random.fork_rng(devices=[]):  # module initialisation draws from the global RNG: keep it local
        torch.manual_seed(0)
        layer = attention(lambda: answer(d_model, n_heads)).double()
        reference = nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=torch.float64)
        x = torch.randn(batch, seq, d_model, dtype=torch.float64)
    for attribute, shape in (("in_proj", (3 * d_model, d_model)), ("out_proj", (d_model, d_model))):
        module = getattr(layer, attribute, None)
        check(isinstance(module, nn.Linear) and tuple(module.weight.shape) == shape,
              f"MultiHeadSelfAttention(8, 2) needs an nn.Linear attribute {attribute} with weight shape {shape}.",
              expected=f"self.{attribute} = nn.Linear({shape[1]}, {shape[0]})", got=module,
              hint="Keep the attribute names of the docstring: the check copies their weights into "
                   "nn.MultiheadAttention.")
    with torch.no_grad():
        reference.in_proj_weight.copy_(layer.in_proj.weight)
        reference.in_proj_bias.copy_(layer.in_proj.bias)
        reference.out_proj.weight.copy_(layer.out_proj.weight)
        reference.out_proj.bias.copy_(layer.out_proj.bias)
    hint = ("Split heads with view(batch, seq, n_heads, head_dim).transpose(1, 2), scale scores by "
            "1/sqrt(head_dim), and merge with transpose(1, 2).reshape(batch, seq, d_model).")
    expected = reference(x, x, x, need_weights=False)[0]
    got = attention(lambda: layer(x))
    check_close(got, expected, what="MultiHeadSelfAttention(8, 2)(x) for x of shape (3, 5, 8)", rtol=1e-8,
                atol=1e-10, hint=hint)
    # True = may not attend: nn.MultiheadAttention's convention (F.scaled_dot_product_attention's is the opposite)
    future = torch.ones(seq, seq, dtype=torch.bool).triu(diagonal=1)
    expected_causal = reference(x, x, x, attn_mask=future, need_weights=False)[0]
    got_causal = attention(lambda: layer(x, causal=True))
    check_close(got_causal, expected_causal, what="MultiHeadSelfAttention(8, 2)(x, causal=True)", rtol=1e-8,
                atol=1e-10,
                hint="Causal: position i attends to positions j ≤ i, itself included. Mask only j > i: "
                     "torch.ones(seq, seq, dtype=torch.bool).triu(diagonal=1), filled with -inf.")
