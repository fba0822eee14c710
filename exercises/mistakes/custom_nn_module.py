"""Plausible wrong answers to the exercises of lesson 4 (custom_nn_module.py), each a small change to
exercises/solutions/custom_nn_module.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

LAYER_NORM_FORWARD = (
    "mean = x.mean(dim=-1, keepdim=True)  # (..., 1)\n"
    "        var = x.var(dim=-1, correction=0, keepdim=True)  # (..., 1), biased: divide by n\n"
    "        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias"
)
HOOKS_REMOVED_IN_FINALLY = (
    "try:\n"
    "        model(x)\n"
    "    finally:\n"
    "        for handle in handles:\n"
    "            handle.remove()"
)
ATTENTION = (
    "scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (batch, heads, seq, seq)\n"
    "        if causal:\n"
    "            # True = masked (masked_fill's reading, and nn.MultiheadAttention's): the future, j > i\n"
    "            future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(diagonal=1)\n"
    '            scores = scores.masked_fill(future, float("-inf"))\n'
    "        attended = scores.softmax(dim=-1) @ v  # (batch, heads, seq, head_dim)"
)

MISTAKES = [
    Mistake("parameter_count", "forgets_biases", "Counts in·out for every Linear, leaving out the biases.",
            change={"total += n_in * n_out + n_out  # weight + bias": "total += n_in * n_out  # weight"},
            shows="the Linear biases (3) left out"),
    Mistake("parameter_count", "counts_running_statistics",
            "Counts BatchNorm's running mean and variance as parameters: 4 per feature.",
            change={'elif kind in ("batchnorm", "layernorm"):':
                    'elif kind == "batchnorm":\n'
                    "            (features,) = sizes\n"
                    "            total += 4 * features  # γ, β, running mean and running variance\n"
                    '        elif kind == "layernorm":'},
            shows="BatchNorm's running mean and variance (256) counted as parameters"),
    Mistake("parameter_count", "unknown_kind_is_zero", "Counts unknown kinds as 0 instead of raising ValueError.",
            change={'        elif kind not in ("relu", "tanh", "dropout"):\n'
                    '            raise ValueError(f"unknown layer kind {kind!r}")\n': ""},
            shows="parameter_count with a layer of kind 'conv7' did not raise ValueError"),
    Mistake("parameter_count", "builds_modules", "Right numbers, but builds the modules and counts their parameters.",
            setup='MODULES = {"linear": nn.Linear, "linear_no_bias": lambda i, o: nn.Linear(i, o, bias=False),\n'
                  '           "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm, "embedding": nn.Embedding,\n'
                  '           "relu": nn.ReLU, "tanh": nn.Tanh, "dropout": nn.Dropout}',
            change={"    total = 0\n": "    return sum(p.numel() for kind, *sizes in layers\n"
                                        "               for p in MODULES[kind](*sizes).parameters())\n"
                                        "    total = 0\n"},
            shows="breaks a rule of this exercise: from the formulas"),
    Mistake("parameter_count", "endless_loop",
            "A while loop over the layers that never moves on: it runs forever on any non-empty list.",
            change={"for kind, *sizes in layers:": "while layers:\n        kind, *sizes = layers[0]"},
            shows="an endless loop?"),

    Mistake("LayerNorm", "unbiased_variance", "Divides the variance by n − 1 (torch.var's default) instead of n.",
            change={"x.var(dim=-1, correction=0, keepdim=True)  # (..., 1), biased: divide by n":
                    "x.var(dim=-1, keepdim=True)  # (..., 1)"},
            shows="the unbiased variance (divide by n − 1, torch.var's default)"),
    Mistake("LayerNorm", "eps_outside_sqrt", "Adds eps to the standard deviation: sqrt(var) + eps.",
            change={"torch.sqrt(var + self.eps)": "(torch.sqrt(var) + self.eps)"},
            shows="eps added to the standard deviation, sqrt(var) + eps, not inside the"),
    Mistake("LayerNorm", "forgotten_keepdim",
            "Reduces without keepdim=True: the (…,) statistics no longer broadcast against (…, n).",
            change={"x.mean(dim=-1, keepdim=True)  # (..., 1)": "x.mean(dim=-1)  # (...,)",
                    "x.var(dim=-1, correction=0, keepdim=True)  # (..., 1)": "x.var(dim=-1, correction=0)  # (...,)"},
            shows="two shapes that do not line up"),
    Mistake("LayerNorm", "plain_tensors",
            "Stores weight and bias as plain tensors: not parameters, so nothing would train them.",
            change={"nn.Parameter(torch.ones(normalized_size))": "torch.ones(normalized_size)",
                    "nn.Parameter(torch.zeros(normalized_size))": "torch.zeros(normalized_size)"},
            shows="LayerNorm(8) must have exactly two parameters, weight and bias"),
    Mistake("LayerNorm", "ignores_eps_argument", "Uses a fixed 1e-5 whatever eps the caller passes.",
            change={"var + self.eps": "var + 1e-5"},
            shows="eps = 1e-5 whatever the caller passed"),
    Mistake("LayerNorm", "calls_F_layer_norm", "Right numbers, but hands the work to F.layer_norm.",
            setup="import torch.nn.functional as F",
            change={LAYER_NORM_FORWARD: "return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)"},
            shows="breaks a rule of this exercise: tensor operations only"),

    Mistake("record_output_shapes", "hooks_left_behind", "Never removes its hooks.",
            change={HOOKS_REMOVED_IN_FINALLY: "model(x)"},
            shows="record_output_shapes left forward hooks behind"),
    Mistake("record_output_shapes", "includes_containers",
            "Hooks every module, the root and the nested Sequential included.",
            change={" if not list(module.children())": ""},
            shows="the containers are in too (the root '' and '2')"),
    Mistake("record_output_shapes", "input_shapes", "Records each module's input shape instead of its output shape.",
            change={"tuple(output.shape)": "tuple(inputs[0].shape)"},
            shows="these are the shapes of each module's input, not of its output"),
    Mistake("record_output_shapes", "no_finally", "Removes the hooks only when the forward pass succeeds.",
            change={HOOKS_REMOVED_IN_FINALLY: "model(x)\n    for handle in handles:\n        handle.remove()"},
            shows="record_output_shapes left hooks behind when the forward pass raised"),

    Mistake("MultiHeadSelfAttention", "heads_without_transpose",
            "Splits heads with a plain view to (batch, heads, seq, head_dim), mixing positions and heads.",
            change={"t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)":
                    "t.reshape(batch, self.n_heads, seq, self.head_dim)",
                    "attended.transpose(1, 2).reshape(batch, seq, d_model)": "attended.reshape(batch, seq, d_model)"},
            shows="heads split (and merged) with a plain view to (batch, heads, seq,"),
    Mistake("MultiHeadSelfAttention", "scaled_by_d_model",
            "Scales the scores by 1/sqrt(d_model) instead of 1/sqrt(head_dim).",
            change={"math.sqrt(self.head_dim)": "math.sqrt(d_model)"},
            shows="scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim)"),
    Mistake("MultiHeadSelfAttention", "mask_hides_diagonal",
            "Causal mask triu(diagonal=0): a position may not attend to itself, and the first sees nothing (NaN).",
            change={".triu(diagonal=1)": ".triu(diagonal=0)"},
            shows="yours holds NaN in 3 row(s), e.g. row [0, 0], where the expected"),
    Mistake("MultiHeadSelfAttention", "uses_sdpa",
            "Right numbers, but calls F.scaled_dot_product_attention for the attention itself.",
            setup="import torch.nn.functional as F",
            change={ATTENTION: "attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)"},
            shows="breaks a rule of this exercise: tensor operations only"),
    Mistake("MultiHeadSelfAttention", "mask_inverted",
            "Causal mask from tril() (True = may attend: F.scaled_dot_product_attention's convention) given to "
            "masked_fill (True = masked): it hides the past and the present instead of the future.",
            change={".triu(diagonal=1)": ".tril()"},
            shows="the mask is the other way round"),

    # The rules, reached another way: a direct call, an import under another name, a wrapper.
    Mistake("parameter_count", "linear_alias", "Counts a Linear by building one, imported under another name.",
            setup="from torch.nn import Linear as Dense",
            change={"total += n_in * n_out + n_out  # weight + bias":
                    "total += sum(p.numel() for p in Dense(n_in, n_out).parameters())"},
            shows="breaks a rule of this exercise: from the formulas"),
    Mistake("LayerNorm", "layer_norm_alias", "A forward that builds nn.LayerNorm, imported under another name.",
            setup="from torch.nn import LayerNorm as Norm",
            change={LAYER_NORM_FORWARD: "return Norm(x.shape[-1], self.eps)(x) * self.weight + self.bias"},
            shows="breaks a rule of this exercise: tensor operations only"),
    Mistake("MultiHeadSelfAttention", "sdpa_alias",
            "Right numbers, from F.scaled_dot_product_attention imported under another name.",
            setup="from torch.nn.functional import scaled_dot_product_attention as attend",
            change={ATTENTION: "attended = attend(q, k, v, is_causal=causal)"},
            shows="breaks a rule of this exercise: tensor operations only"),
]
