"""Plausible wrong answers, for maintainers: each is a small change to the reference solution, and each must be
rejected by its exercise's check with a message that names what went wrong.

exercises/mistakes/<lesson>.py lists MISTAKES for that lesson's exercises. A Mistake's `change` maps text of the
solution's source (each must occur exactly once) to what a learner wrote instead; `setup` runs first in the
solution module's namespace (an import under another name, a helper). `shows` is text the check's failure message
must contain: the diagnosis a learner reads for this mistake. `EXERCISES=wrong python -m pytest exercises` runs every
check once per mistake; tests/test_exercises.py asserts that each fails and shows its diagnosis.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import textwrap
from dataclasses import dataclass, field

import course


@dataclass(frozen=True)
class Mistake:
    exercise: str  # the exercise's name, e.g. "vandermonde"
    mistake_id: str  # the test id, e.g. "one_column_short"
    mistake: str  # what the learner got wrong, in a sentence
    change: dict[str, str] = field(default_factory=dict)  # solution text -> the learner's text
    shows: str = ""  # what the check's message must contain for this mistake
    setup: str = ""  # code run before the definition, e.g. "from torch import softmax as sm"


def apply_change(source: str, change: dict[str, str], where: str) -> str:
    """`source` with each key replaced by its value; a key that does not occur exactly once is an error."""
    for old, new in change.items():
        count = source.count(old)
        if count != 1:
            raise ValueError(f"{where}: {old!r} occurs {count} times in the solution, not once")
        source = source.replace(old, new)
    return source


def build(lesson: str, mistake: Mistake) -> object:
    """The wrong implementation: the solution's source with the change applied, run in the solution's namespace."""
    solutions = importlib.import_module(f"exercises.solutions.{lesson}")
    where = f"{lesson}.{mistake.exercise}[{mistake.mistake_id}]"
    source = apply_change(textwrap.dedent(inspect.getsource(getattr(solutions, mistake.exercise))), mistake.change,
                          where)
    namespace = dict(vars(solutions))
    flags = __future__.annotations.compiler_flag
    if mistake.setup:
        exec(compile(textwrap.dedent(mistake.setup), f"<mistake {where}: setup>", "exec", flags=flags), namespace)
    exec(compile(source, f"<mistake {where}>", "exec", flags=flags), namespace)
    return namespace[mistake.exercise]


def mistakes_of(lesson: str) -> list[Mistake]:
    return list(importlib.import_module(f"exercises.mistakes.{lesson}").MISTAKES)


def all_mistakes() -> dict[str, list[tuple[str, Mistake]]]:
    """exercise name -> [(lesson, mistake), ...], in course order."""
    found: dict[str, list[tuple[str, Mistake]]] = {}
    for lesson in course.LESSONS:
        for mistake in mistakes_of(lesson.module):
            found.setdefault(mistake.exercise, []).append((lesson.module, mistake))
    return found
