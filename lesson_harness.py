"""What every lesson needs: device choice, one set-up cell, seeding, timing, tables and figures.

Deliberately small and framework-free: read it once and every lesson's set-up cell is clear.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import math
import os
import platform
import random
import shlex
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
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


BENCHMARK_THREADS = 1  # threads a benchmark runs on unless its point is thread scaling: stable on a shared machine
NOISY_MARK = "!"  # marks a timing whose IQR is at least NOISY_IQR_SHARE of its median
NOISY_IQR_SHARE = 0.1  # the threshold at which torch.utils.benchmark.Timer warns, too
MIN_RUNS = 4  # blocks a benchmark measures at least: an IQR needs several
MIN_BLOCK_S = 1e-3  # shortest block: reading the clock (about a microsecond) stays under 0.1 % of it


@dataclass(frozen=True)
class Timing:
    """One benchmark: the median seconds per call, the spread around it, and the threads it ran on."""

    median: float  # seconds per call
    iqr: float  # interquartile range of the per-call times of the measured blocks, in seconds
    threads: int  # torch intra-op threads, and BLAS threads, while it ran
    noisy: bool  # the IQR is at least NOISY_IQR_SHARE of the median: as much noise as signal


def benchmark(fn: Callable[[], object], device: torch.device | str = "cpu", min_run_time: float = 0.2,
              threads: int = BENCHMARK_THREADS) -> Timing:
    """Median and IQR of the time per call of `fn`, on `threads` threads, over blocks of repeated calls.

    What `torch.utils.benchmark.Timer` does, with blocks sized for a spread: one warm-up call (lazy
    initialisation stays out), then blocks of `number` calls, each timed with the device synchronized
    before and after (accelerators run asynchronously), until at least MIN_RUNS blocks and `min_run_time`
    seconds. Blocks are sized so that `min_run_time` holds 2 × MIN_RUNS of them; Timer's `blocked_autorange`
    grows its blocks by factors of 10 until its overhead is 0.01 % of one, so a short run often holds one
    block, which has no spread. `threads` sets torch's intra-op threads and limits the BLAS libraries NumPy
    and scikit-learn call (threadpoolctl), so a NumPy comparison is like for like; both are restored after.
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    device = as_device(device)

    def block(number: int) -> float:
        """Seconds per call over `number` calls."""
        synchronize(device)
        start = time.perf_counter()
        for _ in range(number):
            fn()
        synchronize(device)
        return (time.perf_counter() - start) / number

    block_target = max(MIN_BLOCK_S, min_run_time / (2 * MIN_RUNS))
    previous = torch.get_num_threads()
    with threadpool_limits(threads):
        torch.set_num_threads(threads)
        try:
            block(1)  # warm-up
            number = 1
            while (per_call := block(number)) * number < block_target:
                number = max(2 * number, math.ceil(block_target / max(per_call, 1e-9)))
            per_call_times, spent = [], 0.0
            while len(per_call_times) < MIN_RUNS or spent < min_run_time:
                per_call_times.append(block(number))
                spent += per_call_times[-1] * number
        finally:
            torch.set_num_threads(previous)
    median = statistics.median(per_call_times)
    first, _, third = statistics.quantiles(per_call_times, n=4, method="inclusive")  # linear, as torch.quantile
    return Timing(median, third - first, threads, noisy=third - first >= NOISY_IQR_SHARE * median)


def timing_cells(timing: Timing) -> list[str]:
    """A table's two cells for a timing: the median, and the IQR as a share of it (marked where it is large)."""
    spread = f"{100 * timing.iqr / timing.median:.0f} %" if timing.median > 0 else "-"
    return [fmt_seconds(timing.median), spread + (f" {NOISY_MARK}" if timing.noisy else "")]


TIMING_HEADERS = ("median", "IQR")  # the headers of timing_cells' two columns


def timing_note(threads: int) -> str:
    """The line under a timing table: what its numbers are, and how to read the marks."""
    return (f"Median over timed blocks of calls on {threads} thread{'s' if threads != 1 else ''}; IQR: the spread "
            f"of the middle half of the blocks, as a share of the median; {NOISY_MARK}: at least "
            f"{NOISY_IQR_SHARE:.0%}, as much noise as signal (run it again on a quieter machine). Ratios compare "
            "medians measured in this run.")


@dataclass
class Stopwatch:
    seconds: float = math.nan  # set when the `with` block ends


@contextlib.contextmanager
def stopwatch(device: torch.device | str = "cpu") -> Iterator[Stopwatch]:
    """Wall-clock seconds of a `with` block, queued device work included: `with stopwatch() as clock: ...`.

    For one-shot costs (a whole training run) where repeating to take a median would cost too much.
    """
    clock = Stopwatch()
    synchronize(device)
    start = time.perf_counter()
    try:
        yield clock
    finally:
        synchronize(device)
        clock.seconds = time.perf_counter() - start


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


def print_pairs(title: str, pairs: dict[str, object], fmt: Callable[[object], str] = _cell, width: int = 120) -> None:
    """A section of `label  value` lines, each value as `fmt` writes it; a long value wraps under its column."""
    print_section(title)
    label_width = max(len(label) for label in pairs)
    indent = " " * (label_width + 2)
    for label, value in pairs.items():
        text = textwrap.fill(fmt(value), width=width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)
        print(f"{label:{label_width}s}  {text[len(indent):]}")


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
# The set-up cell: one command line for every lesson
# ---------------------------------------------------


@dataclass(frozen=True)
class LessonContext:
    """What the set-up cell hands to the sections below it, after parsing and checking the flags."""

    prog: str  # the script's file name, which starts every error message
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
    Call it right before starting workers: a class defined in a later cell is `__main__`'s again.
    Outside a notebook it does nothing (a script's spawned workers import it as `__mp_main__`).
    """
    if not in_notebook():
        return
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


KNOWN_ERRORS = (LessonError, FloatingPointError)  # failures the user can fix: one line on stderr, exit code 2


def _one_line_for_known_errors(prog: str) -> None:
    """In a script, a known error raised by any later section prints one line and exits with code 2.

    The sections run at the top level of the script, one after another, so no single `try` holds
    them all: Python hands an uncaught exception to `sys.excepthook`, and a SystemExit raised there
    sets the exit code. Anything else keeps its full traceback: that is a bug to report.
    """
    def excepthook(kind, error, traceback) -> None:
        if not issubclass(kind, KNOWN_ERRORS):
            sys.__excepthook__(kind, error, traceback)
            return
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2)

    sys.excepthook = excepthook


def start_lesson(module: str, argv: Sequence[str] | None = None) -> LessonContext:
    """The lesson's set-up cell: read the flags, pick the device, seed everything, print the banner.

    The flags come from the command line in a script and from $LESSON_ARGS in a notebook. A script run as
    `python <lesson>.py <command> ...`, for a command the lesson's row in course.py lists, runs the lesson's
    `<command>_main(argv)` instead and exits with its code. A device
    that is not there or an unwritable plots directory stops a script with one line and exit code 2;
    in a notebook the cell raises LessonError with the same message.
    """
    from course import lesson

    row = lesson(module)
    if argv is None and not in_notebook() and sys.argv[1:2] and sys.argv[1] in row.commands:
        # `python <lesson>.py <command> ...`: not the lesson but one of its commands (course.py lists them).
        # The script is imported as a module, so only its definitions run, none of its cells.
        sys.exit(getattr(importlib.import_module(module), f"{sys.argv[1]}_main")(sys.argv[2:]))
    script = Path(__file__).resolve().parent / row.script
    description = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    args = build_parser(row.script, description).parse_args(lesson_argv(argv))
    notebook = in_notebook()
    if notebook:
        share_notebook_with_workers(module)
    else:
        _one_line_for_known_errors(row.script)
    try:
        device = pick_device(args.device)
        plots_dir = prepare_plots_dir(args.plots_dir)
    except LessonError as err:
        if notebook:
            raise
        print(f"{row.script}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    generator = seed_everything(args.seed)
    print_banner(row.title, device, args.seed, args.quick)
    return LessonContext(row.script, device, args.quick, args.seed, plots_dir, generator)
