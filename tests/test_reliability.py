"""The lessons behave as one course: same set-up cell and CLI, clean failures, headless, reproducible."""

from __future__ import annotations

import ast
import importlib
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ABSENT_ACCELERATORS, LESSON_MODULES, ROOT, assert_pngs_written, clean_env, demo_cells, run_script
from matplotlib.figure import Figure

import course
import lesson_harness

SCRIPTS = LESSON_MODULES
FIGURES = {lesson.module: lesson.figures for lesson in course.LESSONS}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_demo_cell_is_guarded_and_the_set_up_cell_comes_first(script):
    """Importing a lesson defines things and runs nothing: every top-level statement that does work sits
    under `if __name__ == "__main__":`, and the first such cell is the set-up cell, which reads the flags."""
    tree = ast.parse((ROOT / f"{script}.py").read_text(encoding="utf-8"))
    guards = []
    for statement in tree.body:
        if isinstance(statement, ast.If):
            assert ast.unparse(statement.test) == "__name__ == '__main__'", ast.unparse(statement.test)
            guards.append(statement)
        else:
            definition = ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign
            assert isinstance(statement, definition | ast.Expr), ast.unparse(statement)[:80]
            if isinstance(statement, ast.Expr):  # the module docstring, nothing else
                assert isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)
    assert len(guards) >= 5, "each section shows its own result"
    assert ast.unparse(guards[0].body[0]) == f"ctx = start_lesson({script!r})"


@pytest.mark.slow
def test_importing_every_lesson_prints_nothing():
    """Tests, DataLoader workers and DDP ranks import the lessons: that must run no section."""
    code = "; ".join(f"import {script}" for script in SCRIPTS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env(),
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr == ""


def test_unavailable_cuda_exits_2_with_one_line_in_a_real_process(tmp_path):
    """One script in a real process (each is a separate interpreter start, and all share this code path);
    the in-process test below checks every script's message."""
    if "cuda" not in ABSENT_ACCELERATORS:
        pytest.skip("this machine has CUDA")
    script = SCRIPTS[0]
    done = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--device", "cuda", "--plots-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{script}.py: error: --device cuda was requested but is not available")
    assert done.stdout == ""


@pytest.mark.parametrize("device", ABSENT_ACCELERATORS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_unavailable_device_exits_2(script, device, tmp_path, capsys):
    assert run_script(script, ["--device", device, "--plots-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"{script}.py: error: --device {device} was requested but is not available")
    assert captured.out == ""  # nothing ran, not even the banner


@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_plots_dir_exits_2(script, unwritable_dir, capsys):
    assert run_script(script, ["--quick", "--device", "cpu", "--plots-dir", str(unwritable_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write figures to --plots-dir" in err and "Traceback" not in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_shares_the_cli_and_defaults_to_plots_next_to_it(script, capsys):
    module = importlib.import_module(script)
    assert run_script(script, ["--help"]) == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: {script}.py ")
    for flag in ("--device {auto,cpu,cuda,mps}", "--quick", "--plots-dir", "--seed"):
        assert flag in help_text
    assert module.__doc__.splitlines()[0] in help_text  # --help says what the script teaches
    assert lesson_harness.DEFAULT_PLOTS_DIR == ROOT / "plots"
    assert Path(module.__file__).resolve().parent / "plots" == lesson_harness.DEFAULT_PLOTS_DIR


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_banner_shows_the_title_from_the_course_table(script, tmp_path, capsys, monkeypatch):
    """The title is written once, in course.py; the banner reads it from there."""
    monkeypatch.setattr(course, "LESSONS", tuple(
        course.Lesson(row.module, f"Title under test {index}", row.figures, row.quick_budget_floors,
                      row.full_budget_floors, row.worker_start) for index, row in enumerate(course.LESSONS)))
    monkeypatch.setattr(lesson_harness, "print_banner", lambda title, *rest: print(f"=== {title} ==="))
    ctx = lesson_harness.start_lesson(script, ["--device", "cpu", "--plots-dir", str(tmp_path)])
    assert capsys.readouterr().out == f"=== Title under test {SCRIPTS.index(script)} ===\n"
    assert ctx.prog == f"{script}.py"
    assert f'"{course.lesson(script).title}"' not in (ROOT / f"{script}.py").read_text(encoding="utf-8")


def _cell_text(script: str, first_line: str) -> str:
    """The source of the lesson's demo cell that starts with `first_line`."""
    tree = ast.parse((ROOT / f"{script}.py").read_text(encoding="utf-8"))
    return next(ast.unparse(node) for node in tree.body if isinstance(node, ast.If) and node.body
                and ast.unparse(node.body[0]).splitlines()[0] == first_line)


def _round_off_masked(text: str) -> str:
    """Residuals at machine precision (below 1e-12) vary with threaded LAPACK's summation order."""
    return re.sub(r"\d\.\d+e-(1[2-9]|[2-9]\d)", "<round-off>", text)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_is_reproducible_headless_and_independent_of_the_working_directory(
        script, tmp_path, monkeypatch, capsys, fake_timings):
    """Two quick runs with one seed print the same text (timings faked), another seed prints other numbers
    in the first cell that draws from it, and every figure is built and saved to the plots directory
    relative to the caller's working directory, without pyplot."""
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)  # a relative --plots-dir resolves against the caller's directory
    # Rendering the PNGs is most of a quick run's time; the real-process test below renders and checks them.
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *args, **kwargs: saved.append(Path(path)))
    started = []  # every worker process the runs start (DataLoader workers, DDP ranks), whatever the method
    start = multiprocessing.process.BaseProcess.start
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        lambda self: started.append(type(self).__name__) or start(self))
    # Both runs skip lesson 3's DDP cell: its ranks take seconds to spawn, and the real-process and notebook
    # tests start them (and check their result). Everything else prints exactly the same twice.
    only = [first for first, _ in demo_cells(script) if "train_ddp(" not in first]
    outputs = []
    for _ in range(2):
        assert run_script(script, ["--quick", "--device", "cpu", "--seed", "3", "--plots-dir", "figures"],
                          only=only) == 0
        outputs.append(_round_off_masked(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert saved == [Path("figures", name) for name in FIGURES[script]] * 2
    assert [line for line in outputs[0].splitlines() if line.startswith("saved ")] == [
        f"saved {Path('figures', name)}" for name in FIGURES[script]]
    # Another seed: the first cell that draws from the seed and prints what it drew prints something else.
    # (A whole third run would repeat the costly parts; the lesson tests check the seed in each part.)
    seeded = [first for first, _ in demo_cells(script)[1:]
              if re.search(r"ctx\.(seed|generator)", _cell_text(script, first)) and "train_ddp(" not in first]
    for first in seeded:
        printed = {}
        for seed in ("3", "4"):
            assert run_script(script, ["--quick", "--device", "cpu", "--seed", seed, "--plots-dir", "figures"],
                              only=[first]) == 0
            printed[seed] = capsys.readouterr().out.replace(f"seed: {seed}", "seed: N")
        if printed["3"] != printed["4"]:
            break
    else:
        raise AssertionError(f"no cell of {script} prints anything that --seed changes")
    assert (tmp_path / "figures").is_dir()
    # The notebook tests run a lesson under both start methods only if its workers follow the default one.
    kinds, expected = set(started), course.lesson(script).worker_start
    if expected is None:
        assert not kinds
    elif expected == "spawn":
        assert kinds <= {"SpawnProcess"}  # its DDP cell, skipped here, spawns; nothing else starts a process
    else:
        assert kinds and (multiprocessing.get_start_method() == "spawn" or kinds != {"SpawnProcess"}), kinds
    assert "matplotlib.pyplot" not in sys.modules  # figures never touch pyplot's global state or a display


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_real_process_runs_headless_and_silent_from_another_directory(script, tmp_path):
    """Nothing at all on stderr: no warning, no log line, no leak report at exit (CUDA builds included)."""
    done = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--quick", "--device", "cpu",
                           "--plots-dir", "out"], capture_output=True, text=True, timeout=180, env=clean_env(),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    assert_pngs_written(tmp_path / "out", FIGURES[script])
    # Lesson 3's DDP ranks, spawned for real here, end where the one-process fit ends (float32 round-off).
    for difference in re.findall(r"max \|difference\| of parameters: (\S+)", done.stdout):
        assert float(difference) < 1e-5, difference


def test_pytest_turns_project_deprecations_into_errors():
    """pyproject's filterwarnings: a DeprecationWarning attributed to a lesson module fails the suite."""
    import warnings

    import tensor_basics

    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, tensor_basics.__file__, 1, module="tensor_basics")


def test_every_timing_goes_through_the_harness_clocks():
    """A lesson that read a clock itself would escape `fake_timings`, and the repeatability check above."""
    # time.monotonic() stays allowed: a deadline for a timeout is not a measurement anybody reads.
    pattern = re.compile(r"perf_counter|time\.time\(|benchmark\.Timer|\.blocked_autorange|\.timeit\(|profiler\.profile")
    for script in SCRIPTS:
        lines = (ROOT / f"{script}.py").read_text(encoding="utf-8").splitlines()
        code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))  # prose may name them
        assert not pattern.search(code), f"{script}.py reads a clock directly: use benchmark or stopwatch"


