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
    # Commands besides the lesson: `python <module>.py <command> ...` runs the module's `<command>_main(argv)`.
    commands: tuple[str, ...] = ()

    @property
    def script(self) -> str:
        return f"{self.module}.py"


LESSONS = (
    Lesson("tensor_basics", "Lesson 1: tensors",
           ("matmul_benchmark.png", "tensor_operations_visualization.png"), 1.5, 2.75),
    Lesson("autograd_demo", "Lesson 2: autograd",
           ("autograd_graph.png", "finite_difference_error.png", "gradient_flow_analysis.png"), 1.75, 3),
    Lesson("linear_regression_torch", "Lesson 3: linear regression, optimizers and DDP",
           ("numpy_vs_torch_scaling.png", "linear_regression_comparison.png"), 3.25, 5.5, worker_start="spawn"),
    Lesson("custom_nn_module", "Lesson 4: custom modules",
           ("memory_checkpointing.png", "custom_modules_analysis.png"), 1.75, 3.5),
    Lesson("dataset_loader_demo", "Lesson 5: datasets and loaders",
           ("digits_samples.png", "dataset_loader_analysis.png"), 1.75, 3.25, worker_start="default"),
    Lesson("digits_classifier", "Lesson 6: training a digit classifier",
           ("digits_training.png",), 2, 6, commands=("predict",)),
)
# Budgets are in import floors, not seconds: this machine's speed drifts 2× within a day, and a floor
# (a fresh process that imports torch, NumPy, matplotlib and scikit-learn, then exits) drifts with it.
# `make timings` measures the floor and every lesson in the same run. Lesson 6's full run is budgeted with
# Inductor's on-disk cache warm (any run after the first on a machine); the first compiles from scratch.
QUICK_TOTAL_BUDGET_FLOORS = 12  # all six lessons with --quick, on 2 CPU cores
FULL_TOTAL_BUDGET_FLOORS = 24  # all six lessons in full mode
PROJECT_MODULES = ("lesson_harness", "course", *(lesson.module for lesson in LESSONS))  # code this project owns


def lesson(module: str) -> Lesson:
    """The table row of one lesson, by module name."""
    for row in LESSONS:
        if row.module == module:
            return row
    raise ValueError(f"module={module!r} is not a lesson (lessons: {', '.join(r.module for r in LESSONS)})")


# `python course.py doctor`: what this machine can run, checked before the first lesson. Everything below
# imports lazily and catches what fails, so a missing or broken package is a row in the table, not a traceback.
DOCTOR_PACKAGES = ("torch", "numpy", "matplotlib", "scikit-learn", "onnx", "onnxscript", "onnxruntime", "protobuf",
                   "setuptools")
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # what lesson 6's full run needs to export and serve
DOCTOR_COMPILE_TIMEOUT_S = 600  # the tiny compile runs in a child process; a cold Inductor cache takes tens of seconds
# A tiny convolution on the device the lessons pick (CUDA, then MPS, then the CPU): on a GPU that needs Triton.
DOCTOR_COMPILE_CODE = """
import time, torch
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
conv = torch.nn.Conv2d(1, 4, 3).to(device)
x = torch.randn(2, 1, 8, 8, device=device)
start = time.perf_counter()
with torch.no_grad():
    torch.testing.assert_close(torch.compile(conv)(x), conv(x))
print(f"{time.perf_counter() - start:.1f} {device}")
"""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def one_line(error: BaseException, limit: int = 200) -> str:
    """An error's type and message on one line, cut to `limit` characters: compiler errors put the cause on a
    later line, so the lines are joined rather than the first one kept."""
    text = f"{type(error).__name__}: " + " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def compile_check(python: str = sys.executable, timeout_s: float = DOCTOR_COMPILE_TIMEOUT_S) -> tuple[bool, str]:
    """Compile and run a tiny function with torch.compile's default backend in a child process: (works, detail)."""
    import subprocess

    try:
        done = subprocess.run([python, "-c", DOCTOR_COMPILE_CODE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s:.0f} s"
    except OSError as error:  # the interpreter itself could not start
        return False, one_line(error)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return False, (lines[-1] if lines else f"exit code {done.returncode}")[:200]
    seconds, device = done.stdout.strip().splitlines()[-1].split()
    return True, f"a small convolution on {device}: first call {seconds} s (compilation included)"


def doctor_rows(compile_result: tuple[bool, str] | None = None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(what, status, detail) rows about this machine, and one verdict line per lesson."""
    import platform

    rows = [("Python", "ok" if sys.version_info >= (3, 10) else "too old", platform.python_version())]
    for package in DOCTOR_PACKAGES:
        found = _version(package)
        rows.append((package, "ok" if found else "missing", found or "run `make demo` (installs requirements.txt)"))
    try:
        import torch
    except Exception as error:  # noqa: BLE001 -- a broken install is reported, whatever it raises
        rows.append(("import torch", "fails", one_line(error)))
        return rows, [f"{row.module}: does not run (torch does not import)" for row in LESSONS]
    cpu = torch.backends.cpu.get_cpu_capability()
    rows.append(("CPU", "ok", f"{torch.get_num_threads()} threads; vector extensions torch uses: {cpu}"))
    cuda = torch.cuda.is_available()
    if cuda:
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            rows.append((f"CUDA device {index}", "ok", f"{torch.cuda.get_device_name(index)}, compute capability "
                         f"{major}.{minor}, CUDA {torch.version.cuda}"))
    else:
        build = "" if torch.version.cuda else " (a CPU-only build of torch)"
        rows.append(("CUDA", "absent", "no CUDA device" + build))
    mps = torch.backends.mps.is_available()
    rows.append(("MPS", "ok" if mps else "absent", "Apple GPU" if mps else "not an Apple-silicon Mac"))
    distributed = torch.distributed.is_available()
    gloo = distributed and torch.distributed.is_gloo_available()
    nccl = distributed and torch.distributed.is_nccl_available()
    rows.append(("DDP backend gloo", "ok" if gloo else "absent", "CPU processes (lesson 3)"))
    rows.append(("DDP backend nccl", "ok" if nccl else "absent", "CUDA devices, one process each"))
    compiled, detail = compile_result if compile_result is not None else compile_check()
    rows.append(("torch.compile", "ok" if compiled else "fails", detail))
    try:
        import onnxruntime

        rows.append(("ONNX Runtime", "ok", f"providers: {', '.join(onnxruntime.get_available_providers())}"))
        runtime = True
    except Exception as error:  # noqa: BLE001
        rows.append(("ONNX Runtime", "fails", one_line(error)))
        runtime = False
    verdicts = []
    for row in LESSONS:
        missing = []
        if row.module == "linear_regression_torch" and not gloo:
            missing.append("its DDP section (no gloo backend)")
        if row.module == "digits_classifier":
            missing += [] if compiled else ["torch.compile"]
            absent = [p for p in EXPORT_PACKAGES if not _version(p)] or ([] if runtime else ["onnxruntime"])
            if absent:
                verdicts.append(f"{row.module}: --quick runs; the full run stops at its export without "
                                f"{', '.join(absent)} (run `make demo`)")
                continue
        verdicts.append(f"{row.module}: runs" + (f" without {' and '.join(missing)}" if missing else ""))
    return rows, verdicts


def doctor() -> int:
    """Print the table and the verdicts; exit code 1 where something a lesson needs is missing or fails."""
    print("Checking this machine (torch.compile's check compiles a small convolution: seconds, or a minute the "
          "first time)...", flush=True)
    rows, verdicts = doctor_rows()
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for what, status, detail in rows:
        print(f"{what:<{widths[0]}}  {status:<{widths[1]}}  {detail}")
    print()
    print("\n".join(verdicts))
    return 1 if any(status in ("missing", "fails", "too old") for _, status, _ in rows) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["doctor"]:
        sys.exit(doctor())
    print(" ".join(row.script for row in LESSONS), file=sys.stdout)  # `python course.py`: the scripts, for make
