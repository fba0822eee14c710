"""course.py is the one list of lessons: every file a lesson needs follows from its row, and the budgets add up."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT

import course

sys.path.insert(0, str(ROOT / "tools"))
import timings  # noqa: E402  (tools/ is a folder of scripts, not a package)


def test_titles_number_the_lessons_in_order_and_are_written_only_in_course_py():
    for number, lesson in enumerate(course.LESSONS, start=1):
        assert re.fullmatch(rf"Lesson {number}: \S.*", lesson.title), lesson.title
    titles = [lesson.title for lesson in course.LESSONS]
    for path in [*ROOT.glob("*.py"), *ROOT.glob("exercises/*.py"), *ROOT.glob("tools/*.py")]:
        if path.name != "course.py":
            text = path.read_text(encoding="utf-8")
            assert not [title for title in titles if title in text], f"{path.name} writes a lesson title"


@pytest.mark.parametrize("lesson", course.LESSONS, ids=lambda lesson: lesson.module)
def test_every_file_of_a_lesson_is_named_after_its_module(lesson):
    for path in (lesson.script, f"notebooks/{lesson.module}.ipynb", f"tests/test_{lesson.module}.py",
                 f"exercises/{lesson.module}.py", f"exercises/test_{lesson.module}.py",
                 f"exercises/solutions/{lesson.module}.py", *(f"plots/{name}" for name in lesson.figures)):
        assert (ROOT / path).is_file(), f"{lesson.module}: {path} is missing"


def test_nothing_is_named_after_a_lesson_that_is_not_in_the_table():
    modules = {lesson.module for lesson in course.LESSONS}
    named = {path.stem.removeprefix("test_") for folder in ("tests", "exercises", "exercises/solutions")
             for path in (ROOT / folder).glob("*.py")} | {path.stem for path in (ROOT / "notebooks").glob("*.ipynb")}
    not_lessons = {"conftest", "checks", "summary", "catalog", "rules", "__init__", "exercises", "lesson_harness",
                   "notebooks", "reliability", "course", "readme", "website"}
    assert named - not_lessons == modules


def test_lesson_budgets_fit_the_course_budgets():
    assert sum(lesson.quick_budget_floors for lesson in course.LESSONS) <= course.QUICK_TOTAL_BUDGET_FLOORS == 12
    assert sum(lesson.full_budget_floors for lesson in course.LESSONS) <= course.FULL_TOTAL_BUDGET_FLOORS == 24
    assert all(lesson.quick_budget_floors <= lesson.full_budget_floors for lesson in course.LESSONS)


def test_python_course_py_lists_the_scripts_for_the_makefile():
    done = subprocess.run([sys.executable, str(ROOT / "course.py")], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == [lesson.script for lesson in course.LESSONS]


def test_lesson_lookup_names_the_choices_when_the_module_is_unknown():
    assert course.lesson("tensor_basics").script == "tensor_basics.py"
    with pytest.raises(ValueError, match="module='tensors' is not a lesson"):
        course.lesson("tensors")


def test_make_timings_divides_by_the_floor_and_flags_what_is_over(monkeypatch, capsys):
    """A fake clock: the floor takes 2 s; lesson k takes k + 1 s quick and 10·(k + 1) s full."""
    def fake_wall(command):
        if command[1] == "-c":
            assert command[2] == timings.FLOOR_CODE
            return 2.0
        index = [lesson.script for lesson in course.LESSONS].index(command[1].rsplit("/", 1)[-1])
        assert command[2:6] == ["--device", "cpu", "--plots-dir", command[5]]
        return (index + 1.0) * (1 if "--quick" in command else 10)

    monkeypatch.setattr(timings, "wall_seconds", fake_wall)
    assert timings.main([]) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith(course.LESSONS[0].script))
    assert first.split()[1:3] == ["1.0", "0.50"] and first.split()[4:6] == ["10.0", "5.00"]
    n = len(course.LESSONS)
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[2] == f"{n * (n + 1) / 2 / 2:.2f}"
    assert "over budget: " in out and f"{course.LESSONS[0].script} full" in out


@pytest.mark.slow
def test_doctor_reports_this_machine_and_a_verdict_per_lesson(capsys):
    import torch

    assert course.doctor() == 0  # in this process; its torch.compile check starts a process of its own
    printed = capsys.readouterr()
    assert printed.err == ""
    done = SimpleNamespace(stdout=printed.out)
    rows = {line.split("  ")[0]: line.split() for line in done.stdout.splitlines()[1:] if "  " in line}
    from importlib.metadata import version

    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "scikit-learn"):
        assert rows[package][1:3] == ["ok", version(package)]
    assert rows["CUDA"][1] == ("ok" if torch.cuda.is_available() else "absent")
    assert rows["MPS"][1] == ("ok" if torch.backends.mps.is_available() else "absent")
    assert rows["DDP backend gloo"][3] == ("ok" if torch.distributed.is_gloo_available() else "absent")
    assert rows["torch.compile"][1] == "ok" and rows["ONNX Runtime"][2] == "ok"  # both work on the test machines
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert rows["torch.compile"][2:8] == ["a", "small", "convolution", "on", f"{device}:", "first"]
    assert [line for line in done.stdout.splitlines() if line.endswith(": runs")] == [
        f"{lesson.module}: runs" for lesson in course.LESSONS]


def test_doctor_names_what_a_lesson_runs_without(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    rows, verdicts = course.doctor_rows(compile_result=(False, "InvalidCxxCompiler: no working C++ compiler"))
    assert ("torch.compile", "fails", "InvalidCxxCompiler: no working C++ compiler") in rows
    assert [row[:2] for row in rows if row[0] == "ONNX Runtime"] == [("ONNX Runtime", "fails")]
    assert verdicts[-1] == ("digits_classifier: --quick runs; the full run stops at its export without onnxruntime "
                            "(run `make demo`)")
    assert verdicts[:-1] == [f"{lesson.module}: runs" for lesson in course.LESSONS[:-1]]
    monkeypatch.delitem(sys.modules, "onnxruntime")
    _, verdicts = course.doctor_rows(compile_result=(False, "InvalidCxxCompiler: no working C++ compiler"))
    assert verdicts[-1] == "digits_classifier: runs without torch.compile"
    monkeypatch.setitem(sys.modules, "torch", None)
    rows, verdicts = course.doctor_rows(compile_result=(True, "-"))
    assert rows[-1][:2] == ("import torch", "fails")
    assert verdicts == [f"{lesson.module}: does not run (torch does not import)" for lesson in course.LESSONS]


def test_doctor_exits_1_when_something_fails(monkeypatch, capsys):
    monkeypatch.setattr(course, "compile_check", lambda: (False, "InvalidCxxCompiler"))
    assert course.doctor() == 1
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["torch.compile", "fails", "InvalidCxxCompiler"] in printed


def test_a_compile_check_that_fails_or_hangs_is_one_line_not_a_traceback(monkeypatch):
    monkeypatch.setattr(course, "DOCTOR_COMPILE_CODE", "raise RuntimeError('InvalidCxxCompiler: no C++ compiler')")
    assert course.compile_check(timeout_s=60) == (False, "RuntimeError: InvalidCxxCompiler: no C++ compiler")
    monkeypatch.setattr(course, "DOCTOR_COMPILE_CODE", "import time; time.sleep(30)")
    assert course.compile_check(timeout_s=1) == (False, "no answer within 1 s")
    assert course.compile_check(python="/nonexistent/python", timeout_s=1)[0] is False
