"""The course: every lesson once, in reading order, with its figures and time budget.

The one place that lists the lessons. The Makefile, the tests, `tools/timings.py` and the notebook
build read this table; adding a lesson is its script plus one line here. Standard library only,
so `python course.py` works before anything is installed (the Makefile calls it that way).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    module: str  # the script is f"{module}.py" at the repository root
    title: str  # what the README and the notebooks call it
    figures: tuple[str, ...]  # PNGs a full or --quick run writes to the plots directory
    full_budget_s: float  # wall seconds allowed for a full CPU run on 2 cores, start-up included
    starts_processes: bool = False  # DataLoader workers or DDP ranks: what the start method decides

    @property
    def script(self) -> str:
        return f"{self.module}.py"


LESSONS = (
    Lesson("tensor_basics", "Lesson 1: tensors",
           ("tensor_operations_visualization.png", "matmul_benchmark.png"), 15),
    Lesson("autograd_demo", "Lesson 2: autograd",
           ("autograd_graph.png", "finite_difference_error.png", "gradient_flow_analysis.png"), 10),
    Lesson("linear_regression_torch", "Lesson 3: linear regression, optimizers and DDP",
           ("linear_regression_comparison.png", "numpy_vs_torch_scaling.png"), 20, starts_processes=True),
    Lesson("custom_nn_module", "Lesson 4: custom modules",
           ("custom_modules_analysis.png", "memory_checkpointing.png"), 15),
    Lesson("dataset_loader_demo", "Lesson 5: datasets and loaders",
           ("dataset_loader_analysis.png", "digits_samples.png", "digits_training.png"), 20, starts_processes=True),
)
FULL_TOTAL_BUDGET_S = 60  # all lessons in full mode, on 2 CPU cores
QUICK_TOTAL_BUDGET_S = 25  # all lessons with --quick
PROJECT_MODULES = ("lesson_harness", "course", *(lesson.module for lesson in LESSONS))  # code this project owns


def lesson(module: str) -> Lesson:
    """The table row of one lesson, by module name."""
    for row in LESSONS:
        if row.module == module:
            return row
    raise ValueError(f"module={module!r} is not a lesson (lessons: {', '.join(r.module for r in LESSONS)})")


if __name__ == "__main__":  # `python course.py` prints the scripts, for the Makefile
    print(" ".join(row.script for row in LESSONS), file=sys.stdout)
