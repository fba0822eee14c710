"""Build and run the lessons as Jupyter notebooks.

    python tools/notebooks.py build              # write notebooks/<lesson>.ipynb, executed (full mode, CPU)
    python tools/notebooks.py build tensor_basics  # one lesson

Each notebook is what jupytext makes from the lesson script (`# %% [markdown]` cells become prose),
plus one first cell that lets it run from `notebooks/`; the built notebook opens with a banner that
says when, on what machine and with which versions it was executed. The tests use `notebook_from_script`
to check that the committed notebooks never drift from the scripts, and `execute` to run a
lesson as a notebook in quick mode.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course import LESSONS  # noqa: E402  (the repo root is not a package)

NOTEBOOKS_DIR = ROOT / "notebooks"
CELL_TIMEOUT_S = 600  # a cell that runs this long has hung: nbclient raises instead of waiting
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}
SETUP_CELL = """\
# Run from notebooks/ as well as from the repository root: the lessons and lesson_harness.py
# live one folder up. Flags come from the LESSON_ARGS environment variable, e.g. "--quick".
import sys
from pathlib import Path

if not Path("lesson_harness.py").exists() and Path("../lesson_harness.py").exists():
    sys.path.insert(0, str(Path("..").resolve()))"""
SPAWN_CELL = """\
import multiprocessing

multiprocessing.set_start_method("spawn", force=True)  # as on macOS and Windows"""


BANNER_MARKER = "<!-- executed -->"  # starts the one cell `build` adds: when, where and with what it ran
BANNER_PACKAGES = ("torch", "numpy", "matplotlib", "scikit-learn")  # the versions that decide the outputs


def execution_banner(lesson_args: str) -> str:
    """A markdown cell's text: the date, machine and versions of the run whose outputs the notebook holds."""
    import torch

    from lesson_harness import cpu_model

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in BANNER_PACKAGES)
    return (f"{BANNER_MARKER}\n*Executed on {datetime.date.today():%Y-%m-%d} with `LESSON_ARGS=\"{lesson_args}\"` "
            f"on {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{platform.system()}); Python {platform.python_version()}, {versions}. Timings are from that machine: "
            "read them for what to look for, not for their values.*")


def notebook_from_script(module: str) -> nbformat.NotebookNode:
    """The notebook for one lesson: the set-up cell, then jupytext's cells of `<module>.py`."""
    notebook = jupytext.read(ROOT / f"{module}.py", fmt="py:percent")
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP_CELL))
    notebook.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for index, cell in enumerate(notebook.cells):
        cell.metadata = {}
        cell.id = f"cell-{index}"  # nbformat 4.5 wants an id; a random one would change on every build
    return notebook


def cell_sources(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(type, source) of every cell but the execution banner: what must match between the committed notebook
    and the script."""
    return [(cell.cell_type, cell.source) for cell in notebook.cells if not cell.source.startswith(BANNER_MARKER)]


def _kernel_config(socket_dir: str) -> Config:
    """On Linux the kernel talks over Unix sockets in `socket_dir`: ipykernel ≥ 7 warns on stderr about
    unencrypted TCP. The path is absolute because the kernel runs in the notebook's folder, not ours.

    Elsewhere it stays on TCP (Windows has no such sockets; macOS limits their paths to 104 bytes).
    """
    if not sys.platform.startswith("linux"):
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(socket_dir) / "kernel")}})


def execute(notebook: nbformat.NotebookNode, cwd: Path, lesson_args: str, spawn: bool = False,
            timeout_s: float = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell in a fresh ipykernel (Run All); raises nbclient's CellExecutionError on failure."""
    if spawn:
        notebook = nbformat.from_dict(notebook)  # a copy: the extra cell belongs to this run only
        notebook.cells.insert(0, nbformat.v4.new_code_cell(SPAWN_CELL))
    # The set-up cell, not PYTHONPATH, must find the lessons: that is what a learner's kernel has.
    env = {**os.environ, "LESSON_ARGS": lesson_args, "PYTHONPATH": ""}
    env.pop("MPLBACKEND", None)
    # "immediate": once the last cell has run, the kernel is stopped without its interpreter's clean-up
    # (a second or two with torch loaded), which a finished notebook does not need.
    with tempfile.TemporaryDirectory(prefix="lesson-kernel-") as socket_dir:
        client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", shutdown_kernel="immediate",
                                resources={"metadata": {"path": str(cwd)}}, config=_kernel_config(socket_dir))
        client.execute(env=env)  # keyword arguments reach the kernel manager's start_kernel
    return notebook


def build(lesson_args: str, modules: list[str]) -> None:
    NOTEBOOKS_DIR.mkdir(exist_ok=True)
    for lesson in LESSONS:
        if modules and lesson.module not in modules:
            continue
        notebook = execute(notebook_from_script(lesson.module), NOTEBOOKS_DIR, lesson_args)
        for cell in notebook.cells:  # execution timing metadata would change on every build
            cell.metadata.pop("execution", None)
        banner = nbformat.v4.new_markdown_cell(execution_banner(lesson_args))
        banner.id = "executed"
        notebook.cells.insert(0, banner)
        nbformat.write(notebook, NOTEBOOKS_DIR / f"{lesson.module}.ipynb")
        print(f"wrote notebooks/{lesson.module}.ipynb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--lesson-args", default="--device cpu", help="flags for every lesson (default: full, CPU)")
    parser.add_argument("modules", nargs="*", help="only these lessons (default: all)")
    args = parser.parse_args(argv)
    build(args.lesson_args, args.modules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
