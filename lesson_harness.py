"""What every lesson script needs: device choice, one CLI, seeding, timing, tables and figures.

Deliberately small and framework-free: read it once and every script's `main()` is clear.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # what --device accepts
DEFAULT_PLOTS_DIR = Path(__file__).resolve().parent / "plots"  # next to the scripts, whatever the cwd
FIGURE_DPI = 110  # one resolution for every committed PNG
PANEL_SIZE = (5.0, 3.8)  # inches per subplot, so every figure has the same text scale
LESSON_ARGS_ENV = "LESSON_ARGS"  # in a notebook kernel the flags come from here, e.g. "--quick --device cpu"


class LessonError(RuntimeError):
    """A failure the user can fix (bad device, unwritable directory): one line, exit code 2."""


# %%
# Devices
# -------


def available_devices() -> list[str]:
    """Names of the devices this machine can run on, CPU always first."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit choice must be available."""
    if preference not in DEVICE_CHOICES:
        raise ValueError(f"device={preference!r} is not one of {', '.join(DEVICE_CHOICES)}")
    available = available_devices()
    if preference == "auto":
        for name in ("cuda", "mps", "cpu"):
            if name in available:
                return torch.device(name)
    if preference not in available:
        raise LessonError(
            f"--device {preference} was requested but is not available on this machine "
            f"(available: {', '.join(available)})"
        )
    return torch.device(preference)


def as_device(device: torch.device | str) -> torch.device:
    """Accept `torch.device("cuda")` and `"cuda"` alike."""
    return device if isinstance(device, torch.device) else torch.device(device)


def describe_device(device: torch.device) -> str:
    """A human name for the hardware behind `device`."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({cpu_model()})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels: accelerators run asynchronously, so timing needs this."""
    device = as_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# %%
# Seeding
# -------


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator seeded the same way for data."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


# %%
# Timing
# ------


CUDA_HOME_NOTICE = "No CUDA runtime is found, using CUDA_HOME="  # the one stray line dropped below


def drop_cuda_home_notice(text: str) -> str:
    """`text` without the lines that start with CUDA_HOME_NOTICE; everything else is kept."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(CUDA_HOME_NOTICE))


def _import_benchmark():
    """`torch.utils.benchmark`, imported without its one known stray message.

    Importing it imports `torch.utils.cpp_extension`, which in CUDA builds of torch, on a machine
    with a CUDA toolkit but no GPU, reports "No CUDA runtime is found, using CUDA_HOME=...":
    torch 2.5 prints it to stderr, newer releases (seen in 2.13 to 2.15) log it as a warning.
    For this import only, that logger is raised to ERROR and printed output is captured; every
    captured line except that notice is written back to stderr.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            from torch.utils import benchmark
    finally:
        logger.setLevel(level)
        sys.stderr.write(drop_cuda_home_notice(printed.getvalue()))
    return benchmark


def time_median(fn: Callable[[], object], device: torch.device | str = "cpu", min_run_time: float = 0.2) -> float:
    """Median seconds per call of `fn`, measured with `torch.utils.benchmark.Timer`.

    Timer warms up (its block-size search makes the first calls, which pay lazy initialisation, outside
    the measured blocks), picks a block size and (for CUDA) synchronizes; MPS is synchronized here
    because older torch releases only sync CUDA. Runs with the threads user code gets.
    """
    benchmark = _import_benchmark()
    device = as_device(device)
    if device.type == "mps":
        def stmt() -> None:
            fn()
            synchronize(device)
    else:
        stmt = fn
    timer = benchmark.Timer(stmt="stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def wall_seconds(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[object, float]:
    """Run `fn` once; return its result and the wall-clock seconds it took, queued device work included.

    For one-shot costs (a whole training run) where repeating to take a median would cost too much.
    """
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def profile_events(fn: Callable[[], object], device: torch.device | str = "cpu") -> list:
    """Run `fn` once under `torch.profiler` (CPU activity, plus CUDA on a CUDA device); return its events.

    Each event has a name, self CPU (and device) time in µs and its parent, as `prof.events()` gives.
    """
    from torch.profiler import ProfilerActivity, profile

    # Kineto (the profiler's backend) prints status lines to stderr when tracing starts and stops in
    # some torch releases (2.13 among them); level 6 silences them. Kineto reads the variable once,
    # when the process's first profiler starts. setdefault: a level the user chose wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    device = as_device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    return list(prof.events())


def fmt_seconds(seconds: float) -> str:
    """A duration with a sensible unit: 1.23 s, 45.6 ms, 789 µs, 12.3 ns."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_timing(value: float, spec: str = ".3g", suffix: str = "") -> str:
    """Format a number derived from a timing (a rate, a speed-up)."""
    return f"{value:{spec}}{suffix}"


# %%
# Output: banner and tables
# -------------------------


def print_banner(title: str, device: torch.device, seed: int, quick: bool) -> None:
    mode = "quick" if quick else "full"
    print(f"=== {title} ===")
    print(
        f"device: {describe_device(device)} | torch {torch.__version__} | "
        f"threads: {torch.get_num_threads()} | seed: {seed} | mode: {mode}"
    )


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as an aligned text table: the first (label) column left-aligned, the rest right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n{title}\n{format_table(headers, rows)}")


def print_section(title: str) -> None:
    print(f"\n--- {title} ---")


# %%
# Figures
# -------


def new_figure(nrows: int, ncols: int, title: str, figsize: tuple[float, float] | None = None, **subplots_kwargs):
    """A pyplot-free Figure with a grid of axes and one suptitle; returns (figure, axes array)."""
    from matplotlib.figure import Figure

    figsize = figsize or (PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots_kwargs)  # e.g. width_ratios=[2, 1]
    fig.suptitle(title, fontsize=14, fontweight="bold")
    return fig, axes


def prepare_plots_dir(path: str | os.PathLike) -> Path:
    """Create the plots directory and prove it is writable, or raise LessonError."""
    plots_dir = Path(path)
    probe = plots_dir / ".write-test"
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise LessonError(f"cannot write figures to --plots-dir {plots_dir}: {err.strerror or err}") from None
    return plots_dir


def save_figure(fig, filename: str, plots_dir: str | os.PathLike) -> Path:
    """Write `fig` as a PNG to the plots directory; in a notebook, also show it inline."""
    path = Path(plots_dir) / filename
    fig.savefig(path, dpi=FIGURE_DPI)
    if in_notebook():
        from IPython.display import Image, display

        # A pyplot-free Figure has no inline renderer registered; show the PNG just written instead.
        display(Image(data=path.read_bytes(), format="png"))
    print(f"saved {os.path.relpath(path)}")  # relative to the working directory: short, machine-independent
    return path


# %%
# The shared command line
# -----------------------


@dataclass(frozen=True)
class LessonContext:
    """What `main()` hands to a lesson after parsing and checking the command line."""

    device: torch.device
    quick: bool
    seed: int
    plots_dir: Path
    generator: torch.Generator

    def config(self, full, quick):
        """The lesson's settings for this run: `quick` under --quick, `full` otherwise."""
        return quick if self.quick else full


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where to run: auto picks cuda, then mps, then cpu (default: auto)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and short benchmarks, for smoke runs and tests")
    parser.add_argument("--plots-dir", type=Path, default=DEFAULT_PLOTS_DIR,
                        help=f"where figures are written (default: {DEFAULT_PLOTS_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random number generator (default: 0)")
    return parser


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Jupyter, VS Code, Colab, nbclient), where sys.argv is the kernel's own.

    Having imported ipykernel is not enough (a test runner that launches kernels imports it, and so
    does anything asking jupyter_client for its kernel specs): the running shell must be a kernel's.
    """
    if "ipykernel" not in sys.modules:  # never import IPython into a plain script
        return False
    from ipykernel.zmqshell import ZMQInteractiveShell
    from IPython import get_ipython

    return isinstance(get_ipython(), ZMQInteractiveShell)


def lesson_argv(argv: Sequence[str] | None) -> Sequence[str] | None:
    """The flags to parse: `argv` if given; in a notebook, $LESSON_ARGS; otherwise the command line."""
    if argv is None and in_notebook():
        return shlex.split(os.environ.get(LESSON_ARGS_ENV, ""))
    return argv


def share_notebook_with_workers(module_name: str) -> None:
    """In a notebook, let worker processes find the lesson's classes and functions by module name.

    DataLoader and DDP workers receive functions and objects by reference (module + name). Under
    the spawn start method (macOS, Windows) and forkserver (Python 3.14's Linux default) a worker
    imports that module afresh, and a notebook's `__main__` cannot be imported. So the notebook
    namespace is registered as `module_name` and what it defined is re-homed there: in the
    notebook nothing changes, and a worker imports the lesson's own script under that name.
    """
    main = sys.modules["__main__"]
    if sys.modules.get(module_name, main) is not main:
        return  # the real module is already imported (e.g. by a test): nothing to share
    sys.modules[module_name] = main
    for value in list(vars(main).values()):
        if callable(value) and getattr(value, "__module__", None) == "__main__":
            try:
                value.__module__ = module_name
            except (AttributeError, TypeError):
                pass  # builtins and other objects that cannot be re-homed are not the lesson's own


def run_lesson(
    prog: str,
    description: str,
    title: str,
    lesson: Callable[[LessonContext], None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the shared flags, set up device/seed/plots, run `lesson`; known failures exit 2."""
    args = build_parser(prog, description).parse_args(lesson_argv(argv))
    if in_notebook() and lesson.__module__ == "__main__":
        share_notebook_with_workers(Path(prog).stem)
    try:
        device = pick_device(args.device)
        plots_dir = prepare_plots_dir(args.plots_dir)
        generator = seed_everything(args.seed)
        print_banner(title, device, args.seed, args.quick)
        lesson(LessonContext(device, args.quick, args.seed, plots_dir, generator))
    except (LessonError, FloatingPointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def finish(exit_code: int) -> None:
    """End a lesson run: exit the process with `exit_code` from a terminal; in a notebook, return.

    A notebook cell must not raise SystemExit (Jupyter reports it as an error even for 0); a
    failed lesson there raises LessonError after its one-line message instead.
    """
    if not in_notebook():
        raise SystemExit(exit_code)
    if exit_code != 0:
        raise LessonError(f"the lesson stopped with exit code {exit_code} (see the message above)")
