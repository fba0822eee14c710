"""Wall time of every lesson as a whole process, --quick and full, in import floors, against the course's budgets.

Run `make timings` (or `python tools/timings.py`). This machine's speed drifts (2× within a day was seen on
the 2-core test machine), so a time in seconds says little on its own. The unit here is the *import floor*:
a fresh process that imports torch, NumPy, matplotlib and scikit-learn and exits, measured in the same run
(the median of FLOOR_RUNS). A lesson that takes 3 floors costs three times what merely starting costs.

Figures go to a temporary directory, so the committed plots/ stay as they are. Each script runs once per
mode; times include interpreter start-up and imports, as a learner experiences them.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course import FULL_TOTAL_BUDGET_FLOORS, LESSONS, QUICK_TOTAL_BUDGET_FLOORS  # noqa: E402  (not a package)

FLOOR_CODE = "import torch, numpy, matplotlib, sklearn"  # what every lesson pays before its first line of work
FLOOR_RUNS = 3  # the floor is the median of this many fresh processes
TIMEOUT_S = 300  # a script that takes this long is broken, not slow


def wall_seconds(command: list[str]) -> float:
    """Seconds until the process exits, as a shell sees it. Its output goes to a file, not a pipe: a helper
    process it leaves behind would hold a pipe open a moment longer, and a terminal does not wait for that."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()  # one whole process, measured once: a wall-clock reading, not a benchmark
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S,
                              cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            output.seek(0)
            raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}:\n{output.read()[-2000:]}")
    return seconds


def import_floor() -> float:
    return statistics.median(wall_seconds([sys.executable, "-c", FLOOR_CODE]) for _ in range(FLOOR_RUNS))


def lesson_seconds(script: str, quick: bool, plots_dir: Path) -> float:
    command = [sys.executable, str(ROOT / script), "--device", "cpu", "--plots-dir", str(plots_dir)]
    return wall_seconds(command + (["--quick"] if quick else []))


def demo_cells(module: str) -> list[tuple[str, object]]:
    """(first line, compiled body) of each `if __name__ == "__main__":` cell of a lesson, in script order."""
    path = ROOT / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guards = [node for node in tree.body
              if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"]
    return [(ast.unparse(guard.body[0]).splitlines()[0],
             compile(ast.Module(body=guard.body, type_ignores=[]), str(path), "exec")) for guard in guards]


def cell_seconds(module: str, argv: list[str]) -> list[tuple[str, float]]:
    """Where one lesson's run spends its time: the import (definitions), then each demo cell, in this process."""
    sys.argv = [str(ROOT / f"{module}.py"), *argv]
    start = time.perf_counter()
    namespace = {**vars(importlib.import_module(module)), "__name__": "__main__"}
    rows = [("import " + module, time.perf_counter() - start)]
    for first_line, code in demo_cells(module):
        start = time.perf_counter()
        exec(code, namespace)
        rows.append((first_line, time.perf_counter() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-only", action="store_true", help="time only the --quick runs")
    parser.add_argument("--cells", metavar="MODULE", help="instead: seconds per demo cell of one lesson, --quick")
    args = parser.parse_args(argv)
    if args.cells:
        with tempfile.TemporaryDirectory() as plots_dir:
            rows = cell_seconds(args.cells, ["--quick", "--device", "cpu", "--plots-dir", plots_dir])
        print(f"\n{'seconds':>8s}  cell (first line)", file=sys.stderr)
        for first_line, seconds in rows:
            print(f"{seconds:8.2f}  {first_line[:100]}", file=sys.stderr)
        return 0
    modes = ("quick",) if args.quick_only else ("quick", "full")
    floor = import_floor()
    seconds: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as plots_dir:
        for lesson in LESSONS:
            for mode in modes:
                seconds[lesson.module, mode] = lesson_seconds(lesson.script, mode == "quick", Path(plots_dir))
            print(f"  measured {lesson.script}", file=sys.stderr)
    floor_after = import_floor()  # the machine may have changed speed meanwhile: say so
    print(f"import floor ({FLOOR_CODE!r}, median of {FLOOR_RUNS}): {floor:.2f} s before the lessons, "
          f"{floor_after:.2f} s after; the table divides by the first")
    header = f"{'lesson':26s}" + "".join(f"{mode + ' (s)':>11s}{'floors':>8s}{'budget':>8s}" for mode in modes)
    print(header + "\n" + "-" * len(header))
    over = []
    for lesson in LESSONS:
        cells = ""
        for mode in modes:
            floors = seconds[lesson.module, mode] / floor
            budget = lesson.quick_budget_floors if mode == "quick" else lesson.full_budget_floors
            cells += f"{seconds[lesson.module, mode]:11.1f}{floors:8.2f}{budget:8g}"
            if floors > budget:
                over.append(f"{lesson.script} {mode}")
        print(f"{lesson.script:26s}{cells}")
    print("-" * len(header))
    totals = ""
    for mode in modes:
        total = sum(seconds[lesson.module, mode] for lesson in LESSONS)
        budget = QUICK_TOTAL_BUDGET_FLOORS if mode == "quick" else FULL_TOTAL_BUDGET_FLOORS
        totals += f"{total:11.1f}{total / floor:8.2f}{budget:8g}"
        if total / floor > budget:
            over.append(f"all lessons {mode}")
    print(f"{'total':26s}{totals}")
    print("over budget: " + ", ".join(over) if over else "within budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
