"""The shared harness: device choice, seeding, timing, tables, plots directory, exit codes."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
import types

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


def test_benchmark_measures_a_known_duration_on_one_thread():
    """A call that sleeps 20 ms must time at 20 ms: not 10× more (a sum), not per block, not in ms."""
    timing = harness.benchmark(lambda: time.sleep(0.02), "cpu", min_run_time=0.1)
    assert 0.02 <= timing.median < 0.04 and timing.threads == harness.BENCHMARK_THREADS == 1
    assert 0 <= timing.iqr < timing.median


def _scripted_clock(monkeypatch, durations):
    """A fake clock for the harness: each call of the returned function advances it by the next duration."""
    now = [0.0]
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    remaining = iter(durations)

    def call():
        now[0] += next(remaining)

    return call


def test_benchmark_reports_the_median_and_iqr_of_its_blocks_and_skips_the_warm_up(monkeypatch):
    """Calls of 1 ms make one-call blocks (the shortest block is 1 ms): the per-call times are the script's."""
    warm_up, sizing = 0.5, 1e-3
    blocks = [1e-3, 2e-3, 1.5e-3, 1e-3]
    call = _scripted_clock(monkeypatch, [warm_up, sizing, *blocks])
    timing = harness.benchmark(call, "cpu", min_run_time=0.004)  # four blocks hold 5.5 ms: enough
    assert timing.median == pytest.approx(np.median(blocks))  # 1.25 ms: the 0.5 s warm-up is not in it
    q1, q3 = np.percentile(blocks, [25, 75])  # NumPy's default is linear interpolation, as torch.quantile
    assert timing.iqr == pytest.approx(q3 - q1) and timing.noisy  # 0.625 ms is 50 % of the median
    assert timing.threads == 1


def test_benchmark_sizes_blocks_to_hold_several_runs_and_measures_at_least_min_run_time(monkeypatch):
    """Calls of 10 µs: blocks grow to min_run_time / (2 · MIN_RUNS) = 10 ms (1,000 calls) and run 80 ms."""
    calls = []
    call = _scripted_clock(monkeypatch, iter(lambda: 1e-5, None))
    timing = harness.benchmark(lambda: calls.append(call()), "cpu", min_run_time=0.08)
    assert timing.median == pytest.approx(1e-5) and timing.iqr == pytest.approx(0, abs=1e-12) and not timing.noisy
    assert 1 + 0.08 / 1e-5 <= len(calls) < 1 + 3 * 0.08 / 1e-5  # warm-up, sizing, then 80 ms of blocks


def test_benchmark_runs_on_the_threads_asked_for_and_restores_them():
    """torch's intra-op threads and the BLAS libraries' are `threads` while `fn` runs, the caller's afterwards."""
    import threadpoolctl

    before, seen = torch.get_num_threads(), []

    def probe():
        seen.append((torch.get_num_threads(), {info["num_threads"] for info in threadpoolctl.threadpool_info()}))

    harness.benchmark(probe, "cpu", min_run_time=0.001, threads=1)
    assert seen and all(seen_threads == (1, {1}) for seen_threads in seen)
    assert torch.get_num_threads() == before


def test_timing_cells_show_the_median_and_the_iqr_share_and_mark_noise():
    quiet = harness.Timing(median=2e-3, iqr=1e-4, threads=1, noisy=False)
    noisy = harness.Timing(median=2e-3, iqr=8e-4, threads=1, noisy=True)
    assert harness.timing_cells(quiet) == ["2 ms", "5 %"]
    assert harness.timing_cells(noisy) == ["2 ms", f"40 % {harness.NOISY_MARK}"]
    assert "1 thread;" in harness.timing_note(1) and "2 threads;" in harness.timing_note(2)


def test_stopwatch_measures_a_known_duration_even_when_the_block_raises():
    with harness.stopwatch() as clock:
        assert math.isnan(clock.seconds)  # no reading before the block ends
        time.sleep(0.05)
    assert 0.05 <= clock.seconds < 0.15
    with pytest.raises(KeyError), harness.stopwatch() as failed:
        time.sleep(0.02)
        raise KeyError("stop")
    assert 0.02 <= failed.seconds < 0.1


@pytest.mark.parametrize(("seconds", "text"), [(2.5, "2.5 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"),
                                                (7e-9, "7 ns"), (1.0, "1 s"), (1e-3, "1 ms"), (1e-6, "1 µs")])
def test_fmt_seconds_picks_units(seconds, text):
    assert harness.fmt_seconds(seconds) == text


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


def _start(tmp_path, *extra):
    return harness.start_lesson("tensor_basics", ["--plots-dir", str(tmp_path), *extra])


def test_start_lesson_returns_the_context_and_prints_the_banner(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    ctx = _start(tmp_path, "--seed", "7", "--device", "cpu")
    assert ctx.seed == 7 and ctx.plots_dir == tmp_path and not ctx.quick and ctx.device == torch.device("cpu")
    assert ctx.prog == "tensor_basics.py"
    torch.testing.assert_close(torch.rand(3, generator=ctx.generator),
                               torch.rand(3, generator=torch.Generator().manual_seed(7)))
    out = capsys.readouterr().out
    assert out.startswith("=== Lesson 1: tensors ===\n") and "seed: 7 | mode: full" in out


@pytest.mark.parametrize("name", ABSENT_ACCELERATORS)
def test_start_lesson_unavailable_device_exits_2_with_one_line(tmp_path, capsys, name, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(SystemExit) as exit_info:
        _start(tmp_path, "--device", name)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "not available" in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("tensor_basics.py: error: ") and captured.out == ""


@pytest.mark.parametrize("name", ABSENT_ACCELERATORS)
def test_in_a_notebook_an_unavailable_device_raises_lesson_error(tmp_path, name, monkeypatch):
    """A notebook cell must not raise SystemExit (Jupyter reports it as an error even for 0)."""
    monkeypatch.setattr(harness, "in_notebook", lambda: True)
    monkeypatch.setattr(harness, "share_notebook_with_workers", lambda module: None)
    with pytest.raises(harness.LessonError, match=f"--device {name}"):
        _start(tmp_path, "--device", name)


def test_a_known_error_in_a_later_section_is_one_line_and_exit_2(capsys, monkeypatch):
    """The hook a script gets: FloatingPointError and LessonError become one line; anything else keeps its traceback."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    harness._one_line_for_known_errors("demo.py")
    with pytest.raises(SystemExit) as exit_info:
        sys.excepthook(FloatingPointError, FloatingPointError("loss became nan at epoch 3 (lr=10)"), None)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "demo.py: error: loss became nan at epoch 3 (lr=10)\n"
    try:
        raise KeyError("a bug")
    except KeyError as err:
        sys.excepthook(KeyError, err, err.__traceback__)  # returns: the interpreter then exits with code 1
    err_text = capsys.readouterr().err
    assert err_text.startswith("Traceback") and "KeyError: 'a bug'" in err_text


@pytest.mark.slow
def test_the_interpreter_exits_2_when_the_hook_raises_system_exit(tmp_path):
    """What the hook relies on, in a real interpreter: SystemExit raised in sys.excepthook sets the exit code."""
    script = tmp_path / "diverges.py"
    script.write_text("import lesson_harness\nlesson_harness._one_line_for_known_errors('diverges.py')\n"
                      "raise FloatingPointError('loss became inf at epoch 2 (lr=5): lower the learning rate')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 2
    assert done.stderr == "diverges.py: error: loss became inf at epoch 2 (lr=5): lower the learning rate\n"


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


def test_context_config_picks_quick_only_under_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    contexts = [_start(tmp_path), _start(tmp_path, "--quick")]
    assert [ctx.config("full", "quick") for ctx in contexts] == ["full", "quick"]


def test_print_pairs_aligns_labels_and_wraps_long_values(capsys):
    harness.print_pairs("Facts", {"a": 1.23456, "longer label": "x " * 80}, width=60)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["", "--- Facts ---", "a             1.235"]
    assert lines[3].startswith("longer label  x x") and len(lines[3]) <= 60
    assert all(line.startswith(" " * 14 + "x") for line in lines[4:]) and len(lines) > 4


def test_sharing_a_notebook_with_workers_rehomes_what_it_defined(monkeypatch):
    """In a kernel, `__main__`'s functions and classes get the lesson's module name, so spawned workers
    that unpickle them import the lesson's script; outside a notebook nothing changes."""
    import types

    main = types.ModuleType("__main__")
    exec("def worker(): pass\nclass Data: pass\nnumber = 3", vars(main))
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.delitem(sys.modules, "some_lesson", raising=False)
    monkeypatch.setattr(harness, "in_notebook", lambda: False)
    harness.share_notebook_with_workers("some_lesson")
    assert main.worker.__module__ == "__main__" and "some_lesson" not in sys.modules
    monkeypatch.setattr(harness, "in_notebook", lambda: True)
    harness.share_notebook_with_workers("some_lesson")
    assert main.worker.__module__ == main.Data.__module__ == "some_lesson" and sys.modules["some_lesson"] is main
    exec("class Later: pass", vars(main))  # a class from a later cell: shared by the next call
    harness.share_notebook_with_workers("some_lesson")
    assert main.Later.__module__ == "some_lesson"


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
