"""Your progress through the exercises: one line per exercise, done / not done yet / wrong, and what to fix.

Run from anywhere: `python -m exercises.summary` (from the repository root), `python exercises/summary.py`
or `make exercises`. Extra arguments go to pytest, e.g. `python -m exercises.summary -k autograd_demo`.
The exit code is 0 whatever the state of your answers; it is non-zero only when pytest itself could not run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

EXERCISES_DIR = Path(__file__).resolve().parent
NOT_DONE_PREFIX = "not done yet"  # how conftest.py starts the message of an unattempted exercise
SECTION_PATTERN = re.compile(r'Section: "(.+?)"')  # the lesson section quoted in each exercise's docstring
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
    if text.startswith(NOT_DONE_PREFIX):
        return "not done yet", text
    return "wrong", text


def sections(exercises_dir: Path = EXERCISES_DIR) -> dict[tuple[str, str], str]:
    """(lesson, exercise) -> the lesson section its docstring quotes, read without importing your code."""
    found = {}
    for path in sorted(exercises_dir / name.removeprefix("test_") for name in
                       (check.name for check in exercises_dir.glob("test_*.py"))):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue  # the checks report the syntax error; the table just goes without sections
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                match = SECTION_PATTERN.search(ast.get_docstring(node) or "")
                if match:
                    found[(path.stem, node.name)] = match.group(1)
    return found


def format_summary(outcomes: list[Outcome], section_of: dict[tuple[str, str], str]) -> str:
    """The table, a total line, and the message of every wrong answer."""
    headers = ("lesson", "exercise", "section", "status")
    rows = [(o.lesson, o.exercise, section_of.get((o.lesson, o.exercise.split("[")[0]), ""), o.status)
            for o in outcomes]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "wrong", "not done yet")}
    lines = [line(headers), line("-" * width for width in widths), *(line(row) for row in rows), "",
             f"Total: {counts['done']} of {len(outcomes)} done, {counts['wrong']} wrong, "
             f"{counts['not done yet']} not done yet."]
    wrong = [o for o in outcomes if o.status == "wrong"]
    if wrong:
        lines += ["", "What to fix:"]
        for outcome in wrong:
            lines += ["", f"{outcome.exercise} ({outcome.lesson}):", *("  " + text for text in
                                                                      outcome.message.splitlines())]
    if counts["done"] < len(outcomes):
        lines += ["", "One exercise with its full message: python -m pytest exercises -k <exercise>"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    collector = OutcomeCollector()
    args = [str(EXERCISES_DIR), "-q", "--tb=no", "-p", "no:cacheprovider", *(argv or [])]
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
    print(format_summary(list(collector.outcomes.values()), sections()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
