"""The shared harness: device choice, seeding, timing, tables, plots directory, exit codes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from conftest import ABSENT_ACCELERATORS, DEVICES

import lesson_harness as harness


def test_auto_device_prefers_accelerators():
    expected = next(name for name in ("cuda", "mps", "cpu") if name in DEVICES)
    assert harness.pick_device("auto") == torch.device(expected)
    assert harness.pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ABSENT_ACCELERATORS)
def test_unavailable_device_names_request_and_alternatives(name):
    with pytest.raises(harness.LessonError) as err:
        harness.pick_device(name)
    message = str(err.value)
    assert f"--device {name}" in message
    assert "available: cpu" in message


def test_unknown_device_name_is_a_value_error():
    with pytest.raises(ValueError, match="tpu"):
        harness.pick_device("tpu")


def test_as_device_accepts_names_and_devices():
    assert harness.as_device("cpu") == harness.as_device(torch.device("cpu")) == torch.device("cpu")


def test_seed_everything_repeats_every_generator():
    def draw(seed):
        gen = harness.seed_everything(seed)
        return (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    # The returned generator is an ordinary generator seeded with `seed`.
    gen = harness.seed_everything(5)
    torch.testing.assert_close(torch.rand(4, generator=gen), torch.rand(4, generator=torch.Generator().manual_seed(5)))


def test_time_median_is_positive_and_finite():
    x = torch.randn(64, 64)
    seconds = harness.time_median(lambda: x @ x, "cpu", min_run_time=0.01)
    assert math.isfinite(seconds) and seconds > 0


@pytest.mark.parametrize(("seconds", "text"), [(2.5, "2.5 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"),
                                                (7e-9, "7 ns")])
def test_fmt_seconds_picks_units(seconds, text):
    assert harness.fmt_seconds(seconds) == text


def test_masked_timings_hide_every_timing(monkeypatch):
    monkeypatch.setattr(harness, "MASK_TIMINGS", True)
    assert harness.fmt_seconds(1.0) == harness.fmt_timing(3.0, ".1f", "×") == "<time>"


def test_format_table_aligns_columns():
    table = harness.format_table(["name", "value"], [["a", 1.5], ["longer", 1234]]).splitlines()
    assert len({len(line) for line in table}) == 1  # every line padded to the same width
    assert table[2].startswith("a ") and table[2].endswith("1.5")
    assert table[3].endswith("1,234")


def test_prepare_plots_dir_creates_nested_directories(tmp_path):
    target = tmp_path / "a" / "b"
    assert harness.prepare_plots_dir(target) == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_prepare_plots_dir_rejects_unwritable_path(unwritable_dir):
    with pytest.raises(harness.LessonError, match="--plots-dir"):
        harness.prepare_plots_dir(unwritable_dir)


def test_save_figure_writes_png(tmp_path):
    fig, axes = harness.new_figure(1, 2, "title")
    axes[0, 0].plot([0, 1], [0, 1])
    path = harness.save_figure(fig, "x.png", tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def _run(tmp_path, lesson, *extra):
    return harness.run_lesson("demo.py", "demo", "Demo", lesson, ["--plots-dir", str(tmp_path), *extra])


def test_run_lesson_passes_a_context(tmp_path, capsys):
    contexts = []
    assert _run(tmp_path, contexts.append, "--seed", "7") == 0
    (ctx,) = contexts
    assert ctx.seed == 7 and ctx.plots_dir == tmp_path and not ctx.quick
    assert "device: " in capsys.readouterr().out


@pytest.mark.parametrize("name", ABSENT_ACCELERATORS)
def test_run_lesson_unavailable_device_exits_2_with_one_line(tmp_path, capsys, name):
    assert _run(tmp_path, lambda ctx: None, "--device", name) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available" in err and "Traceback" not in err


def test_run_lesson_turns_divergence_into_exit_2(tmp_path, capsys):
    def diverge(ctx):
        raise FloatingPointError("loss became nan at epoch 3 (lr=10)")

    assert _run(tmp_path, diverge) == 2
    assert capsys.readouterr().err.strip() == "demo.py: error: loss became nan at epoch 3 (lr=10)"
