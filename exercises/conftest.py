"""Which implementation the exercise checks run against, and failures a learner can read.

EXERCISES unset (or empty): your answers in exercises/<lesson>.py.
EXERCISES=solutions: the reference solutions in exercises/solutions/.
EXERCISES=wrong (for maintainers): every plausible wrong answer in exercises/mistakes/<lesson>.py,
one test per wrong answer; each must fail (tests/test_exercises.py checks that it does).

A test named test_<exercise> checks the exercise <exercise>, which its `answer` fixture provides.
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import inspect
import os
import signal
import threading
import traceback
from pathlib import Path

import pytest
import torch

from exercises import catalog
from exercises.checks import checking, hint_lines
from exercises.rules import watching

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
    from exercises.mistakes import all_mistakes

    wrong = all_mistakes().get(exercise_name(metafunc.function), [])
    metafunc.parametrize("answer", wrong, ids=[mistake.mistake_id for _, mistake in wrong], indirect=True)


@pytest.fixture
def answer(request):
    """The implementation of this test's exercise in the module under test (or one wrong answer)."""
    name = exercise_name(request.function)
    lesson = request.module.LESSON
    if hasattr(request, "param"):  # EXERCISES=wrong: a parametrized wrong answer
        from exercises.mistakes import build

        implementation = build(*request.param)
    else:
        implementation = getattr(module_under_test(lesson), name, None)
        if implementation is None:
            pytest.fail(f"{name} is missing from exercises/{lesson}.py\n"
                        f"Hint: keep the name and signature of the stub; write your code in its body.",
                        pytrace=False)
    request.node.exercise = (name, lesson, implementation)
    return implementation


def _source_file(implementation) -> str | None:
    """The file the implementation's code was written in (for a maintainer's mistake: its "<mistake ...>" name)."""
    functions = list(vars(implementation).values()) if isinstance(implementation, type) else [implementation]
    codes = [f.__code__ for f in (getattr(f, "__func__", f) for f in functions) if hasattr(f, "__code__")]
    if codes:
        return codes[0].co_filename
    try:
        return inspect.getsourcefile(implementation)
    except TypeError:
        return None


class CheckTimedOut(BaseException):
    """Raised into a check that ran past its time limit (a BaseException: `except Exception` does not catch it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Stop the code inside after `seconds`: SIGALRM where there is one, else a timer interrupting the main thread."""
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise CheckTimedOut

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        _thread.interrupt_main()

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            raise CheckTimedOut from None
        raise
    finally:
        timer.cancel()


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run an exercise's check under its rules and time limit; turn an unattempted exercise into 'not done yet',
    a crash in your code into a short message, an endless loop into a timeout and a banned call into the rule."""
    exercise = catalog.BY_NAME.get(exercise_name(pyfuncitem.function))
    if exercise is None:  # not an exercise's check
        return (yield)
    message, result = None, None
    with checking(exercise), watching(exercise.rules) as watch:
        try:
            with time_limit(exercise.limit_s()):
                result = yield
        except CheckTimedOut:
            message = _timeout_message(exercise)
        except NotImplementedError:
            message = _not_done_message(pyfuncitem)
        except pytest.fail.Exception:
            if not watch.seen:
                raise
        except Exception as error:
            message = _crash_message(pyfuncitem, error)
            if message is None and not watch.seen:  # not raised in the code under test: a bug in the check
                raise
        message = final_message(exercise, watch, message)
    if message is None:
        return result
    # Outside the except blocks, so the report shows only the message, not "during handling of ...".
    pytest.fail(message, pytrace=False)




def final_message(exercise: catalog.Exercise, watch, message: str | None) -> str | None:
    """A broken rule outranks every other failure (and a pass), except an exercise not attempted yet."""
    if watch.seen and not (message or "").startswith(catalog.NOT_DONE):
        return _rule_message(exercise, watch)
    return message


def _timeout_message(exercise: catalog.Exercise) -> str:
    return "\n".join([f"{exercise.name} took longer than {exercise.limit_s():g} s and was stopped: an endless loop? "
                      "A right answer takes a small fraction of that.", *hint_lines("")])


def _rule_message(exercise: catalog.Exercise, watch) -> str:
    lines = []
    for rule in exercise.rules:
        calls = [label for label in watch.seen if watch.rule_of.get(label) is rule]
        if calls:
            lines += [f"{exercise.name} breaks a rule of this exercise: {rule.says}.",
                      f"  Yours called {', '.join(calls)}.", f"  Why the rule: {rule.why}."]
    lines.append("  (A rule follows the function itself: another import name, a helper or a try/except does not "
                 "hide the call.)")
    return "\n".join(lines + hint_lines(""))


def _relative(path: Path) -> str:
    root = EXERCISES_DIR.parent
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def _not_done_message(item) -> str:
    name, lesson, implementation = getattr(item, "exercise", (item.name, "?", None))
    where = _relative(Path(_source_file(implementation) or EXERCISES_DIR / f"{lesson}.py"))
    return f"{catalog.NOT_DONE}: {name} — open {where} and replace the NotImplementedError"


CRASH_SIGNS = (  # (text in an error message, what it usually means), for every exercise
    ("must match the size of tensor", "two shapes that do not line up: a tensor of the wrong shape, or a reduction "
                                      "without keepdim=True that no longer broadcasts against its input?"),
    ("mat1 and mat2 shapes cannot be multiplied", "a matrix product whose inner sizes differ: a missing transpose?"),
)


def _crash_message(item, error: Exception) -> str | None:
    if not hasattr(item, "exercise"):
        return None
    name, lesson, implementation = item.exercise
    source = _source_file(implementation)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if source and f.filename == source]
    if not frames:
        return None
    frame = frames[-1]
    record = catalog.BY_NAME.get(name)
    signs = (*(record.crashes if record else ()), *CRASH_SIGNS)
    looks = [f"Looks like: {meaning}" for text, meaning in signs if text in str(error)][:1]
    where = f"line {frame.lineno}, in {frame.name}:\n      {frame.line}" if frame.line else (
        f"line {frame.lineno}, in {frame.name}")
    return "\n".join([f"{name} raised {type(error).__name__}: {error}", f"  in {_relative(Path(source))}, {where}",
                      *looks, *hint_lines("")])
