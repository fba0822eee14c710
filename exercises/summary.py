"""Your progress through the exercises: one line per exercise, done / not done yet / wrong, what to fix, and
which exercise to do next.

Run from the repository root: `python -m exercises.summary` or `make exercises`; `HINT=2` in front adds each
failing exercise's recipe. Extra arguments go to pytest, e.g. `python -m exercises.summary -k autograd_demo`.
The exit code is 0 whatever the state of your answers; it is non-zero only when pytest itself could not run.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if __package__ in (None, ""):  # `python exercises/summary.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import course  # noqa: E402 (after the path set-up above)
from exercises import catalog  # noqa: E402

EXERCISES_DIR = Path(__file__).resolve().parent
OK_EXIT_CODES = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)


@dataclass
class Outcome:
    lesson: str  # the lesson's module name, e.g. "tensor_basics"
    exercise: str  # e.g. "vandermonde", or "vandermonde[one_column_short]" in the maintainers' wrong mode
    status: str  # "done", "not done yet" or "wrong"
    message: str  # the check's message when it failed, else ""


class OutcomeCollector:
    """A pytest plugin that keeps one Outcome per exercise test, in collection order."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when != "call" and not report.failed:  # setup/teardown matter only when they fail
            return
        path, _, test_name = report.nodeid.partition("::")
        lesson = Path(path).stem.removeprefix("test_")
        exercise = test_name.removeprefix("test_")
        self.outcomes[report.nodeid] = Outcome(lesson, exercise, *classify(report.passed, report.longreprtext))


def classify(passed: bool, message: str) -> tuple[str, str]:
    """(status, message) from a test's result and its failure text."""
    if passed:
        return "done", ""
    text = message.strip()
    text = text.removeprefix("Failed: ")
    if text.startswith(catalog.NOT_DONE):
        return "not done yet", text
    return "wrong", text


def in_course_order(outcomes: list[Outcome]) -> list[Outcome]:
    """Lessons in course.py's order, exercises in the catalog's (pytest collects the files alphabetically)."""
    lessons = [lesson.module for lesson in course.LESSONS]
    names = [exercise.name for exercise in catalog.EXERCISES]

    def position(outcome: Outcome) -> tuple[int, int]:
        name = outcome.exercise.split("[")[0]
        return (lessons.index(outcome.lesson) if outcome.lesson in lessons else len(lessons),
                names.index(name) if name in names else len(names))

    return sorted(outcomes, key=position)  # stable: a mistake's tests keep their order


def next_exercise(outcomes: list[Outcome]) -> Outcome | None:
    """The first wrong answer in course order, else the first exercise not done yet, else None."""
    for status in ("wrong", "not done yet"):
        for outcome in outcomes:
            if outcome.status == status:
                return outcome
    return None


def format_summary(outcomes: list[Outcome]) -> str:
    """The table, a total line, the lessons whose exercises are all done, what to fix, and what to do next."""
    headers = ("lesson", "exercise", "level", "section", "status")
    outcomes = in_course_order(outcomes)

    def record(outcome: Outcome) -> catalog.Exercise | None:
        return catalog.BY_NAME.get(outcome.exercise.split("[")[0])

    rows = [(o.lesson, o.exercise, record(o).stars if record(o) else "", record(o).section if record(o) else "",
             o.status) for o in outcomes]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "wrong", "not done yet")}
    lines = [line(headers), line("-" * width for width in widths), *(line(row) for row in rows), "",
             f"Total: {counts['done']} of {len(outcomes)} done, {counts['wrong']} wrong, "
             f"{counts['not done yet']} not done yet. Levels: "
             + ", ".join(f"{stars} {text}" for stars, text in zip(catalog.LEVELS.values(), LEVEL_WORDS)) + "."]
    for lesson in dict.fromkeys(o.lesson for o in outcomes):
        mine = [o for o in outcomes if o.lesson == lesson]
        if all(o.status == "done" for o in mine):
            lines.append(f"{lesson}: all {len(mine)} exercises done.")
    wrong = [o for o in outcomes if o.status == "wrong"]
    if wrong:
        lines += ["", "What to fix:"]
        for outcome in wrong:
            lines += ["", f"{outcome.exercise} ({outcome.lesson}):", *("  " + text for text in
                                                                      outcome.message.splitlines())]
    upcoming = next_exercise(outcomes)
    if upcoming is None:
        lines += ["", f"All {len(outcomes)} exercises done."]
    else:
        exercise = record(upcoming)
        where = f", section \"{exercise.section}\" of {course.lesson(upcoming.lesson).title}" if exercise else ""
        verb = "fix" if upcoming.status == "wrong" else "do"
        lines += ["", f"Next: {verb} {upcoming.exercise} in exercises/{upcoming.lesson}.py{where}.",
                  f"Its full message: python -m pytest exercises -k {upcoming.exercise.split('[')[0]}"]
    return "\n".join(lines)


LEVEL_WORDS = ("one idea", "a few ideas together", "a whole component")  # what catalog.LEVELS' stars mean


def main(argv: list[str] | None = None) -> int:
    collector = OutcomeCollector()
    args = [str(EXERCISES_DIR), "-q", "--tb=no", "-p", "no:cacheprovider", *(argv or [])]
    print(f"Checking the exercises (each check stops after {catalog.TIME_LIMIT_S:g} s, the training one after "
          f"{catalog.BY_NAME['train_digits_classifier'].time_limit_s:g} s) ...", flush=True)
    pytest_output = io.StringIO()
    with contextlib.redirect_stdout(pytest_output):  # the table below replaces pytest's own report
        code = pytest.main(args, plugins=[collector])
    if code not in OK_EXIT_CODES:
        print(pytest_output.getvalue(), end="")
        print(f"pytest could not run the checks (exit code {int(code)}).", file=sys.stderr)
        return int(code)
    if not collector.outcomes:
        print("No exercise checks matched.")
        return 0
    print(format_summary(list(collector.outcomes.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
