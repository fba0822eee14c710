"""README.md is the course's front page: every lesson from course.py, quoted output that the lessons print."""

from __future__ import annotations

import re

import nbformat
import pytest
from conftest import ROOT, readme_quotes, unprinted_quotes

import course

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_LINES = 400


def lesson_sections() -> dict[str, str]:
    """course title -> the README text under its `### ` heading, up to the next heading of that level or above."""
    parts = re.split(r"^(#{2,3} .*)$", README, flags=re.M)
    sections = {}
    for heading, body in zip(parts[1::2], parts[2::2]):
        sections[heading.lstrip("#").strip()] = body
    return {lesson.title: sections.get(lesson.title, "") for lesson in course.LESSONS}


def notebook_output(module: str) -> str:
    notebook = nbformat.read(ROOT / "notebooks" / f"{module}.ipynb", as_version=4)
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) <= MAX_LINES
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "no dated history: measured output lives in the notebooks"
    for heading in ("## Set-up", "## Running a lesson", "## The lessons", "## Exercises",
                    "## What is tested, on which versions", "## Troubleshooting", "## Layout"):
        assert heading in README.splitlines(), heading
    assert "make demo" in README and "make test" in README


def test_every_lesson_has_its_course_title_in_order_with_script_notebook_and_figures():
    headings = [line[4:] for line in README.splitlines() if line.startswith("### Lesson ")]
    assert headings == [lesson.title for lesson in course.LESSONS]
    for lesson in course.LESSONS:
        section = lesson_sections()[lesson.title]
        assert f"[`{lesson.script}`]({lesson.script})" in section
        assert f"(notebooks/{lesson.module}.ipynb)" in section
        assert sorted(re.findall(r"\]\(plots/([^)]+)\)", section)) == sorted(lesson.figures)


@pytest.mark.parametrize("lesson", course.LESSONS, ids=lambda lesson: lesson.module)
def test_quoted_output_is_what_the_committed_notebook_printed(lesson):
    """Each quoted line is a printed line, or its leading columns (a table's timing columns left out). The
    lesson tests check the same lines against what the lesson's functions print on the versions under test."""
    quoted = readme_quotes(lesson.module)
    assert quoted, f"{lesson.title}: quote at least one line of output"
    assert not unprinted_quotes(quoted, notebook_output(lesson.module))


def test_no_timing_is_quoted():
    """Times and rates change from run to run: the README says what to look for instead."""
    for lesson in course.LESSONS:
        for line in readme_quotes(lesson.module):
            assert not re.search(r"\d\s?(ns|µs|ms|s)\b|samples/s|GFLOP/s", line), line


def test_the_layout_lists_every_lesson_script():
    layout = README.split("## Layout", 1)[1]
    for lesson in course.LESSONS:
        assert lesson.script in layout


def test_the_older_api_table_names_apis_that_exist_today_and_old_ones_that_are_gone_or_warn():
    """Every "use today" API in the table is in the installed torch; the removed ones raise, the deprecated warn."""
    import warnings

    import torch

    table = README.split("## Older APIs you will meet elsewhere", 1)[1].split("\n## ", 1)[0]
    for name in ("linalg.eig", "linalg.eigh", "linalg.svd", "amp.autocast", "amp.GradScaler", "set_default_dtype",
                 "set_default_device", "func.grad", "func.vmap", "func.jacrev", "func.hessian", "compile",
                 "export.export", "nn.parallel.DistributedDataParallel"):
        obj = torch
        for part in name.split("."):
            obj = getattr(obj, part)
        assert callable(obj), name
        assert f"`torch.{name}`" in table or name.split(".")[-1] in table, name
    if hasattr(torch, "eig"):  # kept only to raise, until it goes
        with pytest.raises(RuntimeError, match="removed"):
            torch.eig(torch.eye(2))
    if hasattr(torch.cuda.amp, "GradScaler"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.amp.GradScaler(enabled=False)
        assert any("deprecated" in str(warning.message) for warning in caught)
    import inspect

    assert "weights_only" in inspect.signature(torch.load).parameters
