"""The course: every lesson once, in reading order, with its title, figures and time budget.

The one place that lists the lessons. The Makefile, the tests, `tools/timings.py` and the notebook
build read this table; adding a lesson is its script plus one line here. Standard library only,
so `python course.py` works before anything is installed (the Makefile calls it that way).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    module: str  # the script is f"{module}.py" at the repository root; its notebook, tests and exercises share the name
    title: str  # written only here: the banner, the notebooks, the README and the tests read it
    figures: tuple[str, ...]  # PNGs a full or --quick run writes to the plots directory
    quick_budget_floors: float  # wall time allowed for `--quick` on 2 CPU cores, in import floors (see below)
    full_budget_floors: float  # the same for a full run
    # How its worker processes start: None (it starts none), "spawn" (always spawned: DDP ranks) or "default"
    # (DataLoader workers, started by the platform's default method: the notebook tests run it both ways).
    worker_start: str | None = None

    @property
    def script(self) -> str:
        return f"{self.module}.py"


LESSONS = (
    Lesson("tensor_basics", "Lesson 1: tensors",
           ("matmul_benchmark.png", "tensor_operations_visualization.png"), 1.5, 3),
    Lesson("autograd_demo", "Lesson 2: autograd",
           ("autograd_graph.png", "finite_difference_error.png", "gradient_flow_analysis.png"), 1.75, 3),
    Lesson("linear_regression_torch", "Lesson 3: linear regression, optimizers and DDP",
           ("numpy_vs_torch_scaling.png", "linear_regression_comparison.png"), 3.25, 6, worker_start="spawn"),
    Lesson("custom_nn_module", "Lesson 4: custom modules",
           ("memory_checkpointing.png", "custom_modules_analysis.png"), 1.75, 4),
    Lesson("dataset_loader_demo", "Lesson 5: datasets and loaders",
           ("digits_samples.png", "dataset_loader_analysis.png"), 1.75, 4, worker_start="default"),
    Lesson("digits_classifier", "Lesson 6: training a digit classifier",
           ("digits_training.png",), 2, 4),
)
# Budgets are in import floors, not seconds: this machine's speed drifts 2× within a day, and a floor
# (a fresh process that imports torch, NumPy, matplotlib and scikit-learn, then exits) drifts with it.
# `make timings` measures the floor and every lesson in the same run.
QUICK_TOTAL_BUDGET_FLOORS = 12  # all six lessons with --quick, on 2 CPU cores
FULL_TOTAL_BUDGET_FLOORS = 24  # all six lessons in full mode
PROJECT_MODULES = ("lesson_harness", "course", *(lesson.module for lesson in LESSONS))  # code this project owns


def lesson(module: str) -> Lesson:
    """The table row of one lesson, by module name."""
    for row in LESSONS:
        if row.module == module:
            return row
    raise ValueError(f"module={module!r} is not a lesson (lessons: {', '.join(r.module for r in LESSONS)})")


if __name__ == "__main__":  # `python course.py` prints the scripts, for the Makefile
    print(" ".join(row.script for row in LESSONS), file=sys.stdout)
