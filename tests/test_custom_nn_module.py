"""custom_nn_module: modules checked against torch.nn / torch.nn.functional, closed forms and hand counts.

The quick end-to-end run of the script (figures, reproducibility, exit codes) is in test_reliability.py;
here it runs once to check the printed tables against the functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, FAKE_IQR_S, FAKE_MEDIAN_S, readme_quotes, run_script, unprinted_quotes
from torch import nn

import custom_nn_module as cm
from lesson_harness import NOISY_MARK, TIMING_HEADERS, Timing, timing_note


def timings(*medians: float, noisy: Sequence[bool] = ()) -> Iterator[Timing]:
    """Timings with these medians, a 1 % IQR and one thread; the ones flagged in `noisy` are marked noisy."""
    flags = list(noisy) + [False] * (len(medians) - len(noisy))
    return iter([Timing(m, m / 100, 1, flag) for m, flag in zip(medians, flags)])


def fake_benchmark(results: Iterator[Timing], calls: list | None = None):
    """A stand-in for lesson_harness.benchmark: runs fn once (it must work), records the call, returns the next."""
    def fake(fn, device="cpu", min_run_time=0.2, threads=1):
        fn()
        if calls is not None:
            calls.append((torch.device(device).type, min_run_time, threads))
        return next(results)
    return fake

# --- MLP and parameter counts -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("hidden", "activation", "dropout", "bn"), [
    ([], "relu", 0.0, False), ([16], "tanh", 0.2, False), ([16, 8], "gelu", 0.0, True), ([4, 4, 4], "swish", 0.5, True),
])
def test_mlp_shapes_and_parameter_counts(hidden, activation, dropout, bn):
    torch.manual_seed(0)
    model = cm.MyMLP(7, hidden, 3, activation=activation, dropout_rate=dropout, use_batch_norm=bn)
    assert cm.output_shape(model, 5, seed=0) == (5, 3)
    assert cm.count_parameters(model) == cm.mlp_parameter_count(7, hidden, 3, use_batch_norm=bn)
    # Independent count: torch's own Linear/BatchNorm modules summed by hand.
    by_hand = sum(m.weight.numel() + m.bias.numel()
                  for m in model.modules() if isinstance(m, nn.Linear | nn.BatchNorm1d))
    assert cm.count_parameters(model) == by_hand
    # BatchNorm and dropout only between hidden layers: the last module is the output Linear.
    assert isinstance(model.net[-1], nn.Linear)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == (len(hidden) if bn else 0)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == (len(hidden) if dropout else 0)


def test_parameter_formulas_match_hand_counts_and_modules():
    assert cm.linear_parameter_count(3, 5) == 3 * 5 + 5
    assert cm.mlp_parameter_count(32, [64, 64], 10) == (32 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10) == 6_922
    assert cm.mlp_parameter_count(4, [6], 2, use_batch_norm=True) == (4 * 6 + 6) + 2 * 6 + (6 * 2 + 2)
    assert cm.residual_parameter_count(5, 8, 3, 2) == (5 * 8 + 8) + 3 * 2 * (8 * 8 + 8) + (8 * 2 + 2)
    assert cm.attention_parameter_count(6) == 3 * (6 * 6 + 6)
    for blocks in (1, 3):
        assert cm.count_parameters(cm.ResidualNet(5, 8, blocks, 2)) == cm.residual_parameter_count(5, 8, blocks, 2)
    for d_model in (4, 6):
        assert cm.count_parameters(cm.AttentionLayer(d_model)) == cm.attention_parameter_count(d_model)


def test_count_parameters_ignores_frozen_parameters():
    model = cm.MyMLP(4, [8], 2)
    model.net[0].weight.requires_grad_(False)
    assert cm.count_parameters(model) == cm.mlp_parameter_count(4, [8], 2) - 32


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"activation": "softmax"}, "unknown activation 'softmax'"),
    ({"dropout_rate": 1.0}, "dropout_rate=1.0"),
    ({"dropout_rate": -0.1}, "dropout_rate=-0.1"),
])
def test_mlp_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cm.MyMLP(4, [8], 2, **kwargs)


@pytest.mark.parametrize(("args", "message"), [((0, [8], 2), "input_size=0"), ((4, [8, 0], 2), "hidden_sizes"),
                                               ((4, [8], -1), "output_size=-1")])
def test_mlp_rejects_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        cm.MyMLP(*args)


def test_architecture_table_counts_formulas_and_times(monkeypatch):
    calls = []
    monkeypatch.setattr(cm, "benchmark", fake_benchmark(timings(1e-3, 2e-3, 3e-3, 4e-3, 5e-3), calls))
    rows = cm.architecture_table(batch=16, min_run_time=0.005, device="cpu", seed=0)
    assert calls == [("cpu", 0.005, 1)] * 5  # one thread each: the harness's default, never the machine's count
    assert [r["name"] for r in rows] == ["small MLP", "deep MLP", "deep MLP + BN", "residual net", "attention"]
    assert [r["parameters"] for r in rows] == [r["formula"] for r in rows]
    # By hand: 32-64-64-10; 32-[256]x8-10 (+ γ, β per hidden layer); stem + 8·2 Linear(128) + head; q, k, v.
    assert [r["parameters"] for r in rows] == [
        6_922, 32 * 256 + 256 + 7 * (256 * 256 + 256) + 256 * 10 + 10, 471_562 + 8 * 2 * 256,
        32 * 128 + 128 + 16 * (128 * 128 + 128) + 128 * 10 + 10, 3 * (64 * 64 + 64)]
    assert [r["timing"].median for r in rows] == [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]


def test_architecture_printer_shows_median_iqr_mark_and_the_thread_note(capsys):
    rows = [{"name": "small MLP", "layout": "a", "parameters": 10, "formula": 10,
             "timing": Timing(2e-3, 5e-5, 1, False)},
            {"name": "attention", "layout": "b", "parameters": 20, "formula": 20,
             "timing": Timing(4e-3, 1e-3, 1, True)}]
    cm.print_architectures(rows, 16, torch.device("cpu"))
    printed = capsys.readouterr().out
    assert re.search(r"^architecture\s.*\sforward median\s+forward IQR\s*$", printed, re.M)
    assert re.search(_row("small MLP", "a", "10", "10", "2 ms", "2 %"), printed, re.M)
    assert re.search(_row("attention", "b", "20", "20", "4 ms", f"25 % {NOISY_MARK}"), printed, re.M)
    assert printed.rstrip().endswith(timing_note(1))


# --- residual, attention, dynamic ---------------------------------------------------------------------------------

def test_residual_block_is_identity_plus_f():
    torch.manual_seed(0)
    block = cm.ResidualBlock(6)
    x = torch.randn(3, 6)
    torch.testing.assert_close(block(x), x + block.f(x), rtol=0, atol=0)
    nn.init.zeros_(block.f[2].weight)
    nn.init.zeros_(block.f[2].bias)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)  # f = 0 leaves the identity
    assert cm.ResidualNet(5, 8, 3, 2)(torch.randn(4, 5)).shape == (4, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_scaled_dot_product_attention(masked):
    torch.manual_seed(0)
    layer = cm.AttentionLayer(16).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    mask = cm.causal_mask(7) if masked else None
    expected = F.scaled_dot_product_attention(layer.query(x), layer.key(x), layer.value(x), attn_mask=mask)
    torch.testing.assert_close(layer(x, mask), expected, rtol=1e-10, atol=1e-12)
    weights = layer.attention_weights(x, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    if masked:
        assert torch.all(weights.triu(diagonal=1) == 0)  # nothing attends to the future


def test_attention_vs_sdpa_reports_round_off_only_and_detects_a_wrong_layer():
    torch.manual_seed(0)
    layer = cm.AttentionLayer(16)
    x = torch.randn(2, 5, 16)
    diffs = cm.attention_vs_sdpa(layer, x)
    assert list(diffs) == ["no mask", "causal mask"]
    assert all(0 <= d <= 1e-6 for d in diffs.values())  # float32: equal up to round-off
    assert all(d <= 1e-12 for d in cm.attention_vs_sdpa(layer.double(), x.double()).values())

    class Unscaled(cm.AttentionLayer):  # forgets the 1/√d: a different softmax
        def forward(self, x, mask=None):
            scores = self.query(x) @ self.key(x).transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return scores.softmax(-1) @ self.value(x)

    class Unmasked(cm.AttentionLayer):  # ignores the mask
        def forward(self, x, mask=None):
            return super().forward(x)

    for broken, label in ((Unscaled(16), "no mask"), (Unmasked(16), "causal mask")):
        broken.load_state_dict(layer.state_dict())
        assert cm.attention_vs_sdpa(broken, x)[label] > 1e-2


def test_attention_accepts_a_per_batch_mask_and_rejects_bad_input():
    torch.manual_seed(0)
    layer = cm.AttentionLayer(8)
    x = torch.randn(2, 4, 8)
    mask = torch.rand(2, 4, 4) > 0.3
    mask[..., 0] = True  # every query may attend somewhere
    expected = F.scaled_dot_product_attention(layer.query(x), layer.key(x), layer.value(x), attn_mask=mask)
    torch.testing.assert_close(layer(x, mask), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bool"):
        layer(x, mask.float())
    with pytest.raises(ValueError, match=r"\(batch, seq, 8\)"):
        layer(torch.randn(4, 8))


def _multihead(d_model: int, heads: int, seed: int) -> nn.MultiheadAttention:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.MultiheadAttention(d_model, heads, batch_first=True, dtype=torch.float64)


def _sdpa_with_weights_of(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention's computation written out around F.scaled_dot_product_attention."""
    batch, seq, d = x.shape
    heads = mha.num_heads

    def split(t):
        return t.view(batch, seq, heads, d // heads).transpose(1, 2)  # (batch, heads, seq, head_dim)

    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return mha.out_proj(out.transpose(1, 2).reshape(batch, seq, d))


def test_bool_mask_conventions_disagree_and_agree_after_inverting():
    """SDPA: True = may attend. nn.MultiheadAttention: True = may not. The same bool mask means opposite things."""
    mha = _multihead(8, 2, seed=0)
    x = torch.randn(3, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    allowed = cm.causal_mask(6)
    with torch.no_grad():
        sdpa = _sdpa_with_weights_of(mha, x, allowed)
        same = mha(x, x, x, attn_mask=allowed)[0]
        inverted = mha(x, x, x, attn_mask=~allowed)[0]
        additive = mha(x, x, x, attn_mask=cm.additive_mask(allowed).double())[0]
        sdpa_additive = _sdpa_with_weights_of(mha, x, cm.additive_mask(allowed).double())
    assert not torch.isnan(sdpa).any()
    assert (same[:, :-1] - sdpa[:, :-1]).abs().max() > 1e-2  # the trap: anti-causal on every other row
    for fixed in (inverted, additive, sdpa_additive):
        torch.testing.assert_close(fixed, sdpa, rtol=1e-10, atol=1e-12)
    # The anti-causal reading, by hand: MHA with `allowed` is SDPA with the complement (strictly the future).
    torch.testing.assert_close(same[:, :-1], _sdpa_with_weights_of(mha, x, ~allowed)[:, :-1], rtol=1e-10, atol=1e-12)


def test_additive_mask_is_torchs_causal_float_mask_and_means_the_same_to_both_apis():
    for seq in (1, 4, 7):
        torch.testing.assert_close(cm.additive_mask(cm.causal_mask(seq)),
                                   nn.Transformer.generate_square_subsequent_mask(seq), rtol=0, atol=0)
    allowed = torch.tensor([[True, False], [False, True]])
    assert cm.additive_mask(allowed).tolist() == [[0.0, -math.inf], [-math.inf, 0.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nan_rows_are_exactly_the_fully_masked_rows(seed):
    """nn.MultiheadAttention's default call: a row whose every key is masked is 0/0, NaN; every other row is
    finite. SDPA gives zeros for such a row instead (on the torch versions under test)."""
    generator = torch.Generator().manual_seed(seed)
    mha = _multihead(8, 2, seed)
    x = torch.randn(2, 6, 8, dtype=torch.float64, generator=generator)
    blocked = torch.rand(6, 6, generator=generator) > 0.5  # nn.MultiheadAttention's convention: True = masked
    blocked[[1, 4]] = True  # rows 1 and 4 see nothing
    blocked[[0, 2, 3, 5], [0, 2, 3, 5]] = False  # every other row sees at least itself
    with torch.no_grad():
        out = mha(x, x, x, attn_mask=blocked)[0]
        sdpa = _sdpa_with_weights_of(mha, x, ~blocked)
    assert cm.nan_rows(out) == [1, 4] == torch.nonzero(blocked.all(dim=-1)).flatten().tolist()
    assert not torch.isnan(sdpa).any()
    before_out_proj = F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], attn_mask=~blocked)
    assert torch.count_nonzero(before_out_proj[:, 0, [1, 4]]) == 0
    torch.testing.assert_close(out[:, [0, 2, 3, 5]], sdpa[:, [0, 2, 3, 5]], rtol=1e-10, atol=1e-12)
    # The lesson's AttentionLayer (masked_fill −inf, softmax) also gives NaN where its own mask allows nothing.
    layer = cm.AttentionLayer(8).double()
    assert cm.nan_rows(layer(x, ~blocked).detach()) == [1, 4]


def test_multihead_from_attention_layer_computes_what_the_layer_computes():
    torch.manual_seed(0)
    layer = cm.AttentionLayer(16).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mha = cm.multihead_from_attention_layer(layer)
    assert mha.num_heads == 1
    with torch.no_grad():
        torch.testing.assert_close(mha(x, x, x)[0], layer(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mha(x, x, x, attn_mask=~cm.causal_mask(5))[0], layer(x, cm.causal_mask(5)),
                                   rtol=1e-10, atol=1e-12)


def test_sees_later_inputs_tells_causal_from_non_causal_attention():
    torch.manual_seed(0)
    layer = cm.AttentionLayer(8)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert not cm.sees_later_inputs(lambda t: layer(t, cm.causal_mask(5)), x)
        assert cm.sees_later_inputs(lambda t: layer(t), x)  # no mask: every position reads every other
        assert not cm.sees_later_inputs(lambda t: t * 2, x)  # position-wise: nothing crosses positions


def test_mask_conventions_rows_show_the_trap_and_both_fixes():
    torch.manual_seed(0)
    layer = cm.AttentionLayer(16)
    x = torch.randn(2, 5, 16)
    rows = cm.mask_conventions(layer, x)
    assert [r["call"] for r in rows] == ["F.scaled_dot_product_attention, bool mask",
                                         "nn.MultiheadAttention, the same bool mask", "nn.MultiheadAttention, ~mask",
                                         "nn.MultiheadAttention, float mask (0 / −inf)",
                                         "F.scaled_dot_product_attention, float mask"]
    trap, *fixed = rows[1], rows[0], *rows[2:]
    assert trap["nan rows"] == [4] and trap["sees later inputs"] and trap["max |diff|"] > 1e-2
    for row in fixed:
        assert row["nan rows"] == [] and not row["sees later inputs"] and row["max |diff|"] <= 1e-6, row


def test_mask_conventions_printer(capsys):
    rows = [{"call": "a", "nan rows": [], "max |diff|": 0.0, "sees later inputs": False},
            {"call": "b", "nan rows": [3, 4], "max |diff|": 1.5, "sees later inputs": True}]
    cm.print_mask_conventions(rows, 5)
    printed = capsys.readouterr().out
    assert re.search(_row("a", "none", "0.0e+00", "no"), printed, re.M)
    assert re.search(_row("b", "3, 4", "1.5e+00", "yes"), printed, re.M)


def test_dynamic_depth_demo_matches_an_unrolled_forward():
    torch.manual_seed(0)
    net = cm.DynamicDepthNet(8, max_depth=4)
    net(torch.zeros(2, 8))
    assert net.last_depth == 1
    net(torch.full((2, 8), 10.0))
    assert net.last_depth == 4
    rows = cm.dynamic_depth_demo(net, (0.5, 2.0, 5.0), seed=3)
    generator = torch.Generator().manual_seed(3)
    weight = net.shared.weight.detach().clone().requires_grad_(True)
    for row, scale in zip(rows, (0.5, 2.0, 5.0)):
        x = torch.randn(4, 8, generator=generator) * scale
        depth = min(4, max(1, round(x.norm(dim=-1).mean().item() / 2)))
        h = x
        for _ in range(depth):
            h = torch.tanh(h @ weight.T + net.shared.bias.detach())
        (grad,) = torch.autograd.grad(net.head(h).sum(), weight)
        assert row["scale"] == scale and row["depth"] == depth
        assert row["grad norm"] == pytest.approx(grad.norm().item(), rel=1e-5)
    assert [r["depth"] for r in rows] != [rows[0]["depth"]] * 3  # the depth really varies with the input
    assert net.shared.weight.grad is None  # the demo leaves no gradients behind


# --- custom layers ---------------------------------------------------------------------------------------------------

def test_swish_equals_silu_and_passes_gradcheck():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(cm.Swish(1.0)(x), nn.SiLU()(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cm.Swish(2.0)(x), x * torch.sigmoid(2 * x), rtol=1e-6, atol=1e-7)
    assert cm.swish_vs_silu(x) <= 1e-6
    xd = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cm.Swish(1.5), (xd,))


def test_custom_dropout_statistics_and_modes():
    torch.manual_seed(0)
    p, n = 0.3, 200_000
    layer = cm.CustomDropout(p)
    out = layer(torch.ones(n))
    kept = (out != 0).float().mean().item()
    # Binomial standard error sqrt(p(1-p)/n) ≈ 0.001: allow 5 of them.
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)
    survivors = out[out != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, 1 / (1 - p)), rtol=1e-6, atol=0)
    x = torch.randn(100)
    torch.testing.assert_close(layer.eval()(x), x, rtol=0, atol=0)
    all_dropped = cm.CustomDropout(1.0)(torch.randn(50))
    assert torch.equal(all_dropped, torch.zeros(50)) and not torch.isnan(all_dropped).any()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"p={bad}"):
            cm.CustomDropout(bad)
    check = cm.dropout_check(p, n)
    assert abs(check["kept"] - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(check["mean"] - 1.0) < 5 * math.sqrt(p / (1 - p) / n)
    assert check["eval is identity"] is True


def test_activation_curves_match_closed_form_derivatives():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    curves = cm.activation_curves(x)
    s, t = torch.sigmoid(x), torch.tanh(x)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    expected = {
        "ReLU": (x.clamp(min=0), (x > 0).double()),
        "sigmoid": (s, s * (1 - s)),
        "tanh": (t, 1 - t**2),
        "GELU": (x * normal.cdf(x), normal.cdf(x) + x * normal.log_prob(x).exp()),
        "Swish": (x * s, s + x * s * (1 - s)),
    }
    assert list(curves) == list(expected)
    for name, (y, dy) in expected.items():
        torch.testing.assert_close(curves[name][0], y, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(curves[name][1], dy, rtol=1e-12, atol=1e-12, msg=name)


# --- initialisation ----------------------------------------------------------------------------------------------

def test_theoretical_std_closed_forms_on_a_non_square_layer():
    assert cm.theoretical_std("xavier", 400, 900) == pytest.approx(math.sqrt(2 / 1300), rel=1e-15)
    assert cm.theoretical_std("kaiming", 400, 900) == pytest.approx(math.sqrt(2 / 400), rel=1e-15)
    assert cm.theoretical_std("normal", 400, 900) == 0.01 and cm.theoretical_std("zeros", 400, 900) == 0.0
    # torch's default: U(−a, a) with a = 1/√fan_in, and the std of U(−a, a) is a/√3.
    assert cm.theoretical_std("torch default", 400, 900) == pytest.approx((1 / math.sqrt(400)) / math.sqrt(3))
    # The prose: He doubles the variance of the 1/fan_in rule (Xavier's, for a square layer), so std × √2.
    for n in (64, 512):
        assert cm.theoretical_std("kaiming", n, n) ** 2 == pytest.approx(2 * cm.theoretical_std("xavier", n, n) ** 2)
        assert cm.theoretical_std("kaiming", n, n) / cm.theoretical_std("xavier", n, n) == pytest.approx(math.sqrt(2))
        # and the default is 1/√3 of Xavier's, 1/√6 of He's, on a square layer
        assert cm.theoretical_std("torch default", n, n) / cm.theoretical_std("xavier", n, n) == pytest.approx(
            1 / math.sqrt(3))
        assert cm.theoretical_std("torch default", n, n) / cm.theoretical_std("kaiming", n, n) == pytest.approx(
            1 / math.sqrt(6))


def test_std_of_a_uniform_distribution_is_its_bound_over_sqrt3():
    """The closed form the default-init prose rests on, by numerical integration: Var U(−a, a) = a²/3."""
    a = 0.37
    w = torch.linspace(-a, a, 2_000_001, dtype=torch.float64)
    variance = torch.trapezoid(w**2 / (2 * a), w).item()
    assert math.sqrt(variance) == pytest.approx(a / math.sqrt(3), rel=1e-9)


def test_torch_default_linear_init_is_kaiming_uniform_with_a_sqrt5_and_neither_xavier_nor_he():
    fan_in, fan_out = 400, 900
    bound = 1 / math.sqrt(fan_in)
    # kaiming_uniform_'s leaky-ReLU gain with a = √5 is √(1/3), so its bound √3·gain/√fan_in is 1/√fan_in.
    assert nn.init.calculate_gain("leaky_relu", cm.TORCH_DEFAULT_A) == pytest.approx(math.sqrt(1 / 3))
    torch.manual_seed(3)
    layer = nn.Linear(fan_in, fan_out)  # torch's own reset_parameters
    mine = cm.init_weights(nn.Linear(fan_in, fan_out), "torch default", torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine.weight, layer.weight, rtol=0, atol=0)  # the same call, the same draws
    for tensor in (layer.weight, layer.bias):  # both U(−1/√fan_in, 1/√fan_in)
        assert tensor.abs().max().item() <= bound
    assert layer.weight.abs().max().item() > 0.999 * bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)  # 360,000 draws
    assert layer.bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)  # 900 draws
    for other in ("xavier", "kaiming"):  # neither of them
        assert abs(layer.weight.std().item() / cm.theoretical_std(other, fan_in, fan_out) - 1) > 0.2
    # Through Linear+ReLU layers: the second moment is multiplied by fan_in·Var(w)/2 = 1/6 per layer.
    theory = cm.relu_stack_std_theory(cm.theoretical_std("torch default", 256, 256), 256, 3)
    assert (theory[2] / theory[1]) ** 2 == pytest.approx(1 / 6, rel=1e-12)


@pytest.mark.parametrize("scheme", ["xavier", "kaiming", "torch default", "normal", "zeros"])
def test_init_weights_std_matches_theory(scheme):
    generator = torch.Generator().manual_seed(0)
    layer = cm.init_weights(nn.Linear(400, 900), scheme, generator)  # weight (900, 400): fan_in 400, fan_out 900
    expected = {"xavier": math.sqrt(2 / (400 + 900)), "kaiming": math.sqrt(2 / 400),
                "torch default": 1 / math.sqrt(3 * 400), "normal": 0.01, "zeros": 0.0}
    # 360,000 draws: the sample std is within 1% of the true one.
    assert layer.weight.std().item() == pytest.approx(expected[scheme], rel=0.01, abs=1e-12)
    assert layer.weight.std().item() == pytest.approx(cm.theoretical_std(scheme, 400, 900), rel=0.01, abs=1e-12)
    assert layer.weight.mean().item() == pytest.approx(0.0, abs=0.01 * expected[scheme] + 1e-12)
    assert torch.count_nonzero(layer.bias) == 0
    if scheme == "xavier":  # uniform on ±sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max().item() <= math.sqrt(6 / 1300)
        assert layer.weight.abs().max().item() > 0.99 * math.sqrt(6 / 1300)
    with pytest.raises(ValueError, match="unknown init scheme"):
        cm.init_weights(layer, "orthogonal")


def test_init_statistics_are_seeded_and_kaiming_is_sqrt2_times_xavier():
    stats = cm.init_statistics(256, seed=1)
    again, other = cm.init_statistics(256, seed=1), cm.init_statistics(256, seed=2)
    assert torch.equal(stats["kaiming"]["weights"], again["kaiming"]["weights"])
    assert not torch.equal(stats["kaiming"]["weights"], other["kaiming"]["weights"])
    for scheme, s in stats.items():
        assert s["theory"] == cm.theoretical_std(scheme, 256, 256)
        assert s["measured"] == pytest.approx(s["weights"].std().item(), rel=1e-12)
        if s["theory"]:
            assert s["ratio"] == pytest.approx(s["measured"] / s["theory"], rel=1e-12)
            assert s["ratio"] == pytest.approx(1.0, abs=0.01)  # 65,536 draws
        else:
            assert s["ratio"] is None and s["measured"] == 0.0
    assert list(stats) == ["xavier", "kaiming", "torch default", "normal", "zeros"]
    default = cm.std_ratio(stats, "torch default", "xavier")
    assert default["theory"] == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    assert default["measured"] == pytest.approx(stats["torch default"]["measured"] / stats["xavier"]["measured"])
    ratio = cm.kaiming_over_xavier(stats)
    assert ratio["theory"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert ratio["measured"] == pytest.approx(math.sqrt(2), rel=0.015)
    assert ratio["measured"] == pytest.approx(stats["kaiming"]["measured"] / stats["xavier"]["measured"], rel=1e-12)


def test_reset_linear_layers_is_torchs_default_init_from_a_generator():
    torch.manual_seed(5)
    expected = nn.Linear(7, 3)  # torch's own reset_parameters, from the global generator
    mine = cm.reset_linear_layers(nn.Linear(7, 3), torch.Generator().manual_seed(5))
    torch.testing.assert_close(mine.weight, expected.weight, rtol=0, atol=0)
    torch.testing.assert_close(mine.bias, expected.bias, rtol=0, atol=0)


def test_relu_stack_theory_closed_form():
    # std of ReLU(z), z ~ N(0, 1), by numerical integration on a fine grid.
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    relu = z.clamp(min=0)
    dz = z[1] - z[0]
    mean, second = (relu * density).sum() * dz, (relu**2 * density).sum() * dz
    std_unit = math.sqrt(second - mean**2)
    theory = cm.relu_stack_std_theory(weight_std=0.1, fan_in=400, depth=3)
    assert theory[0] == pytest.approx(0.1 * 20 * std_unit, rel=1e-9)  # pre-activation std 0.1·√400 = 2
    assert theory[1] / theory[0] == pytest.approx(math.sqrt(400 * 0.01 / 2), rel=1e-12)  # second moment × 2
    assert theory[2] / theory[1] == pytest.approx(math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("scheme", ["xavier", "kaiming", "torch default", "normal"])
def test_activation_std_by_depth_follows_the_theory(scheme):
    depth, width = 10, 256
    stds = cm.activation_std_by_depth(scheme, depth, width, seed=0)
    theory = cm.relu_stack_std_theory(cm.theoretical_std(scheme, width, width), width, depth)
    assert len(stds) == depth
    assert stds[0] == pytest.approx(theory[0], rel=0.02)
    # Per-layer factor (geometric mean): ½ of the variance for Xavier, 1 for Kaiming, 1/6 for torch's default,
    # 256·1e-4/2 for N(0, 0.01).
    factor = (stds[-1] / stds[0]) ** (1 / (depth - 1))
    assert factor == pytest.approx(theory[1] / theory[0], rel=0.06)
    assert stds == cm.activation_std_by_depth(scheme, depth, width, seed=0)
    assert stds != cm.activation_std_by_depth(scheme, depth, width, seed=1)


def test_zeros_cannot_learn():
    frozen = cm.zeros_cannot_learn(seed=0, steps=10)
    assert frozen["first layer |w| max"] == 0.0 and frozen["second layer |w| max"] == 0.0
    assert frozen["output bias (the only thing that learns)"] != 0.0
    # Only the output bias moves: with zero hidden outputs, its SGD steps fit the mean of y exactly as a
    # scalar regression would. Independent reference: that scalar regression by hand.
    generator = torch.Generator().manual_seed(0)
    torch.randn(64, 8, generator=generator)
    y = torch.randn(64, 1, generator=generator)
    bias = 0.0
    for _ in range(10):
        bias -= 0.1 * 2 * (bias - y.mean().item())
    assert frozen["output bias (the only thing that learns)"] == pytest.approx(bias, rel=1e-5)


# --- hooks and gradient flow -----------------------------------------------------------------------------------------

def test_activation_stats_match_manual_forward_and_leave_no_hooks():
    torch.manual_seed(0)
    model = cm.MyMLP(6, [10], 2)
    x = torch.randn(50, 6)
    stats = cm.activation_stats(model, x)
    hidden = torch.relu(model.net[0](x))
    assert stats["net.1"]["mean"] == pytest.approx(hidden.mean().item(), rel=1e-6)
    assert stats["net.1"]["std"] == pytest.approx(hidden.std().item(), rel=1e-6)
    assert stats["net.1"]["fraction_zero"] == pytest.approx((hidden == 0).float().mean().item())
    assert stats["net.2"]["mean"] == pytest.approx(model(x).mean().item(), rel=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_stats_remove_hooks_even_when_forward_raises():
    model = cm.MyMLP(6, [10], 2)
    with pytest.raises(RuntimeError):
        cm.activation_stats(model, torch.randn(3, 5))  # wrong feature count
    assert all(not m._forward_hooks for m in model.modules())


def test_log_axes_span_whole_decades_so_at_least_two_are_labelled():
    assert cm._whole_decades([0.14, 2.87]) == (0.1, 10.0)  # forward times in ms
    assert cm._whole_decades([6_922, 475_658]) == (1e3, 1e6)  # parameter counts
    assert cm._whole_decades([10.0, 10.0]) == (10.0, 100.0)  # never a zero-width axis


def test_gradient_norms_match_a_manual_computation():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    norms = cm.gradient_norms(model, x, y, F.mse_loss)
    residual = model(x).detach() - y  # d(mean r²)/dW = 2/n Σ r xᵀ
    grad_w = 2 / 8 * (residual.T @ x)
    grad_b = 2 / 8 * residual.sum()
    assert norms["weight"] == pytest.approx(grad_w.norm().item(), rel=1e-5)
    assert norms["bias"] == pytest.approx(grad_b.abs().item(), rel=1e-5)
    assert cm.gradient_norms(model, x, y, F.mse_loss) == norms  # gradients from one pass, never accumulated


def test_hook_demo_uses_seeded_inputs_and_matches_torch_func():
    torch.manual_seed(0)
    model = cm.MyMLP(4, [5], 3)
    stats, norms = cm.hook_demo(model, batch=6, seed=2)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 4, generator=generator), torch.randn(6, 3, generator=generator)
    params = dict(model.named_parameters())
    grads = torch.func.grad(lambda p: F.mse_loss(torch.func.functional_call(model, p, (x,)), y))(params)
    for name, grad in grads.items():
        assert norms[name] == pytest.approx(grad.norm().item(), rel=1e-5)
    assert stats["net.0"]["mean"] == pytest.approx(model.net[0](x).mean().item(), rel=1e-5)


def test_gradient_flow_shows_vanishing_and_its_cures():
    flows = cm.gradient_flow(depth=12, width=32, seed=0)
    plain, residual, kaiming = flows.values()
    assert len(plain) == len(residual) == len(kaiming) == 12
    assert plain[0] < 1e-4 * plain[-1]
    assert residual[0] > 1e-2 * residual[-1] and kaiming[0] > 1e-1 * kaiming[-1]
    ratios = cm.first_over_last(flows)
    assert ratios == {name: f[0] / f[-1] for name, f in flows.items()}
    assert flows == cm.gradient_flow(depth=12, width=32, seed=0)  # the seed alone decides
    assert flows != cm.gradient_flow(depth=12, width=32, seed=1)


def test_gradient_flow_first_layer_norm_matches_torch_func():
    """Layer 1 of the plain sigmoid net, rebuilt independently from the same seed."""
    depth, width = 3, 8
    flows = cm.gradient_flow(depth, width, seed=4, batch=16)
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, width, generator=generator), torch.randn(16, 1, generator=generator)
    net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Sigmoid())],
                        nn.Linear(width, 1))
    cm.reset_linear_layers(net, generator)
    (grad,) = torch.autograd.grad(F.mse_loss(net(x), y), net[0].weight)
    assert flows["plain sigmoid (default init)"][0] == pytest.approx(grad.norm().item(), rel=1e-5)


def test_a_standard_normal_matrix_multiplies_squared_norms_by_fan_in():
    """The prose's reason for exploding gradients: E‖Wᵀv‖² = fan_in·‖v‖² for W (fan_out, fan_in) with N(0, 1)
    entries. Averaged over 2,000 draws of W: within 3 % of the closed form."""
    generator = torch.Generator().manual_seed(0)
    fan_out, fan_in = 32, 48
    v = torch.randn(fan_out, dtype=torch.float64, generator=generator)
    W = torch.randn(2_000, fan_out, fan_in, dtype=torch.float64, generator=generator)
    gain = ((W.transpose(1, 2) @ v).pow(2).sum(-1) / v.pow(2).sum()).mean().item()
    assert gain == pytest.approx(fan_in, rel=0.03)


@pytest.mark.parametrize("seed", [0, 1])
def test_exploding_gradients_grow_towards_the_input(seed):
    result = cm.exploding_gradients(depth=10, width=32, seed=seed)
    before = result["before"]
    assert len(before) == 10
    assert all(a > b for a, b in zip(before, before[1:]))  # every layer's gradient is larger than the next one's
    assert before[0] > 30 * before[-1]
    assert result == cm.exploding_gradients(depth=10, width=32, seed=seed)  # the seed alone decides


def test_exploding_gradients_before_clipping_match_an_independent_net():
    depth, width = 4, 16
    result = cm.exploding_gradients(depth, width, seed=5, max_norm=1e30, batch=32)  # max_norm: never clips
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, width, generator=generator), torch.randn(32, 1, generator=generator)
    net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())],
                        nn.Linear(width, 1))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 1.0, generator=generator)
            nn.init.zeros_(layer.bias)
    F.mse_loss(net(x), y).backward()
    expected = [net[2 * i].weight.grad.norm().item() for i in range(depth)]
    assert result["before"] == pytest.approx(expected, rel=1e-5)
    assert result["after"] == result["before"] and result["factor"] == 1.0  # below max_norm: untouched
    total = math.sqrt(sum(p.grad.norm().item() ** 2 for p in net.parameters()))
    assert result["total before"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("max_norm", [1.0, 5.0])
def test_clipping_follows_clip_grad_norm_s_definition(max_norm):
    """clip_grad_norm_: total = ‖all gradients as one vector‖₂; every gradient × max_norm / (total + 1e-6)."""
    result = cm.exploding_gradients(depth=6, width=32, seed=2, max_norm=max_norm)
    unclipped = cm.exploding_gradients(depth=6, width=32, seed=2, max_norm=math.inf)
    assert unclipped["before"] == result["before"] and unclipped["total before"] == result["total before"]
    total = result["total before"]
    assert total > max_norm
    assert result["factor"] == pytest.approx(max_norm / (total + 1e-6), rel=1e-12)
    for before, after in zip(result["before"], result["after"]):
        assert after == pytest.approx(before * result["factor"], rel=1e-5)  # the same factor for every layer
    assert result["total after"] == pytest.approx(max_norm, rel=1e-5)
    ratios = [a / b for a, b in zip(result["before"], result["before"][1:])]
    assert [a / b for a, b in zip(result["after"], result["after"][1:])] == pytest.approx(ratios, rel=1e-5)


def test_exploding_printer(capsys):
    result = {"before": [400.0, 20.0, 2.0], "after": [0.4, 0.02, 0.002], "total before": 1000.0, "total after": 1.0,
              "factor": 1e-3, "max_norm": 1.0}
    cm.print_exploding(result)
    printed = capsys.readouterr().out
    assert re.search(_row("before clipping", "4.00e+02", "2.00e+01", "2.00e+00", "2.0e+02", "1.00e+03"), printed, re.M)
    assert re.search(_row("after clipping", "4.00e-01", "2.00e-02", "2.00e-03", "2.0e+02", "1.00e+00"), printed, re.M)
    assert "1.0000e-03 to 1.0000e-03 (every layer: the same factor)" in printed


# --- memory and checkpointing ----------------------------------------------------------------------------------------

def test_saved_tensor_bytes_matches_a_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)  # no grad: the first layer never needs its weight for backward
    # Linear 1 saves x (5·4 floats) for ∂L/∂W1; ReLU saves its output h (5·3); Linear 2 saves h (already
    # counted) for ∂L/∂W2 and W2 (2·3) for ∂L/∂h. float32 = 4 bytes.
    assert cm.saved_tensor_bytes(model, x) == 4 * (5 * 4 + 5 * 3 + 2 * 3)
    assert cm.saved_tensor_bytes(model, x, exclude=model.parameters()) == 4 * (5 * 4 + 5 * 3)


@pytest.mark.parametrize(("layers", "segments"), [(4, 0), (4, 1), (4, 2), (4, 4), (16, 0), (16, 2), (16, 4), (16, 8),
                                                  (16, 16), (6, 3)])
def test_checkpoint_hand_count_equals_the_measured_saved_bytes(layers, segments):
    width, batch = 8, 4
    model = cm.deep_mlp(layers, width)
    x = torch.randn(batch, width, requires_grad=True)
    measured = cm.saved_tensor_bytes(cm.checkpointed_forward, model, x, segments, exclude=model.parameters())
    assert measured == cm.checkpoint_saved_activations(layers, segments) * batch * width * 4


def test_checkpoint_hand_count_and_the_claims_in_the_prose():
    assert cm.checkpoint_saved_activations(16, 0) == 17  # input + 16 ReLU outputs
    assert [cm.checkpoint_saved_activations(16, k) for k in (1, 2, 4, 8, 16)] == [17, 10, 8, 10, 17]
    for layers in (4, 16, 64):  # smallest at k = √L, and 2 segments keep more than half
        counts = {k: cm.checkpoint_saved_activations(layers, k) for k in range(1, layers + 1) if layers % k == 0}
        assert min(counts, key=counts.get) == math.isqrt(layers)
        assert counts[2] > (layers + 1) / 2
    with pytest.raises(ValueError, match="segments=3 must be 0 or divide layers=16"):
        cm.checkpoint_saved_activations(16, 3)


@pytest.mark.parametrize(("layers", "segments"), [(4, 0), (4, 2), (4, 4), (16, 4), (16, 16), (6, 3)])
def test_checkpoint_flop_ratio_matches_torchs_flop_counter(layers, segments):
    from torch.utils.flop_counter import FlopCounterMode

    model = cm.deep_mlp(layers, 8)
    x = torch.randn(4, 8, requires_grad=True)

    def flops(k):
        with FlopCounterMode(display=False) as counter:
            cm.checkpointed_forward(model, x, k).sum().backward()
        return counter.get_total_flops()

    assert flops(segments) / flops(0) == pytest.approx(cm.checkpoint_flop_ratio(segments), rel=1e-12)


def test_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    model = cm.deep_mlp(8, 32)
    x = torch.randn(16, 32, requires_grad=True)
    grads = []
    for segments in (0, 4):
        model.zero_grad()
        cm.checkpointed_forward(model, x, segments).sum().backward()
        grads.append(model[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpointing_tradeoff_rows_and_ratios(device, monkeypatch):
    calls = []
    monkeypatch.setattr(cm, "benchmark", fake_benchmark(timings(4e-3, 5e-3, 6e-3, noisy=[False, False, True]), calls))
    rows = cm.checkpointing_tradeoff(4, 16, 8, [0, 2, 4], min_run_time=0.005, device=device, seed=0)
    assert calls == [(torch.device(device).type, 0.005, 1)] * 3  # one thread each
    assert [r["segments"] for r in rows] == [0, 2, 4]
    assert [r["saved_bytes"] for r in rows] == [r["hand_count_bytes"] for r in rows] == [5 * 512, 4 * 512, 5 * 512]
    assert [r["saved_ratio"] for r in rows] == [1.0, 4 / 5, 1.0]
    assert [r["flop_ratio"] for r in rows] == [1.0, 1 + 1 / 6, 1.25]
    assert [r["timing"].median for r in rows] == [4e-3, 5e-3, 6e-3]
    assert [r["time_ratio"] for r in rows] == [1.0, 5e-3 / 4e-3, 6e-3 / 4e-3]  # medians of the same run
    assert [r["time_ratio_noisy"] for r in rows] == [False, False, True]


def test_a_ratio_is_noisy_when_either_timing_is():
    quiet, loud = Timing(2e-3, 1e-5, 1, False), Timing(1e-3, 5e-4, 1, True)
    assert cm.median_ratio(quiet, quiet) == (1.0, False)
    assert cm.median_ratio(quiet, loud) == (2.0, True) and cm.median_ratio(loud, quiet) == (0.5, True)
    assert cm._ratio_cell(2.0, False) == "2.00×" and cm._ratio_cell(0.5, True) == f"0.50× {NOISY_MARK}"


# --- mixed precision ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_step_dtypes_and_speedup(device, monkeypatch):
    calls = []
    monkeypatch.setattr(cm, "benchmark", fake_benchmark(timings(6e-3, 2e-3), calls))
    results = cm.mixed_precision_step(32, 16, device, min_run_time=0.005, seed=0)
    assert calls == [(torch.device(device).type, 0.005, 1)] * 2  # both steps on one thread
    low = str(cm.autocast_dtype(torch.device(device))).removeprefix("torch.")
    assert results["autocast"]["dtypes"] == {"linear output": low, "loss": "float32", "weight grad": "float32"}
    assert results["float32"]["dtypes"] == {"linear output": "float32", "loss": "float32", "weight grad": "float32"}
    assert results["autocast"]["weight dtype"] == "float32"
    # Same initial weights and data: the 16-bit type's ~3 significant digits keep the first loss close.
    assert results["autocast"]["loss"] == pytest.approx(results["float32"]["loss"], rel=1e-2)
    assert results["float32"]["timing"].median == 6e-3 and results["autocast"]["timing"].median == 2e-3
    assert cm.amp_speedup(results) == (pytest.approx(3.0, rel=1e-12), False)  # float32 median / autocast median


def test_mixed_precision_first_losses_are_the_cross_entropy_of_the_seeded_model(monkeypatch):
    monkeypatch.setattr(cm, "benchmark", fake_benchmark(timings(1e-3, 1e-3)))
    results = cm.mixed_precision_step(16, 8, "cpu", min_run_time=0.005, seed=3)
    generator = torch.Generator().manual_seed(3)
    model = cm.reset_linear_layers(cm.MyMLP(16, [16, 16], 10), generator)
    x, target = torch.randn(8, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    assert results["float32"]["loss"] == pytest.approx(F.cross_entropy(model(x), target).item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast also starts from the untouched weights
        reference = F.cross_entropy(model(x), target).item()
    assert results["autocast"]["loss"] == pytest.approx(reference, rel=1e-6)


CPUINFO_AVX512_WITHOUT_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: A server CPU
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl avx512dq amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl avx512dq amx_tile amx_int8
"""


def test_bf16_report_reads_the_flags_not_the_capability_string(tmp_path):
    """AVX-512 without AVX-512 BF16 (and AMX without amx_bf16): 'no', whatever torch's capability string says."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_AVX512_WITHOUT_BF16)
    assert cm.cpu_flags(cpuinfo) >= {"avx512f", "avx512bw", "amx_tile"}
    report = cm.cpu_bf16_report(cpuinfo)
    assert report == {"torch CPU capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16 flag": "no",
                      "amx_bf16 flag": "no"}
    cpuinfo.write_text(CPUINFO_AVX512_WITHOUT_BF16.replace("avx512dq amx", "avx512dq avx512_bf16 amx_bf16 amx"))
    assert cm.cpu_bf16_report(cpuinfo)["avx512_bf16 flag"] == "yes" == cm.cpu_bf16_report(cpuinfo)["amx_bf16 flag"]
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # an ARM cpuinfo: no x86 flags line
    assert cm.cpu_flags(cpuinfo) is None and cm.cpu_bf16_report(cpuinfo)["avx512_bf16 flag"] == "unknown"
    missing = tmp_path / "absent"  # macOS, Windows: no /proc/cpuinfo
    assert cm.cpu_flags(missing) is None
    assert set(cm.cpu_bf16_report(missing).values()) - {report["torch CPU capability"]} == {"unknown"}


def test_bf16_advice_follows_the_flags_and_blames_no_instruction_set():
    def report(*values):
        return {"torch CPU capability": "AVX512", **dict(zip(("avx512_bf16 flag", "amx_bf16 flag"), values))}

    assert "lists instructions that compute in bfloat16" in cm.bf16_advice(report("yes", "no"))
    assert "lists no instructions" in cm.bf16_advice(report("no", "no"))
    assert "cannot be read" in cm.bf16_advice(report("unknown", "unknown"))
    for values in (("yes", "no"), ("no", "no"), ("unknown", "unknown")):
        advice = cm.bf16_advice(report(*values))
        assert "torch.profiler" in advice and "mark" in advice
        assert "AVX2" not in advice and "AVX512" not in advice


# --- saving and exporting ------------------------------------------------------------------------------------------

def test_state_dict_round_trip_and_export_give_identical_outputs():
    torch.manual_seed(0)

    def rebuild():
        return cm.MyMLP(6, [12, 12], 3, use_batch_norm=True, dropout_rate=0.2)

    report = cm.save_load_export(rebuild(), torch.randn(8, 6), rebuild)
    assert report["reloaded max |diff|"] == 0.0
    assert report["exported max |diff|"] == 0.0
    assert report["exported, batch of 3, max |diff|"] == 0.0
    # Hand count: 3 Linear + 2 BatchNorm (γ, β) = 10 parameters, 2 × (running mean, var, count) = 6 buffers, + x.
    assert report["exported graph inputs"] == 10 + 6 + 1
    params = cm.mlp_parameter_count(6, [12, 12], 3, use_batch_norm=True)
    tensor_bytes = 4 * params + 4 * (2 * 2 * 12) + 8 * 2  # float32 weights and statistics, int64 counters
    assert report["state_dict tensor bytes"] == tensor_bytes
    assert report["state_dict file bytes"] > tensor_bytes


# --- the whole lesson --------------------------------------------------------------------------------------------

def test_the_printers_show_the_functions_values(tmp_path, capsys, fake_timings, monkeypatch):
    """One quick run with seed 1 (test_reliability checks that another seed prints other numbers)."""
    monkeypatch.setattr(cm, "save_figure", lambda fig, name, plots_dir: None)  # test_reliability writes the figures
    assert run_script("custom_nn_module", ["--quick", "--device", "cpu", "--seed", "1", "--plots-dir",
                                           str(tmp_path)]) == 0
    printed, cfg = capsys.readouterr().out, cm.QUICK  # every timing is FAKE_MEDIAN_S, so time ratios are 1
    mib = cfg.checkpoint_batch * cfg.checkpoint_width * 4 / 2**20
    spread = f"{100 * FAKE_IQR_S / FAKE_MEDIAN_S:.0f} %"
    for k in (0, 2, 4):
        count = cm.checkpoint_saved_activations(cfg.checkpoint_layers, k)
        ratio = count / cm.checkpoint_saved_activations(cfg.checkpoint_layers, 0)
        assert re.search(_row(str(k or "none"), f"{count * mib:.2f} MiB", f"{count * mib:.2f} MiB", f"{ratio:.2f}×",
                              f"{cm.checkpoint_flop_ratio(k):.2f}×", "1 ms", spread, "1.00×"), printed, re.M), k
    assert "autocast speed-up (float32 median / autocast median): 1.00×\n" in printed
    assert re.search(_row("small MLP", "32-64-64-10", "6,922", "6,922", "1 ms", spread), printed, re.M)
    assert printed.count(timing_note(1)) == 3  # under each timing table: checkpointing, mixed precision, architectures
    for name, value in cm.cpu_bf16_report().items():
        assert re.search(rf"^{re.escape(name)}\s+{re.escape(value)}", printed, re.M), name
    # The trap: the last position's row is NaN and earlier outputs read later inputs, whatever the seed.
    assert re.search(r"^nn\.MultiheadAttention, the same bool mask\s+4\s+\S+\s+yes$", printed, re.M)
    assert re.search(r"^nn\.MultiheadAttention, ~mask\s+none\s+\S+\s+no$", printed, re.M)
    exploding = cm.exploding_gradients(cfg.flow_depth, cfg.flow_width, seed=1)
    before = exploding["before"]
    assert re.search(_row("before clipping", f"{before[0]:.2e}", f"{before[len(before) // 2]:.2e}", f"{before[-1]:.2e}",
                          f"{before[0] / before[-1]:.1e}", f"{exploding['total before']:.2e}"), printed, re.M)
    ratio = cm.kaiming_over_xavier(cm.init_statistics(cfg.init_width, seed=1))
    assert f"Kaiming std / Xavier std: measured {ratio['measured']:.4f}, theory √2 = {ratio['theory']:.4f}" in printed
    flows = cm.gradient_flow(cfg.flow_depth, cfg.flow_width, seed=1)
    for (name, norms), r in zip(flows.items(), cm.first_over_last(flows).values()):
        assert re.search(_row(name, f"{norms[0]:.2e}", f"{norms[-1]:.2e}", f"{r:.1e}"), printed, re.M), name


def _row(*cells: str) -> str:
    """A regex for one printed table row: these cells, in order, separated by spaces, the whole line."""
    return r"^" + r"\s+".join(map(re.escape, cells)) + r"\s*$"


@pytest.mark.slow
def test_readme_numbers_match_a_full_run(tmp_path, capsys, fake_timings, monkeypatch):
    """The lines the README quotes (initialisation, gradient flow, checkpointing) are what the full-run cells print
    on the versions under test: the set-up cell and those three sections run, seed 0, timings faked."""
    monkeypatch.setattr(cm, "save_figure", lambda fig, name, plots_dir: None)
    sections = ("init_statistics(", "gradient_flow(cfg", "checkpointing_tradeoff(")
    assert run_script("custom_nn_module", ["--device", "cpu", "--plots-dir", str(tmp_path)], only=sections) == 0
    quotes = readme_quotes("custom_nn_module")
    assert len(quotes) >= 5 and not unprinted_quotes(quotes, capsys.readouterr().out)


def test_timing_printers_show_medians_spreads_marks_and_ratios_of_unequal_times(capsys):
    dtypes = {"linear output": "float32", "loss": "float32", "weight grad": "float32"}
    amp = {mode: {"dtypes": dtypes, "loss": 2.3, "weight dtype": "float32", "timing": timing}
           for mode, timing in (("float32", Timing(6e-3, 6e-5, 1, False)), ("autocast", Timing(2e-3, 4e-4, 1, True)))}
    bf16 = {"torch CPU capability": "AVX512", "avx512_bf16 flag": "no", "amx_bf16 flag": "unknown"}
    cm.print_mixed_precision(amp, 8, 4, torch.device("cpu"), bf16)
    rows = [{"segments": 0, "saved_bytes": 2**20, "hand_count_bytes": 2**20, "saved_ratio": 1.0, "flop_ratio": 1.0,
             "timing": Timing(4e-3, 4e-5, 1, False), "time_ratio": 1.0, "time_ratio_noisy": False},
            {"segments": 2, "saved_bytes": 2**19, "hand_count_bytes": 2**19, "saved_ratio": 0.5, "flop_ratio": 7 / 6,
             "timing": Timing(5e-3, 1e-3, 1, True), "time_ratio": 1.25, "time_ratio_noisy": True}]
    cm.print_checkpointing(rows, 4, 8, 2)
    printed = capsys.readouterr().out
    # The speed-up is the ratio of the two medians, marked because the autocast timing was noisy.
    assert f"autocast speed-up (float32 median / autocast median): 3.00× {NOISY_MARK}\n" in printed
    assert re.search(r"^mode\s.*\sstep median\s+step IQR\s*$", printed, re.M)
    assert re.search(r"^float32 .* 2\.3000\s+6 ms\s+1 %\s*$", printed, re.M)
    assert re.search(rf"^autocast .* 2\.3000\s+2 ms\s+20 % {NOISY_MARK}\s*$", printed, re.M)
    assert re.search(r"^torch CPU capability\s+AVX512 \(the vector instructions", printed, re.M)
    assert re.search(r"^avx512_bf16 flag\s+no$", printed, re.M) and re.search(r"^amx_bf16 flag\s+unknown$", printed,
                                                                                   re.M)
    assert re.search(rf"^segments\s.*\s{TIMING_HEADERS[0]}\s.*\s{TIMING_HEADERS[1]}\s", printed.replace(
        "fwd+bwd ", ""), re.M)
    assert re.search(_row("none", "1.00 MiB", "1.00 MiB", "1.00×", "1.00×", "4 ms", "1 %", "1.00×"), printed, re.M)
    assert re.search(_row("2", "0.50 MiB", "0.50 MiB", "0.50×", "1.17×", "5 ms", f"20 % {NOISY_MARK}",
                          f"1.25× {NOISY_MARK}"), printed, re.M)
    assert printed.count(timing_note(1)) == 2
    cm.print_mixed_precision(amp, 8, 4, torch.device("cuda"), bf16)
    assert "bfloat16 on this CPU" not in capsys.readouterr().out  # the CPU's flags matter on the CPU only
