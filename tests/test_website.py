"""tools/website.py: the site's pages follow course.py, show every exercise, and its HTML check catches what breaks.

No Sphinx here: the generator's logic and the check are the standard library (`make site` builds the real site,
`make site-test` opens it in Chromium).
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import ROOT

import course
from exercises import catalog

sys.path.insert(0, str(ROOT / "tools"))
import website  # noqa: E402  (tools/ is a folder of scripts, not a package)

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_pages_follow_the_course_order_and_the_landing_page_lists_the_lessons_in_it():
    lessons = [f"lessons/{lesson.module}" for lesson in course.LESSONS]
    assert website.page_order() == ["index", *lessons, "exercises", "tested"]
    toctrees = re.findall(r"```\{toctree\}\n(.*?)```", website.index_page(README), flags=re.S)
    entries = [line for tree in toctrees for line in tree.splitlines() if line and not line.startswith(":")]
    assert entries == website.page_order()[1:]


def test_every_lesson_has_a_page_source_titled_from_course_py_with_its_downloads(tmp_path):
    website.write_source(tmp_path)
    conf = (tmp_path / "conf.py").read_text(encoding="utf-8")
    assert 'nb_execution_mode = "off"' in conf
    compile(conf, "conf.py", "exec")
    for lesson in course.LESSONS:
        page = json.loads((tmp_path / "lessons" / f"{lesson.module}.ipynb").read_text(encoding="utf-8"))
        committed = json.loads((ROOT / "notebooks" / f"{lesson.module}.ipynb").read_text(encoding="utf-8"))
        assert [(cell["source"], cell.get("outputs")) for cell in page["cells"][1:-1]] == \
            [(cell["source"], cell.get("outputs")) for cell in committed["cells"]], "cells and outputs untouched"
        alts = [cell["metadata"]["mystnb"]["image"]["alt"] for cell in page["cells"] if "mystnb" in cell["metadata"]]
        assert sorted(alts) == sorted(name[:-4].replace("_", " ") for name in lesson.figures)
        assert page["cells"][0]["source"].startswith(f"# {lesson.title}\n")
        assert f"({lesson.module}-exercises)=\n## Exercises" in page["cells"][-1]["source"]
        for path in (lesson.script, f"notebooks/{lesson.module}.ipynb", f"exercises/{lesson.module}.py"):
            assert (tmp_path / "downloads" / path).read_bytes() == (ROOT / path).read_bytes()
            assert f"<../downloads/{path}>" in page["cells"][0]["source"] + page["cells"][-1]["source"]


def test_the_exercises_page_lists_every_exercise_with_its_level_section_and_task():
    page = website.exercises_page(README)
    for lesson in course.LESSONS:
        text = (ROOT / "exercises" / f"{lesson.module}.py").read_text(encoding="utf-8")
        names = re.findall(r'^(?:def|class) (\w+)[^\n]*\n(?:[^\n]*\n)*?\s+"""Task:', text, flags=re.M)
        found = website.exercises(lesson.module)
        assert [exercise.name for exercise in found] == names
        assert all(exercise.task and "\n" not in exercise.task for exercise in found)
        for exercise in found:
            record = catalog.BY_NAME[exercise.name]
            assert f"- **`{exercise.name}`** {record.stars} ({record.section}): {exercise.task}" in page
        assert f"## {lesson.title}" in page
    assert "| Lesson |" not in page, "the README's table is left out: the page lists the files' exercises"


def test_readme_parts_become_pages_without_links_to_the_readme_or_the_repository():
    index = website.index_page(README)
    assert index.startswith("# " + README.splitlines()[0][2:])
    assert "**For whom.**" in index and "](#" not in index
    tested = website.tested_page(README)
    first_line = README.split(website.TESTED_SECTION + "\n", 1)[1].strip().splitlines()[0]
    assert tested.startswith("# What is tested, on which versions\n") and first_line in tested
    assert website.without_repo_links("See [`a.py`](a.py), [docs](https://x.org) and\n\n- [Set-up](#set-up)") \
        == "See `a.py`, [docs](https://x.org) and"


def _tiny_site(root, extra: str = "") -> None:
    """A built site in miniature: every lesson page with its title and as many images as it has figures."""
    (root / "lessons").mkdir(parents=True)
    (root / "_images").mkdir()
    (root / "_images" / "a.png").write_bytes(b"png")
    (root / "_static").mkdir()
    (root / "_static" / "style.css").write_text("body { background: url('../_images/a.png') }")
    (root / "index.html").write_text('<html><head><link rel="stylesheet" href="_static/style.css"></head>'
                                     f'<body><h1 id="top">Course</h1>{extra}</body></html>')
    for lesson in course.LESSONS:
        images = "".join(f'<img src="../_images/a.png" alt="{name[:-4].replace("_", " ")}">' for name in lesson.figures)
        (root / "lessons" / f"{lesson.module}.html").write_text(
            f'<html><body><h1>{lesson.title}<a class="headerlink" href="#">#</a></h1>{images}'
            '<a href="../index.html#top">home</a><a href="https://pytorch.org">web link</a></body></html>')


def test_the_check_passes_a_complete_site(tmp_path):
    _tiny_site(tmp_path)
    assert website.check(tmp_path) == []


@pytest.mark.parametrize(("extra", "expected"), [
    ('<img src="_images/missing.png">', "_images/missing.png names no file"),
    ('<a href="lessons/nowhere.html">x</a>', "lessons/nowhere.html names no file"),
    ('<a href="index.html#no-such-id">x</a>', "no #no-such-id on index.html"),
    ('<script src="https://cdn.example.org/mathjax.js"></script>', "loads https://cdn.example.org/mathjax.js"),
    ('<link rel="stylesheet" href="//fonts.example.org/font.css">', "loads //fonts.example.org/font.css"),
    ('<div style="background: url(https://example.org/bg.png)"></div>', "loads https://example.org/bg.png"),
    ('<img srcset="_images/a.png 1x, http://example.org/a@2x.png 2x">', "loads http://example.org/a@2x.png"),
])
def test_the_check_flags_missing_files_broken_anchors_and_anything_from_the_network(tmp_path, extra, expected):
    _tiny_site(tmp_path, extra)
    problems = website.check(tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_check_flags_a_missing_lesson_page_a_missing_figure_and_a_wrong_title(tmp_path):
    _tiny_site(tmp_path)
    first, second, third = course.LESSONS[:3]
    (tmp_path / "lessons" / f"{first.module}.html").unlink()
    (tmp_path / "lessons" / f"{second.module}.html").write_text(f"<h1>{second.title}</h1>")
    (tmp_path / "lessons" / f"{third.module}.html").write_text("<h1>Lesson</h1>" + '<img src="../_images/a.png">' * 3)
    (tmp_path / "_static" / "style.css").write_text("@import 'https://fonts.example.org/x.css';")
    problems = "\n".join(website.check(tmp_path))
    assert f"{first.module}.html: missing" in problems
    assert f"{second.module}.html: no image of {', '.join(second.figures)}" in problems
    assert f"{third.module}.html: no <h1> with the lesson's title" in problems
    assert "style.css: loads https://fonts.example.org/x.css" in problems
