"""Shared test helpers: devices present here, the course table, running a lesson, fake timings, warning policy."""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import re
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch loads its OpenMP runtime (here and in every process the tests start): a thread that waits
# for work sleeps instead of spinning. The suite keeps both cores busy with two workers plus the
# processes they start, and spinning threads would burn the time the others need (about 10% of it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

import lesson_harness
from course import LESSONS, PROJECT_MODULES
from lesson_harness import available_devices

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from timings import demo_cells  # noqa: E402  (tools/ is a folder of scripts, not a package)

DEVICES = available_devices()  # parametrize over these; absent accelerators are simply not listed
ABSENT_ACCELERATORS = [name for name in ("cuda", "mps") if name not in DEVICES]
LESSON_MODULES = [lesson.module for lesson in LESSONS]
FAKE_MEDIAN_S = 1e-3  # what the fake timer reports for every benchmark median
FAKE_IQR_S = 2e-5  # and for its interquartile range: 2 % of the median
FAKE_WALL_S = 0.5  # what the fake stopwatch reports for every one-shot wall-clock timing


def pytest_report_header(config):
    """The versions this run tested, at the top of every pytest run (CI prints both environments)."""
    return "tested with: " + runpy.run_path(str(ROOT / "tools" / "versions.py"))["versions"]()


def pytest_configure(config):
    """Warnings attributed to this project's own modules (or its tests) fail the suite; others do not."""
    owned = "|".join((*PROJECT_MODULES, "test_"))
    for category in ("DeprecationWarning", "FutureWarning", "UserWarning"):
        config.addinivalue_line("filterwarnings", f"error::{category}:({owned})")


def pytest_collection_modifyitems(config, items):
    """Longest first: notebook runs (the later lessons' are the longest), then the other slow runs, then the rest.

    Started last, a 30-second notebook run keeps one xdist worker busy while the other has nothing left.
    """
    def expected_length(position_and_item) -> tuple[int, int]:
        position, item = position_and_item
        if item.get_closest_marker("slow") is None:
            return 2, position
        return (0, -position) if item.path.name == "test_notebooks.py" else (1, position)

    items[:] = [item for _, item in sorted(enumerate(items), key=expected_length)]


def run_script(module: str, argv: Sequence[str], only: Sequence[str] = ()) -> int:
    """What `python <module>.py *argv` does, in this process: its exit code (0 when it runs to its end).

    The lesson is imported (its definitions), then its demo cells run in order in a copy of the
    module's namespace, as Run All in a notebook does. So what a test patches on the module
    (`fake_timings`, a stand-in for a slow part) is what the cells call. With `only`, just the
    set-up cell and the cells whose code contains one of those strings run. Exceptions other than
    SystemExit propagate: in a terminal the excepthook turns the known ones into one line, which
    test_lesson_harness checks; real-process runs of every script are in test_reliability.
    """
    namespace = {**vars(importlib.import_module(module)), "__name__": "__main__"}
    cells = demo_cells(module)
    if only:
        cells = cells[:1] + [(first, code) for first, code in cells[1:] if any(
            needle in source for needle in only for source in [_cell_source(module, first)])]
    saved = sys.argv, sys.excepthook
    sys.argv = [str(ROOT / f"{module}.py"), *argv]
    try:
        for _, cell in cells:
            exec(cell, namespace)
    except SystemExit as exit_info:
        return exit_info.code
    finally:
        sys.argv, sys.excepthook = saved
    return 0


def _cell_source(module: str, first_line: str) -> str:
    """The source of the demo cell that starts with `first_line`."""
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and node.body and ast.unparse(node.body[0]).splitlines()[0] == first_line:
            return ast.unparse(node)
    raise KeyError(first_line)


def normalized(line: str) -> str:
    return " ".join(line.split())


def readme_quotes(module: str) -> list[str]:
    """The output lines README.md quotes for a lesson (its ```text blocks), whitespace collapsed."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    title = next(lesson.title for lesson in LESSONS if lesson.module == module)
    section = readme.split(f"### {title}\n", 1)[1].split("\n#", 1)[0]
    return [normalized(line) for block in re.findall(r"^```text\n(.*?)^```", section, re.S | re.M)
            for line in block.splitlines() if line.strip()]


def unprinted_quotes(quotes: Sequence[str], printed_text: str) -> list[str]:
    """The quoted lines that no printed line starts with (a quote may leave a table's timing columns out)."""
    printed = [normalized(line) for line in printed_text.splitlines()]
    return [quote for quote in quotes if not any(line.startswith(quote) for line in printed)]


def clean_env() -> dict[str, str]:
    """The environment of a plain terminal: no display, no matplotlib backend, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def assert_pngs_written(directory, names):
    for name in names:
        path = directory / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 10_000, f"{name} is suspiciously small ({path.stat().st_size} bytes)"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


@pytest.fixture
def unwritable_dir(tmp_path):
    """A path that cannot become a directory even for root: a regular file sits in its way."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "plots"


@pytest.fixture
def fake_timings(monkeypatch):
    """Every timing in every lesson returns a known constant, so printed output is exactly repeatable.

    Lessons time through `benchmark` (blocks of calls), `stopwatch` (one-shot runs) and
    `profile_events` (torch.profiler); each is replaced in the harness (where `run_script` finds it)
    and in every lesson module that imported it by name. So is the one reading of the machine's
    state, `resident_memory`: how much resident memory grows depends on what the process freed
    before (the allocator may hand out pages that are already resident) and on what the kernel
    reclaims, so it is a measurement, like a time; test_dataset_loader_demo checks the real one in a
    fresh process.
    """
    def fake_benchmark(fn, device="cpu", min_run_time=0.2, threads=lesson_harness.BENCHMARK_THREADS):
        fn()
        return lesson_harness.Timing(FAKE_MEDIAN_S, FAKE_IQR_S, threads, noisy=False)

    @contextlib.contextmanager
    def fake_stopwatch(device="cpu"):
        yield lesson_harness.Stopwatch(FAKE_WALL_S)

    def fake_profile(fn, device="cpu"):
        fn()
        return []  # no events: every profiled time reads as zero

    def fake_resident():
        return {"anonymous": 0, "file-backed": 0}

    for name in PROJECT_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        for attr, fake in (("benchmark", fake_benchmark), ("stopwatch", fake_stopwatch),
                           ("profile_events", fake_profile), ("resident_memory", fake_resident)):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, fake)
