"""The five lessons behave as one course: same CLI, clean failures, headless, reproducible."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ABSENT_ACCELERATORS, assert_pngs_written

import lesson_harness

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    "tensor_basics": ["tensor_operations_visualization.png", "matmul_benchmark.png"],
    "autograd_demo": ["autograd_graph.png", "finite_difference_error.png", "gradient_flow_analysis.png"],
    "linear_regression_torch": ["linear_regression_comparison.png", "numpy_vs_torch_scaling.png"],
    "custom_nn_module": ["custom_modules_analysis.png", "memory_checkpointing.png"],
    "dataset_loader_demo": ["dataset_loader_analysis.png", "digits_samples.png"],
}
SCRIPTS = list(FIGURES)


def _clean_env() -> dict[str, str]:
    """The environment of a plain terminal with no display and no matplotlib backend chosen."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize("script", SCRIPTS)
def test_unavailable_cuda_exits_2_with_one_line_in_a_real_process(script, tmp_path):
    if "cuda" not in ABSENT_ACCELERATORS:
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--device", "cuda", "--plots-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, env=_clean_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{script}.py: error: --device cuda was requested but is not available")


@pytest.mark.parametrize("device", ABSENT_ACCELERATORS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_unavailable_device_exits_2(script, device, tmp_path, capsys):
    module = importlib.import_module(script)
    assert module.main(["--device", device, "--plots-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"--device {device}" in captured.err
    assert "=== Lesson" not in captured.out  # nothing ran


@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_plots_dir_exits_2(script, unwritable_dir, capsys):
    module = importlib.import_module(script)
    assert module.main(["--quick", "--device", "cpu", "--plots-dir", str(unwritable_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write figures to --plots-dir" in err and "Traceback" not in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_shares_the_cli_and_defaults_to_plots_next_to_it(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--device {auto,cpu,cuda,mps}", "--quick", "--plots-dir", "--seed"):
        assert flag in help_text
    assert module.__doc__.splitlines()[0] in help_text  # --help says what the script teaches
    assert lesson_harness.DEFAULT_PLOTS_DIR == ROOT / "plots"
    assert Path(module.__file__).resolve().parent / "plots" == lesson_harness.DEFAULT_PLOTS_DIR


def _round_off_masked(text: str) -> str:
    """Residuals at machine precision (below 1e-12) vary with threaded LAPACK's summation order."""
    return re.sub(r"\d\.\d+e-(1[2-9]|[2-9]\d)", "<round-off>", text)


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_is_reproducible_headless_and_independent_of_the_working_directory(
        script, tmp_path, monkeypatch, capsys):
    """Two quick runs with one seed print the same numbers (timings masked) and write every figure."""
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(lesson_harness, "MASK_TIMINGS", True)
    monkeypatch.chdir(tmp_path)  # a relative --plots-dir resolves against the caller's directory
    module = importlib.import_module(script)
    outputs = []
    for _ in range(2):
        assert module.main(["--quick", "--device", "cpu", "--seed", "3", "--plots-dir", "figures"]) == 0
        outputs.append(capsys.readouterr().out)
    assert _round_off_masked(outputs[0]) == _round_off_masked(outputs[1])
    assert "seed: 3" in outputs[0] and "<time>" in outputs[0]
    assert_pngs_written(tmp_path / "figures", FIGURES[script])
    assert "matplotlib.pyplot" not in sys.modules  # figures never touch pyplot's global state or a display


def test_a_real_process_runs_headless_from_another_directory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tensor_basics.py"), "--quick", "--device", "cpu",
                           "--plots-dir", "out"], capture_output=True, text=True, timeout=120, env=_clean_env(),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""  # no warnings either
    assert_pngs_written(tmp_path / "out", FIGURES["tensor_basics"])


def test_pytest_turns_project_deprecations_into_errors():
    """pyproject's filterwarnings: a DeprecationWarning attributed to a lesson module fails the suite."""
    import warnings

    import tensor_basics

    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, tensor_basics.__file__, 1, module="tensor_basics")


def test_every_number_printed_as_time_goes_through_the_masking_helpers():
    """Any hard-coded timing format in a lesson would escape the reproducibility check above."""
    pattern = re.compile(r"(perf_counter\(\)|\.median)\s*[^\n]*:\.\d")
    for script in SCRIPTS:
        source = (ROOT / f"{script}.py").read_text(encoding="utf-8")
        assert not pattern.search(source), script
