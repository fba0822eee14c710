"""Which implementation the exercise checks run against, and failures a learner can read.

EXERCISES unset (or empty): your answers in exercises/<lesson>.py.
EXERCISES=solutions: the reference solutions in exercises/solutions/.
EXERCISES=wrong (for maintainers): every plausible wrong answer in exercises/wrong_answers.py,
one test per wrong answer; each must fail (tests/test_exercises.py checks that it does).

A test named test_<exercise> checks the exercise <exercise>, which its `answer` fixture provides.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import traceback
from pathlib import Path

import pytest
import torch

MODES = ("", "solutions", "wrong")  # the values EXERCISES may take ("" = unset = your answers)
EXERCISES_DIR = Path(__file__).resolve().parent


def exercise_mode() -> str:
    mode = os.environ.get("EXERCISES", "")
    if mode not in MODES:
        raise pytest.UsageError(
            f"EXERCISES={mode!r} is not a mode: leave it unset to check your answers, "
            "or set EXERCISES=solutions to check the reference solutions"
        )
    return mode


def pytest_configure(config) -> None:
    exercise_mode()  # reject a bad value before collecting anything
    # The checks use tiny tensors: extra threads add only synchronisation, and on a busy machine they thrash.
    torch.set_num_threads(1)


def exercise_name(function) -> str:
    """test_layer_norm -> layer_norm; the test's name says which exercise it checks."""
    return function.__name__.removeprefix("test_")


def stub_module(lesson: str):
    return importlib.import_module(f"exercises.{lesson}")


def module_under_test(lesson: str):
    package = "exercises.solutions" if exercise_mode() == "solutions" else "exercises"
    path = f"{package.replace('.', '/')}/{lesson}.py"
    try:
        return importlib.import_module(f"{package}.{lesson}")
    except Exception as error:  # a learner's syntax error must read as a message, not a traceback
        frames = traceback.extract_tb(error.__traceback__)
        where = "" if isinstance(error, SyntaxError) or not frames else (
            f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})")
        message = f"{path} cannot be imported: {type(error).__name__}: {error}{where}"
    # Outside the except block, so the report shows only the message.
    pytest.fail(f"{message}\nHint: fix that line, then run the checks again.", pytrace=False)


def pytest_generate_tests(metafunc) -> None:
    if "answer" not in metafunc.fixturenames or exercise_mode() != "wrong":
        return
    from exercises.wrong_answers import WRONG_ANSWERS

    wrong = WRONG_ANSWERS.get(exercise_name(metafunc.function), [])
    metafunc.parametrize("answer", [w.implementation for w in wrong], ids=[w.mistake_id for w in wrong],
                         indirect=True)


@pytest.fixture
def answer(request):
    """The implementation of this test's exercise in the module under test (or one wrong answer)."""
    name = exercise_name(request.function)
    lesson = request.module.LESSON
    if hasattr(request, "param"):  # EXERCISES=wrong: a parametrized wrong answer
        implementation = request.param
    else:
        implementation = getattr(module_under_test(lesson), name, None)
        if implementation is None:
            pytest.fail(f"{name} is missing from exercises/{lesson}.py\n"
                        f"Hint: keep the name and signature of the stub; write your code in its body.",
                        pytrace=False)
    request.node.exercise = (name, lesson, implementation)
    return implementation


def docstring_hint(lesson: str, name: str) -> str:
    """The 'Hint:' paragraph of the exercise's docstring in the stub module."""
    doc = inspect.getdoc(getattr(stub_module(lesson), name, None)) or ""
    match = re.search(r"^Hint:(.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
    return " ".join(match.group(1).split()) if match else "read the docstring of the exercise again."


def _source_file(implementation) -> str | None:
    try:
        return inspect.getsourcefile(implementation)
    except TypeError:
        return None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """Turn an unattempted exercise into 'not done yet' and a crash in your code into a short message."""
    try:
        return (yield)
    except NotImplementedError:
        message = _not_done_message(pyfuncitem)
    except Exception as error:
        message = _crash_message(pyfuncitem, error)
        if message is None:  # not raised in the code under test: a bug in the check itself, show everything
            raise
    # Outside the except blocks, so the report shows only the message, not "during handling of ...".
    pytest.fail(message, pytrace=False)


def _relative(path: Path) -> str:
    root = EXERCISES_DIR.parent
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def _not_done_message(item) -> str:
    name, lesson, implementation = getattr(item, "exercise", (item.name, "?", None))
    where = _relative(Path(_source_file(implementation) or EXERCISES_DIR / f"{lesson}.py"))
    return f"not done yet: {name} — open {where} and replace the NotImplementedError"


def _crash_message(item, error: Exception) -> str | None:
    if not hasattr(item, "exercise"):
        return None
    name, lesson, implementation = item.exercise
    source = _source_file(implementation)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if source and f.filename == source]
    if not frames:
        return None
    frame = frames[-1]
    return (f"{name} raised {type(error).__name__}: {error}\n"
            f"  in {_relative(Path(source))}, line {frame.lineno}, in {frame.name}:\n"
            f"      {frame.line}\n"
            f"Hint: {docstring_hint(lesson, name)}")
