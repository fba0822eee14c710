"""custom_nn_module: modules checked against torch.nn / torch.nn.functional, formulas and hand counts.

The quick end-to-end run of main() (figures, reproducibility, exit codes) is in test_reliability.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import custom_nn_module as cm


@pytest.mark.parametrize(("hidden", "activation", "dropout", "bn"), [
    ([], "relu", 0.0, False), ([16], "tanh", 0.2, False), ([16, 8], "gelu", 0.0, True), ([4, 4, 4], "swish", 0.5, True),
])
def test_mlp_shapes_and_parameter_counts(hidden, activation, dropout, bn):
    torch.manual_seed(0)
    model = cm.MyMLP(7, hidden, 3, activation=activation, dropout_rate=dropout, use_batch_norm=bn)
    assert model(torch.randn(5, 7)).shape == (5, 3)
    assert cm.count_parameters(model) == cm.mlp_parameter_count(7, hidden, 3, use_batch_norm=bn)
    # Independent count: torch's own Linear/BatchNorm modules summed by hand.
    by_hand = sum(m.weight.numel() + m.bias.numel()
                  for m in model.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d)))
    assert cm.count_parameters(model) == by_hand
    # BatchNorm and dropout only between hidden layers: the last module is the output Linear.
    assert isinstance(model.net[-1], nn.Linear)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == (len(hidden) if bn else 0)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == (len(hidden) if dropout else 0)


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


def test_dynamic_net_depth_follows_the_input():
    torch.manual_seed(0)
    net = cm.DynamicDepthNet(8, max_depth=4)
    net(torch.zeros(2, 8))
    assert net.last_depth == 1
    net(torch.full((2, 8), 10.0))
    assert net.last_depth == 4


def test_swish_equals_silu_and_passes_gradcheck():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(cm.Swish(1.0)(x), nn.SiLU()(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cm.Swish(2.0)(x), x * torch.sigmoid(2 * x), rtol=1e-6, atol=1e-7)
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


@pytest.mark.parametrize("scheme", ["xavier", "kaiming", "normal", "zeros"])
def test_init_weights_std_matches_theory(scheme):
    torch.manual_seed(0)
    layer = cm.init_weights(nn.Linear(400, 600), scheme)
    expected = {"xavier": math.sqrt(2 / (400 + 600)), "kaiming": math.sqrt(2 / 400), "normal": 0.01, "zeros": 0.0}
    assert layer.weight.std().item() == pytest.approx(expected[scheme], rel=0.02, abs=1e-12)
    assert torch.count_nonzero(layer.bias) == 0
    if scheme == "xavier":  # uniform on ±sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max().item() <= math.sqrt(6 / 1000)
    with pytest.raises(ValueError, match="unknown init scheme"):
        cm.init_weights(layer, "orthogonal")


def test_kaiming_keeps_activation_scale_and_zeros_cannot_learn():
    kaiming = cm.activation_std_by_depth("kaiming", depth=10, width=128)
    normal = cm.activation_std_by_depth("normal", depth=10, width=128)
    assert 0.5 < kaiming[-1] / kaiming[0] < 2.0
    assert normal[-1] < 1e-6 * normal[0]
    frozen = cm.zeros_cannot_learn(steps=10)
    assert frozen["first layer |w| max"] == 0.0 and frozen["second layer |w| max"] == 0.0
    assert frozen["output bias (the only thing that learns)"] != 0.0


def test_activation_stats_match_manual_forward_and_leave_no_hooks():
    torch.manual_seed(0)
    model = cm.MyMLP(6, [10], 2)
    x = torch.randn(50, 6)
    stats = cm.activation_stats(model, x)
    hidden = torch.relu(model.net[0](x))
    assert stats["net.1"]["mean"] == pytest.approx(hidden.mean().item(), rel=1e-6)
    assert stats["net.1"]["fraction_zero"] == pytest.approx((hidden == 0).float().mean().item())
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_stats_remove_hooks_even_when_forward_raises():
    model = cm.MyMLP(6, [10], 2)
    with pytest.raises(RuntimeError):
        cm.activation_stats(model, torch.randn(3, 5))  # wrong feature count
    assert all(not m._forward_hooks for m in model.modules())


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


def test_gradient_flow_shows_vanishing_and_its_cures():
    flows = cm.gradient_flow(depth=12, width=32)
    plain, residual, kaiming = flows.values()
    assert len(plain) == len(residual) == len(kaiming) == 12
    assert plain[0] < 1e-4 * plain[-1]
    assert residual[0] > 1e-2 * residual[-1] and kaiming[0] > 1e-1 * kaiming[-1]


def test_saved_tensor_bytes_matches_a_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)  # no grad: the first layer never needs its weight for backward
    # Linear 1 saves x (5·4 floats) for ∂L/∂W1; ReLU saves its output h (5·3); Linear 2 saves h (already
    # counted) for ∂L/∂W2 and W2 (2·3) for ∂L/∂h. float32 = 4 bytes.
    assert cm.saved_tensor_bytes(model, x) == 4 * (5 * 4 + 5 * 3 + 2 * 3)
    assert cm.saved_tensor_bytes(model, x, exclude=model.parameters()) == 4 * (5 * 4 + 5 * 3)


def test_checkpointing_reduces_saved_bytes_and_keeps_gradients():
    torch.manual_seed(0)
    model = cm.deep_mlp(8, 32)
    x = torch.randn(16, 32, requires_grad=True)
    plain = cm.saved_tensor_bytes(cm.checkpointed_forward, model, x, 0, exclude=model.parameters())
    checkpointed = cm.saved_tensor_bytes(cm.checkpointed_forward, model, x, 4, exclude=model.parameters())
    assert checkpointed < 0.7 * plain
    grads = []
    for segments in (0, 4):
        model.zero_grad()
        cm.checkpointed_forward(model, x, segments).sum().backward()
        grads.append(model[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)
    rows = cm.checkpointing_tradeoff(4, 16, 8, [0, 2], min_run_time=0.005)
    assert rows[1]["saved_bytes"] < rows[0]["saved_bytes"] and all(r["seconds"] > 0 for r in rows)


def test_mixed_precision_step_uses_bfloat16_inside_and_float32_weights():
    results = cm.mixed_precision_step(32, 16, "cpu", min_run_time=0.005)
    assert results["autocast"]["dtypes"] == {"linear output": "bfloat16", "loss": "float32", "weight grad": "float32"}
    assert results["float32"]["dtypes"]["linear output"] == "float32"
    assert results["autocast"]["weight dtype"] == "float32"
    # Same initial weights: bfloat16's ~3 significant digits keep the first loss close.
    assert results["autocast"]["loss"] == pytest.approx(results["float32"]["loss"], rel=1e-2)


def test_state_dict_round_trip_and_export_give_identical_outputs():
    torch.manual_seed(0)

    def rebuild():
        return cm.MyMLP(6, [12, 12], 3, use_batch_norm=True, dropout_rate=0.2)

    report = cm.save_load_export(rebuild(), torch.randn(8, 6), rebuild)
    assert report["reloaded max |diff|"] == 0.0
    assert report["exported max |diff|"] == 0.0
    assert report["exported, batch of 3, max |diff|"] == 0.0


def test_architecture_table_counts_agree_with_formulas():
    rows = cm.architecture_table(batch=16, min_run_time=0.005)
    assert len(rows) == 5
    for row in rows:
        assert row["seconds"] > 0
        if row["formula"] is not None:
            assert row["parameters"] == row["formula"]
    attention = next(r for r in rows if r["name"] == "attention")
    assert attention["parameters"] == 3 * (64 * 64 + 64)
