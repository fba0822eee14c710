"""The exercises in exercises/: every check passes on the solutions, fails on the stubs, rejects every wrong answer.

The checks run three times in one fresh process (one import of torch instead of three): pytest on the
solutions (EXERCISES=solutions) and on the wrong answers (EXERCISES=wrong), and `exercises.summary` (pytest
plus the table a learner sees) on the untouched stubs, whose junit report serves the stub checks. All four
tests of those runs are one test function, so that under pytest-xdist no second worker repeats the runs.
The static tests read the code with ast and inspect.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

import course

ROOT = Path(__file__).resolve().parent.parent
EXERCISES_DIR = ROOT / "exercises"
LESSON_FILES = {lesson.module: lesson.script for lesson in course.LESSONS}  # exercises are named after lessons
LESSON_MODULES = {Path(name).stem for name in LESSON_FILES.values()} | {"lesson_harness"}
DOCSTRING_SECTIONS = ("Task:", "Section:", "Signature:", "Shapes:", "Hint:")  # what every exercise states
RUN_TIMEOUT_S = 180  # one pytest run over all checks takes a few seconds; this only stops a hang
MIN_EXERCISES = 15  # the issue asks for 15 or more


def exercise_nodes(lesson: str) -> list[ast.FunctionDef | ast.ClassDef]:
    """The exercises of a stub module: its public top-level functions and classes, in file order."""
    tree = ast.parse((EXERCISES_DIR / f"{lesson}.py").read_text(encoding="utf-8"))
    return [node for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")]


EXERCISES = {lesson: [node.name for node in exercise_nodes(lesson)] for lesson in LESSON_FILES}
ALL_EXERCISES = [(lesson, name) for lesson, names in EXERCISES.items() for name in names]


_THREE_RUNS = """
import contextlib, json, os, sys
import pytest
from exercises import summary

codes = {}
for mode, junit, log in json.loads(sys.argv[1]):
    os.environ.pop("EXERCISES", None)
    if mode != "stubs":
        os.environ["EXERCISES"] = mode  # read by exercises/conftest.py at every collection
    with open(log, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        if mode == "stubs":
            codes[mode] = summary.main(["-p", "no:cacheprovider", f"--junitxml={junit}"])
        else:
            codes[mode] = int(pytest.main(["exercises", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]))
print(json.dumps(codes))
"""


def run_checks_three_ways(tmp: Path) -> dict[str, tuple[SimpleNamespace, Path]]:
    """mode -> (its exit code and printed output, its junit report), for the solutions, the wrong answers and
    the stubs, run one after another in one subprocess."""
    jobs = [(mode, str(tmp / f"{mode}.xml"), str(tmp / f"{mode}.log")) for mode in ("solutions", "wrong", "stubs")]
    env = {key: value for key, value in os.environ.items() if key != "EXERCISES"}
    env["OMP_NUM_THREADS"] = "1"  # tiny checks, and the other test workers share the cores
    done = subprocess.run([sys.executable, "-c", _THREE_RUNS, json.dumps(jobs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.splitlines()[-1])
    return {mode: (SimpleNamespace(returncode=codes[mode], stdout=Path(log).read_text(encoding="utf-8"),
                                   stderr=done.stderr), Path(junit)) for mode, junit, log in jobs}


def junit_cases(xml_path: Path) -> dict[str, tuple[str, str]]:
    """Test name -> (outcome, failure text) from a junit XML report."""
    cases = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, text = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome, text = kind, f"{element.get('message', '')}\n{element.text or ''}"
        cases[f"{case.get('classname')}::{case.get('name')}"] = outcome, text
    return cases


def _expected_test_name(lesson: str, name: str, parameter: str | None = None) -> str:
    return f"exercises.test_{lesson}::test_{name}" + (f"[{parameter}]" if parameter else "")


# Static checks ------------------------------------------------------------------------------------


def test_three_to_five_exercises_per_lesson_and_enough_in_all():
    counts = {lesson: len(names) for lesson, names in EXERCISES.items()}
    assert all(3 <= count <= 5 for count in counts.values()), counts
    assert sum(counts.values()) >= MIN_EXERCISES, counts


def stub_problems(lesson: str, name: str) -> list[str]:
    """What keeps exercise `name` of exercises/<lesson>.py from being an untouched stub (empty if nothing)."""
    node = next(n for n in exercise_nodes(lesson) if n.name == name)
    functions = [node] if isinstance(node, ast.FunctionDef) else [
        n for n in node.body if isinstance(n, ast.FunctionDef)]
    problems = [] if functions else [f"{name} defines no function or method to implement"]
    for function in functions:
        body = function.body[1:] if ast.get_docstring(function) is not None else function.body
        raised = body[0].exc if len(body) == 1 and isinstance(body[0], ast.Raise) else None
        raised = raised.func if isinstance(raised, ast.Call) else raised
        if not (isinstance(raised, ast.Name) and raised.id == "NotImplementedError"):
            problems.append(f"{name}.{function.name} does more than raise NotImplementedError")
    if isinstance(node, ast.ClassDef) and not all(isinstance(n, ast.FunctionDef) for n in node.body[1:]):
        problems.append(f"{name} holds statements besides its docstring and methods")
    return problems


def assert_untouched_stubs(exercises) -> None:
    """The stub checks need untouched stubs: a learner's answers skip them; in CI (CI=true) they must be there."""
    problems = [problem for lesson, name in exercises for problem in stub_problems(lesson, name)]
    if problems and not os.environ.get("CI"):
        pytest.skip(f"your answers are in exercises/ ({len(problems)} stub(s) changed): check them with "
                    "`make exercises`; these checks run on the untouched stubs")
    assert not problems, f"these checks need the untouched stubs, and {problems}"


@pytest.mark.parametrize(("lesson", "name"), ALL_EXERCISES)
def test_stub_bodies_only_raise_not_implemented(lesson, name):
    assert_untouched_stubs([(lesson, name)])


@pytest.mark.parametrize(("lesson", "name"), ALL_EXERCISES)
def test_docstring_states_task_section_signature_shapes_and_hint(lesson, name):
    doc = ast.get_docstring(next(n for n in exercise_nodes(lesson) if n.name == name)) or ""
    missing = [label for label in DOCSTRING_SECTIONS if not re.search(rf"^{label}", doc, re.M)]
    assert not missing, f"{lesson}.{name}: docstring lacks {missing}"
    assert re.search(rf"^Signature: .*\b{name}\b", doc, re.M), f"{lesson}.{name}: the signature names another object"
    section = re.search(r'^Section: "(.+?)" in (\S+\.py) \(lesson (\d)\)\.$', doc, re.M)
    assert section, f"{lesson}.{name}: Section line must read: Section: \"<heading>\" in <lesson>.py (lesson N)."
    heading, lesson_file, number = section.groups()
    assert lesson_file == LESSON_FILES[lesson] and course.LESSONS[int(number) - 1].module == lesson, section.group(0)
    lesson_text = (ROOT / lesson_file).read_text(encoding="utf-8")
    # Either heading style: "# Heading" over "# -----", or a jupytext markdown "# ## Heading".
    assert re.search(rf"^# (## )?{re.escape(heading)}\s*$", lesson_text, re.M), \
        f"{lesson}.{name} quotes section {heading!r}, which {lesson_file} does not have"


def _signatures(obj) -> dict[str, inspect.Signature]:
    if inspect.isclass(obj):
        return {name: inspect.signature(getattr(member, "__func__", member)) for name, member in vars(obj).items()
                if inspect.isfunction(member) or isinstance(member, staticmethod)}
    return {obj.__name__: inspect.signature(obj)}


@pytest.mark.parametrize("lesson", LESSON_FILES)
def test_solutions_and_checks_match_the_stubs(lesson):
    stubs = importlib.import_module(f"exercises.{lesson}")
    solutions = importlib.import_module(f"exercises.solutions.{lesson}")
    tests = importlib.import_module(f"exercises.test_{lesson}")
    solution_names = [n for n, obj in vars(solutions).items() if not n.startswith("_") and
                      (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == solutions.__name__]
    assert solution_names == EXERCISES[lesson]
    test_names = [n.removeprefix("test_") for n in vars(tests) if n.startswith("test_")]
    assert test_names == EXERCISES[lesson], "one test_<exercise> per exercise, in the same order"
    for name in EXERCISES[lesson]:
        stub_signatures = _signatures(getattr(stubs, name))
        solution_signatures = _signatures(getattr(solutions, name))
        assert {k: solution_signatures.get(k) for k in stub_signatures} == stub_signatures, name


def test_every_exercise_has_a_wrong_answer():
    from exercises.wrong_answers import WRONG_ANSWERS

    exercise_names = {name for _, name in ALL_EXERCISES}
    assert set(WRONG_ANSWERS) == exercise_names
    for name, wrong in WRONG_ANSWERS.items():
        assert wrong and all(w.mistake for w in wrong), f"{name}: every wrong answer says what is wrong"


@pytest.mark.parametrize("path", sorted(EXERCISES_DIR.rglob("*.py")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_exercise_code_does_not_import_the_lessons(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & LESSON_MODULES, f"{path.name} imports {imported & LESSON_MODULES}"


def test_readme_exercise_table_lists_every_exercise():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "exercises/solutions" not in readme:
        pytest.skip("README.md has no exercises section yet (the lead adds it from the notes)")
    listed = set(re.findall(r"`(\w+)`", readme))
    missing = [name for _, name in ALL_EXERCISES if name not in listed]
    assert not missing, f"README.md's exercise table lacks {missing}"
    from exercises.wrong_answers import WRONG_ANSWERS

    for pattern, actual in [(r"(\d+) exercises", len(ALL_EXERCISES)),
                            (r"(\d+) plausible wrong answers", sum(map(len, WRONG_ANSWERS.values())))]:
        for claimed in re.findall(pattern, readme):
            assert int(claimed) == actual, f"README.md says {claimed} for {pattern!r}; there are {actual}"


# Runs of the checks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_checks_pass_on_the_solutions_reject_every_wrong_answer_and_say_not_done_yet_on_the_stubs(tmp_path):
    from exercises.wrong_answers import WRONG_ANSWERS

    runs = run_checks_three_ways(tmp_path)

    # Every check passes on the solutions, without warnings.
    result, junit = runs["solutions"]
    cases = junit_cases(junit)
    expected = {_expected_test_name(lesson, name) for lesson, name in ALL_EXERCISES}
    assert set(cases) == expected and len(cases) >= MIN_EXERCISES
    failed = {name: text for name, (outcome, text) in cases.items() if outcome != "passed"}
    assert not failed, failed
    assert result.returncode == 0, result.stdout[-3000:]
    assert "warnings summary" not in result.stdout, result.stdout[-3000:]

    # Every plausible wrong answer is rejected, with a hint.
    result, junit = runs["wrong"]
    cases = junit_cases(junit)
    lesson_of = {name: lesson for lesson, name in ALL_EXERCISES}
    expected = {_expected_test_name(lesson_of[w.exercise], w.exercise, w.mistake_id)
                for wrong in WRONG_ANSWERS.values() for w in wrong}
    assert set(cases) == expected
    for test_name, (outcome, text) in cases.items():
        assert outcome == "failure", f"{test_name}: the wrong answer was not rejected ({outcome}): {text}"
        assert "Hint:" in text and "not done yet" not in text, f"{test_name}: {text}"
    assert result.returncode == 1

    # On the untouched stubs every check fails with "not done yet", and the summary lists every exercise so.
    assert_untouched_stubs(ALL_EXERCISES)
    result, junit = runs["stubs"]
    cases = junit_cases(junit)
    assert set(cases) == {_expected_test_name(lesson, name) for lesson, name in ALL_EXERCISES}
    for lesson, name in ALL_EXERCISES:
        outcome, text = cases[_expected_test_name(lesson, name)]
        assert outcome == "failure", (name, outcome, text)
        assert f"not done yet: {name} — open exercises/{lesson}.py" in text, text
    assert result.returncode == 0, "the summary exits 0 while exercises are open"
    for lesson, name in ALL_EXERCISES:
        assert re.search(rf"^{lesson}\s+{name}\s+.*\s+not done yet$", result.stdout, re.M), (name, result.stdout)
    assert f"Total: 0 of {len(ALL_EXERCISES)} done, 0 wrong, {len(ALL_EXERCISES)} not done yet." in result.stdout


@pytest.mark.parametrize("value", ["solution", "Solutions", "learner", "all"])
def test_unknown_exercises_mode_is_rejected_with_the_valid_values(monkeypatch, value):
    from exercises.conftest import exercise_mode

    monkeypatch.setenv("EXERCISES", value)
    with pytest.raises(pytest.UsageError, match=rf"EXERCISES='{value}' is not a mode: .*EXERCISES=solutions"):
        exercise_mode()


@pytest.mark.parametrize(("value", "mode"), [(None, ""), ("", ""), ("solutions", "solutions"), ("wrong", "wrong")])
def test_known_exercises_modes(monkeypatch, value, mode):
    from exercises.conftest import exercise_mode

    if value is None:
        monkeypatch.delenv("EXERCISES", raising=False)
    else:
        monkeypatch.setenv("EXERCISES", value)
    assert exercise_mode() == mode
