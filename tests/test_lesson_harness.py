"""The shared harness: device choice, seeding, timing, tables, plots directory, exit codes."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ABSENT_ACCELERATORS, DEVICES, clean_env

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


def test_describe_device_names_the_hardware(monkeypatch):
    assert harness.describe_device(torch.device("cpu")) == f"cpu ({harness.cpu_model()})"
    assert harness.describe_device(torch.device("mps")) == "mps (Apple GPU)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 9000")
    assert harness.describe_device(torch.device("cuda")) == "cuda (Fake GPU 9000)"


def test_cpu_model_reads_the_model_name_line(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 3.0GHz: rev 2\nflags\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert harness.cpu_model() == "Example CPU @ 3.0GHz: rev 2"


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


def test_time_median_measures_a_known_duration():
    """A call that sleeps 20 ms must time at 20 ms: not 10× more (a sum), not per block, not in ms."""
    seconds = harness.time_median(lambda: time.sleep(0.02), "cpu", min_run_time=0.1)
    assert 0.02 <= seconds < 0.04


def test_time_median_reports_the_median_of_timers_blocks(monkeypatch):
    """A fake Timer whose measurement has median 1 ms and mean 4 ms: time_median says 1 ms, and hands
    Timer the function, the minimum run time and the threads user code gets."""
    import types

    built = {}

    class FakeTimer:
        def __init__(self, stmt, globals, num_threads):
            built.update(stmt=stmt, globals=globals, num_threads=num_threads)

        def blocked_autorange(self, min_run_time):
            built["min_run_time"] = min_run_time
            return types.SimpleNamespace(median=1e-3, mean=4e-3)

    monkeypatch.setattr(harness, "_import_benchmark", lambda: types.SimpleNamespace(Timer=FakeTimer))
    calls = []
    assert harness.time_median(lambda: calls.append("called"), "cpu", min_run_time=0.3) == 1e-3
    assert built["min_run_time"] == 0.3 and built["num_threads"] == torch.get_num_threads()
    calls.clear()
    eval(built["stmt"], built["globals"])
    assert calls == ["called"]  # what Timer runs is the function given


def test_wall_seconds_returns_the_result_and_a_known_duration():
    result, seconds = harness.wall_seconds(lambda: time.sleep(0.05) or "done")
    assert result == "done"
    assert 0.05 <= seconds < 0.15


def test_only_the_cuda_home_notice_is_dropped():
    text = "before\nNo CUDA runtime is found, using CUDA_HOME='/usr/local'\nafter: CUDA_HOME unset\n"
    assert harness.drop_cuda_home_notice(text) == "before\nafter: CUDA_HOME unset\n"


@pytest.mark.slow
def test_importing_the_benchmark_module_prints_nothing_in_a_fresh_process():
    """CUDA builds on a GPU-less machine with a CUDA toolkit report CUDA_HOME on this import; not here."""
    code = ("import logging, lesson_harness; level = logging.getLogger('torch.utils.cpp_extension').level; "
            "lesson_harness._import_benchmark(); "
            "assert logging.getLogger('torch.utils.cpp_extension').level == level")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(("seconds", "text"), [(2.5, "2.5 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"),
                                                (7e-9, "7 ns"), (1.0, "1 s"), (1e-3, "1 ms"), (1e-6, "1 µs")])
def test_fmt_seconds_picks_units(seconds, text):
    assert harness.fmt_seconds(seconds) == text


def test_fmt_timing_applies_the_format_and_suffix():
    assert harness.fmt_timing(3.14159, ".1f", "×") == "3.1×"


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


def test_a_notebook_kernel_takes_its_flags_from_lesson_args(monkeypatch):
    """In Jupyter, sys.argv holds the kernel's `-f <connection file>`; LESSON_ARGS is read instead."""
    monkeypatch.setattr(harness, "in_notebook", lambda: True)
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    monkeypatch.setenv("LESSON_ARGS", "--quick --device cpu --seed 4")
    assert harness.lesson_argv(None) == ["--quick", "--device", "cpu", "--seed", "4"]
    assert harness.lesson_argv(["--seed", "1"]) == ["--seed", "1"]  # explicit arguments still win
    monkeypatch.delenv("LESSON_ARGS")
    assert harness.lesson_argv(None) == []


def test_a_process_that_imported_ipykernel_without_running_a_kernel_is_not_a_notebook(monkeypatch):
    """What `make test` is after a notebook test: jupyter_client imported ipykernel, no kernel runs here."""
    import ipykernel.zmqshell
    import IPython

    assert "ipykernel" in sys.modules and not harness.in_notebook()

    class KernelShell(ipykernel.zmqshell.ZMQInteractiveShell):  # no shell is built: only its type matters
        def __init__(self):
            pass

    monkeypatch.setattr(IPython, "get_ipython", lambda: KernelShell())
    assert harness.in_notebook()  # the notebook tests check this in a real kernel


def test_outside_a_notebook_the_command_line_is_parsed(monkeypatch):
    monkeypatch.setattr(harness, "in_notebook", lambda: False)
    assert harness.lesson_argv(None) is None  # argparse then reads sys.argv[1:]


def test_finish_exits_from_a_terminal_and_returns_in_a_notebook(monkeypatch):
    monkeypatch.setattr(harness, "in_notebook", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        harness.finish(2)
    assert exit_info.value.code == 2
    monkeypatch.setattr(harness, "in_notebook", lambda: True)
    assert harness.finish(0) is None
    with pytest.raises(harness.LessonError, match="exit code 2"):
        harness.finish(2)


def test_context_config_picks_quick_only_under_quick(tmp_path):
    contexts = []
    _run(tmp_path, contexts.append)
    _run(tmp_path, contexts.append, "--quick")
    assert [ctx.config("full", "quick") for ctx in contexts] == ["full", "quick"]


def test_save_figure_shows_the_written_png_inline_in_a_notebook(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(harness, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    fig, axes = harness.new_figure(1, 1, "title")
    axes[0, 0].plot([0, 1], [0, 1])
    path = harness.save_figure(fig, "x.png", tmp_path)
    (image,) = shown
    assert image.data == path.read_bytes() and image.format == "png"
