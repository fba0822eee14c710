"""Wall time of every lesson as a whole process, full and --quick, against the course's time budget.

Run `make timings` (or `python tools/timings.py`). Figures go to a temporary directory, so the
committed plots/ stay as they are. Each script runs once per mode; times include interpreter
start-up and imports, as a learner experiences them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course import FULL_TOTAL_BUDGET_S, LESSONS, QUICK_TOTAL_BUDGET_S  # noqa: E402  (the repo root is not a package)

TIMEOUT_S = 300  # a script that takes this long is broken, not slow


def time_script(script: str, quick: bool, plots_dir: Path) -> float:
    """Seconds until the script's process exits, as a shell sees it. Its output goes to a file, not a pipe: a
    helper process it leaves behind (lesson 3's fork server, which exits on its own) holds a pipe open a moment
    longer, and a terminal does not wait for that."""
    command = [sys.executable, str(ROOT / script), "--device", "cpu", "--plots-dir", str(plots_dir)]
    command += ["--quick"] if quick else []
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()  # one whole process, measured once: a wall-clock reading, not a benchmark
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S,
                              cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            output.seek(0)
            raise SystemExit(f"{script} failed with exit code {done.returncode}:\n{output.read()[-2000:]}")
    return seconds


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as plots_dir:
        for lesson in LESSONS:
            full = time_script(lesson.script, quick=False, plots_dir=Path(plots_dir))
            quick = time_script(lesson.script, quick=True, plots_dir=Path(plots_dir))
            rows.append((lesson.script, full, lesson.full_budget_s, quick))
            print(f"  measured {lesson.script}", file=sys.stderr)
    print(f"{'script':28s} {'full (s)':>9s} {'budget':>7s} {'quick (s)':>10s}")
    print("-" * 57)
    for script, full, budget, quick in rows:
        flag = "" if full <= budget else "  OVER"
        print(f"{script:28s} {full:9.1f} {budget:7g} {quick:10.1f}{flag}")
    total_full, total_quick = sum(r[1] for r in rows), sum(r[3] for r in rows)
    print("-" * 57)
    print(f"{'total':28s} {total_full:9.1f} {FULL_TOTAL_BUDGET_S:7g} {total_quick:10.1f}   "
          f"(quick budget {QUICK_TOTAL_BUDGET_S})")
    over = total_full > FULL_TOTAL_BUDGET_S or total_quick > QUICK_TOTAL_BUDGET_S or any(r[1] > r[2] for r in rows)
    print("over budget" if over else "within budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
