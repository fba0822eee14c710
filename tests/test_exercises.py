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
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

import course
from exercises import catalog

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
    os.environ.pop("EXERCISES_TIME_SCALE", None)
    if mode != "stubs":
        os.environ["EXERCISES"] = mode  # read by exercises/conftest.py at every collection
    if mode == "wrong":
        os.environ["EXERCISES_TIME_SCALE"] = "0.2"  # the endless loop stops after 2 s, not 10
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


def _paragraphs(doc: str, label: str) -> list[str]:
    """The text of every paragraph of `doc` that starts with `label`, joined onto one line."""
    return [" ".join(match.split()) for match in
            re.findall(rf"^{label}:(.*?)(?=\n\S+:|\Z)", doc, re.S | re.M)]


@pytest.mark.parametrize(("lesson", "name"), ALL_EXERCISES)
def test_docstring_section_rules_and_hint_are_the_catalogs(lesson, name):
    """The checks read the catalog (a learner may edit the docstring); the docstring starts out saying the same."""
    record = catalog.BY_NAME[name]
    assert record.lesson == lesson
    doc = ast.get_docstring(next(n for n in exercise_nodes(lesson) if n.name == name)) or ""
    assert re.search(r'^Section: "(.+?)"', doc, re.M).group(1) == record.section
    assert _paragraphs(doc, "Rule") == [f"{rule.says}." for rule in record.rules]
    assert _paragraphs(doc, "Hint") == [record.idea]


def test_catalog_lists_every_exercise_in_the_stubs_order_with_a_level_and_both_hints():
    assert [(e.lesson, e.name) for e in catalog.EXERCISES] == ALL_EXERCISES
    for exercise in catalog.EXERCISES:
        assert exercise.level in catalog.LEVELS and exercise.idea and exercise.recipe, exercise.name
        assert exercise.idea != exercise.recipe and exercise.time_limit_s > 0, exercise.name


@pytest.mark.parametrize("rule", [rule for e in catalog.EXERCISES for rule in e.rules], ids=lambda rule: rule.says[:40])
def test_every_banned_name_resolves_to_a_callable(rule):
    import torch

    from exercises.rules import _resolve

    for dotted in rule.banned:
        assert callable(_resolve(dotted)), dotted
    for module in rule.banned_files:
        assert importlib.import_module(module).__file__
    for name in rule.banned_ops:
        assert hasattr(torch.ops.aten, name), name


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


def test_every_exercise_has_mistakes_that_are_small_changes_of_its_solution_and_say_what_they_show():
    from exercises.mistakes import all_mistakes, build

    mistakes = all_mistakes()
    assert set(mistakes) == {name for _, name in ALL_EXERCISES}
    for name, found in mistakes.items():
        ids = [mistake.mistake_id for _, mistake in found]
        assert len(ids) == len(set(ids)), f"{name}: mistake ids repeat"
        for lesson, mistake in found:
            assert mistake.mistake and mistake.shows and mistake.change, (name, mistake.mistake_id)
            assert (lesson, name) in ALL_EXERCISES
            solution = getattr(importlib.import_module(f"exercises.solutions.{lesson}"), name)
            built = build(lesson, mistake)  # every change applies exactly once
            assert inspect.isclass(built) == inspect.isclass(solution), mistake.mistake_id


def _changed_text(mistake) -> str:
    return mistake.setup + "".join(mistake.change.values())


def test_every_ban_is_broken_by_a_direct_call_and_by_an_alias_or_wrapper_in_the_mistakes():
    """The issue's "each rule caught by at least two routes": a mistake calling the banned function by its
    torch name, and one reaching it through `import ... as` or a helper that catches its error."""
    from exercises.mistakes import all_mistakes

    mistakes = all_mistakes()
    for exercise in catalog.EXERCISES:
        for rule in exercise.rules:
            if not (rule.banned or rule.banned_files):
                continue
            breaking = [m for _, m in mistakes[exercise.name]
                        if m.shows == f"breaks a rule of this exercise: {rule.says.split(':')[0]}"]
            routes = {"alias or wrapper" if re.search(r"from \S+ import \w+ as \w+", m.setup) or
                      "try:" in _changed_text(m) else "direct" for m in breaking}
            assert routes == {"direct", "alias or wrapper"}, (exercise.name, rule.says, routes)


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
    from exercises.mistakes import all_mistakes

    for pattern, actual in [(r"(\d+) exercises", len(ALL_EXERCISES)),
                            (r"(\d+) plausible wrong answers", sum(map(len, all_mistakes().values())))]:
        for claimed in re.findall(pattern, readme):
            assert int(claimed) == actual, f"README.md says {claimed} for {pattern!r}; there are {actual}"
    limits = (f"A check stops after {catalog.TIME_LIMIT_S:g} s (the training one after "
              f"{catalog.BY_NAME['train_digits_classifier'].time_limit_s:g} s)")
    assert limits in " ".join(readme.split()), "README.md states the checks' time limits"


# Runs of the checks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_checks_pass_on_the_solutions_reject_every_wrong_answer_and_say_not_done_yet_on_the_stubs(tmp_path):
    from exercises.mistakes import all_mistakes

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

    # Every plausible wrong answer is rejected, with its diagnosis and a hint; the endless loop within its limit.
    result, junit = runs["wrong"]
    cases = junit_cases(junit)
    shows = {_expected_test_name(lesson, mistake.exercise, mistake.mistake_id): mistake.shows
             for found in all_mistakes().values() for lesson, mistake in found}
    assert set(cases) == set(shows)
    for test_name, (outcome, text) in cases.items():
        assert outcome == "failure", f"{test_name}: the wrong answer was not rejected ({outcome}): {text}"
        assert "Hint:" in text and "not done yet" not in text and "Traceback" not in text, f"{test_name}: {text}"
        assert shows[test_name] in text, f"{test_name}: the message does not show {shows[test_name]!r}:\n{text}"
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


# The machinery: rules, previews, diagnoses, time limits, the summary ------------------------------


def _rule(*banned: str, files: tuple[str, ...] = ()):
    from exercises.rules import Rule

    return Rule("a test rule", "a test", banned=banned, banned_files=files)


def test_a_ban_is_seen_by_name_by_alias_by_method_and_through_a_wrapper_that_swallows_the_error():
    import torch

    from exercises.rules import watching

    softmax_alias = torch.nn.functional.softmax  # bound before the watch starts, as an import at the top would be
    x = torch.randn(2, 3)
    routes = {"torch.softmax": lambda: torch.softmax(x, 1), "alias": lambda: softmax_alias(x, 1),
              "method": lambda: x.softmax(1)}
    rule = _rule("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax")
    for route, call in routes.items():
        with watching((rule,)) as watch:
            call()
        assert watch.seen, route

    def swallowed():
        try:
            torch.softmax(x, 7)  # raises IndexError inside torch
        except Exception:
            return "fine"

    with watching((rule,)) as watch:
        swallowed()
    assert watch.seen == ["torch.softmax"]
    with watching((rule,)) as watch:
        torch.exp(x) / torch.exp(x).sum(1, keepdim=True)  # the allowed way
    assert watch.seen == []


def test_python_functions_numpy_functions_classes_and_whole_modules_are_watched():
    import numpy as np
    import torch

    from exercises.rules import reference, watching

    bs = torch.broadcast_shapes  # a Python function that torch's function mode never sees
    rule = _rule("torch.broadcast_shapes", "numpy.zeros", "torch.nn.Module", files=("torch.nn.init",))
    checks = {"torch.broadcast_shapes": lambda: bs((2, 1), (3,)), "np.zeros": lambda: np.zeros(3),
              "torch.nn.Module (constructing one, or a subclass)": lambda: torch.nn.Linear(2, 2),
              "torch.nn.init (any of its functions)": lambda: torch.nn.init.zeros_(torch.empty(3))}
    for label, call in checks.items():
        with watching((rule,)) as watch:
            call()
        assert label in watch.seen, (label, watch.seen)
    with watching((rule,)) as watch, reference():
        bs((2, 1), (3,))  # the check's own reference computations are not the learner's
    assert watch.seen == []


def test_reverse_passes_are_counted_once_each_also_inside_a_torch_function_watch():
    import torch

    from exercises.rules import watching

    x = torch.ones(3, requires_grad=True)
    with watching((_rule("torch.softmax"),)), watching(count_reverse_passes=True) as passes:
        torch.autograd.grad((x * 2).sum(), x)
        (x * 3).sum().backward()
    assert passes.reverse_passes == 2


def _failure(call) -> str:
    with pytest.raises(pytest.fail.Exception) as caught:
        call()
    return str(caught.value)


def test_preview_shows_a_small_matrix_whole_and_a_large_tensor_around_its_worst_mismatch():
    import torch

    from exercises.checks import check_close

    expected = torch.arange(25.0).reshape(5, 5)
    got = expected.clone()
    got[4, 3] = -1.0
    text = _failure(lambda: check_close(got, expected, what="m", hint="h", rtol=0, atol=0))
    assert "index [4, 3]: expected 23, got -1" in text
    assert "[20., 21., 22., -1., 24.]" in text and "[20., 21., 22., 23., 24.]" in text  # both whole
    big = torch.zeros(3, 5, 40)
    wrong = big.clone()
    wrong[2, 1, 30] = float("nan")
    text = _failure(lambda: check_close(wrong, big, what="t", hint="h", rtol=0, atol=0))
    assert "index [2, 1, 30]" in text and "27 … 33 of 40" in text
    assert re.search(r"\[2, 1, 30\]\s+0\s+nan\s+✗", text), text
    assert "NaN" in text  # the diagnosis


@pytest.mark.parametrize(("make_got", "says"), [
    (lambda e: 3 * e, "3× the expected value everywhere — n_chunks"),
    (lambda e: -e, "the sign is flipped everywhere"),
    (lambda e: e + 0.5, "+0.5 everywhere"),
    (lambda e: e.mT, "the transpose"),
    (lambda e: e.flip(-1), "reverse order"),
])
def test_diagnoses_name_the_shape_of_the_difference(make_got, says):
    import torch

    from exercises.checks import check_close

    expected = torch.tensor([[1.0, 2.0, 4.0], [3.0, 5.0, 9.0], [7.0, 6.0, 8.0]])
    text = _failure(lambda: check_close(make_got(expected), expected, what="x", hint="h", rtol=1e-9, atol=1e-9,
                                        scales={3.0: "n_chunks"}))
    assert says in text, text


def test_left_padding_off_by_one_and_known_mistakes_are_recognised():
    import torch

    from exercises.checks import check_close

    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [6.0, 0.0, 0.0]])
    left = torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 5.0], [0.0, 0.0, 6.0]])
    assert "padding on the left" in _failure(lambda: check_close(left, expected, what="p", hint="h", rtol=0, atol=0))
    short = torch.zeros(3, 2)
    assert "1 fewer along dimension 1 than expected (off by one?)" in _failure(
        lambda: check_close(short, expected, what="p", hint="h", rtol=0, atol=0))
    assert "Looks like: the thing I know." in _failure(lambda: check_close(
        expected * 0, expected, what="p", hint="h", rtol=0, atol=0, looks_like={"the thing I know": expected * 0}))


def test_every_failure_ends_with_the_catalogs_idea_and_the_recipe_only_with_hint_2(monkeypatch):
    import torch

    from exercises.checks import check_close, checking

    record = catalog.BY_NAME["vandermonde"]

    def failing():
        with checking(record):
            check_close(torch.zeros(2), torch.ones(2), what="v", hint="the check's hint", rtol=0, atol=0)

    monkeypatch.delenv(catalog.HINT_ENV, raising=False)
    text = _failure(failing)
    assert "Hint: the check's hint" in text and f"Idea: {record.idea}" in text and record.recipe not in text
    assert "HINT=2" in text
    monkeypatch.setenv(catalog.HINT_ENV, "2")
    assert f"Recipe: {record.recipe}" in _failure(failing)


def test_an_endless_loop_is_stopped_within_its_time_limit():
    import time

    from exercises.conftest import CheckTimedOut, time_limit

    start = time.perf_counter()
    with pytest.raises(CheckTimedOut), time_limit(0.3):
        while True:
            try:
                pass
            except Exception:  # a learner's broad except does not swallow the stop
                pass
    assert time.perf_counter() - start < 2.0


def test_summary_says_what_is_next_in_course_order_and_which_lessons_are_done():
    from exercises.summary import Outcome, format_summary

    outcomes = [Outcome("autograd_demo", "newton_step", "not done yet", ""),
                Outcome("tensor_basics", "vandermonde", "done", ""),
                Outcome("tensor_basics", "stable_softmax", "done", ""),
                Outcome("autograd_demo", "Softplus", "wrong", "Softplus: wrong values.")]
    text = format_summary(outcomes)
    assert "tensor_basics: all 2 exercises done." in text
    title = course.lesson("autograd_demo").title
    assert f'Next: fix Softplus in exercises/autograd_demo.py, section "Custom autograd Functions" of {title}.' in text
    assert text.index("vandermonde") < text.index("newton_step")  # lesson 1 before lesson 2
    assert re.search(r"vandermonde\s+★\s+Broadcasting\s+done", text)
    done = format_summary([Outcome("tensor_basics", "vandermonde", "done", "")])
    assert "All 1 exercises done." in done and "Next:" not in done


# Tests from a mutation run of the machinery (each kills a planted bug that the tests above let through) ----


def test_nested_watches_chain_their_profilers_and_reference_pauses_every_watch():
    import torch

    from exercises.rules import reference, watching

    bs = torch.broadcast_shapes
    x = torch.ones(2, requires_grad=True)
    with watching((_rule("torch.broadcast_shapes"),)) as outer:
        with watching(count_reverse_passes=True) as inner:
            bs((1,), (2,))  # the inner profiler must pass the call on to the outer one
            with reference():
                torch.autograd.grad((x * 2).sum(), x)
        assert "torch.broadcast_shapes" in outer.seen and inner.reverse_passes == 0
        outer.seen.clear()
        bs((1,), (2,))  # after the inner watch, the outer profiler is back
        assert outer.seen == ["torch.broadcast_shapes"]
        outer.seen.clear()
        with watching(count_reverse_passes=True), reference():
            bs((1,), (2,))  # reference() pauses every active watch, not only the innermost
        assert outer.seen == []


@pytest.mark.parametrize(("spread", "named"), [(0.3, True), (2.0, False)])  # ± spread · tolerance around 3
def test_a_common_ratio_is_named_only_within_its_tolerance(spread, named):
    import torch

    from exercises.checks import RATIO_TOLERANCE, check_close

    expected = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    wobble = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * spread * RATIO_TOLERANCE
    text = _failure(lambda: check_close(3 * expected * (1 + wobble), expected, what="r", hint="h", rtol=0, atol=0))
    assert ("× the expected value everywhere" in text) == named, text


def test_a_ratio_is_not_also_reported_as_an_offset_and_swapped_rows_are_named():
    import torch

    from exercises.checks import check_close

    expected = torch.full((4,), 2.0, dtype=torch.float64)
    text = _failure(lambda: check_close(3 * expected, expected, what="r", hint="h", rtol=0, atol=0))
    assert "3× the expected value" in text and "constant offset" not in text
    rows = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])
    assert "in a different order" in _failure(lambda: check_close(rows.flip(0), rows, what="r", hint="h", rtol=0,
                                                                  atol=0))
    assert "reverse order" in _failure(lambda: check_close(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0]),
                                                           what="r", hint="h", rtol=0, atol=0))


def test_preview_limits_rows_and_columns_separately_and_shows_every_row():
    import torch

    from exercises.checks import check_close

    wide = torch.arange(30.0).reshape(3, 10)  # 3 rows ≤ 8, 10 columns ≤ 12: shown whole
    text = _failure(lambda: check_close(wide + 1, wide, what="w", hint="h", rtol=0, atol=0))
    assert "Around the largest" not in text and "[20., 21., 22." in text and "[10., 11., 12." in text
    tall = torch.arange(30.0).reshape(10, 3)  # 10 rows > 8: the neighbourhood instead
    assert "Around the largest" in _failure(lambda: check_close(tall + 1, tall, what="t", hint="h", rtol=0, atol=0))


def test_small_helpers_of_the_checks():
    import torch

    from exercises.checks import check_close, check_equal, check_no_grad_history

    assert "yours is +2" in _failure(lambda: check_equal(5, 3, what="n", hint="h"))
    nan = torch.tensor([1.0, float("nan")])
    check_close(nan, nan.clone(), what="n", hint="h", rtol=0, atol=0)  # NaN where NaN is expected passes
    assert "detach()" in _failure(lambda: check_no_grad_history(torch.ones(2, requires_grad=True), what="g"))
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [6.0, 0.0, 0.0]])
    left = torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 5.0], [0.0, 0.0, 6.0]])
    assert "in rows [1, 2] the zeros come first" in _failure(
        lambda: check_close(left, expected, what="p", hint="h", rtol=0, atol=0))


def test_the_checks_own_comparison_is_not_the_learners_call():
    import torch

    from exercises.checks import check_close
    from exercises.rules import watching

    with watching((_rule("torch.isclose", "torch.allclose"),)) as watch:
        _failure(lambda: check_close(torch.zeros(2), torch.ones(2), what="c", hint="h", rtol=0, atol=0))
    assert watch.seen == []


@pytest.mark.parametrize("value", ["1", "0", "x", ""])
def test_only_hint_2_or_more_adds_the_recipe(monkeypatch, value):
    monkeypatch.setenv(catalog.HINT_ENV, value)
    assert catalog.hint_level() == 1
    monkeypatch.setenv(catalog.HINT_ENV, "3")
    assert catalog.hint_level() == 2


def test_time_limits_scale_with_the_environment_and_the_timer_is_disarmed_after(monkeypatch):
    import signal

    from exercises.conftest import time_limit

    monkeypatch.setenv(catalog.TIME_LIMIT_SCALE_ENV, "0.2")
    assert catalog.BY_NAME["vandermonde"].limit_s() == pytest.approx(catalog.TIME_LIMIT_S * 0.2)
    with time_limit(5.0):
        pass
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_broad_except_in_the_answer_does_not_swallow_the_stop():
    from exercises.conftest import CheckTimedOut, time_limit

    with pytest.raises(CheckTimedOut), time_limit(0.3):
        for _ in range(300):  # 3 s at most: a swallowed stop runs out here, and pytest.raises then fails
            try:
                time.sleep(0.01)  # the stop arrives inside the try, where `except Exception` would catch it
            except Exception:
                pass


def test_a_broken_rule_outranks_a_failure_but_not_an_unattempted_exercise():
    from types import SimpleNamespace

    from exercises.catalog import NOT_DONE
    from exercises.conftest import final_message

    record = catalog.BY_NAME["stable_softmax"]
    rule = record.rules[0]
    watch = SimpleNamespace(seen=["torch.softmax"], rule_of={"torch.softmax": rule})
    assert final_message(record, watch, "stable_softmax: wrong values.").startswith(
        "stable_softmax breaks a rule of this exercise")
    assert final_message(record, watch, None).startswith("stable_softmax breaks a rule")  # right numbers, too
    not_done = f"{NOT_DONE}: stable_softmax — open exercises/tensor_basics.py"
    assert final_message(record, watch, not_done) == not_done
    assert final_message(record, SimpleNamespace(seen=[], rule_of={}), None) is None


def _crashing_helper(x):
    return x.no_such_attribute  # the line the message must name


def _crashing_answer(x):
    return _crashing_helper(x) + 1


def test_a_crash_is_located_at_the_deepest_line_of_the_learners_file():
    from types import SimpleNamespace

    from exercises.conftest import _crash_message

    try:
        _crashing_answer(1)
    except AttributeError as error:
        message = _crash_message(SimpleNamespace(exercise=("vandermonde", "tensor_basics", _crashing_answer)), error)
    assert "in _crashing_helper" in message and "return x.no_such_attribute" in message


def test_summary_sorts_by_lesson_first_and_a_lesson_with_a_wrong_answer_is_not_done():
    from exercises.summary import Outcome, classify, format_summary

    text = format_summary([Outcome("autograd_demo", "newton_step", "done", ""),
                           Outcome("tensor_basics", "not_in_the_catalog", "done", ""),
                           Outcome("autograd_demo", "Softplus", "wrong", "x")])
    assert text.index("not_in_the_catalog") < text.index("newton_step")
    assert "autograd_demo: all" not in text
    assert classify(False, "Failed: not done yet: x")[0] == "not done yet"


def test_a_change_must_match_exactly_once():
    from exercises.mistakes import apply_change

    assert apply_change("a b", {"a": "c"}, "w") == "c b"
    for source in ("a a", "b"):
        with pytest.raises(ValueError, match="occurs"):
            apply_change(source, {"a": "c"}, "w")
