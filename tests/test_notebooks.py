"""Every lesson is also a notebook: prose in markdown cells, in sync with its script, and it runs (Run All)."""

from __future__ import annotations

import re
import sys

import jupytext
import nbformat
import pytest
from conftest import LESSON_MODULES, ROOT

import course

sys.path.insert(0, str(ROOT / "tools"))
import notebooks as notebook_tools  # noqa: E402  (tools/ is a folder of scripts, not a package)

FIGURES = {lesson.module: lesson.figures for lesson in course.LESSONS}


def _images(cells) -> int:
    return sum("image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


def _text(cell) -> str:
    """What a cell printed (stream outputs)."""
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def _sections(notebook) -> list[tuple[str, list]]:
    """(heading, the code cells under it) for each `## ` markdown section, in order."""
    sections = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            sections.append((cell.source.splitlines()[0], []))
        elif cell.cell_type == "code" and sections:
            sections[-1][1].append(cell)
    return sections


def _is_demo(cell) -> bool:
    return cell.source.startswith('if __name__ == "__main__":')


@pytest.mark.parametrize("module", LESSON_MODULES)
def test_prose_is_markdown_and_code_cells_hold_code(module):
    cells = jupytext.read(ROOT / f"{module}.py", fmt="py:percent").cells
    markdown = [cell for cell in cells if cell.cell_type == "markdown"]
    assert len(markdown) >= 5, "each section opens with a markdown cell"
    for cell in markdown:
        assert re.match(r"#{2,3} ", cell.source), f"a markdown cell without a heading: {cell.source[:60]!r}"
        assert len(cell.source.splitlines()) >= 2, f"a heading with no prose under it: {cell.source!r}"
    for cell in cells:
        if cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if line.strip()]
            assert lines and not all(line.lstrip().startswith("#") for line in lines), (
                f"a code cell of comments only (should it be `# %% [markdown]`?): {cell.source[:80]!r}")


@pytest.mark.parametrize("module", LESSON_MODULES)
def test_committed_notebook_is_the_script_executed(module):
    """notebooks/<lesson>.ipynb has exactly the script's cells (run `make notebooks` after editing a lesson)."""
    committed = nbformat.read(ROOT / "notebooks" / f"{module}.ipynb", as_version=4)
    expected = notebook_tools.notebook_from_script(module)
    assert notebook_tools.cell_sources(committed) == notebook_tools.cell_sources(expected), (
        f"notebooks/{module}.ipynb is out of date: run `make notebooks`")
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "committed without running every cell"
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    assert _images(code) == len(FIGURES[module]), "every figure is shown inline, once"
    assert "mode: full" in "".join(_text(cell) for cell in code)


@pytest.mark.parametrize("module", LESSON_MODULES)
def test_each_section_shows_its_result_under_itself(module):
    """Every section that runs something has output under it, and no cell holds a third of the notebook's text."""
    committed = nbformat.read(ROOT / "notebooks" / f"{module}.ipynb", as_version=4)
    sections = _sections(committed)
    demo_sections = [(heading, cells) for heading, cells in sections if any(map(_is_demo, cells))]
    assert len(demo_sections) >= 5
    for heading, cells in demo_sections:
        shown = [cell for cell in cells if _is_demo(cell) and (_text(cell) or _images([cell]))]
        assert shown, f"{module}: section {heading!r} runs code but shows nothing under it"
    for heading, cells in sections:  # and a section without a demo cell prints nothing either
        if not any(map(_is_demo, cells)):
            assert not any(cell.get("outputs") for cell in cells), f"{module}: {heading!r} prints from a definition"
    texts = [_text(cell) for cell in committed.cells if cell.cell_type == "code"]
    total = sum(map(len, texts))
    assert max(map(len, texts)) <= total / 3, f"{module}: one cell holds more than a third of the output"


# Every lesson runs as the committed notebook from notebooks/ under spawn (as on macOS and Windows). A
# lesson whose workers follow the default start method (DataLoader workers) also runs as the
# script-as-notebook from the repository root under the default method. For the others the start
# method decides nothing (test_reliability checks which start no process and which always spawn), and
# the two notebooks have the same cells (test above): only the set-up cell's `..` branch differs with
# the folder, and that lesson covers both branches.
NOTEBOOK_RUNS = [(lesson.module, where, start_method) for lesson in course.LESSONS
                 for where, start_method in ([("repo root", "default")] if lesson.worker_start == "default" else [])
                 + [("notebooks/", "spawn")]]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "where", "start_method"), NOTEBOOK_RUNS)
def test_lesson_runs_as_a_notebook(module, where, start_method, tmp_path):
    """Run All in a fresh kernel, quick mode, with the flags from LESSON_ARGS and every figure inline."""
    if where == "repo root":
        notebook, cwd = notebook_tools.notebook_from_script(module), ROOT
    else:
        notebook, cwd = nbformat.read(ROOT / "notebooks" / f"{module}.ipynb", as_version=4), ROOT / "notebooks"
    ran = notebook_tools.execute(notebook, cwd, f"--quick --device cpu --seed 1 --plots-dir {tmp_path}",
                                 spawn=start_method == "spawn", timeout_s=300)
    code = [cell for cell in ran.cells if cell.cell_type == "code"]
    printed = "".join(_text(cell) for cell in code)
    assert "mode: quick" in printed and "seed: 1" in printed  # LESSON_ARGS reached the lesson
    assert _images(code) == len(FIGURES[module])
    for name in FIGURES[module]:
        assert (tmp_path / name).is_file(), f"{name} was not written"
